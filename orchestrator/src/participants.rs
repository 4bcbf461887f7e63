//! Sending step commands to participants over gRPC.
//!
//! The engine calls any step of any saga definition the same way: a unary
//! call to the step's method path with a `StepCommand`, answered by a
//! `CommandAck`. The outcome itself comes back later as an event.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::BoxFuture;
use sagaflow_protos::participant::v1::{CommandAck, StepCommand};
use tonic::transport::{Channel, Endpoint};

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
    /// `endpoints`: participant key → URL ("http://127.0.0.1:50061").
    pub fn new(endpoints: &HashMap<String, String>, timeout: Duration) -> anyhow::Result<Self> {
        let mut channels = HashMap::new();
        for (key, url) in endpoints {
            let endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| anyhow::anyhow!("participant {key}: invalid url {url:?}: {e}"))?
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true);
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
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready()
                .await
                .map_err(|e| SendError::Transient(format!("{participant} not ready: {e}")))?;
            let mut request = tonic::Request::new(command);
            request.set_timeout(timeout);
            if let Some(tp) = &traceparent {
                sagaflow_common::trace::inject_traceparent(request.metadata_mut(), tp);
            }
            let codec = tonic_prost::ProstCodec::<StepCommand, CommandAck>::default();
            match grpc.unary(request, path, codec).await {
                Ok(resp) => Ok(resp.into_inner()),
                Err(status) => Err(classify(&participant, &method, status)),
            }
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
