//! [`StoreError`]: why Redis could not be used.

use std::fmt;

/// Why Redis could not be used.
///
/// Returned by [`RedisStore::connect`](super::store::RedisStore::connect)
/// (an unreachable server, a bad URL) and by the analytics calls such as
/// [`fleet_stats`](super::store::RedisStore::fleet_stats). A request's path
/// never fails with it: there an error only means going on without Redis.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use tower_idempotency::RedisStore;
///
/// # async fn run() {
/// let connecting = RedisStore::builder("redis://127.0.0.1:6379/")
///     .connect_timeout(Duration::from_millis(200))
///     .connect()
///     .await;
/// match connecting {
///     Ok(redis) => println!("connected: {redis:?}"),
///     Err(error) if error.is_timeout() => eprintln!("redis is slow: {error}"),
///     Err(error) => eprintln!("no redis, caching in memory only: {error}"),
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
}

#[derive(Debug)]
enum StoreErrorKind {
    Redis(redis::RedisError),
    Timeout,
    CircuitOpen,
    Config(&'static str),
}

impl StoreError {
    pub(super) fn timeout() -> Self {
        Self {
            kind: StoreErrorKind::Timeout,
        }
    }

    pub(super) fn config(message: &'static str) -> Self {
        Self {
            kind: StoreErrorKind::Config(message),
        }
    }

    /// Whether the operation timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, StoreErrorKind::Timeout)
    }

    pub(super) fn circuit_open() -> Self {
        Self {
            kind: StoreErrorKind::CircuitOpen,
        }
    }

    /// Whether the operation was not sent: the circuit breaker is open.
    pub(super) fn is_circuit_open(&self) -> bool {
        matches!(self.kind, StoreErrorKind::CircuitOpen)
    }
}

impl From<redis::RedisError> for StoreError {
    fn from(error: redis::RedisError) -> Self {
        Self {
            kind: StoreErrorKind::Redis(error),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            StoreErrorKind::Redis(error) => write!(f, "redis: {error}"),
            StoreErrorKind::Timeout => f.write_str("redis operation timed out"),
            StoreErrorKind::CircuitOpen => f.write_str("redis skipped: circuit breaker open"),
            StoreErrorKind::Config(message) => write!(f, "redis configuration: {message}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            StoreErrorKind::Redis(error) => Some(error),
            _ => None,
        }
    }
}
