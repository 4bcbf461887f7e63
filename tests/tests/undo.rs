//! Undo against the odds, on real processes:
//!
//! - a compensation that overtakes its action inside the participant: the
//!   charge waits on a row a slow transaction holds, the saga gives up on
//!   it (or an operator cancels it) and compensates; the refund leaves a
//!   tombstone, and when the charge goes on it is refused
//!   `compensated_before_action`. Nothing is charged, the saga stays
//!   COMPENSATED, and every check agrees;
//! - a compensation a participant refuses (the customer's refunds are
//!   held): the saga pauses in COMPENSATION_FAILED with the reason; once
//!   the hold is lifted, the operator's `RetrySaga` compensates it.

use std::time::Duration;

use sagaflow_common::db;
use sagaflow_protos::orchestrator::v1::{
    CancelSagaRequest, GetSagaRequest, RetrySagaRequest, Saga, SagaState,
};
use sagaflow_tests::business::{available, order_status, payment_status};
use sagaflow_tests::checks::Checks;
use sagaflow_tests::definitions::Policies;
use sagaflow_tests::injector::hold_refunds;
use sagaflow_tests::orders::order;
use sagaflow_tests::system::{Options, System};
use sagaflow_tests::{reconcile, wait_for};

use sagaflow_tests::clients::Client;

const SETTLE: Duration = Duration::from_secs(60);

/// Actions get 2 attempts of 1.5 s; calls may wait a minute (a charge
/// waiting on a lock is not cut off by the caller).
/// Actions get 2 attempts of 1.5 s.
fn policies() -> Policies {
    Policies {
        deadline: Some(Duration::from_millis(1500)),
        attempts: Some(2),
        compensation_deadline: Some(Duration::from_millis(1500)),
        compensation_attempts: Some(20),
        backoff_base: Some(Duration::from_millis(50)),
        backoff_cap: Some(Duration::from_millis(500)),
    }
}

fn env() -> Vec<(String, String)> {
    [
        ("SAGAFLOW_COMMAND_TIMEOUT_MS", "60000"),
        ("SAGAFLOW_TIMER_POLL_MS", "100"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

async fn wait_saga(
    client: &Client,
    id: &str,
    what: &str,
    until: impl Fn(&Saga) -> bool,
) -> anyhow::Result<Saga> {
    let until = &until;
    wait_for(&format!("saga {id}: {what}"), SETTLE, || async move {
        let saga = client
            .clone()
            .get_saga(GetSagaRequest {
                saga_id: id.to_owned(),
            })
            .await?
            .into_inner();
        Ok(until(&saga).then_some(saga))
    })
    .await
}

fn step_is(saga: &Saga, name: &str, status: &str) -> bool {
    saga.steps
        .iter()
        .any(|s| s.name == name && s.status == status)
}

fn has(saga: &Saga, kind: &str) -> bool {
    saga.history.iter().any(|h| h.kind == kind)
}

/// Transactions of the payment database waiting on a lock.
async fn waiting_on_locks(payment: &tokio_postgres::Client) -> anyhow::Result<i64> {
    Ok(payment
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
            &[],
        )
        .await?
        .get(0))
}

/// The action and compensation of `saga`'s payment step in the payment
/// participant's inbox: (kind, outcome, reason).
async fn payment_inbox(
    payment: &tokio_postgres::Client,
    saga: &str,
) -> anyhow::Result<Vec<(String, String, String)>> {
    let id = uuid::Uuid::parse_str(saga)?;
    Ok(payment
        .query(
            "SELECT kind, outcome, COALESCE(reason, '') FROM inbox
             WHERE saga_id = $1 AND step = 1 ORDER BY kind",
            &[&id],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compensation_that_overtakes_its_action_leaves_a_tombstone_and_the_action_is_refused()
-> anyhow::Result<()> {
    let sys = System::start(
        "overtake",
        Options {
            env: env(),
            policies: policies(),
            ..Options::default()
        },
    )
    .await?;
    let client = sys.client().await?;
    let credit_before = available(&sys.dbs, "cust-bob").await?;

    // Given a slow transaction holding cust-bob's row in the payment database
    let mut slow = db::connect(&sys.dbs.payment).await?;
    let lock = slow.transaction().await?;
    lock.execute(
        "SELECT 1 FROM customers WHERE customer_id = 'cust-bob' FOR UPDATE",
        &[],
    )
    .await?;
    let payment = db::connect(&sys.dbs.payment).await?;

    // When one saga's charge waits on it and an operator cancels the saga
    let cancelled = client
        .clone()
        .place_order(order("cust-bob", &[("sku-widget", 1)], 1_100))
        .await?
        .into_inner()
        .saga_id;
    wait_for("the charge to wait on the held row", SETTLE, || async {
        Ok((waiting_on_locks(&payment).await? >= 1).then_some(()))
    })
    .await?;
    client
        .clone()
        .cancel_saga(CancelSagaRequest {
            saga_id: cancelled.clone(),
            reason: "customer called to cancel".into(),
            request_id: "cancel-overtake-1".into(),
        })
        .await?;
    // ... and another's charge waits there longer than its attempts
    let timed_out = client
        .clone()
        .place_order(order("cust-bob", &[("sku-gadget", 2)], 1_300))
        .await?
        .into_inner()
        .saga_id;

    // Then both are compensated while their charges still wait: the refunds
    // found no payment and left tombstones
    for id in [&cancelled, &timed_out] {
        let done = wait_saga(&client, id, "COMPENSATED", |s| {
            s.state == SagaState::Compensated as i32
        })
        .await?;
        assert!(step_is(&done, "process_payment", "COMPENSATED"), "{done:?}");
        assert_eq!(
            payment_status(&sys.dbs, id).await?.as_deref(),
            Some("VOIDED")
        );
        assert_eq!(
            payment_inbox(&payment, id).await?,
            [("compensation".into(), "SUCCEEDED".into(), String::new())]
        );
    }
    let timed_out_saga = wait_saga(&client, &timed_out, "compensated", |_| true).await?;
    assert!(has(&timed_out_saga, "step_timed_out"), "{timed_out_saga:?}");

    // When the slow transaction ends, the charges go on
    lock.rollback().await?;

    // Then each is refused: the compensation came first
    for id in [&cancelled, &timed_out] {
        let inbox = wait_for("the late charge to be decided", SETTLE, || async {
            let rows = payment_inbox(&payment, id).await?;
            Ok((rows.len() == 2).then_some(rows))
        })
        .await?;
        assert_eq!(
            inbox[0],
            (
                "action".into(),
                "REFUSED".into(),
                "compensated_before_action".into()
            )
        );
        let row = payment
            .query_one(
                "SELECT status, customer_id, amount_cents FROM payments WHERE saga_id = $1",
                &[&uuid::Uuid::parse_str(id)?],
            )
            .await?;
        let tombstone: (String, Option<String>, Option<i64>) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(tombstone, ("VOIDED".into(), None, None), "a tombstone");
        assert_eq!(
            order_status(&sys.dbs, id).await?.as_deref(),
            Some("CANCELLED")
        );
    }
    assert_eq!(available(&sys.dbs, "cust-bob").await?, credit_before);
    // The late refusals changed nothing in the orchestrator.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in [&cancelled, &timed_out] {
        let saga = wait_saga(&client, id, "still compensated", |_| true).await?;
        assert_eq!(saga.state, SagaState::Compensated as i32, "{saga:?}");
    }

    // And the operator's reconciliation sees what happened, and agrees
    let ids = [
        uuid::Uuid::parse_str(&cancelled)?,
        uuid::Uuid::parse_str(&timed_out)?,
    ];
    let steps = reconcile::run(&sys, &ids).await?;
    for line in &steps.lines {
        println!("overtake: {line}");
    }
    let payment_steps: Vec<&String> = steps
        .lines
        .iter()
        .filter(|l| l.contains("process_payment"))
        .collect();
    assert_eq!(payment_steps.len(), 2, "{:?}", steps.lines);
    assert!(
        payment_steps.iter().all(|l| l.starts_with("ok ")
            && l.contains("action REFUSED (compensated_before_action)")
            && l.contains("compensation SUCCEEDED")),
        "{payment_steps:?}"
    );
    let checks = Checks::run(&sys).await?;
    println!("overtake: {}", checks.describe());
    checks.assert_ok(&sys);
    assert!(checks.audit.tombstones >= 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_refund_pauses_the_saga_until_the_hold_is_lifted_and_an_operator_retries()
-> anyhow::Result<()> {
    let sys = System::start(
        "held",
        Options {
            env: env(),
            policies: policies(),
            ..Options::default()
        },
    )
    .await?;
    let client = sys.client().await?;
    let credit_before = available(&sys.dbs, "cust-bob").await?;

    // Given cust-bob's refunds are held
    hold_refunds(&sys, "cust-bob", true).await?;

    // When his order is charged and then refused for stock
    let id = client
        .clone()
        .place_order(order("cust-bob", &[("sku-soldout", 1)], 900))
        .await?
        .into_inner()
        .saga_id;

    // Then the refund is refused and the saga pauses, saying why
    let paused = wait_saga(&client, &id, "COMPENSATION_FAILED", |s| {
        s.state == SagaState::CompensationFailed as i32
    })
    .await?;
    assert_eq!(paused.failed_step, "process_payment");
    assert!(
        paused.reason.contains("refunds_held: cust-bob"),
        "{}",
        paused.reason
    );
    assert_eq!(
        payment_status(&sys.dbs, &id).await?.as_deref(),
        Some("CHARGED")
    );
    assert_eq!(available(&sys.dbs, "cust-bob").await?, credit_before - 900);

    // When the hold is lifted and the operator retries
    hold_refunds(&sys, "cust-bob", false).await?;
    client
        .clone()
        .retry_saga(RetrySagaRequest {
            saga_id: id.clone(),
            reason: "refund hold lifted".into(),
            request_id: "retry-held-1".into(),
        })
        .await?;

    // Then it is refunded and compensated, and every check agrees
    let done = wait_saga(&client, &id, "COMPENSATED", |s| {
        s.state == SagaState::Compensated as i32
    })
    .await?;
    assert!(done.reason.contains("stock_short"), "{}", done.reason);
    assert_eq!(
        payment_status(&sys.dbs, &id).await?.as_deref(),
        Some("REFUNDED")
    );
    assert_eq!(available(&sys.dbs, "cust-bob").await?, credit_before);
    let steps = reconcile::run(&sys, &[uuid::Uuid::parse_str(&id)?]).await?;
    let refund = steps
        .lines
        .iter()
        .find(|l| l.contains("process_payment"))
        .expect("a line for the payment step");
    println!("held: {refund}");
    assert!(
        refund.starts_with("ok ")
            && refund.contains("compensation REFUSED (refunds_held: cust-bob)")
            && refund.contains("compensation SUCCEEDED"),
        "{refund}"
    );
    let checks = Checks::run(&sys).await?;
    println!("held: {}", checks.describe());
    checks.assert_ok(&sys);
    Ok(())
}
