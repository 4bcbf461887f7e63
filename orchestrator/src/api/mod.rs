//! The public gRPC API: `PlaceOrder` and `StartSaga`, `GetSaga`, `ListSagas`, and the
//! operator actions `RetrySaga`, `CancelSaga` and the dead-letter RPCs
//! ([`deadletters`]). Tokens are checked before any of this runs
//! ([`crate::auth`]).
//!
//! Bad input is answered with `INVALID_ARGUMENT` naming the field and the
//! reason, before anything is written ([`input`]). An operator action the
//! saga's state does not allow is `FAILED_PRECONDITION` (the state machine
//! decides); errors become statuses in one place ([`status`]).
//!
//! Layout: [`input`] (validation), [`currency`] (the ISO 4217 list),
//! [`lookup`] (placement-time checks against participants), [`status`].

pub mod currency;
pub mod deadletters;
pub mod definitions;
pub mod input;
pub mod lookup;
pub mod status;

use std::sync::Arc;

use prost::Message as _;
use sagaflow_common::pubsub::EventPublisher;
use sagaflow_common::trace::{self, SpanKind};
use sagaflow_protos::orchestrator::v1 as pb;
use sagaflow_protos::orchestrator::v1::saga_service_server::SagaService;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use uuid::Uuid;

use crate::definitions::input as schema_input;
use crate::definitions::order;
use crate::driver::Driver;
use crate::saga::Event;
use crate::store::{self, Existing, Operated, Placed};
use crate::views;
pub(crate) use input::invalid;
pub use lookup::{Known, Lookups};

pub struct Api {
    pub driver: Driver,
    /// Participants that check an order's items and customer at placement.
    pub lookups: Lookups,
    /// Publishes re-driven dead letters to the events topic.
    pub redrive: Arc<EventPublisher>,
    pub events_topic: String,
    /// Watchers' fan-out, their settings, and the shutdown that ends them.
    pub watch: Watching,
}

#[derive(Clone)]
pub struct Watching {
    /// The watchers' own connections: their reads never wait for, or take,
    /// the engine's.
    pub pool: deadpool_postgres::Pool,
    pub hub: Arc<crate::watch::Hub>,
    pub settings: crate::watch::Settings,
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl Api {
    async fn place(
        &self,
        req: pb::PlaceOrderRequest,
    ) -> Result<Response<pb::PlaceOrderResponse>, Status> {
        let (key, input) = input::place_order(&req)?;
        let encoded = input.encode_to_vec();
        // A repeat is answered from storage alone: it never waits on (or
        // fails with) a participant's look-up.
        if let Some(e) =
            store::find_by_key(self.driver.pool(), order::SAGA_TYPE, key, &encoded).await?
        {
            return existing(e);
        }
        self.lookups.check(&input).await?;
        let definition = crate::definitions::latest(order::SAGA_TYPE).ok_or_else(|| {
            Status::failed_precondition(
                "the order saga is not defined here: no order definition among SAGAFLOW_DEFINITIONS_DIR's files",
            )
        })?;
        self.start_new(definition, key, encoded).await
    }

    /// `StartSaga`: the order type goes through [`place`](Self::place)
    /// (its checks and its keys); any other type's input is checked
    /// against its schema and stored as canonical JSON.
    async fn start(
        &self,
        req: pb::StartSagaRequest,
    ) -> Result<Response<pb::StartSagaResponse>, Status> {
        let saga_type = input::required_key("saga_type", &req.saga_type)?;
        crate::definitions::file::check_type_name(saga_type)
            .map_err(|p| invalid("saga_type", p))?;
        let span = tracing::Span::current();
        span.set_attribute("saga.type", saga_type.to_owned());
        let definition = crate::definitions::latest(saga_type).ok_or_else(|| {
            Status::not_found(format!(
                "saga_type: no saga type {} is defined here (ListDefinitions lists them)",
                input::preview(saga_type)
            ))
        })?;
        let value =
            schema_input::parse(&req.input).map_err(|r| Status::invalid_argument(r.to_string()))?;
        schema_input::validate(&definition, &value)
            .map_err(|r| Status::invalid_argument(r.to_string()))?;
        let placed = if saga_type == order::SAGA_TYPE {
            let order = input::order_from_json(value, &req.idempotency_key)?;
            self.place(order).await.map_err(input::as_input_pointer)?
        } else {
            let key = input::required_key("idempotency_key", &req.idempotency_key)?;
            let encoded = schema_input::canonical(&value);
            match store::find_by_key(self.driver.pool(), saga_type, key, &encoded).await? {
                Some(e) => existing(e)?,
                None => self.start_new(definition, key, encoded).await?,
            }
        };
        let placed = placed.into_inner();
        Ok(Response::new(pb::StartSagaResponse {
            saga_id: placed.saga_id,
            created: placed.created,
            state: placed.state,
        }))
    }

    /// Store a new saga of `definition` with its encoded input, and set it
    /// going once committed.
    async fn start_new(
        &self,
        definition: Arc<crate::saga::Definition>,
        key: &str,
        input: Vec<u8>,
    ) -> Result<Response<pb::PlaceOrderResponse>, Status> {
        let saga_id = Uuid::now_v7();
        let span = tracing::Span::current();
        span.set_attribute("saga.id", saga_id.to_string());
        span.set_attribute("saga.type", definition.saga_type.clone());
        let placed = store::place(
            self.driver.pool(),
            store::NewSaga {
                saga_id,
                idempotency_key: key.to_owned(),
                definition,
                input,
                traceparent: sagaflow_common::trace::current_traceparent(),
            },
        )
        .await?;
        match placed {
            Placed::Created(committed) => {
                tracing::debug!(saga.id = %saga_id, saga.type = %committed.ctx.saga_type, "saga started");
                self.driver.metrics().started(&committed.ctx.saga_type);
                self.driver.carry_out(&committed, None);
                Ok(Response::new(pb::PlaceOrderResponse {
                    saga_id: saga_id.to_string(),
                    created: true,
                    state: views::state_of(committed.state.status) as i32,
                }))
            }
            Placed::Existing(e) => existing(e),
        }
    }

    /// The span of an operator RPC on `saga_id`: in the saga's own trace
    /// (so what it sets off is there too), linked to the caller's.
    async fn operator_span(
        &self,
        method: &str,
        request_md: &tonic::metadata::MetadataMap,
        saga_id: Uuid,
    ) -> tracing::Span {
        let saga = store::traceparent_of(self.driver.pool(), saga_id)
            .await
            .ok()
            .flatten();
        let span = server_span(method, request_md, saga.as_deref());
        span.set_attribute("saga.id", saga_id.to_string());
        span
    }

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
            },
        )
        .await?;
        match operated {
            Operated::UnknownSaga => {
                return Err(Status::not_found(format!("saga_id: no saga {saga_id}")));
            }
            Operated::Refused(e) => return Err(status::refused(e)),
            Operated::Unreadable { reason } => return Err(status::unreadable(&reason)),
            Operated::UnknownDefinition(e) => return Err(e.into()),
            Operated::RequestIdReused { saga_id, action } => {
                return Err(Status::already_exists(format!(
                    "request_id: already used to {action} saga {saga_id}"
                )));
            }
            Operated::Changed(committed) => {
                tracing::info!(saga.id = %saga_id, ?event, "operator action applied");
                self.driver
                    .carry_out(&committed, sagaflow_common::trace::current_traceparent());
            }
            Operated::Repeated | Operated::Unchanged => {
                tracing::info!(saga.id = %saga_id, ?event, "operator action repeated; nothing to do");
            }
        }
        match views::get(self.driver.pool(), saga_id).await? {
            Some(saga) => Ok(Response::new(saga)),
            None => Err(Status::not_found(format!("saga_id: no saga {saga_id}"))),
        }
    }
}

/// The server span of the API's `method`: a child of `parent` when given
/// (an operator action on a saga: the saga's trace), linked to the caller's
/// context; else a child of the caller's context when it sends one.
fn server_span(
    method: &str,
    request_md: &tonic::metadata::MetadataMap,
    parent: Option<&str>,
) -> tracing::Span {
    use opentelemetry::trace::TraceContextExt as _;
    let span = trace::rpc_span(
        &format!(
            "/{}/{method}",
            <pb::saga_service_server::SagaServiceServer<Api> as tonic::server::NamedService>::NAME
        ),
        SpanKind::Server,
    );
    let caller = trace::context_from_metadata(request_md);
    let caller = caller.span().span_context().clone();
    match parent {
        Some(tp) => {
            trace::set_parent(&span, Some(tp));
            span.add_link(caller);
        }
        None if caller.is_valid() => {
            let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(caller));
        }
        None => {}
    }
    span
}

/// Record how an API call ended on its span.
fn ended<T>(span: &tracing::Span, result: &Result<T, Status>) {
    match result {
        Ok(_) => trace::rpc_status(span, SpanKind::Server, tonic::Code::Ok, ""),
        Err(s) => trace::rpc_status(span, SpanKind::Server, s.code(), s.message()),
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

/// The answer for an idempotency key used before.
fn existing(e: Existing) -> Result<Response<pb::PlaceOrderResponse>, Status> {
    if !e.same_input {
        return Err(Status::already_exists(format!(
            "idempotency_key: already used by saga {} for a different input",
            e.saga_id
        )));
    }
    Ok(Response::new(pb::PlaceOrderResponse {
        saga_id: e.saga_id.to_string(),
        created: false,
        state: views::state_of(e.status) as i32,
    }))
}

#[tonic::async_trait]
impl SagaService for Api {
    type WatchSagaStream = crate::watch::Outgoing<pb::WatchSagaResponse>;
    type WatchSagasStream = crate::watch::Outgoing<pb::WatchSagasResponse>;

    async fn watch_saga(
        &self,
        request: Request<pb::WatchSagaRequest>,
    ) -> Result<Response<Self::WatchSagaStream>, Status> {
        let req = request.into_inner();
        let id = input::saga_id(&req.saga_id)?;
        let w = &self.watch;
        let stream = crate::watch::saga::watch(
            w.pool.clone(),
            w.hub.clone(),
            w.settings,
            w.shutdown.clone(),
            id,
            req.after_seq,
        )
        .await?;
        Ok(Response::new(stream))
    }

    async fn watch_sagas(
        &self,
        request: Request<pb::WatchSagasRequest>,
    ) -> Result<Response<Self::WatchSagasStream>, Status> {
        let w = &self.watch;
        let stream = crate::watch::list::watch(
            w.pool.clone(),
            w.hub.clone(),
            w.settings,
            w.shutdown.clone(),
            request.into_inner(),
        )
        .await?;
        Ok(Response::new(stream))
    }

    async fn place_order(
        &self,
        request: Request<pb::PlaceOrderRequest>,
    ) -> Result<Response<pb::PlaceOrderResponse>, Status> {
        // The saga's root span, or a child of the caller's when it sends a
        // `traceparent`: every later span of the saga hangs under it.
        let span = server_span("PlaceOrder", request.metadata(), None);
        let result = self
            .place(request.into_inner())
            .instrument(span.clone())
            .await;
        ended(&span, &result);
        result
    }

    async fn start_saga(
        &self,
        request: Request<pb::StartSagaRequest>,
    ) -> Result<Response<pb::StartSagaResponse>, Status> {
        // As PlaceOrder's: the root of the new saga's trace.
        let span = server_span("StartSaga", request.metadata(), None);
        let result = self
            .start(request.into_inner())
            .instrument(span.clone())
            .await;
        ended(&span, &result);
        result
    }

    async fn get_saga(
        &self,
        request: Request<pb::GetSagaRequest>,
    ) -> Result<Response<pb::Saga>, Status> {
        let id = input::saga_id(&request.get_ref().saga_id)?;
        match views::get(self.driver.pool(), id).await? {
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
        if req.states.len() > 16 {
            return Err(invalid("states", "at most 16 states"));
        }
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
        let resp = views::list(self.driver.pool(), &states, page_size, after).await?;
        Ok(Response::new(resp))
    }

    async fn retry_saga(
        &self,
        request: Request<pb::RetrySagaRequest>,
    ) -> Result<Response<pb::Saga>, Status> {
        let saga_id = input::saga_id(&request.get_ref().saga_id)?;
        let span = self
            .operator_span("RetrySaga", request.metadata(), saga_id)
            .await;
        let result = self
            .retry(saga_id, request.into_inner())
            .instrument(span.clone())
            .await;
        ended(&span, &result);
        result
    }

    async fn cancel_saga(
        &self,
        request: Request<pb::CancelSagaRequest>,
    ) -> Result<Response<pb::Saga>, Status> {
        let saga_id = input::saga_id(&request.get_ref().saga_id)?;
        let span = self
            .operator_span("CancelSaga", request.metadata(), saga_id)
            .await;
        let result = self
            .cancel(saga_id, request.into_inner())
            .instrument(span.clone())
            .await;
        ended(&span, &result);
        result
    }

    async fn list_definitions(
        &self,
        request: Request<pb::ListDefinitionsRequest>,
    ) -> Result<Response<pb::ListDefinitionsResponse>, Status> {
        definitions::list(self.driver.pool(), request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_definition(
        &self,
        request: Request<pb::GetDefinitionRequest>,
    ) -> Result<Response<pb::SagaDefinition>, Status> {
        definitions::get(self.driver.pool(), request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        self.list_letters(request.into_inner()).await
    }

    async fn redrive_dead_letters(
        &self,
        request: Request<pb::RedriveDeadLettersRequest>,
    ) -> Result<Response<pb::RedriveDeadLettersResponse>, Status> {
        let span = server_span("RedriveDeadLetters", request.metadata(), None);
        let result = self
            .redrive_letters(request.into_inner())
            .instrument(span.clone())
            .await;
        ended(&span, &result);
        result
    }
}

impl Api {
    async fn retry(
        &self,
        saga_id: Uuid,
        req: pb::RetrySagaRequest,
    ) -> Result<Response<pb::Saga>, Status> {
        let request_id = input::key("request_id", &req.request_id)?;
        let reason = input::reason(&req.reason, false)?;
        self.operate(
            saga_id,
            Event::Retry,
            request_id,
            annotate(request_id, reason),
        )
        .await
    }

    async fn cancel(
        &self,
        saga_id: Uuid,
        req: pb::CancelSagaRequest,
    ) -> Result<Response<pb::Saga>, Status> {
        let request_id = input::key("request_id", &req.request_id)?;
        let reason = input::reason(&req.reason, true)?.unwrap_or_default();
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
}
