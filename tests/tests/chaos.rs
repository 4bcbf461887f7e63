//! Chaos: sagas keep their promises while every part of the system is
//! SIGKILLed and restarted under them.
//!
//! `sagas_survive_a_seeded_fault_schedule` places at least 1,000 mixed
//! orders at a steady rate while a seeded fault schedule SIGKILLs and
//! restarts the orchestrator, the relay, each participant and the Pub/Sub
//! emulator (which loses every topic, subscription and unacked message),
//! and a side subscriber re-publishes a sample of the events, some at once
//! and some seconds late. Then every saga must reach a terminal state, none
//! may advance twice or run a step twice, the business invariants must
//! hold, and no compensation may fail. It ends with one line:
//!
//! `chaos: seed=S sagas=N terminal=N lost=N double_applied=N faults=N invariants=ok|FAILED settle_s=X`
//!
//! Replay a run with its printed seed: `SAGAFLOW_CHAOS_SEED=S`. Run longer
//! by hand with `SAGAFLOW_CHAOS_SAGAS` (default 1000), `SAGAFLOW_CHAOS_FAULTS`
//! (default 10) or `SAGAFLOW_CHAOS_DURATION_S` (faults until then; the
//! placement rate is spread over it), `SAGAFLOW_CHAOS_RATE` (sagas/s, default
//! 15) and `SAGAFLOW_CHAOS_SETTLE_S` (bound on settling, default 300).
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

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sagaflow_common::db;
use sagaflow_tests::audit::{self, count_in_log};
use sagaflow_tests::duplicator::{self, Duplicator};
use sagaflow_tests::faults::{self, Plan, Target, Timing};
use sagaflow_tests::orders::{Expect, mixed};
use sagaflow_tests::placer::{Pace, place_all};
use sagaflow_tests::system::{Options, PARTICIPANTS, System};
use sagaflow_tests::{invariants, wait_for};

/// Step policies for quick recovery: a lost event costs one 3 s deadline.
/// Generous attempts: an action is declared unknown (and compensated) only
/// after 90 s without an outcome, a compensation gives up only after 3
/// minutes. Far longer than any outage the schedule causes, and than the
/// minute for which the emulator keeps the messages it leased to the
/// streams of a killed orchestrator (see `common/src/pubsub/subscriber.rs`).
fn chaos_env() -> Vec<(String, String)> {
    [
        ("SAGAFLOW_STEP_DEADLINE_MS", "3000"),
        ("SAGAFLOW_STEP_MAX_ATTEMPTS", "30"),
        ("SAGAFLOW_COMPENSATION_MAX_ATTEMPTS", "60"),
        ("SAGAFLOW_STEP_BACKOFF_CAP_MS", "1000"),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_survive_a_seeded_fault_schedule() -> anyhow::Result<()> {
    let seed = faults::seed_from_env("SAGAFLOW_CHAOS_SEED")?;
    let sagas: usize = env_num("SAGAFLOW_CHAOS_SAGAS")?.unwrap_or(1000);
    let duration: Option<Duration> =
        env_num::<u64>("SAGAFLOW_CHAOS_DURATION_S")?.map(Duration::from_secs);
    let fault_count: Option<usize> = match (env_num("SAGAFLOW_CHAOS_FAULTS")?, duration) {
        (Some(n), _) => Some(n),
        (None, Some(_)) => None,
        (None, None) => Some(10),
    };
    let rate: f64 = match (env_num("SAGAFLOW_CHAOS_RATE")?, duration) {
        (Some(r), _) => r,
        (None, Some(d)) => sagas as f64 / d.as_secs_f64().max(1.0),
        (None, None) => 15.0,
    };
    let settle_bound = Duration::from_secs(env_num("SAGAFLOW_CHAOS_SETTLE_S")?.unwrap_or(300));
    println!(
        "chaos: seed={seed} (replay with SAGAFLOW_CHAOS_SEED={seed}); {sagas} sagas at {rate:.1}/s; faults: {}",
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

    let orders: Vec<_> = (0..sagas).map(mixed).collect();
    let clients = sys.orchestrator_clients()?;
    let mut targets: Vec<Target> = ["orchestrator-0", "relay"]
        .into_iter()
        .chain(PARTICIPANTS)
        .map(|n| Target::Process(n.to_owned()))
        .collect();
    targets.push(Target::Emulator);
    let mut plan = Plan::new(seed, targets, Timing::default());
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
        .await;
        (placed, Instant::now())
    };
    let faulting = faults::run(&mut sys, &mut plan, fault_count, until, |line| {
        println!("chaos: {line}")
    });
    let ((placed, placed_at), report) = tokio::join!(placing, faulting);
    let report = report?;
    let placed = placed?;
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

    // Settle: every saga terminal, measured from the last fault's recovery.
    let last_fault = report.last_recovered.unwrap_or(started);
    let settled = audit::wait_all_terminal(&sys.dbs.orchestrator, &ids, settle_bound).await;
    let settle = last_fault.elapsed();
    let after_placement = placed_at.elapsed();
    let lost = audit::not_terminal(&sys.dbs.orchestrator, &ids).await?;
    if let Err(e) = &settled {
        println!("chaos: {e}");
    }

    let stats = dup.stop().await;
    let audit = audit::audit(&sys.dbs).await?;
    let report_inv =
        invariants::check(&sys.dbs.order, &sys.dbs.payment, &sys.dbs.inventory).await?;
    let statuses = audit::statuses(&sys.dbs.orchestrator, &ids).await?;
    let mut outcome_vs_clean: BTreeMap<(String, &str), usize> = BTreeMap::new();
    let mut impossible = Vec::new();
    for p in &placed {
        let status = statuses.get(&p.saga_id).cloned().unwrap_or_default();
        let clean = match p.expect {
            Expect::Completed => "COMPLETED",
            Expect::PaymentRefused | Expect::StockShort => "COMPENSATED",
        };
        if clean == "COMPENSATED" && status == "COMPLETED" {
            impossible.push(format!("{}: {:?} but COMPLETED", p.saga_id, p.expect));
        }
        *outcome_vs_clean.entry((status, clean)).or_default() += 1;
    }
    let c = db::connect(&sys.dbs.orchestrator).await?;
    let reasons = c
        .query(
            "SELECT status, COALESCE(reason, ''), count(*) FROM sagas
             WHERE status <> 'COMPLETED' GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 8",
            &[],
        )
        .await?;
    let resent: i64 = c
        .query_one(
            "SELECT count(*) FROM saga_history WHERE kind = 'resent'",
            &[],
        )
        .await?
        .get(0);
    let unexpected_exits = {
        let mut v = report.unexpected_exits.clone();
        v.extend(
            sys.reap()
                .into_iter()
                .map(|(n, s)| format!("{n} exited by itself ({s})")),
        );
        v
    };
    let compensation_failed = audit.count("COMPENSATION_FAILED");
    let absorbed = absorbed_redeliveries(&sys);

    for ((status, clean), n) in &outcome_vs_clean {
        println!("chaos: outcome {status:<20} where a clean run gives {clean:<12} {n}");
    }
    for r in &reasons {
        let (s, reason, n): (String, String, i64) = (r.get(0), r.get(1), r.get(2));
        println!("chaos: {n:>5} {s}: {reason}");
    }
    println!(
        "chaos: redeliveries absorbed by the orchestrator: {absorbed} (log lines); injected copies: {} at once + {} late ({} failed to publish, of {} events seen); events re-emitted by participants for repeated commands: {}; commands re-sent by deadline: {resent}; events applied: {}",
        stats.immediate.load(std::sync::atomic::Ordering::Relaxed),
        stats.delayed.load(std::sync::atomic::Ordering::Relaxed),
        stats.failed.load(std::sync::atomic::Ordering::Relaxed),
        stats.seen.load(std::sync::atomic::Ordering::Relaxed),
        audit.outbox_rows - audit.outbox_events,
        audit.processed_events,
    );
    println!(
        "chaos: by status {:?}; compensation_failed={compensation_failed}; history gaps {}; invariants {:?}",
        audit.by_status,
        audit.history_gaps.len(),
        report_inv
    );
    for line in audit
        .double_applied
        .iter()
        .chain(&audit.repeated_steps)
        .chain(&audit.history_gaps)
        .chain(&impossible)
        .chain(&unexpected_exits)
        .take(20)
    {
        println!("chaos: PROBLEM {line}");
    }
    println!(
        "chaos: settled {:.1}s after the last fault, {:.1}s after the last placement",
        settle.as_secs_f64(),
        after_placement.as_secs_f64()
    );
    let terminal = ids.len() - lost;
    let double_applied = audit.double_applied_sagas();
    println!(
        "chaos: seed={seed} sagas={} terminal={terminal} lost={lost} double_applied={double_applied} faults={} invariants={} settle_s={:.1}",
        ids.len(),
        report.done.len(),
        if report_inv.ok() { "ok" } else { "FAILED" },
        settle.as_secs_f64(),
    );

    assert_eq!(lost, 0, "sagas not terminal after {settle_bound:?}");
    assert_eq!(double_applied, 0, "{:?}", audit.double_applied);
    assert!(audit.history_gaps.is_empty(), "{:?}", audit.history_gaps);
    assert!(report_inv.ok(), "{:?}", report_inv.violations);
    assert_eq!(compensation_failed, 0, "an undo failed");
    assert!(impossible.is_empty(), "{impossible:?}");
    assert!(unexpected_exits.is_empty(), "{unexpected_exits:?}");
    assert!(ids.len() >= sagas, "placed {} of {sagas}", ids.len());
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
            env: chaos_env(),
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
    let recreated = count_in_log(
        &sys.log_of("orchestrator-0"),
        "re-created the Pub/Sub subscription",
    );
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

    let audit = audit::audit(&sys.dbs).await?;
    let reemitted = audit.outbox_rows - audit.outbox_events - reemitted_before;
    let inv = invariants::check(&sys.dbs.order, &sys.dbs.payment, &sys.dbs.inventory).await?;
    println!(
        "emulator restart B: {b_in_flight} of {} sagas in flight with their outcomes lost, all terminal {:.1}s after the orchestrator restarted; events re-emitted for repeated commands: {reemitted}; commands re-sent by deadline (total): {}",
        b.len(),
        b_settle.as_secs_f64(),
        resent(&sys).await?,
    );
    println!(
        "emulator restart: {:?}; invariants {}",
        audit.by_status,
        if inv.ok() { "ok" } else { "FAILED" }
    );
    assert!(
        a_in_flight == 0 || recreated >= 1,
        "the orchestrator never re-created its subscription"
    );
    assert!(
        b_in_flight == 0 || reemitted > 0,
        "lost outcomes can only come back as re-emitted events"
    );
    assert_eq!(
        audit.double_applied_sagas(),
        0,
        "{:?}",
        audit.double_applied
    );
    assert!(inv.ok(), "{:?}", inv.violations);
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
            env: vec![
                (
                    "SAGAFLOW_STEP_DEADLINE_MS".into(),
                    deadline.as_millis().to_string(),
                ),
                ("SAGAFLOW_STEP_MAX_ATTEMPTS".into(), attempts.to_string()),
                ("SAGAFLOW_TIMER_POLL_MS".into(), "100".into()),
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
