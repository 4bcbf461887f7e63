//! Exponential backoff with full jitter, for re-opening streams and retrying
//! administration calls while the emulator starts.

use std::time::Duration;

/// Delays that double from `initial` up to `max`, each drawn uniformly from
/// `[delay / 2, delay]` so that many clients do not retry in lockstep.
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
        let half = d / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    /// Start again from the initial delay (after a success).
    pub(crate) fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let d: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        assert!(d[0] <= Duration::from_millis(100) && d[0] >= Duration::from_millis(50));
        assert!(d[4] <= Duration::from_millis(400) && d[4] >= Duration::from_millis(200));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
