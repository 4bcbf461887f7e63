//! Graceful shutdown: SIGTERM each binary while sagas are in flight. Each
//! must exit with status 0 within [`EXIT_BOUND`]; started again, the system
//! finishes every saga, each as a clean run would (unless its history shows
//! a fault path), and the reconciliation, the books and the invariants find
//! nothing wrong. Then the same with every process at once.
//! Prints one line per SIGTERM:
//! `shutdown: NAME exit=CODE after_s=X in_flight=N`.

use std::time::{Duration, Instant};

use sagaflow_tests::audit;
use sagaflow_tests::checks::Checks;
use sagaflow_tests::definitions::Policies;
use sagaflow_tests::orders::mixed;
use sagaflow_tests::outcomes;
use sagaflow_tests::placer::{Pace, place_all};
use sagaflow_tests::system::{Options, PARTICIPANTS, System};

/// How long a binary may take to exit after SIGTERM.
const EXIT_BOUND: Duration = Duration::from_secs(15);

/// Quick re-sends; attempts well over the minute for which the emulator
/// keeps messages it leased to a stopped orchestrator's streams (see
/// common/src/pubsub/subscriber.rs).
fn policies() -> Policies {
    Policies::outlasting_restarts()
}

/// Wait for `name` (already sent SIGTERM at `since`) to exit; prints and
/// returns its exit code (None: killed by a signal, or still running after
/// the bound and SIGKILLed) and how long it took.
async fn exited(
    sys: &mut System,
    name: &str,
    since: Instant,
    in_flight: usize,
) -> (Option<i32>, Duration) {
    let status = sys.wait_exit(name, EXIT_BOUND).await;
    let took = since.elapsed();
    match &status {
        Ok(s) => println!(
            "shutdown: {name} exit={} after_s={:.1} in_flight={in_flight}",
            s.code().map_or_else(|| format!("{s}"), |c| c.to_string()),
            took.as_secs_f64()
        ),
        Err(e) => println!(
            "shutdown: {name} exit=none after_s={:.1} in_flight={in_flight} ({e})",
            took.as_secs_f64()
        ),
    }
    (status.ok().and_then(|s| s.code()), took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_flight_exits_cleanly_and_nothing_is_lost() -> anyhow::Result<()> {
    let mut sys = System::start(
        "shutdown",
        Options {
            policies: policies(),
            ..Options::default()
        },
    )
    .await?;
    let clients = sys.orchestrator_clients()?;
    let mut ids = Vec::new();
    let mut expected = Vec::new();
    let mut failures = Vec::new();
    let mut next = 0;
    let mut names: Vec<String> = PARTICIPANTS.iter().map(|s| s.to_string()).collect();
    names.push("relay".to_owned());
    names.push("orchestrator-0".to_owned());

    // One at a time, each with a fresh batch in flight.
    for name in &names {
        let batch: Vec<_> = (next..next + 40).map(mixed).collect();
        next += 40;
        let placed = place_all(&clients, batch, Pace::default()).await?;
        let batch_ids: Vec<uuid::Uuid> = placed.iter().map(|p| p.saga_id).collect();
        let in_flight = audit::not_terminal(&sys.dbs.orchestrator, &batch_ids).await?;
        ids.extend(batch_ids);
        expected.extend(placed.iter().map(|p| (p.saga_id, p.expect)));
        let t = Instant::now();
        sys.sigterm(name)?;
        let (code, took) = exited(&mut sys, name, t, in_flight).await;
        if code != Some(0) || took > EXIT_BOUND {
            failures.push(format!("{name}: exit {code:?} after {took:?}"));
        }
        sys.restart(name).await?;
    }

    // All at once, mid-flight, then everything started again.
    let batch: Vec<_> = (next..next + 80).map(mixed).collect();
    let placed = place_all(&clients, batch, Pace::default()).await?;
    let batch_ids: Vec<uuid::Uuid> = placed.iter().map(|p| p.saga_id).collect();
    let in_flight = audit::not_terminal(&sys.dbs.orchestrator, &batch_ids).await?;
    ids.extend(batch_ids);
    expected.extend(placed.iter().map(|p| (p.saga_id, p.expect)));
    // Signal everyone first, so they shut down concurrently.
    let t = Instant::now();
    for name in &names {
        sys.sigterm(name)?;
    }
    for name in &names {
        let (code, took) = exited(&mut sys, name, t, in_flight).await;
        if code != Some(0) || took > EXIT_BOUND {
            failures.push(format!(
                "{name} (all at once): exit {code:?} after {took:?}"
            ));
        }
    }
    println!(
        "shutdown: everything stopped in {:.1}s with {in_flight} sagas in flight",
        t.elapsed().as_secs_f64()
    );
    for name in &names {
        sys.restart(name).await?;
    }
    let t = Instant::now();
    audit::wait_all_terminal(&sys.dbs.orchestrator, &ids, Duration::from_secs(180))
        .await
        .map_err(|e| anyhow::anyhow!("{e}; logs in {}", sys.log_dir.display()))?;
    let checks = Checks::run(&sys).await?;
    let outcomes = outcomes::classify(&sys.dbs.orchestrator, &expected).await?;
    println!(
        "shutdown: all {} sagas terminal {:.1}s after the restart; {:?}; {outcomes}; double_applied={}; invariants {}",
        ids.len(),
        t.elapsed().as_secs_f64(),
        checks.audit.by_status,
        checks.double_applied(),
        checks.invariants_word()
    );
    println!("shutdown: {}", checks.describe());
    assert!(
        failures.is_empty(),
        "unclean exits: {failures:?}; logs in {}",
        sys.log_dir.display()
    );
    checks.assert_ok(&sys);
    assert!(outcomes.wrong.is_empty(), "{:?}", outcomes.wrong);
    assert_eq!(checks.audit.count("COMPENSATION_FAILED"), 0);
    Ok(())
}
