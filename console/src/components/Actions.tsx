import { useEffect, useRef, useState } from "preact/hooks";
import { callError, isAuthError, type CallError, type SagaClient } from "../api";
import { newRequestId, stateName } from "../format";
import { SagaState, type Saga } from "../gen/sagaflow/orchestrator/v1/orchestrator_pb";
import { StateBadge } from "./StateBadge";

type Action = "retry" | "cancel";

const TEXT: Record<Action, { button: string; title: string; explain: string; confirm: string }> = {
  retry: {
    button: "Retry",
    title: "Retry this saga?",
    explain:
      "A compensation-failed saga re-sends its failed compensation with a fresh attempt budget and is compensating again; a suspended saga re-sends its in-flight command. Fix the cause first.",
    confirm: "Retry saga",
  },
  cancel: {
    button: "Cancel",
    title: "Cancel this saga?",
    explain:
      "The saga stops and is compensated: the in-flight step is undone, then the earlier steps in reverse order. A saga past its pivot cannot be cancelled.",
    confirm: "Cancel saga",
  },
};

// The outcome of these is unknown: a repeat should carry the same request id.
const UNKNOWN_OUTCOME = new Set(["UNAVAILABLE", "UNKNOWN", "DEADLINE_EXCEEDED", "INTERNAL", "CANCELED"]);

export function Actions(props: { client: SagaClient; saga: Saga; onAuthError: (err: CallError) => void }) {
  const { client, saga, onAuthError } = props;
  const [open, setOpen] = useState<Action | null>(null);
  const [reason, setReason] = useState("");
  const [busy, setBusy] = useState(false);
  const [result, setResult] = useState<{ action: Action; state: SagaState } | null>(null);
  const [error, setError] = useState<{ action: Action; err: CallError } | null>(null);
  const requestIds = useRef<Record<Action, string | null>>({ retry: null, cancel: null });
  const dialog = useRef<HTMLDialogElement>(null);

  useEffect(() => {
    const d = dialog.current;
    if (!d) return;
    if (open && !d.open) d.showModal();
    if (!open && d.open) d.close();
  }, [open]);

  const canRetry = saga.state === SagaState.COMPENSATION_FAILED || saga.state === SagaState.SUSPENDED;
  const canCancel = saga.state === SagaState.RUNNING || saga.state === SagaState.SUSPENDED;
  if (!canRetry && !canCancel && !result && !error && !open) return null;

  const start = (action: Action) => {
    setReason("");
    setOpen(action);
  };

  const confirm = async (e: Event) => {
    e.preventDefault();
    if (!open || busy) return;
    const action = open;
    const why = reason.trim();
    if (action === "cancel" && why === "") return;
    const requestId = (requestIds.current[action] ??= newRequestId());
    setBusy(true);
    try {
      const req = { sagaId: saga.sagaId, reason: why, requestId };
      const after = action === "retry" ? await client.retrySaga(req) : await client.cancelSaga(req);
      requestIds.current[action] = null;
      setResult({ action, state: after.state });
      setError(null);
    } catch (err) {
      const ce = callError(err);
      if (!UNKNOWN_OUTCOME.has(ce.code)) requestIds.current[action] = null;
      setError({ action, err: ce });
      setResult(null);
      if (isAuthError(err)) onAuthError(ce);
    } finally {
      setBusy(false);
      setOpen(null);
    }
  };

  const text = open ? TEXT[open] : null;
  return (
    <section class="actions" aria-label="Operator actions">
      <div class="buttons">
        {canRetry && (
          <button type="button" data-testid="retry-button" onClick={() => start("retry")}>
            {TEXT.retry.button}
          </button>
        )}
        {canCancel && (
          <button type="button" class="danger" data-testid="cancel-button" onClick={() => start("cancel")}>
            {TEXT.cancel.button}
          </button>
        )}
      </div>
      <div aria-live="polite">
        {result && (
          <p class="ok" data-testid="action-result" data-state={stateName(result.state)}>
            {TEXT[result.action].button} accepted: the saga is now <StateBadge state={result.state} />.
          </p>
        )}
        {error && (
          <p class="error" data-testid="action-error" data-code={error.err.code} role="alert">
            {TEXT[error.action].button} failed: <code>{error.err.code}</code> {error.err.message}
          </p>
        )}
      </div>
      <dialog ref={dialog} aria-labelledby="action-title" onClose={() => setOpen(null)}>
        {text && open && (
          <form onSubmit={confirm}>
            <h2 id="action-title">{text.title}</h2>
            <p>{text.explain}</p>
            <label for="action-reason">Reason {open === "cancel" ? "(required)" : "(optional)"}</label>
            <textarea
              id="action-reason"
              data-testid="action-reason"
              rows={3}
              maxLength={1000}
              required={open === "cancel"}
              value={reason}
              onInput={(e) => setReason(e.currentTarget.value)}
            />
            <div class="buttons">
              <button type="button" onClick={() => setOpen(null)} disabled={busy}>
                Back
              </button>
              <button
                type="submit"
                class={open === "cancel" ? "danger" : ""}
                data-testid="confirm-button"
                disabled={busy || (open === "cancel" && reason.trim() === "")}
              >
                {busy ? "Sending…" : text.confirm}
              </button>
            </div>
          </form>
        )}
      </dialog>
    </section>
  );
}
