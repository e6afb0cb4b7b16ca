//! Which responses may be stored, and what of them is stored and shared.

use http::{header, response, HeaderMap, HeaderValue};

use super::hop_by_hop::HopByHop;

/// Decides whether a complete upstream response may be stored.
///
/// Implemented for closures `Fn(&http::response::Parts) -> bool`. The rules
/// that protect users (`no-store`, `private`, the size limit) apply on top of
/// the predicate and cannot be widened. Set it with
/// [`Builder::store_if`](crate::Builder::store_if).
///
/// # Examples
///
/// Keep 404s too, so that asking again for what is not there costs nothing:
///
/// ```
/// use std::sync::{atomic::{AtomicUsize, Ordering}, Arc};
/// use bytes::Bytes;
/// use http::{response, Request, Response, StatusCode};
/// use http_body_util::{BodyExt, Full};
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tower_idempotency::{IdempotencyLayer, RequestBody, StorePredicate, Successful};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let layer = IdempotencyLayer::builder()
///     .store_if(|head: &response::Parts| {
///         Successful.should_store(head) || head.status == StatusCode::NOT_FOUND
///     })
///     .build();
/// let calls = Arc::new(AtomicUsize::new(0));
/// let counter = Arc::clone(&calls);
/// let mut service = ServiceBuilder::new()
///     .layer(layer)
///     .service_fn(move |_: Request<RequestBody<Full<Bytes>>>| {
///         counter.fetch_add(1, Ordering::SeqCst);
///         let mut response = Response::new(Full::new(Bytes::from("no such model")));
///         *response.status_mut() = StatusCode::NOT_FOUND;
///         async { Ok::<_, std::convert::Infallible>(response) }
///     });
///
/// for _ in 0..2 {
///     let request = Request::get("/v1/models/unknown").body(Full::new(Bytes::new()))?;
///     let response = service.ready().await?.call(request).await?;
///     assert_eq!(response.status(), StatusCode::NOT_FOUND);
///     response.into_body().collect().await?;
/// }
/// assert_eq!(calls.load(Ordering::SeqCst), 1);
/// # Ok(())
/// # }
/// ```
pub trait StorePredicate: Send + Sync + 'static {
    /// Whether a response with this head may be stored.
    fn should_store(&self, head: &response::Parts) -> bool;
}

impl<F> StorePredicate for F
where
    F: Fn(&response::Parts) -> bool + Send + Sync + 'static,
{
    fn should_store(&self, head: &response::Parts) -> bool {
        self(head)
    }
}

/// The default [`StorePredicate`]: store 2xx responses only.
///
/// # Examples
///
/// ```
/// use http::{Response, StatusCode};
/// use tower_idempotency::{StorePredicate, Successful};
///
/// let ok = Response::new(()).into_parts().0;
/// assert!(Successful.should_store(&ok));
///
/// let mut failed = Response::new(());
/// *failed.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
/// assert!(!Successful.should_store(&failed.into_parts().0));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Successful;

impl StorePredicate for Successful {
    fn should_store(&self, head: &response::Parts) -> bool {
        head.status.is_success()
    }
}

/// The declared body length, when there is exactly one valid `Content-Length`.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    value.to_str().ok()?.trim().parse().ok()
}

/// The headers a response may be stored and shared with: without its
/// hop-by-hop headers (as [`strip_hop_by_hop`](super::strip_hop_by_hop)
/// removes them, but `vary`), `set-cookie`, and `age` (which a replay
/// recomputes).
pub(crate) fn shareable_headers(headers: &HeaderMap) -> HeaderMap {
    let hop_by_hop = HopByHop::of(headers);
    // `try_`: very many values are past what a capacity may ask for,
    // though not what a map holds.
    let mut out = HeaderMap::try_with_capacity(headers.len()).unwrap_or_default();
    for (name, value) in headers {
        // `vary` stays whatever `Connection` says: a stored response's own
        // `Vary` is what keeps its replays to the requests it fits.
        let drop = (hop_by_hop.contains(name) && name != header::VARY)
            || name == header::SET_COOKIE
            || name == header::AGE;
        if !drop {
            // A copy: the value may be a slice of the connection's read
            // buffer, which a stored entry must not keep alive.
            let copy = match HeaderValue::from_bytes(value.as_bytes()) {
                Ok(mut copy) => {
                    copy.set_sensitive(value.is_sensitive());
                    copy
                }
                Err(_) => value.clone(),
            };
            out.append(name.clone(), copy);
        }
    }
    out
}

#[cfg(test)]
mod tests {

    use super::*;

    use crate::test_support::headers;

    #[test]
    fn strips_what_must_not_be_shared() {
        let stored = shareable_headers(&headers(&[
            ("content-type", "application/json"),
            ("connection", "keep-alive, x-conn-only"),
            ("x-conn-only", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("set-cookie", "session=secret"),
            ("age", "3"),
            ("x-request-id", "abc"),
        ]));
        let names: Vec<&str> = stored.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["content-type", "x-request-id"]);
    }

    #[test]
    fn content_length_must_be_single_and_numeric() {
        assert_eq!(
            content_length(&headers(&[("content-length", "42")])),
            Some(42)
        );
        assert_eq!(content_length(&headers(&[("content-length", "x")])), None);
        assert_eq!(
            content_length(&headers(&[
                ("content-length", "1"),
                ("content-length", "1")
            ])),
            None
        );
    }
}
