//! Invalidations: what a shared store tells the L1 caches in front of it.
//!
//! An L1 holds copies of L2 entries. When an entry changes elsewhere (another
//! instance refreshes it, anyone purges it or its namespace), the store
//! publishes an [`Invalidation`] on a broadcast channel, and every engine on
//! the store applies it to its own L1 through an [`L1Subscription`]. The
//! store never holds an L1: a layer's cache lives exactly as long as its
//! engine.
//!
//! A subscription that falls behind the channel's capacity cannot know
//! which entries it missed, so it clears its L1 whole: an L1 may lose
//! entries it could have kept, never keep one it should have dropped.

use tokio::{
    runtime::Handle,
    sync::broadcast::{self, error::RecvError},
    task::JoinHandle,
};

use super::memory::MemoryStore;
use crate::key::Key;

/// How many invalidations a slow L1 may fall behind before it is cleared
/// whole rather than entry by entry.
pub(crate) const CAPACITY: usize = 1024;

/// A change in the shared store that copies in L1 must follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Invalidation {
    /// Another instance stored over this entry (a refresh): a copy here is
    /// stale.
    Replaced(Key),
    /// This entry was purged.
    Purged(Key),
    /// A namespace was purged: its entries cannot be told apart in L1, so
    /// everything goes.
    PurgedNamespace,
    /// Invalidations may have been missed (the store's subscription to its
    /// events moved to another node after a restart or a failover): nothing
    /// held can be trusted.
    Missed,
}

impl Invalidation {
    /// Applies the change to `l1`.
    async fn apply(self, l1: &MemoryStore) {
        match self {
            Self::Replaced(key) | Self::Purged(key) => l1.remove(&key).await,
            Self::PurgedNamespace | Self::Missed => l1.clear(),
        }
    }
}

/// Keeps one L1 following a store's invalidations, in a task of its own,
/// for as long as this lives. Dropping it stops the task, which releases
/// the L1 and its place on the channel.
pub(crate) struct L1Subscription {
    task: JoinHandle<()>,
}

impl L1Subscription {
    /// Starts applying what `invalidations` receives to `l1`, on `runtime`.
    pub(crate) fn spawn(
        l1: MemoryStore,
        invalidations: broadcast::Receiver<Invalidation>,
        runtime: &Handle,
    ) -> Self {
        Self {
            task: runtime.spawn(follow(l1, invalidations)),
        }
    }
}

impl Drop for L1Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Applies invalidations until the store goes away.
async fn follow(l1: MemoryStore, mut invalidations: broadcast::Receiver<Invalidation>) {
    loop {
        match invalidations.recv().await {
            Ok(invalidation) => invalidation.apply(&l1).await,
            Err(RecvError::Lagged(missed)) => {
                tracing::debug!(
                    missed,
                    "the L1 fell behind the store's invalidations; clearing it"
                );
                l1.clear();
            }
            Err(RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use bytes::Bytes;
    use http::{HeaderMap, StatusCode, Version};

    use super::*;
    use crate::record::{now_millis, Record};

    fn record() -> Arc<Record> {
        let now = now_millis();
        Arc::new(Record {
            status: StatusCode::OK,
            version: Version::HTTP_11,
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"answer"),
            trailers: None,
            created_at: now,
            expires_at: now + 60_000,
            meta: Bytes::new(),
            info: Default::default(),
        })
    }

    async fn filled(keys: &[Key]) -> MemoryStore {
        let l1 = MemoryStore::new(1 << 20);
        for key in keys {
            l1.insert(*key, record()).await;
        }
        l1
    }

    /// Polls until `done` holds, for at most two seconds.
    async fn eventually(mut done: impl AsyncFnMut() -> bool) -> bool {
        for _ in 0..200 {
            if done().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn an_entry_invalidation_evicts_only_that_entry() {
        let (a, b) = (Key::from_bytes([1; 32]), Key::from_bytes([2; 32]));
        let l1 = filled(&[a, b]).await;
        let (sender, receiver) = broadcast::channel(CAPACITY);
        let _subscription = L1Subscription::spawn(l1.clone(), receiver, &Handle::current());
        sender.send(Invalidation::Purged(a)).unwrap();
        assert!(eventually(async || l1.get(&a).await.is_none()).await);
        assert!(l1.get(&b).await.is_some());
        sender.send(Invalidation::Missed).unwrap();
        assert!(eventually(async || l1.get(&b).await.is_none()).await);
    }

    #[tokio::test]
    async fn a_lagged_subscription_clears_its_l1() {
        let keys: Vec<Key> = (0..4).map(|i| Key::from_bytes([i; 32])).collect();
        let l1 = filled(&keys).await;
        let (sender, receiver) = broadcast::channel(2);
        // More invalidations than the channel holds, before the task runs:
        // the first ones are lost, and with them which entries they named.
        sender.send(Invalidation::Purged(keys[0])).unwrap();
        sender.send(Invalidation::Purged(keys[1])).unwrap();
        sender.send(Invalidation::Purged(keys[2])).unwrap();
        let _subscription = L1Subscription::spawn(l1.clone(), receiver, &Handle::current());
        assert!(eventually(async || l1.get(&keys[3]).await.is_none()).await);
    }

    #[tokio::test]
    async fn dropping_the_subscription_releases_its_place_and_l1() {
        let l1 = filled(&[]).await;
        let (sender, receiver) = broadcast::channel(CAPACITY);
        let subscription = L1Subscription::spawn(l1, receiver, &Handle::current());
        assert_eq!(sender.receiver_count(), 1);
        drop(subscription);
        assert!(eventually(async || sender.receiver_count() == 0).await);
    }
}
