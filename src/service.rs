//! The service [`IdempotencyLayer`](crate::IdempotencyLayer) makes: a thin adapter from Tower to the
//! engine.

use std::{
    future::Future,
    mem,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::{
    body::{RequestBody, ResponseBody},
    engine::{Answer, Engine, Lead, Relay, Upstream},
    error::BoxError,
    future::ResponseFuture,
    policy::Classified,
    stats::Stats,
};

/// Answers repeated requests from storage and lets one of many concurrent
/// duplicates reach the inner service.
///
/// Made by [`IdempotencyLayer`](crate::IdempotencyLayer); see the crate docs. Cloning is cheap:
/// clones share the cache, the flights and the statistics.
///
/// The inner service receives a [`RequestBody`] around the original body,
/// and the caller a [`ResponseBody`] around the inner service's.
///
/// # Examples
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response, StatusCode};
/// use http_body_util::{BodyExt, Full};
/// use tower::{service_fn, Layer, Service, ServiceExt};
/// use tower_idempotency::{IdempotencyLayer, RequestBody};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let mut service = IdempotencyLayer::new().layer(service_fn(
///     |_: Request<RequestBody<Full<Bytes>>>| async {
///         Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("done"))))
///     },
/// ));
///
/// for _ in 0..2 {
///     let request = Request::post("/v1/jobs").body(Full::new(Bytes::from("job")))?;
///     let response = service.ready().await?.call(request).await?;
///     assert_eq!(response.status(), StatusCode::OK);
///     assert_eq!(response.into_body().collect().await?.to_bytes(), "done");
/// }
/// let stats = service.stats();
/// assert_eq!((stats.misses, stats.hits.total()), (1, 1));
/// # Ok(())
/// # }
/// ```
pub struct Idempotency<S> {
    inner: S,
    engine: Arc<Engine>,
}

impl<S> Idempotency<S> {
    pub(crate) fn new(inner: S, engine: Arc<Engine>) -> Self {
        Self { inner, engine }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// What the layer has done so far, across every clone.
    pub fn stats(&self) -> Stats {
        self.engine.stats()
    }
}

impl<S: Clone> Clone for Idempotency<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            engine: Arc::clone(&self.engine),
        }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for Idempotency<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotency")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Idempotency<S>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body + Unpin + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        match self.engine.classify(&parts.method, &mut parts.headers) {
            Classified::Skip(skip) => {
                // Counted by the engine as the upstream call it becomes.
                let request = Request::from_parts(parts, RequestBody::passthrough(body));
                ResponseFuture::skipped(self.inner.call(request), self.engine.skip_status(skip))
            }
            Classified::Reject(error) => ResponseFuture::ready(self.engine.reject(error)),
            Classified::Engine(plan) => {
                // The engine calls the inner service only after async work (the
                // body, the look-up): move the instance known to be ready into
                // the future and keep a fresh clone.
                let clone = self.inner.clone();
                let ready = mem::replace(&mut self.inner, clone);
                let engine = Arc::clone(&self.engine);
                let request = Request::from_parts(parts, body);
                ResponseFuture::engine(Box::pin(engine.handle(request, plan, ReadyService(ready))))
            }
        }
    }
}

/// An inner service that `poll_ready` has readied, called at most once.
struct ReadyService<S>(S);

impl<S, ReqBody, ResBody> Upstream<ReqBody> for ReadyService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Body = ResBody;
    type Error = S::Error;

    fn forward(
        mut self,
        request: Request<ReqBody>,
    ) -> impl Future<Output = Result<Response<ResBody>, S::Error>> + Send {
        self.0.call(request)
    }

    fn lead(
        mut self,
        engine: Arc<Engine>,
        lead: Lead,
        request: Request<ReqBody>,
    ) -> impl Future<Output = Answer<ResBody, S::Error>> + Send {
        // A Tower future owns everything it needs: it runs in its own task.
        engine.lead_detached(lead, self.0.call(request))
    }

    fn relay(self, engine: Arc<Engine>, relay: Relay, request: Request<ReqBody>) {
        // The readied instance is let go now: held for the whole remote
        // stream, it would hold what its readiness reserved (a concurrency
        // permit, a buffer slot) for a call made only should Redis fail.
        // The fall-back readies a clone of its own, when it needs it.
        let mut service = self.0.clone();
        drop(self);
        let fresh = async move {
            std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
            service.call(request).await
        };
        engine.relay_detached(relay, fresh);
    }
}
