//! An exhaustive sweep: every (status, step state, event) on hand-built
//! states and on every state reachable from a fresh saga.

use std::collections::{HashSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::super::state::StepRecord;
use super::super::*;
use super::fixtures::*;
use crate::definitions::order;

use StepState as S;

// ---------------------------------------------------------------------------
// Exhaustive sweep
// ---------------------------------------------------------------------------

const STATUSES: [Status; 6] = Status::ALL;

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
    Suspend,
    Outcome(Kind, bool),
}

const TAGS: [Tag; 9] = [
    Tag::Start,
    Tag::Timeout,
    Tag::Retry,
    Tag::Cancel,
    Tag::Suspend,
    Tag::Outcome(Kind::Action, false),
    Tag::Outcome(Kind::Action, true),
    Tag::Outcome(Kind::Compensation, false),
    Tag::Outcome(Kind::Compensation, true),
];

/// Every event: Start, Timeout, the operator's Retry and Cancel, the
/// engine's Suspend, and each kind × outcome for every step and for one step
/// past the end.
fn every_event(def: &Definition) -> Vec<Event> {
    let mut events = vec![start(), timeout(), retry(), cancel(), suspend()];
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
        Event::Suspend { .. } => Tag::Suspend,
        Event::Outcome { kind, outcome, .. } => {
            Tag::Outcome(*kind, matches!(outcome, Outcome::Refused { .. }))
        }
    }
}

/// The step an event is about: an outcome's step, else the cursor.
fn target_of(state: &SagaState, event: &Event) -> usize {
    match event {
        Event::Outcome { step, .. } => *step,
        Event::Start
        | Event::Timeout
        | Event::Retry
        | Event::Cancel { .. }
        | Event::Suspend { .. } => state.cursor,
    }
}

/// The times at which to apply `event` to `state`: for a timer, before, at
/// and after the deadline.
fn times_for(state: &SagaState, event: &Event) -> Vec<Millis> {
    let due = state.deadline.unwrap_or(T0);
    match event {
        Event::Timeout => vec![due - 1, due, due + 1],
        Event::Start
        | Event::Retry
        | Event::Cancel { .. }
        | Event::Suspend { .. }
        | Event::Outcome { .. } => {
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
        (_, Err(Error::ShapeMismatch { .. } | Error::CursorOutOfRange { .. })) => {
            panic!("{ctx}: shapes match")
        }
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
        (Event::Start | Event::Timeout | Event::Suspend { .. }, Err(e)) => {
            panic!("{ctx}: a start, timer or suspension failed: {e}")
        }
        (Event::Outcome { step, kind, .. }, Err(ref e @ Error::Suspended { step: s, kind: k })) => {
            assert!(e.to_string().starts_with("[SF1008]"), "{ctx}: {e}");
            assert_eq!(input.status, Status::Suspended, "{ctx}");
            assert_eq!((s, k), (*step, kind.as_str()), "{ctx}");
            // Refused only because it is news: the saga as it was would
            // have changed.
            let mut was = input.clone();
            was.status = input.suspended_from.unwrap_or(
                if input.steps[input.cursor].state == S::Compensating {
                    Status::Compensating
                } else {
                    Status::Running
                },
            );
            let would = apply(def, &was, event, now).expect("news applies once resumed");
            assert!(would.note.is_some(), "{ctx}");
            return;
        }
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
                Outcome::Succeeded { .. } => "succeeded",
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
            assert!(
                !matches!(status, Status::CompensationFailed | Status::Suspended),
                "{ctx}: paused or suspended, yet not retried"
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
            assert!(
                matches!(input.status, Status::Running | Status::Suspended),
                "{ctx}"
            );
            // The highest step at or below the cursor that may have acted
            // and cannot be undone.
            let acted = |i: usize| {
                def.steps[i].compensation.is_none()
                    && matches!(input.steps[i].state, S::Pending | S::Succeeded | S::Unknown)
            };
            assert!(step <= input.cursor, "{ctx}");
            assert_eq!(name, &def.steps[step].name, "{ctx}");
            assert!(
                acted(step),
                "{ctx}: only a step that may have acted and cannot be undone blocks a cancel"
            );
            assert!(!(step + 1..=input.cursor).any(acted), "{ctx}");
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
                [sends @ .., Effect::ScheduleTimeout { at }] if !sends.is_empty() => {
                    let cmds: Vec<Command> = sends
                        .iter()
                        .map(|e| match e {
                            Effect::SendCommand(cmd) => *cmd,
                            other => panic!("{ctx}: malformed effects, {other:?} among sends"),
                        })
                        .collect();
                    // Persist before acting: the new state names what is
                    // sent; several commands only for one parallel group.
                    assert_eq!(t.state.in_flight(def), cmds, "{ctx}");
                    assert_eq!(t.state.deadline, Some(*at), "{ctx}");
                    let stage = def.stage(cmds[0].step);
                    assert!(cmds.iter().all(|c| stage.contains(&c.step)), "{ctx}");
                    assert!(
                        cmds.len() == 1 || cmds.iter().all(|c| c.kind == Kind::Action),
                        "{ctx}"
                    );
                    let cmd = &cmds[0];
                    let policy = |c: &Command| match c.kind {
                        Kind::Action => def.steps[c.step].policy,
                        Kind::Compensation => def.steps[c.step].compensation_policy,
                    };
                    let p = policy(cmd);
                    let longest = cmds
                        .iter()
                        .map(|c| policy(c).deadline)
                        .max()
                        .unwrap_or_default();
                    if cmds.len() > 1 {
                        // A group's timer waits for its longest deadline,
                        // and no member goes on past its attempts.
                        assert_eq!(*at, after(now, longest), "{ctx}");
                        assert!(
                            cmds.iter()
                                .all(|c| c.attempt >= 1 && c.attempt <= policy(c).max_attempts),
                            "{ctx}"
                        );
                    } else if cmd.attempt > p.max_attempts {
                        // Only a step that cannot be undone goes on past its
                        // attempts, waiting 2x, 4x, ... up to 32x as long.
                        assert_eq!(cmd.kind, Kind::Action, "{ctx}");
                        assert!(def.steps[cmd.step].compensation.is_none(), "{ctx}");
                        assert_eq!(note_kind(&t), Some("step_overdue"), "{ctx}");
                        let factor = 1u32 << (cmd.attempt - p.max_attempts).min(5);
                        assert_eq!(*at, after(now, p.deadline * factor), "{ctx}");
                        assert!(t.state.reason.is_some(), "{ctx}");
                    } else {
                        assert_eq!(*at, after(now, p.deadline), "{ctx}");
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
            // A suspension stops everything, and only a suspension or the
            // refusal of a forward-only step does.
            if t.state.status == Status::Suspended {
                match event {
                    Event::Suspend { .. } => {}
                    Event::Outcome {
                        step,
                        kind: Kind::Action,
                        outcome: Outcome::Refused { reason },
                    } => {
                        assert!(def.steps[*step].forward_only, "{ctx}");
                        assert_eq!(t.state.failed_step, Some(*step), "{ctx}");
                        assert_eq!(t.state.steps[*step].state, S::Refused, "{ctx}");
                        let why = t.state.reason.clone().unwrap_or_default();
                        assert!(why.contains(reason.as_str()), "{ctx}: {why}");
                        assert!(why.contains("nothing is undone"), "{ctx}: {why}");
                    }
                    other => panic!("{ctx}: {other:?} suspended the saga"),
                }
                assert_eq!(note.kind, "suspended", "{ctx}");
                assert_eq!(t.effects, vec![], "{ctx}");
                assert_eq!(t.state.deadline, None, "{ctx}");
                assert_eq!(t.state.suspended_from, Some(input.status), "{ctx}");
                assert!(
                    t.state
                        .reason
                        .as_deref()
                        .is_some_and(|r| r.starts_with("suspended: ")),
                    "{ctx}"
                );
            } else {
                assert_eq!(t.state.suspended_from, None, "{ctx}");
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
        // A late action outcome of a step still unknown (a parallel
        // group's member below the failed undo) is recorded, nothing more.
        Status::CompensationFailed
            if t.note.is_some()
                && matches!(event, Event::Outcome { step, kind: Kind::Action, .. }
                    if input.steps[*step].state == S::Unknown) =>
        {
            assert_eq!(t.effects, vec![], "{ctx}");
            assert_eq!(t.state.status, Status::CompensationFailed, "{ctx}");
        }
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
        // Only an operator moves a suspended saga.
        Status::Suspended if t.note.is_some() => {
            assert!(
                matches!(event, Event::Retry | Event::Cancel { .. }),
                "{ctx}: a suspended saga moved by itself"
            );
        }
        Status::CompensationFailed | Status::Running | Status::Compensating | Status::Suspended => {
        }
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
    // Where a suspended saga resumes.
    let resumes_in =
        input
            .suspended_from
            .unwrap_or(if input.steps[cursor].state == S::Compensating {
                Status::Compensating
            } else {
                Status::Running
            });
    match (event, input.status) {
        (Event::Retry, Status::CompensationFailed) => {
            // It always resumes, sending nothing forward.
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
        (Event::Retry, Status::Suspended) => {
            // Resumed where it stopped: its command again, same id, fresh
            // budget.
            assert_eq!(note_kind(t), Some("resumed"), "{ctx}");
            assert!(sent.len() <= def.stage(cursor).len(), "{ctx}");
            match resumes_in {
                Status::Compensating => {
                    assert!(
                        matches!(t.state.status, Status::Compensating | Status::Compensated),
                        "{ctx}"
                    );
                    for cmd in &sent {
                        assert_eq!(cmd.kind, Kind::Compensation, "{ctx}");
                        assert!(cmd.step <= cursor, "{ctx}");
                        assert_eq!(cmd.attempt, 1, "{ctx}");
                        assert_eq!(
                            cmd.generation, input.steps[cmd.step].compensation_generation,
                            "{ctx}: the same command"
                        );
                    }
                }
                _ => {
                    assert_eq!(t.state.status, Status::Running, "{ctx}");
                    // The stage's actions that have not succeeded (else the
                    // cursor's). A refused action (a forward-only step) is
                    // sent as a new command; anything else as the same one.
                    let mut members: Vec<usize> = def
                        .stage(cursor)
                        .filter(|&i| input.steps[i].state != S::Succeeded)
                        .collect();
                    if members.is_empty() {
                        members = vec![cursor];
                    }
                    let expected: Vec<Command> = members
                        .iter()
                        .map(|&i| {
                            let generation = input.steps[i].action_generation
                                + u32::from(input.steps[i].state == S::Refused);
                            retried_action(i, 1, generation)
                        })
                        .collect();
                    assert_eq!(sent, expected, "{ctx}");
                }
            }
        }
        (Event::Retry, _) => panic!("{ctx}: a retry of a saga that is not paused or suspended"),
        (Event::Cancel { reason }, Status::Running)
        | (Event::Cancel { reason }, Status::Suspended)
            if input.status == Status::Running || resumes_in == Status::Running =>
        {
            assert_eq!(note_kind(t), Some("cancel_requested"), "{ctx}");
            assert_eq!(t.state.cancelled.as_deref(), Some(reason.as_str()), "{ctx}");
            assert_eq!(t.state.failed_step, Some(cursor), "{ctx}");
            let why = t.state.reason.clone().unwrap_or_default();
            assert!(why.contains(reason.as_str()), "{ctx}: reason {why}");
            assert!(
                matches!(t.state.status, Status::Compensating | Status::Compensated),
                "{ctx}"
            );
            let stage = def.stage(cursor);
            for cmd in &sent {
                assert_eq!(cmd.kind, Kind::Compensation, "{ctx}");
                assert!(cmd.step < stage.end, "{ctx}");
                assert!(def.steps[cmd.step].compensation.is_some(), "{ctx}");
            }
            // The highest step of the stage in flight is undone first (a
            // parallel group's members from its end down).
            let in_flight = stage
                .clone()
                .rev()
                .find(|&i| input.steps[i].state == S::Pending);
            let acted_above = |i: usize| {
                (i + 1..stage.end).any(|j| {
                    matches!(input.steps[j].state, S::Succeeded | S::Unknown)
                        && def.steps[j].compensation.is_some()
                })
            };
            if let Some(i) = in_flight
                && !acted_above(i)
            {
                assert_eq!(sent.first().map(|c| c.step), Some(i), "{ctx}");
            }
        }
        // Suspended going backward: it carries on backward.
        (Event::Cancel { .. }, Status::Suspended) => {
            assert_eq!(note_kind(t), Some("cancel_requested"), "{ctx}");
            assert!(
                matches!(t.state.status, Status::Compensating | Status::Compensated),
                "{ctx}"
            );
            for cmd in &sent {
                assert_eq!(cmd.kind, Kind::Compensation, "{ctx}");
                assert!(cmd.step <= cursor, "{ctx}");
            }
        }
        // Already going backward, or a repeat of the cancel that ended it.
        (
            Event::Cancel { .. },
            Status::Compensating | Status::Compensated | Status::CompensationFailed,
        ) => {
            assert_eq!(t.note, None, "{ctx}: a repeated cancel changed the saga");
        }
        (Event::Cancel { .. }, Status::Completed) => {
            panic!("{ctx}: a completed saga accepted a cancel")
        }
        (Event::Cancel { .. }, Status::Running) => unreachable!("matched above"),
        (Event::Start | Event::Timeout | Event::Outcome { .. } | Event::Suspend { .. }, _) => {}
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
                                    action_generation: spent as u32,
                                    reason: None,
                                    output: None,
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
                                suspended_from: (status == Status::Suspended)
                                    .then_some(
                                        [None, Some(Status::Running), Some(Status::Compensating)]
                                            [spent],
                                    )
                                    .flatten(),
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
    for def in [shipment(), delivery(), trip()] {
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
        assert_eq!(
            seen.len(),
            STATUSES.len() * STEP_STATES.len() * TAGS.len(),
            "{}",
            def.saga_type
        );
        assert!(applied > 100_000, "{applied}");
    }
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
            r.action_generation = r.action_generation.min(1);
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
        assert!(
            out.len() < 500_000,
            "the reachable state space is small: {}",
            out.len()
        );
    }
    out
}

/// What every reachable state looks like, by status.
fn check_reachable_shape(def: &Definition, s: &SagaState) {
    let c = s.cursor;
    let stage = def.stage(c);
    // Going backward through a parallel group, its members below the
    // cursor may still be unknown (in flight when it failed), or refused.
    let below_ok = s.steps[..c].iter().enumerate().all(|(i, r)| {
        r.state == S::Succeeded
            || (def.stage(i) == stage && matches!(r.state, S::Unknown | S::Refused))
    });
    let above_done = s.steps[c + 1..].iter().all(|r| {
        matches!(
            r.state,
            S::NotStarted | S::Refused | S::Compensated | S::NotCompensated
        )
    });
    let ctx = format!("{s:?}");
    match s.status {
        Status::Running => {
            assert_eq!(
                c, stage.start,
                "{ctx}: the cursor is its stage's first step"
            );
            assert!(
                s.steps[..c].iter().all(|r| r.state == S::Succeeded),
                "{ctx}"
            );
            assert!(
                s.steps[stage.end..]
                    .iter()
                    .all(|r| r.state == S::NotStarted),
                "{ctx}"
            );
            assert!(
                stage
                    .clone()
                    .all(|i| matches!(s.steps[i].state, S::NotStarted | S::Pending | S::Succeeded)),
                "{ctx}"
            );
            assert!(
                !stage.clone().all(|i| s.steps[i].state == S::Succeeded),
                "{ctx}: a stage all done has handed over"
            );
            assert_eq!(
                s.deadline.is_some(),
                stage.clone().any(|i| s.steps[i].state == S::Pending),
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
        // As it was when suspended, with nothing in flight.
        Status::Suspended => {
            assert_eq!(s.deadline, None, "{ctx}");
            assert!(
                s.reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with("suspended: ")),
                "{ctx}"
            );
            match s.suspended_from {
                Some(Status::Running) => {
                    assert!(below_ok, "{ctx}");
                    match s.steps[c].state {
                        S::NotStarted | S::Pending => {}
                        // A parallel group's member done, others waiting.
                        S::Succeeded if stage.len() > 1 => {}
                        // A forward-only step refused: nothing undone.
                        S::Refused => {
                            assert!(def.steps[c].forward_only, "{ctx}");
                            assert_eq!(s.failed_step, Some(c), "{ctx}");
                        }
                        other => panic!("{ctx}: suspended running at {other:?}"),
                    }
                }
                Some(Status::Compensating) => {
                    assert!(below_ok && above_done, "{ctx}");
                    assert_eq!(s.steps[c].state, S::Compensating, "{ctx}");
                }
                other => panic!("{ctx}: suspended from {other:?}"),
            }
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
    for (i, r) in s.steps.iter().enumerate() {
        // Only a forward-only step is refused and then retried.
        assert!(
            r.action_generation == 0 || def.steps[i].forward_only,
            "{ctx}"
        );
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
        let forward = s.status == Status::Running
            || (s.status == Status::Suspended && s.suspended_from == Some(Status::Running));
        let pending_member = forward && stage.contains(&i) && r.state == S::Pending;
        let unknown_member = stage.contains(&i) && i < c && r.state == S::Unknown;
        assert!(
            i == c
                || pending_member
                || unknown_member
                || !matches!(r.state, S::Pending | S::Compensating | S::Unknown),
            "{ctx}"
        );
        assert!(
            r.attempts <= action_attempts(def, i) || def.steps[i].compensation.is_none(),
            "{ctx}"
        );
        assert!(r.compensation_attempts <= undo_attempts(def, i), "{ctx}");
    }
    assert_eq!(
        !s.in_flight(def).is_empty(),
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

/// The trip saga's shape, smaller: a group of two with two attempts each,
/// then the charge and the pivot.
fn small_trip() -> Definition {
    let mut def = trip();
    def.steps.remove(5);
    def.steps.remove(2);
    for step in &mut def.steps {
        step.policy.max_attempts = 2;
        step.compensation_policy.max_attempts = 2;
    }
    def
}

#[test]
fn every_reachable_state_handles_every_event() {
    for def in [
        shipment(),
        order_with_two_attempts(),
        delivery(),
        small_trip(),
    ] {
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
