import { Code } from "@connectrpc/connect";
import { useEffect, useRef, useState } from "preact/hooks";
import type { CallError, SagaClient } from "../api";
import { setLink } from "../connection";
import { formatMoney, formatTime, listedInput, SAGA_STATES, shortId, stateLabel, stateName } from "../format";
import type { SagaState, WatchSagasResponse } from "../gen/sagaflow/orchestrator/v1/orchestrator_pb";
import { applyListMessage, emptyList, type ListView } from "../model";
import { listHref, sagaHref } from "../route";
import { keepWatching, type LinkState } from "../stream";
import { StateBadge } from "./StateBadge";

const SNAPSHOT_SIZE = 100;

export function SagaList(props: {
  client: SagaClient;
  epoch: number;
  states: SagaState[];
  onAuthError: (err: CallError) => void;
}) {
  const { client, epoch, states, onAuthError } = props;
  const filterKey = states.map(stateName).join(",");
  const viewRef = useRef<{ key: string; view: ListView }>({ key: filterKey, view: emptyList });
  const [view, setView] = useState<ListView>(emptyList);
  const [link, setLocalLink] = useState<LinkState>({ kind: "connecting" });
  // Rows present when the list was first shown are not flashed as new.
  const knownIds = useRef<Set<string> | null>(null);

  useEffect(() => {
    if (viewRef.current.key !== filterKey) {
      // Another filter: start over with a fresh snapshot.
      viewRef.current = { key: filterKey, view: emptyList };
      knownIds.current = null;
      setView(emptyList);
    }
    return keepWatching<WatchSagasResponse>({
      open: (signal, onHeader) =>
        client.watchSagas(
          { states, snapshotSize: SNAPSHOT_SIZE, cursor: viewRef.current.view.cursor },
          { signal, onHeader },
        ),
      onMessage: (msg) => {
        const next = applyListMessage(viewRef.current.view, msg);
        if (msg.snapshot) knownIds.current = new Set(next.rows.map((r) => r.sagaId));
        viewRef.current = { key: filterKey, view: next };
        setView(next);
      },
      reconnectOnEnd: () => true,
      onPermanentError: (err) => {
        // A cursor the server no longer understands: start over with a snapshot.
        if (err.code === Code.InvalidArgument && viewRef.current.view.cursor !== "") {
          viewRef.current = { key: filterKey, view: { ...viewRef.current.view, cursor: "" } };
          return "retry";
        }
        return "stop";
      },
      onLink: (l) => {
        setLink(l);
        setLocalLink(l);
        if (l.kind === "auth") onAuthError(l.error);
      },
    });
    // `states` is captured through filterKey; a new token (epoch) reopens the stream.
  }, [client, filterKey, epoch]);

  const selected = new Set(states);
  const toggle = (s: SagaState) => {
    const next = SAGA_STATES.filter((x) => (x === s ? !selected.has(x) : selected.has(x)));
    location.hash = listHref(next);
  };
  const total = [...view.counts.values()].reduce((a, b) => a + b, 0);

  return (
    <section class="saga-list" aria-labelledby="list-title">
      <h1 id="list-title">Sagas</h1>
      <fieldset class="state-filter" data-testid="state-filter">
        <legend>Show sagas in state</legend>
        <button
          type="button"
          class={`chip all ${selected.size === 0 ? "on" : ""}`}
          aria-pressed={selected.size === 0}
          onClick={() => (location.hash = listHref([]))}
        >
          all <span class="count" data-testid="count-ALL">{view.ready ? total : "–"}</span>
        </button>
        {SAGA_STATES.map((s) => {
          const name = stateName(s);
          return (
            <label key={name} class={`chip state-${name} ${selected.has(s) ? "on" : ""}`}>
              <input type="checkbox" value={name} checked={selected.has(s)} onChange={() => toggle(s)} />
              {stateLabel(s)}{" "}
              <span class="count" data-testid={`count-${name}`}>
                {view.ready ? (view.counts.get(s) ?? 0) : "–"}
              </span>
            </label>
          );
        })}
      </fieldset>

      {link.kind === "stopped" && (
        <p class="error" role="alert">
          <code>{link.error.code}</code> {link.error.message}
        </p>
      )}

      {!view.ready ? (
        <p class="placeholder">Waiting for the orchestrator…</p>
      ) : view.rows.length === 0 ? (
        <p class="placeholder">No sagas {selected.size > 0 ? "in these states " : ""}yet.</p>
      ) : (
        <table class="sagas">
          <thead>
            <tr>
              <th scope="col">Saga</th>
              <th scope="col">Type</th>
              <th scope="col">Customer</th>
              <th scope="col" class="num">
                Amount
              </th>
              <th scope="col">State</th>
              <th scope="col">Created</th>
              <th scope="col">Reason</th>
            </tr>
          </thead>
          <tbody>
            {view.rows.map((s) => {
              const listed = listedInput(s);
              return (
                <tr
                  key={s.sagaId}
                  class={knownIds.current && !knownIds.current.has(s.sagaId) ? "fresh" : ""}
                  data-testid="saga-row"
                  data-saga-id={s.sagaId}
                  data-saga-type={s.sagaType}
                  data-state={stateName(s.state)}
                  onClick={(e) => {
                    if (!(e.target instanceof HTMLAnchorElement)) location.hash = sagaHref(s.sagaId);
                  }}
                >
                  <td>
                    <a href={sagaHref(s.sagaId)} title={s.sagaId}>
                      <code>{shortId(s.sagaId)}</code>
                    </a>
                  </td>
                  <td>{s.sagaType}</td>
                  <td data-testid="saga-customer">{listed.customerId ?? ""}</td>
                  <td class="num" data-testid="saga-amount">
                    {formatMoney(listed)}
                  </td>
                  <td>
                    <StateBadge state={s.state} />
                  </td>
                  <td>
                    <time>{formatTime(s.createdAt)}</time>
                  </td>
                  <td class="reason">{s.reason}</td>
                </tr>
              );
            })}
          </tbody>
        </table>
      )}
    </section>
  );
}
