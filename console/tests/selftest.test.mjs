// Runs every driver scenario against the fake orchestrator (tests/fake):
// checks the console and the driver together, without the Rust system.
//   npm test     (builds dist/ and the fake first; needs /usr/bin/chromium)
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { after, before, test } from "node:test";

const here = new URL("..", import.meta.url).pathname;
const fakes = [];
let base;

/** Starts a fake orchestrator; resolves with its HTTP base URL. */
async function startFake(...args) {
  const fake = spawn(process.execPath, ["tests/output/fake-orchestrator.mjs", "--step-ms", "200", ...args], {
    cwd: here,
    stdio: ["ignore", "pipe", "inherit"],
  });
  fakes.push(fake);
  const line = await new Promise((resolve, reject) => {
    createInterface({ input: fake.stdout }).once("line", resolve);
    fake.once("exit", (code) => reject(new Error(`the fake orchestrator exited with ${code}`)));
  });
  return `http://127.0.0.1:${JSON.parse(line).http}`;
}

before(async () => {
  base = await startFake();
});

after(() => {
  for (const f of fakes) f.kill();
});

async function place(outcome, n = 1, at = base) {
  const res = await fetch(`${at}/__fake/place?outcome=${outcome}&n=${n}`, { method: "POST" });
  return (await res.json()).ids;
}

/** Runs the driver; `onEvent` may answer on its stdin. Resolves with its events and exit code. */
function drive(scenario, ids, env = {}, onEvent = () => {}, at = base) {
  const child = spawn(process.execPath, ["tests/driver.mjs", scenario, `${at}/`, ids.join(",")], {
    cwd: here,
    env: { ...process.env, TIMEOUT_MS: "40000", ...env },
    stdio: ["pipe", "pipe", "inherit"],
  });
  const events = [];
  createInterface({ input: child.stdout }).on("line", (line) => {
    const ev = JSON.parse(line);
    events.push(ev);
    onEvent(ev, child);
  });
  return new Promise((resolve) => child.on("exit", (code) => resolve({ code, events })));
}

const of = (events, name) => events.filter((e) => e.event === name);

test("list: new sagas reach their final states without a reload", async () => {
  const ids = [...(await place("complete")), ...(await place("refuse")), ...(await place("slow"))];
  const { code, events } = await drive("list", ids);
  assert.equal(code, 0, JSON.stringify(events.at(-2)));
  const final = Object.fromEntries(of(events, "saga-final").map((e) => [e.id, e.state]));
  assert.deepEqual(final, { [ids[0]]: "COMPLETED", [ids[1]]: "COMPENSATED", [ids[2]]: "COMPLETED" });
  assert.equal(of(events, "no-reload")[0].documents, 1);
});

test("saga: steps turn green live", async () => {
  const [id] = await place("slow");
  const { code, events } = await drive("saga", [id]);
  assert.equal(code, 0, JSON.stringify(events.at(-2)));
  const opened = events.findIndex((e) => e.event === "saga-open");
  const laterGreen = events.slice(opened + 1).filter((e) => e.event === "step" && e.status === "SUCCEEDED");
  assert.ok(laterGreen.length >= 2, "steps should succeed while the page is open");
  const final = of(events, "saga-final")[0];
  assert.equal(final.state, "COMPLETED");
  assert.deepEqual(final.repeated, []);
});

test("retry: a compensation-failed saga is retried and compensated", async () => {
  const [id] = await place("compfail");
  const { code, events } = await drive("retry", [id], { RETRY_REASON: "provider is back" });
  assert.equal(code, 0, JSON.stringify(events.at(-2)));
  assert.equal(of(events, "action-result")[0].state, "COMPENSATING");
  assert.equal(of(events, "saga-final")[0].state, "COMPENSATED");
});

test("cancel: a running saga is cancelled and compensated", async () => {
  const [id] = await place("slow");
  const { code, events } = await drive("cancel", [id]);
  assert.equal(code, 0, JSON.stringify(events.at(-2)));
  assert.equal(of(events, "saga-final")[0].state, "COMPENSATED");
});

test("restart: the saga page resumes after the orchestrator comes back, each entry once", async () => {
  const [id] = await place("slow");
  const { code, events } = await drive("restart", [id], {}, async (ev, child) => {
    if (ev.event !== "ready-for-restart") return;
    await fetch(`${base}/__fake/restart?ms=2500`, { method: "POST" });
    child.stdin.write("restarted\n");
  });
  assert.equal(code, 0, JSON.stringify(events.at(-2)));
  const states = of(events, "connection").map((e) => e.state);
  assert.ok(states.includes("reconnecting"), `connection states: ${states}`);
  assert.equal(states.at(-1), "live");
  const final = of(events, "saga-final")[0];
  assert.equal(final.state, "COMPLETED");
  assert.deepEqual(final.history, [...final.history.keys()].map((i) => i + 1));
});

test("token: the console asks for one, sends it, and a client token cannot retry", async () => {
  const secured = await startFake("--token", "client-secret", "--operator-token", "operator-secret");
  const [paused] = await place("compfail", 1, secured);
  const asOperator = await drive("retry", [paused], { SAGAFLOW_TOKEN: "operator-secret" }, undefined, secured);
  assert.equal(asOperator.code, 0, JSON.stringify(asOperator.events.at(-2)));
  assert.equal(of(asOperator.events, "token-entered").length, 1);
  assert.equal(of(asOperator.events, "saga-final")[0].state, "COMPENSATED");

  const [other] = await place("compfail", 1, secured);
  const asClient = await drive("retry", [other], { SAGAFLOW_TOKEN: "client-secret" }, undefined, secured);
  assert.equal(asClient.code, 1);
  assert.equal(of(asClient.events, "action-error")[0].code, "PERMISSION_DENIED");

  const wrong = await drive("saga", [other], { SAGAFLOW_TOKEN: "nonsense", TIMEOUT_MS: "15000" }, undefined, secured);
  assert.equal(wrong.code, 1);
  assert.match(of(wrong.events, "token-refused")[0].error, /UNAUTHENTICATED/);
});
