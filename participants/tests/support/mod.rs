//! Test harness: a participant served in-process on a port-0 listener over
//! its own fresh database (named by a UUID), real Postgres at 127.0.0.1:5432,
//! over mutual TLS with certificates from a CA made for the test binary
//! ([`Certs`]); [`TestParticipant::channel`] presents the orchestrator's
//! identity.
//!
//! The database is dropped when the [`TestParticipant`] is dropped (best
//! effort, `WITH (FORCE)`), also when a test panics.

#![allow(dead_code)] // each test binary uses a different part of it

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use prost::Message as _;
use sagaflow_common::security::identity::DEFAULT_CLIENT;
use sagaflow_common::security::pki::{Issued, Pki};
use sagaflow_common::security::tls::{ClientTls, ServerTls};
use sagaflow_common::{db, testkit};
use sagaflow_participants::{Kind, Security, serve};
use sagaflow_protos::events::v1::EventEnvelope;
use sagaflow_protos::participant::v1::{OrderInput, OrderItem, StepCommand};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(20);

/// The test binary's CA and the certificates it signed.
pub struct Certs {
    pub ca_pem: String,
    /// Every participant's server certificate (127.0.0.1, localhost).
    pub server: Issued,
    /// The identity participants accept.
    pub orchestrator: Issued,
    /// Signed by the same CA, under another name.
    pub rogue: Issued,
}

/// Made once per test binary.
pub fn certs() -> &'static Certs {
    static CERTS: OnceLock<Certs> = OnceLock::new();
    CERTS.get_or_init(|| {
        let pki = Pki::new("sagaflow participants test CA").expect("making a CA");
        let issue = |names: &[&str]| pki.issue(names).expect("issuing a certificate");
        Certs {
            ca_pem: pki.ca_pem(),
            server: issue(&["localhost", "127.0.0.1"]),
            orchestrator: issue(&[DEFAULT_CLIENT]),
            rogue: issue(&["sagaflow-rogue"]),
        }
    })
}

/// Who a test channel claims to be.
#[derive(Debug, Clone, Copy)]
pub enum Caller {
    /// The orchestrator's certificate.
    Orchestrator,
    /// A certificate from the same CA with another name.
    Rogue,
    /// TLS without a client certificate.
    NoCertificate,
}

/// A running participant and a direct connection to its database.
pub struct TestParticipant {
    pub kind: Kind,
    pub db_name: String,
    pub addr: SocketAddr,
    /// For assertions on rows, outside the service.
    pub db: tokio_postgres::Client,
    pub channel: Channel,
    shutdown: CancellationToken,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestParticipant {
    /// Serve `kind` over a new database.
    pub async fn start(kind: Kind) -> Self {
        Self::start_on(kind, testkit::unique_name("sagaflow_test")).await
    }

    /// Serve `kind` over the database `db_name` (created if missing).
    pub async fn start_on(kind: Kind, db_name: String) -> Self {
        let url = testkit::create(&db_name)
            .await
            .expect("creating test database");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let security = Security::Mutual {
            tls: ServerTls {
                identity: certs().server.key_pair(),
                client_ca_pem: Some(certs().ca_pem.clone().into_bytes()),
            },
            allowed_client: DEFAULT_CLIENT.to_owned(),
        };
        let mut config = kind.config(url.clone(), security);
        config.pool_size = 8;
        let server = tokio::spawn(serve(kind, config, listener, shutdown.clone()));
        let channel = channel_to(addr, Caller::Orchestrator);
        let db = db::connect(&url)
            .await
            .expect("connecting to test database");
        let mut participant = Self {
            kind,
            db_name,
            addr,
            db,
            channel,
            shutdown,
            server: Some(server),
        };
        participant.wait_until_serving().await;
        participant
    }

    /// A channel to this participant as `caller`.
    pub fn channel_as(&self, caller: Caller) -> Channel {
        channel_to(self.addr, caller)
    }

    /// Wait (with a deadline) for gRPC health to report the service SERVING.
    async fn wait_until_serving(&mut self) {
        let service = sagaflow_participants::server::participant(self.kind).service();
        let mut health = HealthClient::new(self.channel.clone());
        let started = tokio::time::Instant::now();
        loop {
            let server = self.server.as_ref().unwrap();
            if server.is_finished() {
                let result = self.server.take().unwrap().await.unwrap();
                panic!("participant stopped before serving: {result:?}");
            }
            let request = HealthCheckRequest {
                service: service.into(),
            };
            let check = tokio::time::timeout(Duration::from_secs(1), health.check(request)).await;
            if let Ok(Ok(response)) = check
                && response.into_inner().status() == ServingStatus::Serving
            {
                return;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "{service} not serving after {DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stop serving (graceful) and wait for `serve` to return; keeps the db.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            tokio::time::timeout(DEADLINE, server)
                .await
                .expect("serve did not return after shutdown")
                .unwrap()
                .expect("serve failed");
        }
    }

    /// Every outbox row, oldest first, with its payload decoded.
    pub async fn outbox(&self) -> Vec<OutboxRow> {
        let rows = self
            .db
            .query(
                "SELECT event_id, saga_id, event_type, payload, traceparent FROM outbox ORDER BY id",
                &[],
            )
            .await
            .unwrap();
        rows.iter()
            .map(|r| OutboxRow {
                event_id: r.get(0),
                saga_id: r.get(1),
                event_type: r.get(2),
                event: EventEnvelope::decode(r.get::<_, &[u8]>(3)).expect("outbox payload decodes"),
                traceparent: r.get(4),
            })
            .collect()
    }

    /// `SELECT count(*) FROM <table>`.
    pub async fn count(&self, table: &str) -> i64 {
        self.db
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0)
    }

    /// The stored outcome and reason of a command in the inbox.
    pub async fn inbox(&self, command_id: &str) -> Option<(String, Option<String>, Uuid)> {
        let id = Uuid::parse_str(command_id).unwrap();
        self.db
            .query_opt(
                "SELECT outcome, reason, event_id FROM inbox WHERE command_id = $1",
                &[&id],
            )
            .await
            .unwrap()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
    }
}

impl Drop for TestParticipant {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.abort();
        }
        testkit::drop_now(vec![self.db_name.clone()]);
    }
}

/// A lazily connected TLS channel to `addr` as `caller`.
fn channel_to(addr: SocketAddr, caller: Caller) -> Channel {
    let identity = match caller {
        Caller::Orchestrator => Some(certs().orchestrator.key_pair()),
        Caller::Rogue => Some(certs().rogue.key_pair()),
        Caller::NoCertificate => None,
    };
    let tls = ClientTls {
        server_ca_pem: certs().ca_pem.clone().into_bytes(),
        identity,
    };
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls.config())
        .expect("client TLS settings")
        .connect_lazy()
}

/// One outbox row.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub event_id: Uuid,
    pub saga_id: Uuid,
    pub event_type: String,
    pub event: EventEnvelope,
    pub traceparent: Option<String>,
}

impl OutboxRow {
    /// The event's JSON payload.
    pub fn payload(&self) -> serde_json::Value {
        serde_json::from_slice(&self.event.payload).expect("payload is JSON")
    }
}

/// An order input for `customer` paying `amount_cents` for `items`.
pub fn input(customer: &str, amount_cents: i64, items: &[(&str, i64)]) -> OrderInput {
    OrderInput {
        customer_id: customer.into(),
        items: items
            .iter()
            .map(|(sku, quantity)| OrderItem {
                sku: (*sku).into(),
                quantity: *quantity,
            })
            .collect(),
        amount_cents,
        currency: "EUR".into(),
    }
}

/// A first-attempt step command with a fresh command id.
pub fn command(saga_id: Uuid, step: u32, step_name: &str, input: &OrderInput) -> StepCommand {
    StepCommand {
        command_id: Uuid::now_v7().to_string(),
        saga_id: saga_id.to_string(),
        step,
        step_name: step_name.into(),
        attempt: 1,
        saga_type: "order".into(),
        input: input.encode_to_vec(),
    }
}

/// A unique name for a test's own customer or sku.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", Uuid::new_v4().simple())
}
