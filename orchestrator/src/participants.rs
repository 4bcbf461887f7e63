//! Sending step commands to participants over gRPC.
//!
//! The engine calls any step of any saga definition the same way: a unary
//! call to the step's method path with a `StepCommand`, answered by a
//! `CommandAck`. The outcome itself comes back later as an event.
//!
//! Over TLS (the default) every channel verifies the participant against
//! the participant CA and presents the orchestrator's client certificate,
//! the one identity participants accept.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::BoxFuture;
use sagaflow_common::security::tls::ClientTls;
use sagaflow_common::trace;
use sagaflow_protos::participant::v1::{CommandAck, StepCommand};
use tonic::transport::{Channel, Endpoint};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Why a send failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Worth retrying: unreachable, overloaded, database down.
    #[error("transient: {0}")]
    Transient(String),
    /// Retrying the same request cannot help (a bug or a misconfiguration).
    #[error("permanent: {0}")]
    Permanent(String),
    /// The participant answered `INVALID_ARGUMENT`: it rejected the command
    /// as malformed and wrote nothing. Its message.
    #[error("invalid: {0}")]
    Invalid(String),
}

/// Sends one command; a seam so the driver can be tested without a network.
pub trait ParticipantClient: Send + Sync + 'static {
    fn send(
        &self,
        participant: &str,
        method: &str,
        command: StepCommand,
        traceparent: Option<String>,
    ) -> BoxFuture<'static, Result<CommandAck, SendError>>;
}

/// Participants reached over tonic channels (connected lazily, reconnecting
/// by themselves).
#[derive(Clone)]
pub struct GrpcParticipants {
    channels: HashMap<String, Channel>,
    timeout: Duration,
}

impl GrpcParticipants {
    /// `endpoints`: participant key → URL ("https://127.0.0.1:50061");
    /// `tls`: `None` for plaintext (insecure mode).
    pub fn new(
        endpoints: &HashMap<String, String>,
        timeout: Duration,
        tls: Option<&ClientTls>,
    ) -> anyhow::Result<Self> {
        let mut channels = HashMap::new();
        for (key, url) in endpoints {
            let mut endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| anyhow::anyhow!("participant {key}: invalid url {url:?}: {e}"))?
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true);
            if let Some(tls) = tls {
                endpoint = endpoint
                    .tls_config(tls.config())
                    .map_err(|e| anyhow::anyhow!("participant {key}: TLS settings: {e}"))?;
            }
            channels.insert(key.clone(), endpoint.connect_lazy());
        }
        Ok(GrpcParticipants { channels, timeout })
    }

    pub fn channel(&self, participant: &str) -> Option<Channel> {
        self.channels.get(participant).cloned()
    }
}

impl ParticipantClient for GrpcParticipants {
    fn send(
        &self,
        participant: &str,
        method: &str,
        command: StepCommand,
        traceparent: Option<String>,
    ) -> BoxFuture<'static, Result<CommandAck, SendError>> {
        let channel = self.channels.get(participant).cloned();
        let method = method.to_owned();
        let participant = participant.to_owned();
        let timeout = self.timeout;
        Box::pin(async move {
            let channel = channel.ok_or_else(|| {
                SendError::Permanent(format!(
                    "no endpoint configured for participant {participant}"
                ))
            })?;
            let path = method
                .parse::<http::uri::PathAndQuery>()
                .map_err(|e| SendError::Permanent(format!("bad method path {method}: {e}")))?;
            // The RPC's client span, under the command's span.
            let span = trace::rpc_span(&method, trace::SpanKind::Client);
            span.set_attribute("saga.id", command.saga_id.clone());
            span.set_attribute("saga.type", command.saga_type.clone());
            span.set_attribute("saga.step", command.step_name.clone());
            span.set_attribute("command.id", command.command_id.clone());
            span.set_attribute("saga.command.attempt", i64::from(command.attempt));
            span.set_attribute("participant", participant.clone());
            trace::set_parent(&span, traceparent.as_deref());
            let sent = trace::traceparent_of(&span.context()).or(traceparent);
            async move {
                let mut grpc = tonic::client::Grpc::new(channel);
                if let Err(e) = grpc.ready().await {
                    let e = format!("{participant} not ready: {e}");
                    trace::fail(&tracing::Span::current(), "unavailable", &e);
                    return Err(SendError::Transient(e));
                }
                let mut request = tonic::Request::new(command);
                request.set_timeout(timeout);
                if let Some(tp) = &sent {
                    trace::inject_traceparent(request.metadata_mut(), tp);
                }
                let codec = tonic_prost::ProstCodec::<StepCommand, CommandAck>::default();
                let result = grpc.unary(request, path, codec).await;
                let span = tracing::Span::current();
                match result {
                    Ok(resp) => {
                        trace::rpc_status(&span, trace::SpanKind::Client, tonic::Code::Ok, "");
                        Ok(resp.into_inner())
                    }
                    Err(status) => {
                        trace::rpc_status(
                            &span,
                            trace::SpanKind::Client,
                            status.code(),
                            status.message(),
                        );
                        Err(classify(&participant, &method, status))
                    }
                }
            }
            .instrument(span)
            .await
        })
    }
}

fn classify(participant: &str, method: &str, status: tonic::Status) -> SendError {
    use tonic::Code::*;
    let msg = format!(
        "{participant} {method}: {:?}: {}",
        status.code(),
        status.message()
    );
    match status.code() {
        InvalidArgument => SendError::Invalid(format!(
            "{}: {}",
            method.rsplit('/').next().unwrap_or(method),
            status.message()
        )),
        Unavailable | DeadlineExceeded | ResourceExhausted | Aborted | Internal | Unknown
        | Cancelled => SendError::Transient(msg),
        Ok | NotFound | AlreadyExists | PermissionDenied | FailedPrecondition | OutOfRange
        | Unimplemented | DataLoss | Unauthenticated => SendError::Permanent(msg),
    }
}
