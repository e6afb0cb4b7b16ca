//! The reqwest middleware; see [`IdempotencyMiddleware`](crate::IdempotencyMiddleware).

use std::{future::Future, sync::Arc};

use bytes::Bytes;
use http::{header, Extensions, HeaderMap, HeaderValue};
use http_body_util::Full;
use reqwest::ResponseBuilderExt;
use reqwest_middleware::{Middleware, Next};

use crate::{
    body::{RequestBody, ResponseBody},
    engine::{Answer, Engine, Lead, Relay, Upstream},
    layer::IdempotencyLayer,
    policy::Classified,
    stats::Stats,
};

/// Runs a `reqwest` client's requests through an [`IdempotencyLayer`]'s
/// engine: same keys, cache, flights and statistics as the layer it was
/// made from.
///
///
/// # Examples
///
/// ```no_run
/// use reqwest_middleware::ClientBuilder;
/// use tower_idempotency::{IdempotencyLayer, IdempotencyMiddleware};
///
/// # async fn ask() -> Result<(), Box<dyn std::error::Error>> {
/// let idempotency = IdempotencyLayer::new();
/// // The client has no default headers but reqwest's own: say so, so that
/// // the middleware keys requests as they will be sent.
/// let client = ClientBuilder::new(reqwest::Client::new())
///     .with(IdempotencyMiddleware::new(&idempotency).default_headers(Default::default()))
///     .build();
///
/// // Twice the same call: one reaches the API, the other is a replay.
/// for _ in 0..2 {
///     let answer = client
///         .post("https://api.example.com/v1/chat/completions")
///         .header("content-type", "application/json")
///         .body(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#)
///         .send()
///         .await?;
///     println!("{}", answer.text().await?);
/// }
/// assert_eq!(idempotency.stats().hits.total(), 1);
/// # Ok(())
/// # }
/// ```
///
/// # Default headers
///
/// A key is computed on the request as it will be sent, and `reqwest` adds
/// its client's default headers (`ClientBuilder::default_headers`, and its
/// own `accept: */*`) only after every middleware has run, where no
/// middleware can see them. Two clients whose default `authorization`
/// differs would otherwise send the same-looking request and share an entry.
/// So the middleware must be told them:
///
/// ```no_run
/// use http::{header, HeaderMap, HeaderValue};
/// use reqwest_middleware::ClientBuilder;
/// use tower_idempotency::{IdempotencyLayer, IdempotencyMiddleware};
///
/// # fn build(idempotency: &IdempotencyLayer) -> Result<(), reqwest::Error> {
/// let mut defaults = HeaderMap::new();
/// defaults.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer tenant-a"));
/// let client = ClientBuilder::new(
///     reqwest::Client::builder()
///         .default_headers(defaults.clone())
///         .build()?,
/// )
/// .with(IdempotencyMiddleware::new(idempotency).default_headers(defaults))
/// .build();
/// # Ok(())
/// # }
/// ```
///
/// The middleware merges them into the request it keys exactly as `reqwest`
/// merges them into the request it sends (a header the request sets itself
/// wins). Until it is told, it cannot know what will be sent, and caches a
/// request only when the request itself sets every vary header (which no
/// default can then change); others pass through uncached, counted as
/// bypassed.
///
/// What `reqwest` adds later still is not in the key: the cookies of a
/// client-side cookie store (give each user their own client, or set `cookie`
/// on the request), a proxy's own headers, and `accept-encoding` from the
/// decompression features (which decode the body before the middleware sees
/// it, so the answer does not depend on it).
///
/// # Differences from the Tower layer
///
/// A request whose body is a stream (`reqwest::Body::wrap_stream`) cannot be
/// read up front: it passes through uncached. And a middleware chain lends
/// its next step only for the duration of the call, so the leader's call is
/// awaited in the caller's task until the response head arrives (the body is
/// then recorded in a task of its own, as with the layer): a caller that
/// gives up before the head cancels the call, and a follower takes over.
#[derive(Clone)]
pub struct IdempotencyMiddleware {
    engine: Arc<Engine>,
    /// The client's default headers as `reqwest` holds them, once told.
    defaults: Option<Arc<HeaderMap>>,
}

impl IdempotencyMiddleware {
    /// A middleware sharing `layer`'s cache, flights and statistics.
    ///
    /// Until it is told the client's [default
    /// headers](Self::default_headers), it caches only requests that set
    /// every vary header themselves (see the type's "Default headers").
    pub fn new(layer: &IdempotencyLayer) -> Self {
        Self {
            engine: layer.engine(),
            defaults: None,
        }
    }

    /// The default headers the client was built with, the map given to
    /// `reqwest::ClientBuilder::default_headers` (empty for
    /// `reqwest::Client::new()`). `reqwest`'s own `accept: */*` is added as
    /// `reqwest` adds it. Requests are then keyed with them, as they are sent.
    pub fn default_headers(mut self, headers: HeaderMap) -> Self {
        // As `reqwest::ClientBuilder` builds them: its own `accept`, then
        // each given header inserted over it (the last value of a name wins).
        let mut defaults = HeaderMap::try_with_capacity(headers.len() + 1).unwrap_or_default();
        defaults.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        for (name, value) in headers.iter() {
            defaults.insert(name, value.clone());
        }
        self.defaults = Some(Arc::new(defaults));
        self
    }

    /// The headers `request` will be sent with, if they can be known, else
    /// `None`.
    fn outgoing_headers(&self, request: &reqwest::Request) -> Option<HeaderMap> {
        let mut headers = request.headers().clone();
        match &self.defaults {
            Some(defaults) => {
                // As `reqwest::Client::execute` merges them: a header the
                // request sets itself is kept whole.
                for (name, value) in defaults.iter() {
                    if let header::Entry::Vacant(entry) = headers.entry(name) {
                        entry.insert(value.clone());
                    }
                }
                Some(headers)
            }
            // Unknown defaults cannot change a vary header the request sets.
            None => self
                .engine
                .vary_headers()
                .iter()
                .all(|name| headers.contains_key(name))
                .then_some(headers),
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
        let Some(outgoing) = self.outgoing_headers(&request) else {
            tracing::debug!("the client's default headers are unknown: request not cached");
            self.engine.count_unknown_headers();
            return next.run(request, extensions).await;
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
        *view.headers_mut() = outgoing;
        let (mut parts, body) = view.into_parts();
        let plan = match self.engine.classify(&parts.method, &mut parts.headers) {
            // Counted by the engine as the upstream call it becomes.
            Classified::Skip(_) => {
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

    fn relay(self, engine: Arc<Engine>, relay: Relay, _: http::Request<RequestBody<Full<Bytes>>>) {
        // The rest of the chain is borrowed from the caller, who has the
        // head by the time Redis could fail: no fall-back.
        engine.relay_attached(relay);
    }
}
