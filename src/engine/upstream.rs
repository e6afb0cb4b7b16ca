//! The upstream call: the [`Upstream`] an adapter hands the engine, the
//! request on its way to it ([`Pending`]), a bypass that forwards it
//! untouched, and a leader's call, which the tee (`tee.rs`) then records.

use std::{
    future::{poll_fn, Future},
    panic,
    pin::Pin,
    sync::Arc,
    time::Instant,
};

use bytes::Bytes;
use http::{request, HeaderMap, Request, Response};
use http_body::Body;
use tokio::{
    sync::oneshot,
    time::{error::Elapsed, timeout},
};

use super::{
    ai,
    key::Job,
    observe::{Bypass, Outcome},
    shared::Relay,
    Engine,
};
use crate::{
    body::{RequestBody, ResponseBody},
    cache_status::CacheStatus,
    error::{BoxError, Error, ErrorKind},
    flight::{Head, Leader, Reader},
    store::{Lease, Renewal},
    tenants::Tally,
};

/// One upstream call: the ready inner service of a Tower stack, or the rest
/// of a client middleware chain.
pub(crate) trait Upstream<ReqBody>: Send + Sized {
    type Body: Body + Send + 'static;
    type Error: Send + 'static;

    /// Sends a request the engine does not handle.
    fn forward(
        self,
        request: Request<ReqBody>,
    ) -> impl Future<Output = Result<Response<Self::Body>, Self::Error>> + Send;

    /// Makes a leader's call, through [`Engine::lead_detached`] where the call
    /// can outlive its caller, else [`Engine::lead_attached`].
    fn lead(
        self,
        engine: Arc<Engine>,
        lead: Lead,
        request: Request<ReqBody>,
    ) -> impl Future<Output = Answer<Self::Body, Self::Error>> + Send;

    /// Relays the answer another instance streams, in a task of its own
    /// that goes through with `request` should Redis fail mid-stream:
    /// through [`Engine::relay_detached`] where the call can outlive its
    /// caller, else [`Engine::relay_attached`] (no fall-back once the
    /// caller has the head).
    fn relay(self, engine: Arc<Engine>, relay: Relay, request: Request<ReqBody>);
}

/// What the engine answers: the response, or the inner service's error.
pub(crate) type Answer<B, E> = Result<Response<ResponseBody<B>>, E>;

/// A request the engine has read and keyed, and the upstream it goes to if
/// nothing stored or in flight answers it.
pub(super) struct Pending<U> {
    pub(super) job: Job,
    pub(super) parts: request::Parts,
    pub(super) body: Bytes,
    pub(super) upstream: U,
}

impl<U> Pending<U> {
    /// The request's headers, which a stored response's `Vary` must fit.
    pub(super) fn headers(&self) -> &HeaderMap {
        &self.parts.headers
    }
}

/// A leader about to call upstream, with everything its recording needs.
pub(crate) struct Lead {
    pub(super) leader: Leader,
    pub(super) job: Job,
    /// The leader's request headers, for the response's `Vary`.
    pub(super) request_headers: HeaderMap,
    pub(super) claim: Claim,
    pub(super) model: Option<String>,
    pub(super) started: Instant,
}

/// The leader's claim on a key in the shared store, kept alive while the
/// call runs.
pub(super) struct Claim {
    pub(super) lease: Option<Lease>,
    pub(super) _renewal: Option<Renewal>,
}

/// What the recording tells the leader's caller once the head is in.
pub(super) struct Started {
    pub(super) head: Arc<Head>,
    pub(super) reader: Reader,
}

/// Why the leader's call gave no head.
pub(super) enum NoHead<E> {
    /// The inner service failed: its caller gets the error.
    Upstream(E),
    /// Past the upstream timeout: its caller is answered 504.
    TimedOut,
}

/// The leader's call, as bounded by the upstream timeout.
pub(super) type Bounded<RB, E> = Result<Result<Response<RB>, E>, Elapsed>;

impl Engine {
    /// Calls upstream as a flight's leader, holding `lease` on the key in
    /// the shared store if it took one.
    pub(super) async fn call_upstream<B, U>(
        self: Arc<Self>,
        leader: Leader,
        lease: Option<Lease>,
        pending: Pending<U>,
    ) -> Answer<U::Body, U::Error>
    where
        U: Upstream<RequestBody<B>>,
        <U::Body as Body>::Error: Into<BoxError>,
    {
        let Pending {
            job,
            parts,
            body,
            upstream,
        } = pending;
        self.observe(if job.refresh {
            Outcome::Refresh
        } else {
            Outcome::Miss
        });
        self.count_tenant(&job, Tally::Upstream);
        let renewal = lease
            .as_ref()
            .and_then(|lease| self.l2.keep_alive(&job.ns, &job.key, lease));
        let lead = Lead {
            leader,
            request_headers: parts.headers.clone(),
            job,
            claim: Claim {
                lease,
                _renewal: renewal,
            },
            model: ai::request_model(&body),
            started: Instant::now(),
        };
        let request = Request::from_parts(parts, RequestBody::buffered(body));
        upstream.lead(Arc::clone(&self), lead, request).await
    }

    /// Sends a request the layer does not handle straight to the inner
    /// service, counted as bypassed for `reason`.
    pub(super) async fn forward<B, U>(
        &self,
        upstream: U,
        request: Request<RequestBody<B>>,
        reason: Bypass,
    ) -> Answer<U::Body, U::Error>
    where
        U: Upstream<RequestBody<B>>,
    {
        self.observe(Outcome::Bypass(reason));
        let mut response = upstream.forward(request).await?.map(ResponseBody::inner);
        self.mark(response.headers_mut(), CacheStatus::Bypass);
        Ok(response)
    }

    /// Leads with a call that outlives its caller if need be: it completes,
    /// and is stored, even if the leader's caller goes away. The caller
    /// drives it until its head is in (see `crate::flight::Drive`).
    pub(crate) async fn lead_detached<F, RB, E>(
        self: Arc<Self>,
        lead: Lead,
        call: F,
    ) -> Answer<RB, E>
    where
        F: Future<Output = Result<Response<RB>, E>> + Send + 'static,
        RB: Body + Send + 'static,
        RB::Error: Into<BoxError>,
        E: Send + 'static,
    {
        let call = timeout(self.config.upstream_timeout, call);
        self.lead_with(lead, call).await
    }

    /// Leads with a call that borrows from its caller (a client middleware
    /// chain): its head is awaited here, then the body is recorded as for
    /// [`lead_detached`](Self::lead_detached). If the caller goes away
    /// before the head, the call is cancelled and a follower takes over.
    #[cfg(feature = "reqwest")]
    pub(crate) async fn lead_attached<F, RB, E>(
        self: Arc<Self>,
        lead: Lead,
        call: F,
    ) -> Answer<RB, E>
    where
        F: Future<Output = Result<Response<RB>, E>> + Send,
        RB: Body + Send + 'static,
        RB::Error: Into<BoxError>,
        E: Send + 'static,
    {
        let result = timeout(self.config.upstream_timeout, call).await;
        self.lead_with(lead, std::future::ready(result)).await
    }

    /// Records `call` into the leader's flight, driven by this caller until
    /// the head is in (or it detaches earlier), and answers the caller.
    async fn lead_with<F, RB, E>(self: Arc<Self>, lead: Lead, call: F) -> Answer<RB, E>
    where
        F: Future<Output = Bounded<RB, E>> + Send + 'static,
        RB: Body + Send + 'static,
        RB::Error: Into<BoxError>,
        E: Send + 'static,
    {
        let refresh = lead.job.refresh;
        // Waiters on other instances must not wait on this caller's pace.
        let leased = lead.claim.lease.is_some();
        let drive = lead.leader.drive();
        let (started_tx, mut started_rx) = oneshot::channel();
        drive.attach(Box::pin(Arc::clone(&self).record(lead, call, started_tx)));
        if leased {
            drive.detach();
        }
        let started = poll_fn(|cx| {
            drive.poll(cx);
            Pin::new(&mut started_rx).poll(cx)
        })
        .await;
        match started {
            Ok(Ok(Started { head, reader })) => {
                let status = match (refresh, head.promised) {
                    (false, stored) => CacheStatus::Miss { stored },
                    (true, stored) => CacheStatus::Refresh { stored },
                };
                // What is left (the body of a streamed answer) runs in a
                // task of its own: the upstream is read as it comes,
                // whatever pace this caller reads its body at.
                drop(drive);
                Ok(self.live(&head, &head.headers, reader, status))
            }
            Ok(Err(NoHead::Upstream(error))) => Err(error),
            Ok(Err(NoHead::TimedOut)) => Ok(self.reject(Error::new(
                ErrorKind::UpstreamTimeout,
                "no response head within the upstream timeout",
            ))),
            // The recording ended without a word: it panicked in a task of
            // its own (one panicking here has already unwound). Panic here
            // too, as the inner service would have without the layer.
            Err(_) => match drive.task() {
                Some(task) => match task.await {
                    Err(error) if error.is_panic() => panic::resume_unwind(error.into_panic()),
                    _ => Ok(self.internal_error()),
                },
                None => Ok(self.internal_error()),
            },
        }
    }
}
