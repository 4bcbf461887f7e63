import { defineConfig, type Plugin } from "vite";

// In production the orchestrator serves dist/ and answers GET /config.json.
// The dev and preview servers answer it here instead, from the environment,
// so `npm run dev` can point at any orchestrator:
//   CONSOLE_API_URL         gRPC-Web base URL (default http://127.0.0.1:50051)
//   CONSOLE_TOKEN_REQUIRED  "true" when the API needs a bearer token
//   CONSOLE_JAEGER_UI_URL   Jaeger UI base URL for trace links (unset: none)
function devConfigJson(): Plugin {
  const body = () =>
    JSON.stringify({
      apiUrl: process.env.CONSOLE_API_URL ?? "http://127.0.0.1:50051",
      tokenRequired: process.env.CONSOLE_TOKEN_REQUIRED === "true",
      jaegerUiUrl: process.env.CONSOLE_JAEGER_UI_URL || null,
    });
  const handler = (
    req: { url?: string },
    res: { setHeader(k: string, v: string): void; end(b: string): void },
    next: () => void,
  ) => {
    if (req.url?.split("?")[0] !== "/config.json") return next();
    res.setHeader("content-type", "application/json");
    res.setHeader("cache-control", "no-store");
    res.end(body());
  };
  return {
    name: "sagaflow-dev-config-json",
    configureServer(server) {
      server.middlewares.use(handler);
    },
    configurePreviewServer(server) {
      server.middlewares.use(handler);
    },
  };
}

export default defineConfig({
  // Relative asset paths: dist/ works wherever it is served from.
  base: "./",
  esbuild: { jsx: "automatic", jsxImportSource: "preact" },
  build: { target: "es2022" },
  plugins: [devConfigJson()],
});
