//! `sagaflow-bench`: the order-saga benchmark. Starts a fresh system (four
//! new databases, its own Pub/Sub emulator, the three participants, a relay
//! and an orchestrator, from the service binaries next to this one or in
//! `SAGAFLOW_BIN_DIR`), keeps C sagas in flight, verifies every outcome and
//! the invariants, and prints one line per run:
//!
//! `bench: c=C sagas=N sagas_per_s=X p50_ms=X p95_ms=X p99_ms=X cpu_ms_per_saga=X commits_per_saga=X relay_lag_p99_ms=X verify=ok|FAILED`
//!
//! The workload is the one `../shared/bench` drives against this project and
//! against its peer: saga `i` of a batch is, by `i % 20`,
//! - 0..=3 (20 %): `cust-broke` (no credit), refused at `process_payment`;
//! - 4 (5 %): `sku-soldout` (no stock), refused at `reserve_inventory`;
//! - otherwise: `cust-alice` buys `sku-widget` or `sku-gadget` (by `i % 2`);
//!
//! quantity `1 + i % 3`, amount `100 + (i * 37) % 1000` cents. Every success
//! charges the same customer and draws on two stock rows, so sagas contend.
//!
//! Figures:
//! - latency: from sending `PlaceOrder` until the saga is seen terminal
//!   (`LISTEN sagaflow_saga` on the orchestrator database, then a
//!   primary-key read of the notified sagas; no polling);
//! - `sagas_per_s`: measured sagas over the wall time of the measured batch
//!   (after `--warmup` unmeasured sagas);
//! - `cpu_ms_per_saga`: the machine's busy CPU time (`/proc/stat`: every
//!   process, the services, PostgreSQL, the emulator and this driver) during
//!   the measured batch, over its sagas;
//! - `commits_per_saga`: write transactions (those given a transaction id:
//!   the ones that write WAL) during the measured batch, across the
//!   PostgreSQL server (run it alone: every database on the server counts),
//!   over its sagas;
//! - `relay_lag_p99_ms`: per outbox row of the measured batch, from the
//!   participant's transaction to the relay's record of Pub/Sub's ack
//!   (`sent_at - created_at`).
//!
//! `verify=ok` needs every saga to end as its class says and every system
//! check to pass: reconciliation with each participant, each order's books,
//! the money and stock invariants, history gap-free and nothing applied
//! twice. The exit status is 1 when any run fails to verify.
//!
//! Usage: `sagaflow-bench [--c 16] [--n 1000] [--warmup 100] [--runs 1]
//! [--secure] [--env K=V]...`. The system runs in plaintext without tokens
//! (`SAGAFLOW_INSECURE=true`) unless `--secure` (mutual TLS and tokens, as in
//! production). `--env` adds a setting for every service.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use sagaflow_common::db;
use sagaflow_protos::orchestrator::v1::PlaceOrderRequest;
use sagaflow_protos::participant::v1::OrderItem;
use sagaflow_tests::checks::Checks;
use sagaflow_tests::system::{Client, Options, System, bin_dir};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{AsyncMessage, NoTls};
use uuid::Uuid;

/// How long one saga may take before the run is declared failed.
const SAGA_TIMEOUT: Duration = Duration::from_secs(120);

struct Args {
    c: usize,
    n: usize,
    warmup: usize,
    runs: usize,
    secure: bool,
    env: Vec<(String, String)>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        c: 16,
        n: 1000,
        warmup: 100,
        runs: 1,
        secure: false,
        env: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{name} needs a value"))
        };
        match a.as_str() {
            "--c" => args.c = value("--c")?.parse()?,
            "--n" => args.n = value("--n")?.parse()?,
            "--warmup" => args.warmup = value("--warmup")?.parse()?,
            "--runs" => args.runs = value("--runs")?.parse()?,
            "--secure" => args.secure = true,
            "--env" => {
                let kv = value("--env")?;
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--env {kv}: expected K=V"))?;
                args.env.push((k.to_owned(), v.to_owned()));
            }
            "-h" | "--help" => {
                println!(
                    "usage: sagaflow-bench [--c C] [--n N] [--warmup W] [--runs R] [--secure] [--env K=V]..."
                );
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other:?} (see --help)"),
        }
    }
    anyhow::ensure!(args.c >= 1 && args.n >= 1, "--c and --n must be at least 1");
    Ok(args)
}

/// How a saga of the workload must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Completed,
    PaymentRefused,
    StockShort,
}

fn workload(i: usize) -> (PlaceOrderRequest, Class) {
    let (customer, sku, class) = match i % 20 {
        0..=3 => ("cust-broke", "sku-widget", Class::PaymentRefused),
        4 => ("cust-alice", "sku-soldout", Class::StockShort),
        _ if i.is_multiple_of(2) => ("cust-alice", "sku-widget", Class::Completed),
        _ => ("cust-alice", "sku-gadget", Class::Completed),
    };
    let req = PlaceOrderRequest {
        idempotency_key: Uuid::new_v4().to_string(),
        customer_id: customer.to_owned(),
        items: vec![OrderItem {
            sku: sku.to_owned(),
            quantity: 1 + (i % 3) as i64,
        }],
        amount_cents: 100 + ((i * 37) % 1000) as i64,
        currency: "EUR".to_owned(),
    };
    (req, class)
}

/// Sagas waited for, by id: told their final status once it is seen.
type Waiters = Arc<Mutex<HashMap<Uuid, oneshot::Sender<String>>>>;

const TERMINAL: [&str; 3] = ["COMPLETED", "COMPENSATED", "COMPENSATION_FAILED"];

/// Watches `sagaflow_saga` notifications and resolves waiters whose saga
/// became terminal.
struct Watcher {
    waiters: Waiters,
    reader: Arc<tokio_postgres::Client>,
}

impl Watcher {
    async fn start(url: &str) -> anyhow::Result<Watcher> {
        let (listen, mut conn) = tokio_postgres::connect(url, NoTls).await?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Uuid>();
        tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(Ok(m)) = messages.next().await {
                if let AsyncMessage::Notification(n) = m
                    && let Ok(id) = Uuid::parse_str(n.payload())
                    && tx.send(id).is_err()
                {
                    break;
                }
            }
        });
        listen.batch_execute("LISTEN sagaflow_saga").await?;
        // Keep the listening connection alive as long as the watcher.
        let listen = Arc::new(listen);
        let reader = Arc::new(db::connect(url).await?);
        let waiters: Waiters = Arc::default();
        let (w, r) = (waiters.clone(), reader.clone());
        tokio::spawn(async move {
            let _listen = listen;
            let mut batch = Vec::new();
            while let Some(id) = rx.recv().await {
                batch.push(id);
                while let Ok(id) = rx.try_recv() {
                    batch.push(id);
                }
                batch.retain(|id| w.lock().unwrap().contains_key(id));
                batch.sort_unstable();
                batch.dedup();
                if !batch.is_empty() {
                    resolve(&w, &r, &batch).await;
                }
                batch.clear();
            }
        });
        Ok(Watcher { waiters, reader })
    }

    /// Wait until `saga_id` is terminal; its final status.
    async fn wait(&self, saga_id: Uuid) -> anyhow::Result<String> {
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().unwrap().insert(saga_id, tx);
        // It may have finished before it was registered.
        resolve(&self.waiters, &self.reader, &[saga_id]).await;
        tokio::time::timeout(SAGA_TIMEOUT, rx)
            .await
            .map_err(|_| anyhow::anyhow!("saga {saga_id} not terminal after {SAGA_TIMEOUT:?}"))?
            .map_err(|_| anyhow::anyhow!("watcher stopped"))
    }
}

async fn resolve(waiters: &Waiters, reader: &tokio_postgres::Client, ids: &[Uuid]) {
    let Ok(rows) = reader
        .query(
            "SELECT saga_id, status FROM sagas WHERE saga_id = ANY($1)",
            &[&ids],
        )
        .await
    else {
        return;
    };
    for row in rows {
        let (id, status): (Uuid, String) = (row.get(0), row.get(1));
        if TERMINAL.contains(&status.as_str())
            && let Some(tx) = waiters.lock().unwrap().remove(&id)
        {
            let _ = tx.send(status);
        }
    }
}

/// One saga: its class, final status and latency.
struct Done {
    saga_id: Uuid,
    class: Class,
    status: String,
    latency: Duration,
}

async fn run_batch(
    client: &Client,
    watcher: &Watcher,
    range: std::ops::Range<usize>,
    c: usize,
) -> anyhow::Result<Vec<Done>> {
    let results: Vec<anyhow::Result<Done>> = futures::stream::iter(range)
        .map(|i| {
            let mut client = client.clone();
            async move {
                let (req, class) = workload(i);
                let started = Instant::now();
                let saga_id = client.place_order(req).await?.into_inner().saga_id;
                let saga_id = Uuid::parse_str(&saga_id)?;
                let status = watcher.wait(saga_id).await?;
                Ok(Done {
                    saga_id,
                    class,
                    status,
                    latency: started.elapsed(),
                })
            }
        })
        .buffer_unordered(c)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Busy CPU time of the whole machine so far (`/proc/stat`), in ms.
fn machine_busy_ms() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu = stat
        .lines()
        .next()
        .ok_or_else(|| anyhow::anyhow!("empty /proc/stat"))?;
    let v: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already
    // in user): busy is all but idle and iowait. USER_HZ is 100 on Linux.
    let busy: u64 = v
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    Ok(busy as f64 * 10.0)
}

/// The server's next transaction id: write transactions so far.
async fn next_xid(db: &tokio_postgres::Client) -> anyhow::Result<i64> {
    Ok(db
        .query_one(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint",
            &[],
        )
        .await?
        .get(0))
}

/// Per outbox row written since `since` (the database's clock), ms from
/// the row's insert to its ack by Pub/Sub; waits for the relay to finish.
async fn relay_lags(sys: &System, since: &str) -> anyhow::Result<Vec<f64>> {
    let mut lags = Vec::new();
    for url in [&sys.dbs.order, &sys.dbs.payment, &sys.dbs.inventory] {
        let client = db::connect(url).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let unsent: i64 = client
                .query_one("SELECT count(*) FROM outbox WHERE sent_at IS NULL", &[])
                .await?
                .get(0);
            if unsent == 0 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for row in client
            .query(
                "SELECT (extract(epoch from sent_at - created_at) * 1000)::float8
                 FROM outbox WHERE created_at >= $1::text::timestamptz AND sent_at IS NOT NULL",
                &[&since],
            )
            .await?
        {
            lags.push(row.get(0));
        }
    }
    Ok(lags)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

async fn one_run(args: &Args) -> anyhow::Result<bool> {
    let sys = System::start(
        "bench",
        Options {
            env: args.env.clone(),
            insecure: !args.secure,
            ..Options::default()
        },
    )
    .await?;
    let client = sys
        .orchestrator_clients()?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no orchestrator"))?;
    let watcher = Watcher::start(&sys.dbs.orchestrator).await?;
    let orch = db::connect(&sys.dbs.orchestrator).await?;

    if args.warmup > 0 {
        run_batch(&client, &watcher, 0..args.warmup, args.c).await?;
    }
    let since: String = orch
        .query_one("SELECT clock_timestamp()::text", &[])
        .await?
        .get(0);
    let (cpu0, xid0) = (machine_busy_ms()?, next_xid(&orch).await?);
    let started = Instant::now();
    let done = run_batch(&client, &watcher, args.warmup..args.warmup + args.n, args.c).await?;
    let wall = started.elapsed();
    let (cpu1, xid1) = (machine_busy_ms()?, next_xid(&orch).await?);

    let n = done.len() as f64;
    let mut latencies: Vec<f64> = done
        .iter()
        .map(|d| d.latency.as_secs_f64() * 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let mut lags = relay_lags(&sys, &since).await?;
    lags.sort_by(f64::total_cmp);

    let mut wrong = Vec::new();
    for d in &done {
        let want = match d.class {
            Class::Completed => "COMPLETED",
            Class::PaymentRefused | Class::StockShort => "COMPENSATED",
        };
        if d.status != want {
            wrong.push(format!("{}: {:?} ended {}", d.saga_id, d.class, d.status));
        }
    }
    let checks = Checks::run(&sys).await?;
    let problems = checks.problems(10);
    let ok = wrong.is_empty()
        && problems.is_empty()
        && checks.reconciled.in_flight == 0
        && checks.reconciled.finished > 0;
    for p in wrong.iter().take(10).chain(&problems) {
        eprintln!("bench: problem: {p}");
    }
    println!(
        "bench: c={} sagas={} sagas_per_s={:.1} p50_ms={:.1} p95_ms={:.1} p99_ms={:.1} cpu_ms_per_saga={:.2} commits_per_saga={:.2} relay_lag_p99_ms={:.1} verify={}",
        args.c,
        done.len(),
        n / wall.as_secs_f64(),
        pct(&latencies, 0.50),
        pct(&latencies, 0.95),
        pct(&latencies, 0.99),
        (cpu1 - cpu0) / n,
        (xid1 - xid0) as f64 / n,
        pct(&lags, 0.99),
        if ok { "ok" } else { "FAILED" },
    );
    Ok(ok)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let dir = bin_dir()?;
    let profile = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("?")
        .to_owned();
    let fast_path = args
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "SAGAFLOW_FAST_PATH")
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var("SAGAFLOW_FAST_PATH").ok())
        .unwrap_or_else(|| "true".into());
    println!(
        "bench-config: binaries={} profile={profile} tls={} fast_path={fast_path} warmup={} env={:?}",
        dir.display(),
        if args.secure { "on" } else { "off" },
        args.warmup,
        args.env,
    );
    let mut all_ok = true;
    for _ in 0..args.runs {
        all_ok &= one_run(&args).await?;
    }
    if !all_ok {
        std::process::exit(1);
    }
    Ok(())
}
