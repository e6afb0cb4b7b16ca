//! A request's path through Redis: read the entry (one round trip, all a
//! hit costs), else claim the key (one more), and after the upstream call,
//! store the answer, release the lease and tell every waiter (one more).

use std::{sync::atomic::Ordering::Relaxed, sync::Arc, time::Duration};

use bytes::Bytes;
use redis::Value;

use super::{
    keys::{millis, ttl_millis, Names},
    lease::Lease,
    pubsub::Event,
    scripts,
    store::RedisStore,
};
use crate::{
    key::Key,
    record::{codec, now_millis, Record},
    store::l2::Lookup,
};

impl RedisStore {
    /// Looks the key up, or claims its lease.
    ///
    /// A hit is a plain `HGET` of the record, at the cost of a `GET` in
    /// Redis, counted locally like an L1 hit and flushed in batches
    /// ([`count_l1_hit`](RedisStore::count_l1_hit)). Only when it finds no
    /// record does the look-up-or-claim script run: the script reads the
    /// entry again, atomically with the claim, so single flight across
    /// instances stays exact (a record stored between the two is a hit).
    pub(crate) async fn lookup(&self, ns: &str, key: &Key) -> Lookup {
        let names = self.inner.names(ns, key);
        match self.read(ns, key, &names).await {
            Ok(Some(found)) => found,
            Ok(None) => self.claim(key, &names).await,
            Err(()) => Lookup::Unavailable,
        }
    }

    /// The key's entry, if it has one that reads, without claiming its
    /// lease: one `HGET`.
    pub(crate) async fn peek(&self, ns: &str, key: &Key) -> Option<Arc<Record>> {
        let names = self.inner.names(ns, key);
        match self.read(ns, key, &names).await {
            Ok(Some(Lookup::Hit(record))) => Some(record),
            _ => None,
        }
    }

    /// The entry's record, read: `Ok(None)` when there is none, `Err` when
    /// Redis did not answer. A hit is counted.
    async fn read(&self, ns: &str, key: &Key, names: &Names) -> Result<Option<Lookup>, ()> {
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        let read = async {
            let mut get = redis::cmd("HGET");
            get.arg(&names.entry).arg("r");
            match get.query_async::<Value>(&mut conn).await {
                // Not a hash: not ours, so a miss (the script says so too).
                Err(error) if error.code() == Some("WRONGTYPE") => Ok(Value::Nil),
                reply => reply,
            }
        };
        match inner
            .run(Some(&names.entry), inner.settings.timeout, read)
            .await
        {
            Ok(Value::BulkString(bytes)) => {
                let found = self.found(key, bytes);
                if matches!(found, Lookup::Hit(_)) {
                    self.count_l1_hit(ns, key);
                }
                Ok(Some(found))
            }
            Ok(_) => Ok(None),
            Err(_) => Err(()),
        }
    }

    /// The look-up-or-claim script, after a read that found no record.
    async fn claim(&self, key: &Key, names: &Names) -> Lookup {
        let inner = &self.inner;
        let token = inner.next_token();
        let mut conn = inner.conn.clone();
        let mut invocation = scripts::LOOKUP.prepare_invoke();
        invocation
            .key(&names.entry)
            .key(&names.lease)
            .arg(token.as_str())
            .arg(millis(inner.settings.lease))
            .arg(now_millis());
        // Armed before the script is sent: if we stop waiting for its answer
        // (a timeout, a cancelled request), the lease it may have claimed
        // under this token is released.
        let lease = Lease::new(&self.inner, names, *key, token);
        let mut reply: Vec<Value> = match inner
            .run(
                Some(&names.entry),
                inner.settings.timeout,
                invocation.invoke_async(&mut conn),
            )
            .await
        {
            Ok(reply) => reply,
            Err(error) => {
                if error.is_circuit_open() {
                    lease.disarm(); // nothing was sent
                }
                return Lookup::Unavailable;
            }
        };
        match reply.as_mut_slice() {
            [Value::Int(1), Value::BulkString(bytes)] => {
                // Stored since the read (the script counted the hit).
                lease.disarm();
                self.found(key, std::mem::take(bytes))
            }
            [Value::Int(2)] => Lookup::Claimed(lease),
            [Value::Int(3), Value::Int(ttl)] => {
                lease.disarm();
                Lookup::Busy(Duration::from_millis(u64::try_from(*ttl).unwrap_or(0)))
            }
            _ => {
                inner.decode_errors.fetch_add(1, Relaxed);
                tracing::warn!(key = %key, "unexpected reply from the look-up script");
                Lookup::Unavailable
            }
        }
    }

    /// The record in a reply: a hit if it decodes and is fresh.
    fn found(&self, key: &Key, bytes: Vec<u8>) -> Lookup {
        // The record takes the reply's buffer: no copy.
        match codec::decode(Bytes::from(bytes)) {
            Ok(record) if record.is_fresh_at(now_millis()) => Lookup::Hit(Arc::new(record)),
            Ok(_) => Lookup::Garbage,
            Err(error) => {
                self.inner.decode_errors.fetch_add(1, Relaxed);
                tracing::warn!(key = %key, %error, "ignoring an unreadable entry in redis");
                Lookup::Garbage
            }
        }
    }

    /// Stores `record` (if any), releases the lease (if held), and tells
    /// every waiter on every instance: look again if it was stored, go
    /// through if not. A record stored without the lease (a refresh) is
    /// evicted from every other instance's L1.
    pub(crate) async fn complete(
        &self,
        ns: &str,
        key: &Key,
        lease: Option<&Lease>,
        record: Option<&Record>,
    ) {
        // Nothing to store and no claim to release: nobody waits on this
        // call (waiters elsewhere wait on a lease holder), so telling them
        // it ended unstored would only send them upstream early.
        if record.is_none() && lease.is_none() {
            return;
        }
        let inner = &self.inner;
        let names = inner.names(ns, key);
        let encoded = record.map(codec::encode).unwrap_or_default();
        // Redis refuses an expiry past its clock's range after the entry is
        // written: never send one.
        let ttl = record.map_or(1, |r| ttl_millis(r.ttl_at(now_millis())));
        let stored = match (record, lease) {
            (None, _) => Event::Unstored(*key),
            (Some(_), Some(_)) => Event::Done(*key),
            (Some(_), None) => Event::Replaced(*key, inner.instance.clone()),
        };
        let mut conn = inner.conn.clone();
        let mut invocation = scripts::STORE.prepare_invoke();
        invocation
            .key(&names.entry)
            .key(&names.lease)
            .arg(lease.map_or("", |l| l.token.as_str()))
            .arg(encoded)
            .arg(ttl)
            .arg(record.map_or(0, |r| r.created_at))
            .arg(inner.channel())
            .arg(stored.encode())
            .arg(record.map_or(Bytes::new(), |r| r.meta.clone()).as_ref())
            .arg(Event::Unstored(*key).encode());
        let result: Result<i64, _> = inner
            .run(
                Some(&names.entry),
                inner.settings.write_timeout,
                invocation.invoke_async(&mut conn),
            )
            .await;
        if result.is_ok() {
            lease.inspect(|lease| lease.disarm());
        }
    }
}
