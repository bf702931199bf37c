//! The one retry policy: exponential backoff, doubling from an initial delay up to a cap.
//!
//! Every retry loop in Sluice (log appends, reconnects, watches, assignment rounds, the client's
//! wait for a moved WAL) paces itself with a [`Backoff`], so the policy is the same everywhere
//! and changes in one place.

use std::time::Duration;

/// Doubling delays from `initial` up to `max`.
///
/// ```
/// # use std::time::Duration;
/// # use sluice_types::backoff::Backoff;
/// let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(35));
/// let delays: Vec<u128> = (0..4).map(|_| b.next_delay().as_millis()).collect();
/// assert_eq!(delays, [10, 20, 35, 35]);
/// b.reset();
/// assert_eq!(b.current(), Duration::from_millis(10));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// Starts at `initial` (at most `max`).
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        let initial = initial.min(max);
        Backoff {
            initial,
            max,
            current: initial,
        }
    }

    /// The delay to wait now; the one after it is doubled (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let now = self.current;
        self.advance();
        now
    }

    /// The delay the next wait would take, without moving on.
    pub fn current(&self) -> Duration {
        self.current
    }

    /// Doubles the delay (up to the cap) without waiting.
    pub fn advance(&mut self) {
        self.current = self.current.saturating_mul(2).min(self.max);
    }

    /// Back to the initial delay (after a success).
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}
