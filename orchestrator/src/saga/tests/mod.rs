//! Specs for the saga state machine.
//!
//! Layout:
//! - [`fixtures`]: a second saga type (`shipment`, three steps, the last one
//!   without compensation and each with its own policies) next to the order
//!   saga, and `given`/`when`.
//! - [`scenarios`]: given/when/then, on both definitions.
//! - [`sweep`]: every (status, step state, event) on hand-built states and
//!   on every state reachable from a fresh saga.
//! - [`properties`]: a random world of participants that succeed, refuse or
//!   never answer, driven by a scheduler that reorders, duplicates and
//!   delays events and fires timers.

mod fixtures;
mod properties;
mod scenarios;
mod sweep;
