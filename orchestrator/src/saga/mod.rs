//! The pure saga engine: definitions, state, and the state machine.
//! Nothing here does I/O or reads a clock.

pub mod definition;
pub mod machine;
pub mod mapping;
pub mod state;

#[cfg(test)]
mod tests;

pub use definition::{Definition, Policy, StepDef};
pub use machine::{Error, LATEST, Note, Transition, after, apply};
pub use state::{Command, Effect, Event, Kind, Millis, Outcome, SagaState, Status, StepState};
