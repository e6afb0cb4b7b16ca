//! Local requests waiting for a key that another instance is computing:
//! woken by a message on the events channel, or let through at once when
//! the call they wait for ends without storing its answer.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex, MutexGuard, PoisonError,
    },
};

use tokio::sync::Notify;

use super::store::RedisStore;
use crate::key::Key;

/// Local requests waiting for a key that another instance is computing.
#[derive(Default)]
pub(super) struct Waiters(Mutex<HashMap<Key, Slot>>);

struct Slot {
    notify: Arc<Notify>,
    watchers: usize,
    /// How many times a call for the key ended without storing an answer.
    passes: Arc<AtomicU64>,
}

impl Waiters {
    fn map(&self) -> MutexGuard<'_, HashMap<Key, Slot>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn watch(self: &Arc<Self>, key: Key) -> Watch {
        let mut map = self.map();
        let slot = map.entry(key).or_insert_with(|| Slot {
            notify: Arc::default(),
            watchers: 0,
            passes: Arc::default(),
        });
        slot.watchers += 1;
        Watch {
            waiters: Arc::clone(self),
            key,
            notify: Arc::clone(&slot.notify),
            seen: slot.passes.load(Relaxed),
            passes: Arc::clone(&slot.passes),
        }
    }

    /// The call for `key` ended without storing an answer: everyone waiting
    /// for it goes through.
    pub(super) fn pass(&self, key: &Key) {
        if let Some(slot) = self.map().get(key) {
            slot.passes.fetch_add(1, Relaxed);
            slot.notify.notify_waiters();
        }
    }

    pub(super) fn wake(&self, key: &Key) {
        if let Some(slot) = self.map().get(key) {
            slot.notify.notify_waiters();
        }
    }

    /// Wakes everyone: after a reconnect, messages may have been missed.
    pub(super) fn wake_all(&self) {
        self.map()
            .values()
            .for_each(|slot| slot.notify.notify_waiters());
    }
}

/// Interest in one key's completion, for as long as it lives.
pub(crate) struct Watch {
    waiters: Arc<Waiters>,
    key: Key,
    notify: Arc<Notify>,
    passes: Arc<AtomicU64>,
    seen: u64,
}

impl Watch {
    /// Notified on every completion message for the key. Create the
    /// `Notified` future and `enable` it before checking Redis, so that a
    /// message arriving in between is not lost.
    pub(crate) fn notify(&self) -> &Notify {
        &self.notify
    }

    /// Whether a call for the key ended without storing its answer since
    /// this watch began: its waiters should not wait for another.
    pub(crate) fn passed(&self) -> bool {
        self.passes.load(Relaxed) != self.seen
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut map = self.waiters.map();
        if let Some(slot) = map.get_mut(&self.key) {
            slot.watchers -= 1;
            if slot.watchers == 0 {
                map.remove(&self.key);
            }
        }
    }
}

impl RedisStore {
    /// Registers interest in completions of `key`.
    pub(crate) fn watch(&self, key: Key) -> Watch {
        self.inner.waiters.watch(key)
    }
}
