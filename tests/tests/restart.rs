//! Crash recovery: SIGKILL the orchestrator while 100 sagas are in flight,
//! start it again, and every saga reaches a terminal state, each as a clean
//! run would (unless its history shows a fault path); no saga advanced
//! twice, the reconciliation and the books find no saga wrong, and the
//! invariants hold. Prints one line:
//! `restart: sagas=N in_flight_at_kill=N terminal=N double_applied=N invariants=ok|FAILED`

use std::time::Duration;

use sagaflow_common::db;
use sagaflow_tests::checks::Checks;
use sagaflow_tests::orders::mixed;
use sagaflow_tests::outcomes;
use sagaflow_tests::system::{Options, System};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_the_orchestrator_with_100_sagas_in_flight() -> anyhow::Result<()> {
    let mut sys = System::start("restart", Options::default()).await?;
    let mut client = sys.client().await?;
    let mut ids = Vec::new();
    let mut expected = Vec::new();
    for i in 0..100 {
        let (req, expect) = mixed(i);
        let id = client.place_order(req).await?.into_inner().saga_id;
        expected.push((uuid::Uuid::parse_str(&id)?, expect));
        ids.push(id);
    }
    // Kill it at once: most sagas are mid-flight.
    sys.kill("orchestrator-0");
    let c = db::connect(&sys.dbs.orchestrator).await?;
    let in_flight: i64 = c
        .query_one(
            "SELECT count(*) FROM sagas WHERE status IN ('RUNNING', 'COMPENSATING')",
            &[],
        )
        .await?
        .get(0);
    println!("restart: {in_flight} of 100 sagas in flight at SIGKILL");
    assert!(in_flight > 0, "the kill must catch sagas in flight");

    sys.spawn_orchestrator(0)?;
    sys.wait_orchestrator(0).await?;
    let done = sys.wait_terminal(&ids, Duration::from_secs(180)).await?;

    let checks = Checks::run(&sys).await?;
    let outcomes = outcomes::classify(&sys.dbs.orchestrator, &expected).await?;
    println!("restart: {outcomes}");
    println!("restart: {}", checks.describe());
    for p in checks.problems(10) {
        println!("restart: PROBLEM {p}");
    }
    println!(
        "restart: sagas={} in_flight_at_kill={in_flight} terminal={} double_applied={} invariants={}",
        ids.len(),
        done.len(),
        checks.double_applied(),
        checks.invariants_word()
    );
    assert_eq!(done.len(), 100);
    checks.assert_ok(&sys);
    assert!(outcomes.wrong.is_empty(), "{:?}", outcomes.wrong);
    Ok(())
}
