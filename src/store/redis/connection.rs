//! One connection handle, to a single node or to a cluster, and the rule
//! every operation follows: a timeout, and the circuit breaker of the slots
//! it touches.

use std::{sync::atomic::Ordering::Relaxed, time::Duration};

use redis::{
    aio::{ConnectionLike, ConnectionManager},
    cluster_async::ClusterConnection,
    Cmd, Pipeline, RedisFuture, Value,
};

use super::{error::StoreError, store::Inner};
use crate::store::breaker::Change;

/// One connection handle, to a single node or to a cluster.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(cmd, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

impl Inner {
    /// Runs one operation on the Redis key `name` (`None`: on no key) under
    /// a timeout and the circuit breaker of the key's slots.
    pub(super) async fn run<T>(
        &self,
        name: Option<&str>,
        timeout: Duration,
        operation: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let breaker = self.breakers.for_key(name);
        if !breaker.permit() {
            self.skipped.fetch_add(1, Relaxed);
            return Err(StoreError::circuit_open());
        }
        let error = match tokio::time::timeout(timeout, operation).await {
            Ok(Ok(value)) => {
                if breaker.success() == Change::Recovered {
                    tracing::info!("redis is reachable again");
                }
                return Ok(value);
            }
            Ok(Err(error)) => StoreError::from(error),
            Err(_) => StoreError::timeout(),
        };
        self.errors.fetch_add(1, Relaxed);
        crate::telemetry::store_error();
        match breaker.failure() {
            Change::FirstFailure => {
                tracing::warn!(%error, "redis operation failed; going on without it")
            }
            Change::Opened => tracing::warn!(
                %error,
                cooldown = ?self.settings.breaker_cooldown,
                "redis keeps failing; skipping it for a while"
            ),
            _ => tracing::debug!(%error, "redis operation failed"),
        }
        Err(error)
    }
}
