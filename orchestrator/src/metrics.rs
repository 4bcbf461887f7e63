//! The orchestrator's metrics (every name, type and label: docs/metrics.md).
//!
//! Counted where things happen: the API (sagas started), the driver (sagas
//! finished, commands and their round trips, timers), the consumer and the
//! fast path (events applied, duplicates absorbed, dead letters). Label
//! values are bounded: saga types, step and participant names come from the
//! definitions, the rest are fixed words; never a saga id.
//!
//! On the hot path a count is an atomic add after a label lookup: names from
//! the definitions are interned once ([`Metrics::register`]), so counting
//! allocates nothing. The sagas by state are read from the database at
//! scrape time ([`Metrics::refresh_sagas`]), so they are right with any
//! number of instances; the watchers and the Pub/Sub streams are read from
//! this instance.

use std::collections::HashMap;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sagaflow_common::ops::{SecondsFamily, seconds_family};

use crate::saga::{Kind, Status};
use crate::store::Applied;

/// A label value from the definitions (a saga type, step or participant).
type Name = Arc<str>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SagaTypeLabels {
    saga_type: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinishedLabels {
    saga_type: Name,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    step: Name,
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    participant: Name,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailedLabels {
    participant: Name,
    kind: &'static str,
    error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ParticipantLabels {
    participant: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabels {
    path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WatchLabels {
    kind: &'static str,
}

/// Where an outcome event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// A participant's reply (the fast path), or its INVALID_ARGUMENT.
    Reply,
    /// Pub/Sub (the guaranteed path).
    PubSub,
}

impl Path {
    pub fn as_str(self) -> &'static str {
        match self {
            Path::Reply => "reply",
            Path::PubSub => "pubsub",
        }
    }
}

/// How a participant call ended, for the step round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// The participant answered: the step succeeded.
    Succeeded,
    /// The participant answered: the step was refused.
    Refused,
    /// The answer carried no outcome the orchestrator can read.
    Unreadable,
    /// `INVALID_ARGUMENT`: recorded as the step's refusal.
    Invalid,
    /// Another error the call will not retry (the deadline re-sends it).
    Rejected,
    /// Unavailable, timed out: retried.
    Unavailable,
}

impl CallOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Succeeded => "succeeded",
            CallOutcome::Refused => "refused",
            CallOutcome::Unreadable => "unreadable",
            CallOutcome::Invalid => "invalid",
            CallOutcome::Rejected => "rejected",
            CallOutcome::Unavailable => "unavailable",
        }
    }

    /// Whether the participant gave no answer (a failed command).
    fn failed(self) -> bool {
        matches!(
            self,
            CallOutcome::Invalid | CallOutcome::Rejected | CallOutcome::Unavailable
        )
    }
}

/// Why the consumer dead-lettered a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetter {
    Undecodable,
    UnknownSaga,
    Rejected,
    Suspended,
}

impl DeadLetter {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetter::Undecodable => "undecodable",
            DeadLetter::UnknownSaga => "unknown_saga",
            DeadLetter::Rejected => "rejected",
            DeadLetter::Suspended => "suspended",
        }
    }
}

/// What firing one due timer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerResult {
    /// The saga changed: a command re-sent, or a step given up on.
    Changed,
    /// Due, but nothing to do.
    Unchanged,
    /// It could not be fired: the saga is suspended.
    Suspended,
}

impl TimerResult {
    fn as_str(self) -> &'static str {
        match self {
            TimerResult::Changed => "changed",
            TimerResult::Unchanged => "unchanged",
            TimerResult::Suspended => "suspended",
        }
    }
}

/// Every metric of the orchestrator; shared by the API, the driver and the
/// consumer.
pub struct Metrics {
    /// Label values from the definitions, interned.
    names: HashMap<String, Name>,
    sagas_started: Family<SagaTypeLabels, Counter>,
    sagas_finished: Family<FinishedLabels, Counter>,
    saga_duration: SecondsFamily<FinishedLabels>,
    step_duration: SecondsFamily<StepLabels>,
    commands_sent: Family<CommandLabels, Counter>,
    commands_resent: Family<CommandLabels, Counter>,
    commands_failed: Family<FailedLabels, Counter>,
    commands_dropped: Family<ParticipantLabels, Counter>,
    events_applied: Family<PathLabels, Counter>,
    events_duplicate: Family<PathLabels, Counter>,
    events_ignored: Family<PathLabels, Counter>,
    dead_lettered: Family<ReasonLabels, Counter>,
    dead_letters_stored: Counter,
    timers_fired: Family<ResultLabels, Counter>,
    sagas: Family<StateLabels, Gauge>,
    watchers: Family<WatchLabels, Gauge>,
    pubsub_streams_up: Gauge,
}

impl Metrics {
    /// Register every metric with `registry` (prefix it `sagaflow_orchestrator`).
    pub fn register(registry: &mut Registry) -> Arc<Metrics> {
        let mut names = HashMap::new();
        for def in crate::definitions::registry() {
            let mut intern = |s: &str| {
                names.entry(s.to_owned()).or_insert_with(|| Name::from(s));
            };
            intern(&def.saga_type);
            for step in &def.steps {
                intern(&step.name);
                intern(&step.participant);
            }
        }
        let m = Metrics {
            names,
            sagas_started: Family::default(),
            sagas_finished: Family::default(),
            saga_duration: seconds_family(),
            step_duration: seconds_family(),
            commands_sent: Family::default(),
            commands_resent: Family::default(),
            commands_failed: Family::default(),
            commands_dropped: Family::default(),
            events_applied: Family::default(),
            events_duplicate: Family::default(),
            events_ignored: Family::default(),
            dead_lettered: Family::default(),
            dead_letters_stored: Counter::default(),
            timers_fired: Family::default(),
            sagas: Family::default(),
            watchers: Family::default(),
            pubsub_streams_up: Gauge::default(),
        };
        registry.register(
            "sagas_started",
            "Sagas placed by this instance (a repeated idempotency key is not counted)",
            m.sagas_started.clone(),
        );
        registry.register(
            "sagas_finished",
            "Sagas this instance moved to a final state (COMPLETED, COMPENSATED, COMPENSATION_FAILED)",
            m.sagas_finished.clone(),
        );
        registry.register(
            "saga_duration_seconds",
            "From a saga's placement to its final state, on the database's clock",
            m.saga_duration.clone(),
        );
        registry.register(
            "step_duration_seconds",
            "One step command's round trip: from sending it to the participant's answer (or the call's failure)",
            m.step_duration.clone(),
        );
        registry.register(
            "commands_sent",
            "Step commands sent to participants, every try",
            m.commands_sent.clone(),
        );
        registry.register(
            "commands_resent",
            "Sends that repeat a command already sent (a retried call, or a new attempt after its deadline)",
            m.commands_resent.clone(),
        );
        registry.register(
            "commands_failed",
            "Sends that got no answer: unavailable (retried), rejected, invalid (recorded as a refusal)",
            m.commands_failed.clone(),
        );
        registry.register(
            "commands_dropped",
            "Sends dropped before the call (queue full, deadline passed waiting for a slot); the deadline re-sends them",
            m.commands_dropped.clone(),
        );
        registry.register(
            "events_applied",
            "Outcome events that changed a saga, by the path that brought them",
            m.events_applied.clone(),
        );
        registry.register(
            "events_duplicate",
            "Copies of outcome events already applied, absorbed (acked without a change)",
            m.events_duplicate.clone(),
        );
        registry.register(
            "events_ignored",
            "Outcome events recorded but changing nothing (late, or for a step no longer in flight)",
            m.events_ignored.clone(),
        );
        registry.register(
            "dead_lettered",
            "Messages the consumer published to the dead-letter topic, by reason",
            m.dead_lettered.clone(),
        );
        registry.register(
            "dead_letters_stored",
            "Messages drained from the dead-letter subscription into the dead_letters table",
            m.dead_letters_stored.clone(),
        );
        registry.register(
            "timers_fired",
            "Persisted deadlines this instance fired, by what firing did",
            m.timers_fired.clone(),
        );
        registry.register(
            "sagas",
            "Sagas by state, read from the database at scrape time (all instances)",
            m.sagas.clone(),
        );
        registry.register(
            "watchers",
            "WatchSaga (kind=saga) and WatchSagas (kind=list) streams open on this instance",
            m.watchers.clone(),
        );
        registry.register(
            "pubsub_streams_up",
            "Streaming pulls of the events subscription that are consuming",
            m.pubsub_streams_up.clone(),
        );
        Arc::new(m)
    }

    fn name(&self, s: &str) -> Name {
        match self.names.get(s) {
            Some(n) => n.clone(),
            None => Name::from(s),
        }
    }

    /// A saga was placed.
    pub fn started(&self, saga_type: &str) {
        self.sagas_started
            .get_or_create(&SagaTypeLabels {
                saga_type: self.name(saga_type),
            })
            .inc();
    }

    /// A saga reached `state` (final) after `seconds`.
    pub fn finished(&self, saga_type: &str, state: Status, seconds: f64) {
        let labels = FinishedLabels {
            saga_type: self.name(saga_type),
            state: state.as_str(),
        };
        self.sagas_finished.get_or_create(&labels).inc();
        self.saga_duration
            .get_or_create(&labels)
            .observe(seconds.max(0.0));
    }

    /// A call to `participant` is about to be made; `resend` when it
    /// repeats one already made for the same command.
    pub fn sending(&self, participant: &str, kind: Kind, resend: bool) {
        let labels = CommandLabels {
            participant: self.name(participant),
            kind: kind.as_str(),
        };
        self.commands_sent.get_or_create(&labels).inc();
        if resend {
            self.commands_resent.get_or_create(&labels).inc();
        }
    }

    /// A call for `step` ended as `outcome` after `seconds`.
    pub fn called(
        &self,
        participant: &str,
        step: &str,
        kind: Kind,
        outcome: CallOutcome,
        seconds: f64,
    ) {
        self.step_duration
            .get_or_create(&StepLabels {
                step: self.name(step),
                kind: kind.as_str(),
                outcome: outcome.as_str(),
            })
            .observe(seconds);
        if outcome.failed() {
            self.commands_failed
                .get_or_create(&FailedLabels {
                    participant: self.name(participant),
                    kind: kind.as_str(),
                    error: outcome.as_str(),
                })
                .inc();
        }
    }

    /// A send to `participant` was dropped before its call.
    pub fn dropped(&self, participant: &str) {
        self.commands_dropped
            .get_or_create(&ParticipantLabels {
                participant: self.name(participant),
            })
            .inc();
    }

    /// What applying an event that came by `path` did.
    pub fn applied(&self, path: Path, applied: &Applied) {
        let family = match applied {
            Applied::Changed(_) => &self.events_applied,
            Applied::Duplicate => &self.events_duplicate,
            Applied::Unchanged => &self.events_ignored,
            // Not applied: dead-lettered (counted there) or left to the
            // other path.
            Applied::UnknownSaga | Applied::Rejected(_) | Applied::Suspended { .. } => return,
        };
        family
            .get_or_create(&PathLabels {
                path: path.as_str(),
            })
            .inc();
    }

    /// The consumer dead-lettered a message.
    pub fn dead_lettered(&self, reason: DeadLetter) {
        self.dead_lettered
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// A dead letter was stored.
    pub fn dead_letter_stored(&self) {
        self.dead_letters_stored.inc();
    }

    /// A due timer was fired.
    pub fn timer_fired(&self, result: TimerResult) {
        self.timers_fired
            .get_or_create(&ResultLabels {
                result: result.as_str(),
            })
            .inc();
    }

    /// Read the sagas by state from the database (at scrape time). On
    /// failure the gauge is emptied rather than left stale.
    pub async fn refresh_sagas(&self, pool: &deadpool_postgres::Pool) {
        let counts = async {
            let client = pool.get().await.map_err(|e| e.to_string())?;
            client
                .query("SELECT status, count(*) FROM sagas GROUP BY status", &[])
                .await
                .map_err(|e| e.to_string())
                .map(|rows| {
                    rows.iter()
                        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
                        .collect::<Vec<_>>()
                })
        }
        .await;
        match counts {
            Ok(counts) => {
                for status in Status::ALL {
                    let n = counts
                        .iter()
                        .find(|(s, _)| s == status.as_str())
                        .map_or(0, |(_, n)| *n);
                    self.sagas
                        .get_or_create(&StateLabels {
                            state: status.as_str(),
                        })
                        .set(n);
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "counting sagas by state for /metrics failed");
                self.sagas.clear();
            }
        }
    }

    /// The watchers open now (`hub.watchers()`).
    pub fn set_watchers(&self, sagas: usize, lists: usize) {
        for (kind, n) in [("saga", sagas), ("list", lists)] {
            self.watchers
                .get_or_create(&WatchLabels { kind })
                .set(n as i64);
        }
    }

    /// The Pub/Sub streams consuming now.
    pub fn set_streams_up(&self, n: usize) {
        self.pubsub_streams_up.set(n as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn counts_carry_bounded_labels_and_the_documented_names() {
        let mut registry = Registry::with_prefix("sagaflow_orchestrator");
        let m = Metrics::register(&mut registry);
        m.started("order");
        m.finished("order", Status::Compensated, 0.25);
        m.sending("payment", Kind::Action, false);
        m.sending("payment", Kind::Action, true);
        m.called(
            "payment",
            "process_payment",
            Kind::Action,
            CallOutcome::Unavailable,
            0.01,
        );
        m.applied(Path::PubSub, &Applied::Duplicate);
        m.dead_lettered(DeadLetter::Undecodable);
        m.timer_fired(TimerResult::Changed);
        m.set_watchers(2, 1);
        let text = scrape(&registry);
        for line in [
            "sagaflow_orchestrator_sagas_started_total{saga_type=\"order\"} 1",
            "sagaflow_orchestrator_sagas_finished_total{saga_type=\"order\",state=\"COMPENSATED\"} 1",
            "sagaflow_orchestrator_saga_duration_seconds_count{saga_type=\"order\",state=\"COMPENSATED\"} 1",
            "sagaflow_orchestrator_commands_sent_total{participant=\"payment\",kind=\"action\"} 2",
            "sagaflow_orchestrator_commands_resent_total{participant=\"payment\",kind=\"action\"} 1",
            "sagaflow_orchestrator_commands_failed_total{participant=\"payment\",kind=\"action\",error=\"unavailable\"} 1",
            "sagaflow_orchestrator_step_duration_seconds_count{step=\"process_payment\",kind=\"action\",outcome=\"unavailable\"} 1",
            "sagaflow_orchestrator_events_duplicate_total{path=\"pubsub\"} 1",
            "sagaflow_orchestrator_dead_lettered_total{reason=\"undecodable\"} 1",
            "sagaflow_orchestrator_timers_fired_total{result=\"changed\"} 1",
            "sagaflow_orchestrator_watchers{kind=\"saga\"} 2",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
