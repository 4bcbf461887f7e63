//! Crash recovery: SIGKILL the orchestrator while 100 sagas are in flight,
//! start it again, and every saga reaches a terminal state without any
//! advancing twice.

use std::collections::HashSet;
use std::time::Duration;

use sagaflow_common::db;
use sagaflow_tests::invariants;
use sagaflow_tests::orders::mixed;
use sagaflow_tests::system::{Options, System};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_the_orchestrator_with_100_sagas_in_flight() -> anyhow::Result<()> {
    let mut sys = System::start("restart", Options::default()).await?;
    let mut client = sys.client().await?;
    let mut ids = Vec::new();
    for i in 0..100 {
        ids.push(client.place_order(mixed(i).0).await?.into_inner().saga_id);
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
    assert_eq!(done.len(), 100);

    // None advanced twice: every forward transition appears once per saga,
    // and history sequence numbers are gap-free.
    let rows = c
        .query(
            "SELECT saga_id, seq, kind, detail FROM saga_history ORDER BY saga_id, seq",
            &[],
        )
        .await?;
    let mut seen = HashSet::new();
    let mut last: Option<(uuid::Uuid, i64)> = None;
    for r in &rows {
        let (id, seq, kind, detail): (uuid::Uuid, i64, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        match last {
            Some((lid, lseq)) if lid == id => assert_eq!(seq, lseq + 1, "gap in history of {id}"),
            _ => assert_eq!(seq, 1, "history of {id} starts at 1"),
        }
        last = Some((id, seq));
        if kind != "resent" {
            assert!(
                seen.insert((id, kind.clone(), detail.clone())),
                "{id} applied twice: {kind} {detail}"
            );
        }
    }
    // Participants acted at most once per saga and step (inbox keyed by command id).
    for url in [&sys.dbs.order, &sys.dbs.payment, &sys.dbs.inventory] {
        let p = db::connect(url).await?;
        let dup: i64 = p
            .query_one(
                "SELECT count(*) FROM (SELECT saga_id, step, kind FROM inbox GROUP BY 1, 2, 3 HAVING count(*) > 1) d",
                &[],
            )
            .await?
            .get(0);
        assert_eq!(dup, 0, "a step ran twice in {url}");
    }
    let report = invariants::check(&sys.dbs.order, &sys.dbs.payment, &sys.dbs.inventory).await?;
    assert!(report.ok(), "{:?}", report.violations);
    Ok(())
}
