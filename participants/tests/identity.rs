//! Only the orchestrator's identity may call a participant's service, over
//! mutual TLS: a certificate from the same CA with another name is
//! PERMISSION_DENIED on step RPCs and read-only look-ups alike and writes
//! nothing; no client certificate fails the handshake; gRPC health answers
//! any certificate from the CA.

mod support;

use sagaflow_participants::Kind;
use sagaflow_protos::participant::v1::GetItemsRequest;
use sagaflow_protos::participant::v1::inventory_service_client::InventoryServiceClient;
use sagaflow_protos::participant::v1::order_service_client::OrderServiceClient;
use support::{Caller, TestParticipant, command, input};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use uuid::Uuid;

fn catalogue() -> GetItemsRequest {
    GetItemsRequest {
        skus: vec!["sku-widget".into()],
    }
}

#[tokio::test]
async fn another_identity_from_the_same_ca_is_denied_and_writes_nothing() {
    let p = TestParticipant::start(Kind::Order).await;
    let mut rogue = OrderServiceClient::new(p.channel_as(Caller::Rogue));
    let cmd = command(
        Uuid::now_v7(),
        0,
        "create_order",
        &input("cust-alice", 100, &[("sku-widget", 1)]),
    );

    let refused = rogue.create_order(cmd.clone()).await.unwrap_err();

    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        refused.message(),
        "client identity: the client certificate names \"sagaflow-rogue\"; \
         only sagaflow-orchestrator may call this service"
    );
    assert_eq!(p.count("orders").await, 0);
    assert_eq!(p.count("inbox").await, 0);
    assert_eq!(p.count("outbox").await, 0);
    // The same command from the orchestrator's identity is accepted.
    let mut orchestrator = OrderServiceClient::new(p.channel.clone());
    orchestrator.create_order(cmd).await.unwrap();
    assert_eq!(p.count("orders").await, 1);
}

#[tokio::test]
async fn read_only_look_ups_are_pinned_too_and_health_is_not() {
    let p = TestParticipant::start(Kind::Inventory).await;

    let refused = InventoryServiceClient::new(p.channel_as(Caller::Rogue))
        .get_items(catalogue())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    let items = InventoryServiceClient::new(p.channel.clone())
        .get_items(catalogue())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(items.items.len(), 1);

    let health = HealthClient::new(p.channel_as(Caller::Rogue))
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);
}

#[tokio::test]
async fn a_client_without_a_certificate_fails_the_handshake() {
    let p = TestParticipant::start(Kind::Inventory).await;

    let failed = InventoryServiceClient::new(p.channel_as(Caller::NoCertificate))
        .get_items(catalogue())
        .await
        .unwrap_err();

    // A transport error, no status from the service: the server ends the
    // handshake with an alert (under TLS 1.3 the gRPC client may see it or
    // just the closed connection; the raw handshake always sees it).
    assert!(
        matches!(
            failed.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
        ),
        "{failed:?}"
    );
    let handshake = sagaflow_common::security::probe::without_certificate(
        &p.addr.to_string(),
        "localhost",
        support::certs().ca_pem.as_bytes(),
    )
    .await
    .unwrap();
    assert!(handshake.contains("CertificateRequired"), "{handshake}");
}
