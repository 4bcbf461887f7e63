//! Scenarios, given/when/then, on the order saga and the shipment saga.

use super::super::*;
use super::fixtures::*;
use super::properties::{Reply, World, clean_run};
use crate::definitions::order;

use StepState as S;

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
    assert_eq!(saga.state.flying(), None);
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
    let saga = given(&def, &[start()]);
    let t = saga.when(ok(0));
    // charge_fee has a 50 ms deadline, unlike the 100 ms of the others.
    assert_eq!(t.effects, vec![send(1, 1), timer(T0 + 50)]);
    assert_eq!(t.state.cursor, 1);
    assert_eq!(states(&t.state), [S::Succeeded, S::Pending, S::NotStarted]);
    assert_eq!(note_kind(&t), Some("step_succeeded"));
}

#[test]
fn the_last_success_completes_the_saga_with_finish() {
    let def = order::definition();
    let saga = given(&def, &[start(), ok(0), ok(1), ok(2)]);
    assert_eq!(saga.state.flying(), Some(action(3, 1)));

    let t = saga.when(ok(3));

    assert_eq!(t.effects, vec![finish(Status::Completed)]);
    assert_eq!(t.state.status, Status::Completed);
    assert_eq!(t.state.deadline, None);
    assert_eq!(t.state.flying(), None);
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
    assert_eq!(t.state.flying(), Some(undo(1, 1)));
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
fn every_definition_here_is_valid_and_a_step_that_cannot_be_undone_comes_last() {
    for def in [order::definition(), shipment(), delivery(), trip()] {
        assert_eq!(def.validate(), Ok(()), "{}", def.saga_type);
    }
    let mut pivot_in_the_middle = shipment();
    pivot_in_the_middle.steps.swap(1, 2);
    assert!(pivot_in_the_middle.validate().is_err());
    let mut undoable_after_forward_only = delivery();
    undoable_after_forward_only.steps.swap(1, 4);
    assert!(undoable_after_forward_only.validate().is_err());
}

#[test]
fn a_refusal_of_the_step_that_cannot_be_undone_undoes_the_ones_below_it() {
    let def = shipment();
    let saga = given(&def, &[start(), ok(0), ok(1)]);

    let t = saga.when(refused(2));

    // print_label refused: it did nothing; charge_fee, then book_carrier.
    assert_eq!(
        t.effects,
        vec![send_undo(1, 1), timer(saga.now + undo_deadline(&def, 1))]
    );
    assert_eq!(
        states(&t.state),
        [S::Succeeded, S::Compensating, S::Refused]
    );
    assert_eq!(t.state.cursor, 1);
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
    assert_eq!(t.state.flying(), Some(action(1, 2)));
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
    // Step 0 succeeds 90 ms in: step 1 (50 ms) is due at T0 + 140.
    let saga = given(&def, &[start()]);
    let t = saga.when_at(ok(0), T0 + 90);
    let saga = Saga {
        state: t.state,
        now: T0 + 90,
        ..saga
    };
    assert_eq!(saga.state.deadline, Some(T0 + 140));

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
    assert_eq!(saga.state.flying(), Some(action(1, max)));

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
    assert_eq!(saga.state.flying(), Some(undo(0, 1)));
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
        saga.state.flying(),
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
    assert_eq!(t.state.flying(), Some(undo(2, 1)));
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
fn another_sagas_step_without_compensation_is_not_given_up_on_either() {
    let def = shipment();
    let mut history = vec![start(), ok(0), ok(1)];
    history.extend(timeouts(action_attempts(&def, 2) + 3));
    let saga = given(&def, &history);
    assert_eq!(saga.state.status, Status::Running);
    assert_eq!(
        saga.state.flying(),
        Some(action(2, action_attempts(&def, 2) + 4))
    );
    // Printed in the end: the saga completes.
    let t = saga.when(ok(2));
    assert_eq!(t.state.status, Status::Completed);
    assert_eq!(t.state.reason, None);
}

#[test]
fn huge_deadlines_saturate_instead_of_overflowing() {
    let mut def = shipment();
    for step in &mut def.steps {
        step.policy.deadline = std::time::Duration::MAX;
        step.compensation_policy.deadline = std::time::Duration::MAX;
    }
    for now in [T0, i64::MAX - 1, LATEST] {
        let t = apply(&def, &SagaState::new(3), &start(), now).expect("start");
        assert_eq!(t.effects, vec![send(0, 1), timer(LATEST)]);
        assert_eq!(t.state.deadline, Some(LATEST));
    }
    // An overdue step's stretched wait saturates too.
    let mut history = vec![start(), ok(0), ok(1)];
    history.extend(timeouts(action_attempts(&def, 2) + 1));
    let saga = given(&def, &history);
    assert_eq!(saga.state.deadline, Some(LATEST));
}

#[test]
fn a_compensation_timeout_resends_it_with_its_own_deadline() {
    let def = shipment();
    let saga = given(&def, &[start(), ok(0), refused(1)]);
    let due = saga.state.deadline.expect("a deadline");
    assert_eq!(due, saga.now + undo_deadline(&def, 0));

    let t = saga.when_at(timeout(), due);

    assert_eq!(
        t.effects,
        vec![send_undo(0, 2), timer(due + undo_deadline(&def, 0))]
    );
    assert_eq!(t.state.steps[0].compensation_attempts, 2);
    assert_eq!(t.state.flying(), Some(undo(0, 2)));
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
    assert_eq!(saga.state.flying(), Some(undo(1, max)));

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
    assert_eq!(t.state.flying(), None);
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
    assert_eq!(t.state.flying(), Some(undo(0, 1)));

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
    assert_eq!(saga.state.flying(), Some(undo(1, 1)));
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
    assert_eq!(t.state.flying(), Some(undo(0, 1)));
    assert_eq!(note_kind(&t), Some("late_outcome"));
}

#[test]
fn a_late_refusal_of_an_unknown_step_is_recorded() {
    let saga = compensating_with_step_unknown();

    let t = saga.when(refused(1));

    assert_eq!(t.effects, vec![]);
    assert_eq!(t.state.steps[1].state, S::Refused);
    assert_eq!(t.state.steps[1].reason.as_deref(), Some("over the limit"));
    assert_eq!(t.state.flying(), Some(undo(0, 1)));
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
    assert_eq!(saga.state.flying(), Some(undo(1, 1)));
    for event in history {
        saga.assert_ignores(event);
    }
}

/// A terminal saga ignores every event it has seen, a repeated Start and
/// any timer, like temporal's `cancels_ignored_terminal`.
fn assert_terminal_ignores_duplicates(def: &Definition, history: &[Event], status: Status) {
    let saga = given(def, history);
    assert_eq!(saga.state.status, status);
    assert_eq!(saga.state.flying(), None);
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
        &[start(), ok(0), ok(1), refused(2), undone(1), undone(0)],
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
    assert_eq!(t.state.flying(), Some(retried_undo(1, 1, 1)));
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
    assert_eq!(saga.state.flying(), Some(undo(0, 1)));

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
    assert_eq!(saga.state.flying(), Some(retried_undo(1, max, 1)));
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
    assert_eq!(t.state.flying(), Some(retried_undo(0, 1, 1)));

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
                "[SF1005] saga is {}; only COMPENSATION_FAILED and SUSPENDED sagas can be retried",
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
    assert_eq!(t.state.flying(), Some(undo(0, 1)));
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
fn a_cancel_before_and_at_a_step_without_compensation() {
    let def = shipment();
    // print_label cannot be undone: it may be printing now.
    let printing = given(&def, &[start(), ok(0), ok(1)]);
    assert!(matches!(
        printing.try_when(cancel()),
        Err(Error::PastPivot { step: 2, .. })
    ));
    // Before it, a cancel of charge_fee undoes it first, then book_carrier.
    let t = given(&def, &[start(), ok(0)]).when(cancel());
    assert_eq!(t.effects[0], send_undo(1, 1));
    let done = given(&def, &[start(), ok(0), cancel(), undone(1), undone(0)]);
    assert_eq!(done.state.status, Status::Compensated);
    assert_eq!(
        states(&done.state),
        [S::Compensated, S::Compensated, S::NotStarted]
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
    assert_eq!(saga.state.flying(), Some(retried_undo(1, 2, 1)));
}

// ---------------------------------------------------------------------------
// Scenarios: a parallel group
// ---------------------------------------------------------------------------

/// The three bookings of the trip saga (steps 0, 1, 2) in flight.
fn booking() -> Saga {
    given(&trip(), &[start()])
}

fn flying(saga: &Saga) -> Vec<Command> {
    saga.state.in_flight(&saga.def)
}

#[test]
fn a_group_starts_all_its_steps_at_once_with_one_timer() {
    let def = trip();
    assert_eq!(def.stage(1), 0..3);
    assert_eq!(def.stage(3), 3..4);
    let t = given(&def, &[]).when(start());
    // One timer, at the longest of the members' deadlines (book_hotel's).
    assert_eq!(
        t.effects,
        vec![
            send(0, 1),
            send(1, 1),
            send(2, 1),
            timer(T0 + action_deadline(&def, 1))
        ]
    );
    assert_eq!(t.state.cursor, 0);
    assert_eq!(
        t.state.in_flight(&def),
        vec![action(0, 1), action(1, 1), action(2, 1)]
    );
    assert_eq!(
        t.note.map(|n| n.detail).as_deref(),
        Some("sent book_flight, book_hotel, book_car")
    );
}

#[test]
fn a_group_goes_on_once_every_member_succeeded_in_any_order() {
    let def = trip();
    let saga = booking();
    let t = saga.when(ok(1));
    // Waiting for the others: nothing sent, the timer stays.
    assert_eq!(t.effects, vec![]);
    assert_eq!(
        t.note.map(|n| n.detail).as_deref(),
        Some("book_hotel succeeded; waiting for book_flight, book_car")
    );
    assert_eq!(t.state.deadline, saga.state.deadline);
    assert_eq!(t.state.in_flight(&def), vec![action(0, 1), action(2, 1)]);
    for order in [[0, 1, 2], [2, 0, 1], [1, 2, 0]] {
        let mut history = vec![start()];
        history.extend(order.iter().map(|&i| ok(i)));
        let saga = given(&def, &history);
        assert_eq!(saga.state.flying(), Some(action(3, 1)), "{order:?}");
        assert_eq!(saga.state.cursor, 3);
    }
    let done = given(&def, &[start(), ok(2), ok(0), ok(1), ok(3), ok(4), ok(5)]);
    assert_eq!(done.state.status, Status::Completed);
    // Repeats change nothing.
    let half = given(&def, &[start(), ok(0)]);
    half.assert_ignores(ok(0));
}

#[test]
fn a_refusal_in_a_group_compensates_its_siblings_in_flight_and_done() {
    let def = trip();
    let saga = given(&def, &[start(), ok(0)]);

    let t = saga.when(refused(1));

    // book_car may be acting: unknown, and undone first (its participant
    // then refuses the late booking); book_hotel did nothing; book_flight
    // is undone after.
    assert_eq!(
        t.effects,
        vec![send_undo(2, 1), timer(saga.now + undo_deadline(&def, 2))]
    );
    assert_eq!(t.state.status, Status::Compensating);
    assert_eq!(t.state.failed_step, Some(1));
    assert_eq!(
        t.state.reason.as_deref(),
        Some("book_hotel refused: over the limit")
    );
    assert_eq!(
        states(&t.state)[..3],
        [S::Succeeded, S::Refused, S::Compensating]
    );
    assert_eq!(
        t.state.steps[2].reason.as_deref(),
        Some("in flight when book_hotel was refused (outcome unknown)")
    );
    let history = [start(), ok(0), refused(1)];
    let saga = given(&def, &history);
    // The car's late answers are covered by its compensation.
    saga.assert_ignores(ok(2));
    saga.assert_ignores(refused(2));
    let done = given(
        &def,
        &[history.to_vec(), vec![undone(2), undone(0)]].concat(),
    );
    assert_eq!(done.state.status, Status::Compensated);
    assert_eq!(
        states(&done.state),
        [
            S::Compensated,
            S::Refused,
            S::Compensated,
            S::NotStarted,
            S::NotStarted,
            S::NotStarted
        ]
    );
    assert_eq!(done.state.failed_step, Some(1));
}

#[test]
fn a_sibling_unknown_when_the_group_failed_is_recorded_when_its_outcome_arrives() {
    let def = trip();
    // book_car refused first: flight and hotel in flight become unknown;
    // the walk starts at the group's end: car (refused) is skipped, the
    // hotel is compensated first, the flight waits.
    let saga = given(&def, &[start(), refused(2)]);
    assert_eq!(saga.state.flying(), Some(undo(1, 1)));
    assert_eq!(
        states(&saga.state)[..3],
        [S::Unknown, S::Compensating, S::Refused]
    );
    // The flight's late answer arrives before its turn.
    let t = saga.when(ok(0));
    assert_eq!(note_kind(&t), Some("late_outcome"));
    assert_eq!(t.state.steps[0].state, S::Succeeded);
    let t = saga.when(refused(0));
    assert_eq!(t.state.steps[0].state, S::Refused);
    // Refused: nothing of it to undo, the saga is compensated after the
    // hotel's undo.
    let done = given(&def, &[start(), refused(2), refused(0), undone(1)]);
    assert_eq!(done.state.status, Status::Compensated);
    assert_eq!(
        states(&done.state)[..3],
        [S::Refused, S::Compensated, S::Refused]
    );
    // Never answered: it is compensated in its turn.
    let t = given(&def, &[start(), refused(2)]).when(undone(1));
    assert_eq!(t.state.flying(), Some(undo(0, 1)));
}

#[test]
fn a_group_timer_resends_only_the_members_still_waiting() {
    let def = trip();
    let saga = given(&def, &[start(), ok(1)]);
    let due = saga.state.deadline.expect("a deadline");
    let t = saga.when(timeout());
    // The flight and the car, again (attempt 2), one timer for both.
    assert_eq!(
        t.effects,
        vec![
            send(0, 2),
            send(2, 2),
            timer(due + action_deadline(&def, 0))
        ]
    );
    assert_eq!(note_kind(&t), Some("resent"));
    assert_eq!(t.state.steps[1].attempts, 1);
}

#[test]
fn a_member_out_of_attempts_fails_the_group_like_a_refusal() {
    let def = trip();
    // The flight and the car have 2 attempts, the hotel 3: after two
    // timers the flight is the first out of attempts.
    let saga = given(&def, &[start(), ok(2), timeout()]);
    let t = saga.when(timeout());
    assert_eq!(note_kind(&t), Some("step_timed_out"));
    assert_eq!(t.state.failed_step, Some(0));
    assert_eq!(
        t.state.reason.as_deref(),
        Some("book_flight: no outcome after 2 attempts (outcome unknown)")
    );
    // Undone from the group's end: the car (done), the hotel (unknown),
    // the flight (unknown).
    assert_eq!(t.state.flying(), Some(undo(2, 1)));
    assert_eq!(
        states(&t.state)[..3],
        [S::Unknown, S::Unknown, S::Compensating]
    );
    let done = given(
        &def,
        &[
            start(),
            ok(2),
            timeout(),
            timeout(),
            undone(2),
            undone(1),
            undone(0),
        ],
    );
    assert_eq!(done.state.status, Status::Compensated);
    assert_eq!(done.state.failed_step, Some(0));
}

#[test]
fn a_refusal_after_the_group_undoes_every_member_in_reverse() {
    let def = trip();
    let history = [start(), ok(0), ok(1), ok(2), refused(3)];
    let saga = given(&def, &history);
    assert_eq!(saga.state.flying(), Some(undo(2, 1)));
    let saga = given(&def, &[history.to_vec(), vec![undone(2)]].concat());
    assert_eq!(saga.state.flying(), Some(undo(1, 1)));
    let done = given(
        &def,
        &[history.to_vec(), vec![undone(2), undone(1), undone(0)]].concat(),
    );
    assert_eq!(done.state.status, Status::Compensated);
    assert_eq!(done.state.failed_step, Some(3));
}

#[test]
fn a_cancel_of_a_group_in_flight_undoes_every_member_that_may_have_acted() {
    let def = trip();
    let saga = given(&def, &[start(), ok(1)]);
    let t = saga.when(cancel());
    assert_eq!(note_kind(&t), Some("cancel_requested"));
    assert_eq!(t.state.failed_step, Some(0));
    assert_eq!(
        states(&t.state)[..3],
        [S::Unknown, S::Succeeded, S::Compensating]
    );
    assert_eq!(t.state.flying(), Some(undo(2, 1)));
    let done = given(
        &def,
        &[start(), ok(1), cancel(), undone(2), undone(1), undone(0)],
    );
    assert_eq!(done.state.status, Status::Compensated);
    assert!(
        done.state.reason.as_deref().is_some_and(
            |r| r.starts_with("cancelled by an operator while book_flight was in flight")
        ),
        "{:?}",
        done.state.reason
    );
}

#[test]
fn a_suspended_group_resumes_with_the_members_still_waiting() {
    let def = trip();
    let saga = given(&def, &[start(), ok(0), timeout(), suspend()]);
    assert_eq!(flying(&saga), vec![]);
    let t = saga.when(retry());
    // The same commands, a fresh budget, one timer.
    assert_eq!(
        t.effects,
        vec![
            send(1, 1),
            send(2, 1),
            timer(saga.now + action_deadline(&def, 1))
        ]
    );
    // A success of a member it was waiting for, meanwhile, is news.
    assert!(matches!(
        saga.try_when(ok(1)),
        Err(Error::Suspended { step: 1, .. })
    ));
}

// ---------------------------------------------------------------------------
// Scenarios: step outputs
// ---------------------------------------------------------------------------

fn ok_with(step: usize, output: serde_json::Value) -> Event {
    Event::Outcome {
        step,
        kind: Kind::Action,
        outcome: Outcome::Succeeded {
            output: Some(output),
        },
    }
}

#[test]
fn an_actions_output_is_kept_with_its_step() {
    let def = delivery();
    let saga = given(
        &def,
        &[start(), ok_with(0, serde_json::json!({"slot": "S-1"}))],
    );
    assert_eq!(
        saga.state.steps[0].output,
        Some(serde_json::json!({"slot": "S-1"}))
    );
    assert_eq!(saga.state.steps[1].output, None);
    // A repeat, even one claiming another output, changes nothing: the
    // first recorded outcome stands.
    saga.assert_ignores(ok_with(0, serde_json::json!({"slot": "S-2"})));
    saga.assert_ignores(ok(0));
    // It survives compensation, for the compensation's input.
    let undoing = given(
        &def,
        &[
            start(),
            ok_with(0, serde_json::json!({"slot": "S-1"})),
            refused(1),
        ],
    );
    assert_eq!(undoing.state.flying(), Some(undo(0, 1)));
    assert_eq!(
        undoing.state.steps[0].output,
        Some(serde_json::json!({"slot": "S-1"}))
    );
}

#[test]
fn an_output_arriving_after_the_step_was_given_up_on_is_not_recorded() {
    let def = delivery();
    let mut history = vec![start(), ok(0)];
    history.extend(timeouts(action_attempts(&def, 1)));
    let saga = given(&def, &history);
    // Its compensation went out without it (a participant undoes by saga
    // id when a mapped field is absent); the late success changes nothing.
    assert_eq!(saga.state.steps[1].state, S::Compensating);
    saga.assert_ignores(ok_with(1, serde_json::json!({"payment_id": "p-9"})));
    assert_eq!(saga.state.steps[1].output, None);
}

// ---------------------------------------------------------------------------
// Scenarios: forward-only steps after the pivot
// ---------------------------------------------------------------------------

/// The delivery saga past its pivot, with notify (step 3) in flight.
fn delivery_notifying() -> (Vec<Event>, Saga) {
    let history = vec![start(), ok(0), ok(1), ok(2)];
    let saga = given(&delivery(), &history);
    (history, saga)
}

#[test]
fn forward_only_steps_run_after_the_pivot_and_the_saga_completes() {
    let def = delivery();
    let (_, saga) = delivery_notifying();
    assert_eq!(saga.state.flying(), Some(action(3, 1)));
    let t = saga.when(ok(3));
    assert_eq!(
        t.effects,
        vec![send(4, 1), timer(saga.now + action_deadline(&def, 4))]
    );
    let done = given(&def, &[start(), ok(0), ok(1), ok(2), ok(3), ok(4)]);
    assert_eq!(done.state.status, Status::Completed);
    assert_eq!(states(&done.state), [S::Succeeded; 5]);
}

#[test]
fn a_refused_forward_only_step_suspends_the_saga_and_undoes_nothing() {
    let (_, saga) = delivery_notifying();

    let t = saga.when(refused(3));

    // No compensation, no finish, no timer: it waits for an operator.
    assert_eq!(t.effects, vec![]);
    assert_eq!(note_kind(&t), Some("suspended"));
    assert_eq!(t.state.status, Status::Suspended);
    assert_eq!(t.state.suspended_from, Some(Status::Running));
    assert_eq!(t.state.deadline, None);
    assert_eq!(t.state.failed_step, Some(3));
    assert_eq!(t.state.flying(), None);
    assert_eq!(
        states(&t.state),
        [
            S::Succeeded,
            S::Succeeded,
            S::Succeeded,
            S::Refused,
            S::NotStarted
        ]
    );
    assert_eq!(t.state.steps[3].reason.as_deref(), Some("over the limit"));
    assert_eq!(
        t.state.reason.as_deref(),
        Some(
            "suspended: notify refused: over the limit; it is forward-only (after the pivot), so nothing is undone: fix the cause and retry the saga"
        )
    );
}

#[test]
fn a_suspended_forward_only_saga_ignores_repeats_timers_and_starts() {
    let (mut history, _) = delivery_notifying();
    history.push(refused(3));
    let saga = given(&delivery(), &history);
    saga.assert_ignores(refused(3));
    saga.assert_ignores(timeout());
    saga.assert_ignores_at(timeout(), T0 + 1_000_000_000);
    saga.assert_ignores(start());
    saga.assert_ignores(ok(2));
    saga.assert_ignores(ok(0));
    // The refusal it recorded cannot turn into a success.
    assert!(matches!(
        saga.try_when(ok(3)),
        Err(Error::Contradiction { step: 3, .. })
    ));
    // Nothing after it was sent.
    assert!(matches!(
        saga.try_when(ok(4)),
        Err(Error::NeverSent { step: 4, .. })
    ));
}

#[test]
fn a_retry_sends_the_refused_forward_only_step_as_a_new_command() {
    let def = delivery();
    let (mut history, _) = delivery_notifying();
    history.push(refused(3));
    let saga = given(&def, &history);

    let t = saga.when(retry());

    // The participant keeps its refusal under the old command id: a new
    // command (generation 1), with a fresh budget.
    let cmd = retried_action(3, 1, 1);
    assert_eq!(
        t.effects,
        vec![
            Effect::SendCommand(cmd),
            timer(saga.now + action_deadline(&def, 3))
        ]
    );
    assert_eq!(cmd.id_name(), "3:action:1");
    assert_eq!(note_kind(&t), Some("resumed"));
    assert_eq!(t.state.status, Status::Running);
    assert_eq!(
        (
            t.state.reason.clone(),
            t.state.failed_step,
            t.state.suspended_from
        ),
        (None, None, None)
    );
    assert_eq!(t.state.steps[3].state, S::Pending);
    assert_eq!(t.state.steps[3].reason, None);
    assert_eq!(t.state.steps[3].action_generation, 1);
    assert_eq!(t.state.flying(), Some(cmd));

    // Fixed: it goes on to the end.
    history.extend([retry(), ok(3), ok(4)]);
    let done = given(&def, &history);
    assert_eq!(done.state.status, Status::Completed);

    // Not fixed yet: suspended again; the next retry is generation 2, and
    // a timer re-sends the generation in flight.
    let mut again = history[..history.len() - 2].to_vec();
    again.extend([refused(3), retry()]);
    let saga = given(&def, &again);
    assert_eq!(saga.state.flying(), Some(retried_action(3, 1, 2)));
    again.push(timeout());
    let saga = given(&def, &again);
    assert_eq!(saga.state.flying(), Some(retried_action(3, 2, 2)));
}

#[test]
fn a_stale_refusal_after_a_retried_forward_only_step_succeeded_is_ignored() {
    let def = delivery();
    let (mut history, _) = delivery_notifying();
    history.extend([refused(3), retry(), ok(3)]);
    let saga = given(&def, &history);
    saga.assert_ignores(refused(3));
    history.push(ok(4));
    let done = given(&def, &history);
    assert_eq!(done.state.status, Status::Completed);
    done.assert_ignores(refused(3));
    // Never retried, a refusal contradicts the recorded success.
    let (mut plain, _) = delivery_notifying();
    plain.push(ok(3));
    assert!(matches!(
        given(&def, &plain).try_when(refused(3)),
        Err(Error::Contradiction { step: 3, .. })
    ));
}

#[test]
fn a_forward_only_step_out_of_attempts_is_resent_until_its_outcome_is_known() {
    let def = delivery();
    let (mut history, _) = delivery_notifying();
    history.extend(timeouts(action_attempts(&def, 3) + 2));
    let saga = given(&def, &history);
    assert_eq!(saga.state.status, Status::Running);
    assert_eq!(states(&saga.state)[3], S::Pending);
    assert_eq!(
        saga.state.flying(),
        Some(action(3, action_attempts(&def, 3) + 3))
    );
    assert!(
        saga.state
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("notify: no outcome after")),
        "{:?}",
        saga.state.reason
    );
    // Its late refusal suspends the saga; its late success carries on.
    assert_eq!(saga.when(refused(3)).state.status, Status::Suspended);
    let t = saga.when(ok(3));
    assert_eq!(t.state.flying(), Some(action(4, 1)));
    assert_eq!(t.state.reason, None);
}

#[test]
fn a_cancel_is_refused_once_the_pivot_may_have_acted() {
    let def = delivery();
    // The pivot in flight, done with notify in flight, and done with
    // notify refused (suspended): each names the step that cannot be undone.
    let confirming = given(&def, &[start(), ok(0), ok(1)]);
    let (mut history, notifying) = delivery_notifying();
    history.push(refused(3));
    let refused_notify = given(&def, &history);
    for (saga, step, name) in [
        (&confirming, 2, "confirm"),
        (&notifying, 3, "notify"),
        (&refused_notify, 2, "confirm"),
    ] {
        let e = saga.try_when(cancel()).expect_err("past the pivot");
        assert_eq!(
            e,
            Error::PastPivot {
                step,
                name: name.to_owned()
            }
        );
    }
    // Before the pivot a cancel undoes as usual.
    let t = given(&def, &[start(), ok(0)]).when(cancel());
    assert_eq!(t.state.status, Status::Compensating);
    assert_eq!(t.state.flying(), Some(undo(1, 1)));
}

#[test]
fn a_refused_pivot_still_undoes_the_steps_before_it() {
    let def = delivery();
    let t = given(&def, &[start(), ok(0), ok(1)]).when(refused(2));
    assert_eq!(t.state.status, Status::Compensating);
    assert_eq!(t.state.flying(), Some(undo(1, 1)));
    let done = given(
        &def,
        &[start(), ok(0), ok(1), refused(2), undone(1), undone(0)],
    );
    assert_eq!(done.state.status, Status::Compensated);
    assert_eq!(states(&done.state)[3..], [S::NotStarted, S::NotStarted]);
}

#[test]
fn an_engine_suspension_of_a_forward_only_step_resumes_with_the_same_command() {
    let (mut history, _) = delivery_notifying();
    history.extend([timeout(), suspend()]);
    let saga = given(&delivery(), &history);
    let t = saga.when(retry());
    assert_eq!(t.state.flying(), Some(action(3, 1)));
    assert_eq!(t.state.steps[3].action_generation, 0);
}

// ---------------------------------------------------------------------------
// Scenarios: a suspended saga waits for an operator
// ---------------------------------------------------------------------------

#[test]
fn a_suspended_saga_has_nothing_in_flight_and_says_why() {
    let def = order::definition();
    let saga = given(&def, &[start(), ok(0)]);

    let t = saga.when(suspend());

    assert_eq!(t.effects, vec![]);
    assert_eq!(note_kind(&t), Some("suspended"));
    assert_eq!(t.state.status, Status::Suspended);
    assert_eq!(t.state.suspended_from, Some(Status::Running));
    assert_eq!(t.state.deadline, None);
    assert_eq!(t.state.flying(), None);
    assert_eq!(
        t.state.reason.as_deref(),
        Some(format!("suspended: {SUSPEND_REASON}").as_str())
    );
    // Its steps are as they were.
    assert_eq!(t.state.steps, saga.state.steps);
}

#[test]
fn a_suspended_saga_ignores_timers_starts_and_what_it_knows_and_refuses_news() {
    let def = order::definition();
    let saga = given(&def, &[start(), ok(0), suspend()]);
    saga.assert_ignores_at(timeout(), T0 + 10 * action_deadline(&def, 1));
    saga.assert_ignores(start());
    saga.assert_ignores(suspend());
    // A duplicate of what it has: ignored, as ever.
    saga.assert_ignores(ok(0));
    // News waits: its command is sent again when it resumes.
    assert_eq!(
        saga.try_when(ok(1)),
        Err(Error::Suspended {
            step: 1,
            kind: "action"
        })
    );
    // And what could never be is the usual error.
    assert!(matches!(
        saga.try_when(ok(3)),
        Err(Error::NeverSent { step: 3, .. })
    ));
}

#[test]
fn a_finished_or_paused_saga_is_not_suspended() {
    let def = order::definition();
    for history in [
        vec![start(), ok(0), ok(1), ok(2), ok(3)],
        vec![start(), refused(0)],
        vec![start(), ok(0), ok(1), refused(2), undo_refused(1)],
    ] {
        given(&def, &history).assert_ignores(suspend());
    }
}

#[test]
fn a_retry_resumes_a_suspended_running_saga_with_its_command_sent_again() {
    let def = order::definition();
    let mut history = vec![start(), ok(0)];
    history.extend(timeouts(3));
    history.push(suspend());
    let saga = given(&def, &history);
    assert_eq!(saga.state.steps[1].attempts, 4);

    let t = saga.when(retry());

    // The same command (same id), with a fresh attempt budget.
    assert_eq!(
        t.effects,
        vec![send(1, 1), timer(saga.now + action_deadline(&def, 1))]
    );
    assert_eq!(note_kind(&t), Some("resumed"));
    assert_eq!(t.state.status, Status::Running);
    assert_eq!(t.state.suspended_from, None);
    assert_eq!(t.state.reason, None);
    assert_eq!(t.state.flying(), Some(action(1, 1)));
    // It goes on as if nothing happened.
    let done = given(
        &def,
        &[history.clone(), vec![retry(), ok(1), ok(2), ok(3)]].concat(),
    );
    assert_eq!(done.state.status, Status::Completed);
}

#[test]
fn a_retry_resumes_a_suspended_compensating_saga_where_it_stopped() {
    let def = order::definition();
    let saga = given(&def, &[start(), ok(0), ok(1), refused(2), suspend()]);
    assert_eq!(saga.state.suspended_from, Some(Status::Compensating));

    let t = saga.when(retry());

    assert_eq!(
        t.effects,
        vec![send_undo(1, 1), timer(saga.now + undo_deadline(&def, 1))]
    );
    assert_eq!(t.state.status, Status::Compensating);
    // It reports again why it compensates.
    assert!(
        t.state
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("reserve_inventory refused")),
        "{:?}",
        t.state.reason
    );
    assert_eq!(t.state.failed_step, Some(2));
}

#[test]
fn a_cancel_turns_a_suspended_saga_back() {
    let def = order::definition();
    // Suspended going forward: the in-flight step is undone first.
    let saga = given(&def, &[start(), ok(0), ok(1), suspend()]);
    let t = saga.when(cancel());
    assert_eq!(note_kind(&t), Some("cancel_requested"));
    assert_eq!(t.state.status, Status::Compensating);
    assert_eq!(t.state.cancelled.as_deref(), Some(CANCEL_REASON));
    assert_eq!(t.effects[0], send_undo(2, 1));
    assert_eq!(t.state.steps[2].state, S::Compensating);
    // Suspended going backward: carries on backward.
    let saga = given(&def, &[start(), ok(0), refused(1), suspend()]);
    let t = saga.when(cancel());
    assert_eq!(t.state.status, Status::Compensating);
    assert_eq!(t.effects[0], send_undo(0, 1));
    // Suspended at the pivot: nothing can turn it back.
    let saga = given(&def, &[start(), ok(0), ok(1), ok(2), suspend()]);
    assert!(matches!(
        saga.try_when(cancel()),
        Err(Error::PastPivot { step: 3, .. })
    ));
}

#[test]
fn a_state_suspended_at_row_level_resumes_from_what_its_steps_say() {
    // The store suspends a saga whose state it could not read without
    // touching the state; once repaired, the state it hands the machine is
    // suspended with no `suspended_from`.
    let def = order::definition();
    for (history, resumes_in) in [
        (vec![start(), ok(0)], Status::Running),
        (vec![start(), ok(0), refused(1)], Status::Compensating),
    ] {
        let mut state = given(&def, &history).state;
        state.status = Status::Suspended;
        state.deadline = None;
        let t = apply(&def, &state, &retry(), T0).expect("resumes");
        assert_eq!(t.state.status, resumes_in, "{history:?}");
        assert!(t.state.flying().is_some());
    }
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
        assert_eq!(saga.state.flying(), expected, "{name}");
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
        given(&def, &[start(), ok(0), ok(1)]).try_when(cancel()),
        given(&def, &[start(), suspend()]).try_when(ok(0)),
    ]
    .into_iter()
    .map(|r| r.expect_err("an error").to_string()[..8].to_owned())
    .collect();
    assert_eq!(
        codes,
        [
            "[SF1001]", "[SF1002]", "[SF1003]", "[SF1004]", "[SF1005]", "[SF1006]", "[SF1007]",
            "[SF1008]"
        ]
    );
}
