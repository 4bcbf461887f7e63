//! The inbox: one row per command id, holding the outcome event that answered
//! it, so a repeat is answered (and re-emitted) without doing anything twice.
//!
//! The row is claimed first (`INSERT ... ON CONFLICT DO NOTHING`) and filled
//! in at the end of the same transaction, so `outcome`, `event_id` and
//! `envelope` are never seen empty by another transaction. A concurrent
//! repeat blocks on the claim until the first transaction ends; if it
//! committed, the repeat sees its row, and if it rolled back, the repeat
//! claims the id itself.

use anyhow::Context as _;
use prost::Message as _;
use sagaflow_common::db::Migration;
use sagaflow_protos::events::v1::{CommandKind, EventEnvelope, Outcome};
use uuid::Uuid;

use super::envelope::{kind_name, outcome_name, parse_outcome};
use super::{Command, Tx};
use crate::Error;

/// Version 2 of every participant database (after the outbox, version 1).
pub const MIGRATION: Migration = Migration {
    version: 2,
    name: "inbox",
    sql: r#"
CREATE TABLE inbox (
    command_id  uuid PRIMARY KEY,
    saga_id     uuid NOT NULL,
    step        integer NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('action', 'compensation')),
    -- Filled in by the claiming transaction before it commits.
    outcome     text CHECK (outcome IN ('SUCCEEDED', 'REFUSED')),
    reason      text,
    event_id    uuid,
    envelope    bytea,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX inbox_saga_id_idx ON inbox (saga_id);
"#,
};

/// The answer stored for a command id seen before.
#[derive(Debug)]
pub struct Stored {
    pub outcome: Outcome,
    pub reason: String,
    pub event_id: Uuid,
    /// The encoded `EventEnvelope`, re-emitted as is.
    pub envelope: Vec<u8>,
    /// Decoded from `envelope`, for the re-emitted outbox row.
    pub event_type: String,
    /// The stored output (JSON text; empty: none), for the reply.
    pub output: String,
}

/// Claim `cmd.command_id`. `None`: first sighting, the row is ours to fill
/// with [`record`]. `Some`: a repeat, with the stored answer.
pub async fn claim(tx: &Tx<'_>, cmd: &Command, kind: CommandKind) -> Result<Option<Stored>, Error> {
    let insert = tx
        .prepare_cached(
            "INSERT INTO inbox (command_id, saga_id, step, kind) VALUES ($1, $2, $3, $4)
             ON CONFLICT (command_id) DO NOTHING",
        )
        .await?;
    let kind = kind_name(kind);
    let claimed = tx
        .execute(&insert, &[&cmd.command_id, &cmd.saga_id, &cmd.step, &kind])
        .await?;
    if claimed == 1 {
        return Ok(None);
    }
    let select = tx
        .prepare_cached(
            "SELECT saga_id, step, kind, outcome, reason, event_id, envelope
             FROM inbox WHERE command_id = $1",
        )
        .await?;
    let row = tx.query_one(&select, &[&cmd.command_id]).await?;
    let (saga_id, step, stored_kind): (Uuid, i32, String) = (row.get(0), row.get(1), row.get(2));
    if (saga_id, step, stored_kind.as_str()) != (cmd.saga_id, cmd.step, kind) {
        return Err(Error::invalid(
            "command_id",
            format!("already used by the {stored_kind} of saga {saga_id} step {step}"),
        ));
    }
    let outcome: Option<String> = row.get(3);
    let event_id: Option<Uuid> = row.get(5);
    let envelope: Option<Vec<u8>> = row.get(6);
    let (Some(outcome), Some(event_id), Some(envelope)) = (outcome, event_id, envelope) else {
        return Err(anyhow::anyhow!("inbox row {} has no stored outcome", cmd.command_id).into());
    };
    let event = EventEnvelope::decode(envelope.as_slice())
        .with_context(|| format!("decoding the stored event of command {}", cmd.command_id))?;
    Ok(Some(Stored {
        outcome: parse_outcome(&outcome),
        reason: row.get::<_, Option<String>>(4).unwrap_or_default(),
        event_id,
        event_type: super::event_type(&event),
        output: event.output,
        envelope,
    }))
}

/// Fill the claimed row with the outcome `event` (encoded as `envelope`).
pub async fn record(
    tx: &Tx<'_>,
    command_id: Uuid,
    event_id: Uuid,
    event: &EventEnvelope,
    envelope: &[u8],
) -> Result<(), Error> {
    let update = tx
        .prepare_cached(
            "UPDATE inbox SET outcome = $2, reason = $3, event_id = $4, envelope = $5
             WHERE command_id = $1",
        )
        .await?;
    let outcome = outcome_name(event.outcome());
    let reason = Some(event.reason.as_str()).filter(|r| !r.is_empty());
    tx.execute(
        &update,
        &[&command_id, &outcome, &reason, &event_id, &envelope],
    )
    .await?;
    Ok(())
}
