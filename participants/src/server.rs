//! Starting a participant: create and migrate its database, then serve its
//! gRPC step service, its read-only `CommandLog` and gRPC health until
//! shutdown.
//!
//! Over mutual TLS both services (every RPC: steps, look-ups, the log) are
//! wrapped in the client identity pin; gRPC health is not, so a probe with
//! any certificate from the client CA can reach it.

use anyhow::Context as _;
use sagaflow_common::db::{self, Migration};
use sagaflow_common::security::{self, identity::ClientPin};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::command_log::InboxLog;
use crate::inventory::InventoryParticipant;
use crate::order::OrderParticipant;
use crate::payment::PaymentParticipant;
use crate::{Kind, ParticipantConfig, Security, inventory, order, payment};

/// The participant's migrations, in order.
pub fn migrations(kind: Kind) -> &'static [Migration] {
    match kind {
        Kind::Order => &order::MIGRATIONS,
        Kind::Payment => &payment::MIGRATIONS,
        Kind::Inventory => &inventory::MIGRATIONS,
    }
}

/// Run participant `kind` on `listener` until `shutdown` is cancelled, then
/// finish in-flight RPCs and return.
///
/// The database is created if missing (best effort: a managed server may not
/// allow it) and migrated before the first RPC is served; connections that
/// arrive meanwhile wait in the listener's backlog. gRPC health reports the
/// service SERVING from then on.
pub async fn serve(
    kind: Kind,
    config: ParticipantConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if let Security::Insecure = config.security {
        security::warn_insecure(
            "sagaflow-participant",
            "plaintext gRPC, and any client can command this participant",
        );
    }
    // TLS settings are checked before anything else is touched.
    let (mut builder, pin) = match &config.security {
        Security::Mutual {
            tls,
            allowed_client,
        } => (
            Server::builder().tls_config(tls.config()).context(
                "TLS settings (SAGAFLOW_TLS_CERT, SAGAFLOW_TLS_KEY, SAGAFLOW_TLS_CLIENT_CA)",
            )?,
            ClientPin::Only(allowed_client.clone()),
        ),
        Security::Insecure => (Server::builder(), ClientPin::Off),
    };
    if let Err(e) = db::ensure_database(&config.database_url).await {
        tracing::warn!(
            error = format!("{e:#}"),
            "could not ensure the database exists"
        );
    }
    let pool = db::pool(&config.database_url, config.pool_size)?;
    tokio::select! {
        migrated = db::migrate(&pool, migrations(kind)) => migrated
            .with_context(|| format!("migrating {}", db::redact(&config.database_url)))?,
        () = shutdown.cancelled() => return Ok(()),
    }

    let sweeper = tokio::spawn(crate::retention::run(
        pool.clone(),
        config.inbox_retention,
        config.retention_interval,
        shutdown.child_token(),
    ));

    let (health, health_service) = tonic_health::server::health_reporter();
    let log = InboxLog::new(pool.clone(), config.inbox_retention).into_server();
    health
        .set_service_status(service_name(&log), tonic_health::ServingStatus::Serving)
        .await;
    let router = builder
        .add_service(health_service)
        .add_service(InterceptedService::new(log, pin.clone()));
    let router = match kind {
        Kind::Order => {
            let service = OrderParticipant::new(pool).into_server();
            health
                .set_service_status(service_name(&service), tonic_health::ServingStatus::Serving)
                .await;
            router.add_service(InterceptedService::new(service, pin))
        }
        Kind::Payment => {
            let service = PaymentParticipant::new(pool).into_server();
            health
                .set_service_status(service_name(&service), tonic_health::ServingStatus::Serving)
                .await;
            router.add_service(InterceptedService::new(service, pin))
        }
        Kind::Inventory => {
            let service = InventoryParticipant::new(pool).into_server();
            health
                .set_service_status(service_name(&service), tonic_health::ServingStatus::Serving)
                .await;
            router.add_service(InterceptedService::new(service, pin))
        }
    };

    let addr = listener.local_addr()?;
    let tls = matches!(config.security, Security::Mutual { .. });
    tracing::info!(participant = kind.name(), %addr, tls, "serving");
    router
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown.cancelled_owned(),
        )
        .await
        .with_context(|| format!("serving {kind} on {addr}"))?;
    sweeper
        .await
        .context("the inbox retention sweeper failed")?;
    tracing::info!(participant = kind.name(), "stopped");
    Ok(())
}

/// The fully qualified gRPC name health reports under.
fn service_name<S: tonic::server::NamedService>(_: &S) -> &'static str {
    S::NAME
}
