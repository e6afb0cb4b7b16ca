//! A leader's claim on a key ([`Lease`]): renewed while its call runs
//! ([`Renewal`]), released when it completes, fails or is dropped, so that
//! no claim outlives its leader.

use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc, Weak,
    },
};

use tokio::task::JoinHandle;

use super::{
    keys::{millis, Names},
    pubsub::Event,
    scripts,
    store::{Inner, RedisStore},
};
use crate::key::Key;

/// A claim on a key: only its holder calls upstream.
///
/// Released by [`RedisStore::complete`]; dropped before that (a panic, a
/// cancelled call, a look-up whose answer we stopped waiting for), it
/// releases itself in a task of its own, if it is still ours, and wakes the
/// waiters, so that no claim outlives its leader.
pub(crate) struct Lease {
    pub(super) token: String,
    key: Key,
    name: String,
    inner: Weak<Inner>,
    released: AtomicBool,
}

impl Lease {
    pub(super) fn new(inner: &Arc<Inner>, names: &Names, key: Key, token: String) -> Self {
        // Known before the claim is sent: a want that arrives as soon as
        // another instance finds the lease held is kept for the writer.
        if inner.settings.streams {
            inner.leading.register(&names.lease, &token);
        }
        Self {
            token,
            key,
            name: names.lease.clone(),
            inner: Arc::downgrade(inner),
            released: AtomicBool::new(false),
        }
    }

    /// Nothing is left to release.
    pub(super) fn disarm(&self) {
        self.released.store(true, Relaxed);
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(inner) = self.inner.upgrade() else {
            return; // the store is gone: the lease runs out on its own
        };
        inner.leading.forget(&self.name, &self.token);
        if self.released.load(Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (name, token, key) = (
            std::mem::take(&mut self.name),
            std::mem::take(&mut self.token),
            self.key,
        );
        runtime.spawn(async move { inner.release(&name, &token, &key).await });
    }
}
/// Renews a lease while it lives.
pub(crate) struct Renewal(JoinHandle<()>);

impl Drop for Renewal {
    fn drop(&mut self) {
        self.0.abort();
    }
}
impl RedisStore {
    /// Keeps a lease alive until the returned guard is dropped.
    pub(crate) fn keep_alive(&self, ns: &str, key: &Key, lease: &Lease) -> Renewal {
        let names = self.inner.names(ns, key);
        let token = lease.token.clone();
        let inner = Arc::downgrade(&self.inner);
        let every = self.inner.settings.lease / 3;
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = inner.upgrade() else { return };
                let mut conn = inner.conn.clone();
                let mut invocation = scripts::RENEW.prepare_invoke();
                invocation
                    .key(&names.lease)
                    .arg(&token)
                    .arg(millis(inner.settings.lease));
                if let Ok(0) = inner
                    .run(
                        Some(&names.lease),
                        inner.settings.timeout,
                        invocation.invoke_async::<i64>(&mut conn),
                    )
                    .await
                {
                    // No longer ours: a want for the key must not start a
                    // stream of this leader's beside the new one's.
                    inner.leading.forget(&names.lease, &token);
                    return;
                }
            }
        });
        Renewal(task)
    }
}

impl Inner {
    /// Releases a lease if it is still ours, and wakes the waiters.
    async fn release(&self, name: &str, token: &str, key: &Key) {
        let mut release = redis::cmd("EVAL");
        release
            .arg(scripts::RELEASE_SOURCE)
            .arg(1)
            .arg(name)
            .arg(token)
            .arg(self.channel())
            .arg(Event::Done(*key).encode());
        let _: Result<i64, _> = self
            .run(
                Some(name),
                self.settings.write_timeout,
                release.query_async(&mut self.conn.clone()),
            )
            .await;
    }
}
