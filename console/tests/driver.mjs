#!/usr/bin/env node
// Drives the console in headless Chromium for system tests.
//
//   node tests/driver.mjs <scenario> <console-url> [saga-ids]
//
// Prints one JSON object per line on stdout (see README.md, "Browser test
// driver"); exits 0 when the scenario passed, 1 when it failed, 2 on bad usage.
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const SCENARIOS = ["list", "saga", "retry", "cancel", "restart", "smoke"];
const CHROMIUM_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

const argv = process.argv.slice(2);
const scenario = argv[0] ?? process.env.SCENARIO ?? "";
const consoleUrl = argv[1] ?? process.env.CONSOLE_URL ?? "";
const sagaIds = (argv[2] ?? process.env.SAGA_IDS ?? process.env.SAGA_ID ?? "")
  .split(",")
  .map((s) => s.trim())
  .filter(Boolean);
const timeoutMs = Number(process.env.TIMEOUT_MS ?? 60000);
const screenshotDir = process.env.SCREENSHOT_DIR ?? "";
const token = process.env.SAGAFLOW_TOKEN ?? "";
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const states = (name, fallback) =>
  (process.env[name] ?? fallback)
    .split(",")
    .map((s) => s.trim().toUpperCase().replace(/^SAGA_STATE_/, ""))
    .filter(Boolean);
const FINISHED = ["COMPLETED", "COMPENSATED"];

const started = Date.now();
function emit(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, ...fields, t: Date.now() - started }) + "\n");
}

function usage(message) {
  process.stderr.write(
    `${message}\nusage: node tests/driver.mjs <${SCENARIOS.join("|")}> <console-url> [saga-id[,saga-id...]]\n`,
  );
  process.exit(2);
}
if (!SCENARIOS.includes(scenario)) usage(`unknown scenario "${scenario}"`);
if (!/^https?:\/\//.test(consoleUrl)) usage(`not a console URL: "${consoleUrl}"`);
if (scenario !== "smoke" && sagaIds.length === 0) usage("no saga id given");
if (scenario !== "list" && scenario !== "smoke" && sagaIds.length !== 1) usage("give exactly one saga id");

// ------------------------------------------------------------------ stdin

const stdinLines = [];
const stdinWaiters = [];
let stdinClosed = false;
function nextStdinLine() {
  if (stdinLines.length > 0) return Promise.resolve(stdinLines.shift());
  if (stdinClosed) return Promise.reject(new Error("stdin closed before the expected line"));
  return new Promise((resolve, reject) => stdinWaiters.push({ resolve, reject }));
}
const idsFromStdin = scenario === "list" && sagaIds.length === 1 && sagaIds[0] === "-";
if (scenario === "restart" || idsFromStdin) {
  const rl = createInterface({ input: process.stdin });
  rl.on("line", (line) => {
    const w = stdinWaiters.shift();
    if (w) w.resolve(line.trim());
    else stdinLines.push(line.trim());
  });
  rl.on("close", () => {
    stdinClosed = true;
    for (const w of stdinWaiters.splice(0)) w.reject(new Error("stdin closed before the expected line"));
  });
}

// ------------------------------------------------------------------ page observation

// Runs in every document: reports what the console shows whenever the DOM changes.
function observerScript() {
  const report = (data) => globalThis.__sagaflowObserve(data);
  const attr = (el, name) => (el ? el.getAttribute(name) : null);
  const all = (sel) => Array.from(document.querySelectorAll(sel));
  const snapshot = () => {
    const history = document.querySelector('[data-testid="history"]');
    const result = document.querySelector('[data-testid="action-result"]');
    const error = document.querySelector('[data-testid="action-error"]');
    const sagaError = document.querySelector('[data-testid="saga-error"]');
    return {
      hash: location.hash,
      connection: attr(document.querySelector('[data-testid="connection"]'), "data-state"),
      connectionLabel: document.querySelector('[data-testid="connection"]')?.textContent?.trim() ?? null,
      sagaState: attr(document.querySelector('[data-testid="saga-state"]'), "data-state"),
      steps: all('[data-testid="step"]').map((el) => [attr(el, "data-name"), attr(el, "data-status")]),
      // The step names of each stage, in order: a parallel group's share one.
      stages: all('[data-testid="stage"]').map((st) =>
        Array.from(st.querySelectorAll('[data-testid="step"]')).map((el) => attr(el, "data-name")),
      ),
      // [id, state, saga type, customer cell, amount cell]
      rows: all('[data-testid="saga-row"]').map((el) => [
        attr(el, "data-saga-id"),
        attr(el, "data-state"),
        attr(el, "data-saga-type"),
        el.querySelector('[data-testid="saga-customer"]')?.textContent?.trim() ?? "",
        el.querySelector('[data-testid="saga-amount"]')?.textContent?.trim() ?? "",
      ]),
      counts: Object.fromEntries(
        all('[data-testid^="count-"]').map((el) => [attr(el, "data-testid").slice(6), el.textContent.trim()]),
      ),
      history: all('[data-testid="history-entry"]').map((el) => Number(attr(el, "data-seq"))),
      duplicates: attr(history, "data-duplicates"),
      missing: attr(history, "data-missing"),
      actionResult: result ? { state: attr(result, "data-state"), text: result.textContent.trim() } : null,
      actionError: error ? { code: attr(error, "data-code"), text: error.textContent.trim() } : null,
      sagaError: sagaError ? { code: attr(sagaError, "data-code"), text: sagaError.textContent.trim() } : null,
      tokenPrompt: !!document.querySelector('[data-testid="token-input"]'),
      tokenError: document.querySelector('[data-testid="token-error"]')?.textContent?.trim() ?? null,
      retryButton: !!document.querySelector('[data-testid="retry-button"]'),
      cancelButton: !!document.querySelector('[data-testid="cancel-button"]'),
    };
  };
  let last = "";
  const send = () => {
    const s = snapshot();
    const json = JSON.stringify(s);
    if (json !== last) {
      last = json;
      report({ snapshot: s });
    }
  };
  report({ document: true });
  const start = () => {
    new MutationObserver(send).observe(document, {
      subtree: true,
      childList: true,
      characterData: true,
      attributes: true,
      attributeFilter: ["data-state", "data-status", "data-seq", "data-duplicates", "data-missing", "data-code"],
    });
    send();
  };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start, { once: true });
  else start();
}

let latest = null;
let documents = 0;
const waiters = new Set();
/** Set when the scenario cannot go on (e.g. a refused token): every wait fails with it. */
let fatal = null;

function fail(err) {
  fatal = err;
  for (const w of [...waiters]) {
    waiters.delete(w);
    clearTimeout(w.timer);
    w.reject(err);
  }
}

function check() {
  for (const w of [...waiters]) {
    let value;
    try {
      value = w.predicate(latest);
    } catch (err) {
      waiters.delete(w);
      clearTimeout(w.timer);
      w.reject(err);
      continue;
    }
    if (value) {
      waiters.delete(w);
      clearTimeout(w.timer);
      w.resolve(value);
    }
  }
}

/** Resolves with the predicate's first truthy value over the page's snapshots. */
function waitFor(what, predicate, ms = timeoutMs) {
  const now = latest ? predicate(latest) : null;
  if (now) return Promise.resolve(now);
  if (fatal) return Promise.reject(fatal);
  return new Promise((resolve, reject) => {
    const w = { predicate: (s) => (s ? predicate(s) : false), resolve, reject, timer: undefined };
    w.timer = setTimeout(() => {
      waiters.delete(w);
      reject(new Error(`timed out after ${ms} ms waiting for ${what}`));
    }, ms);
    waiters.add(w);
    check();
  });
}

// Emits changes of the connection indicator and, when tracked, of steps, rows and state.
let prev = null;
function emitChanges(s) {
  if (!prev || prev.connection !== s.connection) emit("connection", { state: s.connection, label: s.connectionLabel });
  if (tracking.sagaState && s.sagaState && (!prev || prev.sagaState !== s.sagaState)) {
    emit("saga-state", { id: sagaIds[0], state: s.sagaState });
  }
  if (tracking.steps) {
    const before = new Map(prev?.steps ?? []);
    for (const [name, status] of s.steps) {
      if (before.get(name) !== status) emit("step", { name, status });
    }
  }
  if (tracking.rows) {
    const before = new Map(prev?.rows ?? []);
    for (const [id, state] of s.rows) {
      if (!tracking.rows.has(id)) continue;
      if (!before.has(id)) emit("row-appeared", { id, state });
      else if (before.get(id) !== state) emit("row", { id, state });
    }
  }
  prev = s;
}
const tracking = { sagaState: false, steps: false, rows: null };

// ------------------------------------------------------------------ scenarios

async function screenshot(page, label) {
  if (!screenshotDir) return;
  mkdirSync(screenshotDir, { recursive: true });
  await new Promise((r) => setTimeout(r, 600)); // let colour transitions settle
  const path = join(screenshotDir, `${process.env.SCREENSHOT_PREFIX || scenario}-${label}.png`);
  await page.screenshot({ path, fullPage: true });
  emit("screenshot", { path });
}

function sagaUrl(id) {
  return `${consoleUrl.replace(/#.*$/, "")}#/sagas/${encodeURIComponent(id)}`;
}

function historySummary(s) {
  const seqs = s.history;
  const sorted = [...new Set(seqs)].sort((a, b) => a - b);
  const gaps = [];
  for (let i = 1; i < sorted.length; i++) for (let q = sorted[i - 1] + 1; q < sorted[i]; q++) gaps.push(q);
  return {
    history: seqs,
    repeated: seqs.filter((q, i) => seqs.indexOf(q) !== i),
    gaps,
    inOrder: seqs.every((q, i) => i === 0 || seqs[i - 1] < q),
    streamDuplicates: s.duplicates ? s.duplicates.split(",").map(Number) : [],
    streamMissing: s.missing ? s.missing.split(",").map(Number) : [],
  };
}

async function openSaga(page, id) {
  tracking.sagaState = true;
  tracking.steps = true;
  await page.goto(sagaUrl(id));
  const s = await waitFor(`the saga page of ${id}`, (s) => (s.sagaState || s.sagaError ? s : null));
  if (s.sagaError) throw new Error(`saga page: ${s.sagaError.text}`);
  emit("saga-open", {
    id,
    state: s.sagaState,
    steps: s.steps.map(([name, status]) => ({ name, status })),
    stages: s.stages,
  });
  return s;
}

async function sagaFinal(page, id, wanted) {
  const s = await waitFor(`saga ${id} in ${wanted.join("|")}`, (s) =>
    wanted.includes(s.sagaState) && s.connection === "live" ? s : null,
  );
  const summary = historySummary(s);
  emit("saga-final", {
    id,
    state: s.sagaState,
    steps: s.steps.map(([name, status]) => ({ name, status })),
    stages: s.stages,
    ...summary,
  });
  await screenshot(page, "final");
  const ok =
    summary.repeated.length === 0 &&
    summary.gaps.length === 0 &&
    summary.inOrder &&
    summary.streamDuplicates.length === 0 &&
    summary.streamMissing.length === 0;
  if (!ok) throw new Error(`history not shown exactly once in order: ${JSON.stringify(summary)}`);
  return s;
}

async function operatorAction(page, id, action) {
  const button = `${action}-button`;
  const allowed = action === "retry" ? ["COMPENSATION_FAILED", "SUSPENDED"] : ["RUNNING", "SUSPENDED"];
  await openSaga(page, id);
  await waitFor(`saga ${id} in ${allowed.join("|")} with a ${button}`, (s) =>
    allowed.includes(s.sagaState) && (action === "retry" ? s.retryButton : s.cancelButton) ? s : null,
  );
  await screenshot(page, "before");
  await page.getByTestId(button).click();
  emit("clicked", { testid: button });
  await screenshot(page, "dialog");
  const reason = process.env[action === "retry" ? "RETRY_REASON" : "CANCEL_REASON"] ?? (action === "cancel" ? "cancelled by the system test" : "");
  if (reason) await page.getByTestId("action-reason").fill(reason);
  await page.getByTestId("confirm-button").click();
  emit("clicked", { testid: "confirm-button" });
  const s = await waitFor("the action's result or error", (s) => s.actionResult ?? s.actionError);
  if (latest.actionError) {
    emit("action-error", latest.actionError);
    await screenshot(page, "action-error");
    throw new Error(`${action} failed: ${latest.actionError.text}`);
  }
  emit("action-result", s);
  const expect = states("EXPECT_STATE", "COMPENSATED");
  await sagaFinal(page, id, expect);
}

const run = {
  // The page renders and says where the connection stands (no orchestrator needed).
  async smoke(page) {
    await page.goto(consoleUrl);
    const s = await waitFor("the connection indicator", (s) => (s.connection ? s : null));
    await new Promise((r) => setTimeout(r, Number(process.env.SMOKE_WAIT_MS ?? 3000)));
    emit("smoke", { connection: latest.connection, label: latest.connectionLabel, first: s.connection });
    await screenshot(page, "page");
  },

  // Waits for the given sagas to appear in the list and reach a final state, live.
  async list(page) {
    const wanted = new Set(idsFromStdin ? [] : sagaIds);
    const final = states("FINAL_STATES", "COMPLETED,COMPENSATED,COMPENSATION_FAILED");
    tracking.rows = wanted;
    await page.goto(`${consoleUrl.replace(/#.*$/, "")}#/`);
    const ready = await waitFor("the list's snapshot", (s) => (s.connection === "live" && s.counts.ALL !== "–" ? s : null));
    emit("list-ready", { rows: ready.rows.length, counts: ready.counts });
    if (idsFromStdin) {
      // The sagas are started only now: they must show up live.
      emit("waiting-for-ids");
      const line = await nextStdinLine();
      for (const id of line.split(",").map((x) => x.trim()).filter(Boolean)) wanted.add(id);
      if (wanted.size === 0) throw new Error("no saga id on stdin");
      const inSnapshot = ready.rows.filter(([id]) => wanted.has(id)).map(([id]) => id);
      emit("ids", { ids: [...wanted], inSnapshot });
    }
    const done = new Set();
    await waitFor(`${wanted.size} sagas in ${final.join("|")}`, (s) => {
      for (const [id, state, type, customer, amount] of s.rows) {
        if (wanted.has(id) && !done.has(id) && final.includes(state)) {
          done.add(id);
          emit("saga-final", { id, state, type, customer, amount });
        }
      }
      return done.size === wanted.size ? s : null;
    });
    emit("counts", { counts: latest.counts });
    emit("no-reload", { documents, ok: documents === 1 });
    if (documents !== 1) throw new Error(`the page was loaded ${documents} times`);
    await screenshot(page, "final");
  },

  // One saga page: every step status as it changes, until the saga is finished.
  async saga(page) {
    const id = sagaIds[0];
    await openSaga(page, id);
    await screenshot(page, "open");
    await sagaFinal(page, id, states("FINAL_STATES", FINISHED.join(",")));
  },

  async retry(page) {
    await operatorAction(page, sagaIds[0], "retry");
  },

  async cancel(page) {
    await operatorAction(page, sagaIds[0], "cancel");
  },

  // Keeps a saga page open across an orchestrator restart.
  async restart(page) {
    const id = sagaIds[0];
    await openSaga(page, id);
    const s = await waitFor("the live saga page", (s) => (s.connection === "live" ? s : null));
    if (FINISHED.includes(s.sagaState)) throw new Error(`saga ${id} is already ${s.sagaState}`);
    emit("ready-for-restart", { id, state: s.sagaState, history: s.history });
    const line = await nextStdinLine();
    emit("stdin", { line });
    await waitFor("the page to notice the restart or finish", (s) =>
      s.connection !== "live" || FINISHED.includes(s.sagaState) ? s : null,
    ).catch(() => emit("note", { message: "the connection indicator stayed live through the restart" }));
    await waitFor("the connection live again", (s) => (s.connection === "live" ? s : null));
    emit("live-again", { state: latest.sagaState, history: latest.history });
    await sagaFinal(page, id, states("FINAL_STATES", FINISHED.join(",")));
  },
};

// ------------------------------------------------------------------ main

let browser;
let page;
let exitCode = 0;
try {
  browser = await chromium.launch({ executablePath, headless: true, args: CHROMIUM_FLAGS });
  emit("start", { scenario, url: consoleUrl, ids: sagaIds, browser: browser.version() });
  const context = await browser.newContext({
    viewport: { width: 1400, height: 900 },
    // A system test's API may use TLS with its own CA.
    ignoreHTTPSErrors: process.env.IGNORE_HTTPS_ERRORS === "1",
  });
  page = await context.newPage();
  page.on("pageerror", (err) => emit("page-error", { message: err.message }));
  page.on("response", (res) => {
    if (res.status() >= 400) emit("http-error", { url: res.url(), status: res.status() });
  });
  page.on("console", (msg) => {
    if (msg.type() === "error") emit("console", { level: "error", text: msg.text() });
  });
  let tokenTyped = false;
  let tokenEntries = 0;
  await page.exposeBinding("__sagaflowObserve", (_source, data) => {
    if (data.document) {
      documents += 1;
      return;
    }
    latest = data.snapshot;
    emitChanges(latest);
    check();
    if (latest.tokenPrompt && !tokenTyped) {
      tokenTyped = true;
      if (!token) {
        emit("token-asked", { error: latest.tokenError });
        fail(new Error("the console asks for a token: set SAGAFLOW_TOKEN"));
      } else if (tokenEntries > 0 && latest.tokenError) {
        // Asked again after our token: the orchestrator refused it.
        emit("token-refused", { error: latest.tokenError });
        fail(new Error(`the orchestrator refused the token: ${latest.tokenError}`));
      } else {
        tokenEntries += 1;
        void (async () => {
          await page.getByTestId("token-input").fill(token);
          await page.getByTestId("token-submit").click();
          emit("token-entered");
        })().catch((err) => emit("note", { message: `typing the token: ${err.message}` }));
      }
    } else if (!latest.tokenPrompt) {
      tokenTyped = false;
    }
  });
  await page.addInitScript(observerScript);
  await run[scenario](page);
  emit("done", { ok: true });
} catch (err) {
  exitCode = 1;
  emit("error", { message: err instanceof Error ? err.message : String(err), last: latest });
  if (page) await screenshot(page, "failure").catch(() => {});
  emit("done", { ok: false });
} finally {
  await browser?.close().catch(() => {});
}
process.exit(exitCode);
