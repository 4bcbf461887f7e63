//! The command contract every participant shares: duplicates, invalid
//! commands, transactions, migrations and shutdown.

mod support;

use prost::Message as _;
use sagaflow_participants::Kind;
use sagaflow_protos::events::v1::Outcome;
use sagaflow_protos::participant::v1::command_ack::Status as AckStatus;
use sagaflow_protos::participant::v1::order_service_client::OrderServiceClient;
use sagaflow_protos::participant::v1::payment_service_client::PaymentServiceClient;
use sagaflow_protos::participant::v1::{OrderInput, StepCommand};
use support::{TestParticipant, command, input};
use uuid::Uuid;

fn alice() -> OrderInput {
    input("cust-alice", 1_000, &[("sku-widget", 1)])
}

#[tokio::test]
async fn a_repeated_command_is_answered_duplicate_and_re_emits_the_same_event() {
    let p = TestParticipant::start(Kind::Order).await;
    let mut client = OrderServiceClient::new(p.channel.clone());
    let cmd = command(Uuid::now_v7(), 0, "create_order", &alice());

    let first = client.create_order(cmd.clone()).await.unwrap().into_inner();
    let retry = StepCommand {
        attempt: 2,
        ..cmd.clone()
    };
    let second = client.create_order(retry).await.unwrap().into_inner();

    assert_eq!(first.status(), AckStatus::Accepted);
    assert_eq!(second.status(), AckStatus::Duplicate);
    assert_eq!(second.event_id, first.event_id);
    assert_eq!(
        (second.outcome, &second.reason),
        (first.outcome, &first.reason)
    );
    assert_eq!(p.count("orders").await, 1);
    assert_eq!(p.count("inbox").await, 1);
    let outbox = p.outbox().await;
    assert_eq!(outbox.len(), 2);
    assert_eq!(outbox[0].event_id, outbox[1].event_id);
    assert_eq!(
        outbox[0].event, outbox[1].event,
        "the stored envelope, byte for byte"
    );
    assert_eq!(outbox[1].event_type, "order.create_order.action.succeeded");
}

#[tokio::test]
async fn a_repeated_refusal_is_answered_with_the_stored_reason() {
    let p = TestParticipant::start(Kind::Payment).await;
    let mut client = PaymentServiceClient::new(p.channel.clone());
    let cmd = command(
        Uuid::now_v7(),
        1,
        "process_payment",
        &input("cust-bob", 10_001, &[("sku-widget", 1)]),
    );

    let first = client
        .process_payment(cmd.clone())
        .await
        .unwrap()
        .into_inner();
    // Even if bob could now afford it, the stored answer stands.
    p.db.execute(
        "UPDATE customers SET available_cents = 1000000 WHERE customer_id = 'cust-bob'",
        &[],
    )
    .await
    .unwrap();
    let second = client.process_payment(cmd).await.unwrap().into_inner();

    assert_eq!(first.outcome, Outcome::Refused as i32);
    assert_eq!(
        first.reason,
        "credit_limit_exceeded: cust-bob needs EUR 100.01 has EUR 100.00"
    );
    assert_eq!(second.status(), AckStatus::Duplicate);
    assert_eq!(
        (second.outcome, &second.reason, &second.event_id),
        (first.outcome, &first.reason, &first.event_id)
    );
    let outbox = p.outbox().await;
    assert_eq!(outbox.len(), 2);
    assert!(
        outbox
            .iter()
            .all(|r| r.event_type == "payment.process_payment.action.refused")
    );
}

#[tokio::test]
async fn invalid_commands_are_rejected_naming_the_field_and_write_nothing() {
    let p = TestParticipant::start(Kind::Order).await;
    let mut client = OrderServiceClient::new(p.channel.clone());
    let good = command(Uuid::now_v7(), 0, "create_order", &alice());
    let empty_customer = input("", 1, &[("sku-widget", 1)]).encode_to_vec();
    let cases = [
        (
            StepCommand {
                command_id: "nope".into(),
                ..good.clone()
            },
            "command_id: not a UUID",
        ),
        (
            StepCommand {
                saga_id: String::new(),
                ..good.clone()
            },
            "saga_id: not a UUID",
        ),
        (
            StepCommand {
                step_name: String::new(),
                ..good.clone()
            },
            "step_name: empty",
        ),
        (
            StepCommand {
                input: vec![0x0a, 0xff],
                ..good.clone()
            },
            "input: not an OrderInput",
        ),
        (
            StepCommand {
                input: empty_customer,
                ..good.clone()
            },
            "input.customer_id: empty",
        ),
        (
            StepCommand {
                input: input("c", -1, &[("s", 1)]).encode_to_vec(),
                ..good.clone()
            },
            "input.amount_cents: negative or too large",
        ),
        (
            StepCommand {
                input: input("c", 1, &[("s", -3)]).encode_to_vec(),
                ..good.clone()
            },
            "input.items[0].quantity: not positive or too large",
        ),
    ];

    for (cmd, expected) in cases {
        let status = client.create_order(cmd).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{expected}");
        assert!(
            status.message().starts_with(expected),
            "{} vs {expected}",
            status.message()
        );
    }
    let bad_cancel = StepCommand {
        saga_id: "x".into(),
        ..good.clone()
    };
    let status = client.cancel_order(bad_cancel).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (tonic::Code::InvalidArgument, "saga_id: not a UUID")
    );

    for table in ["orders", "inbox", "outbox"] {
        assert_eq!(p.count(table).await, 0, "{table} untouched");
    }
}

#[tokio::test]
async fn a_command_id_reused_for_another_step_is_rejected() {
    let p = TestParticipant::start(Kind::Order).await;
    let mut client = OrderServiceClient::new(p.channel.clone());
    let create = command(Uuid::now_v7(), 0, "create_order", &alice());
    client.create_order(create.clone()).await.unwrap();

    let other_saga = StepCommand {
        saga_id: Uuid::now_v7().to_string(),
        ..create.clone()
    };
    let status = client.create_order(other_saga).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().starts_with("command_id: already used"),
        "{}",
        status.message()
    );

    let as_compensation = client.cancel_order(create).await.unwrap_err();
    assert_eq!(as_compensation.code(), tonic::Code::InvalidArgument);
    assert_eq!((p.count("orders").await, p.count("outbox").await), (1, 1));
}

#[tokio::test]
async fn migrations_are_idempotent_across_restarts() {
    let mut first = TestParticipant::start(Kind::Payment).await;
    let mut client = PaymentServiceClient::new(first.channel.clone());
    let saga = Uuid::now_v7();
    let charge = command(
        saga,
        1,
        "process_payment",
        &input("cust-bob", 3_000, &[("sku-widget", 1)]),
    );
    client.process_payment(charge.clone()).await.unwrap();
    first.stop().await;

    // Serve again on the same database: nothing is re-applied or re-seeded.
    let second = TestParticipant::start_on(Kind::Payment, first.db_name.clone()).await;
    let versions: Vec<i32> = second
        .db
        .query(
            "SELECT version FROM sagaflow_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let declared: Vec<i32> = sagaflow_participants::server::migrations(Kind::Payment)
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(versions, declared, "each applied once");
    let bob: i64 = second
        .db
        .query_one(
            "SELECT available_cents FROM customers WHERE customer_id = 'cust-bob'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(bob, 7_000, "seeds were not re-applied over the charge");

    // The inbox survived the restart too.
    let mut client = PaymentServiceClient::new(second.channel.clone());
    let repeat = client.process_payment(charge).await.unwrap().into_inner();
    assert_eq!(repeat.status(), AckStatus::Duplicate);
}

#[tokio::test]
async fn a_stopped_participant_returns_from_serve() {
    let mut p = TestParticipant::start(Kind::Inventory).await;
    p.stop().await; // asserts that serve returned Ok within the deadline
}
