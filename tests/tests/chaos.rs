//! Chaos: sagas keep their promises while every part of the system is
//! SIGKILLed, stopped and restarted under them, and while a participant
//! refuses to undo for a while.
//!
//! `sagas_survive_a_seeded_fault_schedule` starts at least 1,000 sagas of
//! both types at a steady rate, every fifth a trip (mixed orders and mixed
//! trips: full flights, customers who cannot pay, travellers refused at
//! the pivot), under a seeded schedule:
//!
//! - sequential faults: SIGKILL and restart the orchestrator, the relay,
//!   each participant (the trip saga's four too) and the Pub/Sub emulator
//!   (which loses every topic, subscription and unacked message), one at a
//!   time, down up to 3 s;
//! - overlapping them, the order saga's participants and the flight
//!   participant (a member of the trip's parallel group) unreachable for
//!   longer than an action's attempt budget (3 attempts of 2 s here, for
//!   both saga types): SIGKILLed and kept down, or SIGSTOPped; two of them
//!   at once. In-flight actions are given up on (outcome UNKNOWN) and
//!   compensated, a trip's siblings still deciding included; compensations
//!   that reach a participant before their actions leave tombstones; the
//!   pivot is re-sent past its attempts;
//! - the payment participant refusing the refunds of `cust-alice` for a
//!   while (the customer's refunds held): the sagas that must refund her
//!   pause in COMPENSATION_FAILED; when the hold is lifted, and again at the
//!   end, the test acts as the operator: it lists them (`ListSagas`) and
//!   retries them (`RetrySaga`);
//! - a side subscriber re-publishing a sample of the events, some at once
//!   and some seconds late.
//!
//! None of this depends on how outcomes travel back: unreachable
//! participants return nothing by any path. Then every saga must reach a
//! terminal state, every paused one must end COMPENSATED after the retries
//! (none may stay paused), every saga whose history shows no fault path
//! must end exactly as a clean run ends it (the others are counted), the
//! per-saga reconciliation and books must find no saga wrong, the business
//! invariants must hold (for each trip: a completed one holds its seat,
//! room and car, is charged once and has its itinerary; a compensated one
//! holds and is charged nothing; per flight, hotel and car location, units
//! taken equal reservations held), and no process may have died by
//! itself. It ends with one line:
//!
//! `chaos: seed=S sagas=N trips=N terminal=N lost=N double_applied=N faults=N invariants=ok|FAILED settle_s=X unknown=N tombstones=N paused=N retried=N`
//!
//! In the default form (none of the variables below set) unknown,
//! tombstones, paused and retried must each be above 0: the paths are
//! exercised, not only claimed. Replay a run with its printed seed:
//! `SAGAFLOW_CHAOS_SEED=S`. Run longer by hand with `SAGAFLOW_CHAOS_SAGAS`
//! (default 1000), `SAGAFLOW_CHAOS_FAULTS` (sequential faults, default 10) or
//! `SAGAFLOW_CHAOS_DURATION_S` (faults until then; the placement rate is
//! spread over it), `SAGAFLOW_CHAOS_RATE` (sagas/s, default 15) and
//! `SAGAFLOW_CHAOS_SETTLE_S` (bound on settling, default 300).
//!
//! `an_emulator_restart_loses_events_and_deadlines_recover_them` is the
//! focused version of the emulator fault: the restart loses events in
//! flight; the step deadlines re-send the commands, the participants
//! re-emit the stored outcomes, and every saga finishes.
//!
//! `a_pivot_whose_outcome_is_late_is_not_compensated`: the pivot's outcome
//! takes longer than its attempts; the saga keeps re-sending it (nothing
//! could undo it) and completes, instead of undoing the payment and the
//! stock of an order that was approved.

use std::time::{Duration, Instant};

use sagaflow_common::db;
use sagaflow_tests::audit::{self, count_in_log};
use sagaflow_tests::checks::Checks;
use sagaflow_tests::definitions::Policies;
use sagaflow_tests::duplicator::{self, Duplicator};
use sagaflow_tests::faults::{self, OverlayTiming, Plan, Target, Timing};
use sagaflow_tests::orders::{Expect, mixed};
use sagaflow_tests::placer::{Pace, Start, place_all};
use sagaflow_tests::system::{Options, PARTICIPANTS, System, TRIP_PARTICIPANTS};
use sagaflow_tests::{injector, invariants, outcomes, paused, trips, wait_for};

/// The schedule test's step policies. Actions: 3 attempts of 2 s, so an
/// outage of a participant longer than 6 s makes in-flight actions UNKNOWN.
/// Compensations: 60 attempts of 3 s, far longer than any outage (an undo
/// must happen), and than the minute for which the emulator keeps the
/// messages it leased to the streams of a killed orchestrator (see
/// `common/src/pubsub/subscriber.rs`). Calls time out after 2 s, so calls
/// to a stopped participant do not hold every send slot.
fn chaos_policies() -> Policies {
    Policies {
        deadline: Some(Duration::from_millis(2000)),
        attempts: Some(3),
        compensation_deadline: Some(Duration::from_millis(3000)),
        compensation_attempts: Some(60),
        backoff_cap: Some(Duration::from_millis(1000)),
        ..Policies::default()
    }
}

fn chaos_env() -> Vec<(String, String)> {
    [
        ("SAGAFLOW_COMMAND_TIMEOUT_MS", "2000"),
        ("SAGAFLOW_TIMER_POLL_MS", "250"),
        // "event already applied" is logged at debug: it counts the
        // redeliveries the orchestrator absorbed.
        (
            "RUST_LOG",
            "info,sagaflow_orchestrator::consumer=debug,sagaflow_orchestrator::driver=warn",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The focused tests' step policies: quick re-sends (a lost event costs one
/// 3 s deadline) and attempts far longer than any outage they cause, so
/// recovery by re-sends is what they see, not compensation.
fn recovery_policies() -> Policies {
    Policies {
        deadline: Some(Duration::from_millis(3000)),
        attempts: Some(30),
        compensation_attempts: Some(60),
        backoff_cap: Some(Duration::from_millis(1000)),
        ..Policies::default()
    }
}

fn recovery_env() -> Vec<(String, String)> {
    [("SAGAFLOW_TIMER_POLL_MS", "250")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn env_num<T: std::str::FromStr>(name: &str) -> anyhow::Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{name}={v:?}: {e}")),
        _ => Ok(None),
    }
}

/// Log lines (in every orchestrator log) that show a redelivered or
/// duplicated event being ignored.
fn absorbed_redeliveries(sys: &System) -> usize {
    sys.orchestrator_urls()
        .iter()
        .enumerate()
        .map(|(n, _)| {
            let log = sys.log_of(&format!("orchestrator-{n}"));
            count_in_log(&log, "event already applied")
                + count_in_log(&log, "late or duplicate outcome")
        })
        .sum()
}

/// The operator's part at the end: while sagas are paused, retry them and
/// wait for them to finish again. Returns the retries made.
async fn retry_until_none_paused(
    sys: &System,
    ids: &[uuid::Uuid],
    bound: Duration,
) -> anyhow::Result<usize> {
    let mut retried = 0;
    for round in 100..110 {
        let r = paused::retry_all(sys, round, "chaos: paused by held refunds; hold lifted").await?;
        println!(
            "chaos: operator round {round}: {} paused, {} retried, {} moved on by themselves",
            r.listed,
            r.retried,
            r.refused.len()
        );
        retried += r.retried;
        if r.listed == 0 {
            break;
        }
        audit::wait_all_terminal(&sys.dbs.orchestrator, ids, bound).await?;
    }
    Ok(retried)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_survive_a_seeded_fault_schedule() -> anyhow::Result<()> {
    let seed = faults::seed_from_env("SAGAFLOW_CHAOS_SEED")?;
    let sagas: Option<usize> = env_num("SAGAFLOW_CHAOS_SAGAS")?;
    let duration: Option<Duration> =
        env_num::<u64>("SAGAFLOW_CHAOS_DURATION_S")?.map(Duration::from_secs);
    let faults_var: Option<usize> = env_num("SAGAFLOW_CHAOS_FAULTS")?;
    let rate_var: Option<f64> = env_num("SAGAFLOW_CHAOS_RATE")?;
    let default_form =
        sagas.is_none() && duration.is_none() && faults_var.is_none() && rate_var.is_none();
    let sagas = sagas.unwrap_or(1000);
    let fault_count: Option<usize> = match (faults_var, duration) {
        (Some(n), _) => Some(n),
        (None, Some(_)) => None,
        (None, None) => Some(10),
    };
    let rate: f64 = match (rate_var, duration) {
        (Some(r), _) => r,
        (None, Some(d)) => sagas as f64 / d.as_secs_f64().max(1.0),
        (None, None) => 15.0,
    };
    let settle_bound = Duration::from_secs(env_num("SAGAFLOW_CHAOS_SETTLE_S")?.unwrap_or(300));
    println!(
        "chaos: seed={seed} (replay with SAGAFLOW_CHAOS_SEED={seed}); {sagas} sagas at {rate:.1}/s; sequential faults: {}",
        match (fault_count, duration) {
            (Some(n), Some(d)) => format!("{n} or {}s", d.as_secs()),
            (Some(n), None) => n.to_string(),
            (None, Some(d)) => format!("for {}s", d.as_secs()),
            (None, None) => unreachable!(),
        }
    );

    let mut sys = System::start(
        "chaos",
        Options {
            env: chaos_env(),
            policies: chaos_policies(),
            trip: true,
            ..Options::default()
        },
    )
    .await?;
    println!("chaos: logs in {}", sys.log_dir.display());
    let dup = Duplicator::start(
        &sys,
        duplicator::Config {
            probability: 0.3,
            delayed_share: 0.5,
            max_delay: Duration::from_secs(4),
            seed: seed ^ 0x5eed_d0b1e,
        },
    )
    .await?;

    // Every fifth saga a trip.
    let is_trip = |i: usize| i % 5 == 4;
    let orders: Vec<(Start, Expect)> = (0..sagas)
        .map(|i| match is_trip(i) {
            true => {
                let (req, expect) = trips::mixed("chaos", i / 5);
                (req.into(), expect)
            }
            false => {
                let (req, expect) = mixed(i);
                (req.into(), expect)
            }
        })
        .collect();
    let clients = sys.orchestrator_clients()?;
    let mut targets: Vec<Target> = ["orchestrator-0", "relay"]
        .into_iter()
        .chain(PARTICIPANTS)
        .chain(TRIP_PARTICIPANTS)
        .map(|n| Target::Process(n.to_owned()))
        .collect();
    targets.push(Target::Emulator);
    let mut plan = Plan::new(seed, targets, Timing::default());
    // Overlays spread over the placements: an action's budget is 6 s.
    let window = duration.unwrap_or(Duration::from_secs_f64(sagas as f64 / rate));
    // The order saga's participants, and flight: a trip group member.
    let outages: Vec<&str> = PARTICIPANTS.into_iter().chain(["flight"]).collect();
    let overlays = faults::overlays(
        seed,
        &outages,
        "cust-alice",
        OverlayTiming {
            window,
            down_min: Duration::from_secs(8),
            down_max: Duration::from_secs(12),
            held: Duration::from_secs(8),
        },
    );
    for o in &overlays {
        println!("chaos: overlay at t={:.1}s: {o}", o.at().as_secs_f64());
    }
    let started = Instant::now();
    let until = duration.map(|d| started + d);
    let placing = async {
        let placed = place_all(
            &clients,
            orders,
            Pace {
                per_second: rate,
                concurrency: 32,
                give_up_after: Duration::from_secs(180),
                ..Pace::default()
            },
        )
        .await?;
        anyhow::Ok((placed, Instant::now()))
    };
    let faulting = injector::run(&mut sys, &mut plan, &overlays, fault_count, until, |line| {
        println!("chaos: {line}")
    });
    // A schedule that fails ends the test at once (placements would wait on
    // whatever it left down).
    let ((placed, placed_at), report) = tokio::try_join!(placing, faulting)?;
    let ids: Vec<uuid::Uuid> = placed.iter().map(|p| p.saga_id).collect();
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "two orders share a saga");
    let retried_placements = placed.iter().filter(|p| p.calls > 1).count();
    println!(
        "chaos: {} sagas placed in {:.1}s ({retried_placements} needed more than one call); {} faults in {:.1}s",
        ids.len(),
        (placed_at - started).as_secs_f64(),
        report.done.len(),
        report
            .last_recovered
            .map(|t| (t - started).as_secs_f64())
            .unwrap_or(0.0),
    );

    // Settle: every saga terminal, measured from the last fault's recovery;
    // then the operator retries what paused until nothing is.
    let last_fault = report.last_recovered.unwrap_or(started);
    let mut settled = audit::wait_all_terminal(&sys.dbs.orchestrator, &ids, settle_bound).await;
    let mut retried = report.retried;
    if settled.is_ok() {
        match retry_until_none_paused(&sys, &ids, settle_bound).await {
            Ok(n) => retried += n,
            Err(e) => settled = Err(e),
        }
    }
    let settle = last_fault.elapsed();
    let after_placement = placed_at.elapsed();
    let lost = audit::not_terminal(&sys.dbs.orchestrator, &ids).await?;
    if let Err(e) = &settled {
        println!("chaos: {e}");
    }
    let still_paused = paused::list(&sys).await?;

    let stats = dup.stop().await;
    let checks = Checks::run(&sys).await?;
    let audit = &checks.audit;
    let expected: Vec<(uuid::Uuid, Expect)> =
        placed.iter().map(|p| (p.saga_id, p.expect)).collect();
    let outcomes = outcomes::classify(&sys.dbs.orchestrator, &expected).await?;
    let c = db::connect(&sys.dbs.orchestrator).await?;
    let reasons = c
        .query(
            "SELECT status, COALESCE(reason, ''), count(*) FROM sagas
             WHERE status <> 'COMPLETED' GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 8",
            &[],
        )
        .await?;
    let unexpected_exits = {
        let mut v = report.unexpected_exits.clone();
        v.extend(
            sys.reap()
                .into_iter()
                .map(|(n, s)| format!("{n} exited by itself ({s})")),
        );
        v
    };
    let absorbed = absorbed_redeliveries(&sys);

    println!("chaos: {outcomes}");
    for r in &reasons {
        let (s, reason, n): (String, String, i64) = (r.get(0), r.get(1), r.get(2));
        println!("chaos: {n:>5} {s}: {reason}");
    }
    println!(
        "chaos: redeliveries absorbed by the orchestrator: {absorbed} (log lines); injected copies: {} at once + {} late ({} failed to publish, of {} events seen); events re-emitted by participants for repeated commands: {}; commands re-sent by deadline: {}; pivot re-sent past its attempts: {}; events applied: {}",
        stats.immediate.load(std::sync::atomic::Ordering::Relaxed),
        stats.delayed.load(std::sync::atomic::Ordering::Relaxed),
        stats.failed.load(std::sync::atomic::Ordering::Relaxed),
        stats.seen.load(std::sync::atomic::Ordering::Relaxed),
        audit.outbox_rows - audit.outbox_events,
        audit.entries("resent"),
        audit.entries("step_overdue"),
        audit.processed_events,
    );
    println!(
        "chaos: by status {:?}; history kinds {:?}; invariants {:?}",
        audit.by_status, audit.kinds, checks.invariants
    );
    println!("chaos: {}", checks.describe());
    for line in checks
        .problems(20)
        .iter()
        .chain(&outcomes.wrong)
        .chain(&unexpected_exits)
        .chain(&still_paused)
        .take(30)
    {
        println!("chaos: PROBLEM {line}");
    }
    println!(
        "chaos: settled {:.1}s after the last fault, {:.1}s after the last placement",
        settle.as_secs_f64(),
        after_placement.as_secs_f64()
    );
    let terminal = ids.len() - lost;
    let (unknown, tombstones, paused) = (
        audit.sagas_with("step_timed_out"),
        audit.tombstones,
        audit.sagas_with("compensation_failed"),
    );
    let trips_placed = placed.iter().filter(|p| is_trip(p.index)).count();
    println!(
        "chaos: seed={seed} sagas={} trips={} terminal={terminal} lost={lost} double_applied={} faults={} invariants={} settle_s={:.1} unknown={unknown} tombstones={tombstones} paused={paused} retried={retried}",
        ids.len(),
        checks.trips,
        checks.double_applied(),
        report.done.len(),
        checks.invariants_word(),
        settle.as_secs_f64(),
    );

    assert_eq!(lost, 0, "sagas not terminal after {settle_bound:?}");
    assert!(still_paused.is_empty(), "still paused: {still_paused:?}");
    checks.assert_ok(&sys);
    assert!(outcomes.wrong.is_empty(), "{:?}", outcomes.wrong);
    assert!(unexpected_exits.is_empty(), "{unexpected_exits:?}");
    assert!(ids.len() >= sagas, "placed {} of {sagas}", ids.len());
    assert_eq!(checks.trips, trips_placed, "every trip checked per saga");
    if default_form {
        assert!(unknown > 0, "no action was given up on (UNKNOWN)");
        assert!(tombstones > 0, "no compensation overtook its action");
        assert!(paused > 0, "no saga paused");
        assert!(retried > 0, "the operator retried nothing");
    }
    Ok(())
}

async fn unsent_outbox_rows(sys: &System) -> anyhow::Result<i64> {
    let mut unsent = 0;
    for url in [&sys.dbs.order, &sys.dbs.payment, &sys.dbs.inventory] {
        let c = db::connect(url).await?;
        unsent += c
            .query_one("SELECT count(*) FROM outbox WHERE sent_at IS NULL", &[])
            .await?
            .get::<_, i64>(0);
    }
    Ok(unsent)
}

async fn wait_all_terminal(sys: &System, ids: &[uuid::Uuid]) -> anyhow::Result<Duration> {
    let t = Instant::now();
    audit::wait_all_terminal(&sys.dbs.orchestrator, ids, Duration::from_secs(180))
        .await
        .map_err(|e| anyhow::anyhow!("{e}; logs in {}", sys.log_dir.display()))?;
    Ok(t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emulator_restart_loses_events_and_deadlines_recover_them() -> anyhow::Result<()> {
    let mut sys = System::start(
        "emurestart",
        Options {
            env: recovery_env(),
            policies: recovery_policies(),
            ..Options::default()
        },
    )
    .await?;
    let clients = sys.orchestrator_clients()?;

    // A: the emulator restarts under a running system. The orchestrator
    // notices its subscription is gone and re-creates it; events lost in
    // the restart come back when step deadlines re-send their commands.
    let batch: Vec<_> = (0..40).map(mixed).collect();
    let a: Vec<uuid::Uuid> = place_all(&clients, batch, Pace::default())
        .await?
        .iter()
        .map(|p| p.saga_id)
        .collect();
    let a_in_flight = audit::not_terminal(&sys.dbs.orchestrator, &a).await?;
    let outage = sys.restart_emulator().await?;
    let a_settle = wait_all_terminal(&sys, &a).await?;
    let log = sys.log_of("orchestrator-0");
    let recreated = wait_for(
        "the orchestrator to re-create its subscription",
        Duration::from_secs(60),
        || {
            let n = count_in_log(&log, "re-created the Pub/Sub subscription");
            async move { Ok((n >= 1).then_some(n)) }
        },
    )
    .await?;
    let resent_a = resent(&sys).await?;
    println!(
        "emulator restart A: {a_in_flight} of {} sagas in flight, emulator back after {:.1}s, all terminal {:.1}s later; subscription re-created {recreated}x; commands re-sent by deadline: {resent_a}",
        a.len(),
        outage.as_secs_f64(),
        a_settle.as_secs_f64()
    );

    // B: events certainly lost. With the orchestrator dead, the relay
    // publishes outcomes nobody consumes; the emulator restart drops them.
    // Only a re-send of the same command (the participant answers
    // DUPLICATE and re-emits its stored event) can finish those sagas.
    let reemitted_before = {
        let au = audit::audit(&sys.dbs).await?;
        au.outbox_rows - au.outbox_events
    };
    let batch: Vec<_> = (40..80).map(mixed).collect();
    let b: Vec<uuid::Uuid> = place_all(&clients, batch, Pace::default())
        .await?
        .iter()
        .map(|p| p.saga_id)
        .collect();
    sys.kill("orchestrator-0");
    let b_in_flight = audit::not_terminal(&sys.dbs.orchestrator, &b).await?;
    wait_for(
        "the relay to publish every outbox row",
        Duration::from_secs(60),
        || async { Ok((unsent_outbox_rows(&sys).await? == 0).then_some(())) },
    )
    .await?;
    sys.restart_emulator().await?;
    sys.restart("orchestrator-0").await?;
    let b_settle = wait_all_terminal(&sys, &b).await?;

    let checks = Checks::run(&sys).await?;
    let audit = &checks.audit;
    let reemitted = audit.outbox_rows - audit.outbox_events - reemitted_before;
    println!(
        "emulator restart B: {b_in_flight} of {} sagas in flight with their outcomes lost, all terminal {:.1}s after the orchestrator restarted; events re-emitted for repeated commands: {reemitted}; commands re-sent by deadline (total): {}",
        b.len(),
        b_settle.as_secs_f64(),
        resent(&sys).await?,
    );
    println!(
        "emulator restart: {:?}; double_applied={}; invariants {}",
        audit.by_status,
        checks.double_applied(),
        checks.invariants_word()
    );
    println!("emulator restart: {}", checks.describe());
    assert!(a_in_flight > 0, "the restart must catch sagas in flight");
    assert!(recreated >= 1);
    assert!(b_in_flight > 0, "the kill must catch sagas in flight");
    assert!(
        reemitted > 0,
        "lost outcomes can only come back as re-emitted events"
    );
    checks.assert_ok(&sys);
    assert_eq!(audit.count("COMPENSATION_FAILED"), 0);
    assert!(sys.reap().is_empty(), "a process died");
    Ok(())
}

async fn resent(sys: &System) -> anyhow::Result<i64> {
    let c = db::connect(&sys.dbs.orchestrator).await?;
    Ok(c.query_one(
        "SELECT count(*) FROM saga_history WHERE kind = 'resent'",
        &[],
    )
    .await?
    .get(0))
}

/// The pivot (`approve_order`, no compensation) acts, but its outcome does
/// not reach the orchestrator within the step's attempts: what any outage
/// of the event path (relay, Pub/Sub, the consumer) longer than attempts x
/// deadline does. Here a trigger in the order database marks the approve
/// events as sent so the relay skips them; it is dropped once the attempts
/// are spent, and the next re-send's re-emitted event gets through.
///
/// A step that cannot be compensated must not be declared unknown and
/// compensated around: the order is APPROVED, so undoing the payment and
/// the stock breaks the books (and CancelOrder is refused: the saga ends
/// COMPENSATION_FAILED). The pivot keeps being re-sent until its outcome
/// arrives, the saga says why it waits, and it completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pivot_whose_outcome_is_late_is_not_compensated() -> anyhow::Result<()> {
    let deadline = Duration::from_millis(1000);
    let attempts = 3u32;
    let sys = System::start(
        "pivot",
        Options {
            policies: Policies {
                deadline: Some(deadline),
                attempts: Some(attempts),
                ..Policies::default()
            },
            env: vec![
                ("SAGAFLOW_TIMER_POLL_MS".into(), "100".into()),
                // The approval's outcome must be missing everywhere: its
                // event is lost below, and its reply is not used (as when
                // the call times out after the participant committed).
                ("SAGAFLOW_FAST_PATH".into(), "false".into()),
            ],
            ..Options::default()
        },
    )
    .await?;
    let order_db = db::connect(&sys.dbs.order).await?;
    order_db
        .batch_execute(
            "CREATE FUNCTION lose_approvals() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.event_type LIKE 'order.approve_order.action.%' THEN
                     NEW.sent_at := now();
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER lose_approvals BEFORE INSERT ON outbox
                 FOR EACH ROW EXECUTE FUNCTION lose_approvals();",
        )
        .await?;
    let clients = sys.orchestrator_clients()?;
    let placed = place_all(&clients, vec![mixed(0)], Pace::default()).await?;
    let id = placed[0].saga_id;
    assert_eq!(placed[0].expect, Expect::Completed);

    // Until the approve was sent more than `attempts` deadlines ago (or the
    // saga gave up on it).
    let c = db::connect(&sys.dbs.orchestrator).await?;
    let spent = deadline * (attempts + 2);
    wait_for(
        "the pivot's attempts to be spent",
        Duration::from_secs(60),
        || {
            let c = &c;
            async move {
                let r = c
                    .query_one(
                        "SELECT s.status, (SELECT min(at) FROM saga_history h
                        WHERE h.saga_id = s.saga_id AND h.detail LIKE '%sent approve_order%')
                        < now() - $2::float8 * interval '1 second'
                     FROM sagas s WHERE saga_id = $1",
                        &[&id, &spent.as_secs_f64()],
                    )
                    .await?;
                let (status, spent): (String, Option<bool>) = (r.get(0), r.get(1));
                Ok((status != "RUNNING" || spent == Some(true)).then_some(()))
            }
        },
    )
    .await?;
    // Still running, and saying why.
    let r = c
        .query_one(
            "SELECT status, COALESCE(reason, ''),
                    (SELECT count(*) FROM saga_history h
                     WHERE h.saga_id = s.saga_id AND h.kind = 'step_overdue')
             FROM sagas s WHERE saga_id = $1",
            &[&id],
        )
        .await?;
    let (waiting, reason, overdue): (String, String, i64) = (r.get(0), r.get(1), r.get(2));
    println!(
        "pivot: while its outcome is missing: {waiting}, {overdue} overdue re-sends; {reason}"
    );
    assert_eq!(waiting, "RUNNING");
    assert!(reason.contains("cannot be undone"), "{reason}");
    assert!(overdue >= 1);
    order_db
        .batch_execute("DROP TRIGGER lose_approvals ON outbox")
        .await?;
    audit::wait_all_terminal(&sys.dbs.orchestrator, &[id], Duration::from_secs(60)).await?;
    let status = audit::statuses(&sys.dbs.orchestrator, &[id]).await?[&id].clone();
    let inv = invariants::check(&sys.dbs.order, &sys.dbs.payment, &sys.dbs.inventory).await?;
    println!("pivot: saga {status}; invariants {:?}", inv.violations);
    assert!(inv.ok(), "{:?}", inv.violations);
    assert_eq!(status, "COMPLETED");
    Ok(())
}
