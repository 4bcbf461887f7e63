//! Fixtures: a second saga type (`shipment`) next to the order saga, events,
//! effects, and `given`/`when`.

use std::time::Duration;

use super::super::*;

/// The time of the first event of every scenario.
pub(super) const T0: Millis = 1_700_000_000_000;

pub(super) fn ms(d: Duration) -> Millis {
    Millis::try_from(d.as_millis()).expect("a deadline fits in i64")
}

pub(super) fn policy(max_attempts: u32, deadline_ms: u64) -> Policy {
    Policy {
        max_attempts,
        deadline: Duration::from_millis(deadline_ms),
        ..Policy::default()
    }
}

pub(super) fn shipment_step(
    name: &str,
    compensation: Option<&str>,
    action: Policy,
    undo: Policy,
) -> StepDef {
    StepDef {
        name: name.to_owned(),
        participant: "warehouse".to_owned(),
        action: format!("/test.v1.Shipping/{name}"),
        compensation: compensation.map(|c| format!("/test.v1.Shipping/{c}")),
        forward_only: false,
        group: None,
        input: None,
        compensation_input: None,
        policy: action,
        compensation_policy: undo,
    }
}

/// A second saga type, so nothing leans on the order saga's shape: three
/// steps, each with its own policies, the last one (its pivot) without
/// compensation.
pub(super) fn shipment() -> Definition {
    Definition {
        input_schema: None,
        saga_type: "shipment".to_owned(),
        version: 7,
        steps: vec![
            shipment_step(
                "book_carrier",
                Some("cancel_booking"),
                policy(3, 100),
                policy(2, 250),
            ),
            shipment_step(
                "charge_fee",
                Some("refund_fee"),
                policy(2, 50),
                policy(3, 400),
            ),
            shipment_step("print_label", None, policy(3, 100), policy(2, 250)),
        ],
    }
}

/// A third saga type, with steps after its pivot: reserve a slot and charge
/// (both undoable), confirm (the pivot), then notify the customer and
/// archive, both forward-only.
pub(super) fn delivery() -> Definition {
    let forward = |name: &str, attempts: u32, deadline_ms: u64| StepDef {
        forward_only: true,
        ..shipment_step(name, None, policy(attempts, deadline_ms), policy(1, 1))
    };
    Definition {
        input_schema: None,
        saga_type: "delivery".to_owned(),
        version: 2,
        steps: vec![
            shipment_step(
                "reserve_slot",
                Some("release_slot"),
                policy(2, 100),
                policy(2, 200),
            ),
            shipment_step("charge", Some("refund"), policy(2, 60), policy(2, 300)),
            shipment_step("confirm", None, policy(2, 100), policy(1, 1)),
            forward("notify", 2, 70),
            forward("archive", 3, 90),
        ],
    }
}

/// A fourth saga type, with a parallel group: book the flight, the hotel
/// and the car at once (each undoable, each its own policy), then charge,
/// confirm (the pivot) and notify (forward-only).
pub(super) fn trip() -> Definition {
    let member = |name: &str, undo: &str, attempts: u32, deadline_ms: u64| StepDef {
        group: Some("book".to_owned()),
        ..shipment_step(
            name,
            Some(undo),
            policy(attempts, deadline_ms),
            policy(2, 120),
        )
    };
    Definition {
        input_schema: None,
        saga_type: "trip".to_owned(),
        version: 1,
        steps: vec![
            member("book_flight", "cancel_flight", 2, 100),
            member("book_hotel", "cancel_hotel", 3, 150),
            member("book_car", "cancel_car", 2, 80),
            shipment_step("charge", Some("refund"), policy(2, 60), policy(2, 90)),
            shipment_step("confirm", None, policy(2, 100), policy(1, 1)),
            StepDef {
                forward_only: true,
                ..shipment_step("notify", None, policy(2, 70), policy(1, 1))
            },
        ],
    }
}

pub(super) fn action_deadline(def: &Definition, step: usize) -> Millis {
    ms(def.steps[step].policy.deadline)
}

pub(super) fn undo_deadline(def: &Definition, step: usize) -> Millis {
    ms(def.steps[step].compensation_policy.deadline)
}

pub(super) fn action_attempts(def: &Definition, step: usize) -> u32 {
    def.steps[step].policy.max_attempts
}

pub(super) fn undo_attempts(def: &Definition, step: usize) -> u32 {
    def.steps[step].compensation_policy.max_attempts
}

// Events.

pub(super) fn start() -> Event {
    Event::Start
}

pub(super) fn timeout() -> Event {
    Event::Timeout
}

pub(super) fn timeouts(n: u32) -> Vec<Event> {
    (0..n).map(|_| timeout()).collect()
}

/// An operator retries a paused saga.
pub(super) fn retry() -> Event {
    Event::Retry
}

/// The reason every test suspension gives.
pub(super) const SUSPEND_REASON: &str = "its timer was rejected";

/// The engine suspends the saga.
pub(super) fn suspend() -> Event {
    Event::Suspend {
        reason: SUSPEND_REASON.to_owned(),
    }
}

/// The reason every test cancel gives.
pub(super) const CANCEL_REASON: &str = "customer called to cancel";

/// An operator cancels the saga.
pub(super) fn cancel() -> Event {
    Event::Cancel {
        reason: CANCEL_REASON.to_owned(),
    }
}

pub(super) fn outcome(step: usize, kind: Kind, refused: bool) -> Event {
    let outcome = if refused {
        Outcome::Refused {
            reason: "over the limit".to_owned(),
        }
    } else {
        Outcome::succeeded()
    };
    Event::Outcome {
        step,
        kind,
        outcome,
    }
}

/// The action of `step` succeeded.
pub(super) fn ok(step: usize) -> Event {
    outcome(step, Kind::Action, false)
}

/// The participant refused the action of `step`.
pub(super) fn refused(step: usize) -> Event {
    outcome(step, Kind::Action, true)
}

/// The compensation of `step` succeeded.
pub(super) fn undone(step: usize) -> Event {
    outcome(step, Kind::Compensation, false)
}

/// The participant refused the compensation of `step`.
pub(super) fn undo_refused(step: usize) -> Event {
    outcome(step, Kind::Compensation, true)
}

// Effects and commands.

pub(super) fn action(step: usize, attempt: u32) -> Command {
    retried_action(step, attempt, 0)
}

/// The action of `step` after `generation` operator retries.
pub(super) fn retried_action(step: usize, attempt: u32, generation: u32) -> Command {
    Command {
        step,
        kind: Kind::Action,
        attempt,
        generation,
    }
}

pub(super) fn undo(step: usize, attempt: u32) -> Command {
    retried_undo(step, attempt, 0)
}

/// The compensation of `step` after `generation` operator retries.
pub(super) fn retried_undo(step: usize, attempt: u32, generation: u32) -> Command {
    Command {
        step,
        kind: Kind::Compensation,
        attempt,
        generation,
    }
}

pub(super) fn send(step: usize, attempt: u32) -> Effect {
    Effect::SendCommand(action(step, attempt))
}

pub(super) fn send_undo(step: usize, attempt: u32) -> Effect {
    Effect::SendCommand(undo(step, attempt))
}

pub(super) fn timer(at: Millis) -> Effect {
    Effect::ScheduleTimeout { at }
}

pub(super) fn finish(status: Status) -> Effect {
    Effect::Finish(status)
}

pub(super) fn states(state: &SagaState) -> Vec<StepState> {
    state.steps.iter().map(|r| r.state).collect()
}

pub(super) fn note_kind(t: &Transition) -> Option<&'static str> {
    t.note.as_ref().map(|n| n.kind)
}

/// The one command in flight, for sagas whose definition has no parallel
/// group (every stage one step).
pub(super) trait Flying {
    fn flying(&self) -> Option<Command>;
}

impl Flying for SagaState {
    fn flying(&self) -> Option<Command> {
        let steps = (0..self.steps.len())
            .map(|i| shipment_step(&format!("s{i}"), Some("undo"), policy(1, 1), policy(1, 1)))
            .collect();
        let def = Definition {
            input_schema: None,
            saga_type: "sequential".to_owned(),
            version: 1,
            steps,
        };
        let mut all = self.in_flight(&def);
        assert!(all.len() <= 1, "{all:?} in flight");
        all.pop()
    }
}

/// A saga under test: its definition, its state and the clock. The clock
/// stands still while outcomes arrive and jumps to the deadline when a timer
/// fires, so every timer in a history is due.
#[derive(Debug, Clone)]
pub(super) struct Saga {
    pub(super) def: Definition,
    pub(super) state: SagaState,
    pub(super) now: Millis,
}

/// A fresh saga of type `def` after `history`, replayed event by event.
/// Every event of a history must change the saga.
pub(super) fn given(def: &Definition, history: &[Event]) -> Saga {
    let mut saga = Saga {
        def: def.clone(),
        state: SagaState::new(def.steps.len()),
        now: T0,
    };
    for (i, event) in history.iter().enumerate() {
        let now = saga.time_of(event);
        let t = saga.when(event.clone());
        assert!(
            t.note.is_some(),
            "given: event #{i} {event:?} changed nothing in {:?}",
            saga.state
        );
        saga.now = now;
        saga.state = t.state;
    }
    saga
}

impl Saga {
    /// When `event` happens: now for an outcome, at the deadline for a timer.
    pub(super) fn time_of(&self, event: &Event) -> Millis {
        match (event, self.state.deadline) {
            (Event::Timeout, Some(deadline)) => deadline.max(self.now),
            _ => self.now,
        }
    }

    pub(super) fn try_when(&self, event: Event) -> Result<Transition, Error> {
        apply(&self.def, &self.state, &event, self.time_of(&event))
    }

    pub(super) fn when(&self, event: Event) -> Transition {
        self.try_when(event.clone())
            .unwrap_or_else(|e| panic!("when {event:?}: {e}\nstate: {:?}", self.state))
    }

    pub(super) fn when_at(&self, event: Event, now: Millis) -> Transition {
        apply(&self.def, &self.state, &event, now)
            .unwrap_or_else(|e| panic!("when {event:?} at {now}: {e}\nstate: {:?}", self.state))
    }

    /// Then `event` is a no-op: same state, no effects, no history note.
    pub(super) fn assert_ignores_at(&self, event: Event, now: Millis) {
        let t = self.when_at(event.clone(), now);
        assert_eq!(t.note, None, "{event:?} should be ignored");
        assert_eq!(t.effects, vec![], "{event:?} should have no effects");
        assert_eq!(t.state, self.state, "{event:?} should not change the state");
    }

    pub(super) fn assert_ignores(&self, event: Event) {
        let now = self.time_of(&event);
        self.assert_ignores_at(event, now);
    }
}
