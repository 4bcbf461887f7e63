//! Google Cloud Pub/Sub through the official `google-cloud-pubsub` crate, with
//! the same code against the emulator and production.
//!
//! Layout:
//! - this file: [`PubSubConfig`] (project, emulator host, resource paths) and
//!   the client constructors every other piece goes through;
//! - [`admin`]: idempotent topic and subscription creation
//!   ([`ensure_topic`], [`ensure_subscription`],
//!   [`ensure_subscription_and_topics`]) and [`is_not_found`];
//! - [`publisher`]: [`EventPublisher`], a publisher with a cap on in-flight
//!   messages;
//! - [`subscriber`]: [`EventSubscriber`], several streaming pulls merged into
//!   one channel of [`ReceivedMessage`]s, re-opened when they fail; on the
//!   emulator it can re-create a subscription a restart lost
//!   ([`EventSubscriber::start_recreating`]).
//!
//! The crate does not read `PUBSUB_EMULATOR_HOST` itself: when the variable
//! is set, every client is built with `http://{host}` as its endpoint and
//! anonymous credentials. Otherwise clients use the default endpoint and
//! Application Default Credentials.

mod admin;
mod backoff;
mod publisher;
mod subscriber;

pub use admin::{
    READY_TIMEOUT, SubscriptionSpec, ensure_subscription, ensure_subscription_and_topics,
    ensure_topic, is_not_found,
};
pub use publisher::{
    EventPublisher, KEYS_PER_GENERATION, OutgoingMessage, PUBLISH_RETRY_MAX_DELAY, PUBLISH_TIMEOUT,
    limits,
};
pub use subscriber::{
    CHANNEL_CAPACITY, EventSubscriber, ReceivedMessage, SHUTDOWN_GRACE, STREAM_SETTLE,
    SubscriberHealth,
};

use anyhow::Context as _;
use google_cloud_auth::credentials::Credentials;
use google_cloud_pubsub::client::{Subscriber, SubscriptionAdmin, TopicAdmin};

use crate::config;

/// Where Pub/Sub is and which project the topics live in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubSubConfig {
    /// The Google Cloud project that owns topics and subscriptions.
    pub project: String,
    /// `host:port` of the emulator; `None` means the real service.
    pub emulator_host: Option<String>,
}

impl PubSubConfig {
    /// `SAGAFLOW_PUBSUB_PROJECT` (default `sagaflow-local`) and
    /// `PUBSUB_EMULATOR_HOST` (unset: production Pub/Sub).
    pub fn from_env() -> Self {
        Self {
            project: config::var_or("SAGAFLOW_PUBSUB_PROJECT", "sagaflow-local"),
            emulator_host: config::var_opt("PUBSUB_EMULATOR_HOST"),
        }
    }

    /// `projects/{project}/topics/{id}`; an id that is already a full path
    /// is returned as is.
    pub fn topic_path(&self, id: &str) -> String {
        self.path("topics", id)
    }

    /// `projects/{project}/subscriptions/{id}`; an id that is already a full
    /// path is returned as is.
    pub fn subscription_path(&self, id: &str) -> String {
        self.path("subscriptions", id)
    }

    fn path(&self, kind: &str, id: &str) -> String {
        if id.starts_with("projects/") {
            id.to_owned()
        } else {
            format!("projects/{}/{kind}/{id}", self.project)
        }
    }

    /// The endpoint override: the emulator over plain HTTP/2, or `None` for
    /// the crate's default (production) endpoint.
    pub(crate) fn endpoint(&self) -> Option<String> {
        self.emulator_host.as_ref().map(|h| format!("http://{h}"))
    }

    /// Anonymous credentials for the emulator; `None` means the crate's
    /// default (Application Default Credentials).
    pub(crate) fn credentials(&self) -> Option<Credentials> {
        self.emulator_host
            .as_ref()
            .map(|_| google_cloud_auth::credentials::anonymous::Builder::new().build())
    }

    /// A topic administration client (REST).
    pub async fn topic_admin(&self) -> anyhow::Result<TopicAdmin> {
        let mut b = TopicAdmin::builder();
        if let Some(e) = self.endpoint() {
            b = b.with_endpoint(e);
        }
        if let Some(c) = self.credentials() {
            b = b.with_credentials(c);
        }
        b.build()
            .await
            .context("building the Pub/Sub topic admin client")
    }

    /// A subscription administration client (REST).
    pub async fn subscription_admin(&self) -> anyhow::Result<SubscriptionAdmin> {
        let mut b = SubscriptionAdmin::builder();
        if let Some(e) = self.endpoint() {
            b = b.with_endpoint(e);
        }
        if let Some(c) = self.credentials() {
            b = b.with_credentials(c);
        }
        b.build()
            .await
            .context("building the Pub/Sub subscription admin client")
    }

    /// A streaming-pull client (gRPC).
    pub async fn subscriber_client(&self) -> anyhow::Result<Subscriber> {
        let mut b = Subscriber::builder();
        if let Some(e) = self.endpoint() {
            b = b.with_endpoint(e);
        }
        if let Some(c) = self.credentials() {
            b = b.with_credentials(c);
        }
        b.build()
            .await
            .context("building the Pub/Sub subscriber client")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(host: Option<&str>) -> PubSubConfig {
        PubSubConfig {
            project: "p".into(),
            emulator_host: host.map(str::to_owned),
        }
    }

    #[test]
    fn paths_are_built_from_the_project() {
        let c = cfg(None);
        assert_eq!(c.topic_path("t"), "projects/p/topics/t");
        assert_eq!(c.subscription_path("s"), "projects/p/subscriptions/s");
        assert_eq!(c.topic_path("projects/q/topics/t"), "projects/q/topics/t");
    }

    #[test]
    fn emulator_host_switches_endpoint_and_credentials() {
        assert_eq!(cfg(None).endpoint(), None);
        assert!(cfg(None).credentials().is_none());
        let c = cfg(Some("127.0.0.1:8085"));
        assert_eq!(c.endpoint().as_deref(), Some("http://127.0.0.1:8085"));
        assert!(c.credentials().is_some());
    }
}
