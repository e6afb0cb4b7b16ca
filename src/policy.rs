//! Which requests are looked up, and which responses are stored.
//!
//! Requests: eligible methods (GET and POST by default); a request
//! `Cache-Control: no-store` is neither looked up nor stored, `no-cache` skips
//! the look-up but stores the fresh answer.
//!
//! Responses: a [`StorePredicate`] decides by status and headers (by default,
//! [`Successful`]: any 2xx). Whatever the predicate says, a response with
//! `Cache-Control: no-store` or `private`, or a `Content-Length` above the
//! response limit, is never stored, and hop-by-hop headers and `set-cookie`
//! are stripped from what is stored.

use http::{header, response, HeaderMap, HeaderName, HeaderValue, Method};

/// Decides whether a complete upstream response may be stored.
///
/// Implemented for closures `Fn(&http::response::Parts) -> bool`. The rules
/// that protect users (`no-store`, `private`, the size limit) apply on top of
/// the predicate and cannot be widened.
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
#[derive(Debug, Clone, Copy, Default)]
pub struct Successful;

impl StorePredicate for Successful {
    fn should_store(&self, head: &response::Parts) -> bool {
        head.status.is_success()
    }
}

/// What a request's own `Cache-Control` asks of us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Directive {
    /// Look up, coalesce, store.
    Normal,
    /// `no-cache`: go to the inner service, then store the fresh answer.
    Refresh,
    /// `no-store`: neither look up nor store.
    NoStore,
}

pub(crate) fn request_directive(headers: &HeaderMap) -> Directive {
    let mut directive = Directive::Normal;
    for token in cache_control_tokens(headers) {
        if token.eq_ignore_ascii_case(b"no-store") {
            return Directive::NoStore;
        }
        if token.eq_ignore_ascii_case(b"no-cache") {
            directive = Directive::Refresh;
        }
    }
    directive
}

/// Whether the response's own `Cache-Control` forbids a shared cache to keep it.
pub(crate) fn response_forbids_storing(headers: &HeaderMap) -> bool {
    cache_control_tokens(headers).any(|token| {
        token.eq_ignore_ascii_case(b"no-store") || token.eq_ignore_ascii_case(b"private")
    })
}

/// The directive names of every `Cache-Control` header (arguments dropped).
/// Read as bytes: a line with a non-UTF-8 byte in an argument (obs-text in a
/// quoted string) still says what its directives say.
fn cache_control_tokens(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(|token| {
            token
                .split(|&b| b == b'=')
                .next()
                .unwrap_or_default()
                .trim_ascii()
        })
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

/// Headers that describe one connection, never the response (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// The headers a response may be stored and shared with: without hop-by-hop
/// headers (and those `Connection` names, but `vary`), `upgrade`,
/// `set-cookie`, and `age` (which a replay recomputes).
pub(crate) fn shareable_headers(headers: &HeaderMap) -> HeaderMap {
    let named_by_connection: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let drop = HOP_BY_HOP.contains(name)
            || name == header::UPGRADE
            || name == header::SET_COOKIE
            || name == header::AGE
            // `vary` stays whatever `Connection` says: a stored response's
            // own `Vary` is what keeps its replays to the requests it fits.
            || (named_by_connection.contains(name) && name != header::VARY);
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

/// The methods looked up by default.
pub(crate) fn default_methods() -> Vec<Method> {
    vec![Method::GET, Method::POST]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| {
                (
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn request_directives() {
        assert_eq!(request_directive(&headers(&[])), Directive::Normal);
        assert_eq!(
            request_directive(&headers(&[("cache-control", "max-age=0")])),
            Directive::Normal
        );
        assert_eq!(
            request_directive(&headers(&[("cache-control", "No-Cache")])),
            Directive::Refresh
        );
        assert_eq!(
            request_directive(&headers(&[("cache-control", "no-cache, no-store")])),
            Directive::NoStore
        );
        assert_eq!(
            request_directive(&headers(&[("cache-control", "max-age=5, no-store")])),
            Directive::NoStore
        );
    }

    #[test]
    fn response_directives() {
        assert!(response_forbids_storing(&headers(&[(
            "cache-control",
            "private, max-age=60"
        )])));
        assert!(response_forbids_storing(&headers(&[(
            "cache-control",
            "no-store"
        )])));
        assert!(!response_forbids_storing(&headers(&[(
            "cache-control",
            "public, max-age=60"
        )])));
        assert!(!response_forbids_storing(&headers(&[(
            "cache-control",
            "no-cache"
        )])));
    }

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
