//! The inventory participant against real Postgres and real gRPC.

mod support;

use sagaflow_participants::Kind;
use sagaflow_protos::events::v1::Outcome;
use sagaflow_protos::participant::v1::command_ack::Status as AckStatus;
use sagaflow_protos::participant::v1::inventory_service_client::InventoryServiceClient;
use sagaflow_protos::participant::v1::{CatalogItem, CommandAck, GetItemsRequest, OrderInput};
use support::{TestParticipant, command, input, unique};
use tonic::transport::Channel;
use uuid::Uuid;

type Client = InventoryServiceClient<Channel>;

/// A sku of this test's own, with `stock` units.
async fn sku(p: &TestParticipant, stock: i64) -> String {
    let sku = unique("sku-test");
    p.db.execute(
        "INSERT INTO items (sku, name, stock) VALUES ($1, 'Test', $2)",
        &[&sku, &stock],
    )
    .await
    .unwrap();
    sku
}

async fn stock(p: &TestParticipant, sku: &str) -> i64 {
    p.db.query_one("SELECT stock FROM items WHERE sku = $1", &[&sku])
        .await
        .unwrap()
        .get(0)
}

async fn reservation(p: &TestParticipant, saga: Uuid) -> Option<String> {
    p.db.query_opt(
        "SELECT status FROM reservations WHERE saga_id = $1",
        &[&saga],
    )
    .await
    .unwrap()
    .map(|r| r.get(0))
}

fn lines(items: &[(&str, i64)]) -> OrderInput {
    input("cust-alice", 100, items)
}

async fn reserve(client: &mut Client, saga: Uuid, items: &[(&str, i64)]) -> CommandAck {
    let cmd = command(saga, 2, "reserve_inventory", &lines(items));
    client
        .reserve_inventory(cmd)
        .await
        .expect("rpc succeeds")
        .into_inner()
}

async fn release(client: &mut Client, saga: Uuid) -> CommandAck {
    let cmd = command(saga, 2, "reserve_inventory", &lines(&[]));
    client
        .release_inventory(cmd)
        .await
        .expect("rpc succeeds")
        .into_inner()
}

#[tokio::test]
async fn get_items_returns_only_existing_skus_with_their_seeded_stock() {
    let p = TestParticipant::start(Kind::Inventory).await;
    let mut client = Client::new(p.channel.clone());
    let skus = [
        "sku-widget",
        "sku-gadget",
        "sku-rare",
        "sku-soldout",
        "sku-nope",
    ];

    let response = client
        .get_items(GetItemsRequest {
            skus: skus.iter().map(|s| (*s).to_owned()).collect(),
        })
        .await
        .unwrap()
        .into_inner();

    let item = |sku: &str, stock| CatalogItem {
        sku: sku.into(),
        stock,
    };
    assert_eq!(
        response.items,
        [
            item("sku-gadget", 1_000_000),
            item("sku-rare", 5),
            item("sku-soldout", 0),
            item("sku-widget", 1_000_000),
        ]
    );
}

#[tokio::test]
async fn reserve_decrements_every_line_and_release_restores_it() {
    let p = TestParticipant::start(Kind::Inventory).await;
    let mut client = Client::new(p.channel.clone());
    let (a, b) = (sku(&p, 10).await, sku(&p, 10).await);
    let saga = Uuid::now_v7();

    // Repeated skus are merged: 3 + 2 of `a`.
    let ack = reserve(&mut client, saga, &[(&a, 3), (&b, 1), (&a, 2)]).await;
    assert_eq!(
        (ack.status(), ack.outcome),
        (AckStatus::Accepted, Outcome::Succeeded as i32)
    );
    assert_eq!((stock(&p, &a).await, stock(&p, &b).await), (5, 9));
    assert_eq!(reservation(&p, saga).await.as_deref(), Some("RESERVED"));

    let ack = release(&mut client, saga).await;
    assert_eq!(ack.outcome, Outcome::Succeeded as i32);
    assert_eq!((stock(&p, &a).await, stock(&p, &b).await), (10, 10));
    assert_eq!(reservation(&p, saga).await.as_deref(), Some("RELEASED"));

    let ack = release(&mut client, saga).await;
    assert_eq!(
        ack.outcome,
        Outcome::Succeeded as i32,
        "a second release is a no-op"
    );
    assert_eq!(stock(&p, &a).await, 10);
    let types: Vec<String> = p.outbox().await.into_iter().map(|r| r.event_type).collect();
    assert_eq!(types[0], "inventory.reserve_inventory.action.succeeded");
    assert_eq!(
        types[1],
        "inventory.reserve_inventory.compensation.succeeded"
    );
}

#[tokio::test]
async fn short_stock_is_refused_with_detail_and_nothing_is_reserved() {
    let p = TestParticipant::start(Kind::Inventory).await;
    let mut client = Client::new(p.channel.clone());
    let (plenty, scarce) = (sku(&p, 100).await, sku(&p, 2).await);
    let saga = Uuid::now_v7();

    let ack = reserve(&mut client, saga, &[(&plenty, 1), (&scarce, 3)]).await;

    assert_eq!(ack.outcome, Outcome::Refused as i32);
    assert_eq!(ack.reason, format!("stock_short: {scarce} needs 3 has 2"));
    assert_eq!(
        (stock(&p, &plenty).await, stock(&p, &scarce).await),
        (100, 2)
    );
    assert_eq!(reservation(&p, saga).await.as_deref(), Some("REFUSED"));
    assert_eq!(
        p.outbox().await[0].event_type,
        "inventory.reserve_inventory.action.refused"
    );

    let ack = release(&mut client, saga).await;
    assert_eq!(
        ack.outcome,
        Outcome::Succeeded as i32,
        "releasing a refusal is a no-op"
    );
    assert_eq!(stock(&p, &scarce).await, 2);

    let ack = reserve(&mut client, Uuid::now_v7(), &[("sku-soldout", 1)]).await;
    assert_eq!(ack.reason, "stock_short: sku-soldout needs 1 has 0");
}

#[tokio::test]
async fn an_unknown_sku_is_refused() {
    let p = TestParticipant::start(Kind::Inventory).await;
    let mut client = Client::new(p.channel.clone());
    let known = sku(&p, 5).await;
    let ghost = unique("sku-ghost");

    let ack = reserve(&mut client, Uuid::now_v7(), &[(&known, 1), (&ghost, 1)]).await;

    assert_eq!(ack.outcome, Outcome::Refused as i32);
    assert_eq!(ack.reason, format!("unknown_sku: {ghost}"));
    assert_eq!(stock(&p, &known).await, 5);
}

#[tokio::test]
async fn release_before_reserve_voids_and_the_late_reserve_is_refused() {
    let p = TestParticipant::start(Kind::Inventory).await;
    let mut client = Client::new(p.channel.clone());
    let item = sku(&p, 5).await;
    let saga = Uuid::now_v7();

    assert_eq!(
        release(&mut client, saga).await.outcome,
        Outcome::Succeeded as i32
    );
    assert_eq!(reservation(&p, saga).await.as_deref(), Some("VOIDED"));

    let ack = reserve(&mut client, saga, &[(&item, 1)]).await;

    assert_eq!(ack.outcome, Outcome::Refused as i32);
    assert_eq!(ack.reason, "compensated_before_action");
    assert_eq!(stock(&p, &item).await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn competing_reservations_never_oversell() {
    let p = TestParticipant::start(Kind::Inventory).await;
    let client = Client::new(p.channel.clone());
    let (a, b) = (sku(&p, 10).await, sku(&p, 1_000).await);

    // Half list the skus in one order, half in the other: locks are taken in
    // sku order, so none deadlocks (a deadlock would surface as UNAVAILABLE).
    let acks = futures::future::join_all((0..30).map(|i| {
        let (mut client, a, b) = (client.clone(), a.clone(), b.clone());
        async move {
            let items: [(&str, i64); 2] = if i % 2 == 0 {
                [(&a, 1), (&b, 1)]
            } else {
                [(&b, 1), (&a, 1)]
            };
            reserve(&mut client, Uuid::now_v7(), &items).await
        }
    }))
    .await;

    let reserved = acks
        .iter()
        .filter(|a| a.outcome == Outcome::Succeeded as i32)
        .count();
    assert_eq!(reserved, 10);
    assert!(
        acks.iter()
            .filter(|a| a.outcome == Outcome::Refused as i32)
            .all(|a| a.reason.starts_with("stock_short")),
    );
    assert_eq!((stock(&p, &a).await, stock(&p, &b).await), (0, 990));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reserve_and_release_leave_the_stock_unchanged() {
    let p = TestParticipant::start(Kind::Inventory).await;
    let client = Client::new(p.channel.clone());
    let item = sku(&p, 100).await;
    let sagas: Vec<Uuid> = (0..25).map(|_| Uuid::now_v7()).collect();

    let results = futures::future::join_all(sagas.iter().map(|&saga| {
        let (mut a, mut b, item) = (client.clone(), client.clone(), item.clone());
        async move {
            tokio::join!(
                async move { reserve(&mut a, saga, &[(&item, 2)]).await },
                async move { release(&mut b, saga).await },
            )
        }
    }))
    .await;

    for (saga, (reserved, released)) in sagas.iter().zip(results) {
        assert_eq!(released.outcome, Outcome::Succeeded as i32);
        let status = reservation(&p, *saga).await.unwrap();
        if reserved.outcome == Outcome::Succeeded as i32 {
            assert_eq!(status, "RELEASED");
        } else {
            assert_eq!(reserved.reason, "compensated_before_action");
            assert_eq!(status, "VOIDED");
        }
    }
    assert_eq!(stock(&p, &item).await, 100);
}
