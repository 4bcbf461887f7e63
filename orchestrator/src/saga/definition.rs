//! Saga definitions are data: named steps, each with its participant, the
//! gRPC methods of its action and compensation, and its policy. The engine
//! knows nothing else about a saga type.

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use super::mapping::Mapping;

/// A saga type, at one version. Each saga instance records the version it
/// started with and keeps running under it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Definition {
    pub saga_type: String,
    pub version: u32,
    pub steps: Vec<StepDef>,
    /// JSON Schema (draft 2020-12) every input of this type must satisfy;
    /// `None` (definitions built in code) accepts any input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepDef {
    /// Stable name, used in logs, events and the API ("process_payment").
    pub name: String,
    /// Key of the participant's endpoint in the orchestrator's configuration.
    pub participant: String,
    /// Full gRPC method path of the action
    /// ("/sagaflow.payment.v1.PaymentService/ProcessPayment").
    pub action: String,
    /// Method path of the compensation; `None` for a step that cannot be
    /// undone: the pivot, or a forward-only step after it.
    pub compensation: Option<String>,
    /// A step after the pivot (send the confirmation, notify the
    /// warehouse): never compensated, re-sent until its outcome is known,
    /// and a refusal suspends the saga for an operator instead of undoing
    /// anything. It has no compensation.
    #[serde(default, skip_serializing_if = "is_false")]
    pub forward_only: bool,
    /// Consecutive steps with the same group name run at once: the group
    /// succeeds when all of them do; when one is refused or its outcome is
    /// unknown, every member that may have acted is compensated (those in
    /// flight included), then the steps before the group in reverse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// How the action's command input is built ([`super::mapping`]); `None`:
    /// the saga's input as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Mapping>,
    /// How the compensation's command input is built; `None`: as the
    /// action's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation_input: Option<Mapping>,
    /// Attempts and deadline of the action.
    pub policy: Policy,
    /// Attempts and deadline of the compensation.
    pub compensation_policy: Policy,
}

/// How hard to try one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Sends of the same command (same command id) before its outcome is
    /// declared unknown (action) or the saga is paused (compensation).
    pub max_attempts: u32,
    /// How long to wait for the outcome event after a send.
    #[serde(with = "millis")]
    pub deadline: Duration,
    /// First delay between failed sends of one attempt (transport errors).
    #[serde(with = "millis")]
    pub backoff_base: Duration,
    /// Largest delay between failed sends.
    #[serde(with = "millis")]
    pub backoff_cap: Duration,
    /// Fraction of each delay that is randomised (0 = none, 1 = full jitter).
    pub jitter_percent: u8,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_attempts: 5,
            deadline: Duration::from_secs(10),
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(5),
            jitter_percent: 50,
        }
    }
}

impl Policy {
    /// The delay before send number `failures + 1` of one attempt:
    /// `min(cap, base * 2^failures)`, of which `jitter_percent` is scaled by
    /// `unit` (a random number in `[0, 1)` chosen by the caller).
    pub fn backoff(&self, failures: u32, unit: f64) -> Duration {
        let exp = self
            .backoff_base
            .saturating_mul(2u32.saturating_pow(failures.min(30)));
        let full = exp.min(self.backoff_cap);
        let jitter = f64::from(self.jitter_percent.min(100)) / 100.0;
        full.mul_f64(1.0 - jitter + jitter * unit.clamp(0.0, 1.0))
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

impl Definition {
    /// The steps that run together with step `i`: its parallel group, or
    /// itself alone (an empty range past the end).
    pub fn stage(&self, i: usize) -> std::ops::Range<usize> {
        let Some(group) = self.steps.get(i).and_then(|s| s.group.as_deref()) else {
            return i..(i + 1).min(self.steps.len().max(i));
        };
        let same = |j: usize| self.steps[j].group.as_deref() == Some(group);
        let mut start = i;
        while start > 0 && same(start - 1) {
            start -= 1;
        }
        let mut end = i + 1;
        while end < self.steps.len() && same(end) {
            end += 1;
        }
        start..end
    }

    /// Problems that would make the definition unusable, if any. The
    /// orchestrator refuses to start with one.
    ///
    /// Once a step that cannot be undone (no compensation) has run, the
    /// saga can no longer turn back: every step after it must be declared
    /// forward-only (retried until it succeeds, a refusal suspends the saga
    /// for an operator). Otherwise a failure after it could neither be
    /// undone (it cannot be) nor carried through. A forward-only step has
    /// no compensation.
    pub fn validate(&self) -> Result<(), String> {
        let name = format!("{} v{}", self.saga_type, self.version);
        if self.steps.is_empty() {
            return Err(format!("{name}: a saga needs at least one step"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, s) in self.steps.iter().enumerate() {
            let step = format!("{name}: step {i} ({})", s.name);
            if s.name.trim().is_empty() {
                return Err(format!("{name}: step {i} has no name"));
            }
            if !names.insert(s.name.as_str()) {
                return Err(format!("{step}: another step has the same name"));
            }
            if s.policy.max_attempts == 0 || s.compensation_policy.max_attempts == 0 {
                return Err(format!("{step}: max_attempts must be >= 1"));
            }
            if s.policy.deadline.is_zero() || s.compensation_policy.deadline.is_zero() {
                return Err(format!("{step}: deadline must be > 0"));
            }
            if s.policy.backoff_cap < s.policy.backoff_base
                || s.compensation_policy.backoff_cap < s.compensation_policy.backoff_base
            {
                return Err(format!("{step}: backoff_cap must be >= backoff_base"));
            }
            if let Some(group) = &s.group {
                let stage = self.stage(i);
                if stage.len() < 2 {
                    return Err(format!(
                        "{step}: group {group} has one step; a group runs several steps at once"
                    ));
                }
                if self.steps[..stage.start]
                    .iter()
                    .any(|other| other.group.as_ref() == Some(group))
                {
                    return Err(format!(
                        "{step}: the steps of group {group} must be consecutive"
                    ));
                }
                if s.compensation.is_none() {
                    return Err(format!(
                        "{step}: it cannot be undone, so it may not sit inside parallel group {group} (a sibling's failure would leave it standing)"
                    ));
                }
            }
            if s.forward_only && s.compensation.is_some() {
                return Err(format!(
                    "{step}: a forward-only step is never compensated, so it has no compensation"
                ));
            }
            if s.compensation.is_none()
                && let Some(next) = self.steps.get(i + 1)
                && !next.forward_only
            {
                return Err(format!(
                    "{step}: it cannot be undone (no compensation), so every step after it must be forward-only; {} is not",
                    next.name
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, compensation: Option<&str>) -> StepDef {
        StepDef {
            name: name.into(),
            participant: "p".into(),
            action: format!("/t.v1.S/{name}"),
            compensation: compensation.map(|c| format!("/t.v1.S/{c}")),
            forward_only: false,
            group: None,
            input: None,
            compensation_input: None,
            policy: Policy::default(),
            compensation_policy: Policy::default(),
        }
    }

    fn def(steps: Vec<StepDef>) -> Definition {
        Definition {
            input_schema: None,
            saga_type: "t".into(),
            version: 1,
            steps,
        }
    }

    fn forward(name: &str) -> StepDef {
        StepDef {
            forward_only: true,
            ..step(name, None)
        }
    }

    #[test]
    fn only_forward_only_steps_follow_a_step_that_cannot_be_undone() {
        let ok = def(vec![step("a", Some("undo_a")), step("pivot", None)]);
        assert_eq!(ok.validate(), Ok(()));
        let ok = def(vec![
            step("a", Some("undo_a")),
            step("pivot", None),
            forward("notify"),
            forward("archive"),
        ]);
        assert_eq!(ok.validate(), Ok(()));
        // Without a pivot the first forward-only step is the point of no
        // return; a saga may even be forward-only throughout.
        assert_eq!(
            def(vec![step("a", Some("undo_a")), forward("notify")]).validate(),
            Ok(())
        );
        assert_eq!(def(vec![forward("only")]).validate(), Ok(()));
        for (bad, at, next) in [
            (
                vec![
                    step("a", Some("undo_a")),
                    step("pivot", None),
                    step("c", Some("undo_c")),
                ],
                "step 1 (pivot)",
                "c",
            ),
            (
                vec![step("pivot", None), step("second_pivot", None)],
                "step 0 (pivot)",
                "second_pivot",
            ),
            (
                vec![
                    step("pivot", None),
                    forward("notify"),
                    step("c", Some("undo_c")),
                ],
                "step 1 (notify)",
                "c",
            ),
        ] {
            let e = def(bad).validate().unwrap_err();
            assert!(
                e.starts_with(&format!("t v1: {at}: it cannot be undone"))
                    && e.ends_with(&format!(
                        "every step after it must be forward-only; {next} is not"
                    )),
                "{e}"
            );
        }
        let e = def(vec![StepDef {
            forward_only: true,
            ..step("notify", Some("unnotify"))
        }])
        .validate()
        .unwrap_err();
        assert_eq!(
            e,
            "t v1: step 0 (notify): a forward-only step is never compensated, so it has no compensation"
        );
    }

    fn grouped(name: &str, group: &str, compensation: Option<&str>) -> StepDef {
        StepDef {
            group: Some(group.into()),
            ..step(name, compensation)
        }
    }

    #[test]
    fn a_parallel_group_is_consecutive_plural_and_undoable() {
        let ok = def(vec![
            grouped("flight", "book", Some("u")),
            grouped("hotel", "book", Some("u")),
            step("charge", Some("refund")),
            step("confirm", None),
        ]);
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(
            (ok.stage(0), ok.stage(1), ok.stage(2), ok.stage(3)),
            (0..2, 0..2, 2..3, 3..4)
        );
        assert_eq!(ok.stage(9), 9..9);
        let e = def(vec![
            grouped("flight", "book", Some("u")),
            step("charge", Some("r")),
        ])
        .validate()
        .unwrap_err();
        assert!(e.contains("group book has one step"), "{e}");
        let e = def(vec![
            grouped("flight", "book", Some("u")),
            grouped("hotel", "book", Some("u")),
            step("charge", Some("r")),
            grouped("car", "book", Some("u")),
            grouped("bike", "book", Some("u")),
        ])
        .validate()
        .unwrap_err();
        assert!(
            e.contains("the steps of group book must be consecutive"),
            "{e}"
        );
        let e = def(vec![
            grouped("flight", "book", Some("u")),
            grouped("hotel", "book", None),
        ])
        .validate()
        .unwrap_err();
        assert!(e.contains("may not sit inside parallel group book"), "{e}");
    }

    #[test]
    fn empty_unnamed_and_duplicate_steps_are_refused() {
        assert!(def(vec![]).validate().is_err());
        assert!(def(vec![step(" ", Some("u"))]).validate().is_err());
        let e = def(vec![step("a", Some("u")), step("a", Some("u"))])
            .validate()
            .unwrap_err();
        assert!(e.contains("same name"), "{e}");
    }

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap() {
        let p = Policy {
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_millis(1000),
            jitter_percent: 0,
            ..Policy::default()
        };
        let delays: Vec<u128> = (0..6).map(|f| p.backoff(f, 0.5).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_stays_within_its_share() {
        let p = Policy {
            backoff_base: Duration::from_millis(1000),
            backoff_cap: Duration::from_millis(1000),
            jitter_percent: 50,
            ..Policy::default()
        };
        assert_eq!(p.backoff(0, 0.0).as_millis(), 500);
        assert_eq!(p.backoff(0, 0.999_999).as_millis(), 999);
        assert_eq!(p.backoff(u32::MAX, 1.0).as_millis(), 1000);
    }
}
