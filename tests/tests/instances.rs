//! Many instances: two orchestrators and two relays share the databases and
//! the Pub/Sub subscription. Under load, one of each is SIGKILLed and not
//! restarted. The survivors must take over: no saga advances twice, no step
//! runs twice, every saga (the dead orchestrator's too) reaches a terminal
//! state through the survivor's timers and the shared subscription, every
//! saga whose history shows no fault path ends exactly as a clean run ends
//! it (the others are counted), the per-saga reconciliation and books find
//! no saga wrong, and the business invariants hold. Prints one summary line:
//! `instances: sagas=N terminal=N in_flight_at_kill=N via_killed=N double_applied=N resent=N invariants=ok|FAILED settle_s=X`

use std::time::{Duration, Instant};

use sagaflow_common::db;
use sagaflow_tests::audit;
use sagaflow_tests::checks::Checks;
use sagaflow_tests::definitions::Policies;
use sagaflow_tests::orders::{Expect, mixed};
use sagaflow_tests::placer::{Pace, place_all};
use sagaflow_tests::system::{Options, System};
use sagaflow_tests::{outcomes, wait_for};

const SAGAS: usize = 400;

/// Recovery of the dead instance's work waits for step deadlines.
/// Attempts cover well over the minute for which the emulator keeps the
/// messages it leases to the dead instance's streams (see
/// common/src/pubsub/subscriber.rs).
fn policies() -> Policies {
    Policies::outlasting_restarts()
}

fn env() -> Vec<(String, String)> {
    [
        ("SAGAFLOW_TIMER_POLL_MS", "250"),
        // Two of everything on one Postgres shared with other tests.
        ("SAGAFLOW_DB_POOL_SIZE", "6"),
        // Outcomes through Pub/Sub only: with the fast path a saga takes a
        // few milliseconds, and the kill is to find the dying instance with
        // sagas of its own in flight and events leased to its streams. (The
        // chaos schedule kills orchestrators with the fast path on.)
        ("SAGAFLOW_FAST_PATH", "false"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_orchestrators_and_two_relays_survive_losing_one_of_each() -> anyhow::Result<()> {
    let mut sys = System::start(
        "instances",
        Options {
            env: env(),
            policies: policies(),
            orchestrators: 2,
            relays: 2,
            ..Options::default()
        },
    )
    .await?;
    let clients = sys.orchestrator_clients()?;
    assert_eq!(clients.len(), 2);
    let orders: Vec<_> = (0..SAGAS).map(mixed).collect();
    let started = Instant::now();
    // Half the orders go to each orchestrator (order i to i % 2), at a pace
    // that keeps both busy for ~10 s.
    let placing = place_all(
        &clients,
        orders,
        Pace {
            per_second: 40.0,
            concurrency: 32,
            ..Pace::default()
        },
    );
    let orchestrator_db = sys.dbs.orchestrator.clone();
    let killing = async {
        // Mid-run: plenty placed, plenty still in flight.
        let in_flight = wait_for(
            "sagas to pile up before the kill",
            Duration::from_secs(120),
            || async {
                let c = db::connect(&orchestrator_db).await?;
                let r = c
                    .query_one(
                        "SELECT count(*), count(*) FILTER (WHERE status IN ('RUNNING', 'COMPENSATING')) FROM sagas",
                        &[],
                    )
                    .await?;
                let (all, in_flight): (i64, i64) = (r.get(0), r.get(1));
                Ok((all >= SAGAS as i64 * 2 / 5 && in_flight >= 5).then_some(in_flight))
            },
        )
        .await?;
        sys.kill("orchestrator-1");
        sys.kill("relay-1");
        anyhow::Ok((in_flight, started.elapsed()))
    };
    let (placed, killed) = tokio::join!(placing, killing);
    let placed = placed?;
    let (in_flight_at_kill, killed_at) = killed?;
    let killed_instant = started + killed_at;
    println!(
        "instances: killed orchestrator-1 and relay-1 at t={:.1}s with {in_flight_at_kill} sagas in flight",
        killed_at.as_secs_f64()
    );
    let ids: Vec<uuid::Uuid> = placed.iter().map(|p| p.saga_id).collect();
    // Accepted by orchestrator-1 on the first call: its own sagas.
    let via_killed = placed
        .iter()
        .filter(|p| p.index % 2 == 1 && p.calls == 1)
        .count();

    let settled =
        audit::wait_all_terminal(&sys.dbs.orchestrator, &ids, Duration::from_secs(240)).await;
    let settle = killed_instant.elapsed();
    let lost = audit::not_terminal(&sys.dbs.orchestrator, &ids).await?;
    let checks = Checks::run(&sys).await?;
    let audit = &checks.audit;
    let c = db::connect(&sys.dbs.orchestrator).await?;
    let resent: i64 = c
        .query_one(
            "SELECT count(*) FROM saga_history WHERE kind = 'resent' AND at > now() - $1::float8 * interval '1 second'",
            &[&settle.as_secs_f64()],
        )
        .await?
        .get(0);
    let expected: Vec<(uuid::Uuid, Expect)> =
        placed.iter().map(|p| (p.saga_id, p.expect)).collect();
    let outcomes = outcomes::classify(&sys.dbs.orchestrator, &expected).await?;
    let survivors_alive = sys.reap().is_empty();
    println!(
        "instances: {:?}; events applied {}; events re-emitted {}; {outcomes}; problems: {:?}",
        audit.by_status,
        audit.processed_events,
        audit.outbox_rows - audit.outbox_events,
        checks
            .problems(10)
            .iter()
            .chain(&outcomes.wrong)
            .take(10)
            .collect::<Vec<_>>()
    );
    println!("instances: {}", checks.describe());
    let double_applied = checks.double_applied();
    println!(
        "instances: sagas={} terminal={} in_flight_at_kill={in_flight_at_kill} via_killed={via_killed} double_applied={double_applied} resent={resent} invariants={} settle_s={:.1}",
        ids.len(),
        ids.len() - lost,
        checks.invariants_word(),
        settle.as_secs_f64()
    );
    settled.map_err(|e| anyhow::anyhow!("{e}; logs in {}", sys.log_dir.display()))?;
    assert_eq!(ids.len(), SAGAS);
    assert!(via_killed > 0, "orchestrator-1 placed nothing");
    checks.assert_ok(&sys);
    assert_eq!(audit.count("COMPENSATION_FAILED"), 0);
    assert!(outcomes.wrong.is_empty(), "{:?}", outcomes.wrong);
    assert!(survivors_alive, "a surviving process died");
    Ok(())
}
