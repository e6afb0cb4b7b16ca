//! The inner service that forwards a request to the upstream, and what is
//! done to requests before the idempotency layer keys them.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::body::Body;
use bytes::Bytes;
use http::{
    header::{self, HeaderName},
    uri::{Authority, PathAndQuery, Scheme},
    HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version,
};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tower::Service;
use tower_idempotency::{strip_hop_by_hop, BoxError, RequestBody};

use crate::{chain, timeout::IdleTimeout, timeout::Stalled};

/// The upstream's scheme, authority and base path.
#[derive(Debug, Clone)]
pub struct UpstreamBase {
    scheme: Scheme,
    authority: Authority,
    /// Without a trailing slash: empty, or `/prefix`.
    path: String,
}

impl std::fmt::Display for UpstreamBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.path)
    }
}

pub fn parse_upstream(text: &str) -> Result<UpstreamBase, String> {
    let uri: Uri = text
        .parse()
        .map_err(|error| format!("not a URL: {error}"))?;
    let scheme = match uri.scheme() {
        Some(scheme) if *scheme == Scheme::HTTP || *scheme == Scheme::HTTPS => scheme.clone(),
        _ => return Err("the upstream must be an http:// or https:// URL".into()),
    };
    let authority = uri
        .authority()
        .cloned()
        .ok_or("the upstream URL has no host")?;
    if uri.query().is_some() {
        return Err("the upstream URL cannot have a query".into());
    }
    Ok(UpstreamBase {
        scheme,
        authority,
        path: uri.path().trim_end_matches('/').to_owned(),
    })
}

pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;
type UpstreamClient = Client<HttpsConnector<HttpConnector>, RequestBody<Body>>;

/// The inner service: forwards a request to the upstream and streams its
/// response back. An upstream that cannot be reached is answered 502, one
/// that sends no response head within `head_timeout` 504; a response body
/// that stalls for `idle_timeout` ends with an error (so it is not stored).
#[derive(Clone)]
pub struct Proxy {
    client: UpstreamClient,
    upstream: Arc<UpstreamBase>,
    host: HeaderValue,
    head_timeout: Duration,
    idle_timeout: Duration,
}

impl Proxy {
    pub fn new(
        upstream: UpstreamBase,
        head_timeout: Duration,
        idle_timeout: Duration,
    ) -> Result<Self, BoxError> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let host = HeaderValue::from_str(upstream.authority.as_str())?;
        Ok(Self {
            client,
            upstream: Arc::new(upstream),
            host,
            head_timeout,
            idle_timeout,
        })
    }

    /// The upstream URL of a request's path and query.
    fn target(&self, uri: &Uri) -> Result<Uri, http::Error> {
        let path_and_query = uri
            .path_and_query()
            .map_or("/", PathAndQuery::as_str)
            .to_owned();
        Uri::builder()
            .scheme(self.upstream.scheme.clone())
            .authority(self.upstream.authority.clone())
            .path_and_query(format!("{}{path_and_query}", self.upstream.path))
            .build()
    }
}

impl Service<Request<RequestBody<Body>>> for Proxy {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The pooled client queues requests itself.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<RequestBody<Body>>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        let target = match self.target(&parts.uri) {
            Ok(target) => target,
            Err(error) => {
                tracing::warn!(uri = %parts.uri, %error, "cannot build the upstream URL");
                let response = plain(StatusCode::BAD_REQUEST, "cannot forward this URL\n");
                return Box::pin(async move { Ok(response) });
            }
        };
        // Already done before the key was computed (see `strip_hop_by_hop`
        // in `main`); repeated so the service is safe on its own.
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.insert(header::HOST, self.host.clone());
        parts.uri = target;
        // The client speaks whatever it negotiated with the upstream.
        parts.version = Version::HTTP_11;
        let client = self.client.clone();
        let head_timeout = self.head_timeout;
        let idle_timeout = self.idle_timeout;
        Box::pin(async move {
            let method = parts.method.clone();
            let uri = parts.uri.clone();
            let call = client.request(Request::from_parts(parts, body));
            match tokio::time::timeout(head_timeout, call).await {
                Ok(Ok(response)) => {
                    let (mut parts, body) = response.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    // Streamed frame by frame: nothing is buffered here.
                    let body = IdleTimeout::new(body, idle_timeout, "the upstream's response")
                        .boxed_unsync();
                    Ok(Response::from_parts(parts, body))
                }
                Ok(Err(error)) if Stalled::in_chain(&error) => {
                    tracing::info!(%method, %uri, error = %chain(&error), "request body stalled");
                    Ok(plain(
                        StatusCode::REQUEST_TIMEOUT,
                        "the request body stopped arriving\n",
                    ))
                }
                Ok(Err(error)) => {
                    tracing::warn!(%method, %uri, error = %chain(&error), "upstream call failed");
                    Ok(plain(
                        StatusCode::BAD_GATEWAY,
                        "the upstream could not be reached\n",
                    ))
                }
                Err(_) => {
                    tracing::warn!(
                        %method,
                        %uri,
                        seconds = head_timeout.as_secs_f64(),
                        "no response head from the upstream in time"
                    );
                    Ok(plain(
                        StatusCode::GATEWAY_TIMEOUT,
                        "the upstream did not answer in time\n",
                    ))
                }
            }
        })
    }
}

/// A short text response.
pub fn plain(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Removes the `x-idempotency-*` control headers, which only a gateway run
/// with `--control-headers` obeys.
pub fn strip_control_headers(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("x-idempotency-"))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}
