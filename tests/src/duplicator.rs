//! Duplicate and late deliveries, injected from outside: a test-side
//! subscriber on a second subscription of the events topic re-publishes a
//! random sample of the events it sees to the same topic, some at once and
//! some after a random delay. The copies carry the original's data and
//! attributes (so the same `event_id`) plus [`COPY_ATTRIBUTE`], which keeps
//! them from being copied again. The orchestrator must apply each event
//! once, however many copies arrive and however late.
//!
//! It survives emulator restarts like the services do: its subscription is
//! re-created when it disappears.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng as _, SeedableRng as _};
use sagaflow_common::pubsub::{
    EventPublisher, EventSubscriber, OutgoingMessage, ReceivedMessage, SubscriptionSpec,
    ensure_subscription_and_topics,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::system::System;

/// Set on every injected copy.
pub const COPY_ATTRIBUTE: &str = "sagaflow_test_copy";

/// What to inject.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Share of events copied (0..=1).
    pub probability: f64,
    /// Share of the copies held back before publishing (the rest go at once).
    pub delayed_share: f64,
    /// Longest hold-back of a delayed copy.
    pub max_delay: Duration,
    /// Seed of the choices (which events, how late). Which events exist and
    /// the order they arrive in still vary between runs.
    pub seed: u64,
}

/// Counters, readable while it runs.
#[derive(Debug, Default)]
pub struct Stats {
    /// Original events seen on the side subscription.
    pub seen: AtomicU64,
    /// Copies published at once / after a delay, acknowledged by Pub/Sub.
    pub immediate: AtomicU64,
    pub delayed: AtomicU64,
    /// Copies Pub/Sub did not accept (emulator down or topic missing).
    pub failed: AtomicU64,
}

impl Stats {
    /// Copies that reached the topic.
    pub fn published(&self) -> u64 {
        self.immediate.load(Ordering::Relaxed) + self.delayed.load(Ordering::Relaxed)
    }
}

pub struct Duplicator {
    pub stats: Arc<Stats>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Duplicator {
    /// Subscribe to `sys`'s events topic (subscription `<orchestrator's>-dup`)
    /// and start copying.
    pub async fn start(sys: &System, config: Config) -> anyhow::Result<Duplicator> {
        let ps = sys.pubsub();
        let spec = SubscriptionSpec {
            id: format!("{}-dup", sys.subscription),
            topic_id: sys.topic.clone(),
            ordering: false,
            ack_deadline_secs: 10,
            dead_letter: None,
        };
        ensure_subscription_and_topics(&ps, &spec).await?;
        let (subscriber, messages) = EventSubscriber::start_recreating(&ps, &spec, 1).await?;
        let publisher = Arc::new(EventPublisher::new(&ps, &sys.topic, 256).await?);
        let stats = Arc::new(Stats::default());
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(
            config,
            subscriber,
            messages,
            publisher,
            stats.clone(),
            stopped,
        ));
        Ok(Duplicator { stats, stop, task })
    }

    /// Stop copying; delayed copies still pending are published first.
    pub async fn stop(self) -> Arc<Stats> {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.stats
    }
}

async fn run(
    config: Config,
    subscriber: EventSubscriber,
    mut messages: tokio::sync::mpsc::Receiver<ReceivedMessage>,
    publisher: Arc<EventPublisher>,
    stats: Arc<Stats>,
    mut stopped: watch::Receiver<bool>,
) {
    let rng = Arc::new(Mutex::new(rand::rngs::StdRng::seed_from_u64(config.seed)));
    let mut copies = tokio::task::JoinSet::new();
    loop {
        let msg = tokio::select! {
            m = messages.recv() => match m { Some(m) => m, None => break },
            _ = stopped.changed() => break,
        };
        let is_copy = msg.attribute(COPY_ATTRIBUTE).is_some();
        let copy = (!is_copy).then(|| OutgoingMessage {
            data: msg.data.to_vec(),
            ordering_key: msg.ordering_key.clone(),
            attributes: msg
                .attributes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .chain([(COPY_ATTRIBUTE.to_owned(), "1".to_owned())])
                .collect(),
        });
        msg.ack();
        let Some(copy) = copy else { continue };
        stats.seen.fetch_add(1, Ordering::Relaxed);
        let delay = {
            let mut r = rng.lock().unwrap_or_else(|p| p.into_inner());
            if !r.random_bool(config.probability.clamp(0.0, 1.0)) {
                continue;
            }
            r.random_bool(config.delayed_share.clamp(0.0, 1.0))
                .then(|| config.max_delay.mul_f64(r.random::<f64>()))
        };
        let publisher = publisher.clone();
        let stats = stats.clone();
        copies.spawn(async move {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            let counter = match (publisher.publish(copy).await, delay) {
                (Ok(_), None) => &stats.immediate,
                (Ok(_), Some(_)) => &stats.delayed,
                (Err(e), _) => {
                    tracing::debug!(error = format!("{e:#}"), "injecting a copy failed");
                    &stats.failed
                }
            };
            counter.fetch_add(1, Ordering::Relaxed);
        });
        while copies.try_join_next().is_some() {}
    }
    drop(messages);
    subscriber.shutdown().await;
    // Publishes give up after PUBLISH_TIMEOUT; bound the wait anyway.
    let _ = tokio::time::timeout(Duration::from_secs(90), async {
        while copies.join_next().await.is_some() {}
    })
    .await;
    if let Ok(p) = Arc::try_unwrap(publisher) {
        p.shutdown().await;
    }
}
