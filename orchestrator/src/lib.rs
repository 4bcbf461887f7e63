//! The Sagaflow orchestrator.
//!
//! Layout:
//! - [`saga`]: the pure engine (definitions, state, `apply`), no I/O.
//! - [`definitions`]: the saga types this build runs (the order saga).
//! - [`store`]: sagas, history and applied events in Postgres.
//! - [`driver`]: carries out effects: sends commands, fires timers, resumes.
//! - [`participants`]: the gRPC client that calls any step by method path.
//! - [`consumer`]: Pub/Sub events in, transitions out.
//! - [`api`] and [`views`]: the public gRPC API and its read models.
//! - [`config`]: environment variables.

pub mod api;
pub mod config;
pub mod consumer;
pub mod definitions;
pub mod driver;
pub mod participants;
pub mod saga;
pub mod store;
pub mod views;

use std::sync::Arc;

use sagaflow_common::pubsub::{self, PubSubConfig, SubscriptionSpec};
use sagaflow_protos::orchestrator::v1::saga_service_server::SagaServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// Run the orchestrator until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    for def in definitions::registry() {
        def.validate().map_err(anyhow::Error::msg)?;
    }
    let pool = sagaflow_common::db::pool(&config.database_url, config.pool_size)?;
    sagaflow_common::db::migrate(&pool, store::MIGRATIONS).await?;

    let ps = PubSubConfig::from_env();
    pubsub::ensure_topic(&ps, &config.events_topic).await?;
    pubsub::ensure_subscription(
        &ps,
        &SubscriptionSpec {
            id: config.events_subscription.clone(),
            topic_id: config.events_topic.clone(),
            ordering: config.subscription_ordering,
            ack_deadline_secs: 30,
            dead_letter: None,
        },
    )
    .await?;

    let participants =
        participants::GrpcParticipants::new(&config.participants, config.command_timeout)?;
    let inventory = participants
        .channel(definitions::order::INVENTORY)
        .ok_or_else(|| anyhow::anyhow!("no inventory endpoint configured"))?;
    let work = shutdown.child_token();
    let driver = driver::Driver::new(
        pool,
        Arc::new(participants),
        config.max_concurrent_sends,
        work.clone(),
    );

    let timers = tokio::spawn(driver.clone().run_timers(config.timer_poll));
    let resumed = driver.resume_all().await?;
    tracing::info!(resumed, "resumed in-flight sagas");

    let (subscriber, messages) =
        pubsub::EventSubscriber::start(&ps, &config.events_subscription, config.subscriber_streams)
            .await?;
    let consumer = tokio::spawn(consumer::run(
        driver.clone(),
        messages,
        config.consumer_concurrency,
        work.clone(),
    ));

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<SagaServiceServer<api::Api>>().await;
    let api = api::Api { driver, inventory };
    tracing::info!(addr = %listener.local_addr()?, "orchestrator listening");
    let served = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(SagaServiceServer::new(api))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown.clone().cancelled_owned(),
        )
        .await;
    work.cancel();
    let _ = consumer.await;
    subscriber.shutdown().await;
    let _ = timers.await;
    served?;
    Ok(())
}
