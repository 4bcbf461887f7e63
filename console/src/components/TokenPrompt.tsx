import { useState } from "preact/hooks";
import type { CallError } from "../api";

export function TokenPrompt(props: { error: CallError | null; onSubmit: (token: string) => void }) {
  const [value, setValue] = useState("");
  const submit = (e: Event) => {
    e.preventDefault();
    const token = value.trim();
    if (token) props.onSubmit(token);
  };
  return (
    <form class="token-prompt" onSubmit={submit} aria-labelledby="token-title">
      <h2 id="token-title">Bearer token</h2>
      {props.error ? (
        <p class="error" role="alert" data-testid="token-error" data-code={props.error.code}>
          The orchestrator refused the call: <code>{props.error.code}</code> {props.error.message}. Enter a token
          with the rights it needs (an operator token for Retry and Cancel).
        </p>
      ) : (
        <p>The orchestrator's API needs a bearer token. It is kept for this browser tab only.</p>
      )}
      <label for="token-input">Token</label>
      <input
        id="token-input"
        data-testid="token-input"
        type="password"
        autocomplete="off"
        spellcheck={false}
        value={value}
        onInput={(e) => setValue(e.currentTarget.value)}
      />
      <button type="submit" data-testid="token-submit" disabled={value.trim() === ""}>
        Use token
      </button>
    </form>
  );
}
