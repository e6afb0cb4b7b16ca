//! The layer's own failures: [`Error`] and its [`ErrorKind`].
//!
//! The service keeps `Error = S::Error`: the layer's own failures become HTTP
//! responses (an error would drop the connection without an answer), and the
//! [`Error`] that caused one travels in the response's extensions so outer
//! layers can inspect it.

use std::{fmt, sync::Arc};

/// A boxed error, as bodies and sources carry them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What kind of failure the layer answered.
///
/// # Examples
///
/// ```
/// use http::StatusCode;
/// use tower_idempotency::ErrorKind;
///
/// // What an outer layer might log, by kind.
/// fn describe(kind: ErrorKind) -> &'static str {
///     match kind {
///         ErrorKind::KeyReused => "the client reused a key",
///         ErrorKind::InFlight => "the client retried too early",
///         ErrorKind::UpstreamTimeout => "the upstream is slow",
///         _ => "the client sent a bad request",
///     }
/// }
/// assert_eq!(describe(ErrorKind::MissingKey), "the client sent a bad request");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request body could not be read (answered 400).
    RequestBody,
    /// In strict mode, an identical request was still in flight (answered
    /// 409): with an `Idempotency-Key`, at once; otherwise past the wait
    /// deadline.
    InFlight,
    /// The `Idempotency-Key` header is required here and missing (answered 400).
    MissingKey,
    /// The `Idempotency-Key` header is malformed (answered 400).
    InvalidKey,
    /// The `Idempotency-Key` was already used with another payload
    /// (answered 422).
    KeyReused,
    /// A control header has an invalid value (answered 400).
    InvalidControl,
    /// The inner service gave no response head within
    /// [`upstream_timeout`](crate::Builder::upstream_timeout) (answered 504).
    UpstreamTimeout,
}

/// A failure of the layer itself, found in the extensions of the response
/// that answered it.
///
/// Cheap to clone: the source is shared.
///
/// # Examples
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response, StatusCode};
/// use http_body_util::Full;
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tower_idempotency::{Error, ErrorKind, IdempotencyLayer, KeyHeader, RequestBody};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let layer = IdempotencyLayer::builder()
///     .idempotency_key_header(KeyHeader::Required)
///     .build();
/// let mut service = ServiceBuilder::new()
///     .layer(layer)
///     .service_fn(|_: Request<RequestBody<Full<Bytes>>>| async {
///         Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
///     });
///
/// let request = Request::post("/v1/orders").body(Full::new(Bytes::from("{}")))?;
/// let response = service.ready().await?.call(request).await?;
/// assert_eq!(response.status(), StatusCode::BAD_REQUEST);
/// let error = response.extensions().get::<Error>().expect("the layer's own answer");
/// assert_eq!(error.kind(), ErrorKind::MissingKey);
/// assert_eq!(error.to_string(), "idempotency-key is required");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    source: Option<Arc<BoxError>>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, source: impl Into<BoxError>) -> Self {
        Self {
            kind,
            source: Some(Arc::new(source.into())),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message for the client: what went wrong and, when known, why.
    pub(crate) fn detail(&self) -> String {
        match &self.source {
            Some(source) => format!("{self}: {source}"),
            None => self.to_string(),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("source", &self.source.as_deref())
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ErrorKind::RequestBody => f.write_str("request body could not be read"),
            ErrorKind::InFlight => f.write_str("an identical request is still in flight"),
            ErrorKind::MissingKey => f.write_str("idempotency-key is required"),
            ErrorKind::InvalidKey => f.write_str("idempotency-key is invalid"),
            ErrorKind::KeyReused => f.write_str("idempotency-key was used with another payload"),
            ErrorKind::InvalidControl => f.write_str("invalid control header"),
            ErrorKind::UpstreamTimeout => f.write_str("the upstream did not answer in time"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| &**e as &(dyn std::error::Error + 'static))
    }
}

/// A failure shared by every reader of one upstream response body.
#[derive(Clone)]
pub(crate) struct SharedError(pub(crate) Arc<BoxError>);

impl fmt::Debug for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self.0, f)
    }
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "upstream response body failed: {}", self.0)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&**self.0)
    }
}
