//! The web console in headless Chromium against a real system: the
//! orchestrator serves the built console on its HTTP address and the API as
//! gRPC-Web (TLS, tokens) on its gRPC port; `console/tests/driver.mjs` drives
//! the page and reports what it shows, one JSON line per observation.
//!
//! One system running both saga types, five scenarios in turn:
//! - list: the list is open before the orders and trips are started; every
//!   saga appears and reaches its final state without a reload, with its
//!   type, customer and amount (a trip's from its input), and the counts by
//!   state end as the database has them;
//! - saga: a saga stalled at process_payment is opened; once payment is back
//!   its steps turn green on the open page;
//! - trip: a trip stalled in its parallel group (the hotel down) is opened;
//!   the three reservations share one stage, and once the hotel is back the
//!   rest turn green on the open page;
//! - restart: the orchestrator is killed and started again under an open
//!   saga page; the page reconnects, resumes after the last seq it shows and
//!   shows every history entry exactly once;
//! - retry: a COMPENSATION_FAILED saga is retried from the page (operator
//!   token) and ends COMPENSATED.
//!
//! Needs Node with npm (the console is built into this run's directory,
//! after `npm ci` when console/node_modules is missing) and Chromium
//! (`/usr/bin/chromium`, or `CHROMIUM`). Screenshots go to
//! `<log dir>/screenshots`. Prints `console: ...` lines.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use sagaflow_protos::orchestrator::v1::{GetSagaRequest, Saga, SagaState, StartSagaRequest};
use sagaflow_tests::definitions::Policies;
use sagaflow_tests::orders::{mixed, order};
use sagaflow_tests::system::{Client, Options, System};
use sagaflow_tests::{trips, wait_for, wait_for_port};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const SETTLE: Duration = Duration::from_secs(90);
/// How long the driver may take for one scenario, all its waits included.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(180);

fn console_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../console")
}

fn chromium() -> anyhow::Result<String> {
    let path = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    anyhow::ensure!(
        Path::new(&path).exists(),
        "no Chromium at {path}: install it (`apt-get install chromium`) or set CHROMIUM"
    );
    Ok(path)
}

async fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("{what}: {e} (is Node with npm installed?)"))?;
    anyhow::ensure!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Build the console from the protos of this tree into `out`.
async fn build_console(out: &Path) -> anyhow::Result<()> {
    let src = console_src();
    if !src.join("node_modules").exists() {
        run(Command::new("npm").arg("ci").current_dir(&src), "npm ci").await?;
    }
    run(
        Command::new("npm")
            .args(["run", "build", "--", "--outDir"])
            .arg(out)
            .arg("--emptyOutDir")
            .current_dir(&src),
        "npm run build",
    )
    .await?;
    anyhow::ensure!(
        out.join("index.html").exists(),
        "no index.html in {}",
        out.display()
    );
    Ok(())
}

/// Shortened deadlines and attempts (as in operator.rs): a refund that
/// cannot be delivered pauses its saga after three sends.
fn policies() -> Policies {
    Policies::one_second(3)
}

fn env(dist: &Path) -> Vec<(String, String)> {
    [
        ("SAGAFLOW_CONSOLE_DIR", dist.display().to_string()),
        ("SAGAFLOW_TIMER_POLL_MS", "200".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// A running `driver.mjs`: its events as they come.
struct Driver {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    events: Vec<Value>,
}

impl Driver {
    fn start(sys: &System, url: &str, scenario: &str, ids: &str) -> anyhow::Result<Driver> {
        Driver::start_as(sys, url, scenario, ids, scenario)
    }

    /// [`start`](Self::start), its screenshots named `<shots>-<label>.png`.
    fn start_as(
        sys: &System,
        url: &str,
        scenario: &str,
        ids: &str,
        shots: &str,
    ) -> anyhow::Result<Driver> {
        let src = console_src();
        let mut cmd = Command::new("node");
        cmd.arg(src.join("tests/driver.mjs"))
            .args([scenario, url, ids])
            .current_dir(&src)
            .env("CHROMIUM", chromium()?)
            .env("IGNORE_HTTPS_ERRORS", "1")
            .env("TIMEOUT_MS", "90000")
            .env("SCREENSHOT_DIR", sys.log_dir.join("screenshots"))
            .env("SCREENSHOT_PREFIX", shots)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(c) = sys.credentials() {
            cmd.env("SAGAFLOW_TOKEN", c.operator_token.expose());
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting the console driver: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        Ok(Driver {
            name: scenario.to_owned(),
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            events: Vec::new(),
        })
    }

    /// The next event, or None once the driver has closed its stdout.
    async fn next(&mut self) -> anyhow::Result<Option<Value>> {
        let line = tokio::time::timeout(DRIVER_TIMEOUT, self.lines.next_line())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "{}: the driver said nothing for {DRIVER_TIMEOUT:?}",
                    self.name
                )
            })??;
        let Some(line) = line else { return Ok(None) };
        let ev: Value = serde_json::from_str(&line).map_err(|e| {
            anyhow::anyhow!("{}: not JSON from the driver: {line:?}: {e}", self.name)
        })?;
        if ev["event"] != "console" {
            println!("console: {}: {line}", self.name);
        }
        self.events.push(ev.clone());
        Ok(Some(ev))
    }

    /// Read events until `event`; fails if the driver ends first.
    async fn until(&mut self, event: &str) -> anyhow::Result<Value> {
        while let Some(ev) = self.next().await? {
            if ev["event"] == event {
                return Ok(ev);
            }
            if ev["event"] == "error" {
                anyhow::bail!("{}: {}", self.name, ev["message"]);
            }
        }
        anyhow::bail!("{}: the driver ended before {event}", self.name)
    }

    async fn say(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().expect("driver stdin");
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        stdin.flush().await?;
        Ok(())
    }

    /// Read the rest and wait for the exit; fails unless the scenario passed.
    async fn finish(mut self) -> anyhow::Result<Vec<Value>> {
        while self.next().await?.is_some() {}
        let status: ExitStatus = self.child.wait().await?;
        let error = self.events.iter().find(|e| e["event"] == "error").cloned();
        anyhow::ensure!(
            status.success(),
            "{}: the driver failed ({status}): {}",
            self.name,
            error.map(|e| e["message"].to_string()).unwrap_or_default()
        );
        Ok(self.events)
    }
}

fn events<'a>(all: &'a [Value], name: &str) -> Vec<&'a Value> {
    all.iter().filter(|e| e["event"] == name).collect()
}

fn short_name(state: i32) -> String {
    SagaState::try_from(state)
        .map(|s| s.as_str_name().trim_start_matches("SAGA_STATE_").to_owned())
        .unwrap_or_else(|_| format!("STATE_{state}"))
}

async fn get(client: &Client, id: &str) -> anyhow::Result<Saga> {
    Ok(client
        .clone()
        .get_saga(GetSagaRequest {
            saga_id: id.to_owned(),
        })
        .await?
        .into_inner())
}

async fn wait_saga(
    client: &Client,
    id: &str,
    what: &str,
    until: impl Fn(&Saga) -> bool,
) -> anyhow::Result<Saga> {
    let until = &until;
    wait_for(&format!("saga {id}: {what}"), SETTLE, || async move {
        let saga = get(client, id).await?;
        Ok(until(&saga).then_some(saga))
    })
    .await
}

fn step_is(saga: &Saga, name: &str, status: &str) -> bool {
    saga.steps
        .iter()
        .any(|s| s.name == name && s.status == status)
}

/// The steps a saga page showed turning SUCCEEDED after it opened.
fn turned_green(events: &[Value]) -> Vec<&str> {
    let opened = events
        .iter()
        .position(|e| e["event"] == "saga-open")
        .unwrap_or(0);
    events[opened..]
        .iter()
        .filter(|e| e["event"] == "step" && e["status"] == "SUCCEEDED")
        .filter_map(|e| e["name"].as_str())
        .collect()
}

/// The seqs a saga page showed at the end, as numbers.
fn shown_seqs(final_event: &Value) -> Vec<u64> {
    final_event["history"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

fn stored_seqs(saga: &Saga) -> Vec<u64> {
    saga.history.iter().map(|h| h.seq).collect()
}

/// Place an order while payment is down: it stalls at process_payment.
async fn place_stalled(sys: &mut System, client: &Client, sku: &str) -> anyhow::Result<String> {
    sys.kill("payment");
    let id = client
        .clone()
        .place_order(order("cust-alice", &[(sku, 1)], 700))
        .await?
        .into_inner()
        .saga_id;
    wait_saga(client, &id, "stalled at process_payment", |s| {
        step_is(s, "create_order", "SUCCEEDED") && step_is(s, "process_payment", "PENDING")
    })
    .await?;
    Ok(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_sagas_live_in_a_browser() -> anyhow::Result<()> {
    chromium()?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let dist = std::env::temp_dir().join(format!("sagaflow-console-dist-{}", &run[..12]));
    build_console(&dist).await?;
    let mut sys = System::start(
        "console",
        Options {
            env: env(&dist),
            policies: policies(),
            trip: true,
            ..Options::default()
        },
    )
    .await?;
    let url = sys.console_url(0);
    let http = url.trim_start_matches("http://").trim_end_matches('/');
    wait_for_port(http, Duration::from_secs(30)).await?;
    let client = sys.client().await?;

    // ---- list: open first, then place; every saga shows up live.
    let mut d = Driver::start(&sys, &url, "list", "-")?;
    d.until("waiting-for-ids").await?;
    let mut ids = Vec::new();
    for i in 0..8 {
        let (req, _) = mixed(i);
        ids.push(client.clone().place_order(req).await?.into_inner().saga_id);
    }
    // Three trips among them: two go through, one finds its flight full.
    let mut trip_ids = Vec::new();
    for i in 0..3 {
        let (req, _) = trips::mixed("console", i);
        trip_ids.push(client.clone().start_saga(req).await?.into_inner().saga_id);
    }
    // And one with a hostile input the schema allows: markup for a
    // customer (shown as text, never run) and the largest amount (shown
    // to the cent); payment knows no such customer, so it is undone.
    const MARKUP: &str = r#"<img src=x onerror="document.title='pwned'">"#;
    let hostile = client
        .clone()
        .start_saga(StartSagaRequest {
            saga_type: "trip".into(),
            input: serde_json::json!({
                "traveller": "mallory",
                "customer_id": MARKUP,
                "flight": "SF-100",
                "hotel": "H-PARK",
                "car_location": "AIRPORT",
                "amount_cents": 281_474_976_710_655_i64,
            })
            .to_string(),
            idempotency_key: "console-hostile".into(),
        })
        .await?
        .into_inner()
        .saga_id;
    ids.extend(trip_ids.iter().cloned());
    ids.push(hostile.clone());
    d.say(&ids.join(",")).await?;
    let got = d.finish().await?;
    let said = events(&got, "ids");
    assert_eq!(said.len(), 1);
    assert_eq!(
        said[0]["inSnapshot"],
        serde_json::json!([]),
        "placed after the snapshot"
    );
    let done = sys.wait_terminal(&ids, SETTLE).await?;
    for saga in &done {
        let row = events(&got, "saga-final")
            .into_iter()
            .find(|e| e["id"] == saga.saga_id.as_str())
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            row["state"],
            Value::from(short_name(saga.state)),
            "saga {} in the list: {row}",
            saga.saga_id
        );
        assert_eq!(row["type"], saga.saga_type.as_str(), "{row}");
        if saga.saga_id == hostile {
            assert_eq!(row["customer"], MARKUP, "markup shown as text: {row}");
            assert_eq!(row["amount"], "EUR 2814749767106.55", "{row}");
            assert_eq!(row["state"], "COMPENSATED", "{row}");
        } else if trip_ids.contains(&saga.saga_id) {
            // Read from the trip's input: the first three of
            // trips::mixed charge cust-alice the trip price.
            assert_eq!(row["customer"], "cust-alice", "a trip's customer: {row}");
            assert_eq!(row["amount"], "EUR 250.00", "a trip's amount: {row}");
        } else {
            assert!(
                row["customer"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("cust-")),
                "an order's customer in the list: {row}"
            );
        }
    }
    let trips_shown = events(&got, "saga-final")
        .iter()
        .filter(|e| e["type"] == "trip")
        .count();
    assert_eq!(trips_shown, trip_ids.len() + 1);
    assert_eq!(events(&got, "no-reload")[0]["documents"], 1);
    let counts = &events(&got, "counts")[0]["counts"];
    let stored = sys.count_by_state().await?;
    for (state, n) in &stored {
        assert_eq!(
            counts[short_name(*state)],
            Value::from(n.to_string()),
            "count of {} in {counts}",
            short_name(*state)
        );
    }
    println!(
        "console: list ok: {} sagas appeared live and finished",
        ids.len()
    );

    // ---- saga: the steps turn green on the open page.
    let id = place_stalled(&mut sys, &client, "sku-widget").await?;
    let mut d = Driver::start(&sys, &url, "saga", &id)?;
    d.until("saga-open").await?;
    sys.restart("payment").await?;
    let got = d.finish().await?;
    let turned = turned_green(&got);
    assert!(
        turned.contains(&"process_payment") && turned.len() >= 3,
        "steps should turn green while the page is open: {turned:?}"
    );
    let fin = events(&got, "saga-final")[0];
    assert_eq!(fin["state"], "COMPLETED");
    assert_eq!(shown_seqs(fin), stored_seqs(&get(&client, &id).await?));
    println!("console: saga ok: {turned:?} turned green live");

    // ---- trip: a parallel group is one stage, and it turns green live.
    sys.kill("hotel");
    let id = client
        .clone()
        .start_saga(trips::mixed("console-open", 0).0)
        .await?
        .into_inner()
        .saga_id;
    wait_saga(
        &client,
        &id,
        "flight and car reserved, the hotel not",
        |s| {
            step_is(s, "reserve_flight", "SUCCEEDED")
                && step_is(s, "reserve_car", "SUCCEEDED")
                && step_is(s, "reserve_hotel", "PENDING")
        },
    )
    .await?;
    let mut d = Driver::start_as(&sys, &url, "saga", &id, "trip")?;
    let opened = d.until("saga-open").await?;
    let stages = |e: &Value| -> Vec<Vec<String>> {
        serde_json::from_value(e["stages"].clone()).unwrap_or_default()
    };
    let trip_stages = vec![
        vec!["reserve_flight", "reserve_hotel", "reserve_car"],
        vec!["charge"],
        vec!["confirm_trip"],
        vec!["notify"],
    ];
    assert_eq!(stages(&opened), trip_stages, "the trip's stages: {opened}");
    sys.restart("hotel").await?;
    let got = d.finish().await?;
    let turned = turned_green(&got);
    for step in ["reserve_hotel", "charge", "confirm_trip", "notify"] {
        assert!(
            turned.contains(&step),
            "{step} should turn green while the page is open: {turned:?}"
        );
    }
    let fin = events(&got, "saga-final")[0];
    assert_eq!(fin["state"], "COMPLETED");
    assert_eq!(stages(fin), trip_stages);
    assert_eq!(shown_seqs(fin), stored_seqs(&get(&client, &id).await?));
    println!("console: trip ok: the group is one stage; {turned:?} turned green live");

    // ---- restart: the page comes back and shows each entry once.
    let id = place_stalled(&mut sys, &client, "sku-widget").await?;
    let mut d = Driver::start(&sys, &url, "restart", &id)?;
    d.until("ready-for-restart").await?;
    sys.kill("orchestrator-0");
    tokio::time::sleep(Duration::from_secs(1)).await;
    sys.spawn_orchestrator(0)?;
    sys.wait_orchestrator(0).await?;
    let client = sys.client().await?;
    sys.restart("payment").await?;
    d.say("restarted").await?;
    let got = d.finish().await?;
    let killed = got
        .iter()
        .position(|e| e["event"] == "ready-for-restart")
        .unwrap_or(0);
    assert!(
        got[killed..]
            .iter()
            .any(|e| e["event"] == "connection" && e["state"] != "live"),
        "the page should have noticed the restart"
    );
    let fin = events(&got, "saga-final")[0];
    let saga = get(&client, &id).await?;
    assert_eq!(fin["state"], Value::from(short_name(saga.state)));
    assert_eq!(
        shown_seqs(fin),
        stored_seqs(&saga),
        "every entry once, in order"
    );
    println!(
        "console: restart ok: {} history entries shown once across the restart",
        saga.history.len()
    );

    // ---- retry: a paused saga is retried from the page.
    let id = place_stalled(&mut sys, &client, "sku-soldout").await?;
    sys.kill("inventory");
    sys.restart("payment").await?;
    wait_saga(&client, &id, "charged, reserve_inventory stalled", |s| {
        step_is(s, "process_payment", "SUCCEEDED") && step_is(s, "reserve_inventory", "PENDING")
    })
    .await?;
    sys.kill("payment");
    sys.restart("inventory").await?;
    wait_saga(&client, &id, "COMPENSATION_FAILED", |s| {
        s.state == SagaState::CompensationFailed as i32
    })
    .await?;
    sys.restart("payment").await?;
    let got = Driver::start(&sys, &url, "retry", &id)?.finish().await?;
    assert_eq!(events(&got, "action-result")[0]["state"], "COMPENSATING");
    assert_eq!(events(&got, "saga-final")[0]["state"], "COMPENSATED");
    let saga = get(&client, &id).await?;
    assert_eq!(saga.state, SagaState::Compensated as i32);
    assert!(saga.history.iter().any(|h| h.kind == "retry_requested"));
    println!("console: retry ok: the paused saga was retried from the page and compensated");

    let _ = std::fs::remove_dir_all(&dist);
    Ok(())
}
