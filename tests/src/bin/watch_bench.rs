//! `sagaflow-watch-bench`: what watching costs. Starts a fresh system
//! (insecure, one orchestrator) and runs the same batch of order sagas three
//! times, interleaved in this order:
//!
//! 1. with no watcher: the engine's throughput alone;
//! 2. with ONE `WatchSaga` watcher, which watches one saga after another
//!    while the batch runs: commit → delivery latency with one watcher;
//! 3. with `--watchers` `WatchSaga` watchers (spread evenly over the batch's
//!    sagas, each attached as its saga is placed): every watcher must see
//!    every entry of its saga, in order, once, and a clean end; latency and
//!    throughput with them attached.
//!
//! Then memory per idle watcher: `--idle` watchers on one saga held still
//! (its payment participant paused), the orchestrator's resident memory
//! before and after.
//!
//! Prints one line:
//!
//! `watch-bench: sagas=N c=C watchers=W sagas_per_s_without=X sagas_per_s_with_1=X sagas_per_s_with_w=X p50_ms_1=X p99_ms_1=X p50_ms_w=X p99_ms_w=X idle_watchers=I idle_kib_per_watcher=X verify=ok|FAILED`
//!
//! Latency is per live entry (not the replayed ones): the time the watcher
//! receives it minus the entry's `at` (the database's clock at the start of
//! the transaction that wrote it, a millisecond or so before its commit), on
//! one machine. Throughput is the batch's sagas over the wall time from the
//! first placement until the database shows the last one terminal (read
//! every 20 ms straight from the database, not through the API).
//!
//! Usage: `sagaflow-watch-bench [--sagas 500] [--watchers 1000] [--c 16]
//! [--idle 1000]`. The exit status is 1 when a watcher missed, repeated or
//! reordered an entry.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt as _;
use sagaflow_protos::orchestrator::v1::{PlaceOrderRequest, WatchSagaRequest};
use sagaflow_protos::participant::v1::OrderItem;
use sagaflow_tests::clients::{api_client, endpoint};
use sagaflow_tests::system::{Client, Options, System};
use tokio::sync::Mutex;
use uuid::Uuid;

struct Args {
    sagas: usize,
    watchers: usize,
    c: usize,
    idle: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        sagas: 500,
        watchers: 1000,
        c: 16,
        idle: 1000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!(
                "usage: sagaflow-watch-bench [--sagas 500] [--watchers 1000] [--c 16] [--idle 1000]"
            );
            std::process::exit(0);
        }
        let value = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        let n: usize = value
            .parse()
            .map_err(|_| anyhow::anyhow!("{flag}: {value:?} is not a count"))?;
        match flag.as_str() {
            "--sagas" => a.sagas = n.max(1),
            "--watchers" => a.watchers = n,
            "--c" => a.c = n.max(1),
            "--idle" => a.idle = n,
            _ => anyhow::bail!("unknown flag {flag} (see --help)"),
        }
    }
    Ok(a)
}

/// The bench's order mix: mostly completed, some refused at payment.
fn order(i: usize) -> PlaceOrderRequest {
    let customer = if i.is_multiple_of(5) {
        "cust-broke"
    } else {
        "cust-alice"
    };
    PlaceOrderRequest {
        idempotency_key: Uuid::new_v4().to_string(),
        customer_id: customer.to_owned(),
        items: vec![OrderItem {
            sku: if i.is_multiple_of(2) {
                "sku-widget"
            } else {
                "sku-gadget"
            }
            .to_owned(),
            quantity: 1,
        }],
        amount_cents: 100 + (i as i64 * 37) % 1000,
        currency: "EUR".to_owned(),
    }
}

/// What one watcher saw.
#[derive(Default)]
struct Watched {
    saga_id: String,
    seqs: Vec<u64>,
    live_ms: Vec<f64>,
    clean_end: bool,
}

/// Watch one saga from its start to its end.
async fn watch_one(mut client: Client, saga_id: String) -> Watched {
    let mut w = Watched {
        saga_id: saga_id.clone(),
        ..Default::default()
    };
    let Ok(stream) = client
        .watch_saga(WatchSagaRequest {
            saga_id,
            after_seq: 0,
        })
        .await
    else {
        return w;
    };
    let mut stream = stream.into_inner();
    let mut first = true;
    while let Some(m) = stream.next().await {
        let Ok(m) = m else { return w };
        let now = SystemTime::now();
        for e in &m.entries {
            w.seqs.push(e.seq);
            if !first && let Some(at) = &e.at {
                let at = SystemTime::UNIX_EPOCH
                    + Duration::new(at.seconds.max(0) as u64, at.nanos.max(0) as u32);
                if let Ok(d) = now.duration_since(at) {
                    w.live_ms.push(d.as_secs_f64() * 1000.0);
                }
            }
        }
        first = false;
    }
    w.clean_end = true;
    w
}

/// Clients over `n` separate connections (a server caps streams per
/// connection).
async fn clients(url: &str, n: usize) -> anyhow::Result<Vec<Client>> {
    let mut out = Vec::new();
    for _ in 0..n.max(1) {
        out.push(api_client(endpoint(url, None)?.connect().await?, None)?);
    }
    Ok(out)
}

/// Wait until every saga in `ids` is terminal in the database.
async fn all_terminal(db: &tokio_postgres::Client, ids: &[Uuid]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM sagas WHERE saga_id = ANY($1)
                 AND status IN ('COMPLETED', 'COMPENSATED', 'COMPENSATION_FAILED')",
                &[&ids],
            )
            .await?
            .get(0);
        if n as usize == ids.len() {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "sagas not terminal after 600 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    None,
    One,
    Many(usize),
}

/// One batch: throughput, and what its watchers saw.
async fn batch(
    placer: &Client,
    watchers: &[Client],
    db: &tokio_postgres::Client,
    args: &Args,
    mode: Mode,
) -> anyhow::Result<(f64, Vec<Watched>)> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let placed = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    // The single watcher: one saga after another, the newest placed.
    let single = (mode == Mode::One).then(|| {
        let (placed, seen, stop, client) = (
            placed.clone(),
            seen.clone(),
            stop.clone(),
            watchers[0].clone(),
        );
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let next = placed.lock().await.last().cloned();
                match next {
                    Some(id) => {
                        let w = watch_one(client.clone(), id).await;
                        seen.lock().await.push(w);
                    }
                    None => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        })
    });
    let per_saga = match mode {
        Mode::Many(w) => w.div_ceil(args.sagas),
        _ => 0,
    };
    let started = Instant::now();
    let results: Vec<anyhow::Result<(Uuid, Vec<tokio::task::JoinHandle<Watched>>)>> =
        futures::stream::iter(0..args.sagas)
            .map(|i| {
                let mut placer = placer.clone();
                let placed = placed.clone();
                let watchers = watchers.to_vec();
                async move {
                    let id = placer.place_order(order(i)).await?.into_inner().saga_id;
                    placed.lock().await.push(id.clone());
                    let handles = (0..per_saga)
                        .map(|k| {
                            let client = watchers[(i * per_saga + k) % watchers.len()].clone();
                            tokio::spawn(watch_one(client, id.clone()))
                        })
                        .collect();
                    Ok((Uuid::parse_str(&id)?, handles))
                }
            })
            .buffer_unordered(args.c)
            .collect()
            .await;
    let mut ids = Vec::new();
    let mut handles = Vec::new();
    for r in results {
        let (id, h) = r?;
        ids.push(id);
        handles.extend(h);
    }
    all_terminal(db, &ids).await?;
    let rate = ids.len() as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    if let Some(s) = single {
        s.await?;
    }
    let mut out = std::mem::take(&mut *seen.lock().await);
    for h in handles {
        out.push(h.await?);
    }
    Ok((rate, out))
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Every watcher saw 1..=version of its saga and a clean end.
async fn verify(db: &tokio_postgres::Client, seen: &[Watched]) -> anyhow::Result<usize> {
    let mut bad = 0;
    for w in seen {
        let id = Uuid::parse_str(&w.saga_id)?;
        let version: i64 = db
            .query_one("SELECT version FROM sagas WHERE saga_id = $1", &[&id])
            .await?
            .get(0);
        let want: Vec<u64> = (1..=version as u64).collect();
        if !w.clean_end || w.seqs != want {
            bad += 1;
            if bad <= 5 {
                eprintln!(
                    "watcher of {} saw {:?} (want 1..={version}), clean end: {}",
                    w.saga_id, w.seqs, w.clean_end
                );
            }
        }
    }
    Ok(bad)
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for {pid}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let sys = System::start(
        "watchbench",
        Options {
            insecure: true,
            ..Options::default()
        },
    )
    .await?;
    let url = sys.orchestrator_urls()[0].clone();
    let db = sagaflow_common::db::connect(&sys.dbs.orchestrator).await?;
    let placer = clients(&url, 1).await?.remove(0);
    let watchers = clients(&url, args.watchers.div_ceil(100).max(1)).await?;

    let (without, _) = batch(&placer, &watchers, &db, &args, Mode::None).await?;
    let (with_1, mut seen_1) = batch(&placer, &watchers, &db, &args, Mode::One).await?;
    let (with_w, mut seen_w) =
        batch(&placer, &watchers, &db, &args, Mode::Many(args.watchers)).await?;
    let bad = verify(&db, &seen_1).await? + verify(&db, &seen_w).await?;
    let mut lat_1: Vec<f64> = seen_1
        .iter_mut()
        .flat_map(|w| w.live_ms.drain(..))
        .collect();
    let mut lat_w: Vec<f64> = seen_w
        .iter_mut()
        .flat_map(|w| w.live_ms.drain(..))
        .collect();

    // Idle watchers on a saga held still.
    let mut idle_kib = f64::NAN;
    if args.idle > 0 {
        sys.pause("payment")?;
        let mut p = placer.clone();
        let id = p.place_order(order(1)).await?.into_inner().saga_id;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let pid = sys
            .pid("orchestrator-0")
            .ok_or_else(|| anyhow::anyhow!("no orchestrator"))?;
        let before = rss_kib(pid)?;
        let idle_clients = clients(&url, args.idle.div_ceil(100)).await?;
        let mut streams = Vec::new();
        for k in 0..args.idle {
            let mut c = idle_clients[k % idle_clients.len()].clone();
            let mut s = c
                .watch_saga(WatchSagaRequest {
                    saga_id: id.clone(),
                    after_seq: 0,
                })
                .await?
                .into_inner();
            s.next().await.transpose()?;
            streams.push(s);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = rss_kib(pid)?;
        idle_kib = after.saturating_sub(before) as f64 / args.idle as f64;
        drop(streams);
        sys.resume("payment")?;
    }

    let ok = bad == 0 && seen_w.is_empty() != (args.watchers > 0);
    println!(
        "watch-bench: sagas={} c={} watchers={} sagas_per_s_without={:.1} sagas_per_s_with_1={:.1} sagas_per_s_with_w={:.1} p50_ms_1={:.1} p99_ms_1={:.1} p50_ms_w={:.1} p99_ms_w={:.1} idle_watchers={} idle_kib_per_watcher={:.1} verify={}",
        args.sagas,
        args.c,
        seen_w.len(),
        without,
        with_1,
        with_w,
        pct(&mut lat_1, 0.50),
        pct(&mut lat_1, 0.99),
        pct(&mut lat_w, 0.50),
        pct(&mut lat_w, 0.99),
        args.idle,
        idle_kib,
        if ok { "ok" } else { "FAILED" }
    );
    if !ok {
        eprintln!("{bad} watchers missed, repeated or reordered entries");
        std::process::exit(1);
    }
    Ok(())
}
