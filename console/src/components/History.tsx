import { formatClock, formatTime } from "../format";
import type { SagaView } from "../model";
import { StateBadge } from "./StateBadge";

const seqList = (seqs: readonly bigint[]) => seqs.map(String).join(",");

/** The saga's history, oldest first, newest at the bottom, each entry once. */
export function History({ view }: { view: SagaView }) {
  return (
    <section
      class="history"
      aria-labelledby="history-title"
      data-testid="history"
      data-last-seq={String(view.lastSeq)}
      data-duplicates={seqList(view.duplicates)}
      data-missing={seqList(view.missing)}
    >
      <h2 id="history-title">History</h2>
      {view.prunedBeforeSeq > 0n && (
        <p class="note">Entries before seq {String(view.prunedBeforeSeq)} were removed by history retention.</p>
      )}
      {(view.duplicates.length > 0 || view.missing.length > 0) && (
        <p class="error" role="alert">
          The stream broke its promise:
          {view.duplicates.length > 0 && ` seqs received twice: ${seqList(view.duplicates)};`}
          {view.missing.length > 0 && ` seqs never received: ${seqList(view.missing)}.`}
        </p>
      )}
      <table>
        <thead>
          <tr>
            <th scope="col" class="num">
              Seq
            </th>
            <th scope="col">Time</th>
            <th scope="col">Kind</th>
            <th scope="col">State</th>
            <th scope="col">Detail</th>
          </tr>
        </thead>
        <tbody>
          {view.entries.map((e) => (
            <tr key={String(e.seq)} data-testid="history-entry" data-seq={String(e.seq)} data-kind={e.kind}>
              <td class="num">{String(e.seq)}</td>
              <td>
                <time title={formatTime(e.at)}>{formatClock(e.at)}</time>
              </td>
              <td>
                <code>{e.kind}</code>
              </td>
              <td>
                <StateBadge state={e.state} />
              </td>
              <td class="detail">{e.detail}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}
