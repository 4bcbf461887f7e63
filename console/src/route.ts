import { useEffect, useState } from "preact/hooks";
import type { SagaState } from "./gen/sagaflow/orchestrator/v1/orchestrator_pb";
import { parseStateName, stateName } from "./format";

export type Route =
  | { page: "list"; states: SagaState[] }
  | { page: "saga"; sagaId: string }
  | { page: "unknown"; hash: string };

/** `#/`, `#/?states=RUNNING,SUSPENDED`, `#/sagas/<id>`. */
export function parseRoute(hash: string): Route {
  const path = hash.replace(/^#/, "") || "/";
  const [pathname = "/", query = ""] = path.split("?", 2);
  if (pathname === "/" || pathname === "") {
    const states = (new URLSearchParams(query).get("states") ?? "")
      .split(",")
      .map(parseStateName)
      .filter((s): s is SagaState => s !== undefined);
    return { page: "list", states: [...new Set(states)] };
  }
  const m = /^\/sagas\/([^/]+)$/.exec(pathname);
  if (m?.[1]) return { page: "saga", sagaId: decodeURIComponent(m[1]) };
  return { page: "unknown", hash };
}

export function listHref(states: readonly SagaState[]): string {
  return states.length === 0 ? "#/" : `#/?states=${states.map(stateName).join(",")}`;
}

export function sagaHref(sagaId: string): string {
  return `#/sagas/${encodeURIComponent(sagaId)}`;
}

export function useRoute(): Route {
  const [route, setRoute] = useState(() => parseRoute(location.hash));
  useEffect(() => {
    const onChange = () => setRoute(parseRoute(location.hash));
    addEventListener("hashchange", onChange);
    return () => removeEventListener("hashchange", onChange);
  }, []);
  return route;
}
