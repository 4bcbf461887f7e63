//! Sagaflow's participant services: `order`, `payment` and `inventory`.
//!
//! Each participant is a tonic gRPC server over its own Postgres database. A
//! step RPC only acknowledges the command; the outcome travels back to the
//! orchestrator as an event, written to the participant's outbox in the same
//! transaction as the business change (the outbox relay publishes it).
//!
//! # Layout
//!
//! Each service is a [`Participant`](sagaflow_participant_kit::Participant)
//! of the participant library (`sagaflow-participant-kit`), which does the
//! contract every step RPC shares (inbox, outbox, repeats, trace, mutual
//! TLS, metrics, health, `CommandLog`, retention); what is here is business
//! logic:
//!
//! - [`order`], [`payment`], [`inventory`]: one module per service — its
//!   migrations, its business rules, its step functions (and the read-only
//!   look-ups of payment and inventory).
//! - [`trip`]: the trip saga's participants — flight, hotel and car rental
//!   (one shape, [`trip::units`]) and the itinerary desk — and its
//!   definition file.
//! - [`input`]: the order saga's input as those steps read it, and a
//!   payment's input mapped as JSON by a definition file.
//! - [`config`]: [`Kind`] and its settings from the environment.
//! - [`server`]: [`serve`] — the chosen participant, served by the library.
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
//! Every participant applies, in order, the library's `1 outbox` and
//! `2 inbox`, then its own business tables (`3`) and seeds (`4`, payment
//! and inventory only); payment then adds the customers' refund holds
//! (`5`); then the library's inbox retention index (`10`) and outbox
//! tuning (`11`).

pub mod config;
pub mod input;
pub mod inventory;
pub mod order;
pub mod payment;
pub mod server;
pub mod trip;

pub use config::{Kind, VARS};
pub use sagaflow_participant_kit::{Config, Error, Security};
pub use server::serve;

/// The answer of a generated service's step method: the library serves
/// the step methods by path, so these are never reached.
pub(crate) fn served_as_a_step(method: &str) -> tonic::Status {
    tonic::Status::internal(format!(
        "{method} is served by the participant library's step router"
    ))
}
