//! Trace context travels from the incoming gRPC metadata into the outbox row.
//!
//! Own test binary: it installs the global telemetry subscriber.

mod support;

use opentelemetry::trace::TraceContextExt as _;
use sagaflow_common::{telemetry, trace};
use sagaflow_participants::Kind;
use sagaflow_protos::participant::v1::order_service_client::OrderServiceClient;
use support::{TestParticipant, command, input};
use uuid::Uuid;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test]
async fn the_outbox_row_carries_a_child_of_the_callers_trace() {
    let _telemetry = telemetry::init("sagaflow-participants-test").expect("telemetry");
    let p = TestParticipant::start(Kind::Order).await;
    let mut client = OrderServiceClient::new(p.channel.clone());
    let caller_span = "00f067aa0ba902b7";
    let mut request = tonic::Request::new(command(
        Uuid::now_v7(),
        0,
        "create_order",
        &input("cust-alice", 1, &[("sku-widget", 1)]),
    ));
    trace::inject_traceparent(
        request.metadata_mut(),
        &format!("00-{TRACE_ID}-{caller_span}-01"),
    );

    client.create_order(request).await.unwrap();

    let outbox = p.outbox().await;
    let stored = outbox[0]
        .traceparent
        .as_deref()
        .expect("traceparent stored");
    let cx = trace::context_from_traceparent(stored);
    let span = cx.span();
    let stored_context = span.span_context();
    assert_eq!(
        stored_context.trace_id().to_string(),
        TRACE_ID,
        "same trace"
    );
    assert_ne!(
        stored_context.span_id().to_string(),
        caller_span,
        "the participant's own span"
    );
}
