import { Code, ConnectError } from "@connectrpc/connect";
import { callError, type CallError } from "./api";

/** Where one live stream stands. */
export type LinkState =
  | { kind: "connecting" }
  | { kind: "live" }
  /** The stream failed and is being reopened; `failures` in a row so far. */
  | { kind: "reconnecting"; failures: number; error: CallError }
  /** The server ended the stream normally and nothing more will come (a finished saga). */
  | { kind: "ended" }
  /** A permanent error (unknown saga, malformed request): not retried. */
  | { kind: "stopped"; error: CallError }
  /** UNAUTHENTICATED or PERMISSION_DENIED: waits for a new token. */
  | { kind: "auth"; error: CallError };

export interface WatchHandlers<T> {
  /** Opens the stream, resuming from wherever the caller stands now. */
  open(signal: AbortSignal, onHeader: () => void): AsyncIterable<T>;
  onMessage(msg: T): void;
  /** The server ended the stream normally: reopen it? */
  reconnectOnEnd(): boolean;
  /**
   * A permanent error (see `isPermanent`): "retry" reopens at once (e.g. after
   * dropping a stale cursor), "stop" gives up.
   */
  onPermanentError?(err: ConnectError): "retry" | "stop";
  onLink(state: LinkState): void;
}

export const BACKOFF_FIRST_MS = 250;
export const BACKOFF_CAP_MS = 5000;
/** Failures in a row after which the console says "offline" rather than "reconnecting". */
export const OFFLINE_AFTER_FAILURES = 3;

export function backoffMs(failures: number): number {
  const base = Math.min(BACKOFF_CAP_MS, BACKOFF_FIRST_MS * 2 ** Math.max(0, failures - 1));
  return Math.round(base * (0.8 + Math.random() * 0.4));
}

function isPermanent(code: Code): boolean {
  return (
    code === Code.NotFound ||
    code === Code.InvalidArgument ||
    code === Code.FailedPrecondition ||
    code === Code.Unimplemented ||
    code === Code.OutOfRange
  );
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const t = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
    function done() {
      clearTimeout(t);
      signal.removeEventListener("abort", done);
      resolve();
    }
  });
}

/**
 * Keeps a server stream open: reopens it with exponential backoff (capped at
 * BACKOFF_CAP_MS) after an error or an early end, until the returned
 * function is called, the stream ends for good, or an error is permanent.
 */
export function keepWatching<T>(h: WatchHandlers<T>): () => void {
  const stop = new AbortController();
  void run();
  return () => stop.abort();

  async function run(): Promise<void> {
    let failures = 0;
    h.onLink({ kind: "connecting" });
    while (!stop.signal.aborted) {
      const call = new AbortController();
      const onStop = () => call.abort();
      stop.signal.addEventListener("abort", onStop, { once: true });
      let error: ConnectError;
      try {
        for await (const msg of h.open(call.signal, () => h.onLink({ kind: "live" }))) {
          if (stop.signal.aborted) return;
          failures = 0;
          h.onMessage(msg);
        }
        if (stop.signal.aborted) return;
        if (!h.reconnectOnEnd()) {
          h.onLink({ kind: "ended" });
          return;
        }
        error = new ConnectError("the server ended the stream", Code.Unavailable);
      } catch (err) {
        if (stop.signal.aborted) return;
        error = ConnectError.from(err);
      } finally {
        stop.signal.removeEventListener("abort", onStop);
        call.abort();
      }
      if (error.code === Code.Unauthenticated || error.code === Code.PermissionDenied) {
        h.onLink({ kind: "auth", error: callError(error) });
        return;
      }
      if (isPermanent(error.code)) {
        if (h.onPermanentError?.(error) === "retry") continue;
        h.onLink({ kind: "stopped", error: callError(error) });
        return;
      }
      failures += 1;
      h.onLink({ kind: "reconnecting", failures, error: callError(error) });
      await sleep(backoffMs(failures), stop.signal);
    }
  }
}
