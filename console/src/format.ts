import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { SagaState } from "./gen/sagaflow/orchestrator/v1/orchestrator_pb";
import type { OrderInput } from "./gen/sagaflow/participant/v1/participant_pb";

/** The states a saga can be in, in the order the console lists them. */
export const SAGA_STATES: readonly SagaState[] = [
  SagaState.RUNNING,
  SagaState.COMPENSATING,
  SagaState.COMPLETED,
  SagaState.COMPENSATED,
  SagaState.COMPENSATION_FAILED,
  SagaState.SUSPENDED,
];

/** Short state name as used in data-state attributes: "COMPENSATION_FAILED". */
export function stateName(state: SagaState): string {
  return SagaState[state] ?? `STATE_${state}`;
}

export function parseStateName(name: string): SagaState | undefined {
  const short = name.trim().toUpperCase().replace(/^SAGA_STATE_/, "");
  const state = SAGA_STATES.find((s) => SagaState[s] === short);
  return state;
}

/** Human label: "compensation failed". */
export function stateLabel(state: SagaState): string {
  return stateName(state).toLowerCase().replace(/_/g, " ");
}

/** COMPLETED and COMPENSATED: nothing changes any more. */
export function isFinished(state: SagaState): boolean {
  return state === SagaState.COMPLETED || state === SagaState.COMPENSATED;
}

/** The fields of a saga's input the list shows, whatever its type. */
interface ListedInput {
  customerId?: string;
  amountCents?: bigint;
  currency?: string;
}

/**
 * The customer and amount of a saga: an order's, or for another type the
 * `customer_id`, `amount_cents` and `currency` of its JSON input when it has
 * them (a trip does). Anything else in the input is left to the saga page.
 */
export function listedInput(saga: { order?: OrderInput; inputJson: string }): ListedInput {
  if (saga.order) return saga.order;
  if (!saga.inputJson) return {};
  try {
    const input: unknown = JSON.parse(saga.inputJson);
    if (typeof input !== "object" || input === null) return {};
    const { customer_id, amount_cents, currency } = input as Record<string, unknown>;
    return {
      customerId: typeof customer_id === "string" ? customer_id : undefined,
      amountCents: Number.isSafeInteger(amount_cents) ? BigInt(amount_cents as number) : undefined,
      currency: typeof currency === "string" ? currency : undefined,
    };
  } catch {
    return {};
  }
}

/** "EUR 12.50": amount_cents is in hundredths of the currency, as everywhere in Sagaflow. */
export function formatMoney(order: ListedInput | undefined): string {
  if (!order || order.amountCents === undefined) return "";
  const cents = order.amountCents;
  const negative = cents < 0n;
  const abs = negative ? -cents : cents;
  const units = abs / 100n;
  const rest = (abs % 100n).toString().padStart(2, "0");
  const currency = order.currency || "EUR";
  return `${currency} ${negative ? "-" : ""}${units.toString()}.${rest}`;
}

export function toDate(ts: Timestamp | undefined): Date | undefined {
  return ts ? timestampDate(ts) : undefined;
}

function pad(n: number, width = 2): string {
  return String(n).padStart(width, "0");
}

/** Local time "2025-01-31 14:05:09". */
export function formatTime(ts: Timestamp | undefined): string {
  const d = toDate(ts);
  if (!d) return "";
  return (
    `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`
  );
}

/** Local time with milliseconds, for history entries: "14:05:09.123". */
export function formatClock(ts: Timestamp | undefined): string {
  const d = toDate(ts);
  if (!d) return "";
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

export function shortId(id: string): string {
  return id.length > 13 ? `${id.slice(0, 8)}…${id.slice(-4)}` : id;
}

/** A UUID for request_id; crypto.randomUUID needs a secure context, getRandomValues does not. */
export function newRequestId(): string {
  if (typeof crypto.randomUUID === "function") {
    try {
      return crypto.randomUUID();
    } catch {
      // not a secure context: fall through
    }
  }
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = ((b[6] ?? 0) & 0x0f) | 0x40;
  b[8] = ((b[8] ?? 0) & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
