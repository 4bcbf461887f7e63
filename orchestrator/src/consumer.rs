//! The event consumer: Pub/Sub messages in, state transitions out.
//!
//! Each message is decoded, deduplicated by event id and applied in one
//! transaction (see [`store::apply_event`]); the message is acked only after
//! that commit, and the next command is sent after the ack. A message that
//! can never apply (undecodable, unknown saga, impossible transition) is
//! logged, published to the dead-letter topic with its reason and acked: it
//! never blocks or crashes the consumer. A database failure nacks it for
//! redelivery after a short backoff (the subscription's dead-letter policy
//! bounds the redeliveries).

use std::sync::Arc;

use prost::Message as _;
use sagaflow_common::outbox::attributes;
use sagaflow_common::pubsub::{EventPublisher, ReceivedMessage, SubscriptionSpec};
use sagaflow_protos::events::v1::{CommandKind, EventEnvelope, Outcome as PbOutcome};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::deadletter;
use crate::driver::Driver;
use crate::metrics::{DeadLetter, Metrics, Path};
use crate::saga::{Event, Kind, Outcome};
use crate::store::{self, Applied};

/// A decoded event, ready for the state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub event_id: Uuid,
    pub saga_id: Uuid,
    pub event: Event,
}

/// Decode a Pub/Sub message's data as an `EventEnvelope`.
pub fn decode(data: &[u8]) -> Result<Decoded, String> {
    let env = EventEnvelope::decode(data).map_err(|e| format!("undecodable envelope: {e}"))?;
    let event_id = Uuid::parse_str(&env.event_id).map_err(|_| "event_id: not a UUID".to_owned())?;
    let saga_id = Uuid::parse_str(&env.saga_id).map_err(|_| "saga_id: not a UUID".to_owned())?;
    let kind = match CommandKind::try_from(env.kind) {
        Ok(CommandKind::Action) => Kind::Action,
        Ok(CommandKind::Compensation) => Kind::Compensation,
        _ => return Err(format!("kind: invalid value {}", env.kind)),
    };
    let outcome = outcome_of(env.outcome, &env.reason, &env.output)?;
    Ok(Decoded {
        event_id,
        saga_id,
        event: Event::Outcome {
            step: env.step as usize,
            kind,
            outcome,
        },
    })
}

/// The outcome an event (or a participant's reply) carries, with its
/// output: an output that is not a JSON object of at most
/// [`MAX_OUTPUT_BYTES`](sagaflow_common::output::MAX_OUTPUT_BYTES) bytes
/// makes the message malformed (dead-lettered with the reason).
pub fn outcome_of(outcome: i32, reason: &str, output: &str) -> Result<Outcome, String> {
    match PbOutcome::try_from(outcome) {
        Ok(PbOutcome::Succeeded) => Ok(Outcome::Succeeded {
            output: sagaflow_common::output::decode(output).map_err(|e| format!("output: {e}"))?,
        }),
        Ok(PbOutcome::Refused) => Ok(Outcome::Refused {
            reason: reason.to_owned(),
        }),
        _ => Err(format!("outcome: invalid value {outcome}")),
    }
}

/// Most deliveries checked for duplicates with one read.
const BATCH: usize = 256;

/// Consume until shutdown, handling up to `concurrency` messages at once.
/// Deliveries waiting together are checked against `processed_events` with
/// one read: a copy of an event already applied (the Pub/Sub copy of a
/// reply the fast path applied, a redelivery) is acked at once, and only
/// the others take a transaction.
pub async fn run(
    driver: Driver,
    mut messages: tokio::sync::mpsc::Receiver<ReceivedMessage>,
    concurrency: usize,
    dead_letters: Arc<EventPublisher>,
    source: Arc<SubscriptionSpec>,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut batch = Vec::with_capacity(BATCH);
    'consume: loop {
        let first = tokio::select! {
            m = messages.recv() => match m { Some(m) => m, None => break },
            _ = shutdown.cancelled() => break,
        };
        batch.push(first);
        while batch.len() < BATCH {
            match messages.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let decoded: Vec<Result<Decoded, String>> = batch.iter().map(|m| decode(&m.data)).collect();
        let ids: Vec<Uuid> = decoded.iter().flatten().map(|d| d.event_id).collect();
        // On a database error nothing is known: each message goes the
        // whole way (and meets the error there).
        let applied = store::applied_among(driver.pool(), &ids)
            .await
            .unwrap_or_default();
        for (msg, decoded) in batch.drain(..).zip(decoded) {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break 'consume;
            };
            let driver = driver.clone();
            let dead_letters = dead_letters.clone();
            let source = source.clone();
            let seen = decoded
                .as_ref()
                .is_ok_and(|d| applied.contains(&d.event_id));
            tokio::spawn(async move {
                handle(&driver, &dead_letters, &source, msg, decoded, seen).await;
                drop(permit);
            });
        }
    }
    // Let handlers in hand finish (they ack or nack what they hold).
    let _ = permits.acquire_many(concurrency as u32).await;
}

/// Handle one delivery, `decoded` from its data; `seen`: its event id was
/// found applied just now.
async fn handle(
    driver: &Driver,
    dead_letters: &EventPublisher,
    source: &SubscriptionSpec,
    msg: ReceivedMessage,
    decoded: Result<Decoded, String>,
    seen: bool,
) {
    let traceparent = msg.attributes.get(attributes::TRACEPARENT).cloned();
    // A CONSUMER span per the messaging conventions, under the relay's
    // publish span (the message's `traceparent`).
    let span = tracing::info_span!(
        "saga.consume",
        otel.name = format!("process {}", source.id).as_str(),
        otel.kind = "consumer",
        messaging.system = "gcp_pubsub",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = %source.topic_id,
        messaging.destination.subscription.name = %source.id,
        messaging.message.id = %msg.message_id,
        messaging.gcp_pubsub.message.delivery_attempt = msg.delivery_attempt,
        saga.id = msg.attributes.get(attributes::SAGA_ID).map(String::as_str),
        event.id = msg.attributes.get(attributes::EVENT_ID).map(String::as_str),
        event.type = msg.attributes.get(attributes::EVENT_TYPE).map(String::as_str),
        saga.step.index = tracing::field::Empty,
        event.duplicate = seen,
        saga.outcome = tracing::field::Empty,
    );
    sagaflow_common::trace::set_parent(&span, traceparent.as_deref());
    async move {
        let decoded = match decoded {
            Ok(d) => d,
            Err(reason) => {
                return reject(driver.metrics(), dead_letters, msg, DeadLetter::Undecodable, &reason).await;
            }
        };
        let span = tracing::Span::current();
        span.record("saga.id", tracing::field::display(decoded.saga_id));
        span.record("event.id", tracing::field::display(decoded.event_id));
        if let Event::Outcome { step, .. } = &decoded.event {
            span.record("saga.step.index", step);
        }
        let received_lag_ms = msg
            .publish_time
            .and_then(|t| t.elapsed().ok())
            .map(|d| d.as_millis() as u64);
        let started = std::time::Instant::now();
        let result = if seen {
            Ok(Applied::Duplicate)
        } else {
            driver
                .apply(Path::PubSub, decoded.event_id, decoded.saga_id, &decoded.event)
                .await
        };
        tracing::debug!(
            received_lag_ms,
            apply_ms = started.elapsed().as_millis() as u64,
            "event applied"
        );
        let metrics = driver.metrics();
        if seen {
            metrics.applied(Path::PubSub, &Applied::Duplicate);
        }
        span.record(
            "saga.outcome",
            match &result {
                Ok(Applied::Changed(_)) => "applied",
                Ok(Applied::Unchanged) => "unchanged",
                Ok(Applied::Duplicate) => "duplicate",
                Ok(_) => "dead_lettered",
                Err(_) => "redelivered",
            },
        );
        match result {
            Ok(Applied::Changed(committed)) => {
                msg.ack();
                driver.carry_out(&committed, sagaflow_common::trace::current_traceparent());
            }
            Ok(Applied::Unchanged) => {
                tracing::debug!("late or duplicate outcome; nothing changed");
                msg.ack();
            }
            Ok(Applied::Duplicate) => {
                span.record("event.duplicate", true);
                tracing::debug!("event already applied");
                msg.ack();
            }
            Ok(Applied::UnknownSaga) => {
                reject(
                    metrics,
                    dead_letters,
                    msg,
                    DeadLetter::UnknownSaga,
                    &format!("unknown saga {}", decoded.saga_id),
                )
                .await;
            }
            Ok(Applied::Rejected(e)) => {
                reject(metrics, dead_letters, msg, DeadLetter::Rejected, &e.to_string()).await;
            }
            Ok(Applied::Suspended { reason }) => {
                let why = format!(
                    "saga {} is suspended ({reason}); its outcome is asked for again when an operator resumes it",
                    decoded.saga_id
                );
                reject(metrics, dead_letters, msg, DeadLetter::Suspended, &why).await;
            }
            Err(e) => {
                // The database, or a definition version another instance
                // has (a rolling deploy): let it come back, here or there.
                tracing::warn!(error = %e, "applying event failed; it will be redelivered");
                retry_later(msg).await;
            }
        }
    }
    .instrument(span)
    .await
}

async fn reject(
    metrics: &Metrics,
    dead_letters: &EventPublisher,
    msg: ReceivedMessage,
    why: DeadLetter,
    reason: &str,
) {
    sagaflow_common::trace::fail(&tracing::Span::current(), why.as_str(), reason);
    tracing::warn!(reason, "poison message: dead-lettering it");
    match deadletter::send(dead_letters, &msg, reason).await {
        Ok(()) => {
            metrics.dead_lettered(why);
            msg.ack();
        }
        Err(e) => {
            tracing::warn!(error = %e, "dead-lettering failed; it will be redelivered");
            retry_later(msg).await;
        }
    }
}

/// Nack after a pause that grows with the delivery attempt, so a short
/// outage does not burn through the subscription's delivery attempts.
async fn retry_later(msg: ReceivedMessage) {
    let attempt = msg.delivery_attempt.unwrap_or(1).clamp(1, 6) as u32;
    tokio::time::sleep(std::time::Duration::from_millis(250 << attempt)).await;
    msg.nack();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> EventEnvelope {
        EventEnvelope {
            event_id: Uuid::now_v7().to_string(),
            saga_id: Uuid::now_v7().to_string(),
            step: 1,
            kind: CommandKind::Action as i32,
            outcome: PbOutcome::Refused as i32,
            reason: "credit_limit_exceeded".into(),
            ..Default::default()
        }
    }

    #[test]
    fn decodes_a_refusal() {
        let d = decode(&envelope().encode_to_vec()).unwrap();
        assert_eq!(
            d.event,
            Event::Outcome {
                step: 1,
                kind: Kind::Action,
                outcome: Outcome::Refused {
                    reason: "credit_limit_exceeded".into()
                }
            }
        );
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        assert!(decode(b"\xff\xff\xff garbage").is_err());
        let mut e = envelope();
        e.event_id = "nope".into();
        assert_eq!(
            decode(&e.encode_to_vec()).unwrap_err(),
            "event_id: not a UUID"
        );
        let mut e = envelope();
        e.kind = 0;
        assert!(decode(&e.encode_to_vec()).unwrap_err().starts_with("kind"));
        let mut e = envelope();
        e.outcome = 7;
        assert!(
            decode(&e.encode_to_vec())
                .unwrap_err()
                .starts_with("outcome")
        );
    }
}
