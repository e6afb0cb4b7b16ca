//! The accept loop: a bounded number of connections, each with deadlines,
//! and a graceful stop.
//!
//! Every connection is in one of three phases, watched by its own task:
//!
//! - idle: waiting for a request (its first, or the next on a kept-alive
//!   connection), nothing received yet; closed after `keepalive_timeout`,
//!   or at once when the gateway is at its connection limit;
//! - head: a request head has started arriving; closed if it is not
//!   complete within `header_timeout`;
//! - busy: requests are being served; the request body must make progress
//!   every `body_timeout` ([`IdleTimeout`] on the body), and the response
//!   is bounded by the upstream's own timeouts.
//!
//! hyper's own `header_read_timeout` backs the first two up: it counts from
//! the moment a connection starts waiting for a head, so it is set to their
//! sum.

use std::{
    convert::Infallible,
    future::Future,
    io,
    pin::{pin, Pin},
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use axum::{body::Body, Router};
use bytes::Bytes;
use http::Request;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use pin_project_lite::pin_project;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{watch, Notify, OwnedSemaphorePermit, Semaphore},
    time::{sleep, sleep_until, Instant},
};
use tower::ServiceExt;

use crate::timeout::IdleTimeout;

/// File descriptors kept for everything but client connections: standard
/// streams, the runtime's own, the listener, Redis, TLS roots, logs.
const FD_RESERVE: u64 = 64;
/// First and longest pause after an accept error that is not about one
/// connection (out of file descriptors, out of memory).
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_secs(1));
/// At most one warning about the connection limit per this long.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The connection bounds, from the command line.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub max_connections: usize,
}

/// How many connections the process can hold open: the requested maximum,
/// lowered to what its file-descriptor limit allows (each connection may
/// need a second descriptor for its upstream call). Raises the soft limit
/// to the hard one first, as servers commonly do.
pub fn connection_budget(requested: usize) -> (usize, Option<u64>) {
    let Some(fds) = raise_fd_limit() else {
        return (requested, None);
    };
    let allowed = usize::try_from(fds.saturating_sub(FD_RESERVE) / 2).unwrap_or(usize::MAX);
    (requested.min(allowed).max(1), Some(fds))
}

#[cfg(unix)]
#[allow(unsafe_code)]
fn raise_fd_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        // The kernel caps descriptors far below "infinity".
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max.min(1 << 20),
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one `rlimit` through a valid pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    // `rlim_t` is `u64` on Linux, not on every Unix.
    #[allow(clippy::useless_conversion)]
    Some(u64::try_from(limit.rlim_cur).unwrap_or(u64::MAX))
}

#[cfg(not(unix))]
fn raise_fd_limit() -> Option<u64> {
    None
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops
/// accepting, lets every connection finish its requests, and returns once
/// all are closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(max_connections));
    let pressure = Arc::new(Notify::new());
    let (stop, stopping) = watch::channel(false);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout + limits.keepalive_timeout);
    builder.http2().timer(TokioTimer::new());

    let mut shutdown = pin!(shutdown);
    let mut backoff = ACCEPT_BACKOFF.0;
    let mut last_warning: Option<Instant> = None;
    loop {
        let permit = match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if last_warning.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    tracing::warn!(
                        max_connections,
                        "connection limit reached: idle connections are closed, new ones wait"
                    );
                    last_warning = Some(Instant::now());
                }
                pressure.notify_waiters();
                tokio::select! {
                    permit = Arc::clone(&permits).acquire_owned() => {
                        permit.expect("the semaphore is never closed")
                    }
                    () = &mut shutdown => break,
                }
            }
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        match accepted {
            Ok((stream, _peer)) => {
                backoff = ACCEPT_BACKOFF.0;
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(
                    builder.clone(),
                    stream,
                    app.clone(),
                    limits,
                    Arc::clone(&pressure),
                    stopping.clone(),
                    permit,
                ));
            }
            Err(error) if is_about_one_connection(&error) => {
                tracing::debug!(%error, "accept error");
            }
            Err(error) => {
                // Out of descriptors or memory: retrying at once would spin.
                tracing::warn!(%error, pause_ms = backoff.as_millis() as u64, "accept error");
                tokio::select! {
                    () = sleep(backoff) => {}
                    () = &mut shutdown => break,
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
            }
        }
    }
    drop(listener);
    let _ = stop.send(true);
    // Every connection holds a permit until it is closed.
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
}

/// Errors that concern one connection that is already gone, not the
/// listener.
fn is_about_one_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Serves one connection, and closes it when it outstays its phase.
async fn connection(
    builder: auto::Builder<TokioExecutor>,
    stream: TcpStream,
    app: Router,
    limits: Limits,
    pressure: Arc<Notify>,
    mut stopping: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: Arc::clone(&activity),
    });
    let service = hyper::service::service_fn({
        let activity = Arc::clone(&activity);
        move |request: Request<Incoming>| {
            let busy = Busy::begin(&activity);
            let request = request.map(|body| {
                Body::new(IdleTimeout::new(
                    body,
                    limits.body_timeout,
                    "the request body",
                ))
            });
            let app = app.clone();
            async move {
                let response = app.oneshot(request).await?;
                Ok::<_, Infallible>(response.map(|body| Tracked { body, _busy: busy }))
            }
        }
    });
    let mut conn = pin!(builder.serve_connection(io, service));
    let mut stop_requested = *stopping.borrow();
    if stop_requested {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        let changed = activity.changed.notified();
        let squeezed = pressure.notified();
        let deadline = activity.deadline(&limits);
        tokio::select! {
            // The connection first: bytes already waiting move it out of
            // the idle phase before the other branches look at it.
            biased;
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(error = %crate::chain(&*error), "connection ended");
                }
                return;
            }
            () = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => {
                if activity.deadline(&limits).is_some_and(|at| at <= Instant::now()) {
                    tracing::debug!(phase = activity.phase_name(), "closing a connection past its deadline");
                    return;
                }
            }
            () = changed => {}
            () = squeezed => {
                if activity.is_idle() {
                    tracing::debug!("closing an idle connection to make room");
                    return;
                }
            }
            _ = stopping.changed(), if !stop_requested => {
                stop_requested = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

/// Where a connection is in its life; see the module docs.
struct Activity {
    phase: Mutex<Phase>,
    /// Woken on every change of phase, so the watcher re-reads its deadline.
    changed: Notify,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Idle { since: Instant },
    Head { since: Instant },
    Busy { requests: usize },
}

impl Activity {
    fn new() -> Self {
        Self {
            phase: Mutex::new(Phase::Idle {
                since: Instant::now(),
            }),
            changed: Notify::new(),
        }
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes arrived from the client.
    fn received(&self) {
        let mut phase = self.phase();
        if let Phase::Idle { .. } = *phase {
            *phase = Phase::Head {
                since: Instant::now(),
            };
            drop(phase);
            self.changed.notify_one();
        }
    }

    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        match *self.phase() {
            Phase::Idle { since } => Some(since + limits.keepalive_timeout),
            Phase::Head { since } => Some(since + limits.header_timeout),
            Phase::Busy { .. } => None,
        }
    }

    fn is_idle(&self) -> bool {
        matches!(*self.phase(), Phase::Idle { .. })
    }

    fn phase_name(&self) -> &'static str {
        match *self.phase() {
            Phase::Idle { .. } => "idle",
            Phase::Head { .. } => "head",
            Phase::Busy { .. } => "busy",
        }
    }
}

/// A request being served: from its head until its response body is done
/// (or dropped).
struct Busy(Arc<Activity>);

impl Busy {
    fn begin(activity: &Arc<Activity>) -> Self {
        let mut phase = activity.phase();
        *phase = match *phase {
            Phase::Busy { requests } => Phase::Busy {
                requests: requests + 1,
            },
            _ => Phase::Busy { requests: 1 },
        };
        drop(phase);
        activity.changed.notify_one();
        Self(Arc::clone(activity))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut phase = self.0.phase();
        *phase = match *phase {
            Phase::Busy { requests } if requests > 1 => Phase::Busy {
                requests: requests - 1,
            },
            _ => Phase::Idle {
                since: Instant::now(),
            },
        };
        drop(phase);
        self.0.changed.notify_one();
    }
}

pin_project! {
    /// A response body that keeps its connection busy until it is dropped.
    struct Tracked {
        #[pin]
        body: Body,
        _busy: Busy,
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The client's socket, telling its [`Activity`] when bytes arrive.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.received();
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
