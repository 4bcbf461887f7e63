//! A seeded fault schedule: SIGKILL a process (or the Pub/Sub emulator),
//! leave it down a moment, start it again, pause, repeat.
//!
//! The schedule is a pure function of its seed and targets, so a failing
//! run can be replayed with the same seed (the system's own timing still
//! varies). Faults run one after another: each process is back and ready
//! before the next fault, so no fault compounds another (an orchestrator
//! restarted while the emulator is down would give up after its Pub/Sub
//! set-up timeout, a failure of the test, not of the system).

use std::time::{Duration, Instant};

use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};

use crate::system::System;

/// What a fault hits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A process by its harness name (`orchestrator-0`, `relay`, `order`, ...).
    Process(String),
    /// The Pub/Sub emulator: restarted empty on the same port.
    Emulator,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Process(name) => f.write_str(name),
            Target::Emulator => f.write_str("pubsub-emulator"),
        }
    }
}

/// One planned fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Pause before it, after the previous fault's target is back.
    pub after: Duration,
    pub target: Target,
    /// How long the target stays dead before it is started again.
    pub down: Duration,
}

/// Shapes of the random pauses.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub pause_min: Duration,
    pub pause_max: Duration,
    pub down_max: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            pause_min: Duration::from_millis(1500),
            pause_max: Duration::from_secs(6),
            down_max: Duration::from_secs(3),
        }
    }
}

/// An endless, seeded sequence of faults: first every target once (in a
/// random order), then targets at random.
pub struct Plan {
    rng: rand::rngs::StdRng,
    targets: Vec<Target>,
    first_round: Vec<Target>,
    timing: Timing,
}

impl Plan {
    pub fn new(seed: u64, targets: Vec<Target>, timing: Timing) -> Plan {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut first_round = targets.clone();
        first_round.shuffle(&mut rng);
        first_round.reverse(); // popped from the back
        Plan {
            rng,
            targets,
            first_round,
            timing,
        }
    }

    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        if hi <= lo {
            return lo;
        }
        Duration::from_millis(
            self.rng
                .random_range(lo.as_millis() as u64..=hi.as_millis() as u64),
        )
    }
}

impl Iterator for Plan {
    type Item = Fault;

    fn next(&mut self) -> Option<Fault> {
        let target = match self.first_round.pop() {
            Some(t) => t,
            None => self.targets[self.rng.random_range(0..self.targets.len())].clone(),
        };
        let after = self.between(self.timing.pause_min, self.timing.pause_max);
        let down = self.between(Duration::ZERO, self.timing.down_max);
        Some(Fault {
            after,
            target,
            down,
        })
    }
}

/// The seed in `var` if set (decimal), else a random one.
pub fn seed_from_env(var: &str) -> anyhow::Result<u64> {
    match std::env::var(var) {
        Ok(s) if !s.trim().is_empty() => s
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("{var}={s:?} is not a u64: {e}")),
        _ => Ok(rand::random()),
    }
}

/// A fault that was carried out.
#[derive(Debug, Clone)]
pub struct Done {
    pub fault: Fault,
    /// When it struck, from the start of [`run`].
    pub at: Duration,
    /// From the kill until the target was ready again.
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
}

/// Carry out faults from `plan` until `count` are done or `until` passes
/// (whichever is set and comes first; at least one must be set).
/// `log` receives one line per fault.
pub async fn run(
    sys: &mut System,
    plan: &mut Plan,
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
    for fault in plan {
        if count.is_some_and(|c| report.done.len() >= c) {
            break;
        }
        tokio::time::sleep(fault.after).await;
        if until.is_some_and(|u| Instant::now() >= u) {
            break;
        }
        let at = start.elapsed();
        let struck = Instant::now();
        match &fault.target {
            Target::Process(name) => {
                sys.kill(name);
                tokio::time::sleep(fault.down).await;
                sys.restart(name).await?;
            }
            Target::Emulator => {
                sys.kill_emulator()?;
                tokio::time::sleep(fault.down).await;
                sys.start_emulator().await?;
            }
        }
        let outage = struck.elapsed();
        log(format!(
            "fault {}: t={:.1}s SIGKILL {} (down {:.1}s), back after {:.1}s",
            report.done.len() + 1,
            at.as_secs_f64(),
            fault.target,
            fault.down.as_secs_f64(),
            outage.as_secs_f64()
        ));
        report.last_recovered = Some(Instant::now());
        report.done.push(Done { fault, at, outage });
        for (name, status) in sys.reap() {
            let line = format!("{name} exited by itself ({status}); starting it again");
            log(line.clone());
            report.unexpected_exits.push(line);
            sys.restart(&name).await?;
        }
    }
    Ok(report)
}
