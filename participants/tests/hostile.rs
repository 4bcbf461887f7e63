//! Forged and hostile commands, sent straight to the participants: NUL
//! bytes, huge numbers, quantities whose sum would wrap, unbounded strings.
//! Each is answered `INVALID_ARGUMENT` naming the field, and nothing is
//! written: no business row, no inbox row, no outbox event, no stock moved.

mod support;

use prost::Message as _;
use sagaflow_participants::Kind;
use sagaflow_protos::participant::v1::inventory_service_client::InventoryServiceClient;
use sagaflow_protos::participant::v1::order_service_client::OrderServiceClient;
use sagaflow_protos::participant::v1::payment_service_client::PaymentServiceClient;
use sagaflow_protos::participant::v1::{
    GetCustomersRequest, GetItemsRequest, OrderInput, OrderItem, StepCommand,
};
use support::{TestParticipant, command, input};
use uuid::Uuid;

const MAX_UNITS: i64 = 1 << 48;

fn refused(result: Result<impl std::fmt::Debug, tonic::Status>, field: &str) {
    let status = result.expect_err("must be refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with(&format!("{field}: ")),
        "{:?} should name {field}",
        status.message()
    );
    assert!(
        status.message().len() < 200,
        "{} bytes",
        status.message().len()
    );
}

/// `lines` of `sku` with `quantity` each, for alice.
fn many(sku: &str, quantity: i64, lines: usize) -> OrderInput {
    OrderInput {
        items: (0..lines)
            .map(|_| OrderItem {
                sku: sku.into(),
                quantity,
            })
            .collect(),
        ..input("cust-alice", 100, &[])
    }
}

async fn nothing_written(p: &TestParticipant, tables: &[&str]) {
    for table in tables.iter().chain(&["inbox", "outbox"]) {
        assert_eq!(p.count(table).await, 0, "{table} was written");
    }
}

#[tokio::test]
async fn inventory_refuses_sums_that_would_wrap_and_moves_no_stock() {
    let p = TestParticipant::start(Kind::Inventory).await;
    let mut client = InventoryServiceClient::new(p.channel.clone());
    let stock = || async {
        p.db.query_one("SELECT stock FROM items WHERE sku = 'sku-widget'", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let before = stock().await;
    let saga = Uuid::now_v7();
    // Enough lines of the largest quantity to wrap an i64 sum to a negative
    // number, which would *add* stock.
    let wrap = many("sku-widget", MAX_UNITS - 1, 40_000);
    refused(
        client
            .reserve_inventory(command(saga, 2, "reserve_inventory", &wrap))
            .await,
        "input.items",
    );
    // Two lines whose sum passes the bound.
    let past = many("sku-widget", MAX_UNITS - 1, 2);
    refused(
        client
            .reserve_inventory(command(saga, 2, "reserve_inventory", &past))
            .await,
        "input.items",
    );
    // A NUL byte in a sku.
    let nul = input("cust-alice", 100, &[("sku-\0widget", 1)]);
    refused(
        client
            .reserve_inventory(command(saga, 2, "reserve_inventory", &nul))
            .await,
        "input.items[0].sku",
    );
    assert_eq!(stock().await, before);
    nothing_written(&p, &["reservations"]).await;

    // The catalogue look-up refuses NUL bytes and oversized skus too.
    for (skus, field) in [
        (vec!["sku-\0widget".to_owned()], "skus[0]"),
        (vec!["sku-widget".to_owned(), "s".repeat(201)], "skus[1]"),
        (vec!["sku-widget".to_owned(); 1001], "skus"),
    ] {
        refused(client.get_items(GetItemsRequest { skus }).await, field);
    }
}

#[tokio::test]
async fn payment_refuses_nul_bytes_and_unbounded_fields() {
    let p = TestParticipant::start(Kind::Payment).await;
    let mut client = PaymentServiceClient::new(p.channel.clone());
    let saga = Uuid::now_v7();
    let cases: Vec<(OrderInput, &str)> = vec![
        (
            input("cust-\0alice", 100, &[("sku-widget", 1)]),
            "input.customer_id",
        ),
        (
            input(&"c".repeat(201), 100, &[("sku-widget", 1)]),
            "input.customer_id",
        ),
        (
            input("cust-alice", MAX_UNITS, &[("sku-widget", 1)]),
            "input.amount_cents",
        ),
        (
            OrderInput {
                currency: "Z".repeat(1 << 20),
                ..input("cust-alice", 100, &[("sku-widget", 1)])
            },
            "input.currency",
        ),
    ];
    for (bad, field) in cases {
        refused(
            client
                .process_payment(command(saga, 1, "process_payment", &bad))
                .await,
            field,
        );
    }
    let unbounded_step = StepCommand {
        step_name: "x".repeat(1 << 16),
        ..command(
            saga,
            1,
            "process_payment",
            &input("cust-alice", 1, &[("s", 1)]),
        )
    };
    refused(client.process_payment(unbounded_step).await, "step_name");
    nothing_written(&p, &["payments"]).await;
    let credit: i64 =
        p.db.query_one(
            "SELECT sum(credit_limit_cents - available_cents)::bigint FROM customers",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(credit, 0, "no credit was used");

    refused(
        client
            .get_customers(GetCustomersRequest {
                customer_ids: vec!["cust-\0alice".into()],
            })
            .await,
        "customer_ids[0]",
    );
    let known = client
        .get_customers(GetCustomersRequest {
            customer_ids: vec!["cust-alice".into(), "cust-nobody".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = known
        .customers
        .iter()
        .map(|c| c.customer_id.as_str())
        .collect();
    assert_eq!(ids, ["cust-alice"]);
}

#[tokio::test]
async fn order_refuses_a_forged_input_and_writes_no_order() {
    let p = TestParticipant::start(Kind::Order).await;
    let mut client = OrderServiceClient::new(p.channel.clone());
    let saga = Uuid::now_v7();
    let too_many = many("sku-widget", 1, 101);
    refused(
        client
            .create_order(command(saga, 0, "create_order", &too_many))
            .await,
        "input.items",
    );
    let mut raw = command(
        saga,
        0,
        "create_order",
        &input("cust-alice", 1, &[("s", 1)]),
    );
    raw.input = input("cust-alice", 1, &[("s\u{1b}[2J", 1)]).encode_to_vec();
    refused(client.create_order(raw).await, "input.items[0].sku");
    nothing_written(&p, &["orders"]).await;
}

/// A call of `method` on the library-served `service`, with `input`.
async fn by_path(
    p: &TestParticipant,
    path: &'static str,
    input: &[u8],
    saga_id: &str,
) -> Result<sagaflow_protos::participant::v1::CommandAck, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(p.channel.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let command = StepCommand {
        command_id: Uuid::now_v7().to_string(),
        saga_id: saga_id.to_owned(),
        step: 0,
        step_name: "reserve_flight".into(),
        attempt: 1,
        saga_type: "trip".into(),
        input: input.to_vec(),
    };
    grpc.unary(
        tonic::Request::new(command),
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        tonic_prost::ProstCodec::default(),
    )
    .await
    .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn forged_commands_to_a_library_participant_write_nothing() {
    let p = TestParticipant::start(Kind::Flight).await;
    const RESERVE: &str = "/sagaflow.trip.v1.FlightService/Reserve";
    let saga = Uuid::now_v7().to_string();
    let long = format!(r#"{{"traveller":"ann","flight":"{}"}}"#, "F".repeat(5000));
    for (input, field) in [
        (&b"\x0a\x03abc"[..], "input"),
        (b"{", "input"),
        (b"[]", "input"),
        (br#"{"flight":"SF-100"}"#, "input.traveller"),
        (
            br#"{"traveller":"a\u0000b","flight":"SF-100"}"#,
            "input.traveller",
        ),
        (br#"{"traveller":"ann","flight":1e308}"#, "input.flight"),
        (long.as_bytes(), "input.flight"),
    ] {
        refused(by_path(&p, RESERVE, input, &saga).await, field);
    }
    refused(
        by_path(
            &p,
            RESERVE,
            br#"{"traveller":"ann","flight":"SF-100"}"#,
            "0",
        )
        .await,
        "saga_id",
    );
    let unknown = by_path(&p, "/sagaflow.trip.v1.FlightService/Drop", b"{}", &saga)
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::Unimplemented, "{unknown:?}");
    for table in ["inbox", "outbox", "reservations"] {
        assert_eq!(p.count(table).await, 0, "{table}");
    }
    let taken: i64 =
        p.db.query_one("SELECT sum(taken)::bigint FROM resources", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(taken, 0);
}
