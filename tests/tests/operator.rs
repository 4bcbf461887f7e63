//! Operator actions on real processes: `RetrySaga` resumes a saga paused in
//! COMPENSATION_FAILED once its cause is fixed, and `CancelSaga` turns a
//! running saga back.
//!
//! Each scenario makes a saga stop where it wants it by killing participant
//! processes in turn (an undelivered command is re-sent by the step's timer
//! until the participant is back), and waits for conditions with deadlines.
//! Step policies are shortened through the order definition's environment
//! overrides.

use std::time::Duration;

use sagaflow_protos::orchestrator::v1::{
    CancelSagaRequest, GetSagaRequest, ListSagasRequest, RetrySagaRequest, Saga, SagaState,
    StepStatus,
};
use sagaflow_tests::business::{order_status, payment_status, reservation_status, stock};
use sagaflow_tests::definitions::Policies;
use sagaflow_tests::orders::order;
use sagaflow_tests::system::{Client, Options, System};
use sagaflow_tests::{invariants, wait_for};

const SETTLE: Duration = Duration::from_secs(90);

/// One-second deadlines; actions get two minutes of re-sends (a stalled
/// step must outlast process restarts), compensations `undo_attempts`.
fn policies(undo_attempts: u32) -> Policies {
    Policies::one_second(undo_attempts)
}

fn env() -> Vec<(String, String)> {
    vec![("SAGAFLOW_TIMER_POLL_MS".to_owned(), "200".to_owned())]
}

async fn get(client: &Client, saga_id: &str) -> anyhow::Result<Saga> {
    Ok(client
        .clone()
        .get_saga(GetSagaRequest {
            saga_id: saga_id.to_owned(),
        })
        .await?
        .into_inner())
}

/// Poll GetSaga until `until` holds; on timeout, say where the saga is.
async fn wait_saga(
    client: &Client,
    saga_id: &str,
    what: &str,
    until: impl Fn(&Saga) -> bool,
) -> anyhow::Result<Saga> {
    let until = &until;
    let waited = wait_for(&format!("saga {saga_id}: {what}"), SETTLE, || async move {
        let saga = get(client, saga_id).await?;
        Ok(until(&saga).then_some(saga))
    })
    .await;
    match waited {
        Ok(saga) => Ok(saga),
        Err(e) => {
            let now = get(client, saga_id).await.map(|s| describe(&s));
            Err(e.context(format!("saga is now {now:?}")))
        }
    }
}

fn describe(saga: &Saga) -> String {
    let steps: Vec<String> = saga
        .steps
        .iter()
        .map(|s| format!("{}={}", s.name, s.status))
        .collect();
    format!(
        "{:?} [{}] {}",
        SagaState::try_from(saga.state).unwrap_or_default(),
        steps.join(" "),
        saga.reason
    )
}

fn step<'a>(saga: &'a Saga, name: &str) -> &'a StepStatus {
    saga.steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no step {name} in {saga:?}"))
}

fn step_is(saga: &Saga, name: &str, status: &str) -> bool {
    saga.steps
        .iter()
        .any(|s| s.name == name && s.status == status)
}

fn is(saga: &Saga, state: SagaState) -> bool {
    saga.state == state as i32
}

fn kinds(saga: &Saga) -> Vec<&str> {
    saga.history.iter().map(|h| h.kind.as_str()).collect()
}

/// Place an order while `payment` is down, so it stops at process_payment
/// until payment is back: the caller decides what else is down by then.
async fn place_with_payment_down(
    sys: &mut System,
    client: &Client,
    items: &[(&str, i64)],
    amount_cents: i64,
) -> anyhow::Result<String> {
    sys.kill("payment");
    let placed = client
        .clone()
        .place_order(order("cust-alice", items, amount_cents))
        .await?
        .into_inner();
    wait_saga(client, &placed.saga_id, "create_order succeeded", |s| {
        step_is(s, "create_order", "SUCCEEDED") && step_is(s, "process_payment", "PENDING")
    })
    .await?;
    Ok(placed.saga_id)
}

/// Place an order that gets charged and then stalls at reserve_inventory:
/// inventory is down (the caller starts it again).
async fn place_stalled_at_inventory(
    sys: &mut System,
    client: &Client,
    items: &[(&str, i64)],
    amount_cents: i64,
) -> anyhow::Result<String> {
    let id = place_with_payment_down(sys, client, items, amount_cents).await?;
    sys.kill("inventory");
    sys.restart("payment").await?;
    wait_saga(client, &id, "charged, reserve_inventory stalled", |s| {
        step_is(s, "process_payment", "SUCCEEDED") && step_is(s, "reserve_inventory", "PENDING")
    })
    .await?;
    Ok(id)
}

fn retry(saga_id: &str, request_id: &str, reason: &str) -> RetrySagaRequest {
    RetrySagaRequest {
        saga_id: saga_id.to_owned(),
        reason: reason.to_owned(),
        request_id: request_id.to_owned(),
    }
}

fn cancel(saga_id: &str, request_id: &str, reason: &str) -> CancelSagaRequest {
    CancelSagaRequest {
        saga_id: saga_id.to_owned(),
        reason: reason.to_owned(),
        request_id: request_id.to_owned(),
    }
}

fn assert_failed_precondition(e: &tonic::Status, message: &str) {
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().starts_with("saga_id: ") && e.message().contains(message),
        "{:?} should say {message:?}",
        e.message()
    );
}

/// Scenario A: a refund that cannot be delivered pauses the saga; a retry
/// before the fix pauses it again; after the fix a retry compensates it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_saga_is_retried_after_the_fix() -> anyhow::Result<()> {
    let mut sys = System::start(
        "operator-retry",
        Options {
            env: env(),
            policies: policies(3),
            ..Options::default()
        },
    )
    .await?;
    let client = sys.client().await?;
    let soldout_before = stock(&sys.dbs, "sku-soldout").await?;

    // Charged, then refused at reserve_inventory (sold out) while payment is
    // down: the refund cannot be delivered.
    let id = place_stalled_at_inventory(&mut sys, &client, &[("sku-soldout", 1)], 700).await?;
    sys.kill("payment");
    sys.restart("inventory").await?;

    let paused = wait_saga(&client, &id, "COMPENSATION_FAILED", |s| {
        is(s, SagaState::CompensationFailed)
    })
    .await?;
    assert_eq!(
        paused.failed_step,
        "process_payment",
        "{}",
        describe(&paused)
    );
    assert!(
        paused.reason.contains("process_payment"),
        "{}",
        paused.reason
    );
    assert_eq!(
        step(&paused, "process_payment").status,
        "COMPENSATION_FAILED"
    );
    assert_eq!(step(&paused, "reserve_inventory").status, "REFUSED");
    assert_eq!(step(&paused, "create_order").status, "SUCCEEDED");
    assert_eq!(
        payment_status(&sys.dbs, &id).await?.as_deref(),
        Some("CHARGED")
    );

    // An operator finds it by state, with the step and the reason.
    let listed = client
        .clone()
        .list_sagas(ListSagasRequest {
            states: vec![SagaState::CompensationFailed as i32],
            page_size: 0,
            page_token: String::new(),
        })
        .await?
        .into_inner();
    let found: Vec<&Saga> = listed.sagas.iter().filter(|s| s.saga_id == id).collect();
    assert_eq!(found.len(), 1, "{listed:?}");
    assert_eq!(found[0].failed_step, "process_payment");
    assert_eq!(found[0].reason, paused.reason);

    // Retried before the cause is fixed: it tries again, then pauses again.
    let retried = client
        .clone()
        .retry_saga(retry(&id, "retry-1", "trying once more"))
        .await?
        .into_inner();
    assert!(
        is(&retried, SagaState::Compensating) || is(&retried, SagaState::CompensationFailed),
        "{}",
        describe(&retried)
    );
    assert_eq!(step(&retried, "process_payment").compensation_generation, 1);
    let paused_again = wait_saga(&client, &id, "paused again", |s| {
        let pauses = kinds(s)
            .iter()
            .filter(|k| **k == "compensation_failed")
            .count();
        is(s, SagaState::CompensationFailed) && pauses == 2
    })
    .await?;
    assert_eq!(paused_again.failed_step, "process_payment");
    assert_eq!(
        step(&paused_again, "process_payment").compensation_generation,
        1
    );

    // Fixed: payment is back. The retry compensates the saga.
    sys.restart("payment").await?;
    let resumed = client
        .clone()
        .retry_saga(retry(&id, "retry-2", "payment service restored"))
        .await?
        .into_inner();
    assert_eq!(step(&resumed, "process_payment").compensation_generation, 2);
    // The same request again: the saga as it is, no second retry.
    let repeated = client
        .clone()
        .retry_saga(retry(&id, "retry-2", "payment service restored"))
        .await?
        .into_inner();
    assert_eq!(
        step(&repeated, "process_payment").compensation_generation,
        2
    );

    let done = sys.wait_terminal(std::slice::from_ref(&id), SETTLE).await?;
    let done = &done[0];
    assert!(is(done, SagaState::Compensated), "{}", describe(done));
    assert_eq!(step(done, "process_payment").status, "COMPENSATED");
    assert_eq!(step(done, "create_order").status, "COMPENSATED");
    // Compensated: it reports why it failed, not the pause.
    assert_eq!(done.failed_step, "reserve_inventory");
    assert!(done.reason.contains("stock_short"), "{}", done.reason);
    assert_eq!(
        payment_status(&sys.dbs, &id).await?.as_deref(),
        Some("REFUNDED")
    );
    assert_eq!(
        order_status(&sys.dbs, &id).await?.as_deref(),
        Some("CANCELLED")
    );
    assert_eq!(stock(&sys.dbs, "sku-soldout").await?, soldout_before);
    let report = invariants::check(&sys.dbs.order, &sys.dbs.payment, &sys.dbs.inventory).await?;
    assert!(report.ok(), "{:?}", report.violations);

    // History: both pauses and both retries, with the operator's words.
    let full = get(&client, &id).await?;
    let seqs: Vec<u64> = full.history.iter().map(|h| h.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let kinds = kinds(&full);
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "compensation_failed")
            .count(),
        2,
        "{kinds:?}"
    );
    let retries: Vec<&str> = full
        .history
        .iter()
        .filter(|h| h.kind == "retry_requested")
        .map(|h| h.detail.as_str())
        .collect();
    assert_eq!(retries.len(), 2, "{kinds:?}");
    assert!(
        retries[1].contains("retry-2") && retries[1].contains("payment service restored"),
        "{retries:?}"
    );

    // Nothing left to retry: refused, unless it repeats an applied request.
    let e = client
        .clone()
        .retry_saga(retry(&id, "", ""))
        .await
        .expect_err("compensated");
    assert_failed_precondition(
        &e,
        "saga is COMPENSATED; only COMPENSATION_FAILED and SUSPENDED sagas can be retried",
    );
    let again = client
        .clone()
        .retry_saga(retry(&id, "retry-2", ""))
        .await?
        .into_inner();
    assert!(is(&again, SagaState::Compensated));
    // A request id names one action on one saga.
    let e = client
        .clone()
        .cancel_saga(cancel(&id, "retry-2", "oops"))
        .await
        .expect_err("reused request id");
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
    assert!(e.message().starts_with("request_id"), "{}", e.message());
    Ok(())
}

/// Scenario B: a cancel turns a stalled saga back; a cancel is refused past
/// the pivot and on a finished saga; bad requests name their field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_saga_is_cancelled_and_compensated() -> anyhow::Result<()> {
    let mut sys = System::start(
        "operator-cancel",
        Options {
            env: env(),
            policies: policies(120),
            ..Options::default()
        },
    )
    .await?;
    let client = sys.client().await?;
    let widget_before = stock(&sys.dbs, "sku-widget").await?;

    // Charged, and stalled at reserve_inventory: inventory is down.
    let id = place_stalled_at_inventory(&mut sys, &client, &[("sku-widget", 1)], 900).await?;

    let cancelled = client
        .clone()
        .cancel_saga(cancel(&id, "cancel-1", "customer changed their mind"))
        .await?
        .into_inner();
    assert!(
        is(&cancelled, SagaState::Compensating),
        "{}",
        describe(&cancelled)
    );
    // The stalled step may have acted: its undo runs first.
    assert_eq!(step(&cancelled, "reserve_inventory").status, "COMPENSATING");
    assert_eq!(cancelled.failed_step, "reserve_inventory");
    assert!(
        cancelled.reason.contains("customer changed their mind"),
        "{}",
        cancelled.reason
    );
    // Cancelling again changes nothing; a retry makes no sense.
    for request_id in ["cancel-1", ""] {
        let again = client
            .clone()
            .cancel_saga(cancel(&id, request_id, "customer changed their mind"))
            .await?
            .into_inner();
        assert!(is(&again, SagaState::Compensating), "{}", describe(&again));
        let cancels = kinds(&again)
            .iter()
            .filter(|k| **k == "cancel_requested")
            .count();
        assert_eq!(cancels, 1, "{:?}", kinds(&again));
    }
    let e = client
        .clone()
        .retry_saga(retry(&id, "", ""))
        .await
        .expect_err("compensating");
    assert_failed_precondition(
        &e,
        "saga is COMPENSATING; only COMPENSATION_FAILED and SUSPENDED sagas can be retried",
    );

    sys.restart("inventory").await?;
    let done = sys.wait_terminal(std::slice::from_ref(&id), SETTLE).await?;
    let done = &done[0];
    assert!(is(done, SagaState::Compensated), "{}", describe(done));
    for name in ["create_order", "process_payment", "reserve_inventory"] {
        assert_eq!(step(done, name).status, "COMPENSATED", "{}", describe(done));
    }
    assert_eq!(step(done, "approve_order").status, "NOT_STARTED");
    assert!(
        kinds(done).contains(&"cancel_requested"),
        "{:?}",
        kinds(done)
    );
    assert_eq!(
        payment_status(&sys.dbs, &id).await?.as_deref(),
        Some("REFUNDED")
    );
    assert_eq!(
        order_status(&sys.dbs, &id).await?.as_deref(),
        Some("CANCELLED")
    );
    // Released, or voided before the reservation could happen.
    let reservation = reservation_status(&sys.dbs, &id).await?;
    assert!(
        matches!(reservation.as_deref(), Some("RELEASED" | "VOIDED")),
        "{reservation:?}"
    );
    assert_eq!(stock(&sys.dbs, "sku-widget").await?, widget_before);
    // A repeated cancel of a cancelled saga is still a no-op.
    let again = client
        .clone()
        .cancel_saga(cancel(&id, "", "customer changed their mind"))
        .await?
        .into_inner();
    assert!(is(&again, SagaState::Compensated));

    // Past the pivot: approve_order is in flight (order is down).
    let pivot = place_with_payment_down(&mut sys, &client, &[("sku-widget", 1)], 400).await?;
    sys.kill("order");
    sys.restart("payment").await?;
    wait_saga(&client, &pivot, "approve_order stalled", |s| {
        step_is(s, "reserve_inventory", "SUCCEEDED") && step_is(s, "approve_order", "PENDING")
    })
    .await?;
    let e = client
        .clone()
        .cancel_saga(cancel(&pivot, "", "too late"))
        .await
        .expect_err("past the pivot");
    assert_failed_precondition(&e, "saga is past its pivot");
    sys.restart("order").await?;
    let completed = sys
        .wait_terminal(std::slice::from_ref(&pivot), SETTLE)
        .await?;
    assert!(
        is(&completed[0], SagaState::Completed),
        "{}",
        describe(&completed[0])
    );
    let e = client
        .clone()
        .cancel_saga(cancel(&pivot, "", "too late"))
        .await
        .expect_err("completed");
    assert_failed_precondition(
        &e,
        "saga is COMPLETED; only RUNNING and SUSPENDED sagas can be cancelled",
    );

    // Nonsense is refused, naming the field.
    let unknown = uuid::Uuid::now_v7().to_string();
    let cases: Vec<(tonic::Status, tonic::Code, &str)> = vec![
        (
            client
                .clone()
                .cancel_saga(cancel("nope", "", "why"))
                .await
                .expect_err("bad id"),
            tonic::Code::InvalidArgument,
            "saga_id",
        ),
        (
            client
                .clone()
                .retry_saga(retry("nope", "", ""))
                .await
                .expect_err("bad id"),
            tonic::Code::InvalidArgument,
            "saga_id",
        ),
        (
            client
                .clone()
                .cancel_saga(cancel(&pivot, "", "  "))
                .await
                .expect_err("no reason"),
            tonic::Code::InvalidArgument,
            "reason",
        ),
        (
            client
                .clone()
                .cancel_saga(cancel(&unknown, "", "why"))
                .await
                .expect_err("unknown"),
            tonic::Code::NotFound,
            "saga_id",
        ),
        (
            client
                .clone()
                .retry_saga(retry(&unknown, "", ""))
                .await
                .expect_err("unknown"),
            tonic::Code::NotFound,
            "saga_id",
        ),
    ];
    for (e, code, field) in cases {
        assert_eq!(e.code(), code, "{e:?}");
        assert!(e.message().starts_with(field), "{e:?}");
    }

    let report = invariants::check(&sys.dbs.order, &sys.dbs.payment, &sys.dbs.inventory).await?;
    assert!(report.ok(), "{:?}", report.violations);
    Ok(())
}
