//! The same engine in a `reqwest` client, as a `reqwest_middleware`
//! middleware.
//!
//! # Examples
//!
//! ```no_run
//! use reqwest_middleware::ClientBuilder;
//! use tower_idempotency::{IdempotencyLayer, IdempotencyMiddleware};
//!
//! # async fn ask() -> Result<(), Box<dyn std::error::Error>> {
//! let idempotency = IdempotencyLayer::new();
//! let client = ClientBuilder::new(reqwest::Client::new())
//!     .with(IdempotencyMiddleware::new(&idempotency))
//!     .build();
//!
//! // Twice the same call: one reaches the API, the other is a replay.
//! for _ in 0..2 {
//!     let answer = client
//!         .post("https://api.example.com/v1/chat/completions")
//!         .header("content-type", "application/json")
//!         .body(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#)
//!         .send()
//!         .await?;
//!     println!("{}", answer.text().await?);
//! }
//! assert_eq!(idempotency.stats().hits.total(), 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Differences from the Tower layer
//!
//! A request whose body is a stream (`reqwest::Body::wrap_stream`) cannot be
//! read up front: it passes through uncached. And a middleware chain lends
//! its next step only for the duration of the call, so the leader's call is
//! awaited in the caller's task until the response head arrives (the body is
//! then recorded in a task of its own, as with the layer): a caller that
//! gives up before the head cancels the call, and a follower takes over.

use std::{future::Future, sync::Arc};

use bytes::Bytes;
use http::Extensions;
use http_body_util::Full;
use reqwest::ResponseBuilderExt;
use reqwest_middleware::{Middleware, Next};

use crate::{
    body::{RequestBody, ResponseBody},
    engine::{Answer, Classified, Engine, Lead, Upstream},
    IdempotencyLayer, Stats,
};

/// Runs a `reqwest` client's requests through an [`IdempotencyLayer`]'s
/// engine: same keys, cache, flights and statistics as the layer it was
/// made from.
#[derive(Clone)]
pub struct IdempotencyMiddleware {
    engine: Arc<Engine>,
}

impl IdempotencyMiddleware {
    /// A middleware sharing `layer`'s cache, flights and statistics.
    pub fn new(layer: &IdempotencyLayer) -> Self {
        Self {
            engine: layer.engine(),
        }
    }

    /// What the middleware (and its layer) has done so far.
    pub fn stats(&self) -> Stats {
        self.engine.stats()
    }
}

impl std::fmt::Debug for IdempotencyMiddleware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyMiddleware")
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Middleware for IdempotencyMiddleware {
    async fn handle(
        &self,
        mut request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let body = match request.body() {
            None => Bytes::new(),
            Some(body) => match body.as_bytes() {
                Some(bytes) => Bytes::copy_from_slice(bytes),
                // A stream cannot be read up front: pass it through uncached.
                None => return next.run(request, extensions).await,
            },
        };
        let url = request.url().clone();
        let Ok(mut view) = http::Request::builder()
            .method(request.method().clone())
            .uri(url.as_str())
            .version(request.version())
            .body(Full::new(body))
        else {
            return next.run(request, extensions).await;
        };
        *view.headers_mut() = request.headers().clone();
        let (mut parts, body) = view.into_parts();
        let plan = match self.engine.classify(&parts.method, &mut parts.headers) {
            Classified::Skip(_) => {
                self.engine.count_upstream_call();
                *request.headers_mut() = parts.headers;
                return next.run(request, extensions).await;
            }
            Classified::Reject(error) => return Ok(into_reqwest(self.engine.reject(error), url)),
            Classified::Engine(plan) => plan,
        };
        let upstream = NextUpstream {
            next,
            extensions,
            request,
        };
        let view = http::Request::from_parts(parts, body);
        let response = Arc::clone(&self.engine)
            .handle(view, plan, upstream)
            .await?;
        Ok(into_reqwest(response, url))
    }
}

fn into_reqwest(
    response: http::Response<ResponseBody<reqwest::Body>>,
    url: reqwest::Url,
) -> reqwest::Response {
    let (mut parts, body) = response.into_parts();
    // reqwest reads a response's URL from an extension only its builder sets.
    if let Ok(carrier) = http::Response::builder().url(url).body(()) {
        parts.extensions.extend(carrier.into_parts().0.extensions);
    }
    reqwest::Response::from(http::Response::from_parts(parts, reqwest::Body::wrap(body)))
}

/// The rest of the middleware chain, called at most once.
struct NextUpstream<'a> {
    next: Next<'a>,
    extensions: &'a mut Extensions,
    /// The caller's request (its timeout and body included), sent as it was
    /// but for the headers the engine consumed.
    request: reqwest::Request,
}

impl NextUpstream<'_> {
    async fn send(
        mut self,
        request: http::Request<RequestBody<Full<Bytes>>>,
    ) -> reqwest_middleware::Result<http::Response<reqwest::Body>> {
        *self.request.headers_mut() = request.into_parts().0.headers;
        let response = self.next.run(self.request, self.extensions).await?;
        Ok(http::Response::from(response))
    }
}

impl Upstream<RequestBody<Full<Bytes>>> for NextUpstream<'_> {
    type Body = reqwest::Body;
    type Error = reqwest_middleware::Error;

    fn forward(
        self,
        request: http::Request<RequestBody<Full<Bytes>>>,
    ) -> impl Future<Output = Result<http::Response<reqwest::Body>, Self::Error>> + Send {
        self.send(request)
    }

    fn lead(
        self,
        engine: Arc<Engine>,
        lead: Lead,
        request: http::Request<RequestBody<Full<Bytes>>>,
    ) -> impl Future<Output = Answer<reqwest::Body, Self::Error>> + Send {
        engine.lead_attached(lead, self.send(request))
    }
}
