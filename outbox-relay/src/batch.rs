//! One round of relaying: claim a batch of unsent rows, publish them
//! concurrently, mark the acknowledged ones sent, all in one transaction.
//!
//! The row locks (`FOR UPDATE SKIP LOCKED`) are held while publishing, so
//! other relays skip these rows instead of publishing them too. If the
//! transaction does not commit (crash, lost connection) after Pub/Sub
//! acknowledged a message, the row is published again later: delivery is at
//! least once and consumers dedupe on `event_id`.

use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use deadpool_postgres::Pool;
use sagaflow_common::outbox::attributes;
use sagaflow_common::pubsub::{EventPublisher, OutgoingMessage, is_not_found};
use sagaflow_common::trace;
use tokio_util::sync::CancellationToken;

use crate::metrics::WorkerMetrics;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Claims unsent rows in id order, skipping rows another relay holds and
/// rows this worker is backing off from (`$2`).
pub const CLAIM: &str = "
    SELECT id, event_id, saga_id, event_type, payload, traceparent, publish_attempts
    FROM outbox
    WHERE sent_at IS NULL AND id <> ALL($2::bigint[])
    ORDER BY id
    LIMIT $1
    FOR UPDATE SKIP LOCKED";

/// `clock_timestamp()`, not `now()`: the time Pub/Sub acknowledged, not the
/// time the claim began, so `sent_at - created_at` is the relay's lag
/// (returned per row, in seconds, for the lag histogram).
const MARK_SENT: &str = "
    UPDATE outbox SET sent_at = clock_timestamp() WHERE id = ANY($1::bigint[])
    RETURNING extract(epoch FROM sent_at - created_at)::float8";

const MARK_FAILED: &str = "
    UPDATE outbox AS o
    SET publish_attempts = o.publish_attempts + 1, last_error = f.error
    FROM unnest($1::bigint[], $2::text[]) AS f(id, error)
    WHERE o.id = f.id";

/// A claimed outbox row.
#[derive(Debug)]
struct Row {
    id: i64,
    event_id: uuid::Uuid,
    saga_id: uuid::Uuid,
    event_type: String,
    payload: Vec<u8>,
    traceparent: Option<String>,
    publish_attempts: i32,
}

impl Row {
    fn from_sql(r: &tokio_postgres::Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            id: r.try_get("id")?,
            event_id: r.try_get("event_id")?,
            saga_id: r.try_get("saga_id")?,
            event_type: r.try_get("event_type")?,
            payload: r.try_get("payload")?,
            traceparent: r.try_get("traceparent")?,
            publish_attempts: r.try_get("publish_attempts")?,
        })
    }
}

/// A row whose publish failed this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failed {
    pub id: i64,
    /// Failed attempts so far, this one included.
    pub attempts: i32,
    /// Pub/Sub said the topic does not exist (an emulator restart loses it).
    pub topic_missing: bool,
}

/// What one round did.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub claimed: usize,
    pub sent: usize,
    pub failed: Vec<Failed>,
}

/// Longest wait for one database step (connection, claim, update, commit).
/// Past it the transaction is abandoned: its rows unlock when the server
/// notices and are relayed again (at least once).
pub(crate) const DB_TIMEOUT: Duration = Duration::from_secs(30);

/// One database step, bounded by [`DB_TIMEOUT`].
async fn db<T, E>(what: &'static str, step: impl Future<Output = Result<T, E>>) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(DB_TIMEOUT, step).await {
        Ok(r) => r.context(what),
        Err(_) => anyhow::bail!("{what}: no answer within {DB_TIMEOUT:?}"),
    }
}

/// Claim up to `limit` rows (not in `skip`), publish them, record the
/// results and commit. Cancelling `shutdown` stops it before it claims
/// anything; once rows are claimed the batch is finished.
pub(crate) async fn relay_batch(
    pool: &Pool,
    publisher: &EventPublisher,
    limit: i64,
    ordering_key: bool,
    skip: &[i64],
    metrics: &WorkerMetrics,
    shutdown: &CancellationToken,
) -> anyhow::Result<Outcome> {
    let mut client = tokio::select! {
        () = shutdown.cancelled() => return Ok(Outcome::default()),
        c = db("getting a database connection", pool.get()) => c?,
    };
    let outcome =
        claim_and_publish(&mut client, publisher, limit, ordering_key, skip, metrics).await;
    if outcome.is_err() {
        // The connection may be broken or mid-statement (timeout): close it
        // rather than hand it to the next round.
        drop(deadpool_postgres::Object::take(client));
    }
    outcome
}

async fn claim_and_publish(
    client: &mut deadpool_postgres::Object,
    publisher: &EventPublisher,
    limit: i64,
    ordering_key: bool,
    skip: &[i64],
    metrics: &WorkerMetrics,
) -> anyhow::Result<Outcome> {
    let tx = db("starting a transaction", client.transaction()).await?;
    let claim = db("preparing the claim", tx.prepare_cached(CLAIM)).await?;
    let rows = db("claiming outbox rows", tx.query(&claim, &[&limit, &skip]))
        .await?
        .iter()
        .map(Row::from_sql)
        .collect::<Result<Vec<_>, _>>()
        .context("reading outbox rows")?;
    let claimed = rows.len();
    if claimed == 0 {
        return Ok(Outcome::default());
    }

    // The batch is its own trace (it serves many sagas): it links to each
    // row's trace, and each row's publish span sits in its saga's trace.
    let span = tracing::info_span!(
        "relay.batch",
        outbox.count = claimed,
        outbox.first_id = rows[0].id,
        outbox.last_id = rows[claimed - 1].id,
        outbox.failed = tracing::field::Empty,
        messaging.system = "gcp_pubsub",
        messaging.batch.message_count = claimed,
    );
    for row in &rows {
        if let Some(tp) = &row.traceparent {
            trace::add_link(&span, tp);
        }
    }
    let results = futures::future::join_all(
        rows.into_iter()
            .map(|row| publish(publisher, row, ordering_key)),
    )
    .instrument(span.clone())
    .await;

    let mut sent = Vec::with_capacity(claimed);
    let (mut failed_ids, mut errors, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for (id, attempts, result) in results {
        match result {
            Ok(_) => sent.push(id),
            Err(e) => {
                let error = format!("{e:#}");
                tracing::warn!(parent: &span, outbox.id = id, attempts = attempts + 1, %error, "publishing outbox row failed");
                failed_ids.push(id);
                errors.push(error);
                failed.push(Failed {
                    id,
                    attempts: attempts + 1,
                    topic_missing: is_not_found(&e),
                });
            }
        }
    }
    span.record("outbox.failed", failed.len());
    if !failed.is_empty() {
        trace::fail(
            &span,
            "publish",
            &format!("{} of {claimed} rows not published", failed.len()),
        );
    }
    metrics.publish_errors.inc_by(failed.len() as u64);
    let mut lags = Vec::new();
    if !sent.is_empty() {
        let mark = db("preparing the mark", tx.prepare_cached(MARK_SENT)).await?;
        lags = db("marking rows sent", tx.query(&mark, &[&sent])).await?;
    }
    if !failed_ids.is_empty() {
        db(
            "recording publish failures",
            tx.execute(MARK_FAILED, &[&failed_ids, &errors]),
        )
        .await?;
    }
    db("committing the batch", tx.commit()).await?;
    metrics.published.inc_by(sent.len() as u64);
    for lag in &lags {
        metrics.lag.observe(lag.get::<_, f64>(0).max(0.0));
    }
    Ok(Outcome {
        claimed,
        sent: sent.len(),
        failed,
    })
}

/// Publish one row in a `relay.publish` span that continues the row's trace.
/// Returns the row id, its previous failed attempts and the result.
async fn publish(
    publisher: &EventPublisher,
    row: Row,
    ordering_key: bool,
) -> (i64, i32, anyhow::Result<String>) {
    // A PRODUCER span per the messaging conventions, under the participant
    // span that wrote the row.
    let topic = publisher.topic();
    let topic = topic.rsplit('/').next().unwrap_or(topic);
    let span = tracing::info_span!(
        "relay.publish",
        otel.name = format!("send {topic}").as_str(),
        otel.kind = "producer",
        messaging.system = "gcp_pubsub",
        messaging.operation.type = "send",
        messaging.operation.name = "send",
        messaging.destination.name = topic,
        messaging.message.id = tracing::field::Empty,
        messaging.gcp_pubsub.message.ordering_key = ordering_key.then(|| row.saga_id.to_string()),
        outbox.id = row.id,
        outbox.publish_attempts = row.publish_attempts,
        saga.id = %row.saga_id,
        event.id = %row.event_id,
        event.type = %row.event_type,
    );
    trace::set_parent(&span, row.traceparent.as_deref());
    // Consumers continue from the publish span when it is recorded, else
    // from the row's own context.
    let traceparent = trace::traceparent_of(&span.context()).or(row.traceparent);
    let mut attrs = vec![
        (attributes::EVENT_ID.to_owned(), row.event_id.to_string()),
        (attributes::SAGA_ID.to_owned(), row.saga_id.to_string()),
        (attributes::EVENT_TYPE.to_owned(), row.event_type),
    ];
    if let Some(tp) = traceparent {
        attrs.push((attributes::TRACEPARENT.to_owned(), tp));
    }
    let msg = OutgoingMessage {
        data: row.payload,
        ordering_key: if ordering_key {
            row.saga_id.to_string()
        } else {
            String::new()
        },
        attributes: attrs,
    };
    let result = publisher.publish(msg).instrument(span.clone()).await;
    match &result {
        Ok(id) => {
            span.record("messaging.message.id", id.as_str());
        }
        Err(e) => trace::fail(&span, "publish", &format!("{e:#}")),
    }
    (row.id, row.publish_attempts, result)
}
