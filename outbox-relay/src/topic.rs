//! Re-creating the events topic after an emulator restart.
//!
//! The emulator keeps topics in memory: once restarted, every publish fails
//! with `NOT_FOUND` until someone creates the topic again. On the emulator
//! the relay does that itself (it created the topic at start, too); against
//! production Pub/Sub a missing topic is a configuration error to report,
//! not to paper over.

use std::time::Duration;

use anyhow::Context as _;
use sagaflow_common::pubsub::{PubSubConfig, ensure_topic};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// After re-creating the topic, wait this long before publishing to it
/// again. Pub/Sub keeps a message only for the subscriptions that exist
/// when it is published, and the subscribers re-create theirs only when
/// they notice the restart (the orchestrator checks every 0.5 s): events
/// published into a topic without subscriptions are lost (and recovered
/// only by step deadlines, seconds later). Emulator only, and rare.
const SUBSCRIBER_GRACE: Duration = Duration::from_secs(2);

/// Shared by every worker of the relay.
pub(crate) struct Topic {
    pubsub: PubSubConfig,
    topic_id: String,
    /// When the topic was last re-created; serialises re-creations.
    last: Mutex<Option<Instant>>,
}

impl Topic {
    pub(crate) fn new(pubsub: PubSubConfig, topic_id: String) -> Self {
        Self {
            pubsub,
            topic_id,
            last: Mutex::new(None),
        }
    }

    /// After a publish failed with `NOT_FOUND`: on the emulator, create the
    /// topic again (unless another worker has just done it) and wait out
    /// [`SUBSCRIBER_GRACE`]. `true` when the topic is back and the failed
    /// rows can be retried at once; `false` off the emulator or when the
    /// re-creation failed (the caller then backs off as after any failed
    /// publish).
    pub(crate) async fn recreate(&self) -> bool {
        if self.pubsub.emulator_host.is_none() {
            return false;
        }
        let ready_at = {
            let mut last = self.last.lock().await;
            match *last {
                Some(t) if t.elapsed() < SUBSCRIBER_GRACE => t + SUBSCRIBER_GRACE,
                _ => {
                    let created = ensure_topic(&self.pubsub, &self.topic_id)
                        .await
                        .context("re-creating the events topic on the emulator");
                    if let Err(e) = created {
                        tracing::warn!(topic = %self.topic_id, error = format!("{e:#}"), "re-creating the events topic failed");
                        return false;
                    }
                    tracing::warn!(
                        topic = %self.topic_id,
                        grace_ms = SUBSCRIBER_GRACE.as_millis() as u64,
                        "the events topic was missing (emulator restarted?); re-created it, publishing again after a grace period for subscribers"
                    );
                    let now = Instant::now();
                    *last = Some(now);
                    now + SUBSCRIBER_GRACE
                }
            }
        };
        tokio::time::sleep_until(ready_at).await;
        true
    }
}
