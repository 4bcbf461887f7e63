//! Inbox retention: old command ids are forgotten, recent ones still
//! answer repeats.

mod support;

use std::time::Duration;

use sagaflow_participants::Kind;
use sagaflow_protos::participant::v1::command_ack::Status as AckStatus;
use sagaflow_protos::participant::v1::order_service_client::OrderServiceClient;
use support::{TestParticipant, command, input};
use uuid::Uuid;

#[tokio::test]
async fn old_inbox_rows_are_deleted_and_recent_ones_still_dedupe() {
    let p = TestParticipant::start(Kind::Order).await;
    let mut client = OrderServiceClient::new(p.channel.clone());
    let alice = input("cust-alice", 1_000, &[("sku-widget", 1)]);
    let old = command(Uuid::now_v7(), 0, "create_order", &alice);
    let recent = command(Uuid::now_v7(), 0, "create_order", &alice);
    client.create_order(old.clone()).await.unwrap();
    client.create_order(recent.clone()).await.unwrap();
    let old_id = Uuid::parse_str(&old.command_id).unwrap();
    p.db.execute(
        "UPDATE inbox SET received_at = now() - interval '20 days' WHERE command_id = $1",
        &[&old_id],
    )
    .await
    .unwrap();

    let pool = sagaflow_common::db::pool(
        &format!("postgres://postgres@127.0.0.1:5432/{}", p.db_name),
        2,
    )
    .unwrap();
    let deleted =
        sagaflow_participant_kit::retention::sweep(&pool, Duration::from_secs(15 * 86_400))
            .await
            .expect("sweep");
    assert_eq!(deleted, 1);
    assert!(p.inbox(&old.command_id).await.is_none(), "old row deleted");
    assert!(
        p.inbox(&recent.command_id).await.is_some(),
        "recent row kept"
    );

    // The recent command is still recognised as a repeat.
    let repeat = client.create_order(recent).await.unwrap().into_inner();
    assert_eq!(repeat.status(), AckStatus::Duplicate);
    // The forgotten one is decided again, by the business row it left:
    // the same outcome, under a new event id.
    let again = client.create_order(old).await.unwrap().into_inner();
    assert_eq!(again.status(), AckStatus::Accepted);
    assert_eq!(
        again.outcome,
        sagaflow_protos::events::v1::Outcome::Succeeded as i32
    );
    assert_eq!(p.count("orders").await, 2, "no second order");
}
