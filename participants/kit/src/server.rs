//! Serving a [`Participant`]: create and migrate its database, then serve
//! its step service (by method path), its read-only `CommandLog`, gRPC
//! health and gRPC reflection until shutdown; and, from before the
//! migrations, its HTTP address (`/healthz`, `/readyz`, `/metrics`) until
//! the drain is over.
//!
//! Over mutual TLS every service on the port needs a client certificate
//! from the client CA (the handshake asks for it); the participant's
//! service (steps and look-ups) and `CommandLog` are also wrapped in the
//! client identity pin. gRPC health and reflection are not pinned, so a
//! probe or `grpcurl` with any certificate from the client CA can reach
//! them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use sagaflow_common::db;
use sagaflow_common::ops::{self, DbProbe, Ops};
use sagaflow_common::security::{self, identity::ClientPin};
use sagaflow_protos::participant::v1::command_log_server::CommandLogServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService as _;
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::command::Executor;
use crate::command_log::InboxLog;
use crate::config::{Config, Security, env_prefix};
use crate::metrics::Metrics;
use crate::participant::Participant;

/// Run `participant` on `listener` until `shutdown` is cancelled, then
/// finish in-flight RPCs and return.
///
/// The description is checked first ([`Participant::check`]). The database
/// is created if missing (best effort: a managed server may not allow it)
/// and migrated before the first RPC is served; connections that arrive
/// meanwhile wait in the listener's backlog. gRPC health reports the
/// service SERVING from then on. The HTTP address (when configured)
/// answers from the start: `/readyz` is 503 until the migrations are done,
/// while the database does not answer, and from the moment `shutdown` is
/// cancelled.
pub async fn serve(
    participant: Participant,
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    participant.check()?;
    let name = participant.name();
    if let Security::Insecure = config.security {
        security::warn_insecure(
            &format!("participant {name}"),
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
    let metrics = Metrics::register(&mut registry, name);
    let migrated = Arc::new(AtomicBool::new(false));
    // The HTTP address outlives the drain: it stops once the rest has.
    let http_stop = CancellationToken::new();
    let _stop_http = http_stop.clone().drop_guard();
    let web = match &config.http_listen {
        Some(addr) => {
            let var = format!("{}_HTTP_LISTEN", env_prefix(name));
            let listener = ops::bind(&var, addr).await?;
            let ops = operations(registry, &config.database_url, &shutdown, migrated.clone())?;
            Some(ops::spawn(listener, ops, http_stop.clone()))
        }
        None => None,
    };
    let migrations = participant.migrations();
    tokio::select! {
        migrated = db::migrate(&pool, &migrations) => migrated
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
    for service in [CommandLogServer::<InboxLog>::NAME, participant.service()] {
        health
            .set_service_status(service, tonic_health::ServingStatus::Serving)
            .await;
    }
    let reflection = sagaflow_common::reflection::service(&[
        participant.service(),
        CommandLogServer::<InboxLog>::NAME,
        sagaflow_common::reflection::HEALTH,
        sagaflow_common::reflection::SERVICE,
    ])?;
    let exec = Executor::new(pool, name, participant.service(), metrics);
    let steps = InterceptedService::new(participant.router(exec), pin.clone());
    let routes = Routes::new(health_service)
        .add_service(reflection)
        .add_service(InterceptedService::new(log, pin))
        .into_axum_router()
        .route_service(&format!("/{}/{{*method}}", participant.service()), steps);
    let router = builder.add_routes(Routes::from(routes));

    let addr = listener.local_addr()?;
    let tls = matches!(config.security, Security::Mutual { .. });
    tracing::info!(participant = name, %addr, tls, "serving");
    router
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown.cancelled_owned(),
        )
        .await
        .with_context(|| format!("serving {name} on {addr}"))?;
    sweeper
        .await
        .context("the inbox retention sweeper failed")?;
    http_stop.cancel();
    if let Some(web) = web {
        web.await
            .context("the HTTP server panicked")?
            .context("the HTTP server failed")?;
    }
    tracing::info!(participant = name, "stopped");
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
