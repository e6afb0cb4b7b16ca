//! Circuit breakers: after repeated failures, stop asking Redis for a while.
//!
//! A single node has one breaker. A cluster has one per range of slots, so a
//! failing node stops only the keys it owns: the 16384 slots fall into
//! [`BUCKETS`] ranges of [`SLOTS_PER_BUCKET`], small enough that a range lies
//! within one node's share in all but a few boundary cases, without knowing
//! the cluster's topology. Operations that name no key (a publish, a scan)
//! have a breaker of their own.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// How many slot ranges of a cluster have a breaker of their own.
pub(super) const BUCKETS: usize = 1024;
/// Slots per range: 16384 slots in [`BUCKETS`] ranges.
pub(super) const SLOTS_PER_BUCKET: u16 = 16;

/// The breakers of one store: one for a single node; for a cluster, one per
/// range of slots and one for operations that name no key.
pub(super) enum Breakers {
    Single(Breaker),
    Slots {
        ranges: Box<[Breaker]>,
        unkeyed: Breaker,
    },
}

impl Breakers {
    pub(super) fn single(threshold: u32, cooldown: Duration) -> Self {
        Self::Single(Breaker::new(threshold, cooldown))
    }

    pub(super) fn per_slot_range(threshold: u32, cooldown: Duration) -> Self {
        Self::Slots {
            ranges: (0..BUCKETS)
                .map(|_| Breaker::new(threshold, cooldown))
                .collect(),
            unkeyed: Breaker::new(threshold, cooldown),
        }
    }

    /// The breaker guarding operations on the Redis key `name` (`None`: an
    /// operation that names no key).
    pub(super) fn for_key(&self, name: Option<&str>) -> &Breaker {
        match (self, name) {
            (Self::Single(breaker), _) => breaker,
            (Self::Slots { unkeyed, .. }, None) => unkeyed,
            (Self::Slots { ranges, .. }, Some(name)) => {
                &ranges[usize::from(slot(name.as_bytes()) / SLOTS_PER_BUCKET)]
            }
        }
    }
}

/// The Redis Cluster slot of a key: CRC16 (XMODEM) of its hash tag, or of
/// the whole key when it has none, modulo 16384.
pub(super) fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tagged) % 16384
}

/// Closed: every operation goes to Redis. Open: none does until the cool-down
/// ends. Then one probe goes; its success closes the breaker, its failure
/// opens it again.
pub(super) struct Breaker {
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
pub(super) enum Change {
    None,
    /// The first failure after a success.
    FirstFailure,
    /// The breaker just opened.
    Opened,
    /// The breaker just closed after being open.
    Recovered,
}

impl Breaker {
    pub(super) fn new(threshold: u32, cooldown: Duration) -> Self {
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

    /// Whether an operation may go to Redis now.
    pub(super) fn permit(&self) -> bool {
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

    pub(super) fn success(&self) -> Change {
        let mut state = self.state();
        let change = match *state {
            State::Closed { .. } => Change::None,
            State::Open { .. } | State::Probing { .. } => Change::Recovered,
        };
        *state = State::Closed { failures: 0 };
        change
    }

    pub(super) fn failure(&self) -> Change {
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
    fn slots_match_redis_cluster() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(slot(b"123456789"), 12739);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}".as_slice()));
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"), "an empty tag is no tag");
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
