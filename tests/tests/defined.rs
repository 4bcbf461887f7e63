//! A saga type defined only by a file in the test's own definitions
//! directory, run end to end by the real orchestrator against a participant
//! the test serves (the desk, `sagaflow_tests::desk`, on the participants'
//! inbox/outbox contract). The fast path is off: every outcome reaches the
//! orchestrator through the desk's outbox, a relay and Pub/Sub.
//!
//! The booking saga holds a seat and reserves a car at once (a parallel
//! group, both undoable), confirms (the pivot) and notifies the traveller
//! (forward-only). Its happy path completes; a refusal inside the group
//! while its sibling is still deciding, and a refused pivot after the
//! group, compensate exactly what may have acted; a refused notification suspends the saga with nothing undone,
//! refuses a cancel, and finishes once an operator fixes the cause and
//! retries (each retry a new command). Steps' outputs (the seat, the
//! booking reference) reach later commands and the hold's release through
//! the definition's input mappings; an output over the limit is never
//! committed by the participant, and one arriving in an event is
//! dead-lettered.

use std::time::Duration;

use prost::Message as _;
use sagaflow_protos::events::v1::{CommandKind, EventEnvelope, Outcome};
use sagaflow_protos::orchestrator::v1::{
    CancelSagaRequest, GetDefinitionRequest, GetSagaRequest, RetrySagaRequest, Saga, SagaState,
    StartSagaRequest,
};
use sagaflow_protos::participant::v1::{CommandAck, StepCommand};
use sagaflow_tests::desk::{Desk, Rows};
use sagaflow_tests::system::{Options, Outside, System};
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
    group: book
    action: /sagaflow.test.v1.Desk/HoldSeat
    compensation: /sagaflow.test.v1.Desk/ReleaseSeat
    input: {traveller: /input/traveller}
    compensation_input: {seat: /steps/hold_seat/output/seat}
  - name: reserve_car
    participant: desk
    group: book
    action: /sagaflow.test.v1.Desk/ReserveCar
    compensation: /sagaflow.test.v1.Desk/ReturnCar
    input: {traveller: /input/traveller}
    compensation_input: {car: /steps/reserve_car/output/car}
  - name: confirm
    participant: desk
    action: /sagaflow.test.v1.Desk/Confirm
    compensation: none
    input:
      traveller: /input/traveller
      seat: /steps/hold_seat/output/seat
  - name: notify
    participant: desk
    action: /sagaflow.test.v1.Desk/Notify
    forward_only: true
    input:
      to: /input/traveller
      booking_ref: /steps/confirm/output/booking_ref
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
    // The desk's own relay publishes its outbox to the system's topic.
    let system = System::start(
        "defined",
        Options {
            insecure: true,
            env: vec![("SAGAFLOW_FAST_PATH".to_owned(), "false".to_owned())],
            outside: vec![Outside {
                name: "desk".into(),
                url: desk.url.clone(),
                database_url: desk.database_url.clone(),
                definition: ("booking.v1.yaml".into(), BOOKING.into()),
            }],
            ..Options::default()
        },
    )
    .await?;
    let mut client = system.client().await?;

    // The definition as the API shows it.
    let def = client
        .get_definition(GetDefinitionRequest {
            saga_type: "booking".into(),
            version: 0,
        })
        .await?
        .into_inner();
    let shape: Vec<(&str, &str, bool, bool)> = def
        .steps
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.group.as_str(),
                s.compensation.is_empty(),
                s.forward_only,
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("hold_seat", "book", false, false),
            ("reserve_car", "book", false, false),
            ("confirm", "", true, false),
            ("notify", "", true, true)
        ]
    );
    assert_eq!(
        def.steps[3].input.get("booking_ref").map(String::as_str),
        Some("/steps/confirm/output/booking_ref")
    );
    assert_eq!(
        def.steps[0]
            .compensation_input
            .get("seat")
            .map(String::as_str),
        Some("/steps/hold_seat/output/seat")
    );

    desk.set_mailbox("bob", false).await?;
    desk.list("banned", "carl").await?;
    desk.list("no_seats", "dora").await?;
    // Dora's car reservation is still deciding when her seat is refused.
    desk.slow_cars("dora", 1500).await?;
    let mut ids = std::collections::HashMap::new();
    for who in ["ann", "bob", "carl", "dora", "verbose"] {
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
    assert_eq!(
        step_states(ann),
        ["SUCCEEDED", "SUCCEEDED", "SUCCEEDED", "SUCCEEDED"]
    );
    let rows = |hold: Option<&str>, booked, notices| Rows {
        hold: hold.map(str::to_owned),
        booked,
        notices,
    };
    let ann_id = ids["ann"].parse()?;
    assert_eq!(desk.rows(ann_id).await?, rows(Some("HELD"), true, 1));
    // Each output is kept with its step and reached the later commands.
    let output = |saga: &Saga, step: usize| -> serde_json::Value {
        serde_json::from_str(&saga.steps[step].output_json).unwrap_or_default()
    };
    let seat = output(ann, 0)["seat"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let booking_ref = output(ann, 2)["booking_ref"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        seat.starts_with("S-") && booking_ref.starts_with("BK-"),
        "{ann:?}"
    );
    assert_eq!(output(ann, 3), serde_json::json!({"sent_to": "ann"}));
    assert!(
        output(ann, 1)["car"]
            .as_str()
            .is_some_and(|c| c.starts_with("C-")),
        "{ann:?}"
    );
    assert_eq!(desk.car(ann_id).await?.status.as_deref(), Some("RESERVED"));
    let told = desk.told(ann_id).await?;
    assert_eq!(told.seat.as_deref(), Some(seat.as_str()));
    assert_eq!(told.booked_seat.as_deref(), Some(seat.as_str()));
    assert_eq!(told.booking_ref.as_deref(), Some(booking_ref.as_str()));
    assert_eq!(told.noticed_refs, [Some(booking_ref.clone())]);

    // The pivot refused after the group: the held seat is released and the
    // car returned, nothing else happened.
    assert_eq!(carl.state, SagaState::Compensated as i32, "{carl:?}");
    assert_eq!(
        step_states(carl),
        ["COMPENSATED", "COMPENSATED", "REFUSED", "NOT_STARTED"]
    );
    let carl_car = desk.car(ids["carl"].parse()?).await?;
    assert_eq!(carl_car.status.as_deref(), Some("RETURNED"));
    assert_eq!(
        carl_car.reservation,
        Some(("SUCCEEDED".into(), String::new()))
    );
    assert_eq!(carl.reason, "confirm refused: banned: carl");
    assert_eq!(
        desk.rows(ids["carl"].parse()?).await?,
        rows(Some("RELEASED"), false, 0)
    );
    // The release was told the seat the hold returned.
    let held = output(carl, 0)["seat"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(held.starts_with("S-"), "{carl:?}");
    assert_eq!(
        desk.told(ids["carl"].parse()?).await?.released_seat,
        Some(held)
    );
    assert_eq!(carl.steps[2].output_json, "");

    // The seat refused while the car was still deciding: the car, in
    // flight, is returned; its reservation then finds the tombstone and is
    // refused; nothing stays reserved.
    assert_eq!(dora.state, SagaState::Compensated as i32, "{dora:?}");
    assert_eq!(
        step_states(dora),
        ["REFUSED", "COMPENSATED", "NOT_STARTED", "NOT_STARTED"]
    );
    assert_eq!(dora.failed_step, "hold_seat");
    assert_eq!(dora.reason, "hold_seat refused: no_seats");
    assert_eq!(desk.rows(ids["dora"].parse()?).await?, rows(None, false, 0));
    // (The saga may be compensated before the slow reservation decides.)
    let dora_id: uuid::Uuid = ids["dora"].parse()?;
    let dora_car = wait_for("dora's car reservation to decide", WAIT, || async {
        let car = desk.car(dora_id).await?;
        Ok(car.reservation.is_some().then_some(car))
    })
    .await?;
    assert_eq!(dora_car.status.as_deref(), Some("RETURNED"));
    // Refused because the return, sent while it was deciding, came first.
    assert_eq!(
        dora_car.reservation,
        Some(("REFUSED".into(), "compensated_before_action".into()))
    );

    // The forward-only step refused: suspended, nothing undone.
    let bob_id = ids["bob"].clone();
    let bob = wait_until(&system, &bob_id, SagaState::Suspended, |_| true).await?;
    assert_eq!(
        step_states(&bob),
        ["SUCCEEDED", "SUCCEEDED", "SUCCEEDED", "REFUSED"]
    );
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
        s.steps[3].action_generation == 1 && s.steps[3].status == "REFUSED"
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
    assert_eq!(
        step_states(&done),
        ["SUCCEEDED", "SUCCEEDED", "SUCCEEDED", "SUCCEEDED"]
    );
    assert_eq!(done.steps[3].action_generation, 2);
    assert_eq!(done.reason, "");
    assert_eq!(
        desk.rows(bob_id.parse()?).await?,
        rows(Some("HELD"), true, 1)
    );
    // hold_seat, reserve_car, confirm, and notify three times (three
    // command ids).
    assert_eq!(desk.commands(bob_id.parse()?).await?, 6);
    let kinds: Vec<&str> = done.history.iter().map(|h| h.kind.as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "suspended").count(),
        2,
        "{kinds:?}"
    );

    // The three other sagas' commands each reached the desk once.
    assert_eq!(desk.commands(ann_id).await?, 4);

    // An output over the limit is never committed: the notification is
    // re-sent (it is forward-only) and nothing of it is written.
    let verbose_id = ids["verbose"].clone();
    let verbose = wait_until(&system, &verbose_id, SagaState::Running, |s| {
        s.steps[3].attempts >= 2
    })
    .await?;
    assert_eq!(
        step_states(&verbose),
        ["SUCCEEDED", "SUCCEEDED", "SUCCEEDED", "PENDING"]
    );
    assert_eq!(desk.commands(verbose_id.parse()?).await?, 3);
    assert_eq!(desk.rows(verbose_id.parse()?).await?.notices, 0);
    // Asked directly, the desk says why.
    let forged = StepCommand {
        command_id: uuid::Uuid::now_v7().to_string(),
        saga_id: uuid::Uuid::now_v7().to_string(),
        step: 3,
        step_name: "notify".into(),
        attempt: 1,
        saga_type: "booking".into(),
        input: br#"{"to": "verbose"}"#.to_vec(),
    };
    let forged_saga = forged.saga_id.parse()?;
    let channel = tonic::transport::Endpoint::from_shared(desk.url.clone())?
        .connect()
        .await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let err = grpc
        .unary::<_, CommandAck, _>(
            tonic::Request::new(forged),
            tonic::codegen::http::uri::PathAndQuery::from_static("/sagaflow.test.v1.Desk/Notify"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("an oversize output is refused");
    assert_eq!(err.code(), tonic::Code::Internal, "{err:?}");
    assert!(
        err.message().contains("the output of notify ")
            && err
                .message()
                .contains("bytes, more than the 4096 a step output may have"),
        "{}",
        err.message()
    );
    assert_eq!(desk.commands(forged_saga).await?, 0);

    // An oversize output arriving from another implementation is
    // dead-lettered with its reason, and changes no saga.
    let ps = sagaflow_common::pubsub::PubSubConfig {
        project: "sagaflow-local".into(),
        emulator_host: Some(system.emulator_host.clone()),
    };
    let publisher = sagaflow_common::pubsub::EventPublisher::new(&ps, &system.topic, 8).await?;
    let oversize = EventEnvelope {
        event_id: uuid::Uuid::now_v7().to_string(),
        saga_id: verbose_id.clone(),
        step: 3,
        step_name: "notify".into(),
        kind: CommandKind::Action as i32,
        outcome: Outcome::Succeeded as i32,
        output: format!(r#"{{"transcript": "{}"}}"#, "x".repeat(5000)),
        ..EventEnvelope::default()
    };
    let oversize_len = oversize.output.len();
    publisher
        .publish(sagaflow_common::pubsub::OutgoingMessage {
            data: oversize.encode_to_vec(),
            ordering_key: String::new(),
            attributes: vec![],
        })
        .await?;
    let reasons = wait_for("the oversize output to be dead-lettered", WAIT, || {
        let url = system.dbs.orchestrator.clone();
        async move {
            let c = sagaflow_common::db::connect(&url).await?;
            let rows = c.query("SELECT reason FROM dead_letters", &[]).await?;
            let reasons: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            Ok((!reasons.is_empty()).then_some(reasons))
        }
    })
    .await?;
    assert_eq!(
        reasons,
        [format!(
            "output: {} bytes, more than the 4096 a step output may have",
            oversize_len
        )]
    );
    let still = get(&system, &verbose_id).await?;
    assert_eq!(still.state, SagaState::Running as i32);
    assert_eq!(still.steps[3].status, "PENDING");

    Ok(())
}
