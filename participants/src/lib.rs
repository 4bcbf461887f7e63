//! Sagaflow's participant services: `order`, `payment` and `inventory`.
//!
//! Each participant is a tonic gRPC server over its own Postgres database. A
//! step RPC only acknowledges the command; the outcome travels back to the
//! orchestrator as an event, written to the participant's outbox in the same
//! transaction as the business change (the outbox relay publishes it).
//!
//! # Layout
//!
//! - [`command`]: the contract every step RPC shares. Parse and validate the
//!   `StepCommand`, then in ONE transaction: dedupe on the command id
//!   (`inbox`), run the service's decision, store the outcome event in the
//!   inbox row and insert it into the outbox. A repeat re-emits the stored
//!   event (same `event_id`) and answers `STATUS_DUPLICATE`.
//! - [`order`], [`payment`], [`inventory`]: one module per service — its
//!   migrations, its business rules and its tonic service.
//! - [`command_log`]: the read-only `CommandLog` service every participant
//!   serves: the commands it handled for a saga and their outcomes, from its
//!   inbox, for reconciliation with the orchestrator's record.
//! - [`error`]: the crate's one error type and its single conversion to
//!   `tonic::Status` (invalid argument / unavailable / internal).
//! - [`config`]: [`Kind`], [`ParticipantConfig`] and its [`Security`] from
//!   the environment.
//! - [`server`]: [`serve`] — migrate, then serve the service and gRPC health
//!   until the shutdown token is cancelled: over mutual TLS, every call of
//!   the service pinned to the orchestrator's identity
//!   (`sagaflow_common::security`), unless configured insecure. Next to the
//!   step service: `CommandLog` (read-only, for reconciliation), pinned too.
//! - [`retention`]: forgetting inbox rows older than their retention.
//! - [`metrics`]: what `/metrics` counts: commands by kind, method and
//!   outcome (repeats among them), tombstones, and how long each took.
//!
//! # Races
//!
//! Every business table is keyed by `saga_id`. An action inserts its row with
//! `INSERT ... ON CONFLICT DO NOTHING`; a compensation first tries to insert a
//! *tombstone* (CANCELLED / VOIDED) the same way. Whoever loses the insert
//! re-reads the winner's row with `SELECT ... FOR UPDATE`, so a concurrent
//! action and compensation for one saga serialize on the primary key: either
//! the action happens and the compensation undoes it, or the tombstone wins
//! and the action is refused with `compensated_before_action`. A compensation
//! of something that never happened (or was refused) is a successful no-op.
//!
//! # Refusal reasons
//!
//! A refusal is a business decision, final for its command. Reasons start
//! with a stable code, optionally followed by `: detail`:
//! `compensated_before_action`, `already_approved`, `unknown_order`,
//! `order_cancelled`, `credit_limit_exceeded: cust-bob needs EUR 200.00 has EUR 100.00`,
//! `unknown_customer: cust-x`, `stock_short: sku-rare needs 6 has 5`,
//! `unknown_sku: sku-x`, and for a compensation `refunds_held: cust-bob`
//! (`RefundPayment` while the customer's refunds are held, see [`payment`]).
//! A refused compensation pauses its saga (`COMPENSATION_FAILED`) until an
//! operator retries it.
//!
//! # Seed data (applied by migration, once per database)
//!
//! Payment (`customers`; available credit starts at the credit limit):
//!
//! | customer_id  | name  | credit_limit_cents |
//! |--------------|-------|--------------------|
//! | `cust-alice` | Alice | 100000000          |
//! | `cust-bob`   | Bob   | 10000              |
//! | `cust-broke` | Broke | 0                  |
//!
//! No customer's refunds are held (`refunds_held` is false).
//!
//! Inventory (`items`):
//!
//! | sku           | name         | stock   |
//! |---------------|--------------|---------|
//! | `sku-widget`  | Widget       | 1000000 |
//! | `sku-gadget`  | Gadget       | 1000000 |
//! | `sku-rare`    | Rare thing   | 5       |
//! | `sku-soldout` | Sold-out one | 0       |
//!
//! Order has no seed data.
//!
//! # Migrations
//!
//! Every participant applies, in order: `1 outbox` (shared, from
//! `sagaflow_common::outbox`), `2 inbox` (shared, from [`command`]), then its
//! own business tables (`3`) and seeds (`4`, payment and inventory only);
//! payment then adds the customers' refund holds (`5`); and the index inbox
//! retention walks (`10`, from [`retention`]).

pub mod command;
pub mod command_log;
pub mod config;
pub mod error;
pub mod inventory;
pub mod metrics;
pub mod order;
pub mod payment;
pub mod retention;
pub mod server;

pub use config::{Kind, ParticipantConfig, Security};
pub use error::Error;
pub use server::serve;
