//! Exponential backoff with jitter for reconnects and retries.

use std::time::Duration;

/// Delays that double from `initial` up to `max`, each drawn uniformly from
/// `[delay / 2, delay]` so that several relays do not retry in lockstep.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// The delay to wait now; the following one is twice as long.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        jitter(d)
    }

    /// Start again from the initial delay (after a success).
    pub(crate) fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// A duration drawn uniformly from `[d / 2, d]`.
pub(crate) fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    half + half.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_then_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(400));
        let d: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        assert!((ms(50)..=ms(100)).contains(&d[0]), "{d:?}");
        assert!((ms(100)..=ms(200)).contains(&d[1]), "{d:?}");
        assert!((ms(200)..=ms(400)).contains(&d[4]), "{d:?}");
        b.reset();
        assert!(b.next_delay() <= ms(100));
    }
}
