//! Seeded fault schedules: a sequence of short faults (SIGKILL a process or
//! the Pub/Sub emulator, leave it down a moment, start it again, pause,
//! repeat) and [`Overlay`]s that run alongside it: participants unreachable
//! for longer than an action's attempt budget (killed and kept down, or
//! stopped), overlapping one another, and a customer's refunds held for a
//! while. [`crate::injector`] carries them out.
//!
//! A schedule is a pure function of its seed and targets, so a failing run
//! can be replayed with the same seed (the system's own timing still
//! varies). The short faults run one after another: each process is back
//! and ready before the next one, so they never compound each other (an
//! orchestrator restarted while the emulator is down would give up after
//! its Pub/Sub set-up timeout, a failure of the test, not of the system).
//! The overlays are what overlaps.

use std::time::Duration;

use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};

mod overlay;

pub use overlay::{Overlay, OverlayTiming, overlays};

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
