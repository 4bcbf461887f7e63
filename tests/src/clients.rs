//! gRPC clients of a test system: the orchestrator's API with a chosen
//! token, and channels to participants with a chosen identity. Tests get
//! them from [`crate::system::System`], which knows the system's
//! credentials; nothing here reads the environment.

use sagaflow_common::security::secret::{Bearer, Secret};
use sagaflow_common::security::tls::ClientTls;
use sagaflow_protos::orchestrator::v1::saga_service_client::SagaServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// A client of the orchestrator's API, sending its bearer token.
pub type Client = SagaServiceClient<InterceptedService<Channel, Bearer>>;

/// Which token an API client sends.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The system's operator token (everything allowed).
    Operator,
    /// The system's client token (no operator actions).
    Client,
    /// No `authorization` metadata.
    NoToken,
    /// This token, configured or not.
    Token(String),
}

/// An endpoint for `url`, over TLS with `tls` when given.
pub fn endpoint(url: &str, tls: Option<&ClientTls>) -> anyhow::Result<Endpoint> {
    let endpoint = Endpoint::from_shared(url.to_owned())?
        .connect_timeout(std::time::Duration::from_secs(5))
        .tcp_nodelay(true);
    Ok(match tls {
        Some(tls) => endpoint.tls_config(tls.config())?,
        None => endpoint,
    })
}

/// An API client over `channel` sending `token`.
pub fn api_client(channel: Channel, token: Option<&Secret>) -> anyhow::Result<Client> {
    Ok(SagaServiceClient::with_interceptor(
        channel,
        Bearer::new(token)?,
    ))
}

/// Whether gRPC health on `endpoint` answers SERVING (any failure: no).
pub async fn serving(endpoint: &Endpoint) -> bool {
    let Ok(channel) = endpoint.connect().await else {
        return false;
    };
    let check = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    matches!(check, Ok(r) if r.get_ref().status == ServingStatus::Serving as i32)
}
