//! Build a Sagaflow participant: a service that does (and undoes) one part
//! of a saga in its own Postgres database.
//!
//! You write one async function per step RPC. It gets the command's open
//! transaction and the [`Command`] (its saga, its step, its input — which a
//! definition file builds from the saga input and earlier steps' outputs)
//! and returns a [`Decision`]: success, with an optional output for later
//! steps, or a refusal with a reason. The library does the rest:
//!
//! - **one transaction per command**: it claims the command id in the
//!   `inbox`, runs your function, stores the outcome event in the inbox row
//!   and inserts it into the `outbox` (the outbox relay publishes it), and
//!   commits — all or nothing;
//! - **repeats**: a command id seen before (a re-send, concurrent or not) is
//!   answered with the stored outcome, and the stored event is emitted
//!   again under the same event id; your function does not run again;
//! - **the reply equals the event**: the gRPC answer (`CommandAck`) carries
//!   the same event id, outcome, reason and output as the event;
//! - **migrations** of the inbox and outbox tables (and yours, once each);
//! - **the gRPC service by method path**: a definition names
//!   `/<your.Service>/<Method>`, and no `.proto` of yours is needed;
//! - **trace context**: each RPC is a server span in the saga's trace, with
//!   the inbox, decision and outbox as child spans; the outbox row carries
//!   the `traceparent` so the event continues the trace;
//! - **mutual TLS** with the orchestrator's pinned client identity (or
//!   plaintext in a demo, loudly), **metrics** at `/metrics`, **health**
//!   (gRPC health, `/healthz`, `/readyz`), **graceful shutdown**, inbox
//!   **retention**;
//! - the read-only **`CommandLog`** RPC: what it decided for a saga, from
//!   its inbox, which `sagaflow-orchestrator reconcile` compares with the
//!   orchestrator's record.
//!
//! # Example
//!
//! A participant that rents bikes from a limited fleet (the runnable
//! version is `examples/bikes.rs`; run it with
//! `SAGAFLOW_INSECURE=true cargo run -p sagaflow-participant-kit --example bikes`):
//!
//! ```no_run
//! use futures::FutureExt as _;
//! use sagaflow_participant_kit::{
//!     COMPENSATED_BEFORE_ACTION, Command, Config, Decision, Defaults, Error, Migration,
//!     Participant, Tx, serve,
//! };
//! use serde_json::json;
//!
//! const BIKES: Migration = Migration {
//!     version: 100,
//!     name: "bikes",
//!     sql: "CREATE TABLE rentals (saga_id uuid PRIMARY KEY, rider text, status text NOT NULL);",
//! };
//!
//! async fn rent(tx: &Tx<'_>, cmd: &Command) -> Result<Decision, Error> {
//!     let rider = cmd.required_text("rider")?;
//!     let inserted = tx
//!         .execute(
//!             "INSERT INTO rentals VALUES ($1, $2, 'RENTED') ON CONFLICT DO NOTHING",
//!             &[&cmd.saga_id, &rider],
//!         )
//!         .await?;
//!     if inserted == 0 {
//!         // The return came first and left its tombstone.
//!         return Ok(Decision::refused(COMPENSATED_BEFORE_ACTION, json!({})));
//!     }
//!     Ok(Decision::succeeded(json!({ "rider": rider })).with_output(json!({ "bike": "B-1" })))
//! }
//!
//! async fn give_back(tx: &Tx<'_>, cmd: &Command) -> Result<Decision, Error> {
//!     // A tombstone when it comes first; else the rental ends.
//!     tx.execute(
//!         "INSERT INTO rentals VALUES ($1, NULL, 'RETURNED')
//!          ON CONFLICT (saga_id) DO UPDATE SET status = 'RETURNED'",
//!         &[&cmd.saga_id],
//!     )
//!     .await?;
//!     Ok(Decision::succeeded(json!({})))
//! }
//!
//! #[tokio::main]
//! async fn main() -> anyhow::Result<()> {
//!     let bikes = Participant::new("bikes", "example.v1.Bikes")
//!         .migration(BIKES)
//!         .action("Rent", |tx, cmd| rent(tx, cmd).boxed())
//!         .compensation("GiveBack", |tx, cmd| give_back(tx, cmd).boxed());
//!     let config = Config::from_env("bikes", &Defaults::local("bikes", 50070, 8090))?;
//!     let listener = tokio::net::TcpListener::bind(config.listen).await?;
//!     serve(bikes, config, listener, sagaflow_common::shutdown::on_signal()).await
//! }
//! ```
//!
//! # Rules for a step function
//!
//! - Do the business change with `tx` and do not commit it. Do nothing
//!   outside the database that cannot be undone by a rollback (call no
//!   other service): the transaction may still fail after you return.
//! - Key your rows by [`Command::saga_id`] and insert with
//!   `ON CONFLICT DO NOTHING`; whoever loses re-reads the winner's row
//!   `FOR UPDATE`. A compensation that comes first inserts a *tombstone*; an
//!   action that then finds it refuses with [`COMPENSATED_BEFORE_ACTION`].
//!   Undoing what never happened (or was refused) is a success.
//! - A refusal is a business decision, final for its command: a reason
//!   code, optionally `code: detail`. A compensation should not refuse: a
//!   refused compensation pauses the saga until an operator retries it.
//! - Return [`Error::invalid`] for input you cannot read (nothing is
//!   written; the caller is answered `INVALID_ARGUMENT`). A database error
//!   rolls back and answers `UNAVAILABLE`: the orchestrator re-sends the
//!   same command.
//! - An output is a JSON object of at most 4096 bytes; a larger one is
//!   refused before anything is committed.
//!
//! The wire contract this implements — for a participant in another
//! language — is in `docs/participants.md`.

pub mod command;
pub mod command_log;
pub mod config;
pub mod error;
pub mod metrics;
pub mod participant;
pub mod retention;
pub mod server;

pub use command::{
    COMPENSATED_BEFORE_ACTION, Command, CommandKind, Decision, DecisionFuture, Executor,
    MAX_KEY_LEN, Outcome, Rpc, Tx, key,
};
pub use config::{Config, Defaults, Security};
pub use error::Error;
pub use participant::{Participant, RESERVED_VERSIONS, Step};
pub use sagaflow_common::db::Migration;
pub use server::serve;
