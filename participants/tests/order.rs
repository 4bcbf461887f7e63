//! The order participant against real Postgres and real gRPC.

mod support;

use sagaflow_participants::Kind;
use sagaflow_protos::events::v1::{CommandKind, Outcome};
use sagaflow_protos::participant::v1::command_ack::Status as AckStatus;
use sagaflow_protos::participant::v1::order_service_client::OrderServiceClient;
use sagaflow_protos::participant::v1::{CommandAck, OrderInput, StepCommand};
use support::{TestParticipant, command, input};
use tonic::transport::Channel;
use uuid::Uuid;

fn alice() -> OrderInput {
    input("cust-alice", 2500, &[("sku-widget", 2), ("sku-gadget", 1)])
}

async fn order_status(p: &TestParticipant, saga: Uuid) -> Option<(String, Option<String>)> {
    p.db.query_opt(
        "SELECT status, reason FROM orders WHERE saga_id = $1",
        &[&saga],
    )
    .await
    .unwrap()
    .map(|r| (r.get(0), r.get(1)))
}

async fn send(client: &mut OrderServiceClient<Channel>, rpc: &str, cmd: StepCommand) -> CommandAck {
    let response = match rpc {
        "create" => client.create_order(cmd).await,
        "cancel" => client.cancel_order(cmd).await,
        "approve" => client.approve_order(cmd).await,
        other => unreachable!("{other}"),
    };
    response.expect("rpc succeeds").into_inner()
}

#[tokio::test]
async fn create_order_makes_a_pending_order_and_emits_its_event() {
    let p = TestParticipant::start(Kind::Order).await;
    let mut client = OrderServiceClient::new(p.channel.clone());
    let saga = Uuid::now_v7();
    let cmd = command(saga, 0, "create_order", &alice());
    let command_id = cmd.command_id.clone();

    let ack = send(&mut client, "create", cmd).await;

    assert_eq!(ack.status(), AckStatus::Accepted);
    assert_eq!(ack.outcome, Outcome::Succeeded as i32);
    let row = p
        .db
        .query_one(
            "SELECT status, customer_id, amount_cents, currency, items FROM orders WHERE saga_id = $1",
            &[&saga],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "PENDING");
    assert_eq!(row.get::<_, String>(1), "cust-alice");
    assert_eq!(row.get::<_, i64>(2), 2500);
    assert_eq!(row.get::<_, String>(3), "EUR");
    assert_eq!(
        row.get::<_, serde_json::Value>(4),
        serde_json::json!([{"sku": "sku-gadget", "quantity": 1}, {"sku": "sku-widget", "quantity": 2}])
    );
    let (outcome, reason, event_id) = p.inbox(&command_id).await.unwrap();
    assert_eq!((outcome.as_str(), reason), ("SUCCEEDED", None));
    assert_eq!(event_id.to_string(), ack.event_id);

    let outbox = p.outbox().await;
    assert_eq!(outbox.len(), 1);
    let row = &outbox[0];
    assert_eq!(row.event_id, event_id);
    assert_eq!(row.saga_id, saga);
    assert_eq!(row.event_type, "order.create_order.action.succeeded");
    let event = &row.event;
    assert_eq!(event.event_id, ack.event_id);
    assert_eq!(event.saga_id, saga.to_string());
    assert_eq!((event.step, event.step_name.as_str()), (0, "create_order"));
    assert_eq!(event.kind(), CommandKind::Action);
    assert_eq!(event.command_id, command_id);
    assert_eq!(event.outcome(), Outcome::Succeeded);
    assert_eq!(event.participant, "order");
    assert!(event.occurred_at.is_some());
    assert_eq!(row.payload()["order_status"], "PENDING");
}

#[tokio::test]
async fn cancel_order_cancels_a_pending_order() {
    let p = TestParticipant::start(Kind::Order).await;
    let mut client = OrderServiceClient::new(p.channel.clone());
    let saga = Uuid::now_v7();
    send(
        &mut client,
        "create",
        command(saga, 0, "create_order", &alice()),
    )
    .await;

    let ack = send(
        &mut client,
        "cancel",
        command(saga, 0, "create_order", &alice()),
    )
    .await;

    assert_eq!(ack.status(), AckStatus::Accepted);
    assert_eq!(ack.outcome, Outcome::Succeeded as i32);
    let (status, reason) = order_status(&p, saga).await.unwrap();
    assert_eq!(status, "CANCELLED");
    assert_eq!(reason.as_deref(), Some("saga_compensated"));
    let outbox = p.outbox().await;
    assert_eq!(
        outbox[1].event_type,
        "order.create_order.compensation.succeeded"
    );
    assert_eq!(outbox[1].event.kind(), CommandKind::Compensation);

    // Cancelling again (a new command id) is a successful no-op.
    let again = send(
        &mut client,
        "cancel",
        command(saga, 0, "create_order", &alice()),
    )
    .await;
    assert_eq!(again.outcome, Outcome::Succeeded as i32);
    assert_eq!(order_status(&p, saga).await.unwrap().0, "CANCELLED");
}

#[tokio::test]
async fn cancel_before_create_leaves_a_tombstone_and_the_late_create_is_refused() {
    let p = TestParticipant::start(Kind::Order).await;
    let mut client = OrderServiceClient::new(p.channel.clone());
    let saga = Uuid::now_v7();

    let cancel = send(
        &mut client,
        "cancel",
        command(saga, 0, "create_order", &alice()),
    )
    .await;
    assert_eq!(cancel.outcome, Outcome::Succeeded as i32);
    assert_eq!(order_status(&p, saga).await.unwrap().0, "CANCELLED");

    let create = send(
        &mut client,
        "create",
        command(saga, 0, "create_order", &alice()),
    )
    .await;

    assert_eq!(create.status(), AckStatus::Accepted);
    assert_eq!(create.outcome, Outcome::Refused as i32);
    assert_eq!(create.reason, "compensated_before_action");
    let row =
        p.db.query_one(
            "SELECT status, customer_id FROM orders WHERE saga_id = $1",
            &[&saga],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "CANCELLED");
    assert_eq!(row.get::<_, Option<String>>(1), None, "no undo, then do");
    let outbox = p.outbox().await;
    assert_eq!(outbox[1].event_type, "order.create_order.action.refused");
    assert_eq!(outbox[1].event.reason, "compensated_before_action");
}

#[tokio::test]
async fn approve_order_approves_a_pending_order_and_then_cancel_is_refused() {
    let p = TestParticipant::start(Kind::Order).await;
    let mut client = OrderServiceClient::new(p.channel.clone());
    let saga = Uuid::now_v7();
    send(
        &mut client,
        "create",
        command(saga, 0, "create_order", &alice()),
    )
    .await;

    let approve = send(
        &mut client,
        "approve",
        command(saga, 3, "approve_order", &alice()),
    )
    .await;
    assert_eq!(approve.outcome, Outcome::Succeeded as i32);
    assert_eq!(order_status(&p, saga).await.unwrap().0, "APPROVED");

    let cancel = send(
        &mut client,
        "cancel",
        command(saga, 0, "create_order", &alice()),
    )
    .await;
    assert_eq!(cancel.outcome, Outcome::Refused as i32);
    assert_eq!(cancel.reason, "already_approved");
    assert_eq!(order_status(&p, saga).await.unwrap().0, "APPROVED");
}

#[tokio::test]
async fn approve_order_is_refused_for_an_absent_or_cancelled_order() {
    let p = TestParticipant::start(Kind::Order).await;
    let mut client = OrderServiceClient::new(p.channel.clone());
    let absent = Uuid::now_v7();

    let ack = send(
        &mut client,
        "approve",
        command(absent, 3, "approve_order", &alice()),
    )
    .await;
    assert_eq!(
        (ack.outcome, ack.reason.as_str()),
        (Outcome::Refused as i32, "unknown_order")
    );
    assert_eq!(
        order_status(&p, absent).await,
        None,
        "the pivot leaves no tombstone"
    );

    let cancelled = Uuid::now_v7();
    send(
        &mut client,
        "create",
        command(cancelled, 0, "create_order", &alice()),
    )
    .await;
    send(
        &mut client,
        "cancel",
        command(cancelled, 0, "create_order", &alice()),
    )
    .await;
    let ack = send(
        &mut client,
        "approve",
        command(cancelled, 3, "approve_order", &alice()),
    )
    .await;
    assert_eq!(
        (ack.outcome, ack.reason.as_str()),
        (Outcome::Refused as i32, "order_cancelled")
    );
    assert_eq!(order_status(&p, cancelled).await.unwrap().0, "CANCELLED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_create_and_cancel_end_cancelled_either_way() {
    let p = TestParticipant::start(Kind::Order).await;
    let client = OrderServiceClient::new(p.channel.clone());
    let sagas: Vec<Uuid> = (0..20).map(|_| Uuid::now_v7()).collect();

    let races =
        sagas.iter().map(|&saga| {
            let (mut a, mut b) = (client.clone(), client.clone());
            async move {
                tokio::join!(
                    async move {
                        send(&mut a, "create", command(saga, 0, "create_order", &alice())).await
                    },
                    async move {
                        send(&mut b, "cancel", command(saga, 0, "create_order", &alice())).await
                    },
                )
            }
        });
    let results = futures::future::join_all(races).await;

    for (saga, (create, cancel)) in sagas.iter().zip(results) {
        assert_eq!(cancel.outcome, Outcome::Succeeded as i32);
        let (status, reason) = order_status(&p, *saga).await.unwrap();
        assert_eq!(status, "CANCELLED");
        if create.outcome == Outcome::Succeeded as i32 {
            assert_eq!(
                reason.as_deref(),
                Some("saga_compensated"),
                "created, then cancelled"
            );
        } else {
            assert_eq!(create.reason, "compensated_before_action");
            assert_eq!(reason.as_deref(), Some("cancelled_before_create"));
        }
    }
}
