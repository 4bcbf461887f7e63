//! Given a finished saga and what its participants say, when compared,
//! then the mismatches an operator should see (and none where they agree).

use super::*;
use crate::definitions::order;
use crate::saga::state::StepRecord;

use Decided::{Refused, Succeeded};
use Kind::{Action, Compensation};
use StepState as S;

fn saga(status: Status, steps: &[S]) -> SagaState {
    let mut state = SagaState::new(steps.len());
    state.status = status;
    for (rec, s) in state.steps.iter_mut().zip(steps) {
        *rec = StepRecord {
            state: *s,
            ..StepRecord::new()
        };
    }
    state
}

/// What participant of step `step` would record for its command.
fn rec(
    id: Uuid,
    step: usize,
    kind: Kind,
    generation: u32,
    decided: Decided,
    reason: &str,
) -> Record {
    let cmd = Command {
        step,
        kind,
        attempt: 1,
        generation,
    };
    Record {
        participant: order::definition().steps[step].participant.clone(),
        command_id: command_id(id, &cmd),
        step,
        kind,
        decided,
        reason: reason.to_owned(),
    }
}

fn problems(check: &SagaCheck) -> Vec<String> {
    let mut all = check.problems.clone();
    for s in &check.steps {
        all.extend(s.problems.iter().map(|p| format!("{}: {p}", s.name)));
    }
    all
}

fn completed(id: Uuid) -> Vec<Record> {
    (0..4)
        .map(|step| rec(id, step, Action, 0, Succeeded, ""))
        .collect()
}

#[test]
fn a_completed_saga_whose_participants_did_every_action_agrees() {
    let id = Uuid::now_v7();
    let state = saga(Status::Completed, &[S::Succeeded; 4]);

    let check = compare(&order::definition(), id, &state, &completed(id));

    assert!(check.agrees(), "{:?}", problems(&check));
    assert_eq!(check.steps[1].records.len(), 1);
}

#[test]
fn a_completed_saga_whose_payment_was_also_refunded_is_a_mismatch() {
    let id = Uuid::now_v7();
    let state = saga(Status::Completed, &[S::Succeeded; 4]);
    let mut records = completed(id);
    records.push(rec(id, 1, Compensation, 0, Succeeded, ""));

    let check = compare(&order::definition(), id, &state, &records);

    assert_eq!(
        problems(&check),
        ["process_payment: no compensation expected"]
    );
}

#[test]
fn a_completed_saga_whose_stock_was_never_reserved_is_a_mismatch() {
    let id = Uuid::now_v7();
    let state = saga(Status::Completed, &[S::Succeeded; 4]);
    let mut records = completed(id);
    records.remove(2);

    let check = compare(&order::definition(), id, &state, &records);

    assert_eq!(
        problems(&check),
        ["reserve_inventory: action SUCCEEDED expected"]
    );
}

#[test]
fn a_compensated_step_may_have_acted_been_refused_late_or_never_arrived() {
    let id = Uuid::now_v7();
    let state = saga(
        Status::Compensated,
        &[
            S::Compensated,
            S::Compensated,
            S::Compensated,
            S::NotStarted,
        ],
    );
    let records = vec![
        rec(id, 0, Action, 0, Succeeded, ""),
        rec(id, 0, Compensation, 0, Succeeded, ""),
        rec(id, 1, Compensation, 0, Succeeded, ""),
        rec(id, 1, Action, 0, Refused, "compensated_before_action"),
        // The action of step 2 never arrived: only its compensation.
        rec(id, 2, Compensation, 0, Succeeded, ""),
    ];

    let check = compare(&order::definition(), id, &state, &records);

    assert!(check.agrees(), "{:?}", problems(&check));
}

#[test]
fn a_compensated_step_without_a_successful_compensation_is_a_mismatch() {
    let id = Uuid::now_v7();
    let mut state = saga(
        Status::Compensated,
        &[S::Compensated, S::Refused, S::NotStarted, S::NotStarted],
    );
    state.steps[1].reason = Some("r".into());
    let records = vec![
        rec(id, 0, Action, 0, Succeeded, ""),
        rec(id, 1, Action, 0, Refused, "r"),
    ];

    let check = compare(&order::definition(), id, &state, &records);

    assert_eq!(
        problems(&check),
        ["create_order: a compensation SUCCEEDED expected"]
    );
}

#[test]
fn a_refused_step_needs_the_same_refusal_at_its_participant() {
    let id = Uuid::now_v7();
    let mut state = saga(
        Status::Compensated,
        &[S::Compensated, S::Refused, S::NotStarted, S::NotStarted],
    );
    state.steps[1].reason = Some("credit_limit_exceeded: cust-broke needs 1 has 0".into());
    let agreeing = vec![
        rec(id, 0, Action, 0, Succeeded, ""),
        rec(id, 0, Compensation, 0, Succeeded, ""),
        rec(
            id,
            1,
            Action,
            0,
            Refused,
            "credit_limit_exceeded: cust-broke needs 1 has 0",
        ),
    ];
    let mut charged = agreeing.clone();
    charged[2] = rec(id, 1, Action, 0, Succeeded, "");

    assert!(compare(&order::definition(), id, &state, &agreeing).agrees());
    assert_eq!(
        problems(&compare(&order::definition(), id, &state, &charged)),
        [
            "process_payment: action REFUSED (credit_limit_exceeded: cust-broke needs 1 has 0) expected"
        ]
    );
}

#[test]
fn a_refusal_for_an_invalid_command_expects_nothing_at_the_participant() {
    let id = Uuid::now_v7();
    let mut state = saga(
        Status::Compensated,
        &[S::Compensated, S::Refused, S::NotStarted, S::NotStarted],
    );
    state.steps[1].reason = Some("invalid_command: input: not an OrderInput".into());
    let mut records = vec![
        rec(id, 0, Action, 0, Succeeded, ""),
        rec(id, 0, Compensation, 0, Succeeded, ""),
    ];

    assert!(compare(&order::definition(), id, &state, &records).agrees());
    records.push(rec(id, 1, Action, 0, Succeeded, ""));
    assert_eq!(
        problems(&compare(&order::definition(), id, &state, &records)),
        ["process_payment: nothing expected (rejected as invalid)"]
    );
}

#[test]
fn a_step_never_started_must_have_nothing_recorded() {
    let id = Uuid::now_v7();
    let mut state = saga(
        Status::Compensated,
        &[S::Compensated, S::Refused, S::NotStarted, S::NotStarted],
    );
    state.steps[1].reason = Some("r".into());
    let records = vec![
        rec(id, 0, Action, 0, Succeeded, ""),
        rec(id, 0, Compensation, 0, Succeeded, ""),
        rec(id, 1, Action, 0, Refused, "r"),
        rec(id, 2, Compensation, 0, Succeeded, ""),
    ];

    let check = compare(&order::definition(), id, &state, &records);

    assert_eq!(
        problems(&check),
        ["reserve_inventory: nothing expected (never sent)"]
    );
}

#[test]
fn a_compensation_refused_then_retried_by_an_operator_agrees() {
    let id = Uuid::now_v7();
    let mut state = saga(
        Status::Compensated,
        &[S::Compensated, S::Compensated, S::Refused, S::NotStarted],
    );
    state.steps[1].compensation_generation = 1;
    state.steps[2].reason = Some("stock_short: sku-soldout needs 1 has 0".into());
    let records = vec![
        rec(id, 0, Action, 0, Succeeded, ""),
        rec(id, 1, Action, 0, Succeeded, ""),
        rec(
            id,
            2,
            Action,
            0,
            Refused,
            "stock_short: sku-soldout needs 1 has 0",
        ),
        rec(id, 1, Compensation, 0, Refused, "refunds_held: cust-alice"),
        rec(id, 1, Compensation, 1, Succeeded, ""),
        rec(id, 0, Compensation, 0, Succeeded, ""),
    ];

    let check = compare(&order::definition(), id, &state, &records);

    assert!(check.agrees(), "{:?}", problems(&check));
    assert_eq!(check.steps[1].records.len(), 3);
}

#[test]
fn an_action_refused_then_retried_as_a_new_command_agrees_with_its_last_generation() {
    // (The order saga's last step stands in for a forward-only step: the
    // comparison reads the generations, not the definition's shape.)
    let id = Uuid::now_v7();
    let mut state = saga(Status::Completed, &[S::Succeeded; 4]);
    state.steps[3].action_generation = 2;
    let mut records: Vec<Record> = (0..3)
        .map(|step| rec(id, step, Action, 0, Succeeded, ""))
        .collect();
    records.extend([
        rec(id, 3, Action, 0, Refused, "mailbox_closed"),
        rec(id, 3, Action, 1, Refused, "mailbox_closed"),
        rec(id, 3, Action, 2, Succeeded, ""),
    ]);

    let check = compare(&order::definition(), id, &state, &records);
    assert!(check.agrees(), "{:?}", problems(&check));
    assert_eq!(check.steps[3].records.len(), 3);

    // The last generation missing, or an earlier one that acted: mismatches.
    let check = compare(&order::definition(), id, &state, &records[..5]);
    assert_eq!(
        problems(&check),
        ["approve_order: action SUCCEEDED expected"]
    );
    records[3] = rec(id, 3, Action, 0, Succeeded, "");
    let check = compare(&order::definition(), id, &state, &records);
    assert_eq!(
        problems(&check),
        ["approve_order: earlier generations of the action REFUSED expected"]
    );
    // A generation the saga never reached is a command it never sent.
    state.steps[3].action_generation = 0;
    let check = compare(&order::definition(), id, &state, &records[..4]);
    assert!(check.agrees(), "{:?}", problems(&check));
    let check = compare(&order::definition(), id, &state, &records);
    assert_eq!(check.problems.len(), 2, "{:?}", problems(&check));
}

#[test]
fn a_command_the_saga_never_sent_is_a_mismatch() {
    let id = Uuid::now_v7();
    let state = saga(Status::Completed, &[S::Succeeded; 4]);
    let mut records = completed(id);
    // A retry generation the saga never reached, a command id from nowhere,
    // and the saga's own command at the wrong participant.
    records.push(rec(id, 1, Compensation, 1, Succeeded, ""));
    let mut stray = rec(id, 0, Action, 0, Succeeded, "");
    stray.command_id = Uuid::now_v7();
    records.push(stray);
    let mut misplaced = rec(id, 2, Action, 0, Succeeded, "");
    misplaced.participant = "payment".into();
    records.push(misplaced);

    let check = compare(&order::definition(), id, &state, &records);

    let found = problems(&check);
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(
        found
            .iter()
            .all(|p| p.ends_with("which the saga never sent")),
        "{found:?}"
    );
    assert!(found[0].starts_with("payment handled command"), "{found:?}");
}

#[test]
fn a_paused_saga_whose_compensation_did_succeed_is_a_mismatch() {
    let id = Uuid::now_v7();
    let mut state = saga(
        Status::CompensationFailed,
        &[
            S::Succeeded,
            S::CompensationFailed,
            S::Compensated,
            S::NotStarted,
        ],
    );
    state.steps[2].reason = None;
    let mut records = vec![
        rec(id, 0, Action, 0, Succeeded, ""),
        rec(id, 1, Action, 0, Succeeded, ""),
        rec(id, 2, Action, 0, Succeeded, ""),
        rec(id, 2, Compensation, 0, Succeeded, ""),
        rec(id, 1, Compensation, 0, Refused, "refunds_held: cust-alice"),
    ];
    assert!(compare(&order::definition(), id, &state, &records).agrees());

    records[4] = rec(id, 1, Compensation, 0, Succeeded, "");

    assert_eq!(
        problems(&compare(&order::definition(), id, &state, &records)),
        [
            "process_payment: no compensation SUCCEEDED expected (its outcome is late or lost: retry the saga)"
        ]
    );
}

#[test]
fn a_status_its_steps_contradict_is_a_mismatch() {
    let id = Uuid::now_v7();
    let completed_but_undone = saga(
        Status::Completed,
        &[S::Succeeded, S::Compensated, S::Succeeded, S::Succeeded],
    );
    let compensated_but_charged = saga(
        Status::Compensated,
        &[S::Compensated, S::Succeeded, S::NotStarted, S::NotStarted],
    );

    let a = compare(&order::definition(), id, &completed_but_undone, &[]);
    let b = compare(&order::definition(), id, &compensated_but_charged, &[]);

    assert_eq!(
        a.problems,
        ["the saga is COMPLETED but has steps COMPENSATED"]
    );
    assert_eq!(
        b.problems,
        ["the saga is COMPENSATED but has steps SUCCEEDED"]
    );
}

#[test]
fn records_describe_themselves_for_operators() {
    let id = Uuid::now_v7();
    assert_eq!(
        rec(id, 1, Compensation, 0, Refused, "refunds_held: cust-bob").describe(),
        "compensation REFUSED (refunds_held: cust-bob)"
    );
    assert_eq!(
        rec(id, 1, Action, 0, Succeeded, "").describe(),
        "action SUCCEEDED"
    );
}
