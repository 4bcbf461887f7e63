import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { SagaService } from "./gen/sagaflow/orchestrator/v1/orchestrator_pb";

/** What the orchestrator's HTTP address answers at /config.json. */
export interface ConsoleConfig {
  /** Base URL of the gRPC-Web API (the orchestrator's gRPC port). */
  apiUrl: string;
  /** True when every call needs `authorization: Bearer <token>`. */
  tokenRequired: boolean;
  /** Jaeger UI base URL for trace links; null when there is none. */
  jaegerUiUrl: string | null;
}

export async function fetchConfig(signal?: AbortSignal): Promise<ConsoleConfig> {
  const res = await fetch("./config.json", { cache: "no-store", signal: signal ?? null });
  if (!res.ok) throw new Error(`config.json: HTTP ${res.status}`);
  const raw: unknown = await res.json();
  if (typeof raw !== "object" || raw === null) throw new Error("config.json: not an object");
  const o = raw as Record<string, unknown>;
  if (typeof o.apiUrl !== "string" || o.apiUrl === "") throw new Error("config.json: apiUrl missing");
  return {
    apiUrl: o.apiUrl.replace(/\/+$/, ""),
    tokenRequired: o.tokenRequired === true,
    jaegerUiUrl: typeof o.jaegerUiUrl === "string" && o.jaegerUiUrl !== "" ? o.jaegerUiUrl.replace(/\/+$/, "") : null,
  };
}

const TOKEN_KEY = "sagaflow.console.token";

export function storedToken(): string | null {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

export function storeToken(token: string | null): void {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // storage unavailable: the token lives for this page only
  }
  currentToken = token;
}

let currentToken: string | null = storedToken();

/** Adds the bearer token, read at call time, to every call. */
const bearer: Interceptor = (next) => (req) => {
  if (currentToken) req.header.set("authorization", `Bearer ${currentToken}`);
  return next(req);
};

export type SagaClient = Client<typeof SagaService>;

export function makeClient(config: ConsoleConfig): SagaClient {
  const transport = createGrpcWebTransport({
    baseUrl: config.apiUrl,
    interceptors: [bearer],
  });
  return createClient(SagaService, transport);
}

/** "PERMISSION_DENIED" for Code.PermissionDenied. */
export function codeName(code: Code): string {
  const name = Code[code] ?? `CODE_${code}`;
  return name.replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

export interface CallError {
  code: string;
  message: string;
}

export function callError(err: unknown): CallError {
  const e = ConnectError.from(err);
  return { code: codeName(e.code), message: e.rawMessage };
}

export function isAuthError(err: unknown): boolean {
  const code = ConnectError.from(err).code;
  return code === Code.Unauthenticated || code === Code.PermissionDenied;
}
