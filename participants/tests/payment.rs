//! The payment participant against real Postgres and real gRPC.

mod support;

use sagaflow_participants::Kind;
use sagaflow_protos::events::v1::Outcome;
use sagaflow_protos::participant::v1::CommandAck;
use sagaflow_protos::participant::v1::command_ack::Status as AckStatus;
use sagaflow_protos::participant::v1::payment_service_client::PaymentServiceClient;
use support::{TestParticipant, command, input, unique};
use tonic::transport::Channel;
use uuid::Uuid;

type Client = PaymentServiceClient<Channel>;

/// A customer of this test's own, with `credit` cents available.
async fn customer(p: &TestParticipant, credit: i64) -> String {
    let id = unique("cust-test");
    p.db.execute(
        "INSERT INTO customers (customer_id, name, credit_limit_cents, available_cents)
         VALUES ($1, 'Test', $2, $2)",
        &[&id, &credit],
    )
    .await
    .unwrap();
    id
}

async fn available(p: &TestParticipant, customer: &str) -> i64 {
    p.db.query_one(
        "SELECT available_cents FROM customers WHERE customer_id = $1",
        &[&customer],
    )
    .await
    .unwrap()
    .get(0)
}

async fn payment(p: &TestParticipant, saga: Uuid) -> Option<(String, Option<i64>)> {
    p.db.query_opt(
        "SELECT status, amount_cents FROM payments WHERE saga_id = $1",
        &[&saga],
    )
    .await
    .unwrap()
    .map(|r| (r.get(0), r.get(1)))
}

async fn charge(client: &mut Client, saga: Uuid, customer: &str, amount: i64) -> CommandAck {
    let cmd = command(
        saga,
        1,
        "process_payment",
        &input(customer, amount, &[("sku-widget", 1)]),
    );
    client
        .process_payment(cmd)
        .await
        .expect("rpc succeeds")
        .into_inner()
}

async fn refund(client: &mut Client, saga: Uuid) -> CommandAck {
    // Compensations carry the saga input too, but do not read it.
    let cmd = command(saga, 1, "process_payment", &input("ignored", 0, &[]));
    client
        .refund_payment(cmd)
        .await
        .expect("rpc succeeds")
        .into_inner()
}

#[tokio::test]
async fn seeded_customers_exist() {
    let p = TestParticipant::start(Kind::Payment).await;
    for (id, credit) in [
        ("cust-alice", 100_000_000),
        ("cust-bob", 10_000),
        ("cust-broke", 0),
    ] {
        assert_eq!(available(&p, id).await, credit, "{id}");
    }
}

#[tokio::test]
async fn process_payment_charges_the_customer_and_refund_restores_the_credit() {
    let p = TestParticipant::start(Kind::Payment).await;
    let mut client = Client::new(p.channel.clone());
    let cust = customer(&p, 10_000).await;
    let saga = Uuid::now_v7();

    let ack = charge(&mut client, saga, &cust, 4_000).await;
    assert_eq!(
        (ack.status(), ack.outcome),
        (AckStatus::Accepted, Outcome::Succeeded as i32)
    );
    assert_eq!(available(&p, &cust).await, 6_000);
    assert_eq!(
        payment(&p, saga).await,
        Some(("CHARGED".into(), Some(4_000)))
    );

    let ack = refund(&mut client, saga).await;
    assert_eq!(ack.outcome, Outcome::Succeeded as i32);
    assert_eq!(available(&p, &cust).await, 10_000);
    assert_eq!(payment(&p, saga).await.unwrap().0, "REFUNDED");

    // A second refund (another command id) changes nothing.
    let ack = refund(&mut client, saga).await;
    assert_eq!(ack.outcome, Outcome::Succeeded as i32);
    assert_eq!(available(&p, &cust).await, 10_000);

    let types: Vec<String> = p.outbox().await.into_iter().map(|r| r.event_type).collect();
    assert_eq!(
        types,
        [
            "payment.process_payment.action.succeeded",
            "payment.process_payment.compensation.succeeded",
            "payment.process_payment.compensation.succeeded",
        ]
    );
}

#[tokio::test]
async fn a_charge_over_the_available_credit_is_refused_and_records_nothing_charged() {
    let p = TestParticipant::start(Kind::Payment).await;
    let mut client = Client::new(p.channel.clone());
    let cust = customer(&p, 1_000).await;
    let saga = Uuid::now_v7();

    let ack = charge(&mut client, saga, &cust, 1_001).await;

    assert_eq!(ack.status(), AckStatus::Accepted);
    assert_eq!(ack.outcome, Outcome::Refused as i32);
    assert_eq!(
        ack.reason,
        format!("credit_limit_exceeded: {cust} needs EUR 10.01 has EUR 10.00")
    );
    assert_eq!(available(&p, &cust).await, 1_000);
    assert_eq!(payment(&p, saga).await.unwrap().0, "REFUSED");
    let outbox = p.outbox().await;
    assert_eq!(
        outbox[0].event_type,
        "payment.process_payment.action.refused"
    );
    assert_eq!(outbox[0].event.reason, ack.reason);

    // Refunding a refused payment is a successful no-op.
    let ack = refund(&mut client, saga).await;
    assert_eq!(ack.outcome, Outcome::Succeeded as i32);
    assert_eq!(available(&p, &cust).await, 1_000);
    assert_eq!(payment(&p, saga).await.unwrap().0, "REFUSED");

    // The seeded broke customer cannot pay anything.
    let ack = charge(&mut client, Uuid::now_v7(), "cust-broke", 1).await;
    assert!(
        ack.reason.starts_with("credit_limit_exceeded"),
        "{}",
        ack.reason
    );
}

#[tokio::test]
async fn an_unknown_customer_is_refused() {
    let p = TestParticipant::start(Kind::Payment).await;
    let mut client = Client::new(p.channel.clone());
    let ghost = unique("cust-ghost");

    let ack = charge(&mut client, Uuid::now_v7(), &ghost, 1).await;

    assert_eq!(ack.outcome, Outcome::Refused as i32);
    assert_eq!(ack.reason, format!("unknown_customer: {ghost}"));
}

#[tokio::test]
async fn refund_before_charge_voids_and_the_late_charge_is_refused_without_charging() {
    let p = TestParticipant::start(Kind::Payment).await;
    let mut client = Client::new(p.channel.clone());
    let cust = customer(&p, 10_000).await;
    let saga = Uuid::now_v7();

    let ack = refund(&mut client, saga).await;
    assert_eq!(ack.outcome, Outcome::Succeeded as i32);
    assert_eq!(payment(&p, saga).await, Some(("VOIDED".into(), None)));

    let ack = charge(&mut client, saga, &cust, 500).await;

    assert_eq!(ack.outcome, Outcome::Refused as i32);
    assert_eq!(ack.reason, "compensated_before_action");
    assert_eq!(available(&p, &cust).await, 10_000);
    assert_eq!(payment(&p, saga).await, Some(("VOIDED".into(), None)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_identical_concurrent_charges_charge_once() {
    let p = TestParticipant::start(Kind::Payment).await;
    let client = Client::new(p.channel.clone());
    let cust = customer(&p, 10_000).await;
    let cmd = command(
        Uuid::now_v7(),
        1,
        "process_payment",
        &input(&cust, 700, &[("sku-widget", 1)]),
    );

    let acks = futures::future::join_all((0..20).map(|_| {
        let (mut client, cmd) = (client.clone(), cmd.clone());
        async move {
            client
                .process_payment(cmd)
                .await
                .expect("rpc succeeds")
                .into_inner()
        }
    }))
    .await;

    let accepted = acks
        .iter()
        .filter(|a| a.status() == AckStatus::Accepted)
        .count();
    assert_eq!(accepted, 1);
    assert!(acks.iter().all(|a| a.event_id == acks[0].event_id));
    assert!(acks.iter().all(|a| a.outcome == Outcome::Succeeded as i32));
    assert_eq!(available(&p, &cust).await, 9_300, "charged exactly once");
    assert_eq!(p.count("payments").await, 1);
    let outbox = p.outbox().await;
    assert_eq!(outbox.len(), 20, "each repeat re-emits the event");
    assert!(
        outbox
            .iter()
            .all(|r| r.event_id.to_string() == acks[0].event_id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_charge_and_refund_leave_the_credit_unchanged() {
    let p = TestParticipant::start(Kind::Payment).await;
    let client = Client::new(p.channel.clone());
    let cust = customer(&p, 100_000).await;
    let sagas: Vec<Uuid> = (0..25).map(|_| Uuid::now_v7()).collect();

    let results = futures::future::join_all(sagas.iter().map(|&saga| {
        let (mut a, mut b, cust) = (client.clone(), client.clone(), cust.clone());
        async move {
            tokio::join!(
                async move { charge(&mut a, saga, &cust, 1_000).await },
                async move { refund(&mut b, saga).await },
            )
        }
    }))
    .await;

    let mut charged_then_refunded = 0;
    for (saga, (charged, refunded)) in sagas.iter().zip(results) {
        assert_eq!(refunded.outcome, Outcome::Succeeded as i32);
        let (status, _) = payment(&p, *saga).await.unwrap();
        if charged.outcome == Outcome::Succeeded as i32 {
            assert_eq!(status, "REFUNDED");
            charged_then_refunded += 1;
        } else {
            assert_eq!(charged.reason, "compensated_before_action");
            assert_eq!(status, "VOIDED");
        }
    }
    assert_eq!(available(&p, &cust).await, 100_000);
    eprintln!(
        "{charged_then_refunded} of {} charged then refunded",
        sagas.len()
    );
}

async fn hold_refunds(p: &TestParticipant, customer: &str, held: bool) {
    p.db.execute(
        "UPDATE customers SET refunds_held = $2 WHERE customer_id = $1",
        &[&customer, &held],
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_refund_is_refused_while_the_customers_refunds_are_held_and_a_later_one_succeeds() {
    // Given a charged payment of a customer whose refunds are held
    let p = TestParticipant::start(Kind::Payment).await;
    let mut client = Client::new(p.channel.clone());
    let cust = customer(&p, 10_000).await;
    let saga = Uuid::now_v7();
    charge(&mut client, saga, &cust, 2_500).await;
    hold_refunds(&p, &cust, true).await;

    // When the refund arrives
    let held = refund(&mut client, saga).await;

    // Then it is refused, nothing moves, and a repeat gets the same answer
    assert_eq!(held.outcome, Outcome::Refused as i32);
    assert_eq!(held.reason, format!("refunds_held: {cust}"));
    assert_eq!(available(&p, &cust).await, 7_500);
    assert_eq!(
        payment(&p, saga).await,
        Some(("CHARGED".into(), Some(2_500)))
    );
    let outbox = p.outbox().await;
    assert_eq!(
        outbox.last().unwrap().event_type,
        "payment.process_payment.compensation.refused"
    );

    // When the hold is lifted and the refund is sent again as a new command
    hold_refunds(&p, &cust, false).await;
    let retried = refund(&mut client, saga).await;

    // Then it refunds
    assert_eq!(retried.outcome, Outcome::Succeeded as i32);
    assert_eq!(available(&p, &cust).await, 10_000);
    assert_eq!(payment(&p, saga).await.unwrap().0, "REFUNDED");
}

#[tokio::test]
async fn a_hold_does_not_stop_a_refund_with_nothing_to_give_back() {
    // Given a customer whose refunds are held, and a saga never charged
    let p = TestParticipant::start(Kind::Payment).await;
    let mut client = Client::new(p.channel.clone());
    let cust = customer(&p, 1_000).await;
    hold_refunds(&p, &cust, true).await;
    let never_charged = Uuid::now_v7();
    let refused = Uuid::now_v7();
    charge(&mut client, refused, &cust, 5_000).await;

    // When both are refunded
    let tombstone = refund(&mut client, never_charged).await;
    let no_op = refund(&mut client, refused).await;

    // Then both succeed: no money moves
    assert_eq!(tombstone.outcome, Outcome::Succeeded as i32);
    assert_eq!(
        payment(&p, never_charged).await,
        Some(("VOIDED".into(), None))
    );
    assert_eq!(no_op.outcome, Outcome::Succeeded as i32);
    assert_eq!(payment(&p, refused).await.unwrap().0, "REFUSED");
    assert_eq!(available(&p, &cust).await, 1_000);
}
