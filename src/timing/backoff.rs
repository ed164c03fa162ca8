//! Exponential backoff with jitter, as a value: the wait doubles after each failure up to a
//! maximum, each wait is a random point in its upper half (so a fleet of guards does not retry
//! in lockstep), and a success resets it. Pure apart from the random draw.

use std::time::Duration;

/// Backoff state between `initial` and `max` (`initial <= max`, both validated by the config).
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    base: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        let max = max.max(initial);
        Backoff {
            initial,
            max,
            base: initial,
        }
    }

    /// The wait before the next attempt: uniformly in [base/2, base]; then the base doubles.
    pub fn next_wait(&mut self) -> Duration {
        let base = self.base;
        self.base = (self.base * 2).min(self.max);
        jitter(base)
    }

    /// The wait after a failure that retrying soon cannot fix (a certificate the peer rejects):
    /// the maximum, so the peer is not hammered.
    pub fn longest_wait(&mut self) -> Duration {
        self.base = self.max;
        jitter(self.max)
    }

    /// After a success: start again from `initial`.
    pub fn reset(&mut self) {
        self.base = self.initial;
    }
}

fn jitter(base: Duration) -> Duration {
    let half = base / 2;
    half + half.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(wait: Duration, base_ms: u64) -> bool {
        let base = Duration::from_millis(base_ms);
        wait >= base / 2 && wait <= base
    }

    #[test]
    fn waits_double_up_to_the_maximum_each_jittered_in_the_upper_half() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        for base in [100, 200, 350, 350, 350] {
            let wait = b.next_wait();
            assert!(
                within(wait, base),
                "{wait:?} not within [{}, {base}] ms",
                base / 2
            );
        }
    }

    #[test]
    fn reset_starts_again_from_initial_and_longest_wait_jumps_to_max() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        b.next_wait();
        b.next_wait();
        b.reset();
        assert!(within(b.next_wait(), 100));
        assert!(within(b.longest_wait(), 10_000));
        assert!(
            within(b.next_wait(), 10_000),
            "stays at the maximum after a permanent error"
        );
    }

    #[test]
    fn a_max_below_initial_is_raised_to_initial() {
        let mut b = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert!(within(b.next_wait(), 2000));
        assert!(within(b.next_wait(), 2000));
    }
}
