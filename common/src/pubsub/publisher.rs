//! [`EventPublisher`]: the crate's `Publisher` with the guards it lacks.
//!
//! - `Publisher::publish` queues without bound, so a semaphore caps the
//!   messages in flight (queued or being sent) at `max_in_flight`.
//! - After a failed publish on an ordering key the crate pauses that key
//!   until `resume_publish(key)`; [`EventPublisher::publish`] resumes it, so a
//!   transient error does not block a saga's events forever.
//! - The crate keeps one batching task per ordering key it has ever seen and
//!   never frees them (its TODO #4012). With the saga id as ordering key
//!   that grows without bound, so after [`KEYS_PER_GENERATION`] keyed
//!   messages a fresh `Publisher` is built on the same connection; the old
//!   one drains its in-flight batches and frees its tasks once dropped.
//!
//! Ordering keys need nothing on the publisher side in this crate (there is
//! no "enable message ordering" switch); subscriptions opt in.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use google_cloud_gax::exponential_backoff::ExponentialBackoffBuilder;
use google_cloud_gax::retry_policy::RetryPolicyExt as _;
use google_cloud_pubsub::client::{BasePublisher, Publisher};
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::retry_policy::RetryableErrors;
use tokio::sync::Semaphore;

use super::PubSubConfig;

/// How long one publish keeps retrying transient errors before it fails
/// (the crate's default is 10 minutes, too long to hold outbox row locks).
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest wait between two attempts of one publish. The crate's default
/// grows by 4x up to a minute: after a short outage (an emulator restart)
/// the queued events would wait long after Pub/Sub is back, and every
/// second of that costs sagas a step deadline.
pub const PUBLISH_RETRY_MAX_DELAY: Duration = Duration::from_secs(2);

/// Keyed messages sent through one `Publisher` before it is replaced (see
/// the module docs).
pub const KEYS_PER_GENERATION: usize = 10_000;

/// Pub/Sub's documented per-message limits, checked before sending so a
/// message that can never be published fails at once with a clear error
/// (instead of, on the emulator, timing out after [`PUBLISH_TIMEOUT`]).
pub mod limits {
    /// Data, attributes and ordering key together (10 MB).
    pub const MESSAGE_BYTES: usize = 10_000_000;
    pub const ATTRIBUTES: usize = 100;
    pub const ATTRIBUTE_KEY_BYTES: usize = 256;
    pub const ATTRIBUTE_VALUE_BYTES: usize = 1024;
    pub const ORDERING_KEY_BYTES: usize = 1024;
}

/// One message to publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// The message body.
    pub data: Vec<u8>,
    /// Messages with the same non-empty key are delivered in order on an
    /// ordered subscription; empty means no ordering.
    pub ordering_key: String,
    /// Message attributes (event id, saga id, traceparent, ...).
    pub attributes: Vec<(String, String)>,
}

impl OutgoingMessage {
    /// `Err` naming the first Pub/Sub limit this message exceeds.
    pub fn check_limits(&self) -> anyhow::Result<()> {
        use limits::*;
        let attrs: usize = self.attributes.iter().map(|(k, v)| k.len() + v.len()).sum();
        let size = self.data.len() + attrs + self.ordering_key.len();
        anyhow::ensure!(
            size <= MESSAGE_BYTES,
            "message of {size} bytes exceeds Pub/Sub's {MESSAGE_BYTES}-byte limit"
        );
        anyhow::ensure!(
            self.attributes.len() <= ATTRIBUTES,
            "{} attributes exceed Pub/Sub's limit of {ATTRIBUTES}",
            self.attributes.len()
        );
        for (k, v) in &self.attributes {
            anyhow::ensure!(
                !k.is_empty() && k.len() <= ATTRIBUTE_KEY_BYTES,
                "attribute key {k:?} must be 1..={ATTRIBUTE_KEY_BYTES} bytes"
            );
            anyhow::ensure!(
                v.len() <= ATTRIBUTE_VALUE_BYTES,
                "attribute {k:?} has {} bytes, over Pub/Sub's {ATTRIBUTE_VALUE_BYTES}-byte limit",
                v.len()
            );
        }
        anyhow::ensure!(
            self.ordering_key.len() <= ORDERING_KEY_BYTES,
            "ordering key of {} bytes exceeds Pub/Sub's {ORDERING_KEY_BYTES}-byte limit",
            self.ordering_key.len()
        );
        Ok(())
    }
}

/// A publisher for one topic with at most `max_in_flight` messages queued or
/// being sent. Cheap to share behind an `Arc`; `publish` takes `&self`.
#[derive(Debug)]
pub struct EventPublisher {
    /// Full topic path, for errors and new generations.
    topic: String,
    /// The connection every generation of `Publisher` shares.
    base: BasePublisher,
    /// The current `Publisher` and how many keyed messages it has sent.
    current: Mutex<Generation>,
    /// One permit per message in flight.
    in_flight: Semaphore,
    /// How long a message may wait for others to share its batch (`None`:
    /// the crate's default, 10 ms).
    delay: Option<Duration>,
}

#[derive(Debug)]
struct Generation {
    publisher: Publisher,
    keyed: usize,
}

impl EventPublisher {
    /// A publisher for `topic_id` (which must exist). `max_in_flight` is
    /// clamped to at least 1.
    pub async fn new(
        cfg: &PubSubConfig,
        topic_id: &str,
        max_in_flight: usize,
    ) -> anyhow::Result<Self> {
        Self::with_delay(cfg, topic_id, max_in_flight, None).await
    }

    /// As [`EventPublisher::new`], with the longest time a message waits
    /// for others to share its batch (`None`: the crate's default). Messages
    /// without an ordering key share batches; each ordering key has its own.
    pub async fn with_delay(
        cfg: &PubSubConfig,
        topic_id: &str,
        max_in_flight: usize,
        delay: Option<Duration>,
    ) -> anyhow::Result<Self> {
        let topic = cfg.topic_path(topic_id);
        let mut b = BasePublisher::builder()
            .with_retry_policy(RetryableErrors.with_time_limit(PUBLISH_TIMEOUT))
            .with_backoff_policy(
                ExponentialBackoffBuilder::new()
                    .with_initial_delay(Duration::from_millis(100))
                    .with_maximum_delay(PUBLISH_RETRY_MAX_DELAY)
                    .with_scaling(2.0)
                    .clamp(),
            );
        if let Some(e) = cfg.endpoint() {
            b = b.with_endpoint(e);
        }
        if let Some(c) = cfg.credentials() {
            b = b.with_credentials(c);
        }
        let base = b
            .build()
            .await
            .with_context(|| format!("building the Pub/Sub publisher for {topic}"))?;
        let publisher = build(&base, &topic, delay);
        Ok(Self {
            delay,
            topic,
            base,
            current: Mutex::new(Generation {
                publisher,
                keyed: 0,
            }),
            in_flight: Semaphore::new(max_in_flight.max(1)),
        })
    }

    /// The full path of the topic this publisher sends to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Publish one message and wait for Pub/Sub to acknowledge it; returns
    /// the server-assigned message id. Waits for a free in-flight slot first.
    /// A message over Pub/Sub's [`limits`] fails without being sent.
    pub async fn publish(&self, msg: OutgoingMessage) -> anyhow::Result<String> {
        msg.check_limits()
            .with_context(|| format!("not publishing to {}", self.topic))?;
        let _permit = self
            .in_flight
            .acquire()
            .await
            .context("the publisher is shut down")?;
        let publisher = self.publisher_for(&msg.ordering_key);
        let key = msg.ordering_key;
        let message = Message::new()
            .set_data(msg.data)
            .set_attributes(msg.attributes)
            .set_ordering_key(key.clone());
        match publisher.publish(message).await {
            Ok(id) => Ok(id),
            Err(e) => {
                if !key.is_empty() {
                    // Unpause the key on the publisher that paused it.
                    publisher.resume_publish(key.clone());
                }
                Err(anyhow::Error::new(e).context(format!(
                    "publishing to {} (ordering key {key:?})",
                    self.topic
                )))
            }
        }
    }

    /// Send everything queued now and wait until it is acknowledged or failed.
    pub async fn flush(&self) {
        let publisher = self.lock().publisher.clone();
        publisher.flush().await;
    }

    /// Refuse new messages, then flush the ones already queued.
    pub async fn shutdown(self) {
        self.in_flight.close();
        self.flush().await;
    }

    /// The `Publisher` to send a message with `key` through, replacing it
    /// when it has seen too many keys.
    fn publisher_for(&self, key: &str) -> Publisher {
        let mut g = self.lock();
        if !key.is_empty() {
            g.keyed += 1;
            if g.keyed > KEYS_PER_GENERATION {
                tracing::debug!(topic = %self.topic, "replacing publisher to free per-key tasks");
                g.publisher = build(&self.base, &self.topic, self.delay);
                g.keyed = 1;
            }
        }
        g.publisher.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generation> {
        // The guarded data is two plain fields; a panic elsewhere cannot
        // leave it inconsistent.
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn build(base: &BasePublisher, topic: &str, delay: Option<Duration>) -> Publisher {
    let b = base.publisher(topic.to_owned());
    match delay {
        Some(d) => b.set_delay_threshold(d).build(),
        None => b.build(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked_before_sending() {
        let ok = OutgoingMessage {
            data: vec![0; 1000],
            ordering_key: "k".into(),
            attributes: vec![("a".into(), "b".into())],
        };
        assert!(ok.check_limits().is_ok());
        let big = OutgoingMessage {
            data: vec![0; limits::MESSAGE_BYTES + 1],
            ..ok.clone()
        };
        assert!(big.check_limits().is_err());
        let long_value = OutgoingMessage {
            attributes: vec![("a".into(), "v".repeat(limits::ATTRIBUTE_VALUE_BYTES + 1))],
            ..ok.clone()
        };
        assert!(long_value.check_limits().is_err());
        let empty_key = OutgoingMessage {
            attributes: vec![(String::new(), "v".into())],
            ..ok.clone()
        };
        assert!(empty_key.check_limits().is_err());
        let long_key = OutgoingMessage {
            ordering_key: "k".repeat(limits::ORDERING_KEY_BYTES + 1),
            ..ok
        };
        assert!(long_key.check_limits().is_err());
    }
}
