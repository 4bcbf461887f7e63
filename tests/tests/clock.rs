//! Time from one clock: two orchestrators share the sagas, and one of them
//! runs with its clock an hour fast (libfaketime). Deadlines are written and
//! compared on the database's clock, so the fast instance never fires the
//! other's deadlines early: in a healthy system no command is re-sent, and
//! every saga ends as a clean run does.

use std::time::Duration;

use sagaflow_tests::audit;
use sagaflow_tests::checks::Checks;
use sagaflow_tests::definitions::Policies;
use sagaflow_tests::history::entries_about;
use sagaflow_tests::orders::{Expect, mixed};
use sagaflow_tests::outcomes;
use sagaflow_tests::placer::{Pace, place_all};
use sagaflow_tests::system::{Options, System};

/// Debian's libfaketime (package `libfaketime`), the thread-safe variant.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// When orchestrator-N last said it was listening, by its own clock (the
/// timestamp its log line starts with).
fn started_at(log: &std::path::Path) -> Option<chrono::DateTime<chrono::Utc>> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("orchestrator listening"))?;
    let stamp = line
        .split_whitespace()
        .next()?
        .trim_start_matches("\u{1b}[2m")
        .trim_end_matches("\u{1b}[0m");
    chrono::DateTime::parse_from_rfc3339(stamp)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_with_a_fast_clock_fires_no_deadline_early() -> anyhow::Result<()> {
    anyhow::ensure!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: install Debian's libfaketime"
    );
    let mut sys = System::start(
        "clock",
        Options {
            env: vec![("SAGAFLOW_TIMER_POLL_MS".to_owned(), "100".to_owned())],
            policies: Policies {
                deadline: Some(Duration::from_millis(3000)),
                ..Policies::default()
            },
            ..Options::default()
        },
    )
    .await?;
    sys.set_process_env(
        "orchestrator-1",
        &[
            ("LD_PRELOAD", LIBFAKETIME),
            ("FAKETIME", "+1h"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    // A second instance joins (a fresh process: a killed one's streams keep
    // leased messages for a while, which would blur what this test sees).
    sys.spawn_orchestrator(1)?;
    sys.wait_orchestrator(1).await?;
    // The skew is real: the fast instance logs an hour ahead.
    let logged = started_at(&sys.log_of("orchestrator-1"))
        .ok_or_else(|| anyhow::anyhow!("no timestamped start line in orchestrator-1's log"))?;
    let ahead = (logged - chrono::Utc::now()).num_seconds();
    println!("clock: orchestrator-1's clock is {ahead}s ahead");
    assert!(ahead > 3000, "orchestrator-1 is not skewed: {ahead}s");

    // Orders through both instances, over a few deadlines.
    let urls = sys.orchestrator_clients()?;
    let placed = place_all(
        &urls,
        (0..80).map(mixed).collect(),
        Pace {
            per_second: 10.0,
            ..Pace::default()
        },
    )
    .await?;
    let ids: Vec<uuid::Uuid> = placed.iter().map(|p| p.saga_id).collect();
    audit::wait_all_terminal(&sys.dbs.orchestrator, &ids, Duration::from_secs(120))
        .await
        .map_err(|e| anyhow::anyhow!("{e}; logs in {}", sys.log_dir.display()))?;

    let mut early = Vec::new();
    for step in [
        "create_order",
        "process_payment",
        "reserve_inventory",
        "approve_order",
    ] {
        early.extend(
            entries_about(
                &sys.dbs.orchestrator,
                &ids,
                &["resent", "step_timed_out", "step_overdue"],
                step,
            )
            .await?,
        );
    }
    // Every saga ends exactly as a clean run ends it, and the books, the
    // reconciliation and the totals agree.
    let expected: Vec<(uuid::Uuid, Expect)> =
        placed.iter().map(|p| (p.saga_id, p.expect)).collect();
    let outcomes = outcomes::classify(&sys.dbs.orchestrator, &expected).await?;
    let checks = Checks::run(&sys).await?;
    println!(
        "clock: {} sagas, {} commands re-sent or given up on early",
        ids.len(),
        early.len()
    );
    assert!(
        early.is_empty(),
        "deadlines fired early: {:?}",
        &early[..early.len().min(10)]
    );
    assert!(
        outcomes.wrong.is_empty() && outcomes.affected_total() == 0,
        "{outcomes}: {:?}",
        outcomes.wrong
    );
    checks.assert_ok(&sys);
    Ok(())
}
