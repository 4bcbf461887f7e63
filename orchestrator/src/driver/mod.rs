//! Carries out the state machine's effects once they are committed: sends
//! step commands, arms in-memory timers, and fires persisted timers.
//!
//! Commands are at-least-once: a crash between commit and send is covered by
//! the resume scan at start-up and by the persisted deadline (`saga_wakeups`),
//! which re-sends with the same command id. So a send may be dropped safely
//! whenever going on with it would hurt the others (see [`send`]).
//!
//! Layout:
//! - this module: [`Driver`], [`Driver::carry_out`];
//! - `send`: one command to one participant, fair to the other participants;
//! - `timers`: the timer loop and the resume scan, one saga at a time.

mod send;
mod timers;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use tracing::Instrument as _;

use crate::metrics::{Metrics, Path};
use crate::participants::ParticipantClient;
use crate::saga::{Command, Effect};
use crate::store::{self, Applied, Committed};

/// The command id of a command: derived from (saga, step, kind, and the
/// compensation generation an operator retry bumps), so every re-send of the
/// same command carries the same id and a participant's inbox recognises it.
pub fn command_id(saga_id: Uuid, cmd: &Command) -> Uuid {
    Uuid::new_v5(&saga_id, cmd.id_name().as_bytes())
}

/// How many commands may be sent at once, and queued.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Calls in flight to one participant. A participant that is down holds
    /// at most this many; the others go on.
    pub per_participant: usize,
    /// Calls in flight across all participants.
    pub total: usize,
    /// Send tasks waiting or running. Past it a send is dropped at once (its
    /// deadline re-sends it), so memory stays bounded when a participant is
    /// slow and sagas keep coming.
    pub queued: usize,
    /// Apply the outcome a participant's reply carries at once (the fast
    /// path), instead of waiting for its event from Pub/Sub. The event still
    /// comes through Pub/Sub and is absorbed as a duplicate.
    pub apply_replies: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_participant: 64,
            total: 256,
            queued: 10_000,
            apply_replies: true,
        }
    }
}

/// Cheap to clone; shared by the API, the consumer and the timer loop.
#[derive(Clone)]
pub struct Driver {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    participants: Arc<dyn ParticipantClient>,
    limits: Limits,
    /// One semaphore per participant key, made on first use.
    per_participant: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Caps calls in flight across participants.
    total: Arc<Semaphore>,
    /// Caps send tasks in existence.
    queued: Arc<Semaphore>,
    /// Sends dropped because the queue was full or their deadline passed
    /// while they waited.
    dropped: AtomicU64,
    /// Wakes the timer loop early when an in-memory timer fires.
    timers_due: Notify,
    /// Counts what the driver, the consumer and the API do.
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

impl Driver {
    pub fn new(
        pool: Pool,
        participants: Arc<dyn ParticipantClient>,
        limits: Limits,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Self {
        Driver {
            inner: Arc::new(Inner {
                pool,
                participants,
                limits,
                per_participant: Mutex::new(HashMap::new()),
                total: Arc::new(Semaphore::new(limits.total)),
                queued: Arc::new(Semaphore::new(limits.queued)),
                dropped: AtomicU64::new(0),
                timers_due: Notify::new(),
                metrics,
                shutdown,
            }),
        }
    }

    /// Carry out committed effects. `parent` is the trace context to hang the
    /// command spans under (else the saga's root).
    pub fn carry_out(&self, committed: &Committed, parent: Option<String>) {
        let ctx = &committed.ctx;
        // Looked up once for every command sent (a parallel group's several).
        let mut def = None;
        for effect in &committed.effects {
            match *effect {
                Effect::SendCommand(cmd) => {
                    let def = def.get_or_insert_with(|| {
                        crate::definitions::find(&ctx.saga_type, ctx.definition_version)
                    });
                    let Some(def) = def.clone() else {
                        tracing::error!(saga.id = %ctx.saga_id, "no definition for saga; command not sent");
                        continue;
                    };
                    // The command's input: the saga's, or what the step's
                    // mapping builds from it and earlier steps' outputs.
                    let mut ctx = ctx.clone();
                    if let Some(input) = crate::saga::mapping::command_input(
                        &def,
                        &ctx.input,
                        &committed.state,
                        cmd.step,
                        cmd.kind,
                    ) {
                        ctx.input = input;
                    }
                    self.send(def, ctx, cmd, parent.clone())
                }
                Effect::ScheduleTimeout { at } => {
                    // Deadlines are on the database's clock: wait for the
                    // difference to the time the change was made at.
                    let wait =
                        Duration::from_millis(at.saturating_sub(committed.now).max(0) as u64);
                    let this = self.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = tokio::time::sleep(wait + Duration::from_millis(5)) => {
                                this.inner.timers_due.notify_one();
                            }
                            _ = this.inner.shutdown.cancelled() => {}
                        }
                    });
                }
                Effect::Finish(status) => {
                    tracing::debug!(saga.id = %ctx.saga_id, saga.status = status.as_str(), "saga finished");
                    let took_ms = committed.now.saturating_sub(ctx.created_at);
                    self.inner
                        .metrics
                        .finished(&ctx.saga_type, status, took_ms as f64 / 1000.0);
                }
            }
        }
    }

    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// Apply a participant's outcome event (from `path`) in a
    /// `saga.transition` span, and count it. Carrying out what it changed is
    /// the caller's: it knows the span to hang the next commands under.
    pub async fn apply(
        &self,
        path: Path,
        event_id: Uuid,
        saga_id: Uuid,
        event: &crate::saga::Event,
    ) -> Result<Applied, store::Error> {
        let span = tracing::info_span!(
            "saga.transition",
            saga.id = %saga_id,
            event.id = %event_id,
            event.path = path.as_str(),
            saga.type = tracing::field::Empty,
            saga.step.index = tracing::field::Empty,
            saga.event = tracing::field::Empty,
            saga.outcome = tracing::field::Empty,
            saga.status = tracing::field::Empty,
        );
        if let crate::saga::Event::Outcome {
            step,
            kind,
            outcome,
        } = event
        {
            span.record("saga.step.index", *step);
            let outcome = match outcome {
                crate::saga::Outcome::Succeeded { .. } => "succeeded",
                crate::saga::Outcome::Refused { .. } => "refused",
            };
            span.record(
                "saga.event",
                format!("{} {outcome}", kind.as_str()).as_str(),
            );
        }
        let applied = store::apply_event(self.pool(), event_id, saga_id, event)
            .instrument(span.clone())
            .await;
        let outcome = match &applied {
            Ok(a) => {
                self.inner.metrics.applied(path, a);
                match a {
                    Applied::Changed(c) => {
                        span.record("saga.type", c.ctx.saga_type.as_str());
                        span.record("saga.status", c.state.status.as_str());
                        "applied"
                    }
                    Applied::Duplicate => "duplicate",
                    Applied::Unchanged => "unchanged",
                    Applied::UnknownSaga => "unknown_saga",
                    Applied::Suspended { .. } => "suspended",
                    Applied::Rejected(e) => {
                        sagaflow_common::trace::fail(&span, "rejected", &e.to_string());
                        "rejected"
                    }
                }
            }
            Err(e) => {
                sagaflow_common::trace::fail(&span, "database", &e.to_string());
                "error"
            }
        };
        span.record("saga.outcome", outcome);
        applied
    }

    /// The orchestrator's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Sends dropped so far (queue full, or deadline passed while queued).
    pub fn dropped_sends(&self) -> u64 {
        self.inner
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}
