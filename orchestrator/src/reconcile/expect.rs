//! What each participant should have recorded for a finished saga, given
//! the orchestrator's record of it, and the comparison. Pure: no I/O.
//!
//! Expectations per step state (the orchestrator's `steps`):
//!
//! | step state | action at the participant | compensations |
//! |---|---|---|
//! | `SUCCEEDED` | `SUCCEEDED` | none |
//! | `REFUSED` | `REFUSED`, same reason; nothing at all when the reason starts `invalid_command:` (rejected before the inbox) | none |
//! | `COMPENSATED` | `SUCCEEDED`, `REFUSED` (`compensated_before_action`, or a refusal whose outcome came after the step was given up on) or never arrived | at least one `SUCCEEDED` (refused ones of earlier operator retries allowed) |
//! | `COMPENSATION_FAILED` | anything or nothing | none `SUCCEEDED` (a success means its outcome is late or lost: `RetrySaga`) |
//! | `NOT_COMPENSATED` | anything or nothing | none |
//! | `NOT_STARTED` | nothing | none |
//! | `PENDING`, `UNKNOWN`, `COMPENSATING` | cannot be in a finished saga | |
//!
//! And across participants: a command whose id is not one the saga sent
//! (its action, or its compensation of generation 0 up to the step's
//! operator retries) is a mismatch, as is a command at a participant other
//! than the step's.

use std::collections::HashMap;

use uuid::Uuid;

use crate::driver::command_id;
use crate::saga::{Command, Definition, Kind, SagaState, Status, StepState};

/// A participant's decision, as it reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decided {
    Succeeded,
    Refused,
}

/// One command a participant says it handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub participant: String,
    pub command_id: Uuid,
    pub step: usize,
    pub kind: Kind,
    pub decided: Decided,
    pub reason: String,
}

impl Record {
    /// `action SUCCEEDED`, `compensation REFUSED (refunds_held: cust-bob)`.
    pub fn describe(&self) -> String {
        let outcome = match self.decided {
            Decided::Succeeded => "SUCCEEDED",
            Decided::Refused => "REFUSED",
        };
        match self.reason.as_str() {
            "" => format!("{} {outcome}", self.kind.as_str()),
            r => format!("{} {outcome} ({r})", self.kind.as_str()),
        }
    }
}

/// One step, compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepCheck {
    pub step: usize,
    pub name: String,
    pub participant: String,
    pub state: StepState,
    /// The step's records at its participant, as received.
    pub records: Vec<Record>,
    /// Empty when the participant agrees with the orchestrator.
    pub problems: Vec<String>,
}

/// A finished saga, compared with what its participants recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaCheck {
    pub steps: Vec<StepCheck>,
    /// Problems not about one step: the saga's status against its steps,
    /// commands the saga never sent.
    pub problems: Vec<String>,
}

impl SagaCheck {
    pub fn agrees(&self) -> bool {
        self.problems.is_empty() && self.steps.iter().all(|s| s.problems.is_empty())
    }
}

/// Compare saga `saga_id` (finished, run by `def`, now `state`) with the
/// `records` its participants returned.
pub fn compare(
    def: &Definition,
    saga_id: Uuid,
    state: &SagaState,
    records: &[Record],
) -> SagaCheck {
    // Every command id the saga may have sent, and what it was.
    let mut sent: HashMap<Uuid, (usize, Kind)> = HashMap::new();
    for (step, rec) in state.steps.iter().enumerate() {
        let mut add = |kind, generation| {
            let cmd = Command {
                step,
                kind,
                attempt: 1,
                generation,
            };
            sent.insert(command_id(saga_id, &cmd), (step, kind));
        };
        for generation in 0..=rec.action_generation {
            add(Kind::Action, generation);
        }
        if def
            .steps
            .get(step)
            .is_some_and(|s| s.compensation.is_some())
        {
            for generation in 0..=rec.compensation_generation {
                add(Kind::Compensation, generation);
            }
        }
    }
    let mut problems = status_problems(state);
    let mut steps: Vec<StepCheck> = def
        .steps
        .iter()
        .zip(&state.steps)
        .enumerate()
        .map(|(step, (d, rec))| StepCheck {
            step,
            name: d.name.clone(),
            participant: d.participant.clone(),
            state: rec.state,
            records: Vec::new(),
            problems: Vec::new(),
        })
        .collect();
    for r in records {
        match sent.get(&r.command_id) {
            Some(&(step, kind)) if kind == r.kind && steps[step].participant == r.participant => {
                steps[step].records.push(r.clone());
            }
            _ => problems.push(format!(
                "{} handled command {} ({} of step {}) {}, which the saga never sent",
                r.participant,
                r.command_id,
                r.kind.as_str(),
                r.step,
                r.describe()
            )),
        }
    }
    for (i, (check, rec)) in steps.iter_mut().zip(&state.steps).enumerate() {
        // The action's current command: an operator's retry of a refused
        // forward-only step sends a new one (the next generation).
        let current = command_id(
            saga_id,
            &Command {
                step: i,
                kind: Kind::Action,
                attempt: 1,
                generation: rec.action_generation,
            },
        );
        check.problems = step_problems(rec.state, rec.reason.as_deref(), current, &check.records);
    }
    SagaCheck { steps, problems }
}

/// The saga's status against its steps' states.
fn status_problems(state: &SagaState) -> Vec<String> {
    let states = || state.steps.iter().map(|s| s.state);
    let bad: Vec<&str> = match state.status {
        Status::Completed => states()
            .filter(|s| *s != StepState::Succeeded)
            .map(StepState::as_str)
            .collect(),
        Status::Compensated => states()
            .filter(|s| {
                matches!(
                    s,
                    StepState::Succeeded
                        | StepState::Pending
                        | StepState::Unknown
                        | StepState::Compensating
                        | StepState::CompensationFailed
                )
            })
            .map(StepState::as_str)
            .collect(),
        Status::CompensationFailed if !states().any(|s| s == StepState::CompensationFailed) => {
            vec!["no step COMPENSATION_FAILED"]
        }
        Status::CompensationFailed | Status::Running | Status::Compensating | Status::Suspended => {
            vec![]
        }
    };
    if bad.is_empty() {
        return vec![];
    }
    vec![format!(
        "the saga is {} but has steps {}",
        state.status.as_str(),
        bad.join(", ")
    )]
}

/// What is wrong with one step's `records` for its state `state`.
fn step_problems(
    state: StepState,
    reason: Option<&str>,
    current: Uuid,
    records: &[Record],
) -> Vec<String> {
    let (actions, earlier): (Vec<&Record>, Vec<&Record>) = records
        .iter()
        .filter(|r| r.kind == Kind::Action)
        .partition(|r| r.command_id == current);
    let undos: Vec<&Record> = records
        .iter()
        .filter(|r| r.kind == Kind::Compensation)
        .collect();
    let undone = undos.iter().any(|r| r.decided == Decided::Succeeded);
    // One command id per action generation: at most one record.
    let action = actions.first().copied();
    let mut problems = Vec::new();
    let mut want = |ok: bool, what: &str| {
        if !ok {
            problems.push(what.to_owned());
        }
    };
    let no_undo = "no compensation expected";
    // Earlier generations of the action were each refused: that is why an
    // operator retried it.
    want(
        earlier.iter().all(|r| r.decided == Decided::Refused),
        "earlier generations of the action REFUSED expected",
    );
    match state {
        StepState::Succeeded => {
            want(
                action.is_some_and(|a| a.decided == Decided::Succeeded),
                "action SUCCEEDED expected",
            );
            want(undos.is_empty(), no_undo);
        }
        StepState::Refused => {
            let reason = reason.unwrap_or_default();
            if reason.starts_with("invalid_command:") {
                want(action.is_none(), "nothing expected (rejected as invalid)");
            } else {
                want(
                    action.is_some_and(|a| a.decided == Decided::Refused && a.reason == reason),
                    &format!("action REFUSED ({reason}) expected"),
                );
            }
            want(undos.is_empty(), no_undo);
        }
        StepState::Compensated => want(undone, "a compensation SUCCEEDED expected"),
        StepState::CompensationFailed => want(
            !undone,
            "no compensation SUCCEEDED expected (its outcome is late or lost: retry the saga)",
        ),
        StepState::NotCompensated => want(undos.is_empty(), no_undo),
        StepState::NotStarted => want(records.is_empty(), "nothing expected (never sent)"),
        StepState::Pending | StepState::Unknown | StepState::Compensating => {
            want(false, "the step cannot be in flight in a finished saga")
        }
    }
    problems
}

#[cfg(test)]
#[path = "expect_tests.rs"]
mod tests;
