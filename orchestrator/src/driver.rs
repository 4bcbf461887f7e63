//! Carries out the state machine's effects once they are committed: sends
//! step commands (retrying transport failures with exponential backoff and
//! jitter until the step's deadline), arms timers, and fires due timers.
//!
//! Commands are at-least-once: a crash between commit and send is covered by
//! the resume scan at start-up and by the persisted deadline (`next_wakeup`),
//! which re-sends with the same command id.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use sagaflow_protos::participant::v1::StepCommand;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::definitions;
use crate::participants::{ParticipantClient, SendError};
use crate::saga::{Command, Effect, Kind, Status};
use crate::store::{self, Applied, SagaContext};

/// The command id of a command: derived from (saga, step, kind, and the
/// compensation generation an operator retry bumps), so every re-send of the
/// same command carries the same id and a participant's inbox recognises it.
pub fn command_id(saga_id: Uuid, cmd: &Command) -> Uuid {
    Uuid::new_v5(&saga_id, cmd.id_name().as_bytes())
}

/// Cheap to clone; shared by the API, the consumer and the timer loop.
#[derive(Clone)]
pub struct Driver {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    participants: Arc<dyn ParticipantClient>,
    /// Caps concurrent outgoing commands.
    sends: Semaphore,
    /// Wakes the timer loop early when an in-memory timer fires.
    timers_due: Notify,
    shutdown: CancellationToken,
}

impl Driver {
    pub fn new(
        pool: Pool,
        participants: Arc<dyn ParticipantClient>,
        max_concurrent_sends: usize,
        shutdown: CancellationToken,
    ) -> Self {
        Driver {
            inner: Arc::new(Inner {
                pool,
                participants,
                sends: Semaphore::new(max_concurrent_sends),
                timers_due: Notify::new(),
                shutdown,
            }),
        }
    }

    /// Carry out committed effects. `parent` is the trace context to hang the
    /// command spans under (else the saga's root).
    pub fn carry_out(&self, ctx: &SagaContext, effects: Vec<Effect>, parent: Option<String>) {
        for effect in effects {
            match effect {
                Effect::SendCommand(cmd) => {
                    let this = self.clone();
                    let ctx = ctx.clone();
                    let parent = parent.clone();
                    tokio::spawn(async move { this.send(ctx, cmd, parent).await });
                }
                Effect::ScheduleTimeout { at } => {
                    let this = self.clone();
                    tokio::spawn(async move {
                        let wait = (at - store::now_millis()).max(0) as u64;
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(wait + 5)) => {
                                this.inner.timers_due.notify_one();
                            }
                            _ = this.inner.shutdown.cancelled() => {}
                        }
                    });
                }
                Effect::Finish(status) => {
                    tracing::info!(saga.id = %ctx.saga_id, saga.status = status.as_str(), "saga finished");
                }
            }
        }
    }

    async fn send(&self, ctx: SagaContext, cmd: Command, parent: Option<String>) {
        let Some(def) = definitions::find(&ctx.saga_type, ctx.definition_version) else {
            tracing::error!(saga.id = %ctx.saga_id, "no definition for saga; command not sent");
            return;
        };
        let step = &def.steps[cmd.step];
        let (method, policy) = match cmd.kind {
            Kind::Action => (Some(step.action.clone()), step.policy),
            Kind::Compensation => (step.compensation.clone(), step.compensation_policy),
        };
        let Some(method) = method else {
            tracing::error!(saga.id = %ctx.saga_id, saga.step = cmd.step, "step has no compensation");
            return;
        };
        let span = tracing::info_span!(
            "saga.command",
            saga.id = %ctx.saga_id,
            saga.step = %step.name,
            saga.command.kind = cmd.kind.as_str(),
            saga.command.attempt = cmd.attempt,
            otel.kind = "client",
        );
        sagaflow_common::trace::set_parent(&span, parent.as_deref().or(ctx.traceparent.as_deref()));
        let command = StepCommand {
            command_id: command_id(ctx.saga_id, &cmd).to_string(),
            saga_id: ctx.saga_id.to_string(),
            step: cmd.step as u32,
            step_name: step.name.clone(),
            attempt: cmd.attempt,
            saga_type: ctx.saga_type.clone(),
            input: ctx.input.clone(),
        };
        let give_up_at = tokio::time::Instant::now() + policy.deadline;
        let participant = step.participant.clone();
        async move {
            let Ok(_permit) = self.inner.sends.acquire().await else {
                return;
            };
            let traceparent = sagaflow_common::trace::current_traceparent();
            let mut failures = 0u32;
            loop {
                let result = self
                    .inner
                    .participants
                    .send(&participant, &method, command.clone(), traceparent.clone())
                    .await;
                match result {
                    Ok(ack) => {
                        tracing::debug!(ack.status = ack.status, "command acknowledged");
                        return;
                    }
                    Err(SendError::Permanent(e)) => {
                        tracing::error!(error = %e, "command rejected; the step deadline will decide");
                        return;
                    }
                    Err(SendError::Transient(e)) => {
                        let delay = policy.backoff(failures, rand::random::<f64>());
                        failures += 1;
                        if tokio::time::Instant::now() + delay >= give_up_at {
                            tracing::warn!(error = %e, failures, "command not delivered before its deadline; the timer re-sends it");
                            return;
                        }
                        tracing::debug!(error = %e, ?delay, "command send failed; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = self.inner.shutdown.cancelled() => return,
                        }
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Fire due timers until shutdown: every `poll`, or sooner when an
    /// in-memory timer says one is due.
    pub async fn run_timers(self, poll: Duration) {
        loop {
            match store::fire_due_timers(&self.inner.pool, store::now_millis(), 200).await {
                Ok(applied) => {
                    let busy = applied.len() == 200;
                    for a in applied {
                        if let Applied::Changed { ctx, effects, .. } = a {
                            self.carry_out(&ctx, effects, None);
                        }
                    }
                    if busy {
                        continue;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "firing timers failed; will retry"),
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = self.inner.timers_due.notified() => {}
                _ = self.inner.shutdown.cancelled() => return,
            }
        }
    }

    /// Re-send the in-flight command of every non-terminal saga (after a
    /// restart, or when taking over from a dead instance).
    pub async fn resume_all(&self) -> anyhow::Result<usize> {
        let mut after = Uuid::nil();
        let mut resumed = 0;
        loop {
            let page = store::in_flight_page(&self.inner.pool, after, 500).await?;
            let Some((last, _)) = page.last() else {
                return Ok(resumed);
            };
            after = last.saga_id;
            for (ctx, state) in page {
                if let Some(cmd) = state.in_flight() {
                    debug_assert!(matches!(
                        state.status,
                        Status::Running | Status::Compensating
                    ));
                    resumed += 1;
                    self.carry_out(&ctx, vec![Effect::SendCommand(cmd)], None);
                }
            }
        }
    }

    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }
}
