//! Code shared by Sagaflow's binaries and tests.
//!
//! Layout:
//! - [`config`]: environment variables, with defaults, read in one place.
//! - [`db`]: Postgres pools, database creation, the migration runner.
//! - [`error`]: error messages with their whole cause chain.
//! - [`outbox`]: the outbox table every participant shares, and its insert.
//! - [`pubsub`]: Google Pub/Sub clients (emulator or production), topic and
//!   subscription set-up, a bounded publisher and a subscriber stream.
//! - [`telemetry`]: one `init` for logs and traces (OTLP when configured).
//! - [`trace`]: W3C `traceparent` in and out of gRPC metadata and strings.
//! - [`shutdown`]: SIGTERM / SIGINT as a cancellation token.
//! - [`ops`]: the operations HTTP address every binary serves: `/healthz`,
//!   `/readyz` (its readiness checks, 503 while draining) and `/metrics`.
//! - `testkit` (feature `testkit`): fresh databases for tests, dropped after.
//! - [`reflection`]: gRPC server reflection of the services a binary serves.
//! - [`security`]: mutual TLS and the client identity pin for participants,
//!   bearer tokens for the public API, the insecure switch.

pub mod config;
pub mod db;
pub mod error;
pub mod ops;
pub mod outbox;
pub mod output;
pub mod pubsub;
pub mod reflection;
pub mod security;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod trace;
