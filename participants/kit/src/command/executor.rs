//! Runs one step command: validate, then inbox + decision + outbox in one
//! transaction. The only place a step RPC's error becomes a `tonic::Status`.

use std::sync::Arc;

use opentelemetry::trace::TraceContextExt as _;
use prost::Message as _;
use sagaflow_common::trace::SpanKind;
use sagaflow_common::{outbox, trace};
use sagaflow_protos::participant::v1::{CommandAck, StepCommand, command_ack};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use uuid::Uuid;

use super::envelope::{build, event_type, outcome_name};
use super::{Command, CommandKind, DecisionFuture, Outcome, Rpc, Tx, inbox};
use crate::Error;
use crate::metrics::{Ended, Metrics};

/// Handles the step RPCs of one participant; cheap to clone.
#[derive(Clone)]
pub struct Executor {
    /// The participant's own database.
    pool: deadpool_postgres::Pool,
    /// Written into every event (`EventEnvelope.participant`, event types).
    participant: &'static str,
    /// The gRPC service it serves ("sagaflow.participant.v1.OrderService"),
    /// for span names.
    service: &'static str,
    /// Counts how each command ended.
    metrics: Arc<Metrics>,
}

impl Executor {
    pub fn new(
        pool: deadpool_postgres::Pool,
        participant: &'static str,
        service: &'static str,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            pool,
            participant,
            service,
            metrics,
        }
    }

    /// The participant's pool, for read-only RPCs outside the contract.
    pub fn pool(&self) -> &deadpool_postgres::Pool {
        &self.pool
    }

    /// Handle `request` for `rpc`: `decide` runs inside the transaction, after
    /// the inbox claim, only for a command id seen for the first time.
    pub async fn handle<F>(
        &self,
        rpc: Rpc,
        request: Request<StepCommand>,
        decide: F,
    ) -> Result<Response<CommandAck>, Status>
    where
        F: for<'t> FnOnce(&'t Tx<'t>, &'t Command) -> DecisionFuture<'t> + Send,
    {
        // The RPC's server span (`package.Service/Method`), a child of the
        // orchestrator's client span.
        let span = trace::rpc_span(
            &format!("/{}/{}", self.service, rpc.method),
            SpanKind::Server,
        );
        span.set_attribute("participant", self.participant);
        span.set_attribute(
            "saga.command.kind",
            match rpc.kind {
                CommandKind::Compensation => "compensation",
                _ => "action",
            },
        );
        let parent = trace::context_from_metadata(request.metadata());
        if parent.span().span_context().is_valid() {
            // Fails only when no OpenTelemetry layer is installed: then there
            // is no trace to join anyway.
            let _ = span.set_parent(parent);
        }
        let raw = request.into_inner();
        let started = std::time::Instant::now();
        async move {
            let result = match Command::parse(raw) {
                Ok(cmd) => {
                    let span = tracing::Span::current();
                    span.set_attribute("saga.id", cmd.saga_id.to_string());
                    if !cmd.saga_type.is_empty() {
                        span.set_attribute("saga.type", cmd.saga_type.clone());
                    }
                    span.set_attribute("saga.step", cmd.step_name.clone());
                    span.set_attribute("saga.step.index", i64::from(cmd.step));
                    span.set_attribute("command.id", cmd.command_id.to_string());
                    span.set_attribute("saga.command.attempt", i64::from(cmd.attempt));
                    self.execute(&rpc, &cmd, decide).await
                }
                Err(e) => Err(e),
            };

            let ended = match &result {
                Ok(ack) if ack.status() == command_ack::Status::Duplicate => Ended::Repeat,
                Ok(ack) if ack.outcome == Outcome::Refused as i32 => Ended::Refused,
                Ok(_) => Ended::Succeeded,
                Err(Error::InvalidArgument { .. }) => Ended::Invalid,
                Err(Error::Database(_) | Error::Pool(_) | Error::Unexpected(_)) => Ended::Failed,
            };
            self.metrics
                .ended(&rpc, ended, started.elapsed().as_secs_f64());
            let span = tracing::Span::current();
            match result {
                Ok(ack) => {
                    span.set_attribute("event.id", ack.event_id.clone());
                    trace::rpc_status(&span, SpanKind::Server, tonic::Code::Ok, "");
                    Ok(Response::new(ack))
                }
                Err(e) => {
                    let status = Status::from(e);
                    trace::rpc_status(&span, SpanKind::Server, status.code(), status.message());
                    Err(status)
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn execute<F>(&self, rpc: &Rpc, cmd: &Command, decide: F) -> Result<CommandAck, Error>
    where
        F: for<'t> FnOnce(&'t Tx<'t>, &'t Command) -> DecisionFuture<'t> + Send,
    {
        let traceparent = trace::current_traceparent();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;

        let kind = rpc.kind;
        let claimed = inbox::claim(&tx, cmd, kind)
            .instrument(child_span("participant.inbox", cmd))
            .await?;
        if let Some(stored) = claimed {
            // The first copy of the event may have been lost on its way: emit
            // it again under the same event id; the orchestrator dedupes.
            outbox::insert(
                &tx,
                stored.event_id,
                cmd.saga_id,
                &stored.event_type,
                &stored.envelope,
                traceparent.as_deref(),
            )
            .await?;
            tx.commit().await?;
            let span = tracing::Span::current();
            span.set_attribute(
                "command.outcome",
                outcome_name(stored.outcome).to_ascii_lowercase(),
            );
            span.set_attribute("command.repeat", true);
            tracing::debug!(event.id = %stored.event_id, reason = %stored.reason, "repeated command: stored outcome re-emitted");
            return Ok(ack(
                command_ack::Status::Duplicate,
                stored.event_id,
                stored.outcome,
                stored.reason,
                stored.output,
            ));
        }

        let decided = child_span("participant.decide", cmd);
        let decision = decide(&tx, cmd).instrument(decided.clone()).await?;
        decided.set_attribute(
            "command.outcome",
            outcome_name(decision.outcome).to_ascii_lowercase(),
        );
        if !decision.reason.is_empty() {
            decided.set_attribute("command.reason", decision.reason.clone());
        }
        // An output too large (or not an object) is the participant's bug:
        // nothing is committed, and the orchestrator sees the error.
        let output = match &decision.output {
            None => String::new(),
            Some(v) => sagaflow_common::output::encode(v)
                .map_err(|problem| anyhow::anyhow!("the output of {} {problem}", cmd.step_name))?,
        };
        let event_id = Uuid::now_v7();
        let event = build(event_id, self.participant, kind, cmd, &decision, output);
        let encoded = event.encode_to_vec();
        // The inbox answer and the outbox row in one round trip (pipelined).
        let event_type = event_type(&event);
        let written = child_span("participant.outbox", cmd);
        written.set_attribute("event.id", event_id.to_string());
        written.set_attribute("event.type", event_type.clone());
        async {
            let (recorded, inserted) = futures::join!(
                inbox::record(&tx, cmd.command_id, event_id, &event, &encoded),
                outbox::insert(
                    &tx,
                    event_id,
                    cmd.saga_id,
                    &event_type,
                    &encoded,
                    traceparent.as_deref(),
                )
            );
            recorded?;
            inserted?;
            tx.commit().await?;
            Ok::<(), Error>(())
        }
        .instrument(written)
        .await?;
        if decision.payload.get("tombstone") == Some(&serde_json::Value::Bool(true)) {
            self.metrics.tombstone(rpc);
        }
        tracing::Span::current().set_attribute(
            "command.outcome",
            outcome_name(decision.outcome).to_ascii_lowercase(),
        );
        tracing::debug!(event.id = %event_id, reason = %decision.reason, "command handled");
        Ok(ack(
            command_ack::Status::Accepted,
            event_id,
            decision.outcome,
            decision.reason,
            event.output,
        ))
    }
}

/// A span for one part of handling `cmd` (inbox claim, business decision,
/// inbox answer + outbox row + commit), under the RPC's span.
fn child_span(name: &'static str, cmd: &Command) -> tracing::Span {
    tracing::info_span!(
        "participant",
        otel.name = name,
        saga.id = %cmd.saga_id,
        saga.step = %cmd.step_name,
        command.id = %cmd.command_id,
    )
}

fn ack(
    status: command_ack::Status,
    event_id: Uuid,
    outcome: Outcome,
    reason: String,
    output: String,
) -> CommandAck {
    let mut ack = CommandAck {
        event_id: event_id.to_string(),
        outcome: outcome as i32,
        reason,
        output,
        ..CommandAck::default()
    };
    ack.set_status(status);
    ack
}
