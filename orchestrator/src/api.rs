//! The public gRPC API: `PlaceOrder`, `GetSaga`, `ListSagas`, and the
//! operator actions `RetrySaga`, `CancelSaga` and the dead-letter RPCs
//! ([`deadletters`]). Tokens are checked before any of this runs
//! ([`crate::auth`]).
//!
//! Bad input is answered with `INVALID_ARGUMENT` naming the field and the
//! reason, before anything is written. An operator action the saga's state
//! does not allow is `FAILED_PRECONDITION` (the state machine decides; see
//! [`refused`]).

mod deadletters;

use std::sync::Arc;

use prost::Message as _;
use sagaflow_common::pubsub::EventPublisher;
use sagaflow_protos::orchestrator::v1 as pb;
use sagaflow_protos::orchestrator::v1::saga_service_server::SagaService;
use sagaflow_protos::participant::v1::{
    GetItemsRequest, OrderInput, inventory_service_client::InventoryServiceClient,
};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::definitions::order;
use crate::driver::Driver;
use crate::saga::{self, Event};
use crate::store::{self, Operated, Placed};
use crate::views;

pub struct Api {
    pub driver: Driver,
    /// The inventory participant, whose catalogue validates order items.
    pub inventory: Channel,
    /// Publishes re-driven dead letters to the events topic.
    pub redrive: Arc<EventPublisher>,
    pub events_topic: String,
}

const MAX_KEY_LEN: usize = 200;
const MAX_ITEMS: usize = 100;

pub(crate) fn invalid(field: impl std::fmt::Display, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {reason}"))
}

/// Check a `PlaceOrder` request's shape (not yet the catalogue).
pub fn validate(req: &pb::PlaceOrderRequest) -> Result<OrderInput, Status> {
    let key = req.idempotency_key.trim();
    if key.is_empty() {
        return Err(invalid("idempotency_key", "is required"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(invalid(
            "idempotency_key",
            format!("longer than {MAX_KEY_LEN} bytes"),
        ));
    }
    let customer = req.customer_id.trim();
    if customer.is_empty() {
        return Err(invalid("customer_id", "is required"));
    }
    if customer.len() > MAX_KEY_LEN || customer.chars().any(char::is_control) {
        return Err(invalid("customer_id", "is malformed"));
    }
    if req.items.is_empty() {
        return Err(invalid("items", "at least one item is required"));
    }
    if req.items.len() > MAX_ITEMS {
        return Err(invalid("items", format!("at most {MAX_ITEMS} items")));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, item) in req.items.iter().enumerate() {
        let sku = item.sku.trim();
        if sku.is_empty() {
            return Err(invalid(format!("items[{i}].sku"), "is required"));
        }
        if sku.len() > MAX_KEY_LEN || sku.chars().any(char::is_control) {
            return Err(invalid(format!("items[{i}].sku"), "is malformed"));
        }
        if !seen.insert(sku) {
            return Err(invalid(
                format!("items[{i}].sku"),
                format!("{sku} appears twice"),
            ));
        }
        if item.quantity <= 0 {
            return Err(invalid(
                format!("items[{i}].quantity"),
                format!("must be positive, got {}", item.quantity),
            ));
        }
    }
    if req.amount_cents <= 0 {
        return Err(invalid(
            "amount_cents",
            format!("must be positive, got {}", req.amount_cents),
        ));
    }
    let currency = match req.currency.trim() {
        "" => "EUR".to_owned(),
        c if c.len() == 3 && c.chars().all(|ch| ch.is_ascii_uppercase()) => c.to_owned(),
        c => {
            return Err(invalid(
                "currency",
                format!("{c:?} is not an ISO 4217 code"),
            ));
        }
    };
    Ok(OrderInput {
        customer_id: customer.to_owned(),
        items: req
            .items
            .iter()
            .map(|i| sagaflow_protos::participant::v1::OrderItem {
                sku: i.sku.trim().to_owned(),
                quantity: i.quantity,
            })
            .collect(),
        amount_cents: req.amount_cents,
        currency,
    })
}

impl Api {
    async fn check_catalogue(&self, input: &OrderInput) -> Result<(), Status> {
        let mut client = InventoryServiceClient::new(self.inventory.clone());
        let skus: Vec<String> = input.items.iter().map(|i| i.sku.clone()).collect();
        let known = client
            .get_items(GetItemsRequest { skus: skus.clone() })
            .await
            .map_err(|e| {
                Status::unavailable(format!("inventory catalogue unavailable: {}", e.message()))
            })?
            .into_inner();
        for (i, sku) in skus.iter().enumerate() {
            if !known.items.iter().any(|k| &k.sku == sku) {
                return Err(invalid(
                    format!("items[{i}].sku"),
                    format!("unknown item {sku}"),
                ));
            }
        }
        Ok(())
    }
}

/// Longest operator reason kept.
const MAX_REASON_LEN: usize = 1000;

fn saga_id_of(raw: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(raw.trim()).map_err(|_| invalid("saga_id", "is not a UUID"))
}

/// An optional idempotency key: trimmed, `None` when empty.
fn request_id_of(raw: &str) -> Result<Option<&str>, Status> {
    match raw.trim() {
        "" => Ok(None),
        id if id.len() > MAX_KEY_LEN => Err(invalid(
            "request_id",
            format!("longer than {MAX_KEY_LEN} bytes"),
        )),
        id if id.chars().any(char::is_control) => Err(invalid("request_id", "is malformed")),
        id => Ok(Some(id)),
    }
}

fn reason_of(raw: &str, required: bool) -> Result<Option<&str>, Status> {
    match raw.trim() {
        "" if required => Err(invalid("reason", "is required")),
        "" => Ok(None),
        r if r.len() > MAX_REASON_LEN => Err(invalid(
            "reason",
            format!("longer than {MAX_REASON_LEN} bytes"),
        )),
        r => Ok(Some(r)),
    }
}

/// Why the state machine refused an operator action, as a status.
fn refused(e: saga::Error) -> Status {
    match e {
        saga::Error::NotRetryable { status } => Status::failed_precondition(format!(
            "saga_id: saga is {}; only COMPENSATION_FAILED sagas can be retried",
            status.as_str()
        )),
        saga::Error::NotCancellable { status } => Status::failed_precondition(format!(
            "saga_id: saga is {}; only RUNNING sagas can be cancelled",
            status.as_str()
        )),
        saga::Error::PastPivot { name, .. } => Status::failed_precondition(format!(
            "saga_id: saga is past its pivot: {name} is in flight and cannot be undone"
        )),
        e @ (saga::Error::UnknownStep { .. }
        | saga::Error::NeverSent { .. }
        | saga::Error::Contradiction { .. }
        | saga::Error::ShapeMismatch { .. }) => {
            tracing::error!(error = %e, "operator action on a saga the engine cannot apply");
            Status::internal(format!("saga_id: {e}"))
        }
    }
}

pub(crate) fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "request failed");
    Status::unavailable(format!("orchestrator storage unavailable: {e}"))
}

impl Api {
    /// Apply an operator action, carry out its effects after the commit and
    /// answer with the saga as it is then.
    async fn operate(
        &self,
        saga_id: Uuid,
        event: Event,
        request_id: Option<&str>,
        annotation: String,
    ) -> Result<Response<pb::Saga>, Status> {
        let operated = store::operate(
            self.driver.pool(),
            store::Operation {
                saga_id,
                event: &event,
                request_id,
                annotation: Some(annotation),
                now: store::now_millis(),
            },
        )
        .await
        .map_err(internal)?;
        match operated {
            Operated::UnknownSaga => {
                return Err(Status::not_found(format!("saga_id: no saga {saga_id}")));
            }
            Operated::Refused(e) => return Err(refused(e)),
            Operated::RequestIdReused { saga_id, action } => {
                return Err(Status::already_exists(format!(
                    "request_id: already used to {action} saga {saga_id}"
                )));
            }
            Operated::Changed { ctx, effects } => {
                tracing::info!(saga.id = %saga_id, ?event, "operator action applied");
                self.driver.carry_out(&ctx, effects, None);
            }
            Operated::Repeated | Operated::Unchanged => {
                tracing::info!(saga.id = %saga_id, ?event, "operator action repeated; nothing to do");
            }
        }
        match views::get(self.driver.pool(), saga_id)
            .await
            .map_err(internal)?
        {
            Some(saga) => Ok(Response::new(saga)),
            None => Err(Status::not_found(format!("saga_id: no saga {saga_id}"))),
        }
    }
}

/// "operator (request r-1): payment service restored".
fn annotate(request_id: Option<&str>, reason: Option<&str>) -> String {
    let who = match request_id {
        Some(id) => format!("operator (request {id})"),
        None => "operator".to_owned(),
    };
    match reason {
        Some(r) => format!("{who}: {r}"),
        None => who,
    }
}

#[tonic::async_trait]
impl SagaService for Api {
    #[tracing::instrument(name = "saga.place_order", skip_all, fields(saga.id, otel.kind = "server"))]
    async fn place_order(
        &self,
        request: Request<pb::PlaceOrderRequest>,
    ) -> Result<Response<pb::PlaceOrderResponse>, Status> {
        let parent = sagaflow_common::trace::context_from_metadata(request.metadata());
        {
            use opentelemetry::trace::TraceContextExt as _;
            use tracing_opentelemetry::OpenTelemetrySpanExt as _;
            if parent.span().span_context().is_valid() {
                let _ = tracing::Span::current().set_parent(parent);
            }
        }
        let req = request.into_inner();
        let input = validate(&req)?;
        self.check_catalogue(&input).await?;
        let saga_id = Uuid::now_v7();
        tracing::Span::current().record("saga.id", tracing::field::display(saga_id));
        let placed = store::place(
            self.driver.pool(),
            store::NewSaga {
                saga_id,
                idempotency_key: req.idempotency_key.trim().to_owned(),
                definition: order::definition(),
                input: input.encode_to_vec(),
                traceparent: sagaflow_common::trace::current_traceparent(),
                now: store::now_millis(),
            },
        )
        .await
        .map_err(internal)?;
        match placed {
            Placed::Created {
                ctx,
                state,
                effects,
            } => {
                tracing::info!(saga.id = %saga_id, "order saga placed");
                self.driver.carry_out(&ctx, effects, None);
                Ok(Response::new(pb::PlaceOrderResponse {
                    saga_id: saga_id.to_string(),
                    created: true,
                    state: views::state_of(state.status) as i32,
                }))
            }
            Placed::Existing {
                saga_id,
                status,
                same_input: true,
            } => Ok(Response::new(pb::PlaceOrderResponse {
                saga_id: saga_id.to_string(),
                created: false,
                state: views::state_of(status) as i32,
            })),
            Placed::Existing {
                saga_id,
                same_input: false,
                ..
            } => Err(Status::already_exists(format!(
                "idempotency_key: already used by saga {saga_id} for a different order"
            ))),
        }
    }

    async fn get_saga(
        &self,
        request: Request<pb::GetSagaRequest>,
    ) -> Result<Response<pb::Saga>, Status> {
        let id = saga_id_of(&request.get_ref().saga_id)?;
        match views::get(self.driver.pool(), id).await.map_err(internal)? {
            Some(saga) => Ok(Response::new(saga)),
            None => Err(Status::not_found(format!("saga_id: no saga {id}"))),
        }
    }

    async fn list_sagas(
        &self,
        request: Request<pb::ListSagasRequest>,
    ) -> Result<Response<pb::ListSagasResponse>, Status> {
        let req = request.into_inner();
        let page_size = match req.page_size {
            0 => 50,
            n @ 1..=500 => n,
            n => return Err(invalid("page_size", format!("must be 1..500, got {n}"))),
        };
        let mut states = Vec::new();
        for (i, s) in req.states.iter().enumerate() {
            match views::status_of(*s) {
                Some(st) => states.push(st),
                None => {
                    return Err(invalid(
                        format!("states[{i}]"),
                        format!("unknown state {s}"),
                    ));
                }
            }
        }
        let after = match req.page_token.trim() {
            "" => None,
            t => Some(
                views::PageToken::decode(t).ok_or_else(|| invalid("page_token", "is malformed"))?,
            ),
        };
        let resp = views::list(self.driver.pool(), &states, page_size, after)
            .await
            .map_err(internal)?;
        Ok(Response::new(resp))
    }

    #[tracing::instrument(name = "saga.retry", skip_all, fields(saga.id = %request.get_ref().saga_id.trim(), otel.kind = "server"))]
    async fn retry_saga(
        &self,
        request: Request<pb::RetrySagaRequest>,
    ) -> Result<Response<pb::Saga>, Status> {
        let req = request.into_inner();
        let saga_id = saga_id_of(&req.saga_id)?;
        let request_id = request_id_of(&req.request_id)?;
        let reason = reason_of(&req.reason, false)?;
        self.operate(
            saga_id,
            Event::Retry,
            request_id,
            annotate(request_id, reason),
        )
        .await
    }

    #[tracing::instrument(name = "saga.cancel", skip_all, fields(saga.id = %request.get_ref().saga_id.trim(), otel.kind = "server"))]
    async fn cancel_saga(
        &self,
        request: Request<pb::CancelSagaRequest>,
    ) -> Result<Response<pb::Saga>, Status> {
        let req = request.into_inner();
        let saga_id = saga_id_of(&req.saga_id)?;
        let request_id = request_id_of(&req.request_id)?;
        let reason = reason_of(&req.reason, true)?.unwrap_or_default();
        self.operate(
            saga_id,
            Event::Cancel {
                reason: reason.to_owned(),
            },
            request_id,
            annotate(request_id, None),
        )
        .await
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        self.list_letters(request.into_inner()).await
    }

    #[tracing::instrument(name = "saga.redrive_dead_letters", skip_all, fields(otel.kind = "server"))]
    async fn redrive_dead_letters(
        &self,
        request: Request<pb::RedriveDeadLettersRequest>,
    ) -> Result<Response<pb::RedriveDeadLettersResponse>, Status> {
        self.redrive_letters(request.into_inner()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sagaflow_protos::participant::v1::OrderItem;

    fn good() -> pb::PlaceOrderRequest {
        pb::PlaceOrderRequest {
            idempotency_key: "k1".into(),
            customer_id: "cust-alice".into(),
            items: vec![OrderItem {
                sku: "sku-widget".into(),
                quantity: 2,
            }],
            amount_cents: 1000,
            currency: String::new(),
        }
    }

    fn rejects(mutate: impl FnOnce(&mut pb::PlaceOrderRequest), field: &str) {
        let mut r = good();
        mutate(&mut r);
        let e = validate(&r).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().starts_with(field),
            "{} should name {field}",
            e.message()
        );
    }

    #[test]
    fn a_good_request_validates_with_default_currency() {
        let input = validate(&good()).unwrap();
        assert_eq!(input.currency, "EUR");
        assert_eq!(input.amount_cents, 1000);
    }

    #[test]
    fn operator_fields_are_checked_and_named() {
        let named = |r: Result<_, Status>, field: &str| {
            let e = r.expect_err("must be refused");
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().starts_with(field), "{}", e.message());
        };
        named(saga_id_of("nope").map(|_| ()), "saga_id");
        named(request_id_of(&"r".repeat(201)).map(|_| ()), "request_id");
        named(request_id_of("a\nb").map(|_| ()), "request_id");
        named(reason_of("  ", true).map(|_| ()), "reason");
        named(reason_of(&"x".repeat(1001), false).map(|_| ()), "reason");
        assert_eq!(request_id_of(" r-1 ").unwrap(), Some("r-1"));
        assert_eq!(request_id_of("").unwrap(), None);
        assert_eq!(reason_of("", false).unwrap(), None);
    }

    #[test]
    fn refusals_of_the_machine_are_failed_preconditions() {
        use crate::saga::Status as S;
        let cases = [
            (
                saga::Error::NotRetryable { status: S::Running },
                "saga_id: saga is RUNNING; only COMPENSATION_FAILED sagas can be retried",
            ),
            (
                saga::Error::NotCancellable {
                    status: S::Completed,
                },
                "saga_id: saga is COMPLETED; only RUNNING sagas can be cancelled",
            ),
            (
                saga::Error::PastPivot {
                    step: 3,
                    name: "approve_order".into(),
                },
                "saga_id: saga is past its pivot: approve_order is in flight and cannot be undone",
            ),
        ];
        for (e, message) in cases {
            let status = refused(e);
            assert_eq!(status.code(), tonic::Code::FailedPrecondition);
            assert_eq!(status.message(), message);
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        rejects(|r| r.idempotency_key = " ".into(), "idempotency_key");
        rejects(|r| r.idempotency_key = "x".repeat(201), "idempotency_key");
        rejects(|r| r.customer_id.clear(), "customer_id");
        rejects(|r| r.items.clear(), "items");
        rejects(|r| r.items[0].sku.clear(), "items[0].sku");
        rejects(|r| r.items[0].quantity = 0, "items[0].quantity");
        rejects(|r| r.items[0].quantity = -3, "items[0].quantity");
        rejects(|r| r.items.push(r.items[0].clone()), "items[1].sku");
        rejects(|r| r.amount_cents = 0, "amount_cents");
        rejects(|r| r.amount_cents = -1, "amount_cents");
        rejects(|r| r.currency = "euro".into(), "currency");
    }
}
