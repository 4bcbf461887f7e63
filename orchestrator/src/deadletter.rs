//! Dead letters: events the orchestrator can never apply.
//!
//! Two roads lead to the dead-letter topic:
//! - the consumer publishes a poison message there itself, with its reason
//!   in the `dead_letter_reason` attribute, and acks the original
//!   (undecodable, unknown saga, a transition the state machine refuses);
//! - Pub/Sub forwards a message there after `max_delivery_attempts` failed
//!   deliveries (the subscription's dead-letter policy).
//!
//! A drainer consumes the dead-letter subscription and stores every message
//! in `dead_letters` (counted, listed, re-driven from there). Re-driving
//! publishes a stored message back to the events topic; the consumer's
//! event-id dedupe makes that safe.

use std::collections::HashMap;

use deadpool_postgres::Pool;
use sagaflow_common::db::Migration;
use sagaflow_common::pubsub::{EventPublisher, OutgoingMessage, ReceivedMessage};
use tokio_util::sync::CancellationToken;

/// Attribute carrying why a message was dead-lettered.
pub const REASON: &str = "dead_letter_reason";
/// Attribute carrying the Pub/Sub message id it had on the events topic.
pub const ORIGINAL_MESSAGE_ID: &str = "dead_letter_original_message_id";

/// Versions 50+ belong to dead letters (the store's own start at 1).
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 50,
    name: "dead_letters",
    sql: r#"
CREATE TABLE dead_letters (
    id           bigserial PRIMARY KEY,
    message_id   text NOT NULL UNIQUE,
    event_id     text,
    saga_id      text,
    reason       text NOT NULL,
    attributes   jsonb NOT NULL,
    data         bytea NOT NULL,
    dead_at      timestamptz NOT NULL DEFAULT now(),
    redriven_at  timestamptz
);
"#,
}];

/// Publish `msg` to the dead-letter topic with `reason`; the caller acks it
/// once this returns Ok.
pub async fn send(
    publisher: &EventPublisher,
    msg: &ReceivedMessage,
    reason: &str,
) -> anyhow::Result<()> {
    let mut attributes: Vec<(String, String)> = msg
        .attributes
        .iter()
        .filter(|(k, _)| k.as_str() != REASON && k.as_str() != ORIGINAL_MESSAGE_ID)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    attributes.push((REASON.to_owned(), truncate(reason, 1000)));
    attributes.push((ORIGINAL_MESSAGE_ID.to_owned(), msg.message_id.clone()));
    publisher
        .publish(OutgoingMessage {
            data: msg.data.to_vec(),
            ordering_key: String::new(),
            attributes,
        })
        .await
        .map(drop)
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].to_owned(),
        None => s.to_owned(),
    }
}

/// Store everything that reaches the dead-letter subscription, until
/// shutdown.
pub async fn drain(
    pool: Pool,
    mut messages: tokio::sync::mpsc::Receiver<ReceivedMessage>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            m = messages.recv() => match m { Some(m) => m, None => return },
            _ = shutdown.cancelled() => return,
        };
        match store(&pool, &msg).await {
            Ok(()) => {
                metrics.dead_letter_stored();
                msg.ack();
            }
            Err(e) => {
                tracing::warn!(error = %e, "storing a dead letter failed; it will be redelivered");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                msg.nack();
            }
        }
    }
}

async fn store(pool: &Pool, msg: &ReceivedMessage) -> anyhow::Result<()> {
    let reason = msg.attribute(REASON).map(str::to_owned).unwrap_or_else(|| {
        format!(
            "delivery attempts exhausted ({} deliveries)",
            msg.delivery_attempt.unwrap_or_default()
        )
    });
    let attributes = serde_json::to_value(&msg.attributes)?;
    let client = pool.get().await?;
    let inserted = client
        .execute(
            "INSERT INTO dead_letters (message_id, event_id, saga_id, reason, attributes, data)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (message_id) DO NOTHING",
            &[
                &msg.message_id,
                &msg.attribute(sagaflow_common::outbox::attributes::EVENT_ID),
                &msg.attribute(sagaflow_common::outbox::attributes::SAGA_ID),
                &reason,
                &attributes,
                &msg.data.as_ref(),
            ],
        )
        .await?;
    if inserted == 1 {
        tracing::warn!(reason, message.id = %msg.message_id, "dead letter stored");
    }
    Ok(())
}

/// One stored dead letter.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: i64,
    pub event_id: Option<String>,
    pub saga_id: Option<String>,
    pub reason: String,
    pub dead_at: chrono::DateTime<chrono::Utc>,
    pub redriven_at: Option<chrono::DateTime<chrono::Utc>>,
    pub data_len: usize,
}

/// The newest `limit` dead letters, and how many there are in all.
pub async fn list(pool: &Pool, limit: i64) -> anyhow::Result<(i64, Vec<DeadLetter>)> {
    let client = pool.get().await?;
    let total: i64 = client
        .query_one("SELECT count(*) FROM dead_letters", &[])
        .await?
        .get(0);
    let rows = client
        .query(
            "SELECT id, event_id, saga_id, reason, dead_at, redriven_at, length(data)
             FROM dead_letters ORDER BY id DESC LIMIT $1",
            &[&limit],
        )
        .await?;
    let letters = rows
        .iter()
        .map(|r| DeadLetter {
            id: r.get(0),
            event_id: r.get(1),
            saga_id: r.get(2),
            reason: r.get(3),
            dead_at: r.get(4),
            redriven_at: r.get(5),
            data_len: r.get::<_, i32>(6) as usize,
        })
        .collect();
    Ok((total, letters))
}

/// The ids among `ids` that name no stored dead letter.
pub async fn unknown(pool: &Pool, ids: &[i64]) -> anyhow::Result<Vec<i64>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT wanted.id FROM unnest($1::bigint[]) AS wanted(id)
             WHERE NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.id = wanted.id)",
            &[&ids],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Publish stored dead letters back to the events topic: those in `ids`,
/// or (with `None`) every one not re-driven yet. Returns how many.
pub async fn redrive(
    pool: &Pool,
    publisher: &EventPublisher,
    ids: Option<&[i64]>,
) -> anyhow::Result<usize> {
    let client = pool.get().await?;
    let rows = match ids {
        Some(ids) => {
            client
                .query(
                    "SELECT id, attributes, data FROM dead_letters WHERE id = ANY($1) ORDER BY id",
                    &[&ids],
                )
                .await?
        }
        None => {
            client
                .query(
                    "SELECT id, attributes, data FROM dead_letters WHERE redriven_at IS NULL ORDER BY id",
                    &[],
                )
                .await?
        }
    };
    let mut done = 0;
    for row in rows {
        let id: i64 = row.get(0);
        let attributes: HashMap<String, String> = serde_json::from_value(row.get(1))?;
        let attributes = attributes
            .into_iter()
            .filter(|(k, _)| k != REASON && k != ORIGINAL_MESSAGE_ID)
            .collect();
        publisher
            .publish(OutgoingMessage {
                data: row.get(2),
                ordering_key: String::new(),
                attributes,
            })
            .await?;
        client
            .execute(
                "UPDATE dead_letters SET redriven_at = now() WHERE id = $1",
                &[&id],
            )
            .await?;
        done += 1;
    }
    Ok(done)
}
