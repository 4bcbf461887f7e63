import { useEffect, useRef, useState } from "preact/hooks";
import type { CallError, ConsoleConfig, SagaClient } from "../api";
import { setLink } from "../connection";
import { formatMoney, formatTime, isFinished } from "../format";
import { SagaState, type WatchSagaResponse } from "../gen/sagaflow/orchestrator/v1/orchestrator_pb";
import { applySagaMessage, emptySaga, sagaStreamDone, type SagaView } from "../model";
import { keepWatching, type LinkState } from "../stream";
import { Actions } from "./Actions";
import { History } from "./History";
import { Pipeline } from "./Pipeline";
import { StateBadge } from "./StateBadge";

export function SagaPage(props: {
  client: SagaClient;
  config: ConsoleConfig;
  epoch: number;
  sagaId: string;
  onAuthError: (err: CallError) => void;
}) {
  const { client, config, epoch, sagaId, onAuthError } = props;
  const viewRef = useRef<SagaView>(emptySaga);
  const [view, setView] = useState<SagaView>(emptySaga);
  const [link, setLocalLink] = useState<LinkState>({ kind: "connecting" });

  useEffect(() => {
    if (sagaStreamDone(viewRef.current)) {
      // Finished before a token change: nothing more will come.
      setLink({ kind: "ended" });
      return;
    }
    return keepWatching<WatchSagaResponse>({
      // Resume after the last entry shown: no gap, no duplicate.
      open: (signal, onHeader) =>
        client.watchSaga({ sagaId, afterSeq: viewRef.current.lastSeq }, { signal, onHeader }),
      onMessage: (msg) => {
        viewRef.current = applySagaMessage(viewRef.current, msg);
        setView(viewRef.current);
      },
      reconnectOnEnd: () => !sagaStreamDone(viewRef.current),
      onLink: (l) => {
        setLink(l);
        setLocalLink(l);
        if (l.kind === "auth") onAuthError(l.error);
      },
    });
  }, [client, sagaId, epoch]);

  const saga = view.saga;
  return (
    <article class="saga-page" aria-labelledby="saga-title">
      <p>
        <a href="#/">← All sagas</a>
      </p>
      <h1 id="saga-title">
        Saga <code class="saga-id">{sagaId}</code>{" "}
        {saga && <StateBadge state={saga.state} testId="saga-state" />}
      </h1>

      {link.kind === "stopped" && (
        <p class="error" role="alert" data-testid="saga-error" data-code={link.error.code}>
          <code>{link.error.code}</code> {link.error.message}
        </p>
      )}
      {!saga ? (
        link.kind !== "stopped" && <p class="placeholder">Waiting for the orchestrator…</p>
      ) : (
        <>
          {(saga.failedStep || saga.reason) && (
            <div
              class={`failure ${saga.state === SagaState.COMPENSATION_FAILED || saga.state === SagaState.SUSPENDED ? "bad" : "warn"}`}
              data-testid="saga-failure"
            >
              {saga.failedStep && (
                <p>
                  <strong>Failed step:</strong> <code data-testid="failed-step">{saga.failedStep}</code>
                </p>
              )}
              {saga.reason && (
                <p>
                  <strong>Reason:</strong> <span data-testid="saga-reason">{saga.reason}</span>
                </p>
              )}
            </div>
          )}

          <dl class="facts">
            <dt>Type</dt>
            <dd>
              {saga.sagaType} <span class="muted">v{saga.definitionVersion}</span>
            </dd>
            {saga.order && (
              <>
                <dt>Customer</dt>
                <dd>{saga.order.customerId}</dd>
                <dt>Items</dt>
                <dd>{saga.order.items.map((i) => `${String(i.quantity)} × ${i.sku}`).join(", ")}</dd>
                <dt>Amount</dt>
                <dd>{formatMoney(saga.order)}</dd>
              </>
            )}
            {!saga.order && saga.inputJson && (
              <>
                <dt>Input</dt>
                <dd>
                  <code class="input">{saga.inputJson}</code>
                </dd>
              </>
            )}
            <dt>Created</dt>
            <dd>
              <time>{formatTime(saga.createdAt)}</time>
            </dd>
            <dt>Updated</dt>
            <dd>
              <time>{formatTime(saga.updatedAt)}</time>
            </dd>
            {saga.idempotencyKey && (
              <>
                <dt>Idempotency key</dt>
                <dd>
                  <code>{saga.idempotencyKey}</code>
                </dd>
              </>
            )}
            {saga.traceId && (
              <>
                <dt>Trace</dt>
                <dd>
                  {config.jaegerUiUrl ? (
                    <a
                      data-testid="trace-link"
                      href={`${config.jaegerUiUrl}/trace/${encodeURIComponent(saga.traceId)}`}
                      target="_blank"
                      rel="noopener noreferrer"
                    >
                      <code>{saga.traceId}</code>
                    </a>
                  ) : (
                    <code>{saga.traceId}</code>
                  )}
                </dd>
              </>
            )}
          </dl>

          <Actions client={client} saga={saga} onAuthError={onAuthError} />

          <section aria-labelledby="steps-title">
            <h2 id="steps-title">Steps</h2>
            <Pipeline steps={saga.steps} failedStep={saga.failedStep} />
          </section>

          <History view={view} />
          {isFinished(saga.state) && <p class="muted">The saga is finished; nothing more will change.</p>}
        </>
      )}
    </article>
  );
}
