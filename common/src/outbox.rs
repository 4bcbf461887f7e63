//! The transactional outbox shared by every participant database.
//!
//! A participant inserts an outcome event here in the same transaction as its
//! business change; the outbox relay claims unsent rows with
//! `FOR UPDATE SKIP LOCKED`, publishes them and marks them sent. An insert
//! fires `NOTIFY sagaflow_outbox` so relays wake at once; they poll as well.
//!
//! `id` orders rows; `event_id` is the event's identity (a re-emitted copy of
//! an event gets a new row with the same `event_id`).

use crate::db::Migration;

/// The channel a relay `LISTEN`s on.
pub const NOTIFY_CHANNEL: &str = "sagaflow_outbox";

/// Pub/Sub message attributes set on every published event.
pub mod attributes {
    pub const EVENT_ID: &str = "event_id";
    pub const SAGA_ID: &str = "saga_id";
    pub const EVENT_TYPE: &str = "event_type";
    pub const TRACEPARENT: &str = "traceparent";
}

/// Creates the outbox table; participants list it among their migrations.
pub const MIGRATION: Migration = Migration {
    version: 1,
    name: "outbox",
    sql: r#"
CREATE TABLE outbox (
    id               bigserial PRIMARY KEY,
    event_id         uuid NOT NULL,
    saga_id          uuid NOT NULL,
    event_type       text NOT NULL,
    payload          bytea NOT NULL,
    traceparent      text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz,
    publish_attempts integer NOT NULL DEFAULT 0,
    last_error       text
);
CREATE INDEX outbox_unsent_idx ON outbox (id) WHERE sent_at IS NULL;
CREATE INDEX outbox_sent_at_idx ON outbox (sent_at) WHERE sent_at IS NOT NULL;

CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('sagaflow_outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
"#,
};

/// Autovacuum for a queue table: vacuum and analyze after a thousand
/// changed rows instead of a share of the table, without throttling, so the
/// unsent-rows index stays short and the statistics current while rows
/// churn. Participants list it after [`MIGRATION`] (version 11).
pub const TUNING: Migration = Migration {
    version: 11,
    name: "outbox autovacuum",
    sql: r#"
ALTER TABLE outbox SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 1000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0
);
"#,
};

/// Insert one event into the outbox inside the caller's transaction (a
/// statement prepared once per connection).
pub async fn insert(
    tx: &impl deadpool_postgres::GenericClient,
    event_id: uuid::Uuid,
    saga_id: uuid::Uuid,
    event_type: &str,
    payload: &[u8],
    traceparent: Option<&str>,
) -> Result<(), tokio_postgres::Error> {
    let insert = tx
        .prepare_cached(
            "INSERT INTO outbox (event_id, saga_id, event_type, payload, traceparent)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .await?;
    tx.execute(
        &insert,
        &[&event_id, &saga_id, &event_type, &payload, &traceparent],
    )
    .await
    .map(drop)
}
