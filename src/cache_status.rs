//! The RFC 9211 `Cache-Status` member this layer adds to its responses.

use http::{HeaderMap, HeaderName, HeaderValue};

/// The `cache-status` header name (RFC 9211), under which the layer
/// reports how it answered: `hit`, `fwd=uri-miss` (with `stored` or
/// `collapsed`), `fwd=request`, `fwd=bypass` or `fwd=method`.
///
/// Turn the header off with
/// [`Builder::cache_status_header`](crate::Builder::cache_status_header).
///
/// # Examples
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tower_idempotency::{IdempotencyLayer, RequestBody, CACHE_STATUS};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let mut service = ServiceBuilder::new()
///     .layer(IdempotencyLayer::new())
///     .service_fn(|_: Request<RequestBody<Full<Bytes>>>| async {
///         Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("ok"))))
///     });
///
/// // DELETE is not eligible by default: it goes through, and says why.
/// let request = Request::delete("/v1/files/7").body(Full::new(Bytes::new()))?;
/// let response = service.ready().await?.call(request).await?;
/// assert_eq!(response.headers()[CACHE_STATUS], "tower-idempotency; fwd=method");
/// # Ok(())
/// # }
/// ```
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// How the layer answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheStatus {
    /// Replayed a stored entry, `ttl` seconds from expiry.
    Hit { ttl: u64 },
    /// Led the upstream call; `stored` when its response is being recorded.
    Miss { stored: bool },
    /// Shared a concurrent identical request's upstream response.
    Collapsed,
    /// The client's `no-cache`: went upstream, `stored` as for a miss.
    Refresh { stored: bool },
    /// The policy let the request through untouched.
    Bypass,
    /// The method is not eligible.
    Method,
}

impl CacheStatus {
    fn value(self) -> HeaderValue {
        let fixed = match self {
            Self::Hit { ttl } => {
                let value = format!("tower-idempotency; hit; ttl={ttl}");
                return HeaderValue::try_from(value).expect("ascii");
            }
            Self::Miss { stored: true } => "tower-idempotency; fwd=uri-miss; stored",
            Self::Miss { stored: false } => "tower-idempotency; fwd=uri-miss",
            Self::Collapsed => "tower-idempotency; fwd=uri-miss; collapsed",
            Self::Refresh { stored: true } => "tower-idempotency; fwd=request; stored",
            Self::Refresh { stored: false } => "tower-idempotency; fwd=request",
            Self::Bypass => "tower-idempotency; fwd=bypass",
            Self::Method => "tower-idempotency; fwd=method",
        };
        HeaderValue::from_static(fixed)
    }

    /// Appends this layer's member to the response's `Cache-Status` list
    /// (upstream caches' members, closer to the origin, stay first).
    pub(crate) fn append_to(self, headers: &mut HeaderMap) {
        headers.append(CACHE_STATUS, self.value());
    }
}
