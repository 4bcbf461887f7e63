//! [`EventSubscriber`]: several streaming pulls on one subscription, merged
//! into one channel.
//!
//! One StreamingPull stream drains about 1.9k msg/s on the emulator; several
//! on the same subscription scale roughly linearly. Each stream runs on its
//! own task ("pump") that forwards messages into a bounded channel, so a slow
//! consumer applies back-pressure instead of piling messages up (messages
//! waiting in the channel keep their leases extended by the crate).
//!
//! A stream that fails or ends is logged and re-opened with backoff; the
//! consumer never sees the error. The failed stream's lease loop is shut down
//! in the background so acks for messages it already handed out still reach
//! Pub/Sub.
//!
//! Delivery is at least once: a [`ReceivedMessage`] that is dropped without
//! `ack`/`nack` is nacked (redelivered).
//!
//! [`EventSubscriber::health`] says whether the streams are consuming, for
//! readiness: a stream counts as up from its start, down from a failure
//! until it delivers a message or has stayed open [`STREAM_SETTLE`] since it
//! was re-opened; and on the emulator, down while the watchdog finds the
//! subscription missing or Pub/Sub unreachable. (A stream whose connection
//! the client library is quietly re-establishing reports nothing and still
//! counts as up: only the emulator's watchdog sees that case.)
//!
//! The emulator keeps subscriptions in memory, so a restarted emulator has
//! none. [`EventSubscriber::start_recreating`] watches for that (emulator
//! only): every [`RECREATE_CHECK`] it asks whether the subscription exists,
//! and when it does not, re-creates it with its topics and re-opens every
//! stream at once. Polling, rather than waiting for a stream to report
//! `NOT_FOUND`, because the crate re-opens a stream that lost its connection
//! by itself, with a backoff that grows by 4x to a minute: a stream that
//! lived through an emulator restart may sleep long after the emulator is
//! back. (When another client re-created the subscription first, that
//! backoff is what we wait.) Messages published while the subscription was
//! missing are lost (Pub/Sub keeps messages only for existing
//! subscriptions); Sagaflow recovers them with its step deadlines.
//!
//! **Emulator limitation: it never forgets a stream.** A StreamingPull
//! whose client went away (process killed or exited, stream cancelled) stays
//! registered as a consumer: the emulator goes on leasing it a share of the
//! messages (in proportion to the streams, it seems), and those come back
//! only about a minute later. Measured here: after one subscriber process with 2
//! streams exited, 40% of new messages stayed away for ~60 s, for as long as
//! we looked (2 minutes); only restarting the emulator clears it. (Its log
//! shows grpc-java failing with `NoSuchMethodError:
//! InternalStatus.asRuntimeException` when a stream closes.) Real Pub/Sub
//! redelivers when a stream dies. Sagaflow copes the way it copes with any
//! lost event, by re-sending on step deadlines; tests that restart
//! orchestrators need attempts x deadline well above a minute.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use google_cloud_pubsub::client::Subscriber;
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::handler::Handler;
use prost::bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::PubSubConfig;
use super::admin::{self, SubscriptionSpec};
use super::backoff::Backoff;

/// Messages buffered between the pumps and the consumer.
pub const CHANNEL_CAPACITY: usize = 64;

/// How long [`EventSubscriber::shutdown`] waits for outstanding messages to
/// be acked or nacked and for the acks to be sent.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// How often [`EventSubscriber::start_recreating`] checks, on the emulator,
/// that its subscription still exists.
pub const RECREATE_CHECK: Duration = Duration::from_millis(500);

/// Longest wait between attempts to re-open a failed stream. Short: an
/// attempt is cheap, and while no stream is open no event is consumed.
const REOPEN_MAX_DELAY: Duration = Duration::from_secs(2);

/// How long a re-opened stream must stay open (or deliver a message) to
/// count as up again: longer than [`REOPEN_MAX_DELAY`], so a stream that
/// fails at every attempt never looks up between two failures.
pub const STREAM_SETTLE: Duration = Duration::from_secs(5);

/// Whether a subscriber's streams are consuming; cheap to clone and to ask.
#[derive(Debug, Clone)]
pub struct SubscriberHealth {
    inner: Arc<HealthInner>,
}

#[derive(Debug)]
struct HealthInner {
    /// The origin of the times below.
    started: Instant,
    /// Per stream: milliseconds after `started` from which it counts as up;
    /// [`DOWN`] while it is failed.
    up_from: Vec<AtomicU64>,
    /// The watchdog's last look at the subscription: [`PROBE_OK`],
    /// [`PROBE_MISSING`] or [`PROBE_UNREACHABLE`] (always OK without one).
    probe: AtomicU8,
}

const DOWN: u64 = u64::MAX;
const PROBE_OK: u8 = 0;
const PROBE_MISSING: u8 = 1;
const PROBE_UNREACHABLE: u8 = 2;

impl SubscriberHealth {
    fn new(streams: usize) -> SubscriberHealth {
        SubscriberHealth {
            inner: Arc::new(HealthInner {
                started: Instant::now(),
                up_from: (0..streams).map(|_| AtomicU64::new(0)).collect(),
                probe: AtomicU8::new(PROBE_OK),
            }),
        }
    }

    fn now_ms(&self) -> u64 {
        self.inner.started.elapsed().as_millis() as u64
    }

    /// A message arrived on stream `i`: it is up.
    fn delivered(&self, i: usize) {
        let slot = &self.inner.up_from[i];
        if slot.load(Ordering::Relaxed) != 0 {
            slot.store(0, Ordering::Relaxed);
        }
    }

    /// Stream `i` failed: down until it settles again.
    fn failed(&self, i: usize) {
        self.inner.up_from[i].store(DOWN, Ordering::Relaxed);
    }

    /// Stream `i` was re-opened: up once it stayed open [`STREAM_SETTLE`].
    fn reopened(&self, i: usize) {
        let at = self.now_ms() + STREAM_SETTLE.as_millis() as u64;
        self.inner.up_from[i].store(at, Ordering::Relaxed);
    }

    fn probed(&self, outcome: u8) {
        self.inner.probe.store(outcome, Ordering::Relaxed);
    }

    /// Streams up now.
    pub fn streams_up(&self) -> usize {
        let now = self.now_ms();
        self.inner
            .up_from
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) <= now)
            .count()
    }

    /// `Ok` while the subscription is consuming: at least one stream up,
    /// and (on the emulator) the subscription found at the last look.
    pub fn check(&self) -> Result<(), String> {
        match self.inner.probe.load(Ordering::Relaxed) {
            PROBE_MISSING => return Err("the Pub/Sub subscription is missing".to_owned()),
            PROBE_UNREACHABLE => return Err("Pub/Sub does not answer".to_owned()),
            _ => {}
        }
        match self.streams_up() {
            0 => Err(format!(
                "no Pub/Sub stream is consuming (0 of {} up)",
                self.inner.up_from.len()
            )),
            _ => Ok(()),
        }
    }
}

/// A message handed to the consumer. Call [`ack`](Self::ack) once it is
/// processed; [`nack`](Self::nack) (or dropping it) asks for redelivery.
#[derive(Debug)]
pub struct ReceivedMessage {
    /// The message body.
    pub data: Bytes,
    /// Message attributes.
    pub attributes: HashMap<String, String>,
    /// The server-assigned id (a republished copy gets a new one: dedupe on
    /// an id carried in the attributes instead).
    pub message_id: String,
    /// The ordering key it was published with (empty when none).
    pub ordering_key: String,
    /// When Pub/Sub accepted the message.
    pub publish_time: Option<SystemTime>,
    /// 1 on first delivery, then counts redeliveries. Pub/Sub only sets it on
    /// subscriptions with a dead-letter policy.
    pub delivery_attempt: Option<i32>,
    /// Acks or nacks the message on the stream that delivered it.
    handler: Handler,
}

impl ReceivedMessage {
    fn new(m: Message, handler: Handler) -> Self {
        Self {
            data: m.data,
            attributes: m.attributes,
            message_id: m.message_id,
            ordering_key: m.ordering_key,
            publish_time: m.publish_time.and_then(|t| SystemTime::try_from(t).ok()),
            delivery_attempt: handler.delivery_attempt(),
            handler,
        }
    }

    /// The attribute `name`, if present.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.get(name).map(String::as_str)
    }

    /// Acknowledge: Pub/Sub will not deliver the message again (best effort;
    /// delivery stays at least once).
    pub fn ack(self) {
        self.handler.ack();
    }

    /// Ask for redelivery now instead of after the ack deadline.
    pub fn nack(self) {
        self.handler.nack();
    }
}

/// Runs the streams of one subscription. Dropping it stops the streams
/// without waiting; call [`shutdown`](Self::shutdown) to let the last acks
/// reach Pub/Sub.
#[derive(Debug)]
pub struct EventSubscriber {
    /// Full subscription path, for logs.
    subscription: String,
    /// Cancelled to stop every pump.
    stop: CancellationToken,
    /// One task per stream.
    pumps: Vec<JoinHandle<()>>,
    /// Re-creates the subscription when it disappears (emulator only).
    watchdog: Option<JoinHandle<()>>,
    /// Whether the streams are consuming.
    health: SubscriberHealth,
}

impl EventSubscriber {
    /// Open `streams` (at least 1) streaming pulls on `subscription_id` and
    /// return the channel that merges them. The subscription must exist; if
    /// it does not (yet), the streams keep retrying with backoff.
    pub async fn start(
        cfg: &PubSubConfig,
        subscription_id: &str,
        streams: usize,
    ) -> anyhow::Result<(Self, mpsc::Receiver<ReceivedMessage>)> {
        Self::open(cfg, subscription_id, streams, None).await
    }

    /// Like [`start`](Self::start) on `spec.id`, and on the emulator
    /// (`cfg.emulator_host` set) re-create the subscription and its topics
    /// (see [`admin::ensure_subscription_and_topics`]) whenever it
    /// disappears, which is what an emulator restart does, then re-open the
    /// streams at once. Against production Pub/Sub this is [`start`]: a
    /// subscription deleted there is an operator's decision to respect.
    ///
    /// [`start`]: Self::start
    pub async fn start_recreating(
        cfg: &PubSubConfig,
        spec: &SubscriptionSpec,
        streams: usize,
    ) -> anyhow::Result<(Self, mpsc::Receiver<ReceivedMessage>)> {
        let recreate = cfg.emulator_host.is_some().then(|| spec.clone());
        Self::open(cfg, &spec.id, streams, recreate).await
    }

    async fn open(
        cfg: &PubSubConfig,
        subscription_id: &str,
        streams: usize,
        recreate: Option<SubscriptionSpec>,
    ) -> anyhow::Result<(Self, mpsc::Receiver<ReceivedMessage>)> {
        let client = cfg.subscriber_client().await?;
        let subscription = cfg.subscription_path(subscription_id);
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let stop = CancellationToken::new();
        // Bumped by the watchdog after it re-created the subscription.
        let (reopen_tx, reopen_rx) = watch::channel(0u64);
        let health = SubscriberHealth::new(streams.max(1));
        let watchdog = match recreate {
            Some(spec) => {
                let dog = Watchdog {
                    admin: cfg.subscription_admin().await?,
                    cfg: cfg.clone(),
                    subscription: subscription.clone(),
                    spec,
                    reopen: reopen_tx,
                    stop: stop.clone(),
                    health: health.clone(),
                };
                Some(tokio::spawn(dog.run()))
            }
            None => None,
        };
        let pumps = (0..streams.max(1))
            .map(|index| {
                let pump = Pump {
                    client: client.clone(),
                    subscription: subscription.clone(),
                    index,
                    tx: tx.clone(),
                    stop: stop.clone(),
                    reopen: reopen_rx.clone(),
                    health: health.clone(),
                };
                tokio::spawn(pump.run())
            })
            .collect();
        Ok((
            Self {
                subscription,
                stop,
                pumps,
                watchdog,
                health,
            },
            rx,
        ))
    }

    /// Whether the streams are consuming (for readiness and metrics).
    pub fn health(&self) -> SubscriberHealth {
        self.health.clone()
    }

    /// Stop pulling, then wait (up to [`SHUTDOWN_GRACE`]) until every message
    /// already handed out is acked or nacked and those acks are sent.
    ///
    /// Messages still buffered in the channel count as handed out: drain the
    /// receiver or drop it before (or while) awaiting this.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(dog) = self.watchdog.take() {
            // It only sleeps or makes admin calls: nothing to flush.
            dog.abort();
        }
        let pumps = futures::future::join_all(std::mem::take(&mut self.pumps));
        if tokio::time::timeout(SHUTDOWN_GRACE, pumps).await.is_err() {
            tracing::warn!(
                subscription = %self.subscription,
                "Pub/Sub subscriber shutdown timed out; unacked messages will be redelivered"
            );
        }
    }
}

impl Drop for EventSubscriber {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(dog) = self.watchdog.take() {
            dog.abort();
        }
    }
}

/// Checks that the subscription exists and re-creates it when it does not.
struct Watchdog {
    admin: google_cloud_pubsub::client::SubscriptionAdmin,
    cfg: PubSubConfig,
    /// Full subscription path.
    subscription: String,
    spec: SubscriptionSpec,
    /// Bumped after a re-creation: every pump re-opens its stream.
    reopen: watch::Sender<u64>,
    stop: CancellationToken,
    /// Told what each look found.
    health: SubscriberHealth,
}

impl Watchdog {
    /// Longest wait for one existence check; an emulator that is down is
    /// checked again next round.
    const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

    async fn run(self) {
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(RECREATE_CHECK) => {}
            }
            let probe = self
                .admin
                .get_subscription()
                .set_subscription(self.subscription.clone())
                .send();
            match tokio::time::timeout(Self::PROBE_TIMEOUT, probe).await {
                Ok(Err(e)) if admin::not_found(&e) => self.health.probed(PROBE_MISSING),
                // Present, or Pub/Sub unreachable: nothing to do now.
                Ok(Ok(_)) => {
                    self.health.probed(PROBE_OK);
                    continue;
                }
                Ok(Err(_)) | Err(_) => {
                    self.health.probed(PROBE_UNREACHABLE);
                    continue;
                }
            }
            tracing::warn!(
                subscription = %self.subscription,
                "Pub/Sub subscription missing (emulator restarted?); re-creating it"
            );
            let recreated = tokio::select! {
                () = self.stop.cancelled() => return,
                r = admin::ensure_subscription_and_topics(&self.cfg, &self.spec) => r,
            };
            match recreated {
                Ok(()) => {
                    tracing::info!(subscription = %self.subscription, "re-created the Pub/Sub subscription; re-opening its streams");
                    self.reopen.send_modify(|generation| *generation += 1);
                }
                Err(e) => tracing::warn!(
                    subscription = %self.subscription,
                    error = format!("{e:#}"),
                    "re-creating the Pub/Sub subscription failed; will check again"
                ),
            }
        }
    }
}

/// One streaming pull, re-opened whenever it fails.
struct Pump {
    client: Subscriber,
    subscription: String,
    index: usize,
    tx: mpsc::Sender<ReceivedMessage>,
    stop: CancellationToken,
    /// Changes when the subscription was re-created: re-open at once.
    reopen: watch::Receiver<u64>,
    /// Told when this stream delivers, fails and is re-opened.
    health: SubscriberHealth,
}

impl Pump {
    async fn run(mut self) {
        let mut backoff = Backoff::new(Duration::from_millis(100), REOPEN_MAX_DELAY);
        // Failed streams whose lease loops are still finishing.
        let mut retired = JoinSet::new();
        let mut stream = self.client.subscribe(self.subscription.clone()).build();
        // False once the watchdog is gone (or there is none).
        let mut watched = true;
        loop {
            let next = tokio::select! {
                biased;
                () = self.stop.cancelled() => break,
                changed = self.reopen.changed(), if watched => {
                    if changed.is_err() {
                        watched = false;
                        continue;
                    }
                    tracing::debug!(subscription = %self.subscription, stream = self.index, "re-opening the stream on the re-created subscription");
                    let token = stream.shutdown_token();
                    retired.spawn(async move { token.shutdown().await });
                    while retired.try_join_next().is_some() {}
                    backoff.reset();
                    stream = self.client.subscribe(self.subscription.clone()).build();
                    self.health.reopened(self.index);
                    continue;
                }
                next = stream.next() => next,
            };
            let failure = match next {
                Some(Ok((message, handler))) => {
                    backoff.reset();
                    self.health.delivered(self.index);
                    let message = ReceivedMessage::new(message, handler);
                    tracing::trace!(
                        subscription = %self.subscription,
                        stream = self.index,
                        message.id = %message.message_id,
                        message.ordering_key = %message.ordering_key,
                        message.delivery_attempt = message.delivery_attempt,
                        "received"
                    );
                    tokio::select! {
                        biased;
                        // Dropping the message nacks it.
                        () = self.stop.cancelled() => break,
                        sent = self.tx.send(message) => if sent.is_err() {
                            tracing::debug!(subscription = %self.subscription, "receiver dropped; stopping stream");
                            break;
                        },
                    }
                    continue;
                }
                Some(Err(e)) => format!("{e}"),
                None => "the stream ended".to_owned(),
            };
            self.health.failed(self.index);
            let delay = backoff.next_delay();
            tracing::warn!(
                subscription = %self.subscription,
                stream = self.index,
                error = %failure,
                retry_in_ms = delay.as_millis() as u64,
                "Pub/Sub stream failed; re-opening it"
            );
            let token = stream.shutdown_token();
            retired.spawn(async move { token.shutdown().await });
            while retired.try_join_next().is_some() {}
            tokio::select! {
                () = self.stop.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
            stream = self.client.subscribe(self.subscription.clone()).build();
            self.health.reopened(self.index);
        }
        // Close our end of the channel so a draining consumer sees its end,
        // then let acks for messages already handed out reach Pub/Sub.
        drop(self.tx);
        stream.shutdown_token().shutdown().await;
        while retired.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_stream_is_down_until_it_delivers_or_settles() {
        let health = SubscriberHealth::new(2);
        assert_eq!(health.streams_up(), 2);
        assert!(health.check().is_ok());
        health.failed(0);
        health.failed(1);
        assert_eq!(health.streams_up(), 0);
        let why = health.check().unwrap_err();
        assert!(why.contains("0 of 2"), "{why}");
        // Re-opened: not up before it settles...
        health.reopened(0);
        health.reopened(1);
        assert_eq!(health.streams_up(), 0);
        // ...unless it delivers.
        health.delivered(1);
        assert_eq!(health.streams_up(), 1);
        assert!(health.check().is_ok());
    }

    #[test]
    fn the_watchdog_s_last_look_decides_on_the_emulator() {
        let health = SubscriberHealth::new(1);
        health.probed(PROBE_MISSING);
        assert!(health.check().unwrap_err().contains("missing"));
        health.probed(PROBE_UNREACHABLE);
        assert!(health.check().unwrap_err().contains("does not answer"));
        health.probed(PROBE_OK);
        assert!(health.check().is_ok());
    }
}
