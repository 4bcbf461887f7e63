//! Property tests: a random world of participants that succeed, refuse or
//! never answer, driven by a scheduler that reorders, duplicates and delays
//! events and fires timers.

use std::fmt;

use proptest::collection::vec;
use proptest::prelude::*;

use super::super::*;
use super::fixtures::*;
use crate::definitions::order;

use StepState as S;

// ---------------------------------------------------------------------------
// Property tests: a random world and a random scheduler
// ---------------------------------------------------------------------------

/// How a participant answers one kind of command for one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reply {
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
pub(super) struct World {
    pub(super) def: Definition,
    pub(super) action: Vec<Reply>,
    pub(super) undo: Vec<Reply>,
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
    pub(super) fn uniform(def: &Definition, action: Reply, undo: Reply) -> World {
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
            // An operator retries a refused forward-only step once its
            // cause is fixed: the new command succeeds.
            (Kind::Action, 1..) => Reply::Succeeds,
            (Kind::Action, 0) => self.action[cmd.step],
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
            let forward_only = self.def.steps[i].forward_only;
            match self.action[i] {
                Reply::Succeeds => sends.push(action(i, 1)),
                // Past the pivot a refusal undoes nothing: the saga waits,
                // suspended, for an operator.
                Reply::Refuses if forward_only => {
                    sends.push(action(i, 1));
                    return (sends, Status::Suspended);
                }
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
                    if reply == Reply::LateRefuses && forward_only {
                        return (sends, Status::Suspended);
                    }
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
pub(super) struct Run<'w> {
    pub(super) world: &'w World,
    pub(super) state: SagaState,
    pub(super) now: Millis,
    /// Published outcome events not yet delivered (Pub/Sub in flight).
    pub(super) pool: Vec<Event>,
    /// Late answers, published once their command is no longer in flight.
    pub(super) held: Vec<(Command, Event)>,
    /// Events delivered at least once, for redelivery.
    pub(super) delivered: Vec<Event>,
    /// Every command sent, in order.
    pub(super) sends: Vec<Command>,
    pub(super) finishes: Vec<Status>,
    /// The saga has left `Running`.
    pub(super) compensation_began: bool,
    /// Steps whose action refusal has been delivered.
    pub(super) known_refused: Vec<bool>,
    /// The scheduler may fire a due timer while an answer is in flight.
    pub(super) impatient: bool,
    /// An operator may cancel, and retries paused sagas.
    pub(super) operator: bool,
    /// An operator's cancel changed the saga.
    pub(super) cancelled: bool,
    /// Operator retries of paused sagas applied.
    pub(super) retries: u32,
    /// Suspensions by the engine, and operator retries that resumed them.
    pub(super) suspensions: u32,
    pub(super) resumes: u32,
    /// Outcomes refused while suspended (dead-lettered), re-driven by the
    /// operator once the saga is resumed.
    pub(super) dead: Vec<Event>,
    /// Where the current attempt count of each command started: the index
    /// in `sends` after which its sends count (a resume restarts them).
    pub(super) counted_from: usize,
    /// An operator's event is resuming a suspended saga right now.
    pub(super) resuming: bool,
}

/// More than any run needs: each retry after the first succeeds unless a
/// stale refusal of an earlier generation pauses it again.
const MAX_RETRIES: u32 = 1_000;

impl<'w> Run<'w> {
    pub(super) fn start(
        world: &'w World,
        impatient: bool,
        operator: bool,
    ) -> Result<Run<'w>, TestCaseError> {
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
            suspensions: 0,
            resumes: 0,
            dead: Vec::new(),
            counted_from: 0,
            resuming: false,
        };
        let note = run.deliver(start())?;
        prop_assert!(note.is_some(), "Start did nothing");
        Ok(run)
    }

    /// Apply `event` now and check the transition.
    pub(super) fn deliver(&mut self, event: Event) -> Result<Option<Note>, TestCaseError> {
        let def = &self.world.def;
        // (e) Whatever the world really produced is accepted, except news
        // for a suspended saga: dead-lettered, re-driven once resumed.
        let t = match apply(def, &self.state, &event, self.now) {
            Err(Error::Suspended { .. }) if self.state.status == Status::Suspended => {
                self.dead.push(event);
                return Ok(None);
            }
            result => result.map_err(|e| {
                fail(format!(
                    "(e) the world produced {event:?}, apply failed: {e}\nstate: {:?}",
                    self.state
                ))
            })?,
        };
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
        if matches!(
            t.state.status,
            Status::Compensating | Status::Compensated | Status::CompensationFailed
        ) {
            self.compensation_began = true;
        }
        // What at-least-once delivery may repeat: the participants' events,
        // and an operator's cancel (a client retrying its call).
        let repeatable = match event {
            Event::Start | Event::Outcome { .. } => true,
            // (A cancel that only resumed a suspended compensation is not
            // the cancel that ends the saga: a repeat is refused then.)
            Event::Cancel { .. } => t.note.is_some() && t.state.cancelled.is_some(),
            Event::Timeout | Event::Retry | Event::Suspend { .. } => false,
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
        let was_suspended = self.state.status == Status::Suspended;
        match apply(def, &self.state, &event, self.now) {
            Ok(_) => {
                // A resume re-sends the in-flight command from attempt 1.
                self.counted_from = self.sends.len();
                self.resuming = was_suspended;
                let note = self.deliver(event.clone());
                self.resuming = false;
                let note = note?;
                match event {
                    // (A cancel of a suspended compensation only resumes it.)
                    Event::Cancel { .. } => {
                        self.cancelled |= note.is_some() && self.state.cancelled.is_some()
                    }
                    Event::Retry if was_suspended => {
                        prop_assert!(note.is_some(), "a retry of a suspended saga did nothing");
                        self.resumes += 1;
                    }
                    Event::Retry => {
                        prop_assert!(note.is_some(), "a retry of a paused saga did nothing");
                        self.retries += 1;
                    }
                    Event::Start
                    | Event::Timeout
                    | Event::Outcome { .. }
                    | Event::Suspend { .. } => {}
                }
                if was_suspended && self.state.status != Status::Suspended {
                    // The operator re-drives what was dead-lettered meanwhile.
                    self.pool.append(&mut self.dead);
                }
                Ok(())
            }
            Err(Error::PastPivot { step, .. }) => {
                prop_assert!(def.steps[step].compensation.is_none());
                prop_assert!(matches!(
                    self.state.status,
                    Status::Running | Status::Suspended
                ));
                Ok(())
            }
            Err(Error::NotCancellable { status }) => {
                prop_assert!(status.is_terminal() && !self.cancelled);
                Ok(())
            }
            Err(Error::NotRetryable { status }) => {
                prop_assert!(!matches!(
                    status,
                    Status::CompensationFailed | Status::Suspended
                ));
                Ok(())
            }
            Err(e) => Err(fail(format!(
                "{event:?} failed: {e}\nstate: {:?}",
                self.state
            ))),
        }
    }

    /// A repeat of an outcome for a step an operator retried:
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
                step,
                kind: Kind::Action,
                ..
            } => self.state.steps[*step].action_generation > 0,
            Event::Start
            | Event::Timeout
            | Event::Retry
            | Event::Cancel { .. }
            | Event::Suspend { .. } => false,
        }
    }

    fn on_send(&mut self, cmd: Command, new: &SagaState) -> Result<(), TestCaseError> {
        let step = &self.world.def.steps[cmd.step];
        prop_assert!(
            new.in_flight(&self.world.def).contains(&cmd),
            "persist before acting"
        );
        let earlier = |kind: Kind| {
            self.sends[self.counted_from..]
                .iter()
                .filter(|c| c.kind == kind && c.step == cmd.step)
                .count()
        };
        let resumed = self.resuming;
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
                prop_assert_eq!(cmd.generation, new.steps[cmd.step].action_generation);
                // Only a refused forward-only step is sent as a new command.
                prop_assert!(cmd.generation == 0 || step.forward_only);
            }
            Kind::Compensation => {
                // (c)
                prop_assert!(
                    step.compensation.is_some(),
                    "(c) undo of {} which has no compensation",
                    step.name
                );
                prop_assert!(
                    self.sends
                        .iter()
                        .any(|c| c.kind == Kind::Action && c.step == cmd.step),
                    "(c) undo of a step never sent"
                );
                let last = self
                    .sends
                    .iter()
                    .rev()
                    .find(|c| c.kind == Kind::Compensation);
                match last {
                    // A resume: the same command, a fresh budget.
                    Some(last)
                        if resumed
                            && last.step == cmd.step
                            && last.generation == cmd.generation =>
                    {
                        prop_assert_eq!(cmd.attempt, 1);
                    }
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
                // (An operator's retry, or a resume, re-sends an undo the
                // saga already committed to: a no-op at a participant that
                // refused.)
                if cmd.attempt == 1 && cmd.generation == 0 && !resumed {
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
        let def = &self.world.def;
        let in_flight: Vec<(usize, Kind, u32)> = self
            .state
            .in_flight(def)
            .iter()
            .map(|c| (c.step, c.kind, c.generation))
            .collect();
        let state = &self.state;
        let overdue = |cmd: &Command| {
            cmd.kind == Kind::Action
                && state.steps[cmd.step].attempts > def.steps[cmd.step].policy.max_attempts
        };
        let (still, late): (Vec<_>, Vec<_>) = self.held.drain(..).partition(|(cmd, _)| {
            in_flight.contains(&(cmd.step, cmd.kind, cmd.generation)) && !overdue(cmd)
        });
        self.held = still;
        self.pool.extend(late.into_iter().map(|(_, event)| event));
    }

    /// An answer to a command in flight is published but not delivered.
    fn answer_pending(&self) -> bool {
        self.state.in_flight(&self.world.def).iter().any(|cmd| {
            self.pool.iter().any(|e| {
                matches!(e, Event::Outcome { step, kind, .. } if *step == cmd.step && *kind == cmd.kind)
            })
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
                    // A cancel repeated after a suspension is a new act (it
                    // resumes the saga), not a client's retry of the first.
                    if matches!(event, Event::Cancel { .. })
                        && self.state.status == Status::Suspended
                    {
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
            // An operator retries a paused or suspended saga.
            9 if self.operator => {
                if matches!(
                    self.state.status,
                    Status::CompensationFailed | Status::Suspended
                ) && self.retries < MAX_RETRIES
                {
                    self.operate(retry())?;
                }
            }
            // The engine cannot go on with the saga for a while (its stored
            // state could not be read, say): it suspends it.
            10 if self.operator => {
                if pick % 4 == 0
                    && matches!(self.state.status, Status::Running | Status::Compensating)
                {
                    let note = self.deliver(suspend())?;
                    prop_assert!(note.is_some(), "a suspension did nothing");
                    self.suspensions += 1;
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
                && matches!(
                    self.state.status,
                    Status::CompensationFailed | Status::Suspended
                )
                && self.retries < MAX_RETRIES
            {
                self.operate(retry())?;
            } else if self.state.status == Status::Suspended && !self.operator {
                // A refused forward-only step waits for an operator.
                let c = self.state.cursor;
                prop_assert!(self.world.def.steps[c].forward_only);
                prop_assert_eq!(self.state.steps[c].state, S::Refused);
                prop_assert!(self.held.is_empty(), "late answers never published");
                return Ok(());
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
pub(super) fn clean_run(world: &World) -> Result<Run<'_>, TestCaseError> {
    let mut run = Run::start(world, false, false)?;
    run.drain()?;
    Ok(run)
}

pub(super) fn scheduled_run<'w>(
    world: &'w World,
    schedule: &[(u8, u16)],
    impatient: bool,
) -> Result<Run<'w>, TestCaseError> {
    operated_run(world, schedule, impatient, false)
}

/// A scheduled run in which an operator may also cancel (moves 8) and
/// retries paused sagas (moves 9, and whenever the saga pauses at the end).
pub(super) fn operated_run<'w>(
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
    (0..4u8, vec(reply(), 6), vec(reply(), 6)).prop_map(|(which, mut action, mut undo)| {
        let def = match which {
            0 => order::definition(),
            1 => shipment(),
            2 => delivery(),
            _ => trip(),
        };
        action.truncate(def.steps.len());
        undo.truncate(def.steps.len());
        World { def, action, undo }
    })
}

fn any_schedule() -> impl Strategy<Value = Vec<(u8, u16)>> {
    vec((0u8..8, any::<u16>()), 0..300)
}

/// A schedule with operator moves too.
fn any_operator_schedule() -> impl Strategy<Value = Vec<(u8, u16)>> {
    vec((0u8..11, any::<u16>()), 0..300)
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
        // A parallel group's members answer in any order, and which of two
        // refusals comes first decides what the saga reports: its runs are
        // checked for safety below, not for one end.
        if world.def.steps.iter().any(|s| s.group.is_some()) {
            return Ok(());
        }
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
        if expected_status == Status::Suspended {
            // Waiting for an operator: not finished.
            prop_assert!(clean.finishes.is_empty());
        } else {
            prop_assert_eq!(clean.finishes.last(), Some(&expected_status));
        }
    }

    /// With timers that fire while answers are still in flight (so outcomes
    /// arrive after their step was resent or given up on), every run still
    /// ends, undoes what may have acted, and never sends out of turn.
    #[test]
    fn late_outcomes_and_impatient_timers_still_end_safely(world in any_world(), schedule in any_schedule()) {
        let run = scheduled_run(&world, &schedule, true)?;

        let end = run.state.status;
        let undos = run.sends.iter().any(|c| c.kind == Kind::Compensation);
        if end == Status::Suspended {
            // Only a refused forward-only step leaves a saga waiting: with
            // nothing undone, everything before it done.
            let c = run.state.cursor;
            prop_assert!(world.def.steps[c].forward_only);
            prop_assert_eq!(run.state.failed_step, Some(c));
            prop_assert!(!undos && run.finishes.is_empty());
            prop_assert!(run.state.steps[..c].iter().all(|r| r.state == S::Succeeded));
            return Ok(());
        }
        prop_assert!(end.is_terminal());
        prop_assert_eq!(run.finishes.last(), Some(&end));
        match end {
            Status::Completed => {
                prop_assert!(!undos);
                prop_assert_eq!(run.finishes.len(), 1);
            }
            Status::Compensated => {
                // It reports the forward failure, even after a pause.
                let last_sent = run.sends.iter().filter(|c| c.kind == Kind::Action).map(|c| c.step).max();
                // The failed step is of the last stage sent (in a parallel
                // group, the member refused or out of attempts).
                let failed_step = run.state.failed_step.expect("a failed step");
                let stage = world.def.stage(last_sent.expect("an action was sent"));
                prop_assert!(stage.contains(&failed_step), "failed {} of {:?}", failed_step, stage);
                let failed = &world.def.steps[failed_step].name;
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
            Status::Running | Status::Compensating | Status::Suspended => unreachable!(),
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
        let stage = last_sent.map(|s| world.def.stage(s)).unwrap_or(0..0);
        if end == Status::Completed {
            prop_assert!(!undos && !run.cancelled && run.retries == 0);
        } else {
            let failed_step = run.state.failed_step.expect("a failed step");
            prop_assert!(stage.contains(&failed_step), "failed {} of {:?}", failed_step, stage);
            let failed = &world.def.steps[failed_step].name;
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
                // Nothing is undone around a step that cannot be undone: a
                // saga whose pivot may have acted never turns back.
                prop_assert!(
                    !sent || matches!(rec.state, S::Refused | S::Compensated),
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
