//! The saga state machine: `apply(definition, state, event, now)`.
//!
//! Pure: no clock, no I/O. Every (status, event) pair is an explicit arm.
//! A duplicate or late event returns the state unchanged with no effects
//! (`Transition::note == None`); a pair that cannot happen is an [`Error`].
//!
//! Operator events ([`Event::Retry`], [`Event::Cancel`]) that make no sense
//! in the saga's status are errors too ([`Error::NotRetryable`],
//! [`Error::NotCancellable`], [`Error::PastPivot`]), which the API turns into
//! `FAILED_PRECONDITION`; a repeated cancel is a no-op.
//!
//! A `Suspended` saga ([`Event::Suspend`]) does nothing until an operator
//! resumes it: a timer is a no-op, an outcome it already knows is ignored,
//! and one that would change it is refused ([`Error::Suspended`]); its
//! in-flight command is sent again when it resumes, and the participant
//! answers it with its recorded outcome then.
//!
//! Time is milliseconds since the epoch, added with saturation and capped at
//! [`LATEST`], so no setting can overflow a deadline.

use super::definition::Definition;
use super::state::{
    Command, Effect, Event, Kind, Millis, Outcome, SagaState, Status, StepRecord, StepState,
};

/// The result of applying one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub state: SagaState,
    pub effects: Vec<Effect>,
    /// What happened, for the saga's history; `None` when nothing changed
    /// (a duplicate, late or stale event).
    pub note: Option<Note>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Machine-readable kind ("step_succeeded", "compensation_started", ...).
    pub kind: &'static str,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("[SF1001] step {step} does not exist in {saga_type} v{version}")]
    UnknownStep {
        step: usize,
        saga_type: String,
        version: u32,
    },
    #[error(
        "[SF1002] {kind} outcome for step {step} which was never sent (saga {status:?}, step {state:?})"
    )]
    NeverSent {
        step: usize,
        kind: &'static str,
        status: Status,
        state: StepState,
    },
    #[error(
        "[SF1003] {kind} outcome {outcome} for step {step} contradicts its recorded state {state:?}"
    )]
    Contradiction {
        step: usize,
        kind: &'static str,
        outcome: &'static str,
        state: StepState,
    },
    #[error("[SF1004] the state has {found} steps but {saga_type} v{version} defines {expected}")]
    ShapeMismatch {
        found: usize,
        expected: usize,
        saga_type: String,
        version: u32,
    },
    #[error("[SF1004] the state's cursor {cursor} is past its {steps} steps")]
    CursorOutOfRange { cursor: usize, steps: usize },
    #[error(
        "[SF1005] saga is {}; only COMPENSATION_FAILED and SUSPENDED sagas can be retried",
        status.as_str()
    )]
    NotRetryable { status: Status },
    #[error(
        "[SF1006] saga is {}; only RUNNING and SUSPENDED sagas can be cancelled",
        status.as_str()
    )]
    NotCancellable { status: Status },
    #[error(
        "[SF1007] saga is past its pivot: {name} (step {step}) may have acted and cannot be undone"
    )]
    PastPivot { step: usize, name: String },
    #[error(
        "[SF1008] saga is suspended: the {kind} outcome for step {step} is not applied until an operator resumes it (its command is sent again then)"
    )]
    Suspended { step: usize, kind: &'static str },
}

/// Apply `event` to `state` at time `now`.
pub fn apply(
    def: &Definition,
    state: &SagaState,
    event: &Event,
    now: Millis,
) -> Result<Transition, Error> {
    if state.steps.len() != def.steps.len() {
        return Err(Error::ShapeMismatch {
            found: state.steps.len(),
            expected: def.steps.len(),
            saga_type: def.saga_type.clone(),
            version: def.version,
        });
    }
    if state.cursor >= def.steps.len() {
        return Err(Error::CursorOutOfRange {
            cursor: state.cursor,
            steps: def.steps.len(),
        });
    }
    let mut m = Machine {
        def,
        s: state.clone(),
        effects: Vec::new(),
        now,
    };
    let note = match event {
        Event::Start => m.start(),
        Event::Timeout => m.timeout(),
        Event::Retry => m.retry()?,
        Event::Cancel { reason } => m.cancel(reason)?,
        Event::Suspend { reason } => m.suspend(reason),
        Event::Outcome {
            step,
            kind,
            outcome,
        } => {
            if *step >= def.steps.len() {
                return Err(Error::UnknownStep {
                    step: *step,
                    saga_type: def.saga_type.clone(),
                    version: def.version,
                });
            }
            if state.status == Status::Suspended {
                // Judge it as the saga it was: what it already knows is a
                // no-op, an impossible outcome is the usual error, news waits.
                let mut unsuspended = state.clone();
                unsuspended.status = m.resumed_status();
                let judged = apply(def, &unsuspended, event, now).map_err(|e| match e {
                    Error::NeverSent {
                        step, kind, state, ..
                    } => Error::NeverSent {
                        step,
                        kind,
                        status: Status::Suspended,
                        state,
                    },
                    other => other,
                })?;
                return match judged {
                    Transition { note: None, .. } => Ok(Transition {
                        state: state.clone(),
                        effects: Vec::new(),
                        note: None,
                    }),
                    Transition { note: Some(_), .. } => Err(Error::Suspended {
                        step: *step,
                        kind: kind.as_str(),
                    }),
                };
            }
            match (kind, outcome) {
                (Kind::Action, Outcome::Succeeded { output }) => {
                    m.action_succeeded(*step, output)?
                }
                (Kind::Action, Outcome::Refused { reason }) => m.action_refused(*step, reason)?,
                (Kind::Compensation, Outcome::Succeeded { .. }) => m.compensated(*step)?,
                (Kind::Compensation, Outcome::Refused { reason }) => {
                    m.compensation_refused(*step, reason)?
                }
            }
        }
    };
    if note.is_none() {
        // Nothing changed: hand back the input untouched.
        return Ok(Transition {
            state: state.clone(),
            effects: Vec::new(),
            note: None,
        });
    }
    Ok(Transition {
        state: m.s,
        effects: m.effects,
        note,
    })
}

struct Machine<'a> {
    def: &'a Definition,
    s: SagaState,
    effects: Vec<Effect>,
    now: Millis,
}

fn note(kind: &'static str, detail: String) -> Option<Note> {
    Some(Note { kind, detail })
}

impl Machine<'_> {
    fn name(&self, step: usize) -> &str {
        &self.def.steps[step].name
    }

    fn never_sent(&self, step: usize, kind: Kind) -> Error {
        Error::NeverSent {
            step,
            kind: kind.as_str(),
            status: self.s.status,
            state: self.s.steps[step].state,
        }
    }

    fn contradiction(&self, step: usize, kind: Kind, outcome: &'static str) -> Error {
        Error::Contradiction {
            step,
            kind: kind.as_str(),
            outcome,
            state: self.s.steps[step].state,
        }
    }

    fn suspended(&self, step: usize, kind: Kind) -> Error {
        Error::Suspended {
            step,
            kind: kind.as_str(),
        }
    }

    /// The status a suspended saga resumes in: the one it was suspended
    /// from, else what its in-flight step says.
    fn resumed_status(&self) -> Status {
        match self.s.suspended_from {
            Some(from @ (Status::Running | Status::Compensating)) => from,
            Some(
                Status::Completed
                | Status::Compensated
                | Status::CompensationFailed
                | Status::Suspended,
            )
            | None => match self.s.steps[self.s.cursor].state {
                StepState::Compensating => Status::Compensating,
                StepState::NotStarted
                | StepState::Pending
                | StepState::Succeeded
                | StepState::Refused
                | StepState::Unknown
                | StepState::Compensated
                | StepState::NotCompensated
                | StepState::CompensationFailed => Status::Running,
            },
        }
    }

    fn refused_why(&self, step: usize, reason: &str) -> String {
        format!("{} refused: {reason}", self.name(step))
    }

    fn unknown_why(&self, step: usize, attempts: u32) -> String {
        format!(
            "{}: no outcome after {attempts} attempts (outcome unknown)",
            self.name(step)
        )
    }

    fn cancelled_why(&self, step: usize, reason: &str) -> String {
        format!(
            "cancelled by an operator while {} was in flight: {reason}",
            self.name(step)
        )
    }

    /// The forward failure that started compensation, rebuilt from the
    /// steps: nothing runs forward after a failure (or a cancel), so it is
    /// the last step whose action was sent.
    ///
    /// In a parallel group, the failure is its refused member, else the
    /// one that ran out of attempts; a cancel names the group's first step.
    fn forward_failure(&self) -> Option<(usize, String)> {
        let last = self.s.steps.iter().rposition(|r| r.attempts > 0)?;
        let stage = self.def.stage(last);
        if let Some(reason) = &self.s.cancelled {
            return Some((stage.start, self.cancelled_why(stage.start, reason)));
        }
        let refused = stage
            .clone()
            .find(|&i| self.s.steps[i].state == StepState::Refused);
        if let Some(step) = refused {
            let reason = self.s.steps[step].reason.as_deref().unwrap_or_default();
            return Some((step, self.refused_why(step, reason)));
        }
        let step = stage
            .clone()
            .find(|&i| self.s.steps[i].attempts >= self.def.steps[i].policy.max_attempts)
            .unwrap_or(last);
        Some((step, self.unknown_why(step, self.s.steps[step].attempts)))
    }

    /// The members of the cursor's stage (its parallel group, or itself).
    fn stage(&self) -> std::ops::Range<usize> {
        self.def.stage(self.s.cursor)
    }

    /// The other members of the cursor's stage still in flight become
    /// unknown: they may act, so they are compensated with the rest.
    fn siblings_unknown(&mut self, except: usize, why: &str) {
        for i in self.stage() {
            let rec = &mut self.s.steps[i];
            if i != except && rec.state == StepState::Pending {
                rec.state = StepState::Unknown;
                rec.reason = Some(why.to_owned());
            }
        }
    }

    /// No longer paused: compensating again, reporting again why.
    fn unpause(&mut self) {
        self.s.status = Status::Compensating;
        if let Some((failed, why)) = self.forward_failure() {
            self.s.failed_step = Some(failed);
            self.s.reason = Some(why);
        }
    }

    fn start(&mut self) -> Option<Note> {
        match (self.s.status, self.s.steps[0].state) {
            (Status::Running, StepState::NotStarted) => {
                let sent = self.send_stage(0);
                note("started", format!("sent {sent}"))
            }
            // Already started, or finished: a repeated Start changes nothing.
            (Status::Running, _)
            | (Status::Compensating, _)
            | (Status::Completed, _)
            | (Status::Compensated, _)
            | (Status::CompensationFailed, _)
            | (Status::Suspended, _) => None,
        }
    }

    fn send_action(&mut self, step: usize, attempt: u32) {
        self.send_action_within(step, attempt, self.def.steps[step].policy.deadline);
    }

    fn send_action_within(&mut self, step: usize, attempt: u32, wait: std::time::Duration) {
        self.dispatch(&[(step, attempt)], wait);
    }

    /// Send the actions `sends` (step, attempt) of one stage at once, with
    /// one timer: `wait` after now.
    fn dispatch(&mut self, sends: &[(usize, u32)], wait: std::time::Duration) {
        let deadline = after(self.now, wait);
        for &(step, attempt) in sends {
            let rec = &mut self.s.steps[step];
            rec.state = StepState::Pending;
            rec.attempts = attempt;
            let generation = rec.action_generation;
            self.effects.push(Effect::SendCommand(Command {
                step,
                kind: Kind::Action,
                attempt,
                generation,
            }));
        }
        if let Some(&(first, _)) = sends.first() {
            self.s.cursor = self.def.stage(first).start;
        }
        self.s.deadline = Some(deadline);
        self.effects.push(Effect::ScheduleTimeout { at: deadline });
    }

    /// Start the stage at `start`: send every action of it (a parallel
    /// group's at once) as attempt 1; the timer waits for the longest of
    /// their deadlines. Their names, for the history.
    fn send_stage(&mut self, start: usize) -> String {
        let members: Vec<usize> = self.def.stage(start).collect();
        self.send_members(&members, |_| 1)
    }

    /// Send the actions of `members` (of one stage), each as attempt
    /// `attempt(step)`; their names.
    fn send_members(&mut self, members: &[usize], attempt: impl Fn(&StepRecord) -> u32) -> String {
        let wait = members
            .iter()
            .map(|&i| self.def.steps[i].policy.deadline)
            .max()
            .unwrap_or_default();
        let sends: Vec<(usize, u32)> = members
            .iter()
            .map(|&i| (i, attempt(&self.s.steps[i])))
            .collect();
        self.dispatch(&sends, wait);
        members
            .iter()
            .map(|&i| self.name(i))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn send_compensation(&mut self, step: usize, attempt: u32) {
        let deadline = after(self.now, self.def.steps[step].compensation_policy.deadline);
        let rec = &mut self.s.steps[step];
        rec.state = StepState::Compensating;
        rec.compensation_attempts = attempt;
        let generation = rec.compensation_generation;
        self.s.cursor = step;
        self.s.deadline = Some(deadline);
        self.effects.push(Effect::SendCommand(Command {
            step,
            kind: Kind::Compensation,
            attempt,
            generation,
        }));
        self.effects.push(Effect::ScheduleTimeout { at: deadline });
    }

    fn finish(&mut self, status: Status) {
        self.s.status = status;
        self.s.deadline = None;
        self.effects.push(Effect::Finish(status));
    }

    /// Turn to compensation: undo, from `from` downwards, every step that may
    /// have acted.
    fn begin_compensation(&mut self, failed: usize, reason: String, from: Option<usize>) {
        self.s.status = Status::Compensating;
        self.s.failed_step = Some(failed);
        self.s.reason = Some(reason);
        self.compensate_next(from);
    }

    /// Send the compensation of the highest step at or below `from` that may
    /// have acted; finish COMPENSATED when there is none.
    fn compensate_next(&mut self, from: Option<usize>) {
        let mut next = from;
        while let Some(i) = next {
            if may_have_acted(self.s.steps[i].state) && self.undo(i) {
                return;
            }
            next = i.checked_sub(1);
        }
        self.s.cursor = 0;
        self.finish(Status::Compensated);
    }

    /// Undo step `i`, which may have acted: send its compensation (`true`),
    /// or mark it not compensated when it has none (`false`).
    fn undo(&mut self, i: usize) -> bool {
        if self.def.steps[i].compensation.is_some() {
            self.send_compensation(i, 1);
            return true;
        }
        self.s.steps[i].state = StepState::NotCompensated;
        false
    }

    /// The action of the running step succeeded: send the next one, or
    /// complete.
    fn advance(&mut self, step: usize, output: &Option<serde_json::Value>) -> Option<Note> {
        self.s.steps[step].state = StepState::Succeeded;
        self.s.steps[step].output = output.clone();
        // A running saga's reason only ever says a step is overdue.
        self.s.reason = None;
        let stage = self.stage();
        let waiting: Vec<&str> = stage
            .clone()
            .filter(|&i| self.s.steps[i].state != StepState::Succeeded)
            .map(|i| self.name(i))
            .collect();
        if !waiting.is_empty() {
            // A parallel group goes on when all its members have succeeded.
            return note(
                "step_succeeded",
                format!(
                    "{} succeeded; waiting for {}",
                    self.name(step),
                    waiting.join(", ")
                ),
            );
        }
        if stage.end < self.def.steps.len() {
            let sent = self.send_stage(stage.end);
            note(
                "step_succeeded",
                format!("{} succeeded; sent {sent}", self.name(step)),
            )
        } else {
            self.finish(Status::Completed);
            note(
                "completed",
                format!("{} succeeded; saga completed", self.name(step)),
            )
        }
    }

    fn action_succeeded(
        &mut self,
        step: usize,
        output: &Option<serde_json::Value>,
    ) -> Result<Option<Note>, Error> {
        let state = self.s.steps[step].state;
        Ok(match (self.s.status, state) {
            // Judged by `apply` as the saga it was; not reached.
            (Status::Suspended, _) => return Err(self.suspended(step, Kind::Action)),
            (Status::Running, StepState::Pending) if self.stage().contains(&step) => {
                self.advance(step, output)
            }
            // A forward-only step retried by an operator, whose recorded
            // refusal was a repeat of an earlier command's (events carry no
            // generation): only the newest command can succeed. The saga
            // was suspended by that refusal, so this is news that waits for
            // the resume.
            (Status::Running, StepState::Refused)
                if step == self.s.cursor && self.s.steps[step].action_generation > 0 =>
            {
                self.s.failed_step = None;
                self.s.steps[step].reason = None;
                self.advance(step, output)
            }
            // Duplicate of an outcome already applied.
            (_, StepState::Succeeded) => None,
            // Late success of a step whose outcome was unknown: it did act,
            // and it is (or will be) compensated like any success. (Paused,
            // a parallel group's member below the failed undo may still be
            // unknown: it is recorded for when compensation resumes.)
            (Status::Compensating | Status::CompensationFailed, StepState::Unknown) => {
                self.s.steps[step].state = StepState::Succeeded;
                // Its compensation may need what it returned.
                self.s.steps[step].output = output.clone();
                note(
                    "late_outcome",
                    format!(
                        "{} turned out to have succeeded; it is compensated",
                        self.name(step)
                    ),
                )
            }
            // Late success of a step already being undone, or undone: the
            // compensation covers it.
            (
                Status::Compensating,
                StepState::Compensating
                | StepState::Compensated
                | StepState::NotCompensated
                | StepState::CompensationFailed,
            )
            | (
                Status::Compensated,
                StepState::Unknown
                | StepState::Compensating
                | StepState::Compensated
                | StepState::NotCompensated
                | StepState::CompensationFailed,
            )
            | (
                Status::CompensationFailed,
                StepState::Compensating
                | StepState::Compensated
                | StepState::NotCompensated
                | StepState::CompensationFailed,
            ) => None,
            (Status::Running, StepState::Pending) => {
                return Err(self.never_sent(step, Kind::Action));
            }
            (_, StepState::NotStarted) => return Err(self.never_sent(step, Kind::Action)),
            (_, StepState::Refused) => {
                return Err(self.contradiction(step, Kind::Action, "succeeded"));
            }
            (
                Status::Running | Status::Completed,
                StepState::Unknown
                | StepState::Compensating
                | StepState::Compensated
                | StepState::NotCompensated
                | StepState::CompensationFailed,
            )
            | (
                Status::Completed
                | Status::Compensating
                | Status::Compensated
                | Status::CompensationFailed,
                StepState::Pending,
            ) => {
                return Err(self.contradiction(step, Kind::Action, "succeeded"));
            }
        })
    }

    fn action_refused(&mut self, step: usize, reason: &str) -> Result<Option<Note>, Error> {
        let state = self.s.steps[step].state;
        Ok(match (self.s.status, state) {
            // Judged by `apply` as the saga it was; not reached.
            (Status::Suspended, _) => return Err(self.suspended(step, Kind::Action)),
            (Status::Running, StepState::Pending) if self.stage().contains(&step) => {
                let rec = &mut self.s.steps[step];
                rec.state = StepState::Refused;
                rec.reason = Some(reason.to_owned());
                if self.def.steps[step].forward_only {
                    // Past the point of no return: nothing is undone. The
                    // saga waits for an operator to fix the cause and retry.
                    let why = format!(
                        "suspended: {}; it is forward-only (after the pivot), so nothing is undone: fix the cause and retry the saga",
                        self.refused_why(step, reason)
                    );
                    self.s.suspended_from = Some(Status::Running);
                    self.s.status = Status::Suspended;
                    self.s.deadline = None;
                    self.s.failed_step = Some(step);
                    self.s.reason = Some(why.clone());
                    return Ok(note("suspended", why));
                }
                let why = self.refused_why(step, reason);
                // Its siblings in a parallel group may be acting: they are
                // compensated with the rest, from the group's end down.
                self.siblings_unknown(
                    step,
                    &format!(
                        "in flight when {} was refused (outcome unknown)",
                        self.name(step)
                    ),
                );
                let end = self.stage().end;
                self.begin_compensation(step, why.clone(), end.checked_sub(1));
                note("step_refused", why)
            }
            (_, StepState::Refused) => None,
            // A late refusal of an unknown-outcome step: it did not act, so
            // there is nothing of it to undo (recorded while paused too).
            (Status::Compensating | Status::CompensationFailed, StepState::Unknown) => {
                let rec = &mut self.s.steps[step];
                rec.state = StepState::Refused;
                rec.reason = Some(reason.to_owned());
                note(
                    "late_outcome",
                    format!("{} turned out to be refused: {reason}", self.name(step)),
                )
            }
            // Refused after its compensation was sent: the participant saw
            // the undo first (no "undo, then do"); nothing more to do.
            (
                Status::Compensating | Status::Compensated | Status::CompensationFailed,
                StepState::Compensating
                | StepState::Compensated
                | StepState::NotCompensated
                | StepState::CompensationFailed,
            )
            | (Status::Compensated, StepState::Unknown) => None,
            (Status::Running, StepState::Pending) => {
                return Err(self.never_sent(step, Kind::Action));
            }
            (_, StepState::NotStarted) => return Err(self.never_sent(step, Kind::Action)),
            // A repeat of the refusal an operator retried past: the step
            // succeeded as a new command (events carry no generation).
            (_, StepState::Succeeded) if self.s.steps[step].action_generation > 0 => None,
            (_, StepState::Succeeded) => {
                return Err(self.contradiction(step, Kind::Action, "refused"));
            }
            (
                Status::Running | Status::Completed,
                StepState::Unknown
                | StepState::Compensating
                | StepState::Compensated
                | StepState::NotCompensated
                | StepState::CompensationFailed,
            )
            | (
                Status::Completed
                | Status::Compensating
                | Status::Compensated
                | Status::CompensationFailed,
                StepState::Pending,
            ) => {
                return Err(self.contradiction(step, Kind::Action, "refused"));
            }
        })
    }

    fn compensated(&mut self, step: usize) -> Result<Option<Note>, Error> {
        let state = self.s.steps[step].state;
        Ok(match (self.s.status, state) {
            // Judged by `apply` as the saga it was; not reached.
            (Status::Suspended, _) => return Err(self.suspended(step, Kind::Compensation)),
            (Status::Compensating, StepState::Compensating) if step == self.s.cursor => {
                self.s.steps[step].state = StepState::Compensated;
                self.compensate_next(step.checked_sub(1));
                note(
                    "step_compensated",
                    format!("{} compensated", self.name(step)),
                )
            }
            // The undo a paused saga gave up on did happen after all: carry on.
            (Status::CompensationFailed, StepState::CompensationFailed)
                if step == self.s.cursor =>
            {
                self.s.steps[step].state = StepState::Compensated;
                self.unpause();
                self.compensate_next(step.checked_sub(1));
                note(
                    "step_compensated",
                    format!("{} compensated late; compensation resumed", self.name(step)),
                )
            }
            (_, StepState::Compensated) => None,
            (Status::Compensating, StepState::Compensating) => {
                return Err(self.never_sent(step, Kind::Compensation));
            }
            (Status::CompensationFailed, StepState::CompensationFailed) => {
                return Err(self.never_sent(step, Kind::Compensation));
            }
            (
                _,
                StepState::NotStarted
                | StepState::Pending
                | StepState::Succeeded
                | StepState::Refused
                | StepState::Unknown
                | StepState::NotCompensated,
            ) => {
                return Err(self.never_sent(step, Kind::Compensation));
            }
            (
                Status::Running | Status::Completed | Status::Compensated,
                StepState::Compensating | StepState::CompensationFailed,
            )
            | (Status::Compensating, StepState::CompensationFailed)
            | (Status::CompensationFailed, StepState::Compensating) => {
                return Err(self.contradiction(step, Kind::Compensation, "succeeded"));
            }
        })
    }

    fn compensation_refused(&mut self, step: usize, reason: &str) -> Result<Option<Note>, Error> {
        let state = self.s.steps[step].state;
        Ok(match (self.s.status, state) {
            // Judged by `apply` as the saga it was; not reached.
            (Status::Suspended, _) => return Err(self.suspended(step, Kind::Compensation)),
            // A participant that refuses an undo will refuse it again: pause
            // for an operator rather than retry.
            (Status::Compensating, StepState::Compensating) if step == self.s.cursor => {
                let why = format!("compensation of {} refused: {reason}", self.name(step));
                let rec = &mut self.s.steps[step];
                rec.state = StepState::CompensationFailed;
                rec.reason = Some(reason.to_owned());
                self.s.failed_step = Some(step);
                self.s.reason = Some(why.clone());
                self.finish(Status::CompensationFailed);
                note("compensation_failed", why)
            }
            (Status::CompensationFailed, StepState::CompensationFailed) => None,
            (Status::Compensating, StepState::Compensating) => {
                return Err(self.never_sent(step, Kind::Compensation));
            }
            (
                _,
                StepState::NotStarted
                | StepState::Pending
                | StepState::Succeeded
                | StepState::Refused
                | StepState::Unknown
                | StepState::NotCompensated,
            ) => {
                return Err(self.never_sent(step, Kind::Compensation));
            }
            // The answer to the undo of an earlier generation, arriving after
            // an operator's retry of it succeeded: stale.
            (_, StepState::Compensated) if self.s.steps[step].compensation_generation > 0 => None,
            (_, StepState::Compensated)
            | (
                Status::Running | Status::Completed | Status::Compensated,
                StepState::Compensating | StepState::CompensationFailed,
            )
            | (Status::Compensating, StepState::CompensationFailed)
            | (Status::CompensationFailed, StepState::Compensating) => {
                return Err(self.contradiction(step, Kind::Compensation, "refused"));
            }
        })
    }

    /// An operator retries a paused saga: the failed undo is sent again as a
    /// new command (the next generation, so a participant that stored a
    /// refusal under the old command id decides afresh) with a fresh attempt
    /// budget, and compensation carries on from there.
    fn retry(&mut self) -> Result<Option<Note>, Error> {
        let cursor = self.s.cursor;
        match (self.s.status, self.s.steps[cursor].state) {
            // The paused undo (any state whose undo is unconfirmed; only
            // `CompensationFailed` is reachable).
            (
                Status::CompensationFailed,
                StepState::CompensationFailed
                | StepState::Compensating
                | StepState::Pending
                | StepState::Succeeded
                | StepState::Unknown,
            ) => {
                let rec = &mut self.s.steps[cursor];
                rec.compensation_generation += 1;
                let generation = rec.compensation_generation;
                self.unpause();
                if self.undo(cursor) {
                    return Ok(note(
                        "retry_requested",
                        format!(
                            "compensation of {} sent again (retry {generation})",
                            self.name(cursor)
                        ),
                    ));
                }
                self.compensate_next(cursor.checked_sub(1));
                Ok(note(
                    "retry_requested",
                    format!(
                        "{} has no compensation; compensation resumed below it",
                        self.name(cursor)
                    ),
                ))
            }
            // Nothing of the cursor's step is left to undo (not reachable):
            // carry on below it.
            (
                Status::CompensationFailed,
                StepState::NotStarted
                | StepState::Refused
                | StepState::Compensated
                | StepState::NotCompensated,
            ) => {
                self.unpause();
                self.compensate_next(cursor.checked_sub(1));
                Ok(note(
                    "retry_requested",
                    format!("compensation resumed below {}", self.name(cursor)),
                ))
            }
            (Status::Suspended, _) => {
                self.resume();
                Ok(note(
                    "resumed",
                    format!(
                        "resumed: {} of {} sent again",
                        match self.s.status {
                            Status::Compensating => "the compensation",
                            _ => "the action",
                        },
                        self.name(self.s.cursor)
                    ),
                ))
            }
            (
                Status::Running | Status::Compensating | Status::Completed | Status::Compensated,
                _,
            ) => Err(Error::NotRetryable {
                status: self.s.status,
            }),
        }
    }

    /// Take a suspended saga back where it stopped. Its in-flight command is
    /// sent again, the same command (a participant that acted answers with
    /// its recorded outcome), with a fresh attempt budget.
    fn resume(&mut self) {
        let status = self.resumed_status();
        self.s.suspended_from = None;
        let cursor = self.s.cursor;
        match status {
            Status::Compensating => {
                self.unpause();
                match self.s.steps[cursor].state {
                    StepState::Compensating => self.send_compensation(cursor, 1),
                    StepState::NotStarted
                    | StepState::Pending
                    | StepState::Succeeded
                    | StepState::Refused
                    | StepState::Unknown
                    | StepState::Compensated
                    | StepState::NotCompensated
                    | StepState::CompensationFailed => self.compensate_next(Some(cursor)),
                }
            }
            Status::Running
            | Status::Completed
            | Status::Compensated
            | Status::CompensationFailed
            | Status::Suspended => {
                self.s.status = Status::Running;
                self.s.reason = None;
                self.s.failed_step = None;
                // The stage's actions that have not succeeded (a parallel
                // group's), else the cursor's.
                let mut members: Vec<usize> = self
                    .stage()
                    .filter(|&i| self.s.steps[i].state != StepState::Succeeded)
                    .collect();
                if members.is_empty() {
                    members = vec![cursor];
                }
                for &i in &members {
                    let rec = &mut self.s.steps[i];
                    if rec.state == StepState::Refused {
                        // A refused forward-only step: the participant keeps
                        // the refusal under the old command id, so a new
                        // command.
                        rec.action_generation += 1;
                        rec.reason = None;
                    }
                }
                self.send_members(&members, |_| 1);
            }
        }
    }

    /// The engine cannot go on with a saga in flight: park it, with nothing
    /// in flight and no timer, until an operator resumes or cancels it.
    fn suspend(&mut self, reason: &str) -> Option<Note> {
        match self.s.status {
            Status::Running | Status::Compensating => {
                let why = format!("suspended: {reason}");
                self.s.suspended_from = Some(self.s.status);
                self.s.status = Status::Suspended;
                self.s.deadline = None;
                self.s.reason = Some(why.clone());
                note("suspended", why)
            }
            // Finished or paused: nothing in flight to stop. Suspended: a
            // repeat.
            Status::Completed
            | Status::Compensated
            | Status::CompensationFailed
            | Status::Suspended => None,
        }
    }

    /// An operator cancels the saga: stop going forward and compensate. The
    /// in-flight step's outcome is unknown, so it is treated like a step that
    /// timed out: its own undo runs first (a no-op at a participant that
    /// never acted, which then refuses the late action), then the earlier
    /// steps' in reverse. Late outcomes of it are the usual late-outcome arms.
    fn cancel(&mut self, reason: &str) -> Result<Option<Note>, Error> {
        let cursor = self.s.cursor;
        let state = self.s.steps[cursor].state;
        // The highest step at or below the cursor that may have acted and
        // that nothing could undo: the pivot, or a forward-only step.
        let past_pivot = (0..=cursor).rev().find(|&i| {
            self.def.steps[i].compensation.is_none() && may_have_acted(self.s.steps[i].state)
        });
        if self.s.status == Status::Running
            && let Some(step) = past_pivot
        {
            return Err(Error::PastPivot {
                step,
                name: self.name(step).to_owned(),
            });
        }
        match (self.s.status, state) {
            (Status::Running, StepState::Pending) => {
                let rec = &mut self.s.steps[cursor];
                rec.state = StepState::Unknown;
                rec.reason = Some("cancelled while in flight (outcome unknown)".to_owned());
                Ok(self.begin_cancel(cursor, reason))
            }
            // Not started (before `Start`), or not reachable while running:
            // undo whatever may have acted, from the cursor down.
            (
                Status::Running,
                StepState::NotStarted
                | StepState::Succeeded
                | StepState::Unknown
                | StepState::Refused
                | StepState::Compensating
                | StepState::Compensated
                | StepState::NotCompensated
                | StepState::CompensationFailed,
            ) => Ok(self.begin_cancel(cursor, reason)),
            // Already going backward: cancelling again changes nothing.
            (Status::Compensating, _) => Ok(None),
            // Suspended going forward: turn back from where it stopped.
            // Suspended going backward: carry on backward.
            (Status::Suspended, _) => match self.resumed_status() {
                Status::Compensating => {
                    self.resume();
                    Ok(note(
                        "cancel_requested",
                        format!(
                            "cancelled by an operator while suspended ({reason}); compensation resumed"
                        ),
                    ))
                }
                Status::Running
                | Status::Completed
                | Status::Compensated
                | Status::CompensationFailed
                | Status::Suspended => {
                    self.s.suspended_from = None;
                    self.s.status = Status::Running;
                    self.cancel(reason)
                }
            },
            // A repeat of the cancel that ended it.
            (Status::Compensated | Status::CompensationFailed, _) if self.s.cancelled.is_some() => {
                Ok(None)
            }
            (Status::Completed | Status::Compensated | Status::CompensationFailed, _) => {
                Err(Error::NotCancellable {
                    status: self.s.status,
                })
            }
        }
    }

    fn begin_cancel(&mut self, cursor: usize, reason: &str) -> Option<Note> {
        let why = self.cancelled_why(cursor, reason);
        self.s.cancelled = Some(reason.to_owned());
        // A parallel group's members in flight, like the cursor's step.
        self.siblings_unknown(cursor, "cancelled while in flight (outcome unknown)");
        let end = self.stage().end;
        self.begin_compensation(cursor, why.clone(), end.checked_sub(1));
        note("cancel_requested", why)
    }

    /// A step without compensation ran out of attempts. Its outcome is
    /// unknown and nothing could undo it, so turning back is not safe: had it
    /// acted (its outcome only late), undoing the steps before it would leave
    /// its effect standing on top of undone ones (an approved order whose
    /// payment was refunded). It is re-sent instead, as the same command (a
    /// participant that did act answers with its recorded outcome), with a
    /// deadline that doubles up to [`OVERDUE_MAX_FACTOR`] times the policy's,
    /// until its outcome is known. The saga stays RUNNING with the reason
    /// shown, so it is visible rather than silently stuck.
    fn overdue(&mut self, cursor: usize, attempts: u32) -> Option<Note> {
        let policy = &self.def.steps[cursor].policy;
        let over = attempts.saturating_sub(policy.max_attempts).min(5);
        let factor = (1u32 << (over + 1)).min(OVERDUE_MAX_FACTOR);
        let wait = policy.deadline.saturating_mul(factor);
        let why = format!(
            "{}: no outcome after {attempts} attempts; it cannot be undone, so it is re-sent until its outcome is known",
            self.name(cursor)
        );
        self.s.reason = Some(why.clone());
        self.send_action_within(cursor, attempts + 1, wait);
        note("step_overdue", why)
    }

    /// A parallel group's timer: every member still waiting is re-sent;
    /// a member out of attempts is unknown, which fails the group like a
    /// refusal (its members in flight compensated with the rest).
    fn group_timeout(&mut self) -> Option<Note> {
        let waiting: Vec<usize> = self
            .stage()
            .filter(|&i| self.s.steps[i].state != StepState::Succeeded)
            .collect();
        let exhausted = waiting
            .iter()
            .copied()
            .find(|&i| self.s.steps[i].attempts >= self.def.steps[i].policy.max_attempts);
        if let Some(step) = exhausted {
            let why = self.unknown_why(step, self.s.steps[step].attempts);
            let rec = &mut self.s.steps[step];
            rec.state = StepState::Unknown;
            rec.reason = Some("no outcome before the deadline".to_owned());
            self.siblings_unknown(
                step,
                &format!(
                    "in flight when {} got no outcome (outcome unknown)",
                    self.name(step)
                ),
            );
            let end = self.stage().end;
            self.begin_compensation(step, why.clone(), end.checked_sub(1));
            return note("step_timed_out", why);
        }
        if waiting.is_empty() {
            // Nothing to wait for (not reachable): the stage is done.
            return None;
        }
        let sent = self.send_members(&waiting, |r| r.attempts + 1);
        note("resent", format!("{sent}: no outcome yet, sent again"))
    }

    fn timeout(&mut self) -> Option<Note> {
        let overdue = matches!(self.s.deadline, Some(d) if self.now >= d);
        let cursor = self.s.cursor;
        match (self.s.status, overdue) {
            (Status::Running, true) if self.stage().len() > 1 => self.group_timeout(),
            (Status::Running, true) => {
                let rec = &self.s.steps[cursor];
                let attempts = rec.attempts;
                if attempts < self.def.steps[cursor].policy.max_attempts {
                    self.send_action(cursor, attempts + 1);
                    return note(
                        "resent",
                        format!(
                            "{}: no outcome yet, attempt {}",
                            self.name(cursor),
                            attempts + 1
                        ),
                    );
                }
                if self.def.steps[cursor].compensation.is_none() {
                    return self.overdue(cursor, attempts);
                }
                let why = self.unknown_why(cursor, attempts);
                let rec = &mut self.s.steps[cursor];
                rec.state = StepState::Unknown;
                rec.reason = Some("no outcome before the deadline".to_owned());
                self.begin_compensation(cursor, why.clone(), Some(cursor));
                note("step_timed_out", why)
            }
            (Status::Compensating, true) => {
                let attempts = self.s.steps[cursor].compensation_attempts;
                if attempts < self.def.steps[cursor].compensation_policy.max_attempts {
                    self.send_compensation(cursor, attempts + 1);
                    return note(
                        "resent",
                        format!(
                            "compensation of {}: no outcome yet, attempt {}",
                            self.name(cursor),
                            attempts + 1
                        ),
                    );
                }
                let why = format!(
                    "compensation of {}: no outcome after {attempts} attempts",
                    self.name(cursor)
                );
                let rec = &mut self.s.steps[cursor];
                rec.state = StepState::CompensationFailed;
                rec.reason = Some("no outcome before the deadline".to_owned());
                self.s.failed_step = Some(cursor);
                self.s.reason = Some(why.clone());
                self.finish(Status::CompensationFailed);
                note("compensation_failed", why)
            }
            // Not due yet (a stale or early timer), or nothing in flight.
            (Status::Running | Status::Compensating, false)
            | (
                Status::Completed
                | Status::Compensated
                | Status::CompensationFailed
                | Status::Suspended,
                _,
            ) => None,
        }
    }
}

/// How far [`Machine::overdue`] stretches a step's deadline: 2, 4, ... up to
/// this many times the policy's deadline.
pub const OVERDUE_MAX_FACTOR: u32 = 32;

/// Whether a step in this state may have taken effect and is not (known to
/// be) undone: what compensation undoes.
fn may_have_acted(state: StepState) -> bool {
    match state {
        StepState::Pending | StepState::Succeeded | StepState::Unknown => true,
        StepState::NotStarted
        | StepState::Refused
        | StepState::Compensating
        | StepState::Compensated
        | StepState::NotCompensated
        | StepState::CompensationFailed => false,
    }
}

/// The latest time the machine sets a deadline at: 9999-12-31T23:59:59.999Z
/// (any timestamp column and clock library can hold it).
pub const LATEST: Millis = 253_402_300_799_999;

/// `now + wait`, saturating at [`LATEST`].
pub fn after(now: Millis, wait: std::time::Duration) -> Millis {
    let wait = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
    now.saturating_add(wait).min(LATEST)
}
