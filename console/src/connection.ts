import { useEffect, useState } from "preact/hooks";
import { OFFLINE_AFTER_FAILURES, type LinkState } from "./stream";

/** What the header's indicator shows: the state of the current page's stream. */
export interface Indicator {
  /** data-state: live | reconnecting | offline */
  state: "live" | "reconnecting" | "offline";
  label: string;
  detail: string;
}

let current: Indicator = { state: "reconnecting", label: "connecting…", detail: "" };
const listeners = new Set<(i: Indicator) => void>();

export function indicatorFor(link: LinkState): Indicator {
  switch (link.kind) {
    case "connecting":
      return { state: "reconnecting", label: "connecting…", detail: "" };
    case "live":
      return { state: "live", label: "live", detail: "" };
    case "ended":
      return { state: "live", label: "live", detail: "the saga is finished: nothing more will change" };
    case "reconnecting": {
      const detail = `${link.error.code}: ${link.error.message}`;
      return link.failures >= OFFLINE_AFTER_FAILURES
        ? { state: "offline", label: "offline", detail: `retrying — ${detail}` }
        : { state: "reconnecting", label: "reconnecting…", detail };
    }
    case "stopped":
      return { state: "offline", label: "stopped", detail: `${link.error.code}: ${link.error.message}` };
    case "auth":
      return { state: "offline", label: "token needed", detail: `${link.error.code}: ${link.error.message}` };
  }
}

export function setIndicator(next: Indicator): void {
  if (next.state === current.state && next.label === current.label && next.detail === current.detail) return;
  current = next;
  for (const l of listeners) l(current);
}

export function setLink(link: LinkState): void {
  setIndicator(indicatorFor(link));
}

export function useIndicator(): Indicator {
  const [value, setValue] = useState(current);
  useEffect(() => {
    listeners.add(setValue);
    setValue(current);
    return () => {
      listeners.delete(setValue);
    };
  }, []);
  return value;
}
