//! One dead participant must not starve the healthy ones.
//!
//! The payment service is stopped for three times its step deadline (inside
//! its attempt budget) with more than 300 sagas waiting on it, while orders
//! keep coming. Sends to payment fail and are retried, but they hold only
//! payment's own share of the send slots, and only while they call: no step
//! of another participant may be re-sent or given up on because of
//! payment's outage. When payment is back, every saga finishes as a clean
//! run would, with the books balanced. Prints the other participants' step
//! latencies before and during the outage (figures, not assertions).

use std::time::{Duration, Instant};

use sagaflow_common::db;
use sagaflow_tests::audit;
use sagaflow_tests::checks::Checks;
use sagaflow_tests::definitions::Policies;
use sagaflow_tests::history::{entries_about, step_latencies};
use sagaflow_tests::orders::{Expect, mixed};
use sagaflow_tests::outcomes;
use sagaflow_tests::placer::{Pace, place_all};
use sagaflow_tests::system::{Options, System};

const DEADLINE: Duration = Duration::from_secs(3);

/// Three-second deadlines; a budget of 8 deadlines: the 9 s outage is well
/// inside it.
fn policies() -> Policies {
    Policies {
        deadline: Some(DEADLINE),
        attempts: Some(8),
        compensation_attempts: Some(20),
        backoff_cap: Some(Duration::from_millis(1000)),
        ..Policies::default()
    }
}

fn env() -> Vec<(String, String)> {
    [
        ("SAGAFLOW_TIMER_POLL_MS", "250"),
        // 64 commands in flight at once (256 by default): the 300+ sagas
        // waiting on payment outnumber the send slots several times over, as
        // a few thousand would the default.
        ("SAGAFLOW_MAX_CONCURRENT_SENDS", "64"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

async fn waiting_on_payment(url: &str) -> anyhow::Result<i64> {
    let c = db::connect(url).await?;
    Ok(c.query_one(
        "SELECT count(*) FROM sagas
         WHERE status = 'RUNNING' AND state->'steps'->1->>'state' = 'Pending'",
        &[],
    )
    .await?
    .get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_participant_does_not_starve_the_healthy_ones() -> anyhow::Result<()> {
    let mut sys = System::start(
        "outage",
        Options {
            env: env(),
            policies: policies(),
            ..Options::default()
        },
    )
    .await?;
    let urls = sys.orchestrator_clients()?;
    let orchestrator_db = sys.dbs.orchestrator.clone();

    // Before: a healthy system.
    let before = place_all(
        &urls,
        (0..60).map(mixed).collect(),
        Pace {
            per_second: 30.0,
            ..Pace::default()
        },
    )
    .await?;
    let before_ids: Vec<uuid::Uuid> = before.iter().map(|p| p.saga_id).collect();
    audit::wait_all_terminal(&orchestrator_db, &before_ids, Duration::from_secs(120)).await?;

    // Payment goes down; a burst of orders piles up on it, and orders keep
    // coming for the rest of the outage.
    sys.kill("payment");
    let down = Instant::now();
    let burst = place_all(
        &urls,
        (60..380).map(mixed).collect(),
        Pace {
            concurrency: 32,
            ..Pace::default()
        },
    )
    .await?;
    let trickle = place_all(
        &urls,
        (380..500).map(mixed).collect(),
        Pace {
            per_second: 20.0,
            ..Pace::default()
        },
    )
    .await?;
    let outage = DEADLINE * 3;
    tokio::time::sleep(outage.saturating_sub(down.elapsed())).await;
    let waiting = waiting_on_payment(&orchestrator_db).await?;
    let outage = down.elapsed();
    sys.restart("payment").await?;

    let during: Vec<uuid::Uuid> = burst.iter().chain(&trickle).map(|p| p.saga_id).collect();
    let all: Vec<uuid::Uuid> = before_ids.iter().chain(&during).copied().collect();
    audit::wait_all_terminal(&orchestrator_db, &all, Duration::from_secs(240))
        .await
        .map_err(|e| anyhow::anyhow!("{e}; logs in {}", sys.log_dir.display()))?;

    let mut lines = Vec::new();
    for step in ["create_order", "reserve_inventory", "approve_order"] {
        let b = step_latencies(&orchestrator_db, &before_ids, step).await?;
        let d = step_latencies(&orchestrator_db, &during, step).await?;
        lines.push(format!(
            "outage: {step:<17} before {}  with payment down or just back {}",
            b.summary(),
            d.summary()
        ));
    }
    for line in &lines {
        println!("{line}");
    }
    println!(
        "outage: payment down {:.1}s with {waiting} sagas waiting on it; {} placed meanwhile",
        outage.as_secs_f64(),
        during.len()
    );

    // No step of another participant was re-sent or given up on.
    let mut problems = Vec::new();
    for step in ["create_order", "reserve_inventory", "approve_order"] {
        problems.extend(
            entries_about(
                &orchestrator_db,
                &all,
                &["resent", "step_timed_out", "step_overdue"],
                step,
            )
            .await?,
        );
    }
    // Nor was payment itself given up on: the outage is inside its budget.
    problems.extend(
        entries_about(
            &orchestrator_db,
            &all,
            &["step_timed_out"],
            "process_payment",
        )
        .await?,
    );
    // Every saga ends exactly as a clean run ends it, and the books, the
    // reconciliation and the totals agree.
    let expected: Vec<(uuid::Uuid, Expect)> = before
        .iter()
        .chain(&burst)
        .chain(&trickle)
        .map(|p| (p.saga_id, p.expect))
        .collect();
    let outcomes = outcomes::classify(&sys.dbs.orchestrator, &expected).await?;
    let checks = Checks::run(&sys).await?;
    assert!(waiting >= 300, "only {waiting} sagas waited on payment");
    assert!(outage >= DEADLINE * 3, "outage of {outage:?}");
    assert!(
        problems.is_empty(),
        "{} steps re-sent or given up on because of payment's outage: {:?}",
        problems.len(),
        &problems[..problems.len().min(10)]
    );
    assert!(
        outcomes.wrong.is_empty() && outcomes.affected_total() == 0,
        "{outcomes}: {:?}",
        outcomes.wrong
    );
    checks.assert_ok(&sys);
    Ok(())
}
