//! A participant's metrics (every name, type and label: docs/metrics.md),
//! counted by the [`Executor`](crate::command::Executor) as each step
//! command ends. Every label value is a fixed word (the participant, the
//! command's kind, the RPC's method, the outcome): counting is an atomic add
//! after a label lookup, and never allocates.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use sagaflow_common::ops::{SecondsFamily, seconds_family};

use crate::command::{Rpc, kind_name};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    participant: &'static str,
    kind: &'static str,
    method: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    participant: &'static str,
    kind: &'static str,
    method: &'static str,
}

/// How a step command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Handled for the first time: the step succeeded.
    Succeeded,
    /// Handled for the first time: the step was refused.
    Refused,
    /// A repeat, answered with the stored outcome.
    Repeat,
    /// Malformed: `INVALID_ARGUMENT`, nothing written.
    Invalid,
    /// The database failed (or a bug): nothing committed.
    Failed,
}

impl Ended {
    fn as_str(self) -> &'static str {
        match self {
            Ended::Succeeded => "succeeded",
            Ended::Refused => "refused",
            Ended::Repeat => "repeat",
            Ended::Invalid => "invalid",
            Ended::Failed => "failed",
        }
    }
}

/// Every metric of one participant; cheap to share.
pub struct Metrics {
    participant: &'static str,
    commands: Family<CommandLabels, Counter>,
    tombstones: Family<MethodLabels, Counter>,
    duration: SecondsFamily<MethodLabels>,
}

impl Metrics {
    /// Register every metric of `participant` with `registry` (prefix it
    /// `sagaflow_participant`).
    pub fn register(registry: &mut Registry, participant: &'static str) -> Arc<Metrics> {
        let m = Metrics {
            participant,
            commands: Family::default(),
            tombstones: Family::default(),
            duration: seconds_family(),
        };
        registry.register(
            "commands",
            "Step commands by how they ended: succeeded, refused, repeat (a command id handled before: the stored outcome answered, its event emitted again), invalid, failed",
            m.commands.clone(),
        );
        registry.register(
            "tombstones",
            "Compensations that arrived before their action and left a tombstone (the late action is refused)",
            m.tombstones.clone(),
        );
        registry.register(
            "command_duration_seconds",
            "Time to handle one step command (its transaction included)",
            m.duration.clone(),
        );
        Arc::new(m)
    }

    /// Metrics registered nowhere (a service built outside [`crate::serve`]).
    pub fn unregistered(participant: &'static str) -> Arc<Metrics> {
        Metrics::register(&mut Registry::default(), participant)
    }

    fn method(&self, rpc: &Rpc) -> MethodLabels {
        MethodLabels {
            participant: self.participant,
            kind: kind_name(rpc.kind),
            method: rpc.method,
        }
    }

    /// A command for `rpc` ended as `ended` after `seconds`.
    pub fn ended(&self, rpc: &Rpc, ended: Ended, seconds: f64) {
        let labels = self.method(rpc);
        self.commands
            .get_or_create(&CommandLabels {
                participant: labels.participant,
                kind: labels.kind,
                method: labels.method,
                outcome: ended.as_str(),
            })
            .inc();
        self.duration.get_or_create(&labels).observe(seconds);
    }

    /// A compensation for `rpc` left a tombstone.
    pub fn tombstone(&self, rpc: &Rpc) {
        self.tombstones.get_or_create(&self.method(rpc)).inc();
    }
}
