//! The `Cache-Control` directives a request and a response give a shared
//! cache.

use http::{header, HeaderMap};

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
    for token in tokens(headers) {
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
    tokens(headers).any(|token| {
        token.eq_ignore_ascii_case(b"no-store") || token.eq_ignore_ascii_case(b"private")
    })
}

/// The directive names of every `Cache-Control` header (arguments dropped).
/// Read as bytes: a line with a non-UTF-8 byte in an argument (obs-text in a
/// quoted string) still says what its directives say.
fn tokens(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
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

#[cfg(test)]
mod tests {

    use super::*;

    use crate::test_support::headers;

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
}
