//! `sagaflow-demo`: start a whole Sagaflow system on this machine (the
//! Pub/Sub emulator too, unless `PUBSUB_EMULATOR_HOST` is set), place sample
//! orders with a mix of outcomes, print each one's result as it ends (from
//! the `WatchSagas` stream), then keep the system up for the web console and
//! the `sagaflow` CLI until Ctrl-C; or, with `--orders N`, exit once the N
//! orders have ended. Every process it started is stopped when it ends.
//!
//! The system runs insecure (no TLS, no tokens) on 127.0.0.1, so a browser
//! and the CLI need no certificates; the system tests run it secure.
//!
//! Layout: [`table`] prints the rows, [`watch`] follows the stream,
//! [`databases`] knows the four databases it keeps (and drops them).

#[path = "demo/databases.rs"]
mod databases;
#[path = "demo/table.rs"]
mod table;
#[path = "demo/watch.rs"]
mod watch;

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use sagaflow_protos::orchestrator::v1::{
    GetSagaRequest, PlaceOrderRequest, SagaState, StartSagaRequest,
};
use sagaflow_tests::databases::{DEFAULT_NAMES, TRIP_NAMES};
use sagaflow_tests::orders::{Expect, mixed, order};
use sagaflow_tests::system::{self, Client, Options, System};
use sagaflow_tests::{invariants, trips};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::signal::unix::{Signal, SignalKind, signal};

use table::Table;
use watch::{Saga, Seen, Watch};

/// Orders placed when `--orders` is not given.
const SAMPLE: u32 = 12;
/// How long the orders may go without one of them ending before the demo
/// gives up.
const STALL: Duration = Duration::from_secs(120);
/// How long each process may take to stop after SIGTERM (then SIGKILL).
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// This command, run from the repository.
const DEMO: &str = "cargo run -p sagaflow-tests --bin sagaflow-demo --";

#[derive(Parser)]
#[command(
    name = "sagaflow-demo",
    version,
    about = "Run a whole Sagaflow system on this machine, place sample orders and show how each one ends",
    long_about = "Run a whole Sagaflow system on this machine (Pub/Sub emulator, three \
participants, an outbox relay, an orchestrator with the web console), place sample orders \
with a mix of outcomes (completed, payment refused, out of stock) and print each result as \
it ends.\n\n\
Without --orders it places 12 orders and stays up until Ctrl-C (SIGINT or SIGTERM), so you \
can browse the web console and place more orders with the `sagaflow` CLI; it prints the URL \
and the commands. With --orders N it places N orders, waits for them, checks the business \
invariants and exits (status 1 when a saga did not end as expected). Either way every \
process it started is stopped when it ends.\n\n\
The system runs INSECURE (no TLS, no tokens) on 127.0.0.1 only, so the CLI and the browser \
need no certificates. Never expose it.\n\n\
It needs PostgreSQL at 127.0.0.1:5432 (user postgres, trust auth) and the Google Cloud \
CLI's Pub/Sub emulator. The databases sagaflow_orchestrator, sagaflow_order, \
sagaflow_payment, sagaflow_inventory and the trip saga's sagaflow_flight, sagaflow_hotel, sagaflow_car and sagaflow_trip are created if missing and kept afterwards, unless \
--drop-databases; `sagaflow-demo clean` drops them.",
    after_help = "Environment:\n  \
SAGAFLOW_SERVER_URL    the PostgreSQL server (default postgres://postgres@127.0.0.1:5432)\n  \
PUBSUB_EMULATOR_HOST   use this Pub/Sub emulator instead of starting one\n  \
SAGAFLOW_TEST_LOG      the services' RUST_LOG (default info); their logs go to files\n  \
SAGAFLOW_BIN_DIR       run the service binaries from here instead of building them",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Place N orders, wait until they end, stop everything and exit (for
    /// scripts). Without it: place 12 and stay up until Ctrl-C.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    orders: Option<u32>,
    /// Drop the four databases when the demo ends (by default they are kept
    /// for inspection).
    #[arg(long)]
    drop_databases: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Drop the demo's four databases and exit.
    ///
    /// Drops sagaflow_orchestrator, sagaflow_order, sagaflow_payment and
    /// sagaflow_inventory with whatever they hold (closing their
    /// connections: stop a running demo first). They are also the services'
    /// default databases.
    Clean,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Some(Command::Clean) => clean().await,
        None => demo(args).await,
    };
    result.unwrap_or_else(|e| {
        eprintln!("sagaflow-demo: {e:#}");
        ExitCode::FAILURE
    })
}

async fn clean() -> anyhow::Result<ExitCode> {
    let dropped = databases::drop_all().await?;
    if dropped.is_empty() {
        println!(
            "None of the demo's databases ({}) is on {}: nothing to drop.",
            [&DEFAULT_NAMES[..], &TRIP_NAMES[..]].concat().join(", "),
            databases::server()
        );
    } else {
        println!("Dropped {} on {}.", dropped.join(", "), databases::server());
    }
    Ok(ExitCode::SUCCESS)
}

/// How a session ended.
enum Ending {
    /// `--orders`: the orders ended; `ok` when as expected.
    Done { ok: bool },
    /// A signal: `batch` is `Some(ok)` when the sample had ended by then.
    Signalled {
        signal: &'static str,
        batch: Option<bool>,
    },
}

async fn demo(args: Args) -> anyhow::Result<ExitCode> {
    let mut stop = Stop::listen()?;
    let before = databases::existing().await?;
    println!(
        "INSECURE MODE: this local system runs without TLS and without tokens \
         (SAGAFLOW_INSECURE=true), on 127.0.0.1 only, so the CLI and a browser need no \
         certificates. Never expose it; see docs/security.md."
    );
    println!("Building the service binaries if needed (cargo build --workspace --bins) ...");
    let mut build = tokio::task::spawn_blocking(system::bin_dir);
    let interrupted = tokio::select! {
        biased;
        signal = stop.recv() => {
            // The build is a child too: it stops with a terminal's Ctrl-C,
            // otherwise it is let finish rather than left behind.
            let _ = (&mut build).await;
            Some(signal)
        }
        built = &mut build => match built.map_err(anyhow::Error::from).and_then(|b| b) {
            Ok(_) => None,
            // Ctrl-C in a terminal stops the build too: its failure is the
            // interruption's.
            Err(e) => match tokio::time::timeout(Duration::from_millis(200), stop.recv()).await {
                Ok(signal) => Some(signal),
                Err(_) => return Err(e),
            },
        },
    };
    if let Some(signal) = interrupted {
        println!("{signal} while building: nothing was started.");
        return Ok(ExitCode::from(130));
    }
    println!(
        "Starting Sagaflow: Pub/Sub emulator, 7 participants (order, payment, inventory; \
         flight, hotel, car, trip), outbox relay, orchestrator ..."
    );
    let t0 = Instant::now();
    let options = Options {
        default_databases: true,
        insecure: true,
        // The trip saga runs side by side with the orders.
        trip: true,
        ..Options::default()
    };
    let mut sys = tokio::select! {
        biased;
        signal = stop.recv() => {
            // Dropping the start stops whatever it had started.
            println!("{signal} while starting: stopped what had started.");
            return Ok(ExitCode::from(130));
        }
        started = System::start("demo", options) => match started {
            Ok(sys) => sys,
            Err(e) => {
                // Ctrl-C in a terminal reaches the build and the services
                // too: their failure is the interruption's.
                if let Ok(signal) = tokio::time::timeout(Duration::from_millis(200), stop.recv()).await {
                    println!("{signal} while starting: stopped what had started.");
                    return Ok(ExitCode::from(130));
                }
                return Err(e);
            }
        },
    };
    println!("Up in {:.1}s.", t0.elapsed().as_secs_f64());
    let created: Vec<&str> = DEFAULT_NAMES
        .iter()
        .chain(&TRIP_NAMES)
        .copied()
        .filter(|n| !before.contains(n))
        .collect();
    println!(
        "Databases on {}: {} ({}).",
        databases::server(),
        [&DEFAULT_NAMES[..], &TRIP_NAMES[..]].concat().join(", "),
        match (created.len(), before.len()) {
            (0, _) => "all there from an earlier run, used as they are".to_owned(),
            (_, 0) => "created now".to_owned(),
            _ => format!("created now: {}; the others reused", created.join(", ")),
        }
    );
    let ending = session(&mut sys, &mut stop, args.orders).await;
    let log_dir = sys.log_dir.clone();
    let emulator_log = sys.emulator_log();
    let stopped = shutdown(sys).await;
    println!(
        "\nStopped {}{}: nothing the demo started is left running. Logs kept in {}{}.",
        stopped.join(", "),
        if emulator_log.is_some() {
            " and the Pub/Sub emulator"
        } else {
            " (the Pub/Sub emulator at PUBSUB_EMULATOR_HOST is not ours: left as it was)"
        },
        log_dir.display(),
        emulator_log
            .map(|l| format!(" and {}", l.display()))
            .unwrap_or_default()
    );
    if args.drop_databases {
        let dropped = databases::drop_all().await?;
        println!("Dropped {} (--drop-databases).", dropped.join(", "));
    } else {
        println!(
            "Kept the databases {} for inspection (psql -h 127.0.0.1 -U postgres sagaflow_orchestrator). \
             Drop them with `{DEMO} clean`, or pass --drop-databases next time.",
            [&DEFAULT_NAMES[..], &TRIP_NAMES[..]].concat().join(", ")
        );
    }
    Ok(match ending? {
        Ending::Done { ok: true } => ExitCode::SUCCESS,
        Ending::Done { ok: false } => ExitCode::FAILURE,
        Ending::Signalled {
            batch: Some(true), ..
        } => ExitCode::SUCCESS,
        Ending::Signalled {
            batch: Some(false), ..
        } => ExitCode::FAILURE,
        Ending::Signalled {
            signal,
            batch: None,
        } => {
            println!("Interrupted by {signal} before the orders had ended.");
            ExitCode::from(130)
        }
    })
}

/// Everything between start and stop: place, print, stay up.
async fn session(sys: &mut System, stop: &mut Stop, orders: Option<u32>) -> anyhow::Result<Ending> {
    let api = sys.orchestrator_urls()[0].clone();
    let console = sys.console_url(0);
    // The `sagaflow` binary the start has just built: a `cargo run` of the
    // CLI package alone would build again with other features.
    let cli = format!(
        "SAGAFLOW_API_URL={api} SAGAFLOW_INSECURE=true {}",
        shell_word(&system::bin_dir()?.join("sagaflow").display().to_string())
    );
    let served = console_served(&sys.addrs["orchestrator-0.http"]).await;
    println!("Orchestrator API (gRPC, plaintext): {api}");
    match &served {
        Ok(true) => println!("Web console: {console}"),
        Ok(false) => println!(
            "Web console: not built, so {console} only says so. Build it with \
             `npm ci && npm run build` in console/ (Node 20), then start the demo again."
        ),
        Err(e) => println!("Web console: {console} does not answer: {e:#}"),
    }
    if orders.is_some() {
        println!("While the orders run, in another shell: {cli} get SAGA_ID");
    }

    let n = orders.unwrap_or(SAMPLE);
    let sample: Vec<(PlaceOrderRequest, Expect)> = (0..n as usize).map(sample_order).collect();
    let requests: Vec<PlaceOrderRequest> = sample.iter().map(|(r, _)| r.clone()).collect();
    // Half as many trips, started between the orders.
    let key = uuid::Uuid::new_v4().simple().to_string();
    let trip_sample: Vec<(StartSagaRequest, Expect)> = (0..(n as usize).div_ceil(2))
        .map(|i| trips::mixed(&key[..8], i))
        .collect();
    let n = n as usize + trip_sample.len();
    let trip_requests: Vec<StartSagaRequest> = trip_sample.iter().map(|(r, _)| r.clone()).collect();
    let table = Table::fitting(&requests, &trip_requests);
    let client = sys.client().await?;
    let (mut watch, snapshot) = Watch::open(client.clone()).await?;
    let earlier: i64 = snapshot.counts.iter().map(|c| c.count).sum();
    if earlier > 0 {
        println!(
            "sagaflow_orchestrator already holds {earlier} sagas from earlier runs; below are the new ones as they end."
        );
    }
    println!(
        "\nStarting {n} sagas ({} orders, {} trips); each row appears as its saga ends:\n",
        sample.len(),
        trip_sample.len()
    );
    println!("{}", table.header());
    let mut placer = tokio::spawn(place(client.clone(), sample, trip_sample));
    let mut placed: Option<(Vec<(String, Expect)>, Duration)> = None;
    let mut ended: HashMap<String, Saga> = HashMap::new();
    let mut sweep = false;
    let mut progress = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let batch_ok = loop {
        if let Some((ids, _)) = &placed {
            if sweep {
                sweep = false;
                for saga in fetch_unended(&client, ids, &ended).await? {
                    println!("{}", table.row(&saga));
                    ended.insert(saga.saga_id.clone(), saga);
                }
            }
            if ids.iter().all(|(id, _)| ended.contains_key(id)) {
                break summarize(sys, ids, &ended, placed.as_ref().map(|p| p.1)).await?;
            }
        }
        tokio::select! {
            biased;
            signal = stop.recv() => return Ok(Ending::Signalled { signal, batch: None }),
            _ = tick.tick() => check_processes(sys, stop).await?,
            done = &mut placer, if placed.is_none() => {
                placed = Some(done??);
                progress = Instant::now();
            }
            seen = watch.next() => match seen? {
                Seen::Ended(saga) => {
                    println!("{}", table.row(&saga));
                    ended.insert(saga.saga_id.clone(), *saga);
                    progress = Instant::now();
                }
                Seen::Reset => sweep = true,
            },
            _ = tokio::time::sleep_until((progress + STALL).into()) => {
                anyhow::bail!(
                    "no order ended in {STALL:?} ({} of {n} did); the services' logs are in {}",
                    ended.len(),
                    sys.log_dir.display()
                );
            }
        }
    };
    if orders.is_some() {
        return Ok(Ending::Done { ok: batch_ok });
    }

    let first = placed
        .as_ref()
        .and_then(|(ids, _)| ids.first())
        .map_or("SAGA_ID", |(id, _)| id.as_str());
    println!("\nThe system stays up until Ctrl-C. Look around (the CLI in another shell):");
    match served {
        Ok(true) => println!("  web console    {console}"),
        _ => println!(
            "  web console    not built (`npm ci && npm run build` in console/, then restart the demo)"
        ),
    }
    println!("  one saga       {cli} get {first}");
    println!("  live           {cli} watch {first}");
    println!("  all sagas      {cli} list");
    println!(
        "  a new order    {cli} place --customer cust-alice --item sku-widget:2 --amount 12.50"
    );
    println!(
        "  a new trip     {cli} start trip '{}'",
        trips::input("ann", "cust-alice", "SF-100", "H-PARK", "AIRPORT")
    );
    println!("Sagas that end from now on (placed from the CLI or the console) appear below.\n");
    println!("{}", table.header());
    loop {
        tokio::select! {
            biased;
            signal = stop.recv() => {
                println!("\n{signal}: stopping.");
                return Ok(Ending::Signalled { signal, batch: Some(batch_ok) });
            }
            _ = tick.tick() => check_processes(sys, stop).await?,
            seen = watch.next() => {
                if let Seen::Ended(saga) = seen? {
                    println!("{}", table.row(&saga));
                }
            }
        }
    }
}

/// The `i`-th order: first one over the credit limit, then a mixed batch.
fn sample_order(i: usize) -> (PlaceOrderRequest, Expect) {
    if i == 0 {
        (
            order("cust-bob", &[("sku-rare", 2)], 25_000),
            Expect::PaymentRefused,
        )
    } else {
        mixed(i)
    }
}

/// Place the orders one after another, a trip after every second one;
/// their saga ids and how long it took.
async fn place(
    mut client: Client,
    sample: Vec<(PlaceOrderRequest, Expect)>,
    trip_sample: Vec<(StartSagaRequest, Expect)>,
) -> anyhow::Result<(Vec<(String, Expect)>, Duration)> {
    let start = Instant::now();
    let mut ids = Vec::with_capacity(sample.len() + trip_sample.len());
    let mut trip_sample = trip_sample.into_iter();
    for (i, (request, expect)) in sample.into_iter().enumerate() {
        let response = client.place_order(request).await?.into_inner();
        ids.push((response.saga_id, expect));
        if i % 2 == 1
            && let Some((trip, expect)) = trip_sample.next()
        {
            ids.push((client.start_saga(trip).await?.into_inner().saga_id, expect));
        }
    }
    for (trip, expect) in trip_sample {
        ids.push((client.start_saga(trip).await?.into_inner().saga_id, expect));
    }
    Ok((ids, start.elapsed()))
}

/// Those of `ids` not seen to end, fetched, that have ended.
async fn fetch_unended(
    client: &Client,
    ids: &[(String, Expect)],
    ended: &HashMap<String, Saga>,
) -> anyhow::Result<Vec<Saga>> {
    let mut client = client.clone();
    let mut found = Vec::new();
    for (id, _) in ids.iter().filter(|(id, _)| !ended.contains_key(id)) {
        let saga = client
            .get_saga(GetSagaRequest {
                saga_id: id.clone(),
            })
            .await?
            .into_inner();
        if watch::ended(saga.state) {
            found.push(saga);
        }
    }
    Ok(found)
}

/// The batch's totals and the business invariants; whether all is as
/// expected.
async fn summarize(
    sys: &System,
    ids: &[(String, Expect)],
    ended: &HashMap<String, Saga>,
    placing: Option<Duration>,
) -> anyhow::Result<bool> {
    let states: Vec<(i32, Expect)> = ids.iter().map(|(id, e)| (ended[id].state, *e)).collect();
    let count = |s: SagaState| states.iter().filter(|(st, _)| *st == s as i32).count();
    let paused = count(SagaState::CompensationFailed) + count(SagaState::Suspended);
    let unexpected = states
        .iter()
        .filter(|(state, expect)| match expect {
            Expect::Completed => *state != SagaState::Completed as i32,
            Expect::PaymentRefused | Expect::StockShort | Expect::Refused => {
                *state != SagaState::Compensated as i32
            }
        })
        .count();
    let report = invariants::check(&sys.dbs.order, &sys.dbs.payment, &sys.dbs.inventory).await?;
    let batch: Vec<Saga> = ids.iter().map(|(id, _)| ended[id].clone()).collect();
    let trip_report = trips::check(sys, &batch).await?;
    let n = ids.len();
    if let Some(placing) = placing {
        println!(
            "\nStarted {n} sagas in {:.2}s ({:.1} ms per PlaceOrder or StartSaga call).",
            placing.as_secs_f64(),
            placing.as_secs_f64() * 1000.0 / n.max(1) as f64
        );
    }
    println!(
        "{n} sagas: {} completed, {} compensated, {paused} paused; {unexpected} not as expected; \
         invariants across the databases: {}",
        count(SagaState::Completed),
        count(SagaState::Compensated),
        if report.ok() && trip_report.ok() {
            "ok".to_owned()
        } else {
            format!(
                "FAILED {:?}",
                [&report.violations[..], &trip_report.violations[..]].concat()
            )
        }
    );
    Ok(report.ok() && trip_report.ok() && unexpected == 0 && paused == 0)
}

/// Fail when a process exited by itself (unless a stop signal explains
/// it: Ctrl-C in the terminal reaches the services too).
async fn check_processes(sys: &mut System, stop: &mut Stop) -> anyhow::Result<()> {
    let gone = sys.reap();
    if gone.is_empty() {
        return Ok(());
    }
    if let Ok(signal) = tokio::time::timeout(Duration::from_secs(1), stop.recv()).await {
        stop.pending = Some(signal);
        return Ok(());
    }
    let (name, status) = &gone[0];
    anyhow::bail!(
        "{name} exited by itself ({status}); its log: {}",
        sys.log_of(name).display()
    )
}

/// SIGTERM every process (orchestrators first, so nothing is sent to a
/// participant on its way out) and wait for each; SIGKILL after
/// [`STOP_TIMEOUT`]. The emulator goes with the system. Returns the names.
async fn shutdown(mut sys: System) -> Vec<String> {
    let running = sys.running();
    let (first, rest): (Vec<String>, Vec<String>) = running
        .iter()
        .cloned()
        .partition(|n| n.starts_with("orchestrator"));
    let mut stopped = Vec::new();
    for group in [first, rest] {
        for name in &group {
            let _ = sys.sigterm(name);
        }
        for name in group {
            match sys.wait_exit(&name, STOP_TIMEOUT).await {
                Ok(_) => stopped.push(name),
                Err(_) => stopped.push(format!("{name} (killed after {STOP_TIMEOUT:?})")),
            }
        }
    }
    drop(sys);
    stopped
}

/// `word` as one word for a POSIX shell.
fn shell_word(word: &str) -> String {
    if word
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,".contains(c))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Whether the orchestrator's HTTP address serves the console (200 at
/// `/`) rather than the page saying it is not built.
async fn console_served(addr: &str) -> anyhow::Result<bool> {
    sagaflow_tests::wait_for_port(addr, Duration::from_secs(10)).await?;
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') {
        let read = stream.read(&mut buf).await?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&buf[..read]);
    }
    let status_line = String::from_utf8_lossy(&head);
    Ok(status_line.split_whitespace().nth(1) == Some("200"))
}

/// SIGINT (Ctrl-C) and SIGTERM, caught from the start so that every
/// process started is stopped whatever happens.
struct Stop {
    int: Signal,
    term: Signal,
    /// A signal already received (while checking on processes).
    pending: Option<&'static str>,
}

impl Stop {
    fn listen() -> std::io::Result<Stop> {
        Ok(Stop {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            pending: None,
        })
    }

    async fn recv(&mut self) -> &'static str {
        if let Some(signal) = self.pending.take() {
            return signal;
        }
        tokio::select! {
            _ = self.int.recv() => "Ctrl-C (SIGINT)",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}
