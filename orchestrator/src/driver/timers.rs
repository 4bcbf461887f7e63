//! The timer loop and the resume scan. Both handle one saga at a time: each
//! saga's change commits in its own transaction and its effects are carried
//! out right after, and one saga that cannot be handled (its state cannot be
//! read, its timer is rejected) is suspended without holding up the rest.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::Driver;
use crate::metrics::TimerResult;
use crate::saga::{Effect, Status};
use crate::store::{self, Committed, Fired, InFlight};

/// Sagas fired per round; a full round is followed by another at once.
const BATCH: i64 = 200;

/// How often due sagas of unknown definition versions are counted.
const UNKNOWN_COUNT_EVERY: Duration = Duration::from_secs(5);

/// What the resume scan did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resumed {
    /// In-flight commands sent again.
    pub resent: usize,
    /// Sagas whose state could not be read, now suspended.
    pub suspended: usize,
    /// Sagas of definition versions this instance does not have, left alone.
    pub skipped: usize,
}

impl Driver {
    /// Fire due timers until shutdown: every `poll`, or sooner when an
    /// in-memory timer says one is due.
    pub async fn run_timers(self, poll: Duration) {
        let mut reported: HashSet<String> = HashSet::new();
        let mut counted_at: Option<Instant> = None;
        loop {
            let busy = match store::due_sagas(self.pool(), BATCH).await {
                Ok(due) => {
                    let full = due.len() as i64 == BATCH;
                    for saga_id in due {
                        if self.inner.shutdown.is_cancelled() {
                            return;
                        }
                        self.fire(saga_id).await;
                    }
                    full
                }
                Err(e) => {
                    tracing::warn!(error = %e, "looking for due timers failed; will retry");
                    false
                }
            };
            if counted_at.is_none_or(|t| t.elapsed() >= UNKNOWN_COUNT_EVERY) {
                counted_at = Some(Instant::now());
                self.report_unknown(&mut reported).await;
            }
            if busy {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = self.inner.timers_due.notified() => {}
                _ = self.inner.shutdown.cancelled() => return,
            }
        }
    }

    async fn fire(&self, saga_id: Uuid) {
        let fired = store::fire_timer(self.pool(), saga_id).await;
        let metrics = &self.inner.metrics;
        match &fired {
            Ok(Fired::Changed(_)) => metrics.timer_fired(TimerResult::Changed),
            Ok(Fired::Unchanged) => metrics.timer_fired(TimerResult::Unchanged),
            Ok(Fired::Suspended { .. }) => metrics.timer_fired(TimerResult::Suspended),
            Ok(Fired::NotDue | Fired::UnknownDefinition) | Err(_) => {}
        }
        match fired {
            Ok(Fired::Changed(c)) => {
                // A re-send (or giving up on a step) is part of the saga's
                // trace: a `saga.timeout` span under its root.
                let span = tracing::info_span!(
                    "saga.timeout",
                    saga.id = %saga_id,
                    saga.type = %c.ctx.saga_type,
                    saga.status = c.state.status.as_str(),
                );
                sagaflow_common::trace::set_parent(&span, c.ctx.traceparent.as_deref());
                let _in = span.enter();
                self.carry_out(&c, sagaflow_common::trace::current_traceparent());
            }
            Ok(Fired::Suspended { reason }) => {
                tracing::error!(saga.id = %saga_id, %reason, "saga suspended: its timer could not be fired; an operator must resume or cancel it");
            }
            Ok(Fired::NotDue | Fired::Unchanged | Fired::UnknownDefinition) => {}
            Err(e) => {
                tracing::warn!(saga.id = %saga_id, error = %e, "firing a timer failed; will retry")
            }
        }
    }

    /// Log, once per definition version, that due sagas of a version this
    /// instance does not have are left to others (normal during a rolling
    /// deploy).
    async fn report_unknown(&self, reported: &mut HashSet<String>) {
        match store::count_due_unknown(self.pool()).await {
            Ok(counts) => {
                for (definition, count) in counts {
                    if reported.insert(definition.clone()) {
                        tracing::info!(%definition, count, "due sagas of a definition version this instance does not have: left to an instance that has it");
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "counting due sagas of unknown definitions failed")
            }
        }
    }

    /// Re-send the in-flight command of every saga in flight (after a
    /// restart, or when taking over from a dead instance). A saga whose
    /// state cannot be read is suspended; one of a definition version this
    /// instance lacks is left alone. Fails only when the database does.
    pub async fn resume_all(&self) -> Result<Resumed, store::Error> {
        let mut after = Uuid::nil();
        let mut done = Resumed::default();
        loop {
            let page = store::in_flight_page(self.pool(), after, 500).await?;
            if page.is_empty() {
                return Ok(done);
            }
            for row in page {
                match row {
                    InFlight::Ready(ctx, state) => {
                        after = ctx.saga_id;
                        let Some(def) =
                            crate::definitions::find(&ctx.saga_type, ctx.definition_version)
                        else {
                            continue;
                        };
                        let commands = state.in_flight(&def);
                        if commands.is_empty() {
                            continue;
                        }
                        debug_assert!(matches!(
                            state.status,
                            Status::Running | Status::Compensating
                        ));
                        done.resent += 1;
                        // Resumed in the saga's own trace, under a
                        // `saga.resume` span.
                        let span = tracing::info_span!(
                            "saga.resume",
                            saga.id = %ctx.saga_id,
                            saga.type = %ctx.saga_type,
                            saga.status = state.status.as_str(),
                        );
                        sagaflow_common::trace::set_parent(&span, ctx.traceparent.as_deref());
                        let _in = span.enter();
                        let parent = sagaflow_common::trace::current_traceparent();
                        self.carry_out(
                            &Committed {
                                ctx,
                                state: *state,
                                effects: commands.into_iter().map(Effect::SendCommand).collect(),
                                now: 0,
                            },
                            parent,
                        );
                    }
                    InFlight::Unreadable { saga_id, reason } => {
                        after = saga_id;
                        match store::suspend(self.pool(), saga_id, "at start-up").await {
                            Ok(true) => {
                                done.suspended += 1;
                                tracing::error!(saga.id = %saga_id, %reason, "saga suspended: its state cannot be read; an operator must repair it, then resume or cancel it");
                            }
                            Ok(false) => {}
                            Err(e) => {
                                tracing::warn!(saga.id = %saga_id, error = %e, "suspending a saga failed");
                            }
                        }
                    }
                    InFlight::UnknownDefinition { saga_id } => {
                        after = saga_id;
                        done.skipped += 1;
                    }
                }
            }
        }
    }
}
