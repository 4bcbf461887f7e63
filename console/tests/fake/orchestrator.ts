// A stand-in for the orchestrator's public API, for trying the console and
// its browser driver without the Rust system: the same protos, served as
// gRPC-Web with CORS, sagas that move on timers, and a simulated restart.
//
//   npm run fake -- [--grpc-port N] [--http-port N] [--step-ms N] [--token T] [--operator-token T]
//
// Prints {"event":"listening","grpc":N,"http":N} on stdout. The HTTP port
// serves ../../dist and /config.json like the orchestrator's HTTP address,
// plus a control API:
//   POST /__fake/place?outcome=complete|refuse|compfail|slow&n=N  -> {"ids":[...]}
//   POST /__fake/restart?ms=N   the gRPC port goes away for N ms (streams end UNAVAILABLE)
import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ConnectRouter, type Interceptor } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { randomUUID } from "node:crypto";
import { readFile } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { extname, join, normalize } from "node:path";
import {
  HistoryEntrySchema,
  SagaSchema,
  SagaService,
  SagaState,
  SagaChangeSchema,
  StepStatusSchema,
  type HistoryEntry,
  type Saga,
  type SagaChange,
  WatchSagaResponseSchema,
  WatchSagasResponseSchema,
} from "../../src/gen/sagaflow/orchestrator/v1/orchestrator_pb";

const args = process.argv.slice(2);
const arg = (name: string, fallback: number) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : fallback;
};
const STEP_MS = arg("step-ms", 400);
const argText = (name: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? (args[i + 1] ?? "") : "";
};
// With --token, every call needs it or the operator token; the operator
// actions need --operator-token (PERMISSION_DENIED for the other).
const CLIENT_TOKEN = argText("token");
const OPERATOR_TOKEN = argText("operator-token");
const DIST = process.env.SAGAFLOW_CONSOLE_DIR ?? new URL("../../dist", import.meta.url).pathname;

type Outcome = "complete" | "refuse" | "compfail" | "slow";
const STEPS: [string, string][] = [
  ["create_order", "order"],
  ["process_payment", "payment"],
  ["reserve_inventory", "inventory"],
  ["approve_order", "order"],
];

interface Record_ {
  saga: Saga;
  history: HistoryEntry[];
  outcome: Outcome;
  cursor: number; // step index in flight (forward) or being compensated (backward)
  compensationFailedOnce: boolean;
  timer?: NodeJS.Timeout;
}

const sagas = new Map<string, Record_>();
/** Every state change, in commit order; a cursor is an index into it. */
const changes: { sagaId: string; previous: SagaState; state: SagaState; seq: bigint }[] = [];
const listeners = new Set<() => void>();
const notify = () => listeners.forEach((l) => l());

function finished(s: SagaState) {
  return s === SagaState.COMPLETED || s === SagaState.COMPENSATED;
}

function record(r: Record_, kind: string, state: SagaState, detail = "") {
  const previous = r.history.length === 0 ? SagaState.UNSPECIFIED : r.saga.state;
  const seq = BigInt(r.history.length + 1);
  r.saga.state = state;
  r.saga.updatedAt = timestampNow();
  r.history.push(create(HistoryEntrySchema, { seq, at: timestampNow(), kind, state, detail }));
  if (previous !== state) changes.push({ sagaId: r.saga.sagaId, previous, state, seq });
  notify();
}

function schedule(r: Record_, ms = STEP_MS) {
  clearTimeout(r.timer);
  r.timer = setTimeout(() => advance(r), r.outcome === "slow" && r.saga.state === SagaState.RUNNING ? ms * 10 : ms);
}

function step(r: Record_, i: number) {
  const s = r.saga.steps[i];
  if (!s) throw new Error(`no step ${i}`);
  return s;
}

function advance(r: Record_) {
  const { saga } = r;
  if (saga.state === SagaState.RUNNING) {
    const s = step(r, r.cursor);
    if (s.status === "NOT_STARTED") {
      s.status = "PENDING";
      s.attempts = 1;
      r.saga.updatedAt = timestampNow();
      notify();
      return schedule(r);
    }
    if ((r.outcome === "refuse" || r.outcome === "compfail") && s.name === "reserve_inventory") {
      s.status = "REFUSED";
      s.reason = "stock_short: sku-soldout needs 1 has 0";
      saga.failedStep = s.name;
      saga.reason = `${s.name} refused: ${s.reason}`;
      record(r, "step_refused", SagaState.COMPENSATING, saga.reason);
      r.cursor -= 1;
      return schedule(r);
    }
    s.status = "SUCCEEDED";
    if (r.cursor === saga.steps.length - 1) {
      record(r, "completed", SagaState.COMPLETED);
      return;
    }
    record(r, "step_succeeded", SagaState.RUNNING, s.name);
    r.cursor += 1;
    return schedule(r);
  }
  if (saga.state === SagaState.COMPENSATING) {
    if (r.cursor < 0) {
      record(r, "compensated", SagaState.COMPENSATED, saga.reason);
      return;
    }
    const s = step(r, r.cursor);
    if (s.status !== "COMPENSATING") {
      s.status = "COMPENSATING";
      s.compensationAttempts += 1;
      r.saga.updatedAt = timestampNow();
      notify();
      return schedule(r);
    }
    if (r.outcome === "compfail" && s.name === "process_payment" && !r.compensationFailedOnce) {
      r.compensationFailedOnce = true;
      s.status = "COMPENSATION_FAILED";
      s.reason = "refund_payment: payment provider unavailable";
      saga.failedStep = s.name;
      record(r, "compensation_failed", SagaState.COMPENSATION_FAILED, s.reason);
      return;
    }
    s.status = "COMPENSATED";
    record(r, "step_compensated", SagaState.COMPENSATING, s.name);
    r.cursor -= 1;
    return schedule(r);
  }
}

function place(outcome: Outcome): string {
  const sagaId = randomUUID();
  const saga = create(SagaSchema, {
    sagaId,
    sagaType: "order",
    definitionVersion: 1,
    state: SagaState.RUNNING,
    steps: STEPS.map(([name, participant], index) =>
      create(StepStatusSchema, { index, name, participant, status: "NOT_STARTED" }),
    ),
    createdAt: timestampNow(),
    updatedAt: timestampNow(),
    order: {
      customerId: outcome === "complete" ? "cust-alice" : "cust-bob",
      items: [{ sku: outcome === "complete" ? "sku-widget" : "sku-soldout", quantity: 2n }],
      amountCents: 1250n,
      currency: "EUR",
    },
    idempotencyKey: `fake-${sagaId.slice(0, 8)}`,
    traceId: sagaId.replace(/-/g, ""),
  });
  const r: Record_ = { saga, history: [], outcome, cursor: 0, compensationFailedOnce: false };
  sagas.set(sagaId, r);
  record(r, "placed", SagaState.RUNNING);
  schedule(r);
  return sagaId;
}

/** The saga without its history, steps copied. */
function view(r: Record_): Saga {
  return create(SagaSchema, { ...r.saga, history: [], steps: r.saga.steps.map((s) => ({ ...s })) });
}

// Ends every open stream on a simulated restart.
const streams = new Set<AbortController>();

/** Resolves at the next change, or rejects when the stream must end. */
function nextChange(signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = () => {
      listeners.delete(done);
      signal.removeEventListener("abort", abort);
      resolve();
    };
    const abort = () => {
      listeners.delete(done);
      reject(new ConnectError("the orchestrator is shutting down: resume with the last seq", Code.Unavailable));
    };
    if (signal.aborted) return abort();
    listeners.add(done);
    signal.addEventListener("abort", abort, { once: true });
  });
}

function routes(router: ConnectRouter) {
  router.service(SagaService, {
    async *watchSaga(req, ctx) {
      const r = sagas.get(req.sagaId);
      if (!r) throw new ConnectError(`saga_id: no saga ${req.sagaId}`, Code.NotFound);
      const stream = new AbortController();
      streams.add(stream);
      const signal = AbortSignal.any([stream.signal, ctx.signal]);
      try {
        let sent = req.afterSeq;
        let first = true;
        let lastStepsJson = "";
        for (;;) {
          const entries = r.history.filter((e) => e.seq > sent);
          const stepsJson = JSON.stringify(r.saga.steps.map((s) => [s.status, s.attempts, s.compensationAttempts]));
          if (first || entries.length > 0 || stepsJson !== lastStepsJson) {
            yield create(WatchSagaResponseSchema, { saga: view(r), entries });
            first = false;
            lastStepsJson = stepsJson;
            if (entries.length > 0) sent = entries[entries.length - 1]!.seq;
          }
          if (finished(r.saga.state) && sent >= BigInt(r.history.length)) return;
          await nextChange(signal);
        }
      } finally {
        streams.delete(stream);
      }
    },
    async *watchSagas(req, ctx) {
      const stream = new AbortController();
      streams.add(stream);
      const signal = AbortSignal.any([stream.signal, ctx.signal]);
      const matches = (s: SagaState) => req.states.length === 0 || req.states.includes(s);
      try {
        let cursor: number;
        if (req.cursor === "") {
          const counts = new Map<SagaState, bigint>();
          for (const r of sagas.values()) counts.set(r.saga.state, (counts.get(r.saga.state) ?? 0n) + 1n);
          const newest = [...sagas.values()]
            .map((r) => r.saga)
            .filter((s) => matches(s.state))
            .reverse()
            .slice(0, req.snapshotSize || 50);
          cursor = changes.length;
          yield create(WatchSagasResponseSchema, {
            snapshot: {
              counts: [...counts].map(([state, count]) => ({ state, count })),
              sagas: newest.map((s) => create(SagaSchema, { ...s, steps: [], history: [] })),
              reset: false,
            },
            cursor: String(cursor),
          });
        } else {
          cursor = Number(req.cursor);
          if (!Number.isInteger(cursor) || cursor < 0 || cursor > changes.length) {
            throw new ConnectError("cursor: malformed", Code.InvalidArgument);
          }
        }
        // A resume answers at once (even with no change) so the client knows it is live.
        let answered = req.cursor === "";
        for (;;) {
          if (cursor < changes.length || !answered) {
            answered = true;
            const batch = changes.slice(cursor);
            cursor = changes.length;
            // Fold several changes of one saga into one.
            const folded = new Map<string, SagaChange>();
            for (const c of batch) {
              const r = sagas.get(c.sagaId)!;
              const before = folded.get(c.sagaId);
              const previous = before ? before.previousState : c.previous;
              folded.set(
                c.sagaId,
                create(SagaChangeSchema, {
                  saga: matches(r.saga.state) || matches(previous)
                    ? { ...r.saga, state: c.state, steps: [], history: [] }
                    : { sagaId: c.sagaId, sagaType: r.saga.sagaType, state: c.state },
                  previousState: previous,
                  matches: matches(c.state),
                  seq: c.seq,
                }),
              );
            }
            yield create(WatchSagasResponseSchema, { changes: [...folded.values()], cursor: String(cursor) });
          }
          await nextChange(signal);
        }
      } finally {
        streams.delete(stream);
      }
    },
    async retrySaga(req) {
      const r = sagas.get(req.sagaId);
      if (!r) throw new ConnectError(`saga_id: no saga ${req.sagaId}`, Code.NotFound);
      if (r.saga.state !== SagaState.COMPENSATION_FAILED) {
        throw new ConnectError("saga_id: SF1005 saga is not compensation-failed", Code.FailedPrecondition);
      }
      const s = step(r, r.cursor);
      s.compensationGeneration += 1;
      s.compensationAttempts = 0;
      s.status = "COMPENSATING";
      record(r, "retry_requested", SagaState.COMPENSATING, req.reason);
      schedule(r);
      return view(r);
    },
    async cancelSaga(req) {
      const r = sagas.get(req.sagaId);
      if (!r) throw new ConnectError(`saga_id: no saga ${req.sagaId}`, Code.NotFound);
      if (finished(r.saga.state)) throw new ConnectError("saga_id: SF1006 saga is finished", Code.FailedPrecondition);
      if (req.reason.trim() === "") {
        throw new ConnectError("reason: required", Code.InvalidArgument);
      }
      if (r.saga.state === SagaState.RUNNING) {
        r.saga.reason = req.reason;
        r.saga.failedStep = step(r, r.cursor).name;
        record(r, "cancel_requested", SagaState.COMPENSATING, req.reason);
        schedule(r);
      }
      return view(r);
    },
    async getSaga(req) {
      const r = sagas.get(req.sagaId);
      if (!r) throw new ConnectError(`saga_id: no saga ${req.sagaId}`, Code.NotFound);
      return { ...view(r), history: r.history };
    },
  });
}

// ------------------------------------------------------------------ servers

const OPERATOR_METHODS = new Set(["RetrySaga", "CancelSaga", "ListDeadLetters", "RedriveDeadLetters"]);

const auth: Interceptor = (next) => async (req) => {
  if (CLIENT_TOKEN || OPERATOR_TOKEN) {
    const header = req.header.get("authorization") ?? "";
    const token = header.startsWith("Bearer ") ? header.slice(7) : "";
    const operator = OPERATOR_TOKEN !== "" && token === OPERATOR_TOKEN;
    if (!operator && (CLIENT_TOKEN === "" || token !== CLIENT_TOKEN)) {
      throw new ConnectError("missing or unknown bearer token", Code.Unauthenticated);
    }
    if (!operator && OPERATOR_METHODS.has(req.method.name)) {
      throw new ConnectError("this action needs an operator token", Code.PermissionDenied);
    }
  }
  return next(req);
};

const grpcHandler = connectNodeAdapter({
  routes,
  grpcWeb: true,
  connect: false,
  grpc: false,
  interceptors: [auth],
});

function cors(req: IncomingMessage, res: ServerResponse): boolean {
  res.setHeader("access-control-allow-origin", req.headers.origin ?? "*");
  res.setHeader("access-control-expose-headers", "grpc-status, grpc-message, grpc-status-details-bin");
  if (req.method === "OPTIONS") {
    res.setHeader("access-control-allow-methods", "POST, OPTIONS");
    res.setHeader("access-control-allow-headers", "content-type, x-grpc-web, x-user-agent, authorization, grpc-timeout");
    res.setHeader("access-control-max-age", "600");
    res.writeHead(204).end();
    return true;
  }
  return false;
}

let grpcPort = arg("grpc-port", 0);
let grpcServer: Server;
function listenGrpc(): Promise<void> {
  grpcServer = createServer((req, res) => {
    if (!cors(req, res)) grpcHandler(req, res);
  });
  return new Promise((resolve) =>
    grpcServer.listen(grpcPort, "127.0.0.1", () => {
      grpcPort = (grpcServer.address() as AddressInfo).port;
      resolve();
    }),
  );
}

async function restart(ms: number) {
  for (const s of streams) s.abort();
  grpcServer.close();
  grpcServer.closeAllConnections();
  await new Promise((r) => setTimeout(r, ms));
  await listenGrpc();
}

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript",
  ".css": "text/css",
  ".svg": "image/svg+xml",
  ".png": "image/png",
};

const httpServer = createServer(async (req, res) => {
  const url = new URL(req.url ?? "/", "http://fake");
  try {
    if (url.pathname === "/config.json") {
      res.setHeader("content-type", "application/json");
      res.end(
        JSON.stringify({
          apiUrl: `http://127.0.0.1:${grpcPort}`,
          tokenRequired: CLIENT_TOKEN !== "" || OPERATOR_TOKEN !== "",
          jaegerUiUrl: process.env.JAEGER_UI_URL ?? null,
        }),
      );
    } else if (url.pathname === "/__fake/place" && req.method === "POST") {
      const outcome = (url.searchParams.get("outcome") ?? "complete") as Outcome;
      const n = Number(url.searchParams.get("n") ?? 1);
      const ids = Array.from({ length: n }, () => place(outcome));
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify({ ids }));
    } else if (url.pathname === "/__fake/restart" && req.method === "POST") {
      const ms = Number(url.searchParams.get("ms") ?? 2000);
      res.end("restarting\n");
      await restart(ms);
    } else if (req.method === "GET") {
      const path = normalize(url.pathname === "/" ? "/index.html" : decodeURIComponent(url.pathname));
      if (path.includes("..")) throw Object.assign(new Error("bad path"), { status: 400 });
      const body = await readFile(join(DIST, path));
      res.setHeader("content-type", TYPES[extname(path)] ?? "application/octet-stream");
      res.end(body);
    } else {
      res.writeHead(405).end();
    }
  } catch (err) {
    const status = (err as { status?: number; code?: string }).code === "ENOENT" ? 404 : 500;
    res.writeHead(status).end(String(err));
  }
});

await listenGrpc();
await new Promise<void>((resolve) => httpServer.listen(arg("http-port", 0), "127.0.0.1", resolve));
process.stdout.write(
  JSON.stringify({ event: "listening", grpc: grpcPort, http: (httpServer.address() as AddressInfo).port }) + "\n",
);
