//! The public gRPC API: `PlaceOrder`, `GetSaga`, `ListSagas`.
//!
//! Bad input is answered with `INVALID_ARGUMENT` naming the field and the
//! reason, before anything is written.

use prost::Message as _;
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
use crate::store::{self, Placed};
use crate::views;

pub struct Api {
    pub driver: Driver,
    /// The inventory participant, whose catalogue validates order items.
    pub inventory: Channel,
}

const MAX_KEY_LEN: usize = 200;
const MAX_ITEMS: usize = 100;

fn invalid(field: impl std::fmt::Display, reason: impl std::fmt::Display) -> Status {
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

fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "request failed");
    Status::unavailable(format!("orchestrator storage unavailable: {e}"))
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
        let id = Uuid::parse_str(request.get_ref().saga_id.trim())
            .map_err(|_| invalid("saga_id", "is not a UUID"))?;
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
