//! `sagaflow-orchestrator dead-letters list [N] | redrive [ID...]`: the
//! operator's dead-letter commands, as calls to a running orchestrator's
//! API (`ListDeadLetters`, `RedriveDeadLetters`) with an operator token, so
//! they pass the same checks as any other client and need no database or
//! Pub/Sub access.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `SAGAFLOW_API_URL` | `https://` (`http://` when insecure) + `SAGAFLOW_ORCHESTRATOR_LISTEN`, with `127.0.0.1` for an unspecified host | the orchestrator to call |
//! | `SAGAFLOW_API_CA` | required unless insecure | CA of the API's certificate (PEM file) |
//! | `SAGAFLOW_API_TOKEN` or `SAGAFLOW_API_TOKEN_FILE` | required unless insecure | an operator token |

use sagaflow_common::config;
use sagaflow_common::security::secret::{self, Bearer};
use sagaflow_common::security::tls::{self, ClientTls};
use sagaflow_common::security::{self, Required};
use sagaflow_protos::orchestrator::v1::saga_service_client::SagaServiceClient;
use sagaflow_protos::orchestrator::v1::{
    DeadLetter, ListDeadLettersRequest, RedriveDeadLettersRequest,
};
use tonic::transport::Endpoint;

pub const USAGE: &str = "usage: sagaflow-orchestrator [dead-letters (list [N] | redrive [ID...]) | reconcile [SAGA_ID...]]";

/// Where and how the commands call the API.
#[derive(Debug)]
pub struct Settings {
    pub url: String,
    pub tls: Option<ClientTls>,
    pub bearer: Bearer,
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Settings> {
        let insecure = security::insecure_from_env()?;
        let scheme = if insecure { "http" } else { "https" };
        let url = config::var_or("SAGAFLOW_API_URL", &default_url(scheme));
        if insecure {
            security::warn_insecure(
                "sagaflow-orchestrator dead-letters",
                "calling the API in plaintext without a token",
            );
            return Ok(Settings {
                url,
                tls: None,
                bearer: Bearer::default(),
            });
        }
        let mut required = Required::new("sagaflow-orchestrator dead-letters");
        let ca = required.var("SAGAFLOW_API_CA");
        let token = secret::token_from_env("SAGAFLOW_API_TOKEN")?;
        if token.is_none() {
            required.missing("SAGAFLOW_API_TOKEN (or SAGAFLOW_API_TOKEN_FILE)");
        }
        required.check()?;
        anyhow::ensure!(
            url.starts_with("https://"),
            "SAGAFLOW_API_URL must be an https:// URL"
        );
        Ok(Settings {
            url,
            tls: Some(ClientTls {
                server_ca_pem: tls::read_pem(
                    "SAGAFLOW_API_CA",
                    &ca.unwrap_or_default(),
                    "CERTIFICATE",
                )?,
                identity: None,
            }),
            bearer: Bearer::new(token.as_ref())?,
        })
    }
}

/// The orchestrator's listen address as a URL a local client can reach.
fn default_url(scheme: &str) -> String {
    let listen = crate::config::listen_addr();
    let (host, port) = listen
        .rsplit_once(':')
        .unwrap_or((listen.as_str(), "50051"));
    let host = match host {
        "" | "0.0.0.0" | "[::]" => "127.0.0.1",
        h => h,
    };
    format!("{scheme}://{host}:{port}")
}

/// Run `dead-letters <args>`.
pub async fn dead_letters(args: &[&str]) -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let mut endpoint = Endpoint::from_shared(settings.url.clone())
        .map_err(|e| anyhow::anyhow!("SAGAFLOW_API_URL: {e}"))?;
    if let Some(tls) = &settings.tls {
        endpoint = endpoint.tls_config(tls.config())?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("connecting to {}: {e}", settings.url))?;
    let mut api = SagaServiceClient::with_interceptor(channel, settings.bearer);
    match args {
        ["list", rest @ ..] => {
            let limit: u32 = match rest {
                [] => 50,
                [n] => n.parse().map_err(|_| anyhow::anyhow!("{USAGE}"))?,
                _ => anyhow::bail!("{USAGE}"),
            };
            let listed = api
                .list_dead_letters(ListDeadLettersRequest { limit })
                .await?
                .into_inner();
            println!("dead letters: {}", listed.total);
            for d in listed.dead_letters {
                println!("{}", line(&d));
            }
            Ok(())
        }
        ["redrive", ids @ ..] => {
            let ids: Vec<i64> = ids
                .iter()
                .map(|i| {
                    i.parse()
                        .map_err(|_| anyhow::anyhow!("not a dead letter id: {i}"))
                })
                .collect::<anyhow::Result<_>>()?;
            let all_pending = ids.is_empty();
            let done = api
                .redrive_dead_letters(RedriveDeadLettersRequest { ids, all_pending })
                .await?
                .into_inner();
            println!("re-drove {} dead letters to {}", done.redriven, done.topic);
            Ok(())
        }
        _ => anyhow::bail!("{USAGE}"),
    }
}

/// One dead letter as a tab-separated line.
fn line(d: &DeadLetter) -> String {
    let at = |t: &Option<prost_types::Timestamp>, format: &str| {
        t.as_ref()
            .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32))
            .map(|t| t.format(format).to_string())
    };
    format!(
        "{}\t{}\t{}\tsaga={}\tevent={}\t{} bytes\t{}",
        d.id,
        at(&d.dead_at, "%Y-%m-%dT%H:%M:%SZ").unwrap_or_default(),
        at(&d.redriven_at, "%H:%M:%S")
            .map(|t| format!("redriven {t}"))
            .unwrap_or_else(|| "pending".into()),
        d.saga_id,
        d.event_id,
        d.data_bytes,
        d.reason
    )
}
