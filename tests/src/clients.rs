//! gRPC clients of a test system: the orchestrator's API with a chosen
//! token, and channels to participants with a chosen identity, as methods
//! of [`System`], which knows the system's credentials. Nothing here reads
//! the environment.

use sagaflow_common::security::secret::{Bearer, Secret};
use sagaflow_common::security::tls::ClientTls;
use sagaflow_protos::orchestrator::v1::saga_service_client::SagaServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::credentials::{Credentials, Peer};
use crate::system::System;

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

impl System {
    /// A client of orchestrator `n` with the operator token (it may do
    /// anything, operator actions included).
    pub async fn client_of(&self, n: usize) -> anyhow::Result<Client> {
        self.client_as(n, Caller::Operator).await
    }

    /// A client of the first orchestrator still running (by number), with
    /// the operator token.
    pub async fn client(&self) -> anyhow::Result<Client> {
        self.client_of(self.first_orchestrator()).await
    }

    /// A client of orchestrator `n` sending `caller`'s token (connected).
    pub async fn client_as(&self, n: usize, caller: Caller) -> anyhow::Result<Client> {
        let addr = &self.addrs[&format!("orchestrator-{n}")];
        let channel = self.orchestrator_endpoint(addr)?.connect().await?;
        api_client(channel, self.token(caller).as_ref())
    }

    /// Lazily connected clients of every orchestrator started (running or
    /// not), by number, with the client token: enough to place orders.
    pub fn orchestrator_clients(&self) -> anyhow::Result<Vec<Client>> {
        self.orchestrator_numbers()
            .into_iter()
            .map(|n| {
                let addr = &self.addrs[&format!("orchestrator-{n}")];
                let channel = self.orchestrator_endpoint(addr)?.connect_lazy();
                api_client(channel, self.token(Caller::Client).as_ref())
            })
            .collect()
    }

    /// A lazily connected channel to orchestrator `n`'s API, with no token
    /// (gRPC health needs none).
    pub fn orchestrator_channel(&self, n: usize) -> anyhow::Result<Channel> {
        let addr = &self.addrs[&format!("orchestrator-{n}")];
        Ok(self.orchestrator_endpoint(addr)?.connect_lazy())
    }

    /// A lazily connected channel to participant `name`, presenting `peer`
    /// (over plaintext when the system is insecure).
    pub fn participant_channel(&self, name: &str, peer: Peer<'_>) -> anyhow::Result<Channel> {
        Ok(self.participant_endpoint(name, peer)?.connect_lazy())
    }

    /// What participant `name` answers a TLS client without a client
    /// certificate: the first read after the handshake, i.e. the server's
    /// alert ("received fatal alert: CertificateRequired").
    pub async fn handshake_without_certificate(&self, name: &str) -> anyhow::Result<String> {
        let creds = self
            .credentials
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("the system is insecure"))?;
        let addr = self
            .addrs
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("unknown process {name}"))?;
        sagaflow_common::security::probe::without_certificate(
            addr,
            "localhost",
            creds.ca_pem().as_bytes(),
        )
        .await
    }

    /// A plaintext channel to process `name`, whatever the system's mode.
    pub fn plaintext_channel(&self, name: &str) -> anyhow::Result<Channel> {
        let addr = self
            .addrs
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("unknown process {name}"))?;
        Ok(endpoint(&format!("http://{addr}"), None)?.connect_lazy())
    }

    /// The system's certificates and tokens (`None` when insecure).
    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    fn token(&self, caller: Caller) -> Option<sagaflow_common::security::secret::Secret> {
        use sagaflow_common::security::secret::Secret;
        let creds = self.credentials.as_ref()?;
        match caller {
            Caller::Operator => Some(creds.operator_token.clone()),
            Caller::Client => Some(creds.client_token.clone()),
            Caller::NoToken => None,
            Caller::Token(t) => Some(Secret::new(t)),
        }
    }

    pub(crate) fn scheme(&self) -> &'static str {
        if self.credentials.is_some() {
            "https"
        } else {
            "http"
        }
    }

    pub(crate) fn orchestrator_endpoint(
        &self,
        addr: &str,
    ) -> anyhow::Result<tonic::transport::Endpoint> {
        let tls = self.credentials.as_ref().map(|c| c.api_tls());
        endpoint(&format!("{}://{addr}", self.scheme()), tls.as_ref())
    }

    pub(crate) fn participant_endpoint(
        &self,
        name: &str,
        peer: Peer<'_>,
    ) -> anyhow::Result<tonic::transport::Endpoint> {
        let addr = self
            .addrs
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("unknown participant {name}"))?;
        let tls = match &self.credentials {
            Some(c) => Some(c.participant_tls(peer)?),
            None => None,
        };
        endpoint(&format!("{}://{addr}", self.scheme()), tls.as_ref())
    }
}
