//! The `sagaflow` command (docs/cli.md) as a user runs it: against a live
//! system for placing, reading, watching and operating sagas, and alone for
//! its refusals of bad input and an unreachable orchestrator.
//!
//! Outcomes are provoked as the other suites do: `cust-broke` has no credit
//! (payment refused: COMPENSATED); `sku-soldout` is refused at
//! reserve_inventory after the charge, and with the customer's refunds held
//! the refund is refused too (COMPENSATION_FAILED).

use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};

use sagaflow_tests::definitions::Policies;
use sagaflow_tests::injector::hold_refunds;
use sagaflow_tests::system::{self, Options, System};
use sagaflow_tests::{free_port, reconcile};

const SETTLE: Duration = Duration::from_secs(90);

/// One-second step deadlines, actions re-sent for two minutes (a step
/// waiting on a participant that is down outlasts a restart).
/// One-second step deadlines, actions re-sent for two minutes (a step
/// waiting on a participant that is down outlasts a restart).
fn policies() -> Policies {
    Policies::one_second(3)
}

fn env() -> Vec<(String, String)> {
    [("SAGAFLOW_TIMER_POLL_MS", "200")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// What a run printed and how it exited.
#[derive(Debug)]
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl From<Output> for Ran {
    fn from(out: Output) -> Ran {
        Ran {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Ran {
    /// Exited with `code`; returns stdout.
    fn exited(&self, code: i32) -> &str {
        assert_eq!(self.code, Some(code), "{self:#?}");
        &self.stdout
    }

    /// Exited 0 with one JSON document.
    fn json(&self) -> Value {
        serde_json::from_str(self.exited(0))
            .unwrap_or_else(|e| panic!("not one JSON document ({e}): {self:#?}"))
    }

    /// Exited 1 with an error that starts with `start`.
    fn refused(&self, start: &str) {
        assert_eq!(self.code, Some(1), "{self:#?}");
        assert!(
            self.stderr.lines().any(|l| l.starts_with(start)),
            "stderr should have a line starting {start:?}: {self:#?}"
        );
    }
}

async fn cli(sys: &System, args: &[&str]) -> anyhow::Result<Ran> {
    Ok(sys.cli_output(args).await?.into())
}

/// `sagaflow place --json` of `items` for `customer`; the saga id.
async fn place(
    sys: &System,
    customer: &str,
    items: &[&str],
    amount: &str,
) -> anyhow::Result<String> {
    let mut args = vec![
        "place",
        "--json",
        "--customer",
        customer,
        "--amount",
        amount,
    ];
    for item in items {
        args.extend(["--item", item]);
    }
    let placed = cli(sys, &args).await?.json();
    assert_eq!(placed["created"], true, "{placed}");
    Ok(placed["saga_id"].as_str().expect("saga_id").to_owned())
}

/// `sagaflow watch --json`: its exit status, and the lines parsed.
async fn watch_json(sys: &System, id: &str) -> anyhow::Result<(Option<i32>, Vec<Value>)> {
    let ran = cli(sys, &["watch", "--json", id]).await?;
    let lines = ran
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?} in {ran:#?}")))
        .collect();
    Ok((ran.code, lines))
}

/// Entries are each shown once, in order, without gaps; the last line is
/// the end with `state` and `exit_code`.
fn assert_timeline(lines: &[Value], state: &str, exit_code: i32) {
    let (end, entries) = lines.split_last().expect("no output");
    assert_eq!(end["event"], "end", "{lines:#?}");
    assert_eq!(end["state"], state, "{lines:#?}");
    assert_eq!(end["exit_code"], exit_code, "{lines:#?}");
    let seqs: Vec<u64> = entries
        .iter()
        .filter(|l| l["event"] == "entry")
        .map(|l| l["seq"].as_u64().expect("seq"))
        .collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "{lines:#?}");
    assert_eq!(
        entries.first().map(|l| &l["kind"]),
        Some(&Value::from("placed"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn place_get_list_watch_and_operate_from_the_command_line() -> anyhow::Result<()> {
    let sys = System::start(
        "cli",
        Options {
            env: env(),
            policies: policies(),
            ..Options::default()
        },
    )
    .await?;

    // Placed, watched to the end (exit 0), read back.
    let key = uuid::Uuid::new_v4().to_string();
    let args = [
        "place",
        "--json",
        "--customer",
        "cust-alice",
        "--item",
        "sku-widget:2",
        "--item",
        "sku-gadget:1",
        "--amount",
        "11.00",
        "--idempotency-key",
        &key,
    ];
    let placed = cli(&sys, &args).await?.json();
    assert_eq!(placed["created"], true, "{placed}");
    assert_eq!(placed["amount_cents"], 1100, "{placed}");
    let completed = placed["saga_id"].as_str().expect("saga_id").to_owned();
    let (code, lines) = watch_json(&sys, &completed).await?;
    assert_eq!(code, Some(0), "{lines:#?}");
    assert_timeline(&lines, "COMPLETED", 0);

    let watched = cli(&sys, &["watch", &completed]).await?;
    let out = watched.exited(0);
    assert!(
        out.lines().any(|l| l.contains(" completed ")),
        "an entry line per history entry: {out}"
    );
    assert_eq!(out.lines().last(), Some("COMPLETED"), "{out}");
    assert!(!out.contains('\r'), "no progress line when piped: {out:?}");

    let saga = cli(&sys, &["get", "--json", &completed]).await?.json();
    assert_eq!(saga["state"], "COMPLETED", "{saga}");
    assert_eq!(saga["order"]["amount"], "EUR 11.00", "{saga}");
    assert_eq!(saga["order"]["customer_id"], "cust-alice", "{saga}");
    let statuses: Vec<&str> = saga["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["status"].as_str().expect("status"))
        .collect();
    assert_eq!(statuses, ["SUCCEEDED"; 4], "{saga}");
    let kinds: Vec<&str> = saga["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|h| h["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(kinds.first(), Some(&"placed"), "{saga}");
    assert_eq!(kinds.last(), Some(&"completed"), "{saga}");

    let shown = cli(&sys, &["get", &completed]).await?;
    let shown = shown.exited(0);
    for expected in [
        "EUR 11.00",
        "STEP",
        "PARTICIPANT",
        "create_order",
        "COMPLETED",
    ] {
        assert!(shown.contains(expected), "{expected:?} in {shown}");
    }

    // The same key again: the same saga, not a new one.
    let again = cli(&sys, &args).await?.json();
    assert_eq!(again["created"], false, "{again}");
    assert_eq!(again["saga_id"], completed.as_str(), "{again}");

    // Payment refused: compensated, exit 2.
    let compensated = place(&sys, "cust-broke", &["sku-widget:1"], "10.00").await?;
    let (code, lines) = watch_json(&sys, &compensated).await?;
    assert_eq!(code, Some(2), "{lines:#?}");
    assert_timeline(&lines, "COMPENSATED", 2);
    let end = lines.last().expect("end");
    assert!(
        end["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("process_payment refused")),
        "{end}"
    );

    // Lists, by state and by page.
    let listed = cli(&sys, &["list", "--json", "--state", "completed"])
        .await?
        .json();
    let ids = |v: &Value| -> Vec<String> {
        v["sagas"]
            .as_array()
            .expect("sagas")
            .iter()
            .map(|s| s["saga_id"].as_str().expect("saga_id").to_owned())
            .collect()
    };
    assert_eq!(ids(&listed), [completed.as_str()], "{listed}");
    let first = cli(&sys, &["list", "--json", "--page-size", "1"])
        .await?
        .json();
    assert_eq!(ids(&first), [compensated.as_str()], "newest first: {first}");
    let token = first["next_page_token"].as_str().expect("token");
    assert!(!token.is_empty(), "{first}");
    let second = cli(
        &sys,
        &["list", "--json", "--page-size", "1", "--page-token", token],
    )
    .await?
    .json();
    assert_eq!(ids(&second), [completed.as_str()], "{second}");
    let table = cli(&sys, &["list", "--page-size", "1"]).await?;
    let table = table.exited(0);
    assert!(table.starts_with("SAGA "), "{table}");
    assert!(table.contains("next page: --page-token "), "{table}");

    // A refund refused while cust-bob's refunds are held: paused, exit 3.
    hold_refunds(&sys, "cust-bob", true).await?;
    let paused = place(&sys, "cust-bob", &["sku-soldout:1"], "10.00").await?;
    let watched = cli(&sys, &["watch", &paused]).await?;
    let out = watched.exited(3);
    assert!(
        out.lines()
            .last()
            .is_some_and(|l| l.starts_with("COMPENSATION_FAILED at process_payment")),
        "{out}"
    );

    // Operator actions the saga's state does not allow: a clear refusal.
    cli(&sys, &["retry", &completed])
        .await?
        .refused("FAILED_PRECONDITION: saga_id: ");
    cli(&sys, &["cancel", &completed, "--reason", "changed my mind"])
        .await?
        .refused("FAILED_PRECONDITION: saga_id: ");
    cli(&sys, &["cancel", &completed]).await?.refused("error: ");

    // Released and retried: the refund goes through, exit 2.
    hold_refunds(&sys, "cust-bob", false).await?;
    let retried = cli(
        &sys,
        &[
            "retry",
            "--json",
            &paused,
            "--reason",
            "refunds released",
            "--request-id",
            "cli-retry-1",
        ],
    )
    .await?
    .json();
    assert!(
        retried["state"] == "COMPENSATING" || retried["state"] == "COMPENSATED",
        "{retried}"
    );
    let (code, lines) = watch_json(&sys, &paused).await?;
    assert_eq!(code, Some(2), "{lines:#?}");
    assert_timeline(&lines, "COMPENSATED", 2);

    // The server's refusals of bad input, as CODE: message.
    cli(
        &sys,
        &[
            "place",
            "--customer",
            "cust-alice",
            "--item",
            "sku-nope:1",
            "--amount",
            "1",
        ],
    )
    .await?
    .refused("INVALID_ARGUMENT: items[0].sku: ");
    cli(&sys, &["get", "not-a-saga"])
        .await?
        .refused("INVALID_ARGUMENT: saga_id");
    let unknown = uuid::Uuid::new_v4().to_string();
    cli(&sys, &["watch", &unknown])
        .await?
        .refused("NOT_FOUND: ");

    // The operator's commands moved here from the orchestrator's binary.
    let dead = cli(&sys, &["dead-letters", "list"]).await?;
    assert!(dead.exited(0).starts_with("dead letters: 0"), "{dead:#?}");
    let dead = cli(&sys, &["dead-letters", "list", "--json"]).await?.json();
    assert_eq!(dead["total"], 0, "{dead}");
    let reconciled = reconcile::run(&sys, &[]).await?;
    assert!(reconciled.wrong.is_empty(), "{:?}", reconciled.wrong);
    assert_eq!(reconciled.finished, 3, "{reconciled:?}");

    // The stored definitions: the built-in order saga, as its file says.
    let defs = cli(&sys, &["definitions", "--json"]).await?.json();
    assert_eq!(defs.as_array().map(Vec::len), Some(1), "{defs}");
    assert_eq!(defs[0]["saga_type"], "order");
    assert_eq!(defs[0]["version"], 1);
    assert_eq!(defs[0]["newest"], true);
    assert_eq!(defs[0]["hash"].as_str().map(str::len), Some(64), "{defs}");
    let order_def = cli(&sys, &["definitions", "order", "--json"]).await?.json();
    let steps: Vec<&str> = order_def["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "create_order",
            "process_payment",
            "reserve_inventory",
            "approve_order"
        ]
    );
    assert_eq!(order_def["steps"][3]["compensation"], Value::Null);
    assert_eq!(
        order_def["input_schema"]["required"],
        serde_json::json!(["customer_id", "items", "amount_cents"]),
        "{order_def}"
    );
    // As this test's definitions directory gives them.
    assert_eq!(order_def["steps"][0]["policy"]["attempts"], 120);
    assert_eq!(order_def["steps"][0]["policy"]["deadline_ms"], 1000);
    assert_eq!(order_def["steps"][0]["compensation_policy"]["attempts"], 3);
    let text = cli(&sys, &["definitions", "order"]).await?;
    assert!(
        text.exited(0).contains("4. approve_order (order)")
            && text
                .stdout
                .contains("compensation  none: it cannot be undone"),
        "{text:#?}"
    );
    cli(&sys, &["definitions", "order", "--version", "7"])
        .await?
        .refused("NOT_FOUND: version: order has no version 7");
    cli(&sys, &["definitions", "Bad Type!"])
        .await?
        .refused("INVALID_ARGUMENT: saga_type: ");

    // `start`: any type, the input as JSON, given or read from a file.
    let input = r#"{"customer_id": "cust-alice", "items": [{"sku": "sku-widget", "quantity": 1}], "amount_cents": 100}"#;
    let started = cli(
        &sys,
        &[
            "start",
            "--json",
            "order",
            input,
            "--idempotency-key",
            "cli-start-1",
        ],
    )
    .await?
    .json();
    assert_eq!(started["created"], true, "{started}");
    assert_eq!(started["saga_type"], "order", "{started}");
    let file = std::env::temp_dir().join(format!("sf-input-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&file, input)?;
    let at = format!("@{}", file.display());
    let again = cli(
        &sys,
        &[
            "start",
            "--json",
            "order",
            &at,
            "--idempotency-key",
            "cli-start-1",
        ],
    )
    .await?
    .json();
    std::fs::remove_file(&file)?;
    assert_eq!(again["created"], false, "{again}");
    assert_eq!(again["saga_id"], started["saga_id"], "{again}");
    let shown = cli(
        &sys,
        &["get", "--json", started["saga_id"].as_str().unwrap()],
    )
    .await?
    .json();
    assert_eq!(shown["input"]["customer_id"], "cust-alice", "{shown}");
    cli(&sys, &["start", "order", &input.replace("100}", "0}")])
        .await?
        .refused("INVALID_ARGUMENT: input/amount_cents: ");
    cli(&sys, &["start", "order", "{not json"])
        .await?
        .refused("INVALID_ARGUMENT: input: is not JSON");
    cli(&sys, &["start", "trip", "{}"])
        .await?
        .refused("NOT_FOUND: saga_type: ");
    cli(&sys, &["start", "order", "@/nonexistent/input.json"])
        .await?
        .refused("input: cannot read it");
    Ok(())
}

/// A watch outlives its orchestrator: killed and restarted mid-saga, the
/// stream is resumed after the last seq received, nothing lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_across_an_orchestrator_restart() -> anyhow::Result<()> {
    let mut sys = System::start(
        "cli-watch",
        Options {
            env: env(),
            policies: policies(),
            ..Options::default()
        },
    )
    .await?;
    // Payment down: the saga waits at process_payment.
    sys.kill("payment");
    let id = place(&sys, "cust-alice", &["sku-widget:1"], "5.00").await?;
    let mut child = sys
        .cli_command()?
        .args(["watch", "--json", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let stderr = child.stderr.take().expect("stderr");
    let stderr = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut all = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            all.push(line);
        }
        all
    });
    let mut lines: Vec<Value> = Vec::new();
    // Until the watch has shown the create_order step succeed.
    let shown = tokio::time::timeout(SETTLE, async {
        while let Some(line) = stdout.next_line().await? {
            let v: Value = serde_json::from_str(&line)?;
            let done = v["kind"] == "step_succeeded";
            lines.push(v);
            if done {
                return anyhow::Ok(());
            }
        }
        anyhow::bail!("watch ended early: {lines:#?}")
    })
    .await;
    shown.map_err(|_| anyhow::anyhow!("no step_succeeded shown in {SETTLE:?}"))??;

    sys.restart("orchestrator-0").await?;
    sys.spawn("payment")?;
    sys.wait_ready("payment").await?;

    let rest = tokio::time::timeout(SETTLE, async {
        while let Some(line) = stdout.next_line().await? {
            lines.push(serde_json::from_str(&line)?);
        }
        anyhow::Ok(child.wait().await?)
    })
    .await
    .map_err(|_| anyhow::anyhow!("watch did not end in {SETTLE:?}: {lines:#?}"))??;
    let stderr = stderr.await?.join("\n");
    assert_eq!(rest.code(), Some(0), "{lines:#?}\n{stderr}");
    assert_timeline(&lines, "COMPLETED", 0);
    assert!(
        stderr.contains("reconnecting after seq "),
        "a reconnection is said on stderr: {stderr}"
    );
    Ok(())
}

/// Refusals that need no orchestrator: usage, settings, amounts, and an
/// orchestrator that is not there.
#[test]
fn bad_input_and_an_unreachable_orchestrator_exit_1_with_a_clear_message() -> anyhow::Result<()> {
    let run = |args: &[&str]| -> anyhow::Result<Ran> {
        Ok(system::binary("sagaflow")?
            .args(args)
            .env_clear()
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .output()?
            .into())
    };
    let id = uuid::Uuid::new_v4().to_string();

    let help = run(&["--help"])?;
    let help = help.exited(0);
    for expected in [
        "Exit status",
        "COMPENSATED",
        "COMPENSATION_FAILED",
        "SUSPENDED",
        "SAGAFLOW_API_URL",
    ] {
        assert!(help.contains(expected), "{expected:?} in {help}");
    }
    run(&["get"])?.refused("error: ");
    run(&["frobnicate"])?.refused("error: ");

    // Secure by default: names what is missing and the switch.
    let missing = run(&["get", &id])?;
    missing.refused("sagaflow runs secure by default");
    for setting in [
        "SAGAFLOW_API_CA",
        "SAGAFLOW_API_TOKEN",
        "SAGAFLOW_INSECURE=true",
    ] {
        assert!(missing.stderr.contains(setting), "{setting}: {missing:#?}");
    }

    // Nobody listens there.
    let url = format!("http://127.0.0.1:{}", free_port());
    let at = format!("cannot reach the orchestrator at {url}: ");
    run(&["--insecure", "--endpoint", &url, "get", &id])?.refused(&at);
    run(&["--insecure", "--endpoint", &url, "watch", &id])?.refused(&at);
    run(&["--insecure", "--endpoint", &url, "dead-letters", "list"])?.refused(&at);

    // Amounts are exact; items and currencies are checked before any call.
    let place = |item: &str, amount: &str, currency: &str| {
        run(&[
            "--insecure",
            "--endpoint",
            &url,
            "place",
            "--customer",
            "c",
            "--item",
            item,
            "--amount",
            amount,
            "--currency",
            currency,
        ])
    };
    place("sku:1", "12.505", "EUR")?.refused("--amount \"12.505\": EUR has 2 decimals");
    place("sku:1", "1.5", "JPY")?.refused("--amount \"1.5\": JPY has no decimals");
    place("sku:1", "-3", "EUR")?.refused("error: ");
    place("sku:1", "1e3", "EUR")?.refused("--amount \"1e3\": not an amount");
    place("sku:1", "12.50", "ZZZ")?.refused("--currency \"ZZZ\": not an ISO 4217 code");
    place("sku", "12.50", "EUR")?.refused("error: ");
    // A well-formed order gets as far as the call.
    place("sku:1", "12.50", "eur")?.refused(&at);

    run(&["reconcile", "nope"])?.refused("not a saga id: \"nope\"");
    Ok(())
}
