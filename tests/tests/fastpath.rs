//! The fast path, on real processes: the outcome a participant's reply
//! carries is applied at once, so sagas finish with the relay down (Pub/Sub
//! has seen nothing); when the relay comes back, the same events arrive
//! from Pub/Sub and are absorbed as duplicates: no history entry, no applied
//! event and no dead letter more. With `SAGAFLOW_FAST_PATH=false` the same
//! saga waits for its events from Pub/Sub.

use std::time::Duration;

use sagaflow_common::db;
use sagaflow_protos::orchestrator::v1::{GetSagaRequest, SagaState};
use sagaflow_tests::checks::Checks;
use sagaflow_tests::orders::order;
use sagaflow_tests::system::{Options, System};
use sagaflow_tests::wait_for;

const SETTLE: Duration = Duration::from_secs(60);

/// Sum of `sql` (one bigint, `$1` = the saga ids) over `urls`.
async fn count(urls: &[&String], sql: &str, ids: &[uuid::Uuid]) -> anyhow::Result<i64> {
    let mut total = 0;
    for url in urls {
        let c = db::connect(url).await?;
        total += c.query_one(sql, &[&ids]).await?.get::<_, i64>(0);
    }
    Ok(total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_finish_sagas_and_their_events_from_pubsub_are_absorbed() -> anyhow::Result<()> {
    let mut sys = System::start("fastpath", Options::default()).await?;
    let (order_db, payment_db, inventory_db, orchestrator_db) = (
        sys.dbs.order.clone(),
        sys.dbs.payment.clone(),
        sys.dbs.inventory.clone(),
        sys.dbs.orchestrator.clone(),
    );
    let participants = [&order_db, &payment_db, &inventory_db];
    let orchestrator = [&orchestrator_db];
    sys.kill("relay");

    let mut client = sys.client().await?;
    let cases = [
        (
            order("cust-alice", &[("sku-widget", 1)], 1_000),
            SagaState::Completed,
        ),
        (
            order("cust-broke", &[("sku-widget", 1)], 1_000),
            SagaState::Compensated,
        ),
        (
            order("cust-alice", &[("sku-soldout", 1)], 1_000),
            SagaState::Compensated,
        ),
    ];
    let mut ids = Vec::new();
    for (req, _) in &cases {
        ids.push(client.place_order(req.clone()).await?.into_inner().saga_id);
    }
    let done = sys.wait_terminal(&ids, SETTLE).await?;
    for (saga, (_, want)) in done.iter().zip(&cases) {
        assert_eq!(saga.state, *want as i32, "{saga:?}");
    }
    let uuids: Vec<uuid::Uuid> = ids.iter().map(|i| i.parse()).collect::<Result<_, _>>()?;

    // Every outcome is still waiting in an outbox: no event went through
    // Pub/Sub, the replies alone finished the sagas.
    let commands = count(
        &participants,
        "SELECT count(*) FROM inbox WHERE saga_id = ANY($1)",
        &uuids,
    )
    .await?;
    let unsent = count(
        &participants,
        "SELECT count(*) FROM outbox WHERE saga_id = ANY($1) AND sent_at IS NULL",
        &uuids,
    )
    .await?;
    assert!(commands >= 8, "only {commands} commands handled");
    assert_eq!(unsent, commands, "events relayed while the relay was down");
    let applied = "SELECT count(*) FROM processed_events WHERE saga_id = ANY($1)";
    let history = "SELECT count(*) FROM saga_history WHERE saga_id = ANY($1)";
    let applied_before = count(&orchestrator, applied, &uuids).await?;
    let history_before = count(&orchestrator, history, &uuids).await?;
    assert_eq!(applied_before, commands, "one applied event per command");

    // The relay comes back: the events reach the orchestrator through
    // Pub/Sub, are recognised as applied, and change nothing.
    sys.restart("relay").await?;
    wait_for("the outboxes to drain", SETTLE, || async {
        let unsent = count(
            &participants,
            "SELECT count(*) FROM outbox WHERE saga_id = ANY($1) AND sent_at IS NULL",
            &uuids,
        )
        .await?;
        Ok((unsent == 0).then_some(()))
    })
    .await?;
    // The emulator delivers within a pull cycle (50 ms); give it plenty.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(count(&orchestrator, applied, &uuids).await?, applied_before);
    assert_eq!(count(&orchestrator, history, &uuids).await?, history_before);
    let dead = db::connect(&orchestrator_db)
        .await?
        .query_one("SELECT count(*) FROM dead_letters", &[])
        .await?
        .get::<_, i64>(0);
    assert_eq!(dead, 0, "a copy of an applied event was dead-lettered");
    Checks::run(&sys).await?.assert_ok(&sys);

    // Off: the same saga waits for its event from Pub/Sub. A system of its
    // own (its own emulator, or subscription), not a restart: the emulator
    // goes on leasing events to a stopped orchestrator's streams for a
    // minute at a time (common/src/pubsub/subscriber.rs), which would make
    // this wait for the step deadlines instead of for Pub/Sub.
    drop(sys);
    let mut sys = System::start(
        "fastpath-off",
        Options {
            env: vec![("SAGAFLOW_FAST_PATH".to_owned(), "false".to_owned())],
            ..Options::default()
        },
    )
    .await?;
    sys.kill("relay");
    let mut client = sys.client().await?;
    let id = client
        .place_order(order("cust-alice", &[("sku-gadget", 1)], 500))
        .await?
        .into_inner()
        .saga_id;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let saga = client
        .get_saga(GetSagaRequest {
            saga_id: id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(saga.state, SagaState::Running as i32, "{saga:?}");
    assert_eq!(saga.history.len(), 1, "advanced without Pub/Sub: {saga:?}");
    sys.restart("relay").await?;
    let done = sys.wait_terminal(&[id], SETTLE).await?;
    assert_eq!(done[0].state, SagaState::Completed as i32);
    Ok(())
}
