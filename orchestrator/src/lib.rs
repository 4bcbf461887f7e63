//! The Sagaflow orchestrator.
//!
//! Layout:
//! - [`saga`]: the pure engine (definitions, state, `apply`), no I/O.
//! - [`definitions`]: the saga types this build runs (the order saga).
//! - [`store`]: sagas, history and applied events in Postgres.
//! - [`driver`]: carries out effects: sends commands, fires timers, resumes.
//! - [`participants`]: the gRPC client that calls any step by method path.
//! - [`consumer`]: Pub/Sub events in, transitions out.
//! - [`deadletter`]: poison messages: the dead-letter topic, its table,
//!   listing and re-driving.
//! - [`retention`]: what the tables may forget, and the sweeps.
//! - [`api`] and [`views`]: the public gRPC API and its read models.
//! - [`auth`]: bearer tokens on the public API.
//! - [`cli`]: the API URL a local `sagaflow` command calls by default.
//! - [`reconcile`]: the operator's read-only comparison of every finished
//!   saga with what its participants say they did.
//! - [`watch`]: `WatchSaga` and `WatchSagas`, live from one `LISTEN`
//!   connection per instance.
//! - [`http`]: the HTTP address (the web console, `/config.json`, and
//!   `/healthz`, `/readyz`, `/metrics` from `sagaflow_common::ops`).
//! - [`metrics`]: what `/metrics` counts, and the sagas by state.
//! - [`config`]: environment variables.

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod deadletter;
pub mod definitions;
pub mod driver;
pub mod http;
pub mod metrics;
pub mod participants;
pub mod reconcile;
pub mod retention;
pub mod saga;
pub mod store;
pub mod views;
pub mod watch;

use std::sync::Arc;

use anyhow::Context as _;
use sagaflow_common::ops::{self, DbProbe, Ops};
use sagaflow_common::pubsub::{self, PubSubConfig, SubscriptionSpec};
use sagaflow_protos::orchestrator::v1::saga_service_server::SagaServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService as _;

pub use config::{Config, Security};

/// Run the orchestrator until `shutdown` is cancelled. Its HTTP address
/// answers until the drain has finished (`/readyz` 503 from the moment
/// `shutdown` is cancelled).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if let Security::Insecure = config.security {
        sagaflow_common::security::warn_insecure(
            "sagaflow-orchestrator",
            "the API is plaintext and open to anyone, participants are called in plaintext",
        );
    }
    let known: std::collections::BTreeMap<String, String> = config
        .participants
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let files = definitions::load(config.definitions_dir.as_deref(), &known)?;
    // TLS settings are checked before anything else is touched.
    let (server, tokens, participants_tls) = match &config.security {
        Security::Secure(secured) => (
            tonic::transport::Server::builder()
                .tls_config(secured.api_tls.config())
                .map_err(|e| {
                    anyhow::anyhow!("API TLS (SAGAFLOW_TLS_CERT, SAGAFLOW_TLS_KEY): {e}")
                })?,
            Some(secured.tokens.clone()),
            Some(&secured.participants_tls),
        ),
        Security::Insecure => (tonic::transport::Server::builder(), None, None),
    };
    // Best effort, as the participants do: a managed server may not allow it.
    if let Err(e) = sagaflow_common::db::ensure_database(&config.database_url).await {
        tracing::warn!(
            error = format!("{e:#}"),
            "could not ensure the database exists"
        );
    }
    let pool = sagaflow_common::db::pool(&config.database_url, config.pool_size)?;
    sagaflow_common::db::migrate(&pool, &migrations())
        .await
        .with_context(|| {
            format!(
                "migrating {}",
                sagaflow_common::db::redact(&config.database_url)
            )
        })?;

    // Every instance runs every stored version; a stored one never changes.
    let stored = definitions::stored::share(&pool, &files).await?;
    for (source, d) in &files {
        tracing::info!(saga_type = %d.saga_type, version = d.version, steps = d.steps.len(), %source, "saga definition loaded");
    }
    for d in &stored {
        tracing::info!(saga_type = %d.saga_type, version = d.version, steps = d.steps.len(), "saga definition loaded from the database (no file here)");
    }
    definitions::install(files.into_iter().map(|(_, d)| d).chain(stored).collect());

    let ps = PubSubConfig::from_env();
    let (events_spec, dead_letter_spec) = subscriptions(&config);
    pubsub::ensure_topic(&ps, &config.events_topic).await?;
    pubsub::ensure_topic(&ps, &config.dead_letter_topic).await?;
    pubsub::ensure_subscription(&ps, &dead_letter_spec).await?;
    pubsub::ensure_subscription(&ps, &events_spec).await?;
    let dead_letters =
        Arc::new(pubsub::EventPublisher::new(&ps, &config.dead_letter_topic, 64).await?);
    let redrive = Arc::new(pubsub::EventPublisher::new(&ps, &config.events_topic, 64).await?);

    let participants = participants::GrpcParticipants::new(
        &config.participants,
        config.command_timeout,
        participants_tls,
    )?;
    let channel = |key: &str| {
        participants
            .channel(key)
            .ok_or_else(|| anyhow::anyhow!("no {key} endpoint configured"))
    };
    let lookups = api::Lookups {
        inventory: channel(definitions::order::INVENTORY)?,
        payment: channel(definitions::order::PAYMENT)?,
        timeout: config.placement_check_timeout,
        known: api::Known::new(config.placement_check_cache),
    };
    let work = shutdown.child_token();
    let mut registry = prometheus_client::registry::Registry::with_prefix("sagaflow_orchestrator");
    let metrics = metrics::Metrics::register(&mut registry);
    let driver = driver::Driver::new(
        pool,
        Arc::new(participants),
        config.sends,
        metrics.clone(),
        work.clone(),
    );

    let timers = tokio::spawn(driver.clone().run_timers(config.timer_poll));
    // Versions other instances store while this one runs (a rolling
    // deploy): loaded within seconds, so their sagas run here too.
    tokio::spawn({
        let pool = driver.pool().clone();
        let work = work.clone();
        async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                    _ = work.cancelled() => return,
                }
                if let Err(e) = definitions::stored::refresh(&pool).await {
                    tracing::debug!(
                        error = format!("{e:#}"),
                        "reading stored definitions failed; will retry"
                    );
                }
            }
        }
    });
    let resumed = driver.resume_all().await?;
    tracing::info!(
        resent = resumed.resent,
        suspended = resumed.suspended,
        skipped = resumed.skipped,
        "resumed in-flight sagas"
    );

    let (subscriber, messages) =
        pubsub::EventSubscriber::start_recreating(&ps, &events_spec, config.subscriber_streams)
            .await?;
    let consumer = tokio::spawn(consumer::run(
        driver.clone(),
        messages,
        config.consumer_concurrency,
        dead_letters.clone(),
        Arc::new(events_spec.clone()),
        work.clone(),
    ));
    let (dead_letter_subscriber, dead_letter_messages) =
        pubsub::EventSubscriber::start_recreating(&ps, &dead_letter_spec, 1).await?;
    let drainer = tokio::spawn(deadletter::drain(
        driver.pool().clone(),
        dead_letter_messages,
        metrics.clone(),
        work.clone(),
    ));
    let sweeper = tokio::spawn(retention::run(
        driver.pool().clone(),
        config.retention,
        work.clone(),
    ));

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<SagaServiceServer<api::Api>>().await;
    let hub = watch::Hub::new();
    let listening = tokio::spawn(
        hub.clone()
            .listen(config.database_url.clone(), work.clone()),
    );
    let api = api::Api {
        driver,
        lookups,
        redrive: redrive.clone(),
        events_topic: config.events_topic.clone(),
        watch: api::Watching {
            pool: sagaflow_common::db::pool(&config.database_url, config.watch_pool_size)?,
            hub: hub.clone(),
            settings: watch::Settings {
                buffer: config.watch_buffer,
                cursor_max_age: config.retention.history,
            },
            shutdown: shutdown.clone(),
        },
    };
    // The HTTP address outlives the drain: it stops once the rest has.
    let http_stop = CancellationToken::new();
    let _stop_http = http_stop.clone().drop_guard();
    let web = match &config.http_listen {
        Some(addr) => {
            let http_listener = ops::bind("SAGAFLOW_ORCHESTRATOR_HTTP_LISTEN", addr).await?;
            http::announce(&config.console, http_listener.local_addr()?);
            let ops = operations(
                registry,
                &config.database_url,
                &shutdown,
                metrics.clone(),
                subscriber.health(),
                hub,
            )?;
            Some(tokio::spawn(http::serve(
                http_listener,
                config.console.clone(),
                ops.router(),
                http_stop.clone(),
            )))
        }
        None => None,
    };
    let reflection = sagaflow_common::reflection::service(&[
        SagaServiceServer::<api::Api>::NAME,
        sagaflow_common::reflection::HEALTH,
        sagaflow_common::reflection::SERVICE,
    ])?;
    let tls = tokens.is_some();
    tracing::info!(addr = %listener.local_addr()?, tls, "orchestrator listening");
    let served = server
        .accept_http1(true)
        // Long-lived watch streams: find dead peers (a closed laptop, a
        // dropped NAT entry) instead of keeping their watchers forever.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .tcp_keepalive(Some(std::time::Duration::from_secs(60)))
        .layer(http::cors(config.cors_origins.as_deref()))
        .layer(tonic_web::GrpcWebLayer::new())
        .add_service(health_service)
        // Reflection lists and describes the API without a token: the
        // protos are no secret, and every call still needs one.
        .add_service(reflection)
        .add_service(auth::Guarded::new(SagaServiceServer::new(api), tokens))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown.clone().cancelled_owned(),
        )
        .await;
    work.cancel();
    let mut failed = Vec::new();
    for (name, task) in [
        ("consumer", consumer),
        ("dead-letter drainer", drainer),
        ("retention sweeper", sweeper),
    ] {
        if let Err(e) = task.await {
            failed.push(format!("{name}: {e}"));
        }
    }
    subscriber.shutdown().await;
    dead_letter_subscriber.shutdown().await;
    if let Err(e) = timers.await {
        failed.push(format!("timers: {e}"));
    }
    if let Err(e) = listening.await {
        failed.push(format!("watch listener: {e}"));
    }
    http_stop.cancel();
    if let Some(web) = web {
        match web.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed.push(format!("HTTP server: {e:#}")),
            Err(e) => failed.push(format!("HTTP server: {e}")),
        }
    }
    served?;
    anyhow::ensure!(failed.is_empty(), "tasks failed: {}", failed.join("; "));
    Ok(())
}

/// The operations routes: ready when the database answers and the events
/// subscription is consuming (and not draining); the metrics with the sagas
/// by state, the watchers and the Pub/Sub streams read at scrape time.
fn operations(
    registry: prometheus_client::registry::Registry,
    database_url: &str,
    shutdown: &CancellationToken,
    metrics: Arc<metrics::Metrics>,
    subscription: pubsub::SubscriberHealth,
    hub: Arc<watch::Hub>,
) -> anyhow::Result<Ops> {
    let probe = DbProbe::new(database_url)?;
    let database = probe.clone();
    let consuming = subscription.clone();
    Ok(Ops::new(registry, shutdown.clone())
        .check("database", move || {
            let probe = database.clone();
            async move { probe.check().await }
        })
        .check("pubsub", move || {
            let health = consuming.clone();
            async move { health.check() }
        })
        .refresh(move || {
            let (metrics, probe, hub) = (metrics.clone(), probe.clone(), hub.clone());
            let streams_up = subscription.streams_up();
            async move {
                let (sagas, lists) = hub.watchers();
                metrics.set_watchers(sagas, lists);
                metrics.set_streams_up(streams_up);
                metrics.refresh_sagas(probe.pool()).await;
            }
        }))
}

/// Every migration of the orchestrator's database, in order.
pub fn migrations() -> Vec<sagaflow_common::db::Migration> {
    store::MIGRATIONS
        .iter()
        .chain(deadletter::MIGRATIONS)
        .chain(retention::MIGRATIONS)
        .chain(store::WAKEUP_MIGRATIONS)
        .chain(watch::list::MIGRATIONS)
        .chain(definitions::stored::MIGRATIONS)
        .copied()
        .collect()
}

/// The events subscription (with its dead-letter policy) and the
/// dead-letter subscription.
pub fn subscriptions(config: &Config) -> (SubscriptionSpec, SubscriptionSpec) {
    (
        SubscriptionSpec {
            id: config.events_subscription.clone(),
            topic_id: config.events_topic.clone(),
            ordering: config.subscription_ordering,
            ack_deadline_secs: 30,
            dead_letter: Some((
                config.dead_letter_topic.clone(),
                config.max_delivery_attempts,
            )),
        },
        SubscriptionSpec {
            id: config.dead_letter_subscription.clone(),
            topic_id: config.dead_letter_topic.clone(),
            ordering: false,
            ack_deadline_secs: 30,
            dead_letter: None,
        },
    )
}
