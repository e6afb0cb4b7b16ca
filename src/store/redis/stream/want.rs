//! Lazy streams: a leader writes its answer's stream only once another
//! instance asks for it.
//!
//! The leader's side ([`Leading`]): every lease this store holds is known
//! here, by the lease's name, with a signal its stream writer waits on. A
//! [`Want`](crate::store::redis::pubsub::Event::Want) on the events channel
//! for a key this store leads fires that signal, once or a thousand times
//! alike; a want for any other key finds nothing and is dropped. The map
//! holds only this store's own leases, so what arrives on the channel never
//! grows it, and a flood of wants costs one map look-up each, and no
//! command to Redis.
//!
//! The followers' side ([`Asks`]): a waiter that finds the lease held and no
//! stream to follow asks for it, at most once every [`ASK_EVERY`] per key
//! and store, whatever the number of waiters.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use tokio::sync::Notify;

/// How often one store asks for one key's stream at most.
pub(super) const ASK_EVERY: Duration = Duration::from_secs(1);

/// Past this many keys asked for, those asked longer than [`ASK_EVERY`] ago
/// are forgotten.
const ASKS_KEPT: usize = 256;

/// The leases this store holds or is claiming, by name: the token, and the
/// signal that some instance wants the key's stream. Usually one per name;
/// two layers on one store may claim the same key at once (one of them
/// finds it held).
#[derive(Default)]
pub(crate) struct Leading(Mutex<HashMap<String, Vec<Led>>>);

struct Led {
    token: String,
    wanted: Arc<Notify>,
}

impl Leading {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Vec<Led>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lease `lease` is about to be claimed under `token`: wants for
    /// its key are kept from now on, even before its answer's head exists.
    pub(in crate::store::redis) fn register(&self, lease: &str, token: &str) {
        self.map().entry(lease.to_owned()).or_default().push(Led {
            token: token.to_owned(),
            wanted: Arc::default(),
        });
    }

    /// The lease `lease` under `token` is gone (released, lost, never
    /// claimed): wants for its key are dropped again. Another claim of the
    /// same key since then stays.
    pub(in crate::store::redis) fn forget(&self, lease: &str, token: &str) {
        let mut map = self.map();
        if let Some(leds) = map.get_mut(lease) {
            leds.retain(|led| led.token != token);
            if leds.is_empty() {
                map.remove(lease);
            }
        }
    }

    /// Another instance wants the stream of the key whose lease is named
    /// `lease`. Whether this store holds that lease.
    pub(in crate::store::redis) fn want(&self, lease: &str) -> bool {
        match self.map().get(lease) {
            Some(leds) => {
                // One permit, however many wants: the writer starts once.
                leds.iter().for_each(|led| led.wanted.notify_one());
                true
            }
            None => false,
        }
    }

    /// The signal of the lease `lease` held under `token`, for its writer.
    pub(super) fn signal(&self, lease: &str, token: &str) -> Option<Arc<Notify>> {
        self.map()
            .get(lease)?
            .iter()
            .find(|led| led.token == token)
            .map(|led| Arc::clone(&led.wanted))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map().len()
    }
}

/// When this store last asked for each stream, by the stream's name.
#[derive(Default)]
pub(super) struct Asks(Mutex<HashMap<String, Instant>>);

impl Asks {
    /// Whether to ask for the stream `name` now: not if this store asked
    /// for it less than [`ASK_EVERY`] ago.
    pub(super) fn may_ask(&self, name: &str, now: Instant) -> bool {
        let mut asked = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if asked
            .get(name)
            .is_some_and(|at| now.saturating_duration_since(*at) < ASK_EVERY)
        {
            return false;
        }
        if asked.len() >= ASKS_KEPT {
            asked.retain(|_, at| now.saturating_duration_since(*at) < ASK_EVERY);
        }
        asked.insert(name.to_owned(), now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_want_reaches_only_the_lease_held_and_only_once() {
        let leading = Leading::default();
        assert!(!leading.want("l:a"), "no lease held: ignored");
        leading.register("l:a", "t1");
        assert!(
            leading.signal("l:a", "t0").is_none(),
            "another claim's token"
        );
        let signal = leading.signal("l:a", "t1").unwrap();
        for _ in 0..1000 {
            assert!(leading.want("l:a"));
        }
        assert!(!leading.want("l:b"));
        // One permit for a thousand wants.
        signal.notified().await;
        let again = tokio::time::timeout(Duration::from_millis(20), signal.notified()).await;
        assert!(again.is_err(), "a second permit");

        // Claims of the same key (two layers on one store) are forgotten
        // each with its own lease.
        leading.register("l:a", "t2");
        leading.forget("l:a", "t2");
        assert!(leading.signal("l:a", "t1").is_some(), "the holder's, kept");
        leading.register("l:a", "t3");
        leading.forget("l:a", "t1");
        assert!(leading.signal("l:a", "t3").is_some());
        assert_eq!(leading.len(), 1);
        leading.forget("l:a", "t3");
        assert_eq!(leading.len(), 0);
        assert!(!leading.want("l:a"));
    }

    #[test]
    fn a_store_asks_for_a_stream_at_most_once_a_second() {
        let asks = Asks::default();
        let start = Instant::now();
        assert!(asks.may_ask("s:a", start));
        assert!(!asks.may_ask("s:a", start + Duration::from_millis(999)));
        assert!(asks.may_ask("s:b", start), "per stream");
        assert!(asks.may_ask("s:a", start + ASK_EVERY));
        // Many keys: the old asks are forgotten, the map stays small.
        let later = start + ASK_EVERY * 3;
        for i in 0..10 * ASKS_KEPT {
            assert!(asks.may_ask(
                &format!("s:{i}"),
                later + ASK_EVERY * (i / ASKS_KEPT) as u32
            ));
        }
        assert!(asks.0.lock().unwrap().len() <= ASKS_KEPT + 1);
    }
}
