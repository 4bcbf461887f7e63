//! Carries out a fault schedule on a running [`System`]: the sequential
//! faults of a [`Plan`] one after another, and the [`Overlay`]s alongside
//! them at their offsets.
//!
//! A sequential fault never hits a participant that an overlay has down
//! (its target is drawn again), and two sequential faults never overlap:
//! see [`crate::faults`] for why. When a refund hold is lifted, the
//! injector acts as the operator: it retries the sagas that paused
//! meanwhile ([`crate::paused`]); sagas that pause later are the test's to
//! retry once the schedule is over.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use sagaflow_common::db;

use crate::faults::{Fault, Overlay, Plan, Target};
use crate::paused;
use crate::system::{PARTICIPANTS, System, TRIP_PARTICIPANTS};

/// A fault that was carried out.
#[derive(Debug, Clone)]
pub struct Done {
    pub what: String,
    /// When it struck, from the start of [`run`].
    pub at: Duration,
    /// From the strike until the target was back (or the hold lifted).
    pub outage: Duration,
}

/// What [`run`] did.
#[derive(Debug, Default)]
pub struct Report {
    pub done: Vec<Done>,
    /// Processes found dead that no fault had killed, with their status.
    pub unexpected_exits: Vec<String>,
    /// When the last target was back, if any fault ran.
    pub last_recovered: Option<Instant>,
    /// `RetrySaga` calls the operator made when holds were lifted.
    pub retried: usize,
}

/// What happens next.
enum Next {
    /// Overlay `i` starts (`true`) or ends.
    Overlay(usize, bool),
    /// The sequential fault in progress ends: its target comes back.
    Revive,
    /// The next sequential fault strikes.
    Strike,
}

/// Carry out faults from `plan` until `count` are done or `until` passes
/// (whichever is set and comes first; at least one must be set), and every
/// overlay. `log` receives one line per fault.
pub async fn run(
    sys: &mut System,
    plan: &mut Plan,
    overlays: &[Overlay],
    count: Option<usize>,
    until: Option<Instant>,
    mut log: impl FnMut(String),
) -> anyhow::Result<Report> {
    anyhow::ensure!(
        count.is_some() || until.is_some(),
        "an endless fault schedule"
    );
    let start = Instant::now();
    let mut report = Report::default();
    let mut events: Vec<(Instant, usize, bool)> = overlays
        .iter()
        .enumerate()
        .map(|(i, o)| (start + o.at(), i, true))
        .collect();
    let mut struck_at: Vec<Option<Instant>> = vec![None; overlays.len()];
    let mut down: HashSet<String> = HashSet::new();
    let mut sequential = 0;
    let mut strike: Option<(Instant, Fault)> = plan.next().map(|f| (start + f.after, f));
    let mut revive: Option<(Instant, Instant, Fault)> = None;
    let mut holds = 0u32;
    loop {
        events.sort_by_key(|e| e.0);
        let open =
            |at: Instant| count.is_none_or(|c| sequential < c) && until.is_none_or(|u| at < u);
        let mut next: Option<(Instant, Next)> =
            events.first().map(|e| (e.0, Next::Overlay(e.1, e.2)));
        let mut consider = |at: Instant, n: Next| {
            if next.as_ref().is_none_or(|(t, _)| at < *t) {
                next = Some((at, n));
            }
        };
        match (&revive, &strike) {
            (Some((at, _, _)), _) => consider(*at, Next::Revive),
            (None, Some((at, _))) if open(*at) => consider(*at, Next::Strike),
            (None, _) => {}
        }
        let Some((at, what)) = next else { break };
        tokio::time::sleep_until(at.into()).await;
        let now = Instant::now();
        match what {
            Next::Overlay(i, begin) => {
                events.remove(0);
                let o = &overlays[i];
                // Its participant is down for a sequential fault: once it is
                // back.
                if let (true, Overlay::Outage { name, .. }, Some((back, _, f))) =
                    (begin, o, &revive)
                    && f.target == Target::Process(name.clone())
                {
                    events.push((*back + Duration::from_millis(100), i, true));
                    continue;
                }
                if begin {
                    overlay_begins(sys, o).await?;
                    if let Overlay::Outage { name, .. } = o {
                        down.insert(name.clone());
                    }
                    struck_at[i] = Some(now);
                    events.push((now + o.length(), i, false));
                    continue;
                }
                overlay_ends(sys, o).await?;
                if let Overlay::Outage { name, .. } = o {
                    down.remove(name);
                }
                let struck = struck_at[i].unwrap_or(now);
                let mut line = format!(
                    "fault {}: t={:.1}s {o}, back after {:.1}s",
                    report.done.len() + 1,
                    (struck - start).as_secs_f64(),
                    struck.elapsed().as_secs_f64()
                );
                if let Overlay::HoldRefunds { .. } = o {
                    holds += 1;
                    match paused::retry_all(sys, holds, "refund hold lifted").await {
                        Ok(r) => {
                            report.retried += r.retried;
                            line += &format!(
                                "; operator retried {} of {} paused sagas",
                                r.retried, r.listed
                            );
                        }
                        Err(e) => line += &format!("; operator could not retry yet: {e:#}"),
                    }
                }
                log(line);
                report.done.push(Done {
                    what: o.to_string(),
                    at: struck - start,
                    outage: struck.elapsed(),
                });
            }
            Next::Strike => {
                let (_, mut fault) = strike.take().expect("a strike is planned");
                // Never a participant an overlay has down: draw again, or
                // skip this one.
                let busy = |f: &Fault| matches!(&f.target, Target::Process(n) if down.contains(n));
                let mut draws = 0;
                while busy(&fault) && draws < 20 {
                    let Some(f) = plan.next() else { break };
                    fault = f;
                    draws += 1;
                }
                if busy(&fault) {
                    strike = plan.next().map(|f| (Instant::now() + f.after, f));
                    continue;
                }
                match &fault.target {
                    Target::Process(name) => sys.kill(name),
                    Target::Emulator => sys.kill_emulator()?,
                }
                revive = Some((now + fault.down, now, fault));
            }
            Next::Revive => {
                let (_, struck, fault) = revive.take().expect("a revive is planned");
                match &fault.target {
                    Target::Process(name) => sys.restart(name).await?,
                    Target::Emulator => sys.start_emulator().await?,
                }
                sequential += 1;
                log(format!(
                    "fault {}: t={:.1}s SIGKILL {} (down {:.1}s), back after {:.1}s",
                    report.done.len() + 1,
                    (struck - start).as_secs_f64(),
                    fault.target,
                    fault.down.as_secs_f64(),
                    struck.elapsed().as_secs_f64()
                ));
                report.done.push(Done {
                    what: format!("SIGKILL {}", fault.target),
                    at: struck - start,
                    outage: struck.elapsed(),
                });
                strike = plan.next().map(|f| (Instant::now() + f.after, f));
            }
        }
        report.last_recovered = Some(Instant::now());
        for (name, status) in sys.reap() {
            let line = format!("{name} exited by itself ({status}); starting it again");
            log(line.clone());
            report.unexpected_exits.push(line);
            sys.restart(&name).await?;
        }
    }
    Ok(report)
}

async fn overlay_begins(sys: &mut System, o: &Overlay) -> anyhow::Result<()> {
    match o {
        Overlay::Outage { name, stop, .. } => {
            anyhow::ensure!(
                PARTICIPANTS
                    .iter()
                    .chain(&TRIP_PARTICIPANTS)
                    .any(|p| p == name),
                "outage of {name}: participants only"
            );
            if *stop {
                sys.pause(name)?;
            } else {
                sys.kill(name);
            }
        }
        Overlay::HoldRefunds { customer, .. } => hold_refunds(sys, customer, true).await?,
    }
    Ok(())
}

async fn overlay_ends(sys: &mut System, o: &Overlay) -> anyhow::Result<()> {
    match o {
        Overlay::Outage { name, stop, .. } => {
            if *stop && sys.running().contains(name) {
                sys.resume(name)?;
                sys.wait_ready(name).await?;
            } else {
                sys.restart(name).await?;
            }
        }
        Overlay::HoldRefunds { customer, .. } => hold_refunds(sys, customer, false).await?,
    }
    Ok(())
}

/// Hold or release a customer's refunds, as a back office would.
pub async fn hold_refunds(sys: &System, customer: &str, held: bool) -> anyhow::Result<()> {
    let c = db::connect(&sys.dbs.payment).await?;
    let n = c
        .execute(
            "UPDATE customers SET refunds_held = $2 WHERE customer_id = $1",
            &[&customer, &held],
        )
        .await?;
    anyhow::ensure!(n == 1, "no customer {customer}");
    Ok(())
}
