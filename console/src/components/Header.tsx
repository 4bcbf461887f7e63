import { useIndicator } from "../connection";

export function Header(props: { canForgetToken: boolean; onForgetToken: () => void }) {
  const ind = useIndicator();
  return (
    <header class="top">
      <a class="brand" href="#/">
        Sagaflow
      </a>
      <nav aria-label="Main">
        <a href="#/">Sagas</a>
      </nav>
      <div class="spacer" />
      {props.canForgetToken && (
        <button type="button" class="link" onClick={props.onForgetToken}>
          Change token
        </button>
      )}
      <span
        class={`connection conn-${ind.state}`}
        data-testid="connection"
        data-state={ind.state}
        role="status"
        title={ind.detail || ind.label}
      >
        <span class="dot" aria-hidden="true" />
        {ind.label}
      </span>
    </header>
  );
}
