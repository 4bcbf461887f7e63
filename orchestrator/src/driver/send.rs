//! Sending one command, fair to every participant.
//!
//! A participant that is down must not starve the healthy ones, so:
//! - each participant has its own limit of calls in flight (and there is
//!   one overall); a send holds its permits only while it calls, never
//!   while it sleeps between retries;
//! - a send retries transport failures with exponential backoff and jitter
//!   until its step's deadline, and gives up when that deadline passes,
//!   also while it waits for a permit (the timer re-sends it, same
//!   command id);
//! - the number of send tasks is bounded: past it a send is dropped at once
//!   (the deadline re-sends it).
//!
//! A participant that answers `INVALID_ARGUMENT` rejected the command as
//! malformed and wrote nothing; re-sending the same command cannot help, so
//! the rejection is recorded as the step's refusal (reason
//! `invalid_command: …`) and the saga compensates at once.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use sagaflow_protos::participant::v1::{CommandAck, StepCommand};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument as _;
use uuid::Uuid;

use super::{Driver, command_id};
use crate::metrics::{CallOutcome, Path};
use crate::participants::SendError;
use crate::saga::Definition;
use crate::saga::{Command, Event, Kind, Outcome};
use crate::store::{Applied, SagaContext};

/// Longest participant message kept in a refusal's reason.
const MAX_REASON: usize = 500;

impl Driver {
    /// Send `cmd` in the background (or drop it when too many sends wait).
    pub(super) fn send(
        &self,
        def: Arc<Definition>,
        ctx: SagaContext,
        cmd: Command,
        parent: Option<String>,
    ) {
        let Ok(slot) = self.inner.queued.clone().try_acquire_owned() else {
            let participant = def
                .steps
                .get(cmd.step)
                .map(|s| s.participant.clone())
                .unwrap_or_default();
            self.dropped(&ctx, &cmd, &participant, "too many sends are waiting");
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            this.deliver(&def, ctx, cmd, parent).await;
            drop(slot);
        });
    }

    fn dropped(&self, ctx: &SagaContext, cmd: &Command, participant: &str, why: &str) {
        self.inner.metrics.dropped(participant);
        let n = self.inner.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(saga.id = %ctx.saga_id, saga.step = cmd.step, why, "send dropped; its deadline re-sends it");
        // Every so often, not every time: under overload this would flood.
        if n.is_power_of_two() {
            tracing::warn!(
                dropped = n,
                why,
                "sends dropped so far; their deadlines re-send them"
            );
        }
    }

    fn semaphore_of(&self, participant: &str) -> Arc<Semaphore> {
        let mut map = self
            .inner
            .per_participant
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.entry(participant.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.inner.limits.per_participant)))
            .clone()
    }

    async fn deliver(
        &self,
        def: &Definition,
        ctx: SagaContext,
        cmd: Command,
        parent: Option<String>,
    ) {
        let Some(step) = def.steps.get(cmd.step) else {
            tracing::error!(saga.id = %ctx.saga_id, saga.step = cmd.step, "no such step; command not sent");
            return;
        };
        let (method, policy) = match cmd.kind {
            Kind::Action => (Some(step.action.clone()), step.policy),
            Kind::Compensation => (step.compensation.clone(), step.compensation_policy),
        };
        let Some(method) = method else {
            tracing::error!(saga.id = %ctx.saga_id, saga.step = cmd.step, "step has no compensation");
            return;
        };
        let id = command_id(ctx.saga_id, &cmd);
        // The command's span: every call of it (its RPC client spans) and
        // what its reply applies hang under it.
        let span = tracing::info_span!(
            "saga.command",
            saga.id = %ctx.saga_id,
            saga.type = %ctx.saga_type,
            saga.step = %step.name,
            saga.step.index = cmd.step,
            saga.command.kind = cmd.kind.as_str(),
            saga.command.attempt = cmd.attempt,
            command.id = %id,
            participant = %step.participant,
            saga.outcome = tracing::field::Empty,
        );
        sagaflow_common::trace::set_parent(&span, parent.as_deref().or(ctx.traceparent.as_deref()));
        let command = StepCommand {
            command_id: id.to_string(),
            saga_id: ctx.saga_id.to_string(),
            step: cmd.step as u32,
            step_name: step.name.clone(),
            attempt: cmd.attempt,
            saga_type: ctx.saga_type.clone(),
            input: ctx.input.clone(),
        };
        let give_up_at = tokio::time::Instant::now() + policy.deadline;
        let participant = step.participant.clone();
        let own = self.semaphore_of(&participant);
        async move {
            let traceparent = sagaflow_common::trace::current_traceparent();
            let mut failures = 0u32;
            loop {
                let permits = tokio::select! {
                    p = permits(&own, &self.inner.total) => p,
                    _ = tokio::time::sleep_until(give_up_at) => {
                        self.dropped(&ctx, &cmd, &participant, "its deadline passed while it waited for a free slot");
                        return;
                    }
                    _ = self.inner.shutdown.cancelled() => return,
                };
                let Some(permits) = permits else { return };
                let metrics = &self.inner.metrics;
                metrics.sending(&participant, cmd.kind, cmd.attempt > 1 || failures > 0);
                let called = std::time::Instant::now();
                let result = self
                    .inner
                    .participants
                    .send(&participant, &method, command.clone(), traceparent.clone())
                    .await;
                drop(permits);
                let outcome = match &result {
                    Ok(ack) => match crate::consumer::outcome_of(ack.outcome, "", &ack.output) {
                        Ok(Outcome::Succeeded { .. }) => CallOutcome::Succeeded,
                        Ok(Outcome::Refused { .. }) => CallOutcome::Refused,
                        Err(_) => CallOutcome::Unreadable,
                    },
                    Err(SendError::Invalid(_)) => CallOutcome::Invalid,
                    Err(SendError::Permanent(_)) => CallOutcome::Rejected,
                    Err(SendError::Transient(_)) => CallOutcome::Unavailable,
                };
                metrics.called(
                    &participant,
                    &step.name,
                    cmd.kind,
                    outcome,
                    called.elapsed().as_secs_f64(),
                );
                tracing::Span::current().record("saga.outcome", outcome.as_str());
                let e = match result {
                    Ok(ack) => {
                        tracing::debug!(ack.status = ack.status, "command acknowledged");
                        if self.inner.limits.apply_replies {
                            self.apply_reply(&ctx, &cmd, ack).await;
                        }
                        return;
                    }
                    Err(SendError::Invalid(message)) => {
                        self.refuse_invalid(&ctx, &cmd, id, &participant, &message)
                            .await;
                        return;
                    }
                    Err(SendError::Permanent(e)) => {
                        sagaflow_common::trace::fail(&tracing::Span::current(), "rejected", &e);
                        tracing::error!(error = %e, "command rejected; the step's deadline re-sends it");
                        return;
                    }
                    Err(SendError::Transient(e)) => e,
                };
                let delay = policy.backoff(failures, rand::random::<f64>());
                failures += 1;
                if tokio::time::Instant::now() + delay >= give_up_at {
                    sagaflow_common::trace::fail(&tracing::Span::current(), "undelivered", &e);
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
        .instrument(span)
        .await
    }

    /// Record a participant's INVALID_ARGUMENT as the step's final refusal.
    async fn refuse_invalid(
        &self,
        ctx: &SagaContext,
        cmd: &Command,
        command_id: Uuid,
        participant: &str,
        message: &str,
    ) {
        let reason = format!(
            "invalid_command: {participant} answered INVALID_ARGUMENT: {}",
            truncate(message, MAX_REASON)
        );
        tracing::warn!(saga.id = %ctx.saga_id, %reason, "participant rejected the command as malformed; recording it as a refusal");
        let event = Event::Outcome {
            step: cmd.step,
            kind: cmd.kind,
            outcome: Outcome::Refused { reason },
        };
        // One event per command: a repeat of the same rejection is a duplicate.
        let event_id = Uuid::new_v5(&command_id, b"invalid_argument");
        match self.apply(Path::Reply, event_id, ctx.saga_id, &event).await {
            Ok(Applied::Changed(c)) => {
                self.carry_out(&c, sagaflow_common::trace::current_traceparent());
            }
            Ok(Applied::Rejected(e)) => {
                tracing::warn!(error = %e, "the refusal does not apply to the saga as it is now");
            }
            Ok(
                Applied::Duplicate
                | Applied::Unchanged
                | Applied::UnknownSaga
                | Applied::Suspended { .. },
            ) => {}
            Err(e) => {
                tracing::warn!(error = %e, "recording the refusal failed; the step's deadline re-sends the command");
            }
        }
    }

    /// The fast path: apply the outcome the participant's reply carries,
    /// through the same dedupe, transition and transaction as its event from
    /// Pub/Sub, and send what follows. The participant committed that event
    /// before it answered, so the reply and the event are the same outcome
    /// under the same event id: whichever arrives second is a duplicate.
    /// Anything that keeps the reply from applying here (a malformed reply, a
    /// database error, a transition the machine refuses) is left to the
    /// event from Pub/Sub, the guaranteed path, which judges it again.
    async fn apply_reply(&self, ctx: &SagaContext, cmd: &Command, ack: CommandAck) {
        let span = tracing::info_span!(
            "saga.apply_reply",
            saga.id = %ctx.saga_id,
            saga.type = %ctx.saga_type,
            saga.step.index = cmd.step,
            event.id = %ack.event_id,
        );
        async move {
            let (event_id, outcome) = match parse_reply(&ack) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "the participant's reply carries no usable outcome; waiting for its event");
                    return;
                }
            };
            let event = Event::Outcome {
                step: cmd.step,
                kind: cmd.kind,
                outcome,
            };
            match self.apply(Path::Reply, event_id, ctx.saga_id, &event).await {
                Ok(Applied::Changed(c)) => {
                    self.carry_out(&c, sagaflow_common::trace::current_traceparent());
                }
                Ok(Applied::Duplicate | Applied::Unchanged) => {}
                Ok(Applied::Rejected(e)) => {
                    tracing::debug!(error = %e, "reply not applied; its event is judged when it arrives");
                }
                Ok(Applied::UnknownSaga | Applied::Suspended { .. }) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "applying the reply failed; its event from Pub/Sub applies it");
                }
            }
        }
        .instrument(span)
        .await
    }
}

/// The event id and outcome a reply carries.
fn parse_reply(ack: &CommandAck) -> Result<(Uuid, Outcome), String> {
    let event_id = Uuid::parse_str(&ack.event_id).map_err(|_| "event_id: not a UUID".to_owned())?;
    let outcome = crate::consumer::outcome_of(ack.outcome, &ack.reason, &ack.output)?;
    Ok((event_id, outcome))
}

/// A permit of the participant's own limit, then one of the overall limit;
/// `None` when the driver is closing.
async fn permits(
    own: &Arc<Semaphore>,
    total: &Arc<Semaphore>,
) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
    let mine = own.clone().acquire_owned().await.ok()?;
    let all = total.clone().acquire_owned().await.ok()?;
    Some((mine, all))
}

/// At most `max` characters of `s`.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sagaflow_protos::events::v1::Outcome as PbOutcome;

    fn reply(event_id: &str, outcome: i32, reason: &str) -> CommandAck {
        CommandAck {
            event_id: event_id.into(),
            outcome,
            reason: reason.into(),
            ..CommandAck::default()
        }
    }

    #[test]
    fn a_reply_carries_its_event_id_and_outcome() {
        let id = Uuid::now_v7();
        let (got, outcome) = parse_reply(&reply(
            &id.to_string(),
            PbOutcome::Refused as i32,
            "no_credit",
        ))
        .unwrap();
        assert_eq!(got, id);
        assert_eq!(
            outcome,
            Outcome::Refused {
                reason: "no_credit".into()
            }
        );
    }

    /// A reply that says nothing usable (an old participant, a broken one)
    /// is not applied: the event from Pub/Sub decides.
    #[test]
    fn a_reply_without_a_usable_outcome_is_not_applied() {
        let id = Uuid::now_v7().to_string();
        for bad in [
            reply("", PbOutcome::Succeeded as i32, ""),
            reply("not-a-uuid\0", PbOutcome::Succeeded as i32, ""),
            reply(&id, 0, ""),
            reply(&id, 7, ""),
            reply(&id, i32::MAX, ""),
            reply(&id, -1, ""),
        ] {
            assert!(parse_reply(&bad).is_err(), "{bad:?}");
        }
    }
}
