//! Where and how the commands call the orchestrator's API: the URL, TLS
//! with the API's CA, and a bearer token, as the other Sagaflow clients do
//! (`sagaflow_common::security`). Secure unless `--insecure`: without a CA
//! or a token it refuses and names what is missing.

use std::path::Path;
use std::time::Duration;

use sagaflow_common::security::secret::{self, Bearer, Secret};
use sagaflow_common::security::tls::{self, ClientTls};
use sagaflow_common::security::{self, Required};
use sagaflow_protos::orchestrator::v1::saga_service_client::SagaServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::args::ApiArgs;
use crate::error::{Error, chain};

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub type Client = SagaServiceClient<InterceptedService<Channel, Bearer>>;

/// A configured API, ready to connect.
#[derive(Debug, Clone)]
pub struct Api {
    pub url: String,
    endpoint: Endpoint,
    bearer: Bearer,
}

impl Api {
    /// The settings from the flags (and their environment variables).
    pub fn from_args(args: &ApiArgs) -> anyhow::Result<Api> {
        let endpoint_arg = args.endpoint.clone().filter(|u| !u.is_empty());
        if args.insecure || security::insecure_from_env()? {
            security::warn_insecure("sagaflow", "calling the API in plaintext without a token");
            let url =
                endpoint_arg.unwrap_or_else(|| sagaflow_orchestrator::cli::default_api_url("http"));
            return Api::new(url, None, Bearer::default());
        }
        let url =
            endpoint_arg.unwrap_or_else(|| sagaflow_orchestrator::cli::default_api_url("https"));
        let mut required = Required::new("sagaflow");
        let ca = args.ca.as_deref().filter(|p| !p.as_os_str().is_empty());
        if ca.is_none() {
            required.missing("--ca (or SAGAFLOW_API_CA)");
        }
        let token = token(args)?;
        if token.is_none() {
            required.missing(
                "--token-file or --token (or SAGAFLOW_API_TOKEN_FILE, SAGAFLOW_API_TOKEN)",
            );
        }
        required.check()?;
        anyhow::ensure!(
            url.starts_with("https://"),
            "--endpoint (SAGAFLOW_API_URL) {url:?} must be an https:// URL (or use --insecure against an insecure orchestrator)"
        );
        let ca = ca.unwrap_or(Path::new(""));
        let tls = ClientTls {
            server_ca_pem: tls::read_pem(
                "--ca (SAGAFLOW_API_CA)",
                &ca.to_string_lossy(),
                "CERTIFICATE",
            )?,
            identity: None,
        };
        Api::new(url, Some(tls), Bearer::new(token.as_ref())?)
    }

    fn new(url: String, tls: Option<ClientTls>, bearer: Bearer) -> anyhow::Result<Api> {
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| anyhow::anyhow!("--endpoint (SAGAFLOW_API_URL) {url:?}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if let Some(tls) = &tls {
            endpoint = endpoint
                .tls_config(tls.config())
                .map_err(|e| anyhow::anyhow!("--ca (SAGAFLOW_API_CA): {}", chain(&e)))?;
        }
        Ok(Api {
            url,
            endpoint,
            bearer,
        })
    }

    /// A client on a fresh connection.
    pub async fn client(&self) -> Result<Client, Error> {
        let channel = self
            .endpoint
            .connect()
            .await
            .map_err(|e| Error::Unreachable {
                url: self.url.clone(),
                cause: chain(&e),
            })?;
        Ok(SagaServiceClient::with_interceptor(
            channel,
            self.bearer.clone(),
        ))
    }

    /// A failed call, as the user reads it.
    pub fn error(&self, status: tonic::Status) -> Error {
        Error::from_status(&self.url, status)
    }
}

/// The one token of `--token` or `--token-file`; both is an error.
fn token(args: &ApiArgs) -> anyhow::Result<Option<Secret>> {
    let token = args.token.as_deref().filter(|t| !t.is_empty());
    let file = args
        .token_file
        .as_deref()
        .filter(|p| !p.as_os_str().is_empty());
    let (name, raw) = match (token, file) {
        (Some(_), Some(_)) => anyhow::bail!(
            "give --token or --token-file (SAGAFLOW_API_TOKEN or SAGAFLOW_API_TOKEN_FILE), not both"
        ),
        (Some(t), None) => ("--token (SAGAFLOW_API_TOKEN)", t.to_owned()),
        (None, Some(path)) => (
            "--token-file (SAGAFLOW_API_TOKEN_FILE)",
            std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!(
                    "--token-file (SAGAFLOW_API_TOKEN_FILE) {}: cannot read: {e}",
                    path.display()
                )
            })?,
        ),
        (None, None) => return Ok(None),
    };
    let mut tokens = secret::parse_tokens(name, &raw)?;
    anyhow::ensure!(tokens.len() == 1, "{name}: give exactly one token");
    Ok(tokens.pop())
}
