//! Specs for the saga state machine.
//!
//! Layout:
//! - Fixtures: a second saga type (`shipment`, three steps, the middle one
//!   without compensation) next to the order saga, and `given`/`when`.
//! - Scenarios, given/when/then, on both definitions.
//! - An exhaustive sweep: every (status, step state, event) on hand-built
//!   states and on every state reachable from a fresh saga.
//! - Property tests: a random world of participants that succeed, refuse or
//!   never answer, driven by a scheduler that reorders, duplicates and
//!   delays events and fires timers.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use proptest::collection::vec;
use proptest::prelude::*;

use super::state::StepRecord;
use super::*;
use crate::definitions::order;

use StepState as S;

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// The time of the first event of every scenario.
const T0: Millis = 1_700_000_000_000;

fn ms(d: Duration) -> Millis {
    Millis::try_from(d.as_millis()).expect("a deadline fits in i64")
}

fn policy(max_attempts: u32, deadline_ms: u64) -> Policy {
    Policy {
        max_attempts,
        deadline: Duration::from_millis(deadline_ms),
        ..Policy::default()
    }
}

fn shipment_step(name: &str, compensation: Option<&str>, action: Policy, undo: Policy) -> StepDef {
    StepDef {
        name: name.to_owned(),
        participant: "warehouse".to_owned(),
        action: format!("/test.v1.Shipping/{name}"),
        compensation: compensation.map(|c| format!("/test.v1.Shipping/{c}")),
        policy: action,
        compensation_policy: undo,
    }
}

/// A second saga type, so nothing leans on the order saga's shape: three
/// steps, the middle one without compensation, each with its own policies.
fn shipment() -> Definition {
    Definition {
        saga_type: "shipment".to_owned(),
        version: 7,
        steps: vec![
            shipment_step(
                "book_carrier",
                Some("cancel_booking"),
                policy(3, 100),
                policy(2, 250),
            ),
            shipment_step("print_label", None, policy(3, 100), policy(2, 250)),
            shipment_step(
                "charge_fee",
                Some("refund_fee"),
                policy(2, 50),
                policy(3, 400),
            ),
        ],
    }
}

fn action_deadline(def: &Definition, step: usize) -> Millis {
    ms(def.steps[step].policy.deadline)
}

fn undo_deadline(def: &Definition, step: usize) -> Millis {
    ms(def.steps[step].compensation_policy.deadline)
}

fn action_attempts(def: &Definition, step: usize) -> u32 {
    def.steps[step].policy.max_attempts
}

fn undo_attempts(def: &Definition, step: usize) -> u32 {
    def.steps[step].compensation_policy.max_attempts
}

// Events.

fn start() -> Event {
    Event::Start
}

fn timeout() -> Event {
    Event::Timeout
}

fn timeouts(n: u32) -> Vec<Event> {
    (0..n).map(|_| timeout()).collect()
}

/// An operator retries a paused saga.
fn retry() -> Event {
    Event::Retry
}

/// The reason every test cancel gives.
const CANCEL_REASON: &str = "customer called to cancel";

/// An operator cancels the saga.
fn cancel() -> Event {
    Event::Cancel {
        reason: CANCEL_REASON.to_owned(),
    }
}

fn outcome(step: usize, kind: Kind, refused: bool) -> Event {
    let outcome = if refused {
        Outcome::Refused {
            reason: "over the limit".to_owned(),
        }
    } else {
        Outcome::Succeeded
    };
    Event::Outcome {
        step,
        kind,
        outcome,
    }
}

/// The action of `step` succeeded.
fn ok(step: usize) -> Event {
    outcome(step, Kind::Action, false)
}

/// The participant refused the action of `step`.
fn refused(step: usize) -> Event {
    outcome(step, Kind::Action, true)
}

/// The compensation of `step` succeeded.
fn undone(step: usize) -> Event {
    outcome(step, Kind::Compensation, false)
}

/// The participant refused the compensation of `step`.
fn undo_refused(step: usize) -> Event {
    outcome(step, Kind::Compensation, true)
}

// Effects and commands.

fn action(step: usize, attempt: u32) -> Command {
    Command {
        step,
        kind: Kind::Action,
        attempt,
        generation: 0,
    }
}

fn undo(step: usize, attempt: u32) -> Command {
    retried_undo(step, attempt, 0)
}

/// The compensation of `step` after `generation` operator retries.
fn retried_undo(step: usize, attempt: u32, generation: u32) -> Command {
    Command {
        step,
        kind: Kind::Compensation,
        attempt,
        generation,
    }
}

fn send(step: usize, attempt: u32) -> Effect {
    Effect::SendCommand(action(step, attempt))
}

fn send_undo(step: usize, attempt: u32) -> Effect {
    Effect::SendCommand(undo(step, attempt))
}

fn timer(at: Millis) -> Effect {
    Effect::ScheduleTimeout { at }
}

fn finish(status: Status) -> Effect {
    Effect::Finish(status)
}

fn states(state: &SagaState) -> Vec<StepState> {
    state.steps.iter().map(|r| r.state).collect()
}

fn note_kind(t: &Transition) -> Option<&'static str> {
    t.note.as_ref().map(|n| n.kind)
}

/// A saga under test: its definition, its state and the clock. The clock
/// stands still while outcomes arrive and jumps to the deadline when a timer
/// fires, so every timer in a history is due.
#[derive(Debug, Clone)]
struct Saga {
    def: Definition,
    state: SagaState,
    now: Millis,
}

/// A fresh saga of type `def` after `history`, replayed event by event.
/// Every event of a history must change the saga.
fn given(def: &Definition, history: &[Event]) -> Saga {
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
    fn time_of(&self, event: &Event) -> Millis {
        match (event, self.state.deadline) {
            (Event::Timeout, Some(deadline)) => deadline.max(self.now),
            _ => self.now,
        }
    }

    fn try_when(&self, event: Event) -> Result<Transition, Error> {
        apply(&self.def, &self.state, &event, self.time_of(&event))
    }

    fn when(&self, event: Event) -> Transition {
        self.try_when(event.clone())
            .unwrap_or_else(|e| panic!("when {event:?}: {e}\nstate: {:?}", self.state))
    }

    fn when_at(&self, event: Event, now: Millis) -> Transition {
        apply(&self.def, &self.state, &event, now)
            .unwrap_or_else(|e| panic!("when {event:?} at {now}: {e}\nstate: {:?}", self.state))
    }

    /// Then `event` is a no-op: same state, no effects, no history note.
    fn assert_ignores_at(&self, event: Event, now: Millis) {
        let t = self.when_at(event.clone(), now);
        assert_eq!(t.note, None, "{event:?} should be ignored");
        assert_eq!(t.effects, vec![], "{event:?} should have no effects");
        assert_eq!(t.state, self.state, "{event:?} should not change the state");
    }

    fn assert_ignores(&self, event: Event) {
        let now = self.time_of(&event);
        self.assert_ignores_at(event, now);
    }
}

// ---------------------------------------------------------------------------
// Scenarios: start and the happy path
// ---------------------------------------------------------------------------

#[test]
fn start_sends_the_first_action_with_a_deadline_timer() {
    for def in [order::definition(), shipment()] {
        let t = given(&def, &[]).when(start());
        let due = T0 + action_deadline(&def, 0);

        assert_eq!(t.effects, vec![send(0, 1), timer(due)]);
        assert_eq!(t.state.status, Status::Running);
        assert_eq!(t.state.cursor, 0);
        assert_eq!(t.state.deadline, Some(due));
        assert_eq!(t.state.steps[0].state, S::Pending);
        assert_eq!(t.state.steps[0].attempts, 1);
        assert!(t.state.steps[1..].iter().all(|r| r.state == S::NotStarted));
        assert_eq!(note_kind(&t), Some("started"));
    }
}

#[test]
fn a_saga_that_has_not_started_has_nothing_in_flight_and_ignores_timers() {
    let saga = given(&shipment(), &[]);
    assert_eq!(saga.state.in_flight(), None);
    saga.assert_ignores_at(timeout(), T0 + 1_000_000);
}

#[test]
fn a_repeated_start_changes_nothing() {
    let def = order::definition();
    given(&def, &[start()]).assert_ignores(start());
    given(&def, &[start(), ok(0), ok(1)]).assert_ignores(start());
    given(&def, &[start(), ok(0), refused(1)]).assert_ignores(start());
}

#[test]
fn a_success_sends_the_next_action_with_its_own_deadline() {
    let def = shipment();
    let saga = given(&def, &[start(), ok(0)]);
    let t = saga.when(ok(1));
    // charge_fee has a 50 ms deadline, unlike the 100 ms of the others.
    assert_eq!(t.effects, vec![send(2, 1), timer(T0 + 50)]);
    assert_eq!(t.state.cursor, 2);
    assert_eq!(states(&t.state), [S::Succeeded, S::Succeeded, S::Pending]);
    assert_eq!(note_kind(&t), Some("step_succeeded"));
}

#[test]
fn the_last_success_completes_the_saga_with_finish() {
    let def = order::definition();
    let saga = given(&def, &[start(), ok(0), ok(1), ok(2)]);
    assert_eq!(saga.state.in_flight(), Some(action(3, 1)));

    let t = saga.when(ok(3));

    assert_eq!(t.effects, vec![finish(Status::Completed)]);
    assert_eq!(t.state.status, Status::Completed);
    assert_eq!(t.state.deadline, None);
    assert_eq!(t.state.in_flight(), None);
    assert_eq!(states(&t.state), [S::Succeeded; 4]);
    assert_eq!(t.state.failed_step, None);
    assert_eq!(t.state.reason, None);
    assert_eq!(note_kind(&t), Some("completed"));
}

#[test]
fn the_happy_path_sends_every_action_once_in_order() {
    for def in [order::definition(), shipment()] {
        let world = World::uniform(&def, Reply::Succeeds, Reply::Succeeds);
        let run = clean_run(&world).expect("a clean run");
        let expected: Vec<Command> = (0..def.steps.len()).map(|i| action(i, 1)).collect();
        assert_eq!(run.sends, expected, "{}", def.saga_type);
        assert_eq!(run.finishes, vec![Status::Completed]);
    }
}

// ---------------------------------------------------------------------------
// Scenarios: refusals
// ---------------------------------------------------------------------------

#[test]
fn a_refusal_of_the_first_step_compensates_nothing() {
    let def = order::definition();
    let t = given(&def, &[start()]).when(refused(0));

    assert_eq!(t.effects, vec![finish(Status::Compensated)]);
    assert_eq!(t.state.status, Status::Compensated);
    assert_eq!(t.state.failed_step, Some(0));
    assert_eq!(
        states(&t.state),
        [S::Refused, S::NotStarted, S::NotStarted, S::NotStarted]
    );
    assert_eq!(t.state.steps[0].reason.as_deref(), Some("over the limit"));
    let reason = t.state.reason.expect("a reason");
    assert!(
        reason.contains("create_order") && reason.contains("over the limit"),
        "{reason}"
    );
    assert_eq!(t.state.deadline, None);
}

#[test]
fn a_refusal_compensates_the_previous_step_first() {
    let def = order::definition();
    let saga = given(&def, &[start(), ok(0), ok(1)]);

    let t = saga.when(refused(2));

    assert_eq!(
        t.effects,
        vec![send_undo(1, 1), timer(T0 + undo_deadline(&def, 1))]
    );
    assert_eq!(t.state.status, Status::Compensating);
    assert_eq!(t.state.cursor, 1);
    assert_eq!(t.state.failed_step, Some(2));
    assert_eq!(
        states(&t.state),
        [S::Succeeded, S::Compensating, S::Refused, S::NotStarted]
    );
    assert_eq!(t.state.in_flight(), Some(undo(1, 1)));
    assert_eq!(note_kind(&t), Some("step_refused"));
}

#[test]
fn a_compensated_step_hands_over_to_the_one_below_then_the_saga_is_compensated() {
    let def = order::definition();
    let saga = given(&def, &[start(), ok(0), ok(1), refused(2)]);

    let t = saga.when(undone(1));
    assert_eq!(
        t.effects,
        vec![send_undo(0, 1), timer(saga.now + undo_deadline(&def, 0))]
    );
    assert_eq!(t.state.cursor, 0);
    assert_eq!(note_kind(&t), Some("step_compensated"));

    let saga = given(&def, &[start(), ok(0), ok(1), refused(2), undone(1)]);
    let t = saga.when(undone(0));
    assert_eq!(t.effects, vec![finish(Status::Compensated)]);
    assert_eq!(
        states(&t.state),
        [S::Compensated, S::Compensated, S::Refused, S::NotStarted]
    );
    assert_eq!(t.state.failed_step, Some(2));
    assert_eq!(t.state.deadline, None);
}

#[test]
fn a_refusal_at_each_step_compensates_exactly_the_earlier_steps_in_reverse() {
    for def in [order::definition(), shipment()] {
        let n = def.steps.len();
        for k in 0..n {
            let mut world = World::uniform(&def, Reply::Succeeds, Reply::Succeeds);
            world.action[k] = Reply::Refuses;

            let run = clean_run(&world).expect("a clean run");

            let ctx = format!("{} refused at step {k}", def.saga_type);
            let actions: Vec<Command> = (0..=k).map(|i| action(i, 1)).collect();
            let undos: Vec<Command> = (0..k)
                .rev()
                .filter(|&i| def.steps[i].compensation.is_some())
                .map(|i| undo(i, 1))
                .collect();
            assert_eq!(run.sends, [actions, undos].concat(), "{ctx}");
            assert_eq!(run.state.status, Status::Compensated, "{ctx}");
            assert_eq!(run.state.failed_step, Some(k), "{ctx}");
            assert_eq!(run.finishes, vec![Status::Compensated], "{ctx}");
            for (i, rec) in run.state.steps.iter().enumerate() {
                let expected = match i {
                    i if i > k => S::NotStarted,
                    i if i == k => S::Refused,
                    i if def.steps[i].compensation.is_some() => S::Compensated,
                    _ => S::NotCompensated,
                };
                assert_eq!(rec.state, expected, "{ctx}: step {i}");
            }
        }
    }
}

#[test]
fn a_succeeded_step_without_compensation_is_not_compensated_and_skipped() {
    let def = shipment();
    let saga = given(&def, &[start(), ok(0), ok(1)]);

    let t = saga.when(refused(2));

    // print_label (1) has no compensation: straight to book_carrier (0).
    assert_eq!(
        t.effects,
        vec![send_undo(0, 1), timer(saga.now + undo_deadline(&def, 0))]
    );
    assert_eq!(
        states(&t.state),
        [S::Compensating, S::NotCompensated, S::Refused]
    );
    assert_eq!(t.state.cursor, 0);
}

// ---------------------------------------------------------------------------
// Scenarios: timers
// ---------------------------------------------------------------------------

#[test]
fn a_timeout_resends_the_same_step_with_the_next_attempt() {
    let def = order::definition();
    let saga = given(&def, &[start(), ok(0)]);
    let due = saga.state.deadline.expect("a deadline");

    let t = saga.when_at(timeout(), due);

    assert_eq!(
        t.effects,
        vec![send(1, 2), timer(due + action_deadline(&def, 1))]
    );
    assert_eq!(t.state.steps[1].attempts, 2);
    assert_eq!(t.state.steps[1].state, S::Pending);
    assert_eq!(t.state.status, Status::Running);
    assert_eq!(t.state.in_flight(), Some(action(1, 2)));
    assert_eq!(note_kind(&t), Some("resent"));
}

#[test]
fn a_timer_exactly_at_the_deadline_fires_and_one_before_is_a_no_op() {
    let def = shipment();
    let saga = given(&def, &[start()]);
    let due = saga.state.deadline.expect("a deadline");

    saga.assert_ignores_at(timeout(), due - 1);
    saga.assert_ignores_at(timeout(), T0);
    assert_eq!(saga.when_at(timeout(), due).effects[0], send(0, 2));
    assert_eq!(saga.when_at(timeout(), due + 5_000).effects[0], send(0, 2));
}

#[test]
fn a_stale_timer_of_an_earlier_command_is_a_no_op() {
    let def = shipment();
    let first_due = T0 + action_deadline(&def, 0);
    // Step 0 succeeds 90 ms in: step 1 is due at T0 + 190.
    let saga = given(&def, &[start()]);
    let t = saga.when_at(ok(0), T0 + 90);
    let saga = Saga {
        state: t.state,
        now: T0 + 90,
        ..saga
    };
    assert_eq!(saga.state.deadline, Some(T0 + 190));

    // The timer set for step 0 fires at T0 + 100.
    saga.assert_ignores_at(timeout(), first_due);
}

#[test]
fn after_max_attempts_the_step_is_unknown_and_its_own_compensation_runs_first() {
    let def = order::definition();
    let max = action_attempts(&def, 1);
    let mut history = vec![start(), ok(0)];
    history.extend(timeouts(max - 1));
    let saga = given(&def, &history);
    assert_eq!(saga.state.in_flight(), Some(action(1, max)));

    let due = saga.state.deadline.expect("a deadline");
    let t = saga.when(timeout());

    // process_payment may have charged: refund it, before cancelling the order.
    assert_eq!(
        t.effects,
        vec![send_undo(1, 1), timer(due + undo_deadline(&def, 1))]
    );
    assert_eq!(t.state.status, Status::Compensating);
    assert_eq!(t.state.failed_step, Some(1));
    assert_eq!(t.state.steps[1].attempts, max);
    assert_eq!(
        t.state.steps[1].reason.as_deref(),
        Some("no outcome before the deadline")
    );
    let reason = t.state.reason.clone().expect("a reason");
    assert!(
        reason.contains("process_payment") && reason.contains("unknown"),
        "{reason}"
    );
    assert_eq!(note_kind(&t), Some("step_timed_out"));

    // Then the earlier ones.
    history.extend([timeout(), undone(1)]);
    let saga = given(&def, &history);
    assert_eq!(saga.state.in_flight(), Some(undo(0, 1)));
}

#[test]
fn a_lost_step_at_each_position_compensates_itself_then_the_earlier_steps() {
    for def in [order::definition(), shipment()] {
        // (A step without compensation is never given up on: see
        // `a_step_without_compensation_is_resent_until_its_outcome_is_known`.)
        for k in (0..def.steps.len()).filter(|&k| def.steps[k].compensation.is_some()) {
            let mut world = World::uniform(&def, Reply::Succeeds, Reply::Succeeds);
            world.action[k] = Reply::Lost;

            let run = clean_run(&world).expect("a clean run");

            let ctx = format!("{} lost at step {k}", def.saga_type);
            let mut expected: Vec<Command> = (0..k).map(|i| action(i, 1)).collect();
            expected.extend((1..=action_attempts(&def, k)).map(|a| action(k, a)));
            expected.extend(
                (0..=k)
                    .rev()
                    .filter(|&i| def.steps[i].compensation.is_some())
                    .map(|i| undo(i, 1)),
            );
            assert_eq!(run.sends, expected, "{ctx}");
            assert_eq!(run.state.status, Status::Compensated, "{ctx}");
            assert_eq!(run.state.failed_step, Some(k), "{ctx}");
        }
    }
}

/// The order saga's pivot (approve_order, no compensation), with every
/// attempt spent.
fn order_with_pivot_out_of_attempts() -> (Vec<Event>, Saga) {
    let def = order::definition();
    let mut history = vec![start(), ok(0), ok(1), ok(2)];
    history.extend(timeouts(action_attempts(&def, 3)));
    let saga = given(&def, &history);
    (history, saga)
}

#[test]
fn a_step_without_compensation_is_resent_until_its_outcome_is_known() {
    let def = order::definition();
    let max = action_attempts(&def, 3);
    let mut history = vec![start(), ok(0), ok(1), ok(2)];
    history.extend(timeouts(max - 1));
    let saga = given(&def, &history);
    let due = saga.state.deadline.expect("a deadline");

    // Out of attempts: approve_order may have approved and nothing could
    // undo it, so nothing before it is undone either. It is sent again, the
    // same command, and the wait doubles.
    let t = saga.when(timeout());
    let deadline = action_deadline(&def, 3);
    assert_eq!(t.effects, vec![send(3, max + 1), timer(due + 2 * deadline)]);
    assert_eq!(note_kind(&t), Some("step_overdue"));
    assert_eq!(t.state.status, Status::Running);
    assert_eq!(
        states(&t.state),
        [S::Succeeded, S::Succeeded, S::Succeeded, S::Pending]
    );
    let reason = t.state.reason.clone().expect("the saga says why it waits");
    assert!(
        reason.starts_with("approve_order: no outcome after 5 attempts")
            && reason.contains("cannot be undone"),
        "{reason}"
    );
    assert_eq!(t.state.failed_step, None);

    // 2x, 4x, ... then capped at 32x the step's deadline.
    history.push(timeout());
    let mut saga = given(&def, &history);
    for (attempt, factor) in (max + 2..).zip([4, 8, 16, 32, 32, 32]) {
        let due = saga.state.deadline.expect("a deadline");
        let t = saga.when(timeout());
        assert_eq!(
            t.effects,
            vec![send(3, attempt), timer(due + factor * deadline)],
            "attempt {attempt}"
        );
        history.push(timeout());
        saga = given(&def, &history);
    }
}

#[test]
fn an_overdue_step_without_compensation_ends_with_its_outcome() {
    let def = order::definition();
    let (_, saga) = order_with_pivot_out_of_attempts();
    assert_eq!(
        saga.state.in_flight(),
        Some(action(3, action_attempts(&def, 3) + 1))
    );

    // It approved after all: the saga completes, and the reason goes.
    let t = saga.when(ok(3));
    assert_eq!(t.effects, vec![finish(Status::Completed)]);
    assert_eq!(t.state.reason, None);
    assert_eq!(t.state.steps[3].state, S::Succeeded);

    // It was refused: the steps before it are undone, as for any refusal.
    let t = saga.when(refused(3));
    assert_eq!(t.state.status, Status::Compensating);
    assert_eq!(t.state.failed_step, Some(3));
    assert_eq!(t.state.in_flight(), Some(undo(2, 1)));
    assert!(
        t.state
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("approve_order refused")),
        "{:?}",
        t.state.reason
    );
}

#[test]
fn an_overdue_step_without_compensation_cannot_be_cancelled() {
    let (_, saga) = order_with_pivot_out_of_attempts();
    assert!(matches!(
        saga.try_when(cancel()),
        Err(Error::PastPivot { step: 3, .. })
    ));
}

#[test]
fn a_middle_step_without_compensation_is_not_given_up_on_either() {
    let def = shipment();
    let mut history = vec![start(), ok(0)];
    history.extend(timeouts(action_attempts(&def, 1) + 3));
    let saga = given(&def, &history);
    assert_eq!(saga.state.status, Status::Running);
    assert_eq!(
        saga.state.in_flight(),
        Some(action(1, action_attempts(&def, 1) + 4))
    );
    // Printed in the end: the saga goes on.
    let t = saga.when(ok(1));
    assert_eq!(t.state.in_flight(), Some(action(2, 1)));
    assert_eq!(t.state.reason, None);
}

#[test]
fn a_compensation_timeout_resends_it_with_its_own_deadline() {
    let def = shipment();
    let saga = given(&def, &[start(), ok(0), ok(1), refused(2)]);
    let due = saga.state.deadline.expect("a deadline");
    assert_eq!(due, saga.now + undo_deadline(&def, 0));

    let t = saga.when_at(timeout(), due);

    assert_eq!(
        t.effects,
        vec![send_undo(0, 2), timer(due + undo_deadline(&def, 0))]
    );
    assert_eq!(t.state.steps[0].compensation_attempts, 2);
    assert_eq!(t.state.in_flight(), Some(undo(0, 2)));
    assert_eq!(note_kind(&t), Some("resent"));
}

// ---------------------------------------------------------------------------
// Scenarios: compensation that fails, and resumes
// ---------------------------------------------------------------------------

/// The order saga with payment's refund timing out on every attempt but the
/// last: `history` and the saga.
fn order_with_refund_on_its_last_attempt() -> (Vec<Event>, Saga) {
    let def = order::definition();
    let mut history = vec![start(), ok(0), ok(1), refused(2)];
    history.extend(timeouts(undo_attempts(&def, 1) - 1));
    let saga = given(&def, &history);
    (history, saga)
}

#[test]
fn compensation_timeouts_exhausted_pause_the_saga_as_compensation_failed() {
    let (_, saga) = order_with_refund_on_its_last_attempt();
    let max = undo_attempts(&saga.def, 1);
    assert_eq!(saga.state.in_flight(), Some(undo(1, max)));

    let t = saga.when(timeout());

    assert_eq!(t.effects, vec![finish(Status::CompensationFailed)]);
    assert_eq!(t.state.status, Status::CompensationFailed);
    assert_eq!(t.state.failed_step, Some(1));
    assert_eq!(t.state.cursor, 1);
    let reason = t.state.reason.clone().expect("a reason");
    assert!(
        reason.contains("process_payment") && reason.contains(&format!("{max} attempts")),
        "{reason}"
    );
    assert_eq!(
        states(&t.state),
        [
            S::Succeeded,
            S::CompensationFailed,
            S::Refused,
            S::NotStarted
        ]
    );
    assert_eq!(t.state.deadline, None);
    assert_eq!(t.state.in_flight(), None);
    assert_eq!(note_kind(&t), Some("compensation_failed"));
}

#[test]
fn a_refused_compensation_pauses_the_saga_as_compensation_failed() {
    let def = order::definition();
    let saga = given(&def, &[start(), ok(0), ok(1), refused(2)]);

    let t = saga.when(undo_refused(1));

    assert_eq!(t.effects, vec![finish(Status::CompensationFailed)]);
    assert_eq!(t.state.failed_step, Some(1));
    assert_eq!(t.state.steps[1].state, S::CompensationFailed);
    assert_eq!(t.state.steps[1].reason.as_deref(), Some("over the limit"));
    let reason = t.state.reason.clone().expect("a reason");
    assert!(
        reason.contains("process_payment") && reason.contains("refused"),
        "{reason}"
    );
    // Step 0 was never undone: the operator sees what is left.
    assert_eq!(t.state.steps[0].state, S::Succeeded);
}

#[test]
fn a_late_compensation_success_resumes_a_paused_saga() {
    let (mut history, _) = order_with_refund_on_its_last_attempt();
    history.push(timeout());
    let saga = given(&order::definition(), &history);
    assert_eq!(saga.state.status, Status::CompensationFailed);

    let t = saga.when(undone(1));

    assert_eq!(
        t.effects,
        vec![
            send_undo(0, 1),
            timer(saga.now + undo_deadline(&saga.def, 0))
        ]
    );
    assert_eq!(t.state.status, Status::Compensating);
    assert_eq!(t.state.cursor, 0);
    assert_eq!(states(&t.state)[..2], [S::Compensating, S::Compensated]);
    assert_eq!(t.state.in_flight(), Some(undo(0, 1)));

    // And it runs to the end.
    history.extend([undone(1), undone(0)]);
    let done = given(&saga.def, &history);
    assert_eq!(done.state.status, Status::Compensated);
    assert_eq!(
        states(&done.state),
        [S::Compensated, S::Compensated, S::Refused, S::NotStarted]
    );
}

#[test]
fn a_resumed_saga_reports_why_it_failed_not_the_undo_that_was_late() {
    let def = order::definition();
    let undisturbed = given(&def, &[start(), ok(0), ok(1), refused(2), undone(1)]);
    for (undo_failed, late_undo) in [(timeout(), undone(1)), (undo_refused(1), undone(1))] {
        let mut history = vec![start(), ok(0), ok(1), refused(2)];
        if undo_failed == timeout() {
            history.extend(timeouts(undo_attempts(&def, 1)));
        } else {
            history.push(undo_failed);
        }
        history.push(late_undo);

        let resumed = given(&def, &history);

        assert_eq!(resumed.state.status, Status::Compensating);
        assert_eq!(resumed.state.failed_step, undisturbed.state.failed_step);
        assert_eq!(resumed.state.reason, undisturbed.state.reason);
    }

    // The same when the failure was an unknown outcome.
    let mut history = vec![start(), ok(0)];
    history.extend(timeouts(action_attempts(&def, 1)));
    let undisturbed = given(&def, &[history.clone(), vec![undone(1)]].concat());
    history.extend(timeouts(undo_attempts(&def, 1)));
    history.push(undone(1));
    let resumed = given(&def, &history);
    assert_eq!(resumed.state.failed_step, Some(1));
    assert_eq!(resumed.state.reason, undisturbed.state.reason);
}

#[test]
fn a_late_compensation_refusal_leaves_a_paused_saga_paused() {
    let (mut history, _) = order_with_refund_on_its_last_attempt();
    history.push(timeout());
    given(&order::definition(), &history).assert_ignores(undo_refused(1));
}

// ---------------------------------------------------------------------------
// Scenarios: late action outcomes of an unknown step
// ---------------------------------------------------------------------------

/// The order saga whose payment never answered: its refund is in flight.
fn order_with_payment_unknown() -> Saga {
    let def = order::definition();
    let mut history = vec![start(), ok(0)];
    history.extend(timeouts(action_attempts(&def, 1)));
    given(&def, &history)
}

#[test]
fn a_late_success_of_a_timed_out_step_is_covered_by_its_compensation() {
    let saga = order_with_payment_unknown();
    assert_eq!(saga.state.in_flight(), Some(undo(1, 1)));
    saga.assert_ignores(ok(1));
}

#[test]
fn a_late_refusal_of_a_timed_out_step_leaves_its_compensation_in_flight() {
    // The refund still runs: it is a no-op at a participant that never charged.
    let saga = order_with_payment_unknown();
    saga.assert_ignores(refused(1));
}

#[test]
fn late_outcomes_of_a_timed_out_step_are_ignored_once_it_is_compensated() {
    let def = order::definition();
    let mut history = vec![start(), ok(0)];
    history.extend(timeouts(action_attempts(&def, 1)));
    history.push(undone(1));
    let saga = given(&def, &history);
    saga.assert_ignores(ok(1));
    saga.assert_ignores(refused(1));
}

/// A compensating saga with an `Unknown` step above the cursor. Runs never
/// leave a step `Unknown` (turning to compensation sends its undo at once),
/// so this one is built by hand.
fn compensating_with_step_unknown() -> Saga {
    let mut saga = order_with_payment_unknown();
    saga.state.steps[1].state = S::Unknown;
    saga.state.steps[0].state = S::Compensating;
    saga.state.steps[0].compensation_attempts = 1;
    saga.state.cursor = 0;
    saga
}

#[test]
fn a_late_success_of_an_unknown_step_is_recorded() {
    let saga = compensating_with_step_unknown();

    let t = saga.when(ok(1));

    assert_eq!(t.effects, vec![]);
    assert_eq!(t.state.steps[1].state, S::Succeeded);
    assert_eq!(t.state.status, Status::Compensating);
    assert_eq!(t.state.in_flight(), Some(undo(0, 1)));
    assert_eq!(note_kind(&t), Some("late_outcome"));
}

#[test]
fn a_late_refusal_of_an_unknown_step_is_recorded() {
    let saga = compensating_with_step_unknown();

    let t = saga.when(refused(1));

    assert_eq!(t.effects, vec![]);
    assert_eq!(t.state.steps[1].state, S::Refused);
    assert_eq!(t.state.steps[1].reason.as_deref(), Some("over the limit"));
    assert_eq!(t.state.in_flight(), Some(undo(0, 1)));
    assert_eq!(note_kind(&t), Some("late_outcome"));
}

// ---------------------------------------------------------------------------
// Scenarios: duplicates
// ---------------------------------------------------------------------------

#[test]
fn a_running_saga_ignores_duplicates_of_what_it_has_seen() {
    let def = order::definition();
    let saga = given(&def, &[start(), ok(0), ok(1)]);
    saga.assert_ignores(start());
    saga.assert_ignores(ok(0));
    saga.assert_ignores(ok(1));
}

#[test]
fn a_compensating_saga_ignores_duplicates_of_what_it_has_seen() {
    let def = order::definition();
    let history = [start(), ok(0), ok(1), ok(2), refused(3), undone(2)];
    let saga = given(&def, &history);
    assert_eq!(saga.state.in_flight(), Some(undo(1, 1)));
    for event in history {
        saga.assert_ignores(event);
    }
}

/// A terminal saga ignores every event it has seen, a repeated Start and
/// any timer, like temporal's `cancels_ignored_terminal`.
fn assert_terminal_ignores_duplicates(def: &Definition, history: &[Event], status: Status) {
    let saga = given(def, history);
    assert_eq!(saga.state.status, status);
    assert_eq!(saga.state.in_flight(), None);
    for event in history.iter().cloned().chain([start()]) {
        saga.assert_ignores(event);
    }
    for later in [0, 1, 1_000_000_000] {
        saga.assert_ignores_at(timeout(), saga.now + later);
    }
}

#[test]
fn completed_ignores_duplicates() {
    assert_terminal_ignores_duplicates(
        &order::definition(),
        &[start(), ok(0), ok(1), ok(2), ok(3)],
        Status::Completed,
    );
}

#[test]
fn compensated_ignores_duplicates() {
    let def = order::definition();
    assert_terminal_ignores_duplicates(&def, &[start(), refused(0)], Status::Compensated);
    assert_terminal_ignores_duplicates(
        &def,
        &[start(), ok(0), ok(1), refused(2), undone(1), undone(0)],
        Status::Compensated,
    );
    assert_terminal_ignores_duplicates(
        &shipment(),
        &[start(), ok(0), ok(1), refused(2), undone(0)],
        Status::Compensated,
    );
}

#[test]
fn compensation_failed_ignores_duplicates() {
    let def = order::definition();
    assert_terminal_ignores_duplicates(
        &def,
        &[start(), ok(0), ok(1), refused(2), undo_refused(1)],
        Status::CompensationFailed,
    );
    let (mut history, _) = order_with_refund_on_its_last_attempt();
    history.push(timeout());
    assert_terminal_ignores_duplicates(&def, &history, Status::CompensationFailed);
}

// ---------------------------------------------------------------------------
// Scenarios: an operator retries a paused saga
// ---------------------------------------------------------------------------

/// The order saga paused on payment's refund: it timed out on every attempt
/// (the payment service was down) after the stock was short.
fn order_paused_on_refund() -> (Vec<Event>, Saga) {
    let (mut history, _) = order_with_refund_on_its_last_attempt();
    history.push(timeout());
    let saga = given(&order::definition(), &history);
    assert_eq!(saga.state.status, Status::CompensationFailed);
    (history, saga)
}

#[test]
fn a_retry_resends_the_failed_undo_as_a_new_command_with_a_fresh_budget() {
    let (_, saga) = order_paused_on_refund();
    let undisturbed = given(&saga.def, &[start(), ok(0), ok(1), refused(2)]);

    let t = saga.when(retry());

    assert_eq!(
        t.effects,
        vec![
            Effect::SendCommand(retried_undo(1, 1, 1)),
            timer(saga.now + undo_deadline(&saga.def, 1))
        ]
    );
    assert_eq!(t.state.status, Status::Compensating);
    assert_eq!(t.state.cursor, 1);
    assert_eq!(t.state.steps[1].state, S::Compensating);
    assert_eq!(t.state.steps[1].compensation_attempts, 1);
    assert_eq!(t.state.steps[1].compensation_generation, 1);
    assert_eq!(t.state.in_flight(), Some(retried_undo(1, 1, 1)));
    // Compensating again: it reports why it compensates, not the pause.
    assert_eq!(t.state.failed_step, Some(2));
    assert_eq!(t.state.reason, undisturbed.state.reason);
    assert_eq!(note_kind(&t), Some("retry_requested"));
}

#[test]
fn a_retry_of_a_refused_undo_sends_a_new_command() {
    let def = order::definition();
    let saga = given(&def, &[start(), ok(0), ok(1), refused(2), undo_refused(1)]);

    let t = saga.when(retry());

    // Generation 1: a command id the participant has not answered yet.
    assert_eq!(t.effects[0], Effect::SendCommand(retried_undo(1, 1, 1)));
    assert_eq!(t.state.steps[1].state, S::Compensating);
}

#[test]
fn a_retried_undo_that_succeeds_runs_the_rest_to_compensated() {
    let (mut history, _) = order_paused_on_refund();
    history.extend([retry(), undone(1)]);
    let saga = given(&order::definition(), &history);
    assert_eq!(saga.state.in_flight(), Some(undo(0, 1)));

    let t = saga.when(undone(0));

    assert_eq!(t.effects, vec![finish(Status::Compensated)]);
    assert_eq!(
        states(&t.state),
        [S::Compensated, S::Compensated, S::Refused, S::NotStarted]
    );
    assert_eq!(t.state.failed_step, Some(2));
    assert!(
        t.state
            .reason
            .clone()
            .unwrap_or_default()
            .contains("reserve_inventory")
    );
}

#[test]
fn a_retry_before_the_fix_pauses_again_and_the_next_retry_is_the_next_generation() {
    let (mut history, saga) = order_paused_on_refund();
    let max = undo_attempts(&saga.def, 1);
    history.push(retry());
    // Still down: every attempt of the fresh budget times out.
    history.extend(timeouts(max - 1));
    let saga = given(&saga.def, &history);
    assert_eq!(saga.state.in_flight(), Some(retried_undo(1, max, 1)));
    history.push(timeout());
    let paused = given(&saga.def, &history);
    assert_eq!(paused.state.status, Status::CompensationFailed);
    assert_eq!(paused.state.failed_step, Some(1));

    let t = paused.when(retry());

    assert_eq!(t.effects[0], Effect::SendCommand(retried_undo(1, 1, 2)));
}

#[test]
fn a_retry_of_the_first_steps_undo_ends_compensated() {
    let def = order::definition();
    let saga = given(&def, &[start(), ok(0), refused(1), undo_refused(0)]);
    let t = saga.when(retry());
    assert_eq!(t.state.in_flight(), Some(retried_undo(0, 1, 1)));

    let done = given(
        &def,
        &[
            start(),
            ok(0),
            refused(1),
            undo_refused(0),
            retry(),
            undone(0),
        ],
    );
    assert_eq!(done.state.status, Status::Compensated);
    assert_eq!(done.state.failed_step, Some(1));
}

#[test]
fn a_retry_is_refused_unless_the_saga_is_paused() {
    let def = order::definition();
    let (history, _) = order_paused_on_refund();
    let resumed = [history, vec![retry()]].concat();
    let cases = [
        (vec![start()], Status::Running),
        (vec![start(), ok(0), refused(1)], Status::Compensating),
        // A second retry while the first is in flight.
        (resumed, Status::Compensating),
        (vec![start(), ok(0), ok(1), ok(2), ok(3)], Status::Completed),
        (vec![start(), refused(0)], Status::Compensated),
    ];
    for (history, status) in cases {
        let saga = given(&def, &history);
        let e = saga.try_when(retry()).expect_err("refused");
        assert_eq!(e, Error::NotRetryable { status });
        assert_eq!(
            e.to_string(),
            format!(
                "[SF1005] saga is {}; only COMPENSATION_FAILED sagas can be retried",
                status.as_str()
            )
        );
    }
}

#[test]
fn a_late_success_of_the_earlier_generation_counts_as_the_undo() {
    // The refund did happen after all, answered under the old command id
    // while the retry was in flight.
    let (mut history, _) = order_paused_on_refund();
    history.push(retry());
    let saga = given(&order::definition(), &history);

    let t = saga.when(undone(1));

    assert_eq!(t.state.steps[1].state, S::Compensated);
    assert_eq!(t.state.in_flight(), Some(undo(0, 1)));
}

#[test]
fn a_stale_refusal_after_a_retried_undo_succeeded_is_ignored() {
    let def = order::definition();
    let history = [
        start(),
        ok(0),
        ok(1),
        refused(2),
        undo_refused(1),
        retry(),
        undone(1),
    ];
    let saga = given(&def, &history);
    saga.assert_ignores(undo_refused(1));
    let done = given(&def, &[history.to_vec(), vec![undone(0)]].concat());
    done.assert_ignores(undo_refused(1));
    // Without a retry the same refusal contradicts the recorded success.
    let never_retried = given(&def, &[start(), ok(0), ok(1), refused(2), undone(1)]);
    assert!(matches!(
        never_retried.try_when(undo_refused(1)),
        Err(Error::Contradiction { .. })
    ));
}

// ---------------------------------------------------------------------------
// Scenarios: an operator cancels a running saga
// ---------------------------------------------------------------------------

#[test]
fn a_cancel_compensates_the_in_flight_step_first_then_the_earlier_ones() {
    let def = order::definition();
    let saga = given(&def, &[start(), ok(0), ok(1)]);

    let t = saga.when(cancel());

    // reserve_inventory's outcome is unknown: release first (a no-op, and a
    // tombstone, if it never reserved), then refund, then cancel the order.
    assert_eq!(
        t.effects,
        vec![send_undo(2, 1), timer(saga.now + undo_deadline(&def, 2))]
    );
    assert_eq!(t.state.status, Status::Compensating);
    assert_eq!(
        states(&t.state),
        [S::Succeeded, S::Succeeded, S::Compensating, S::NotStarted]
    );
    assert_eq!(t.state.failed_step, Some(2));
    assert_eq!(t.state.cancelled.as_deref(), Some(CANCEL_REASON));
    let reason = t.state.reason.clone().expect("a reason");
    assert!(
        reason.contains("cancelled") && reason.contains("reserve_inventory"),
        "{reason}"
    );
    assert!(reason.contains(CANCEL_REASON), "{reason}");
    assert_eq!(note_kind(&t), Some("cancel_requested"));

    let done = given(
        &def,
        &[
            start(),
            ok(0),
            ok(1),
            cancel(),
            undone(2),
            undone(1),
            undone(0),
        ],
    );
    assert_eq!(done.state.status, Status::Compensated);
    assert_eq!(
        states(&done.state),
        [
            S::Compensated,
            S::Compensated,
            S::Compensated,
            S::NotStarted
        ]
    );
    assert_eq!(done.state.reason, t.state.reason);
}

#[test]
fn a_cancel_of_the_first_step_undoes_only_it() {
    let def = order::definition();
    let t = given(&def, &[start(), timeout()]).when(cancel());
    assert_eq!(t.effects[0], send_undo(0, 1));
    let done = given(&def, &[start(), timeout(), cancel(), undone(0)]);
    assert_eq!(done.state.status, Status::Compensated);
    assert_eq!(done.state.failed_step, Some(0));
}

#[test]
fn a_late_action_outcome_of_the_cancelled_step_is_covered_by_its_compensation() {
    let def = order::definition();
    let cancelled = [start(), ok(0), ok(1), cancel()];
    // While its undo is in flight.
    let saga = given(&def, &cancelled);
    saga.assert_ignores(ok(2));
    // The participant saw the undo first and refused the action.
    saga.assert_ignores(refused(2));
    // Once it is undone, and once the saga is compensated.
    let undone_2 = given(&def, &[cancelled.to_vec(), vec![undone(2)]].concat());
    undone_2.assert_ignores(ok(2));
    undone_2.assert_ignores(refused(2));
    let done = given(
        &def,
        &[cancelled.to_vec(), vec![undone(2), undone(1), undone(0)]].concat(),
    );
    done.assert_ignores(ok(2));
    done.assert_ignores(refused(2));
}

#[test]
fn a_cancel_is_refused_past_the_pivot() {
    let def = order::definition();
    let saga = given(&def, &[start(), ok(0), ok(1), ok(2)]);
    let e = saga.try_when(cancel()).expect_err("past the pivot");
    assert_eq!(
        e,
        Error::PastPivot {
            step: 3,
            name: "approve_order".to_owned()
        }
    );
    assert!(e.to_string().contains("past its pivot"), "{e}");
}

#[test]
fn a_cancel_around_a_step_without_compensation() {
    let def = shipment();
    // print_label cannot be undone: it may be printing now.
    let printing = given(&def, &[start(), ok(0)]);
    assert!(matches!(
        printing.try_when(cancel()),
        Err(Error::PastPivot { step: 1, .. })
    ));
    // Once it is printed, a cancel of charge_fee undoes what it can, like a
    // refusal of charge_fee would.
    let t = given(&def, &[start(), ok(0), ok(1)]).when(cancel());
    assert_eq!(t.effects[0], send_undo(2, 1));
    let done = given(
        &def,
        &[start(), ok(0), ok(1), cancel(), undone(2), undone(0)],
    );
    assert_eq!(done.state.status, Status::Compensated);
    assert_eq!(
        states(&done.state),
        [S::Compensated, S::NotCompensated, S::Compensated]
    );
}

#[test]
fn a_cancel_of_a_compensating_saga_is_a_no_op() {
    let def = order::definition();
    given(&def, &[start(), ok(0), refused(1)]).assert_ignores(cancel());
}

#[test]
fn a_repeated_cancel_is_a_no_op_to_the_end() {
    let def = order::definition();
    let cancelled = [start(), ok(0), ok(1), cancel()];
    given(&def, &cancelled).assert_ignores(cancel());
    let done = [cancelled.to_vec(), vec![undone(2), undone(1), undone(0)]].concat();
    assert_terminal_ignores_duplicates(&def, &done, Status::Compensated);
    given(&def, &done).assert_ignores(cancel());
    let paused = [cancelled.to_vec(), vec![undone(2), undo_refused(1)]].concat();
    given(&def, &paused).assert_ignores(cancel());
}

#[test]
fn a_cancel_of_a_finished_saga_is_refused() {
    let def = order::definition();
    let cases = [
        (vec![start(), ok(0), ok(1), ok(2), ok(3)], Status::Completed),
        (vec![start(), refused(0)], Status::Compensated),
        (
            vec![start(), ok(0), refused(1), undo_refused(0)],
            Status::CompensationFailed,
        ),
    ];
    for (history, status) in cases {
        let e = given(&def, &history)
            .try_when(cancel())
            .expect_err("finished");
        assert_eq!(e, Error::NotCancellable { status });
        assert!(e.to_string().starts_with("[SF1006]"), "{e}");
    }
}

#[test]
fn a_cancelled_saga_whose_undo_fails_is_retried_and_still_reports_the_cancel() {
    let def = order::definition();
    let cancelled = [start(), ok(0), ok(1), cancel()];
    let reason = given(&def, &cancelled).state.reason;
    for undo_failed in [vec![undo_refused(2)], timeouts(undo_attempts(&def, 2))] {
        let paused = [cancelled.to_vec(), undo_failed].concat();
        let saga = given(&def, &paused);
        assert_eq!(saga.state.status, Status::CompensationFailed);
        assert_eq!(saga.state.failed_step, Some(2));

        for resume in [retry(), undone(2)] {
            let t = saga.when(resume.clone());
            assert_eq!(t.state.status, Status::Compensating, "{resume:?}");
            assert_eq!(t.state.failed_step, Some(2), "{resume:?}");
            assert_eq!(t.state.reason, reason, "{resume:?}");
        }
    }
}

#[test]
fn in_flight_carries_the_generation_of_a_retried_undo() {
    let (mut history, _) = order_paused_on_refund();
    history.extend([retry(), timeout()]);
    let saga = given(&order::definition(), &history);
    // What a restarted orchestrator re-sends: the retried command, not the
    // one the participant may have answered already.
    assert_eq!(saga.state.in_flight(), Some(retried_undo(1, 2, 1)));
}

// ---------------------------------------------------------------------------
// Scenarios: restart
// ---------------------------------------------------------------------------

#[test]
fn in_flight_names_the_command_to_resend_after_a_restart() {
    let def = order::definition();
    let pivot_overdue: Vec<Event> = [start(), ok(0), ok(1), ok(2)]
        .into_iter()
        .chain(timeouts(action_attempts(&def, 3)))
        .collect();
    let cases: Vec<(&str, Vec<Event>, Option<Command>)> = vec![
        ("not started", vec![], None),
        ("first action", vec![start()], Some(action(0, 1))),
        (
            "first action resent",
            vec![start(), timeout()],
            Some(action(0, 2)),
        ),
        (
            "third action",
            vec![start(), ok(0), ok(1)],
            Some(action(2, 1)),
        ),
        (
            "undo after refusal",
            vec![start(), ok(0), refused(1)],
            Some(undo(0, 1)),
        ),
        (
            "undo resent",
            vec![start(), ok(0), refused(1), timeout(), timeout()],
            Some(undo(0, 3)),
        ),
        (
            "overdue pivot resent",
            pivot_overdue,
            Some(action(3, action_attempts(&def, 3) + 1)),
        ),
        ("completed", vec![start(), ok(0), ok(1), ok(2), ok(3)], None),
        ("compensated", vec![start(), refused(0)], None),
        (
            "compensation failed",
            vec![start(), ok(0), refused(1), undo_refused(0)],
            None,
        ),
    ];
    for (name, history, expected) in cases {
        let saga = given(&def, &history);
        assert_eq!(saga.state.in_flight(), expected, "{name}");
        // What is in flight always has a timer pending.
        assert_eq!(saga.state.deadline.is_some(), expected.is_some(), "{name}");
    }
}

// ---------------------------------------------------------------------------
// Scenarios: errors
// ---------------------------------------------------------------------------

#[test]
fn an_outcome_for_a_step_out_of_range_is_unknown_step() {
    let def = shipment();
    let saga = given(&def, &[start()]);
    for step in [3, 4, usize::MAX] {
        for kind in [Kind::Action, Kind::Compensation] {
            for refused in [false, true] {
                assert_eq!(
                    saga.try_when(outcome(step, kind, refused)),
                    Err(Error::UnknownStep {
                        step,
                        saga_type: "shipment".to_owned(),
                        version: 7,
                    })
                );
            }
        }
    }
}

#[test]
fn a_state_with_another_number_of_steps_is_a_shape_mismatch() {
    let def = shipment();
    let order_state = given(&order::definition(), &[start()]).state;
    for state in [SagaState::new(0), SagaState::new(2), order_state] {
        for event in [start(), timeout(), ok(0), undone(0)] {
            assert_eq!(
                apply(&def, &state, &event, T0),
                Err(Error::ShapeMismatch {
                    found: state.steps.len(),
                    expected: 3,
                    saga_type: "shipment".to_owned(),
                    version: 7,
                })
            );
        }
    }
}

#[test]
fn an_outcome_for_a_command_never_sent_is_rejected() {
    let def = order::definition();
    let saga = given(&def, &[start()]);
    assert_eq!(
        saga.try_when(ok(2)),
        Err(Error::NeverSent {
            step: 2,
            kind: "action",
            status: Status::Running,
            state: S::NotStarted,
        })
    );
    assert_eq!(
        saga.try_when(undone(0)),
        Err(Error::NeverSent {
            step: 0,
            kind: "compensation",
            status: Status::Running,
            state: S::Pending,
        })
    );
}

#[test]
fn contradictory_outcomes_are_rejected() {
    let def = order::definition();
    assert_eq!(
        given(&def, &[start(), ok(0)]).try_when(refused(0)),
        Err(Error::Contradiction {
            step: 0,
            kind: "action",
            outcome: "refused",
            state: S::Succeeded,
        })
    );
    assert_eq!(
        given(&def, &[start(), refused(0)]).try_when(ok(0)),
        Err(Error::Contradiction {
            step: 0,
            kind: "action",
            outcome: "succeeded",
            state: S::Refused,
        })
    );
    assert_eq!(
        given(&def, &[start(), ok(0), refused(1), undone(0)]).try_when(undo_refused(0)),
        Err(Error::Contradiction {
            step: 0,
            kind: "compensation",
            outcome: "refused",
            state: S::Compensated,
        })
    );
}

#[test]
fn errors_carry_their_codes() {
    let def = shipment();
    let saga = given(&def, &[start()]);
    let codes: Vec<String> = [
        saga.try_when(ok(9)),
        saga.try_when(ok(2)),
        given(&def, &[start(), ok(0)]).try_when(refused(0)),
        apply(&def, &SagaState::new(1), &start(), T0),
        saga.try_when(retry()),
        given(&def, &[start(), refused(0)]).try_when(cancel()),
        given(&def, &[start(), ok(0)]).try_when(cancel()),
    ]
    .into_iter()
    .map(|r| r.expect_err("an error").to_string()[..8].to_owned())
    .collect();
    assert_eq!(
        codes,
        [
            "[SF1001]", "[SF1002]", "[SF1003]", "[SF1004]", "[SF1005]", "[SF1006]", "[SF1007]"
        ]
    );
}

// ---------------------------------------------------------------------------
// Exhaustive sweep
// ---------------------------------------------------------------------------

const STATUSES: [Status; 5] = [
    Status::Running,
    Status::Compensating,
    Status::Completed,
    Status::Compensated,
    Status::CompensationFailed,
];

const STEP_STATES: [StepState; 9] = [
    S::NotStarted,
    S::Pending,
    S::Succeeded,
    S::Refused,
    S::Unknown,
    S::Compensating,
    S::Compensated,
    S::NotCompensated,
    S::CompensationFailed,
];

/// Event variants, with an outcome's kind and decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Tag {
    Start,
    Timeout,
    Retry,
    Cancel,
    Outcome(Kind, bool),
}

const TAGS: [Tag; 8] = [
    Tag::Start,
    Tag::Timeout,
    Tag::Retry,
    Tag::Cancel,
    Tag::Outcome(Kind::Action, false),
    Tag::Outcome(Kind::Action, true),
    Tag::Outcome(Kind::Compensation, false),
    Tag::Outcome(Kind::Compensation, true),
];

/// Every event: Start, Timeout, the operator's Retry and Cancel, and each
/// kind × outcome for every step and for one step past the end.
fn every_event(def: &Definition) -> Vec<Event> {
    let mut events = vec![start(), timeout(), retry(), cancel()];
    for step in 0..=def.steps.len() {
        for tag in TAGS {
            if let Tag::Outcome(kind, refused) = tag {
                events.push(outcome(step, kind, refused));
            }
        }
    }
    events
}

fn tag_of(event: &Event) -> Tag {
    match event {
        Event::Start => Tag::Start,
        Event::Timeout => Tag::Timeout,
        Event::Retry => Tag::Retry,
        Event::Cancel { .. } => Tag::Cancel,
        Event::Outcome { kind, outcome, .. } => {
            Tag::Outcome(*kind, matches!(outcome, Outcome::Refused { .. }))
        }
    }
}

/// The step an event is about: an outcome's step, else the cursor.
fn target_of(state: &SagaState, event: &Event) -> usize {
    match event {
        Event::Outcome { step, .. } => *step,
        Event::Start | Event::Timeout | Event::Retry | Event::Cancel { .. } => state.cursor,
    }
}

/// The times at which to apply `event` to `state`: for a timer, before, at
/// and after the deadline.
fn times_for(state: &SagaState, event: &Event) -> Vec<Millis> {
    let due = state.deadline.unwrap_or(T0);
    match event {
        Event::Timeout => vec![due - 1, due, due + 1],
        Event::Start | Event::Retry | Event::Cancel { .. } | Event::Outcome { .. } => {
            vec![due - 1]
        }
    }
}

/// Apply, turning a panic into a failure that names the combination.
fn apply_or_report(
    def: &Definition,
    state: &SagaState,
    event: &Event,
    now: Millis,
) -> Result<Transition, Error> {
    catch_unwind(AssertUnwindSafe(|| apply(def, state, event, now)))
        .unwrap_or_else(|_| panic!("apply panicked on {event:?} at {now} with {state:?}"))
}

/// What must hold for any (state, event, now), however the state was made.
fn check_any(def: &Definition, input: &SagaState, event: &Event, now: Millis) {
    let result = apply_or_report(def, input, event, now);
    let ctx = format!("{event:?} at {now} on {input:?}");
    let n = def.steps.len();
    let t = match (event, result) {
        (_, Err(Error::ShapeMismatch { .. })) => panic!("{ctx}: shapes match"),
        (Event::Outcome { step, .. }, result) if *step >= n => {
            assert_eq!(
                result,
                Err(Error::UnknownStep {
                    step: *step,
                    saga_type: def.saga_type.clone(),
                    version: def.version,
                }),
                "{ctx}"
            );
            return;
        }
        (Event::Start | Event::Timeout, Err(e)) => panic!("{ctx}: a start or timer failed: {e}"),
        (Event::Outcome { .. }, Err(Error::UnknownStep { .. })) => panic!("{ctx}: step in range"),
        (
            Event::Outcome { step, kind, .. },
            Err(
                ref e @ Error::NeverSent {
                    step: s,
                    kind: k,
                    status,
                    state,
                },
            ),
        ) => {
            assert!(e.to_string().starts_with("[SF1002]"), "{ctx}: {e}");
            assert_eq!(
                (s, k, status, state),
                (*step, kind.as_str(), input.status, input.steps[*step].state),
                "{ctx}"
            );
            return;
        }
        (
            Event::Outcome {
                step,
                kind,
                outcome,
            },
            Err(
                ref e @ Error::Contradiction {
                    step: s,
                    kind: k,
                    outcome: o,
                    state,
                },
            ),
        ) => {
            assert!(e.to_string().starts_with("[SF1003]"), "{ctx}: {e}");
            let said = match outcome {
                Outcome::Succeeded => "succeeded",
                Outcome::Refused { .. } => "refused",
            };
            assert_eq!(
                (s, k, o, state),
                (*step, kind.as_str(), said, input.steps[*step].state),
                "{ctx}"
            );
            return;
        }
        (Event::Retry, Err(ref e @ Error::NotRetryable { status })) => {
            assert!(e.to_string().starts_with("[SF1005]"), "{ctx}: {e}");
            assert_eq!(status, input.status, "{ctx}");
            assert_ne!(
                status,
                Status::CompensationFailed,
                "{ctx}: paused, yet not retried"
            );
            return;
        }
        (Event::Cancel { .. }, Err(ref e @ Error::NotCancellable { status })) => {
            assert!(e.to_string().starts_with("[SF1006]"), "{ctx}: {e}");
            assert_eq!(status, input.status, "{ctx}");
            assert!(
                status.is_terminal(),
                "{ctx}: only a finished saga refuses a cancel"
            );
            assert!(
                status == Status::Completed || input.cancelled.is_none(),
                "{ctx}: a repeated cancel is a no-op"
            );
            return;
        }
        (Event::Cancel { .. }, Err(ref e @ Error::PastPivot { step, ref name })) => {
            assert!(e.to_string().starts_with("[SF1007]"), "{ctx}: {e}");
            assert_eq!(input.status, Status::Running, "{ctx}");
            assert_eq!(step, input.cursor, "{ctx}");
            assert_eq!(name, &def.steps[step].name, "{ctx}");
            assert!(def.steps[step].compensation.is_none(), "{ctx}");
            assert!(
                matches!(
                    input.steps[step].state,
                    S::Pending | S::Succeeded | S::Unknown
                ),
                "{ctx}: only a step that may have acted blocks a cancel"
            );
            return;
        }
        (Event::Retry | Event::Cancel { .. }, Err(e)) => {
            panic!("{ctx}: an operator event failed: {e}")
        }
        (
            Event::Outcome { .. },
            Err(
                e @ (Error::NotRetryable { .. }
                | Error::NotCancellable { .. }
                | Error::PastPivot { .. }),
            ),
        ) => panic!("{ctx}: an outcome failed with an operator error: {e}"),
        (_, Ok(t)) => t,
    };

    match &t.note {
        None => {
            assert_eq!(&t.state, input, "{ctx}: no note, yet the state changed");
            assert_eq!(t.effects, vec![], "{ctx}: no note, yet effects");
        }
        Some(note) => {
            assert_ne!(&t.state, input, "{ctx}: note {note:?} but nothing changed");
            match t.effects.as_slice() {
                // A late outcome, recorded.
                [] => {}
                [Effect::SendCommand(cmd), Effect::ScheduleTimeout { at }] => {
                    // Persist before acting: the new state names what is sent.
                    assert_eq!(t.state.in_flight(), Some(*cmd), "{ctx}");
                    assert_eq!(t.state.deadline, Some(*at), "{ctx}");
                    let p = match cmd.kind {
                        Kind::Action => def.steps[cmd.step].policy,
                        Kind::Compensation => def.steps[cmd.step].compensation_policy,
                    };
                    if cmd.attempt > p.max_attempts {
                        // Only a step that cannot be undone goes on past its
                        // attempts, waiting 2x, 4x, ... up to 32x as long.
                        assert_eq!(cmd.kind, Kind::Action, "{ctx}");
                        assert!(def.steps[cmd.step].compensation.is_none(), "{ctx}");
                        assert_eq!(note_kind(&t), Some("step_overdue"), "{ctx}");
                        let factor = 1i64 << (cmd.attempt - p.max_attempts).min(5);
                        assert_eq!(*at, now + factor * ms(p.deadline), "{ctx}");
                        assert!(t.state.reason.is_some(), "{ctx}");
                    } else {
                        assert_eq!(*at, now + ms(p.deadline), "{ctx}");
                        assert!(cmd.attempt >= 1, "{ctx}");
                    }
                    let status = match cmd.kind {
                        Kind::Action => Status::Running,
                        Kind::Compensation => Status::Compensating,
                    };
                    assert_eq!(t.state.status, status, "{ctx}");
                }
                [Effect::Finish(status)] => {
                    assert!(status.is_terminal(), "{ctx}");
                    assert_eq!(t.state.status, *status, "{ctx}");
                    assert_eq!(t.state.deadline, None, "{ctx}");
                }
                other => panic!("{ctx}: malformed effects {other:?}"),
            }
        }
    }

    // Terminal sagas stay put. The exceptions are documented: a paused saga
    // whose failed undo turns out to have succeeded resumes, and so does one
    // an operator retries.
    match input.status {
        Status::Completed | Status::Compensated => {
            assert_eq!(t.note, None, "{ctx}: a terminal saga changed");
        }
        // Or an operator retries it (checked below).
        Status::CompensationFailed if t.note.is_some() && *event == retry() => {}
        Status::CompensationFailed if t.note.is_some() => {
            let cursor = input.cursor;
            assert_eq!(
                event,
                &undone(cursor),
                "{ctx}: only the failed undo's success resumes"
            );
            assert_eq!(input.steps[cursor].state, S::CompensationFailed, "{ctx}");
            assert_eq!(t.state.steps[cursor].state, S::Compensated, "{ctx}");
            for effect in &t.effects {
                if let Effect::SendCommand(cmd) = effect {
                    assert_eq!(cmd.kind, Kind::Compensation, "{ctx}");
                    assert!(cmd.step < cursor, "{ctx}");
                }
            }
        }
        Status::CompensationFailed | Status::Running | Status::Compensating => {}
    }

    check_operator_event(def, input, event, &t, &ctx);
}

/// What an accepted Retry or Cancel must have done.
fn check_operator_event(
    def: &Definition,
    input: &SagaState,
    event: &Event,
    t: &Transition,
    ctx: &str,
) {
    let cursor = input.cursor;
    let sent: Vec<Command> = t
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::SendCommand(cmd) => Some(*cmd),
            Effect::ScheduleTimeout { .. } | Effect::Finish(_) => None,
        })
        .collect();
    match event {
        Event::Retry => {
            // Refusals returned earlier: only a paused saga gets here, and
            // it always resumes, sending nothing forward.
            assert_eq!(input.status, Status::CompensationFailed, "{ctx}");
            assert!(t.note.is_some(), "{ctx}: a retry did nothing");
            assert_eq!(note_kind(t), Some("retry_requested"), "{ctx}");
            assert!(
                matches!(t.state.status, Status::Compensating | Status::Compensated),
                "{ctx}"
            );
            for cmd in &sent {
                assert_eq!(cmd.kind, Kind::Compensation, "{ctx}");
                assert!(cmd.step <= cursor, "{ctx}");
                assert_eq!(cmd.attempt, 1, "{ctx}: a retry has a fresh budget");
                if cmd.step == cursor {
                    // A new command: the participant decides afresh.
                    assert_eq!(
                        cmd.generation,
                        input.steps[cursor].compensation_generation + 1,
                        "{ctx}"
                    );
                }
            }
        }
        Event::Cancel { reason } => match input.status {
            Status::Running => {
                assert_eq!(note_kind(t), Some("cancel_requested"), "{ctx}");
                assert_eq!(t.state.cancelled.as_deref(), Some(reason.as_str()), "{ctx}");
                assert_eq!(t.state.failed_step, Some(cursor), "{ctx}");
                let why = t.state.reason.clone().unwrap_or_default();
                assert!(why.contains(reason.as_str()), "{ctx}: reason {why}");
                assert!(
                    matches!(t.state.status, Status::Compensating | Status::Compensated),
                    "{ctx}"
                );
                for cmd in &sent {
                    assert_eq!(cmd.kind, Kind::Compensation, "{ctx}");
                    assert!(cmd.step <= cursor, "{ctx}");
                    assert!(def.steps[cmd.step].compensation.is_some(), "{ctx}");
                }
                // The in-flight step is undone first.
                if input.steps[cursor].state == S::Pending {
                    assert_eq!(sent.first().map(|c| c.step), Some(cursor), "{ctx}");
                }
            }
            // Already going backward, or a repeat of the cancel that ended it.
            Status::Compensating | Status::Compensated | Status::CompensationFailed => {
                assert_eq!(t.note, None, "{ctx}: a repeated cancel changed the saga");
            }
            Status::Completed => panic!("{ctx}: a completed saga accepted a cancel"),
        },
        Event::Start | Event::Timeout | Event::Outcome { .. } => {}
    }
}

/// How a hand-built state fills the steps other than the cursor.
#[derive(Debug, Clone, Copy)]
enum Fill {
    /// Succeeded below the cursor, not started above: running forward.
    Forward,
    /// Succeeded below the cursor, compensated above: running backward.
    Backward,
    /// The same state everywhere, however implausible.
    All(StepState),
}

const FILLS: [Fill; 11] = [
    Fill::Forward,
    Fill::Backward,
    Fill::All(S::NotStarted),
    Fill::All(S::Pending),
    Fill::All(S::Succeeded),
    Fill::All(S::Refused),
    Fill::All(S::Unknown),
    Fill::All(S::Compensating),
    Fill::All(S::Compensated),
    Fill::All(S::NotCompensated),
    Fill::All(S::CompensationFailed),
];

impl Fill {
    fn at(self, i: usize, cursor: usize) -> StepState {
        match self {
            Fill::Forward if i < cursor => S::Succeeded,
            Fill::Forward => S::NotStarted,
            Fill::Backward if i < cursor => S::Succeeded,
            Fill::Backward => S::Compensated,
            Fill::All(state) => state,
        }
    }
}

/// Hand-built states: every status, cursor and step state at the cursor,
/// with the other steps filled in plausibly or uniformly, with and without a
/// deadline, with no, one and all attempts spent.
fn hand_built_states(def: &Definition) -> Vec<SagaState> {
    let n = def.steps.len();
    let mut out = Vec::new();
    for status in STATUSES {
        for cursor in 0..n {
            for target in STEP_STATES {
                for fill in FILLS {
                    for deadline in [None, Some(T0)] {
                        for spent in 0..3 {
                            let steps = (0..n)
                                .map(|i| StepRecord {
                                    state: if i == cursor {
                                        target
                                    } else {
                                        fill.at(i, cursor)
                                    },
                                    attempts: [0, 1, action_attempts(def, i)][spent],
                                    compensation_attempts: [0, 1, undo_attempts(def, i)][spent],
                                    compensation_generation: spent as u32,
                                    reason: None,
                                })
                                .collect();
                            let running = status == Status::Running;
                            out.push(SagaState {
                                status,
                                cursor,
                                steps,
                                deadline,
                                reason: (!running).then(|| "built by hand".to_owned()),
                                failed_step: (!running).then_some(cursor),
                                cancelled: (spent == 1).then(|| "built by hand".to_owned()),
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

#[test]
fn every_status_step_state_and_event_is_handled() {
    let def = shipment();
    let events = every_event(&def);
    let mut seen = HashSet::new();
    let mut applied = 0;
    for state in hand_built_states(&def) {
        for event in &events {
            for now in times_for(&state, event) {
                check_any(&def, &state, event, now);
                applied += 1;
            }
            let target = target_of(&state, event);
            if let Some(rec) = state.steps.get(target) {
                seen.insert((state.status, rec.state.as_str(), tag_of(event)));
            }
        }
    }
    assert_eq!(seen.len(), STATUSES.len() * STEP_STATES.len() * TAGS.len());
    assert!(applied > 100_000, "{applied}");
}

/// Every state a fresh saga can reach by events the machine accepts, with
/// deadlines relative to an outcome arriving just before them.
fn reachable_states(def: &Definition) -> Vec<SagaState> {
    // Deadlines are relative; retries beyond the first add nothing new but
    // would never end.
    let key = |s: &SagaState| {
        let mut s = s.clone();
        s.deadline = s.deadline.map(|_| 0);
        for (i, r) in s.steps.iter_mut().enumerate() {
            r.compensation_generation = r.compensation_generation.min(1);
            // An overdue step is re-sent for ever: two re-sends show it all.
            r.attempts = r.attempts.min(action_attempts(def, i) + 2);
        }
        s.reason = s
            .reason
            .map(|r| r.replace(|c: char| c.is_ascii_digit(), ""));
        format!("{s:?}")
    };
    let fresh = SagaState::new(def.steps.len());
    let mut seen = HashSet::from([key(&fresh)]);
    let mut queue = VecDeque::from([fresh.clone()]);
    let mut out = vec![fresh];
    while let Some(state) = queue.pop_front() {
        for event in every_event(def) {
            let now = match event {
                Event::Timeout => state.deadline.unwrap_or(T0),
                _ => state.deadline.unwrap_or(T0) - 1,
            };
            if let Ok(t) = apply(def, &state, &event, now)
                && t.note.is_some()
                && seen.insert(key(&t.state))
            {
                queue.push_back(t.state.clone());
                out.push(t.state);
            }
        }
        assert!(out.len() < 100_000, "the reachable state space is small");
    }
    out
}

/// What every reachable state looks like, by status.
fn check_reachable_shape(def: &Definition, s: &SagaState) {
    let c = s.cursor;
    let below_ok = s.steps[..c].iter().all(|r| r.state == S::Succeeded);
    let above_done = s.steps[c + 1..].iter().all(|r| {
        matches!(
            r.state,
            S::NotStarted | S::Refused | S::Compensated | S::NotCompensated
        )
    });
    let ctx = format!("{s:?}");
    match s.status {
        Status::Running => {
            assert!(below_ok, "{ctx}");
            assert!(
                s.steps[c + 1..].iter().all(|r| r.state == S::NotStarted),
                "{ctx}"
            );
            assert!(
                matches!(s.steps[c].state, S::NotStarted | S::Pending),
                "{ctx}"
            );
            assert_eq!(
                s.deadline.is_some(),
                s.steps[c].state == S::Pending,
                "{ctx}"
            );
            // A running saga gives a reason only while a step that cannot
            // be undone is overdue.
            let overdue = s.steps[c].attempts > action_attempts(def, c);
            assert_eq!(s.reason.is_some(), overdue, "{ctx}");
            assert!(!overdue || def.steps[c].compensation.is_none(), "{ctx}");
            assert_eq!(s.failed_step, None, "{ctx}");
        }
        Status::Compensating => {
            assert!(below_ok && above_done, "{ctx}");
            assert_eq!(s.steps[c].state, S::Compensating, "{ctx}");
            assert!(def.steps[c].compensation.is_some(), "{ctx}");
            assert!(s.deadline.is_some() && s.failed_step.is_some(), "{ctx}");
        }
        Status::CompensationFailed => {
            assert!(below_ok && above_done, "{ctx}");
            assert_eq!(s.steps[c].state, S::CompensationFailed, "{ctx}");
            assert_eq!(s.failed_step, Some(c), "{ctx}");
            assert!(s.reason.is_some() && s.deadline.is_none(), "{ctx}");
        }
        Status::Completed => {
            assert!(s.steps.iter().all(|r| r.state == S::Succeeded), "{ctx}");
            assert_eq!(s.deadline, None, "{ctx}");
        }
        Status::Compensated => {
            assert!(
                s.steps.iter().all(|r| matches!(
                    r.state,
                    S::NotStarted | S::Refused | S::Compensated | S::NotCompensated
                )),
                "{ctx}"
            );
            assert!(s.deadline.is_none() && s.failed_step.is_some(), "{ctx}");
        }
    }
    // A cancelled saga never runs forward again, and only its steps that
    // were undone (or are being) were retried.
    if s.cancelled.is_some() {
        assert!(
            !matches!(s.status, Status::Running | Status::Completed),
            "{ctx}"
        );
        assert_eq!(s.cancelled.as_deref(), Some(CANCEL_REASON), "{ctx}");
    }
    for r in &s.steps {
        assert!(
            r.compensation_generation == 0
                || matches!(
                    r.state,
                    S::Compensating | S::Compensated | S::CompensationFailed
                ),
            "{ctx}"
        );
    }
    // Nothing else is pending, and no step is left unknown.
    for (i, r) in s.steps.iter().enumerate() {
        assert!(
            i == c || !matches!(r.state, S::Pending | S::Compensating | S::Unknown),
            "{ctx}"
        );
        assert!(
            r.attempts <= action_attempts(def, i) || def.steps[i].compensation.is_none(),
            "{ctx}"
        );
        assert!(r.compensation_attempts <= undo_attempts(def, i), "{ctx}");
    }
    assert_eq!(
        s.in_flight().is_some(),
        !s.status.is_terminal() && s.deadline.is_some(),
        "{ctx}"
    );
}

/// The order saga's shape with two attempts per command, to keep the
/// reachable space small.
fn order_with_two_attempts() -> Definition {
    let mut def = order::definition();
    for step in &mut def.steps {
        step.policy.max_attempts = 2;
        step.compensation_policy.max_attempts = 2;
    }
    def
}

#[test]
fn every_reachable_state_handles_every_event() {
    for def in [shipment(), order_with_two_attempts()] {
        let reachable = reachable_states(&def);
        assert!(
            reachable.len() > 100,
            "{}: {}",
            def.saga_type,
            reachable.len()
        );
        let statuses: HashSet<Status> = reachable.iter().map(|s| s.status).collect();
        assert_eq!(statuses.len(), STATUSES.len(), "{}", def.saga_type);
        let events = every_event(&def);
        for state in &reachable {
            check_reachable_shape(&def, state);
            for event in &events {
                for now in times_for(state, event) {
                    check_any(&def, state, event, now);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Property tests: a random world and a random scheduler
// ---------------------------------------------------------------------------

/// How a participant answers one kind of command for one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    Succeeds,
    Refuses,
    /// Never answers: its commands time out.
    Lost,
    /// Answers only once the saga has given up on the command: the outcome
    /// arrives after every attempt timed out.
    LateSucceeds,
    LateRefuses,
}

#[derive(Clone)]
struct World {
    def: Definition,
    action: Vec<Reply>,
    undo: Vec<Reply>,
}

impl fmt::Debug for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "World {{ {}, action: {:?}, undo: {:?} }}",
            self.def.saga_type, self.action, self.undo
        )
    }
}

impl World {
    fn uniform(def: &Definition, action: Reply, undo: Reply) -> World {
        World {
            def: def.clone(),
            action: vec![action; def.steps.len()],
            undo: vec![undo; def.steps.len()],
        }
    }

    /// The outcome event a participant publishes for `cmd`, if any, and
    /// whether it is held back until the saga gives up on the command. It is
    /// the same for every send of one command (the participant dedupes).
    /// An operator's first retry of an undo comes before the cause is fixed
    /// (the same answer); from the second on, the undo succeeds.
    fn reply(&self, cmd: Command) -> Option<(Event, bool)> {
        let reply = match (cmd.kind, cmd.generation) {
            // A step that cannot be undone is re-sent until it answers: its
            // outage ends (one that never does leaves the saga RUNNING, see
            // the scenarios).
            (Kind::Action, _)
                if self.action[cmd.step] == Reply::Lost
                    && self.def.steps[cmd.step].compensation.is_none() =>
            {
                Reply::LateSucceeds
            }
            (Kind::Action, _) => self.action[cmd.step],
            (Kind::Compensation, 0 | 1) => self.undo[cmd.step],
            (Kind::Compensation, _) => Reply::Succeeds,
        };
        match reply {
            Reply::Succeeds => Some((outcome(cmd.step, cmd.kind, false), false)),
            Reply::Refuses => Some((outcome(cmd.step, cmd.kind, true), false)),
            Reply::Lost => None,
            Reply::LateSucceeds => Some((outcome(cmd.step, cmd.kind, false), true)),
            Reply::LateRefuses => Some((outcome(cmd.step, cmd.kind, true), true)),
        }
    }

    /// What the saga must do in this world, worked out without the machine:
    /// every command it sends, and where it ends.
    fn expected(&self) -> (Vec<Command>, Status) {
        let mut sends = Vec::new();
        let mut undo_from = None;
        for i in 0..self.def.steps.len() {
            match self.action[i] {
                Reply::Succeeds => sends.push(action(i, 1)),
                Reply::Refuses => {
                    sends.push(action(i, 1));
                    undo_from = Some(i.checked_sub(1));
                    break;
                }
                // A step that cannot be undone is sent once more after its
                // attempts, and then its late outcome arrives.
                reply @ (Reply::Lost | Reply::LateSucceeds | Reply::LateRefuses)
                    if self.def.steps[i].compensation.is_none() =>
                {
                    sends.extend((1..=action_attempts(&self.def, i) + 1).map(|a| action(i, a)));
                    if reply == Reply::LateRefuses {
                        undo_from = Some(i.checked_sub(1));
                        break;
                    }
                }
                // A late outcome arrives once the step is already unknown.
                Reply::Lost | Reply::LateSucceeds | Reply::LateRefuses => {
                    sends.extend((1..=action_attempts(&self.def, i)).map(|a| action(i, a)));
                    undo_from = Some(Some(i));
                    break;
                }
            }
        }
        let Some(from) = undo_from else {
            return (sends, Status::Completed);
        };
        // A refusal of step 0 leaves nothing to undo.
        let below = from.map_or(0, |f| f + 1);
        for i in (0..below).rev() {
            if self.def.steps[i].compensation.is_none() {
                continue;
            }
            match self.undo[i] {
                Reply::Succeeds => sends.push(undo(i, 1)),
                Reply::Refuses => {
                    sends.push(undo(i, 1));
                    return (sends, Status::CompensationFailed);
                }
                Reply::Lost | Reply::LateRefuses => {
                    sends.extend((1..=undo_attempts(&self.def, i)).map(|a| undo(i, a)));
                    return (sends, Status::CompensationFailed);
                }
                // Paused, then resumed by the late success.
                Reply::LateSucceeds => {
                    sends.extend((1..=undo_attempts(&self.def, i)).map(|a| undo(i, a)));
                }
            }
        }
        (sends, Status::Compensated)
    }
}

fn fail(msg: String) -> TestCaseError {
    TestCaseError::fail(msg)
}

/// One saga driven through a world, checking every transition as it goes.
struct Run<'w> {
    world: &'w World,
    state: SagaState,
    now: Millis,
    /// Published outcome events not yet delivered (Pub/Sub in flight).
    pool: Vec<Event>,
    /// Late answers, published once their command is no longer in flight.
    held: Vec<(Command, Event)>,
    /// Events delivered at least once, for redelivery.
    delivered: Vec<Event>,
    /// Every command sent, in order.
    sends: Vec<Command>,
    finishes: Vec<Status>,
    /// The saga has left `Running`.
    compensation_began: bool,
    /// Steps whose action refusal has been delivered.
    known_refused: Vec<bool>,
    /// The scheduler may fire a due timer while an answer is in flight.
    impatient: bool,
    /// An operator may cancel, and retries paused sagas.
    operator: bool,
    /// An operator's cancel changed the saga.
    cancelled: bool,
    /// Operator retries applied.
    retries: u32,
}

/// More than any run needs: each retry after the first succeeds unless a
/// stale refusal of an earlier generation pauses it again.
const MAX_RETRIES: u32 = 1_000;

impl<'w> Run<'w> {
    fn start(world: &'w World, impatient: bool, operator: bool) -> Result<Run<'w>, TestCaseError> {
        let mut run = Run {
            world,
            state: SagaState::new(world.def.steps.len()),
            now: T0,
            pool: Vec::new(),
            held: Vec::new(),
            delivered: Vec::new(),
            sends: Vec::new(),
            finishes: Vec::new(),
            compensation_began: false,
            known_refused: vec![false; world.def.steps.len()],
            impatient,
            operator,
            cancelled: false,
            retries: 0,
        };
        let note = run.deliver(start())?;
        prop_assert!(note.is_some(), "Start did nothing");
        Ok(run)
    }

    /// Apply `event` now and check the transition.
    fn deliver(&mut self, event: Event) -> Result<Option<Note>, TestCaseError> {
        let def = &self.world.def;
        // (e) Whatever the world really produced is accepted.
        let t = apply(def, &self.state, &event, self.now).map_err(|e| {
            fail(format!(
                "(e) the world produced {event:?}, apply failed: {e}\nstate: {:?}",
                self.state
            ))
        })?;
        if let Event::Outcome {
            step,
            kind: Kind::Action,
            outcome: Outcome::Refused { .. },
        } = event
        {
            self.known_refused[step] = true;
        }
        if t.note.is_none() {
            prop_assert_eq!(&t.state, &self.state, "no note, yet a change");
            prop_assert!(t.effects.is_empty(), "no note, yet effects");
        }
        for effect in &t.effects {
            match *effect {
                Effect::SendCommand(cmd) => self.on_send(cmd, &t.state)?,
                Effect::ScheduleTimeout { at } => {
                    prop_assert_eq!(t.state.deadline, Some(at));
                    prop_assert!(at > self.now, "a timer in the past");
                }
                Effect::Finish(status) => {
                    prop_assert_eq!(t.state.status, status);
                    self.finishes.push(status);
                }
            }
        }
        if t.state.status != Status::Running {
            self.compensation_began = true;
        }
        // What at-least-once delivery may repeat: the participants' events,
        // and an operator's cancel (a client retrying its call).
        let repeatable = match event {
            Event::Start | Event::Outcome { .. } => true,
            Event::Cancel { .. } => t.note.is_some(),
            Event::Timeout | Event::Retry => false,
        };
        self.state = t.state;
        self.release_held();
        if repeatable {
            self.delivered.push(event);
        }
        Ok(t.note)
    }

    /// An operator's event: applied if the machine accepts it, else the
    /// refusal must be the documented one.
    fn operate(&mut self, event: Event) -> Result<(), TestCaseError> {
        let def = &self.world.def;
        match apply(def, &self.state, &event, self.now) {
            Ok(_) => {
                let note = self.deliver(event.clone())?;
                match event {
                    Event::Cancel { .. } => self.cancelled |= note.is_some(),
                    Event::Retry => {
                        prop_assert!(note.is_some(), "a retry of a paused saga did nothing");
                        self.retries += 1;
                    }
                    Event::Start | Event::Timeout | Event::Outcome { .. } => {}
                }
                Ok(())
            }
            Err(Error::PastPivot { step, .. }) => {
                prop_assert!(def.steps[step].compensation.is_none());
                prop_assert_eq!(self.state.status, Status::Running);
                Ok(())
            }
            Err(Error::NotCancellable { status }) => {
                prop_assert!(status.is_terminal() && !self.cancelled);
                Ok(())
            }
            Err(Error::NotRetryable { status }) => {
                prop_assert_ne!(status, Status::CompensationFailed);
                Ok(())
            }
            Err(e) => Err(fail(format!(
                "{event:?} failed: {e}\nstate: {:?}",
                self.state
            ))),
        }
    }

    /// A repeat of a compensation outcome for a step an operator retried:
    /// the store drops it by event id, and the machine cannot tell it from
    /// the answer to the retried command (events carry no generation).
    fn answer_of_an_earlier_generation(&self, event: &Event) -> bool {
        match event {
            Event::Outcome {
                step,
                kind: Kind::Compensation,
                ..
            } => self.state.steps[*step].compensation_generation > 0,
            Event::Outcome {
                kind: Kind::Action, ..
            }
            | Event::Start
            | Event::Timeout
            | Event::Retry
            | Event::Cancel { .. } => false,
        }
    }

    fn on_send(&mut self, cmd: Command, new: &SagaState) -> Result<(), TestCaseError> {
        let step = &self.world.def.steps[cmd.step];
        prop_assert_eq!(new.in_flight(), Some(cmd), "persist before acting");
        let earlier = |kind: Kind| {
            self.sends
                .iter()
                .filter(|c| c.kind == kind && c.step == cmd.step)
                .count()
        };
        match cmd.kind {
            Kind::Action => {
                // (d)
                prop_assert!(
                    !self.compensation_began && new.status == Status::Running,
                    "(d) action {:?} after compensation began",
                    cmd
                );
                prop_assert_eq!(cmd.attempt as usize, earlier(Kind::Action) + 1);
                prop_assert!(
                    cmd.attempt <= step.policy.max_attempts || step.compensation.is_none()
                );
            }
            Kind::Compensation => {
                // (c)
                prop_assert!(
                    step.compensation.is_some(),
                    "(c) undo of {} which has no compensation",
                    step.name
                );
                prop_assert!(earlier(Kind::Action) > 0, "(c) undo of a step never sent");
                let last = self
                    .sends
                    .iter()
                    .rev()
                    .find(|c| c.kind == Kind::Compensation);
                match last {
                    Some(last) if last.step == cmd.step && last.generation == cmd.generation => {
                        prop_assert_eq!(
                            cmd.attempt,
                            last.attempt + 1,
                            "(c) undo of step {} resent out of turn",
                            cmd.step
                        )
                    }
                    // An operator's retry: a new command, a fresh budget.
                    Some(last) if last.step == cmd.step => {
                        prop_assert_eq!(cmd.generation, last.generation + 1);
                        prop_assert_eq!(cmd.attempt, 1);
                    }
                    Some(last) => {
                        prop_assert!(cmd.step < last.step, "(c) undo {:?} after {:?}", cmd, last);
                        prop_assert_eq!(cmd.attempt, 1);
                    }
                    None => prop_assert_eq!(cmd.attempt, 1),
                }
                prop_assert_eq!(cmd.generation, new.steps[cmd.step].compensation_generation);
                // (An operator's retry re-sends an undo the saga already
                // committed to: a no-op at a participant that refused.)
                if cmd.attempt == 1 && cmd.generation == 0 {
                    prop_assert!(
                        !self.known_refused[cmd.step],
                        "(c) undo of step {} known to be refused",
                        cmd.step
                    );
                }
                prop_assert!(cmd.attempt <= step.compensation_policy.max_attempts);
            }
        }
        self.sends.push(cmd);
        match self.world.reply(cmd) {
            Some((reply, true)) => self.held.push((cmd, reply)),
            Some((reply, false)) => self.pool.push(reply),
            None => {}
        }
        Ok(())
    }

    /// Publish the late answers of commands the saga has given up on, or
    /// (for a step that cannot be undone) has run out of attempts for.
    fn release_held(&mut self) {
        let in_flight = self
            .state
            .in_flight()
            .map(|c| (c.step, c.kind, c.generation));
        let def = &self.world.def;
        let state = &self.state;
        let overdue = |cmd: &Command| {
            cmd.kind == Kind::Action
                && state.steps[cmd.step].attempts > def.steps[cmd.step].policy.max_attempts
        };
        let (still, late): (Vec<_>, Vec<_>) = self.held.drain(..).partition(|(cmd, _)| {
            Some((cmd.step, cmd.kind, cmd.generation)) == in_flight && !overdue(cmd)
        });
        self.held = still;
        self.pool.extend(late.into_iter().map(|(_, event)| event));
    }

    /// The answer to the command in flight is published but not delivered.
    fn answer_pending(&self) -> bool {
        let Some(cmd) = self.state.in_flight() else {
            return false;
        };
        self.pool.iter().any(|e| {
            matches!(e, Event::Outcome { step, kind, .. } if *step == cmd.step && *kind == cmd.kind)
        })
    }

    /// A due timer fires, if one is set and the scheduler may fire it.
    fn fire_due_timer(&mut self, extra: Millis) -> Result<bool, TestCaseError> {
        let Some(due) = self.state.deadline else {
            return Ok(false);
        };
        if !self.impatient && self.answer_pending() {
            return Ok(false);
        }
        self.now = self.now.max(due) + extra;
        let note = self.deliver(timeout())?;
        prop_assert!(note.is_some(), "a due timer was ignored");
        Ok(true)
    }

    /// One scheduler move.
    fn step(&mut self, mv: u8, pick: u16) -> Result<(), TestCaseError> {
        let pick = usize::from(pick);
        match mv {
            // Deliver a published event, in any order.
            0..=2 => {
                if !self.pool.is_empty() {
                    let event = self.pool.remove(pick % self.pool.len());
                    self.deliver(event)?;
                }
            }
            // Redeliver an event already delivered: at least once delivery.
            3 => {
                if !self.delivered.is_empty() {
                    let event = self.delivered[pick % self.delivered.len()].clone();
                    if self.answer_of_an_earlier_generation(&event) {
                        return Ok(());
                    }
                    let note = self.deliver(event.clone())?;
                    prop_assert!(note.is_none(), "redelivered {:?} changed the saga", event);
                }
            }
            // The relay publishes an event twice.
            4 => {
                if !self.pool.is_empty() {
                    let event = self.pool[pick % self.pool.len()].clone();
                    self.pool.push(event);
                }
            }
            // Time passes; events in flight grow late. An answer in flight
            // is delivered before its deadline unless the scheduler is
            // impatient.
            5 => {
                let mut to = self.now + 1 + (pick % 300) as Millis;
                if !self.impatient
                    && self.answer_pending()
                    && let Some(due) = self.state.deadline
                {
                    to = to.min(due - 1);
                }
                self.now = self.now.max(to);
            }
            // A timer fires early, or a stale one from an earlier command.
            6 => {
                if let Some(due) = self.state.deadline
                    && self.now < due
                {
                    let note = self.deliver(timeout())?;
                    prop_assert!(note.is_none(), "an early timer acted");
                }
            }
            // An operator cancels, now and then.
            8 if self.operator => {
                if pick % 8 == 0 {
                    self.operate(cancel())?;
                }
            }
            // An operator retries a paused saga.
            9 if self.operator => {
                if self.state.status == Status::CompensationFailed && self.retries < MAX_RETRIES {
                    self.operate(retry())?;
                }
            }
            // The timer fires when due.
            _ => {
                self.fire_due_timer((pick % 3) as Millis)?;
            }
        }
        Ok(())
    }

    /// Deliver what is left in order, firing due timers when nothing is,
    /// until the saga is terminal with nothing in flight. (a)
    fn drain(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..10_000 {
            if !self.pool.is_empty() {
                let event = self.pool.remove(0);
                self.deliver(event)?;
            } else if self.operator
                && self.state.status == Status::CompensationFailed
                && self.retries < MAX_RETRIES
            {
                self.operate(retry())?;
            } else if !self.state.status.is_terminal() {
                prop_assert!(
                    self.state.deadline.is_some(),
                    "(a) stuck: {:?} with no timer",
                    self.state
                );
                prop_assert!(self.fire_due_timer(0)?, "(a) the timer could not fire");
            } else {
                prop_assert!(self.held.is_empty(), "late answers never published");
                return Ok(());
            }
        }
        Err(fail(format!(
            "(a) not terminal after 10000 moves: {:?}",
            self.state
        )))
    }

    /// After the end, every duplicate and timer is ignored.
    fn replay_duplicates(&mut self) -> Result<(), TestCaseError> {
        for event in self.delivered.clone() {
            let note = self.deliver(event.clone())?;
            prop_assert!(note.is_none(), "{:?} after the end changed the saga", event);
        }
        self.now += 1_000_000_000;
        let note = self.deliver(timeout())?;
        prop_assert!(note.is_none(), "a timer after the end acted");
        Ok(())
    }
}

/// The world's events delivered once, in order; timers only when nothing
/// is in flight.
fn clean_run(world: &World) -> Result<Run<'_>, TestCaseError> {
    let mut run = Run::start(world, false, false)?;
    run.drain()?;
    Ok(run)
}

fn scheduled_run<'w>(
    world: &'w World,
    schedule: &[(u8, u16)],
    impatient: bool,
) -> Result<Run<'w>, TestCaseError> {
    operated_run(world, schedule, impatient, false)
}

/// A scheduled run in which an operator may also cancel (moves 8) and
/// retries paused sagas (moves 9, and whenever the saga pauses at the end).
fn operated_run<'w>(
    world: &'w World,
    schedule: &[(u8, u16)],
    impatient: bool,
    operator: bool,
) -> Result<Run<'w>, TestCaseError> {
    let mut run = Run::start(world, impatient, operator)?;
    for &(mv, pick) in schedule {
        run.step(mv, pick)?;
    }
    run.drain()?;
    run.replay_duplicates()?;
    Ok(run)
}

fn any_world() -> impl Strategy<Value = World> {
    let reply = || {
        prop_oneof![
            8 => Just(Reply::Succeeds),
            2 => Just(Reply::Refuses),
            2 => Just(Reply::Lost),
            1 => Just(Reply::LateSucceeds),
            1 => Just(Reply::LateRefuses),
        ]
    };
    (any::<bool>(), vec(reply(), 4), vec(reply(), 4)).prop_map(
        |(is_order, mut action, mut undo)| {
            let def = if is_order {
                order::definition()
            } else {
                shipment()
            };
            action.truncate(def.steps.len());
            undo.truncate(def.steps.len());
            World { def, action, undo }
        },
    )
}

fn any_schedule() -> impl Strategy<Value = Vec<(u8, u16)>> {
    vec((0u8..8, any::<u16>()), 0..300)
}

/// A schedule with operator moves too.
fn any_operator_schedule() -> impl Strategy<Value = Vec<(u8, u16)>> {
    vec((0u8..10, any::<u16>()), 0..300)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        // Only this file is ours to write: no regression files beside it.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// (a)–(e) with a scheduler that delivers answers before their deadline
    /// and times out only commands whose answer is not in flight (lost, or
    /// late: published only once the saga gave up on the command).
    #[test]
    fn any_schedule_ends_where_the_clean_run_ends(world in any_world(), schedule in any_schedule()) {
        let (expected_sends, expected_status) = world.expected();
        let clean = clean_run(&world)?;
        prop_assert_eq!(&clean.sends, &expected_sends);
        prop_assert_eq!(clean.state.status, expected_status);

        let run = scheduled_run(&world, &schedule, false)?;

        // (a) and (b)
        prop_assert_eq!(run.state.status, clean.state.status);
        prop_assert_eq!(&run.state, &clean.state);
        prop_assert_eq!(&run.sends, &clean.sends);
        prop_assert_eq!(&run.finishes, &clean.finishes);
        prop_assert_eq!(clean.finishes.last(), Some(&expected_status));
    }

    /// With timers that fire while answers are still in flight (so outcomes
    /// arrive after their step was resent or given up on), every run still
    /// ends, undoes what may have acted, and never sends out of turn.
    #[test]
    fn late_outcomes_and_impatient_timers_still_end_safely(world in any_world(), schedule in any_schedule()) {
        let run = scheduled_run(&world, &schedule, true)?;

        let end = run.state.status;
        prop_assert!(end.is_terminal());
        prop_assert_eq!(run.finishes.last(), Some(&end));
        let undos = run.sends.iter().any(|c| c.kind == Kind::Compensation);
        match end {
            Status::Completed => {
                prop_assert!(!undos);
                prop_assert_eq!(run.finishes.len(), 1);
            }
            Status::Compensated => {
                // It reports the forward failure, even after a pause.
                let last_sent = run.sends.iter().filter(|c| c.kind == Kind::Action).map(|c| c.step).max();
                prop_assert_eq!(run.state.failed_step, last_sent);
                let failed = &world.def.steps[last_sent.expect("an action was sent")].name;
                let reason = run.state.reason.clone().unwrap_or_default();
                prop_assert!(reason.starts_with(failed.as_str()), "reason: {}", reason);
                // Every effect undone: no step is left acted and not undone.
                for (i, rec) in run.state.steps.iter().enumerate() {
                    let sent = run.sends.iter().any(|c| c.kind == Kind::Action && c.step == i);
                    prop_assert!(
                        !sent || matches!(rec.state, S::Refused | S::Compensated | S::NotCompensated),
                        "step {} ends {:?}", i, rec.state
                    );
                }
            }
            Status::CompensationFailed => {
                let failed = run.state.failed_step.expect("a failed step");
                prop_assert_eq!(run.state.steps[failed].state, S::CompensationFailed);
            }
            Status::Running | Status::Compensating => unreachable!(),
        }
    }

    /// With an operator who cancels at random moments and retries paused
    /// sagas (the first retry of an undo comes before its cause is fixed,
    /// later ones after), every saga ends COMPLETED or COMPENSATED: never
    /// stuck or paused for good, nothing sent out of turn, everything that
    /// may have acted undone, and the reason names the failure or the cancel.
    #[test]
    fn an_operator_who_cancels_and_retries_ends_every_saga(
        world in any_world(),
        schedule in any_operator_schedule(),
        impatient in any::<bool>(),
    ) {
        let run = operated_run(&world, &schedule, impatient, true)?;

        let end = run.state.status;
        prop_assert!(matches!(end, Status::Completed | Status::Compensated), "ended {:?}", end);
        prop_assert_eq!(run.finishes.last(), Some(&end));
        let undos = run.sends.iter().any(|c| c.kind == Kind::Compensation);
        let last_sent = run.sends.iter().filter(|c| c.kind == Kind::Action).map(|c| c.step).max();
        if end == Status::Completed {
            prop_assert!(!undos && !run.cancelled && run.retries == 0);
        } else {
            prop_assert_eq!(run.state.failed_step, last_sent);
            let failed = &world.def.steps[last_sent.expect("an action was sent")].name;
            let reason = run.state.reason.clone().unwrap_or_default();
            let expected = if run.cancelled {
                format!("cancelled by an operator while {failed} was in flight: {CANCEL_REASON}")
            } else {
                failed.clone()
            };
            prop_assert!(reason.starts_with(&expected), "reason: {}", reason);
            prop_assert_eq!(run.state.cancelled.is_some(), run.cancelled);
            for (i, rec) in run.state.steps.iter().enumerate() {
                let sent = run.sends.iter().any(|c| c.kind == Kind::Action && c.step == i);
                let undoable = world.def.steps[i].compensation.is_some();
                prop_assert!(
                    !sent || matches!(rec.state, S::Refused | S::Compensated)
                        || (rec.state == S::NotCompensated && !undoable),
                    "step {} ends {:?}", i, rec.state
                );
            }
        }
        // Every retry was a new command.
        let generations = run
            .sends
            .iter()
            .filter(|c| c.kind == Kind::Compensation)
            .map(|c| c.generation)
            .max()
            .unwrap_or(0);
        prop_assert!(generations <= run.retries);
    }
}
