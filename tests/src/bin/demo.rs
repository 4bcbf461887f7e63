//! `sagaflow-demo`: start a whole Sagaflow system on this machine (the
//! Pub/Sub emulator too, unless `PUBSUB_EMULATOR_HOST` is set), place a batch
//! of orders with a mix of outcomes, and show how each saga ended.
//!
//! The system runs secure: the demo makes a local CA, certificates for
//! every service and API tokens in a temporary directory (rcgen), and
//! prints where they are so the API can be called by hand.

use std::time::{Duration, Instant};

use sagaflow_protos::orchestrator::v1::SagaState;
use sagaflow_tests::invariants;
use sagaflow_tests::orders::{Expect, mixed, order};
use sagaflow_tests::system::{Options, System};

fn state_name(s: i32) -> &'static str {
    SagaState::try_from(s)
        .map(|s| s.as_str_name())
        .unwrap_or("?")
        .trim_start_matches("SAGA_STATE_")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(12);
    println!(
        "Starting Sagaflow: Postgres databases sagaflow_*, Pub/Sub emulator, 3 participants, relay, orchestrator ..."
    );
    let t0 = Instant::now();
    let sys = System::start(
        "demo",
        Options {
            default_databases: true,
            ..Options::default()
        },
    )
    .await?;
    println!(
        "Up in {:.1}s. Orchestrator at https://{}, Pub/Sub at {}, logs in {}",
        t0.elapsed().as_secs_f64(),
        sys.addrs["orchestrator-0"],
        sys.emulator_host,
        sys.log_dir.display()
    );
    if let Some(creds) = sys.credentials() {
        println!(
            "Mutual TLS to participants, TLS and tokens on the API: local CA, certificates and tokens in {}\n",
            creds.dir.display()
        );
    }
    let mut client = sys.client().await?;
    let mut placed = Vec::new();
    let placing = Instant::now();
    for i in 0..n {
        let (req, expect) = if i == 0 {
            (
                order("cust-bob", &[("sku-rare", 2)], 25_000),
                Expect::PaymentRefused,
            )
        } else {
            mixed(i)
        };
        let what = format!(
            "{} buys {} for {:.2} {}",
            req.customer_id,
            req.items
                .iter()
                .map(|i| format!("{}x{}", i.quantity, i.sku))
                .collect::<Vec<_>>()
                .join(" + "),
            req.amount_cents as f64 / 100.0,
            req.currency
        );
        let resp = client.place_order(req).await?.into_inner();
        placed.push((resp.saga_id, what, expect));
    }
    println!(
        "Placed {n} orders one after another in {:.2}s ({:.1} ms per PlaceOrder call).",
        placing.elapsed().as_secs_f64(),
        placing.elapsed().as_secs_f64() * 1000.0 / n as f64
    );
    let ids: Vec<String> = placed.iter().map(|p| p.0.clone()).collect();
    let done = sys.wait_terminal(&ids, Duration::from_secs(120)).await?;
    println!("{:<38} {:<48} {:<12} reason", "saga", "order", "result");
    for ((id, what, _), saga) in placed.iter().zip(&done) {
        println!(
            "{id:<38} {what:<48} {:<12} {}",
            state_name(saga.state),
            saga.reason
        );
    }
    let report = invariants::check(&sys.dbs.order, &sys.dbs.payment, &sys.dbs.inventory).await?;
    let unexpected = placed
        .iter()
        .zip(&done)
        .filter(|((_, _, e), s)| {
            (*e == Expect::Completed) != (s.state == SagaState::Completed as i32)
        })
        .count();
    println!(
        "\n{} sagas: {} completed, {} compensated, {} compensation-failed; {} not as expected; invariants across databases: {}",
        done.len(),
        done.iter()
            .filter(|s| s.state == SagaState::Completed as i32)
            .count(),
        done.iter()
            .filter(|s| s.state == SagaState::Compensated as i32)
            .count(),
        done.iter()
            .filter(|s| s.state == SagaState::CompensationFailed as i32)
            .count(),
        unexpected,
        if report.ok() {
            "ok".to_owned()
        } else {
            format!("FAILED {:?}", report.violations)
        }
    );
    println!(
        "Inspect one: GetSaga {{saga_id}} on {} (CA ca.crt, operator token in cli-token, both in the directory above), or the sagaflow_* databases.",
        sys.addrs["orchestrator-0"]
    );
    if !report.ok() || unexpected > 0 {
        anyhow::bail!("the demo did not end as expected");
    }
    Ok(())
}
