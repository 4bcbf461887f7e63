//! The persisted state of one saga instance, and the events and effects the
//! state machine speaks in. All plain data (serde), no I/O.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch. Time enters the machine as an argument.
pub type Millis = i64;

/// Where a saga is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Status {
    /// Running the actions forward.
    Running,
    /// A step failed: undoing the steps that may have acted, in reverse.
    Compensating,
    /// Terminal: every action succeeded.
    Completed,
    /// Terminal: failed, and every effect was undone.
    Compensated,
    /// Terminal until an operator acts: an undo was refused or exhausted its
    /// attempts. Paused and visible, never silently stuck.
    CompensationFailed,
}

impl Status {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Completed | Status::Compensated | Status::CompensationFailed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "RUNNING",
            Status::Compensating => "COMPENSATING",
            Status::Completed => "COMPLETED",
            Status::Compensated => "COMPENSATED",
            Status::CompensationFailed => "COMPENSATION_FAILED",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        [
            Status::Running,
            Status::Compensating,
            Status::Completed,
            Status::Compensated,
            Status::CompensationFailed,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// What is known about one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepState {
    NotStarted,
    /// Action sent, outcome awaited.
    Pending,
    Succeeded,
    /// The participant refused: the action took no effect.
    Refused,
    /// No outcome within the attempts: it may have acted.
    Unknown,
    /// Compensation sent, outcome awaited.
    Compensating,
    Compensated,
    /// It acted (or may have), but has no compensation to run.
    NotCompensated,
    /// Its compensation was refused or exhausted its attempts.
    CompensationFailed,
}

impl StepState {
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::NotStarted => "NOT_STARTED",
            StepState::Pending => "PENDING",
            StepState::Succeeded => "SUCCEEDED",
            StepState::Refused => "REFUSED",
            StepState::Unknown => "UNKNOWN",
            StepState::Compensating => "COMPENSATING",
            StepState::Compensated => "COMPENSATED",
            StepState::NotCompensated => "NOT_COMPENSATED",
            StepState::CompensationFailed => "COMPENSATION_FAILED",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub state: StepState,
    /// Sends of the action so far.
    pub attempts: u32,
    /// Sends of the compensation so far.
    pub compensation_attempts: u32,
    /// Why it was refused / is unknown / failed to compensate.
    pub reason: Option<String>,
}

/// One saga instance's state. Serialised into the `sagas.state` column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaState {
    pub status: Status,
    /// The step whose command is in flight (forward or compensating), or the
    /// step a terminal saga stopped at.
    pub cursor: usize,
    pub steps: Vec<StepRecord>,
    /// When the in-flight command's outcome is due; `None` when terminal.
    pub deadline: Option<Millis>,
    /// Why the saga is compensating, compensated or paused.
    pub reason: Option<String>,
    /// The step whose failure started compensation, or whose undo failed.
    pub failed_step: Option<usize>,
}

impl SagaState {
    /// A saga that has not started: apply [`Event::Start`] to run it.
    pub fn new(step_count: usize) -> Self {
        SagaState {
            status: Status::Running,
            cursor: 0,
            steps: vec![
                StepRecord {
                    state: StepState::NotStarted,
                    attempts: 0,
                    compensation_attempts: 0,
                    reason: None,
                };
                step_count
            ],
            deadline: None,
            reason: None,
            failed_step: None,
        }
    }

    /// The command that should be in flight now, if any: what a restarted
    /// orchestrator re-sends.
    pub fn in_flight(&self) -> Option<Command> {
        let step = self.steps.get(self.cursor)?;
        match (self.status, step.state) {
            (Status::Running, StepState::Pending) => Some(Command {
                step: self.cursor,
                kind: Kind::Action,
                attempt: step.attempts,
            }),
            (Status::Compensating, StepState::Compensating) => Some(Command {
                step: self.cursor,
                kind: Kind::Compensation,
                attempt: step.compensation_attempts,
            }),
            _ => None,
        }
    }
}

/// Action or compensation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    Action,
    Compensation,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Action => "action",
            Kind::Compensation => "compensation",
        }
    }
}

/// A participant's decision on one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Succeeded,
    Refused { reason: String },
}

/// What can happen to a saga.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// The saga was placed: send the first action.
    Start,
    /// An outcome event arrived from a participant.
    Outcome {
        step: usize,
        kind: Kind,
        outcome: Outcome,
    },
    /// A timer fired: if the in-flight command is overdue, re-send it or give
    /// up on it.
    Timeout,
}

/// A command to send; its id is derived from (saga, step, kind), so every
/// re-send carries the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub step: usize,
    pub kind: Kind,
    /// 1 for the first send.
    pub attempt: u32,
}

/// What the driver must do after persisting the new state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    SendCommand(Command),
    /// Wake the saga at this time (the deadline of the command just sent).
    ScheduleTimeout {
        at: Millis,
    },
    /// The saga reached a terminal state.
    Finish(Status),
}
