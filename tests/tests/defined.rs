//! A saga type defined only by a file in the test's own definitions
//! directory, run end to end by the real orchestrator against a participant
//! the test serves (the desk, `sagaflow_tests::desk`, on the participants'
//! inbox/outbox contract). The fast path is off: every outcome reaches the
//! orchestrator through the desk's outbox, a relay and Pub/Sub.
//!
//! The booking saga holds a seat (undoable), confirms (the pivot) and
//! notifies the traveller (forward-only). Its happy path completes; a
//! refused first step and a refused pivot compensate exactly what may have
//! acted; a refused notification suspends the saga with nothing undone,
//! refuses a cancel, and finishes once an operator fixes the cause and
//! retries (each retry a new command).

use std::time::Duration;

use sagaflow_protos::orchestrator::v1::{
    CancelSagaRequest, GetDefinitionRequest, GetSagaRequest, RetrySagaRequest, Saga, SagaState,
    StartSagaRequest,
};
use sagaflow_tests::definitions::Policies;
use sagaflow_tests::desk::{Desk, Rows};
use sagaflow_tests::system::{Options, System};
use sagaflow_tests::wait_for;

const BOOKING: &str = r#"
type: booking
version: 1
description: Hold a seat, confirm the booking, tell the traveller.
input_schema:
  $schema: https://json-schema.org/draft/2020-12/schema
  type: object
  required: [traveller]
  additionalProperties: false
  properties:
    traveller: {type: string, minLength: 1, maxLength: 100}
defaults:
  action: {deadline: 2s, attempts: 30}
  compensation: {deadline: 2s, attempts: 30}
steps:
  - name: hold_seat
    participant: desk
    action: /sagaflow.test.v1.Desk/HoldSeat
    compensation: /sagaflow.test.v1.Desk/ReleaseSeat
  - name: confirm
    participant: desk
    action: /sagaflow.test.v1.Desk/Confirm
    compensation: none
  - name: notify
    participant: desk
    action: /sagaflow.test.v1.Desk/Notify
    forward_only: true
"#;

const WAIT: Duration = Duration::from_secs(60);

fn step_states(saga: &Saga) -> Vec<&str> {
    saga.steps.iter().map(|s| s.status.as_str()).collect()
}

async fn get(system: &System, saga_id: &str) -> anyhow::Result<Saga> {
    Ok(system
        .client()
        .await?
        .get_saga(GetSagaRequest {
            saga_id: saga_id.to_owned(),
        })
        .await?
        .into_inner())
}

/// Wait until the saga is in `state` and `ready` holds of it.
async fn wait_until(
    system: &System,
    saga_id: &str,
    state: SagaState,
    ready: impl Fn(&Saga) -> bool,
) -> anyhow::Result<Saga> {
    wait_for(&format!("saga {saga_id} to be {state:?}"), WAIT, || async {
        let saga = get(system, saga_id).await?;
        Ok((saga.state == state as i32 && ready(&saga)).then_some(saga))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}; logs in {}", system.log_dir.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_type_from_a_file_runs_against_a_participant_the_test_serves() -> anyhow::Result<()>
{
    let desk = Desk::start("defined").await?;
    let dir = std::env::temp_dir().join(format!("sf-defined-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("order.v1.yaml"), Policies::default().order_file()?)?;
    std::fs::write(dir.join("booking.v1.yaml"), BOOKING)?;
    let mut system = System::start(
        "defined",
        Options {
            insecure: true,
            env: vec![
                (
                    "SAGAFLOW_DEFINITIONS_DIR".to_owned(),
                    dir.display().to_string(),
                ),
                ("SAGAFLOW_PARTICIPANT_DESK_URL".to_owned(), desk.url.clone()),
                ("SAGAFLOW_FAST_PATH".to_owned(), "false".to_owned()),
            ],
            ..Options::default()
        },
    )
    .await?;
    // The desk's own relay: its outbox, published to the system's topic.
    system.set_process_env(
        "relay-desk",
        &[("SAGAFLOW_RELAY_DATABASE_URLS", desk.database_url.as_str())],
    );
    system.spawn("relay-desk")?;
    let mut client = system.client().await?;

    // The definition as the API shows it.
    let def = client
        .get_definition(GetDefinitionRequest {
            saga_type: "booking".into(),
            version: 0,
        })
        .await?
        .into_inner();
    let shape: Vec<(&str, bool, bool)> = def
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.compensation.is_empty(), s.forward_only))
        .collect();
    assert_eq!(
        shape,
        [
            ("hold_seat", false, false),
            ("confirm", true, false),
            ("notify", true, true)
        ]
    );

    desk.set_mailbox("bob", false).await?;
    desk.list("banned", "carl").await?;
    desk.list("no_seats", "dora").await?;
    let mut ids = std::collections::HashMap::new();
    for who in ["ann", "bob", "carl", "dora"] {
        let started = client
            .start_saga(StartSagaRequest {
                saga_type: "booking".into(),
                input: format!(r#"{{"traveller": "{who}"}}"#),
                idempotency_key: format!("trip-{who}"),
            })
            .await?
            .into_inner();
        assert!(started.created);
        ids.insert(who, started.saga_id);
    }

    let ended = system
        .wait_terminal(
            &[ids["ann"].clone(), ids["carl"].clone(), ids["dora"].clone()],
            WAIT,
        )
        .await?;
    let (ann, carl, dora) = (&ended[0], &ended[1], &ended[2]);

    // Happy: every step done, each effect once.
    assert_eq!(ann.state, SagaState::Completed as i32, "{ann:?}");
    assert_eq!(step_states(ann), ["SUCCEEDED", "SUCCEEDED", "SUCCEEDED"]);
    let rows = |hold: Option<&str>, booked, notices| Rows {
        hold: hold.map(str::to_owned),
        booked,
        notices,
    };
    let ann_id = ids["ann"].parse()?;
    assert_eq!(desk.rows(ann_id).await?, rows(Some("HELD"), true, 1));

    // The pivot refused: the held seat is released, nothing else happened.
    assert_eq!(carl.state, SagaState::Compensated as i32, "{carl:?}");
    assert_eq!(step_states(carl), ["COMPENSATED", "REFUSED", "NOT_STARTED"]);
    assert_eq!(carl.reason, "confirm refused: banned: carl");
    assert_eq!(
        desk.rows(ids["carl"].parse()?).await?,
        rows(Some("RELEASED"), false, 0)
    );

    // The first step refused: nothing to undo.
    assert_eq!(dora.state, SagaState::Compensated as i32, "{dora:?}");
    assert_eq!(step_states(dora), ["REFUSED", "NOT_STARTED", "NOT_STARTED"]);
    assert_eq!(desk.rows(ids["dora"].parse()?).await?, rows(None, false, 0));

    // The forward-only step refused: suspended, nothing undone.
    let bob_id = ids["bob"].clone();
    let bob = wait_until(&system, &bob_id, SagaState::Suspended, |_| true).await?;
    assert_eq!(step_states(&bob), ["SUCCEEDED", "SUCCEEDED", "REFUSED"]);
    assert_eq!(bob.failed_step, "notify");
    assert_eq!(
        bob.reason,
        "suspended: notify refused: mailbox_closed: bob; it is forward-only (after the pivot), so nothing is undone: fix the cause and retry the saga"
    );
    assert_eq!(
        desk.rows(bob_id.parse()?).await?,
        rows(Some("HELD"), true, 0)
    );

    // Past the pivot: a cancel is refused and changes nothing.
    let err = client
        .cancel_saga(CancelSagaRequest {
            saga_id: bob_id.clone(),
            reason: "the traveller changed plans".into(),
            request_id: String::new(),
        })
        .await
        .expect_err("past the pivot");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert_eq!(
        err.message(),
        "saga_id: saga is past its pivot: confirm may have acted and cannot be undone"
    );
    assert_eq!(
        get(&system, &bob_id).await?.state,
        SagaState::Suspended as i32
    );

    // A retry before the cause is fixed: a new command, refused again.
    client
        .retry_saga(RetrySagaRequest {
            saga_id: bob_id.clone(),
            ..RetrySagaRequest::default()
        })
        .await?;
    let again = wait_until(&system, &bob_id, SagaState::Suspended, |s| {
        s.steps[2].action_generation == 1 && s.steps[2].status == "REFUSED"
    })
    .await?;
    assert_eq!(again.failed_step, "notify");

    // Fixed, then retried: it completes, the traveller notified once.
    desk.set_mailbox("bob", true).await?;
    client
        .retry_saga(RetrySagaRequest {
            saga_id: bob_id.clone(),
            ..RetrySagaRequest::default()
        })
        .await?;
    let done = wait_until(&system, &bob_id, SagaState::Completed, |_| true).await?;
    assert_eq!(step_states(&done), ["SUCCEEDED", "SUCCEEDED", "SUCCEEDED"]);
    assert_eq!(done.steps[2].action_generation, 2);
    assert_eq!(done.reason, "");
    assert_eq!(
        desk.rows(bob_id.parse()?).await?,
        rows(Some("HELD"), true, 1)
    );
    // hold_seat, confirm, and notify three times (three command ids).
    assert_eq!(desk.commands(bob_id.parse()?).await?, 5);
    let kinds: Vec<&str> = done.history.iter().map(|h| h.kind.as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "suspended").count(),
        2,
        "{kinds:?}"
    );

    // The three other sagas' commands each reached the desk once.
    assert_eq!(desk.commands(ann_id).await?, 3);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
