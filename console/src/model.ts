// Pure state of the two live views, folded from their streams' messages.
import {
  SagaState,
  type HistoryEntry,
  type Saga,
  type WatchSagaResponse,
  type WatchSagasResponse,
} from "./gen/sagaflow/orchestrator/v1/orchestrator_pb";
import { isFinished } from "./format";

// ---------------------------------------------------------------- list

/** Rows kept at most; the oldest fall off the bottom. */
export const LIST_MAX_ROWS = 1000;

export interface ListView {
  /** Newest first (created_at, then saga id, descending). */
  rows: Saga[];
  /** Sagas in each state, from the snapshot, moved by each change. */
  counts: ReadonlyMap<SagaState, number>;
  /** Resume after the last message with this. Empty: start with a snapshot. */
  cursor: string;
  /** A snapshot has arrived. */
  ready: boolean;
}

export const emptyList: ListView = { rows: [], counts: new Map(), cursor: "", ready: false };

function createdMillis(s: Saga): bigint {
  const t = s.createdAt;
  return t ? t.seconds * 1000n + BigInt(Math.floor(t.nanos / 1e6)) : 0n;
}

/** Newest first. */
function newerFirst(a: Saga, b: Saga): number {
  const ta = createdMillis(a);
  const tb = createdMillis(b);
  if (ta !== tb) return ta > tb ? -1 : 1;
  return a.sagaId > b.sagaId ? -1 : a.sagaId < b.sagaId ? 1 : 0;
}

export function applyListMessage(view: ListView, msg: WatchSagasResponse): ListView {
  let rows = view.rows;
  let counts = new Map(view.counts);
  let ready = view.ready;
  if (msg.snapshot) {
    // The first message, or a resume whose cursor was too old (reset):
    // either way the snapshot replaces everything shown.
    rows = [...msg.snapshot.sagas].sort(newerFirst);
    counts = new Map();
    for (const c of msg.snapshot.counts) counts.set(c.state, Number(c.count));
    ready = true;
  }
  if (msg.changes.length > 0) {
    const byId = new Map(rows.map((r) => [r.sagaId, r] as const));
    for (const change of msg.changes) {
      const saga = change.saga;
      if (!saga) continue;
      if (change.previousState !== SagaState.UNSPECIFIED) {
        counts.set(change.previousState, (counts.get(change.previousState) ?? 0) - 1);
      }
      counts.set(saga.state, (counts.get(saga.state) ?? 0) + 1);
      if (change.matches) byId.set(saga.sagaId, saga);
      else byId.delete(saga.sagaId);
    }
    rows = [...byId.values()].sort(newerFirst);
    if (rows.length > LIST_MAX_ROWS) rows = rows.slice(0, LIST_MAX_ROWS);
  }
  return { rows, counts, cursor: msg.cursor || view.cursor, ready };
}

// ---------------------------------------------------------------- one saga

export interface SagaView {
  /** As of the last entry received; without history. */
  saga: Saga | undefined;
  /** Every history entry received, in seq order, each once. */
  entries: HistoryEntry[];
  /** The last seq received: where a reconnect resumes (after_seq). */
  lastSeq: bigint;
  /** Set when retention removed entries: they start at this seq. */
  prunedBeforeSeq: bigint;
  /** Seqs that arrived again (shown once). The server promises none. */
  duplicates: bigint[];
  /** Seqs that never arrived although later ones did. The server promises none. */
  missing: bigint[];
}

export const emptySaga: SagaView = {
  saga: undefined,
  entries: [],
  lastSeq: 0n,
  prunedBeforeSeq: 0n,
  duplicates: [],
  missing: [],
};

export function applySagaMessage(view: SagaView, msg: WatchSagaResponse): SagaView {
  let { lastSeq, prunedBeforeSeq } = view;
  const entries = [...view.entries];
  const duplicates = [...view.duplicates];
  const missing = [...view.missing];
  if (msg.prunedBeforeSeq > 0n) {
    prunedBeforeSeq = msg.prunedBeforeSeq;
    if (lastSeq < prunedBeforeSeq - 1n) lastSeq = prunedBeforeSeq - 1n;
  }
  for (const e of msg.entries) {
    if (e.seq <= lastSeq) {
      duplicates.push(e.seq);
      continue;
    }
    for (let s = lastSeq + 1n; s < e.seq; s++) missing.push(s);
    entries.push(e);
    if (e.seq > lastSeq) lastSeq = e.seq;
  }
  const saga = msg.saga ?? view.saga;
  return { saga, entries, lastSeq, prunedBeforeSeq, duplicates, missing };
}

/** A WatchSaga stream that ends normally on a finished saga is not reopened. */
export function sagaStreamDone(view: SagaView): boolean {
  return view.saga !== undefined && isFinished(view.saga.state);
}
