import { useCallback, useEffect, useMemo, useState } from "preact/hooks";
import { fetchConfig, makeClient, storeToken, storedToken, type CallError, type ConsoleConfig } from "../api";
import { setLink } from "../connection";
import { backoffMs } from "../stream";
import { useRoute } from "../route";
import { Header } from "./Header";
import { SagaList } from "./SagaList";
import { SagaPage } from "./SagaPage";
import { TokenPrompt } from "./TokenPrompt";

/** Loads /config.json, retrying with backoff while the orchestrator is away. */
function useConfig(): ConsoleConfig | null {
  const [config, setConfig] = useState<ConsoleConfig | null>(null);
  useEffect(() => {
    const stop = new AbortController();
    let timer: ReturnType<typeof setTimeout> | undefined;
    let failures = 0;
    setLink({ kind: "connecting" });
    const attempt = () => {
      fetchConfig(stop.signal).then(setConfig, (err: unknown) => {
        if (stop.signal.aborted) return;
        failures += 1;
        const message = err instanceof Error ? err.message : String(err);
        setLink({ kind: "reconnecting", failures, error: { code: "UNAVAILABLE", message } });
        timer = setTimeout(attempt, backoffMs(failures));
      });
    };
    attempt();
    return () => {
      stop.abort();
      clearTimeout(timer);
    };
  }, []);
  return config;
}

export function App() {
  const config = useConfig();
  const route = useRoute();
  const [token, setToken] = useState(storedToken);
  const [authError, setAuthError] = useState<CallError | null>(null);
  // Bumped when a new token is entered: the live streams reopen with it.
  const [epoch, setEpoch] = useState(0);
  const client = useMemo(() => (config ? makeClient(config) : null), [config]);

  const onAuthError = useCallback((err: CallError) => setAuthError(err), []);
  const submitToken = useCallback((value: string) => {
    storeToken(value);
    setToken(value);
    setAuthError(null);
    setEpoch((e) => e + 1);
  }, []);
  const forgetToken = useCallback(() => {
    storeToken(null);
    setToken(null);
  }, []);

  const needToken = config !== null && config.tokenRequired && !token;
  useEffect(() => {
    if (needToken) setLink({ kind: "auth", error: { code: "UNAUTHENTICATED", message: "no token yet" } });
  }, [needToken]);
  let main;
  if (!config || !client) {
    main = <p class="placeholder">Waiting for the orchestrator…</p>;
  } else if (needToken) {
    main = null;
  } else if (route.page === "list") {
    main = <SagaList client={client} epoch={epoch} states={route.states} onAuthError={onAuthError} />;
  } else if (route.page === "saga") {
    main = (
      <SagaPage
        key={route.sagaId}
        client={client}
        config={config}
        epoch={epoch}
        sagaId={route.sagaId}
        onAuthError={onAuthError}
      />
    );
  } else {
    main = (
      <p class="placeholder">
        Nothing here. <a href="#/">All sagas</a>
      </p>
    );
  }

  return (
    <>
      <Header canForgetToken={!!config?.tokenRequired && !!token} onForgetToken={forgetToken} />
      <main>
        {(needToken || authError) && <TokenPrompt error={authError} onSubmit={submitToken} />}
        {main}
      </main>
    </>
  );
}
