//! Starting a participant: create and migrate its database, then serve its
//! gRPC step service, its read-only `CommandLog`, gRPC health and gRPC
//! reflection until shutdown; and, from before the migrations, its HTTP
//! address (`/healthz`, `/readyz`, `/metrics`) until the drain is over.
//!
//! Over mutual TLS every service on the port needs a client certificate
//! from the client CA (the handshake asks for it); both Sagaflow services
//! (every RPC: steps, look-ups, the log) are also wrapped in the client
//! identity pin. gRPC health and reflection are not pinned, so a probe or
//! `grpcurl` with any certificate from the client CA can reach them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use sagaflow_common::db::{self, Migration};
use sagaflow_common::ops::{self, DbProbe, Ops};
use sagaflow_common::security::{self, identity::ClientPin};
use sagaflow_protos::participant::v1::command_log_server::CommandLogServer;
use sagaflow_protos::participant::v1::inventory_service_server::InventoryServiceServer;
use sagaflow_protos::participant::v1::order_service_server::OrderServiceServer;
use sagaflow_protos::participant::v1::payment_service_server::PaymentServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService as _;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::command_log::InboxLog;
use crate::inventory::InventoryParticipant;
use crate::metrics::Metrics;
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
/// service SERVING from then on. The HTTP address (when configured) answers
/// from the start: `/readyz` is 503 until the migrations are done, while the
/// database does not answer, and from the moment `shutdown` is cancelled.
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
    let mut registry = prometheus_client::registry::Registry::with_prefix("sagaflow_participant");
    let metrics = Metrics::register(&mut registry, kind.name());
    let migrated = Arc::new(AtomicBool::new(false));
    // The HTTP address outlives the drain: it stops once the rest has.
    let http_stop = CancellationToken::new();
    let _stop_http = http_stop.clone().drop_guard();
    let web = match &config.http_listen {
        Some(addr) => {
            let var = format!("SAGAFLOW_{}_HTTP_LISTEN", kind.name().to_uppercase());
            let listener = ops::bind(&var, addr).await?;
            let ops = operations(registry, &config.database_url, &shutdown, migrated.clone())?;
            Some(ops::spawn(listener, ops, http_stop.clone()))
        }
        None => None,
    };
    tokio::select! {
        migrated = db::migrate(&pool, migrations(kind)) => migrated
            .with_context(|| format!("migrating {}", db::redact(&config.database_url)))?,
        () = shutdown.cancelled() => return Ok(()),
    }
    migrated.store(true, Ordering::Relaxed);

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
    let reflection = sagaflow_common::reflection::service(&[
        match kind {
            Kind::Order => OrderServiceServer::<OrderParticipant>::NAME,
            Kind::Payment => PaymentServiceServer::<PaymentParticipant>::NAME,
            Kind::Inventory => InventoryServiceServer::<InventoryParticipant>::NAME,
        },
        CommandLogServer::<InboxLog>::NAME,
        sagaflow_common::reflection::HEALTH,
        sagaflow_common::reflection::SERVICE,
    ])?;
    let router = builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(InterceptedService::new(log, pin.clone()));
    let router = match kind {
        Kind::Order => {
            let service = OrderParticipant::new(pool, metrics).into_server();
            health
                .set_service_status(service_name(&service), tonic_health::ServingStatus::Serving)
                .await;
            router.add_service(InterceptedService::new(service, pin))
        }
        Kind::Payment => {
            let service = PaymentParticipant::new(pool, metrics).into_server();
            health
                .set_service_status(service_name(&service), tonic_health::ServingStatus::Serving)
                .await;
            router.add_service(InterceptedService::new(service, pin))
        }
        Kind::Inventory => {
            let service = InventoryParticipant::new(pool, metrics).into_server();
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
    http_stop.cancel();
    if let Some(web) = web {
        web.await
            .context("the HTTP server panicked")?
            .context("the HTTP server failed")?;
    }
    tracing::info!(participant = kind.name(), "stopped");
    Ok(())
}

/// The operations routes: ready once migrated, while the database answers
/// and until the drain begins.
fn operations(
    registry: prometheus_client::registry::Registry,
    database_url: &str,
    shutdown: &CancellationToken,
    migrated: Arc<AtomicBool>,
) -> anyhow::Result<Ops> {
    let probe = DbProbe::new(database_url)?;
    Ok(Ops::new(registry, shutdown.clone())
        .check("migrations", move || {
            let done = migrated.load(Ordering::Relaxed);
            async move {
                done.then_some(())
                    .ok_or_else(|| "the database is being migrated".to_owned())
            }
        })
        .check("database", move || {
            let probe = probe.clone();
            async move { probe.check().await }
        }))
}

/// The fully qualified gRPC name health reports under.
fn service_name<S: tonic::server::NamedService>(_: &S) -> &'static str {
    S::NAME
}
