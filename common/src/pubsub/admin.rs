//! Idempotent creation of topics and subscriptions.
//!
//! Both calls create the resource when it is missing and treat
//! `ALREADY_EXISTS` as success (an existing resource is not compared with the
//! requested settings). Errors without a response from the service (the
//! emulator still starting: connection refused) and `UNAVAILABLE`-like codes
//! are retried with backoff for up to [`READY_TIMEOUT`].
//!
//! The emulator keeps everything in memory: after a restart its topics and
//! subscriptions are gone. [`ensure_subscription_and_topics`] re-creates a
//! subscription with every topic it needs, and [`is_not_found`] recognises
//! the error that tells a client its resource has disappeared.

use std::future::Future;
use std::time::Duration;

use google_cloud_gax::error::rpc::Code;
use google_cloud_pubsub::model::DeadLetterPolicy;
use tokio::time::Instant;

use super::PubSubConfig;
use super::backoff::Backoff;

/// How long to keep retrying while Pub/Sub (usually the emulator) is not
/// reachable yet.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A subscription to create if missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSpec {
    /// Subscription id (or full path).
    pub id: String,
    /// Topic id (or full path) the subscription reads.
    pub topic_id: String,
    /// Deliver messages of one ordering key in order. Costly on the emulator
    /// with many keys (it keeps a thread per key), so a setting.
    pub ordering: bool,
    /// Seconds Pub/Sub waits for an ack before redelivering (10..=600). The
    /// subscriber extends leases while a message is being handled.
    pub ack_deadline_secs: i32,
    /// `(dead_letter_topic_id, max_delivery_attempts)`: after that many
    /// deliveries a message goes to the dead-letter topic. The topic must
    /// exist (see [`ensure_topic`]); attempts must be within 5..=100.
    pub dead_letter: Option<(String, i32)>,
}

/// Create the topic `topic_id` unless it exists.
pub async fn ensure_topic(cfg: &PubSubConfig, topic_id: &str) -> anyhow::Result<()> {
    let admin = cfg.topic_admin().await?;
    let name = cfg.topic_path(topic_id);
    let created = retry_until_ready(&format!("creating topic {name}"), || {
        admin.create_topic().set_name(name.clone()).send()
    })
    .await?;
    if created {
        tracing::info!(topic = %name, "created Pub/Sub topic");
    }
    Ok(())
}

/// Create the subscription described by `spec` unless it exists.
pub async fn ensure_subscription(
    cfg: &PubSubConfig,
    spec: &SubscriptionSpec,
) -> anyhow::Result<()> {
    let admin = cfg.subscription_admin().await?;
    let name = cfg.subscription_path(&spec.id);
    let topic = cfg.topic_path(&spec.topic_id);
    let dead_letter = spec.dead_letter.as_ref().map(|(t, attempts)| {
        DeadLetterPolicy::new()
            .set_dead_letter_topic(cfg.topic_path(t))
            .set_max_delivery_attempts(*attempts)
    });
    let created = retry_until_ready(&format!("creating subscription {name}"), || {
        admin
            .create_subscription()
            .set_name(name.clone())
            .set_topic(topic.clone())
            .set_ack_deadline_seconds(spec.ack_deadline_secs)
            .set_enable_message_ordering(spec.ordering)
            .set_or_clear_dead_letter_policy(dead_letter.clone())
            .send()
    })
    .await?;
    if created {
        tracing::info!(subscription = %name, topic = %topic, "created Pub/Sub subscription");
    }
    Ok(())
}

/// Create, unless they exist, the subscription's dead-letter topic (if
/// any), its topic, then the subscription: everything `spec` needs, in the
/// order Pub/Sub requires. Used to re-create resources an emulator restart
/// lost.
pub async fn ensure_subscription_and_topics(
    cfg: &PubSubConfig,
    spec: &SubscriptionSpec,
) -> anyhow::Result<()> {
    if let Some((dead_letter_topic, _)) = &spec.dead_letter {
        ensure_topic(cfg, dead_letter_topic).await?;
    }
    ensure_topic(cfg, &spec.topic_id).await?;
    ensure_subscription(cfg, spec).await
}

/// Whether `err` (or any error in its chain) says the topic or subscription
/// does not exist: gRPC `NOT_FOUND` or HTTP 404, also when wrapped in a
/// failed publish.
pub fn is_not_found(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        if let Some(e) = e.downcast_ref::<google_cloud_pubsub::Error>() {
            return not_found(e);
        }
        if let Some(google_cloud_pubsub::error::PublishError::Rpc(e)) =
            e.downcast_ref::<google_cloud_pubsub::error::PublishError>()
        {
            return not_found(e);
        }
        false
    })
}

pub(crate) fn not_found(e: &google_cloud_pubsub::Error) -> bool {
    e.status().is_some_and(|s| s.code == Code::NotFound) || e.http_status_code() == Some(404)
}

/// Run a create call until it succeeds (`true`), finds the resource already
/// there (`false`), fails for good, or Pub/Sub stays unreachable for
/// [`READY_TIMEOUT`].
async fn retry_until_ready<T, F, Fut>(what: &str, mut call: F) -> anyhow::Result<bool>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = google_cloud_pubsub::Result<T>>,
{
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        let err = match call().await {
            Ok(_) => return Ok(true),
            Err(e) if already_exists(&e) => return Ok(false),
            Err(e) => e,
        };
        let delay = backoff.next_delay();
        if !is_unreachable(&err) || Instant::now() + delay > deadline {
            return Err(anyhow::Error::new(err).context(what.to_owned()));
        }
        tracing::debug!(error = %err, "{what}: Pub/Sub not reachable yet, retrying");
        tokio::time::sleep(delay).await;
    }
}

fn already_exists(e: &google_cloud_pubsub::Error) -> bool {
    e.status().is_some_and(|s| s.code == Code::AlreadyExists) || e.http_status_code() == Some(409)
}

/// No answer from the service at all, or an answer saying "try again".
fn is_unreachable(e: &google_cloud_pubsub::Error) -> bool {
    match (e.status(), e.http_status_code()) {
        (Some(s), _) => matches!(
            s.code,
            Code::Unavailable | Code::DeadlineExceeded | Code::Internal | Code::Unknown
        ),
        (None, Some(code)) => code == 429 || code >= 500,
        // Connection refused, reset, timeout: nothing came back.
        (None, None) => !e.is_serialization() && !e.is_deserialization(),
    }
}
