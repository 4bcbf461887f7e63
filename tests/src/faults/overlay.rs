//! Overlays: faults that run alongside the sequential schedule, at fixed
//! offsets from its start, so they overlap it and each other: participants
//! unreachable for longer than an action's attempt budget, and a customer's
//! refunds held.

use std::time::Duration;

use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};

/// A fault that runs alongside the sequential schedule, at a fixed offset
/// from its start, so it overlaps the sequential faults and other overlays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overlay {
    /// Participant `name` unreachable for `down`: SIGKILLed and kept down
    /// (`stop == false`), or SIGSTOPped, holding its connections and
    /// answering nothing (calls to it time out), then SIGCONTed.
    Outage {
        at: Duration,
        name: String,
        down: Duration,
        stop: bool,
    },
    /// The payment participant refuses the refunds of `customer` (its
    /// refunds are held) for `held`; then the hold is lifted and the
    /// operator retries the sagas that paused.
    HoldRefunds {
        at: Duration,
        customer: String,
        held: Duration,
    },
}

impl Overlay {
    /// When it starts, from the start of the schedule.
    pub fn at(&self) -> Duration {
        match self {
            Overlay::Outage { at, .. } | Overlay::HoldRefunds { at, .. } => *at,
        }
    }

    /// How long it lasts.
    pub fn length(&self) -> Duration {
        match self {
            Overlay::Outage { down, .. } => *down,
            Overlay::HoldRefunds { held, .. } => *held,
        }
    }
}

impl std::fmt::Display for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Overlay::Outage {
                name, down, stop, ..
            } => write!(
                f,
                "{} {name} for {:.1}s",
                if *stop {
                    "SIGSTOP"
                } else {
                    "SIGKILL, keep down"
                },
                down.as_secs_f64()
            ),
            Overlay::HoldRefunds { customer, held, .. } => {
                write!(
                    f,
                    "hold refunds of {customer} for {:.1}s",
                    held.as_secs_f64()
                )
            }
        }
    }
}

/// Shapes of the overlays.
#[derive(Debug, Clone, Copy)]
pub struct OverlayTiming {
    /// The overlays start within the first ~2/3 of this.
    pub window: Duration,
    /// Bounds of an outage: make the lower one longer than an action's
    /// attempts x deadline, so in-flight actions are given up on.
    pub down_min: Duration,
    pub down_max: Duration,
    /// How long refunds are held.
    pub held: Duration,
}

/// The participant that holds refunds.
const PAYMENT: &str = "payment";

/// One outage per participant (in a seeded order): every second one starts
/// halfway through the one before (two participants down at once) and is a
/// SIGSTOP, the others SIGKILLs; the pairs are spread over the window. And
/// one hold of `customer`'s refunds, a third of the way in or once the
/// outages begun by then are over, and never while the payment participant
/// is down.
pub fn overlays(
    seed: u64,
    participants: &[&str],
    customer: &str,
    t: OverlayTiming,
) -> Vec<Overlay> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x0ae7_1a75);
    let mut order: Vec<&str> = participants.to_vec();
    order.shuffle(&mut rng);
    let w = t.window.as_secs_f64();
    let mut between = |lo: f64, hi: f64| {
        if hi <= lo {
            lo
        } else {
            rng.random_range(lo..hi)
        }
    };
    let mut out = Vec::new();
    let mut previous: Option<(Duration, Duration)> = None;
    for (i, name) in order.iter().enumerate() {
        let down =
            Duration::from_secs_f64(between(t.down_min.as_secs_f64(), t.down_max.as_secs_f64()));
        let (at, stop) = match previous {
            Some((at, down)) if i % 2 == 1 => (at + down.mul_f64(between(0.3, 0.7)), true),
            _ => {
                let slot = (i / 2) as f64;
                (
                    Duration::from_secs_f64(w * (0.08 + 0.45 * slot) + between(0.0, w * 0.05)),
                    false,
                )
            }
        };
        previous = Some((at, down));
        out.push(Overlay::Outage {
            at,
            name: (*name).to_owned(),
            down,
            stop,
        });
    }
    // Refunds are held after the first outages are over (sagas flow to the
    // payment step again), and while the payment participant is up, or no
    // refund would reach it to be refused.
    let mut hold_at = Duration::from_secs_f64(w * 0.3 + between(0.0, w * 0.05));
    let early = hold_at;
    for o in &out {
        if o.at() < early {
            hold_at = hold_at.max(o.at() + o.length() + Duration::from_secs(1));
        }
    }
    for o in &out {
        if let Overlay::Outage { at, name, down, .. } = o
            && name == PAYMENT
            && hold_at < *at + *down
            && *at < hold_at + t.held
        {
            hold_at = *at + *down + Duration::from_secs(1);
        }
    }
    out.push(Overlay::HoldRefunds {
        at: hold_at,
        customer: customer.to_owned(),
        held: t.held,
    });
    out.sort_by_key(Overlay::at);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> OverlayTiming {
        OverlayTiming {
            window: Duration::from_secs(60),
            down_min: Duration::from_secs(8),
            down_max: Duration::from_secs(12),
            held: Duration::from_secs(8),
        }
    }

    #[test]
    fn a_seed_fixes_the_overlays() {
        let a = overlays(7, &["order", "payment", "inventory"], "c", timing());
        let b = overlays(7, &["order", "payment", "inventory"], "c", timing());
        assert_eq!(a, b);
        assert_ne!(
            a,
            overlays(8, &["order", "payment", "inventory"], "c", timing())
        );
    }

    #[test]
    fn every_participant_is_down_once_two_at_once_by_kill_and_stop_and_refunds_are_held() {
        for seed in 0..50 {
            every_participant_down_once(seed);
        }
    }

    fn every_participant_down_once(seed: u64) {
        let o = overlays(
            seed,
            &["order", "payment", "inventory"],
            "cust-alice",
            timing(),
        );
        let outages: Vec<(&str, Duration, Duration, bool)> = o
            .iter()
            .filter_map(|x| match x {
                Overlay::Outage {
                    at,
                    name,
                    down,
                    stop,
                } => Some((name.as_str(), *at, *at + *down, *stop)),
                Overlay::HoldRefunds { .. } => None,
            })
            .collect();
        let mut names: Vec<&str> = outages.iter().map(|o| o.0).collect();
        names.sort_unstable();
        assert_eq!(names, ["inventory", "order", "payment"]);
        assert!(outages.iter().all(|o| o.2 - o.1 >= Duration::from_secs(8)));
        assert!(outages.iter().any(|o| o.3) && outages.iter().any(|o| !o.3));
        let overlapping = outages
            .iter()
            .enumerate()
            .any(|(i, a)| outages[i + 1..].iter().any(|b| a.1 < b.2 && b.1 < a.2));
        assert!(overlapping, "{outages:?}");
        let (hold, held) = o
            .iter()
            .find_map(|x| match x {
                Overlay::HoldRefunds { at, held, .. } => Some((*at, *held)),
                Overlay::Outage { .. } => None,
            })
            .expect("refunds are held");
        let payment = outages.iter().find(|o| o.0 == "payment").unwrap();
        assert!(hold >= payment.2 || hold + held <= payment.1, "{o:?}");
        for (_, from, to, _) in &outages {
            assert!(
                *from >= hold || *to < hold,
                "the hold starts during an outage: {o:?}"
            );
        }
        assert!(o.windows(2).all(|w| w[0].at() <= w[1].at()));
    }
}
