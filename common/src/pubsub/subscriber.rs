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

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use google_cloud_pubsub::client::Subscriber;
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::handler::Handler;
use prost::bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::PubSubConfig;
use super::backoff::Backoff;

/// Messages buffered between the pumps and the consumer.
pub const CHANNEL_CAPACITY: usize = 64;

/// How long [`EventSubscriber::shutdown`] waits for outstanding messages to
/// be acked or nacked and for the acks to be sent.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

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
        let client = cfg.subscriber_client().await?;
        let subscription = cfg.subscription_path(subscription_id);
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let stop = CancellationToken::new();
        let pumps = (0..streams.max(1))
            .map(|index| {
                let pump = Pump {
                    client: client.clone(),
                    subscription: subscription.clone(),
                    index,
                    tx: tx.clone(),
                    stop: stop.clone(),
                };
                tokio::spawn(pump.run())
            })
            .collect();
        Ok((
            Self {
                subscription,
                stop,
                pumps,
            },
            rx,
        ))
    }

    /// Stop pulling, then wait (up to [`SHUTDOWN_GRACE`]) until every message
    /// already handed out is acked or nacked and those acks are sent.
    ///
    /// Messages still buffered in the channel count as handed out: drain the
    /// receiver or drop it before (or while) awaiting this.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
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
    }
}

/// One streaming pull, re-opened whenever it fails.
struct Pump {
    client: Subscriber,
    subscription: String,
    index: usize,
    tx: mpsc::Sender<ReceivedMessage>,
    stop: CancellationToken,
}

impl Pump {
    async fn run(self) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        // Failed streams whose lease loops are still finishing.
        let mut retired = JoinSet::new();
        let mut stream = self.client.subscribe(self.subscription.clone()).build();
        loop {
            let next = tokio::select! {
                biased;
                () = self.stop.cancelled() => break,
                next = stream.next() => next,
            };
            let failure = match next {
                Some(Ok((message, handler))) => {
                    backoff.reset();
                    let message = ReceivedMessage::new(message, handler);
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
        }
        // Close our end of the channel so a draining consumer sees its end,
        // then let acks for messages already handed out reach Pub/Sub.
        drop(self.tx);
        stream.shutdown_token().shutdown().await;
        while retired.join_next().await.is_some() {}
    }
}
