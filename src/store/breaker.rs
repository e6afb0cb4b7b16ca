//! A circuit breaker: after repeated failures, stop asking an L2 for a
//! while.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Closed: every operation goes to the store. Open: none does until the cool-down
/// ends. Then one probe goes; its success closes the breaker, its failure
/// opens it again.
pub(crate) struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    Probing { since: Instant },
}

/// What a result changed, so that the caller logs once per burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    None,
    /// The first failure after a success.
    FirstFailure,
    /// The breaker just opened.
    Opened,
    /// The breaker just closed after being open.
    Recovered,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether an operation may go to the store now.
    pub(crate) fn permit(&self) -> bool {
        let mut state = self.state();
        let now = Instant::now();
        match *state {
            State::Closed { .. } => true,
            // A probe whose result never came (its caller went away) does
            // not keep the breaker shut: another may go after a cool-down.
            State::Open { until } | State::Probing { since: until } if now >= until => {
                *state = State::Probing {
                    since: self.after_cooldown(now),
                };
                true
            }
            State::Open { .. } | State::Probing { .. } => false,
        }
    }

    pub(crate) fn success(&self) -> Change {
        let mut state = self.state();
        let change = match *state {
            State::Closed { .. } => Change::None,
            State::Open { .. } | State::Probing { .. } => Change::Recovered,
        };
        *state = State::Closed { failures: 0 };
        change
    }

    pub(crate) fn failure(&self) -> Change {
        let mut state = self.state();
        match *state {
            State::Closed { failures } if failures + 1 >= self.threshold => {
                *state = State::Open {
                    until: self.after_cooldown(Instant::now()),
                };
                Change::Opened
            }
            State::Closed { failures } => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                if failures == 0 {
                    Change::FirstFailure
                } else {
                    Change::None
                }
            }
            State::Probing { .. } | State::Open { .. } => {
                *state = State::Open {
                    until: self.after_cooldown(Instant::now()),
                };
                Change::None
            }
        }
    }

    /// The end of a cool-down starting at `now`; a cool-down too long for
    /// the clock ends in about a century.
    fn after_cooldown(&self, now: Instant) -> Instant {
        now.checked_add(self.cooldown)
            .or_else(|| now.checked_add(CENTURY))
            .unwrap_or(now)
    }

    #[cfg(test)]
    fn is_open(&self) -> bool {
        !matches!(*self.state(), State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_and_probes_after_the_cooldown() {
        let breaker = Breaker::new(3, Duration::from_millis(30));
        assert_eq!(breaker.failure(), Change::FirstFailure);
        assert_eq!(breaker.failure(), Change::None);
        assert!(breaker.permit());
        assert_eq!(breaker.failure(), Change::Opened);
        assert!(!breaker.permit());
        std::thread::sleep(Duration::from_millis(40));
        assert!(breaker.permit(), "one probe after the cool-down");
        assert!(!breaker.permit(), "only one");
        assert_eq!(breaker.failure(), Change::None);
        assert!(!breaker.permit());
        std::thread::sleep(Duration::from_millis(40));
        assert!(breaker.permit());
        assert_eq!(breaker.success(), Change::Recovered);
        assert!(breaker.permit() && !breaker.is_open());
    }

    #[test]
    fn a_cooldown_past_the_clock_does_not_panic() {
        let breaker = Breaker::new(1, Duration::MAX);
        assert_eq!(breaker.failure(), Change::Opened);
        assert!(!breaker.permit());
    }

    #[test]
    fn a_success_resets_the_count() {
        let breaker = Breaker::new(2, Duration::from_secs(60));
        breaker.failure();
        breaker.success();
        assert_eq!(breaker.failure(), Change::FirstFailure);
        assert!(breaker.permit());
    }
}
