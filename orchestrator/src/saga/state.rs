//! The persisted state of one saga instance, and the events and effects the
//! state machine speaks in. All plain data (serde), no I/O.

use serde::{Deserialize, Serialize};

use super::definition::Definition;

/// Milliseconds since the Unix epoch. Time enters the machine as an argument.
pub type Millis = i64;

/// Where a saga is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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
    /// Not terminal, but going nowhere until an operator acts: the engine
    /// could not go on with it (its stored state cannot be read, a timer was
    /// rejected), or a forward-only step was refused (nothing after the
    /// pivot is undone). Nothing is in flight and no timer fires. `RetrySaga`
    /// resumes it where it stopped ([`SagaState::suspended_from`]) once the
    /// cause is fixed; `CancelSaga` turns it back.
    Suspended,
}

impl Status {
    /// Every status.
    pub const ALL: [Status; 6] = [
        Status::Running,
        Status::Compensating,
        Status::Completed,
        Status::Compensated,
        Status::CompensationFailed,
        Status::Suspended,
    ];

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
            Status::Suspended => "SUSPENDED",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
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
    /// Sends of the compensation so far, in the current generation.
    pub compensation_attempts: u32,
    /// Operator retries of the compensation so far ([`Event::Retry`]). Part
    /// of the compensation's command id: a participant stores the outcome of
    /// a command id for good (a refused undo stays refused), so a retry must
    /// be a new command. 0 (the default of states stored before it existed)
    /// keeps the original command id.
    #[serde(default)]
    pub compensation_generation: u32,
    /// Operator retries of a refused forward-only action so far: part of
    /// the action's command id, like [`Self::compensation_generation`].
    #[serde(default)]
    pub action_generation: u32,
    /// Why it was refused / is unknown / failed to compensate.
    pub reason: Option<String>,
    /// What its participant returned with the action's success (a JSON
    /// object), for later commands and its compensation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
}

impl StepRecord {
    /// A step that has not been sent.
    pub fn new() -> Self {
        StepRecord {
            state: StepState::NotStarted,
            attempts: 0,
            compensation_attempts: 0,
            compensation_generation: 0,
            action_generation: 0,
            reason: None,
            output: None,
        }
    }
}

impl Default for StepRecord {
    fn default() -> Self {
        StepRecord::new()
    }
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
    /// Why an operator cancelled the saga ([`Event::Cancel`]), if one did:
    /// the forward "failure" it compensates for.
    #[serde(default)]
    pub cancelled: Option<String>,
    /// The status a [`Status::Suspended`] saga resumes in (`Running` or
    /// `Compensating`); `None` otherwise.
    #[serde(default)]
    pub suspended_from: Option<Status>,
}

impl SagaState {
    /// A saga that has not started: apply [`Event::Start`] to run it.
    pub fn new(step_count: usize) -> Self {
        SagaState {
            status: Status::Running,
            cursor: 0,
            steps: vec![StepRecord::new(); step_count],
            deadline: None,
            reason: None,
            failed_step: None,
            cancelled: None,
            suspended_from: None,
        }
    }

    /// The commands that should be in flight now: what a restarted
    /// orchestrator re-sends. Going forward, the actions of the cursor's
    /// stage (its parallel group, or its own step) that await an outcome;
    /// going backward, the cursor's compensation.
    pub fn in_flight(&self, def: &Definition) -> Vec<Command> {
        match self.status {
            Status::Running => def
                .stage(self.cursor)
                .filter_map(|i| {
                    let step = self.steps.get(i)?;
                    (step.state == StepState::Pending).then_some(Command {
                        step: i,
                        kind: Kind::Action,
                        attempt: step.attempts,
                        generation: step.action_generation,
                    })
                })
                .collect(),
            Status::Compensating => self
                .steps
                .get(self.cursor)
                .filter(|step| step.state == StepState::Compensating)
                .map(|step| Command {
                    step: self.cursor,
                    kind: Kind::Compensation,
                    attempt: step.compensation_attempts,
                    generation: step.compensation_generation,
                })
                .into_iter()
                .collect(),
            Status::Completed
            | Status::Compensated
            | Status::CompensationFailed
            | Status::Suspended => Vec::new(),
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
    /// It acted (or undid). An action's `output` (a small JSON object: a
    /// payment id, a booking reference) is kept with the step.
    Succeeded {
        output: Option<serde_json::Value>,
    },
    Refused {
        reason: String,
    },
}

impl Outcome {
    /// A success with no output.
    pub const fn succeeded() -> Self {
        Outcome::Succeeded { output: None }
    }
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
    /// An operator resumes a `CompensationFailed` saga once the cause is
    /// fixed: the failed compensation is sent again as a new command (next
    /// generation) with a fresh attempt budget. On a `Suspended` saga: the
    /// in-flight command is sent again (same command) with a fresh budget;
    /// a refused forward-only action is sent as a new command (next
    /// generation), so the participant decides afresh.
    Retry,
    /// An operator stops a `Running` saga: the in-flight step's outcome is
    /// unknown, so it is compensated like a timed-out step, then the earlier
    /// steps. Refused once a step that cannot be undone may have acted (the
    /// pivot in flight or done, or a forward-only step after it). On a
    /// `Suspended` saga it resumes it backwards.
    Cancel { reason: String },
    /// The engine cannot go on with the saga (a timer it could not apply,
    /// say): park it as `Suspended` with the reason, for an operator.
    Suspend { reason: String },
}

/// A command to send; its id is derived from (saga, step, kind, generation),
/// so every re-send carries the same id and an operator retry a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub step: usize,
    pub kind: Kind,
    /// 1 for the first send (of this generation).
    pub attempt: u32,
    /// 0 for a command never retried by an operator;
    /// [`StepRecord::action_generation`] or
    /// [`StepRecord::compensation_generation`] otherwise.
    #[serde(default)]
    pub generation: u32,
}

impl Command {
    /// The name the command id is derived from (`Uuid::new_v5(saga_id,
    /// name)`): `"{step}:{kind}"`, with `":{generation}"` appended from the
    /// first retry on, so commands sent before retries existed keep their id.
    pub fn id_name(&self) -> String {
        match self.generation {
            0 => format!("{}:{}", self.step, self.kind.as_str()),
            g => format!("{}:{}:{g}", self.step, self.kind.as_str()),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_id_names_keep_generation_zero_as_before() {
        let cmd = |kind, generation| Command {
            step: 1,
            kind,
            attempt: 3,
            generation,
        };
        assert_eq!(cmd(Kind::Action, 0).id_name(), "1:action");
        assert_eq!(cmd(Kind::Compensation, 0).id_name(), "1:compensation");
        assert_eq!(cmd(Kind::Compensation, 2).id_name(), "1:compensation:2");
        assert_eq!(cmd(Kind::Action, 1).id_name(), "1:action:1");
    }

    #[test]
    fn states_stored_before_generations_and_cancels_still_load() {
        let stored = serde_json::json!({
            "status": "CompensationFailed",
            "cursor": 1,
            "steps": [
                {"state": "Succeeded", "attempts": 1, "compensation_attempts": 0, "reason": null},
                {"state": "CompensationFailed", "attempts": 1, "compensation_attempts": 10,
                 "reason": "no outcome before the deadline"}
            ],
            "deadline": null,
            "reason": "compensation of process_payment: no outcome after 10 attempts",
            "failed_step": 1
        });
        let state: SagaState = serde_json::from_value(stored).expect("an old state loads");
        assert_eq!(state.steps[1].compensation_generation, 0);
        assert_eq!(state.steps[1].action_generation, 0);
        assert_eq!(state.cancelled, None);
        assert_eq!(state.suspended_from, None);
        let round = serde_json::to_value(&state).expect("serialises");
        assert_eq!(serde_json::from_value::<SagaState>(round).ok(), Some(state));
    }
}
