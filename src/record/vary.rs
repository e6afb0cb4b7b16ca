//! A response's `Vary`: which request headers, beyond the key, it depends on.
//!
//! A response that varies on headers the key already covers needs nothing
//! more. One that varies on others is stored with a digest of the values the
//! leader's request had for them, and reaches only requests with the same
//! values (a replay, or a follower of the live response). `Vary: *` is never
//! stored nor shared.

use http::{header, HeaderMap, HeaderName};
use sha2::{Digest, Sha256};

use crate::key::Key;

/// What a response's `Vary` asks of the requests it may answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Vary {
    /// Nothing beyond the key.
    Keyed,
    /// `*`: only the request that caused it.
    Any,
    /// These headers (lower case, sorted, each once), outside the key, must
    /// match.
    Headers(Vec<HeaderName>),
}

impl Vary {
    /// Reads every `Vary` line of `headers`; names in `keyed` are already in
    /// the key. An unparseable line counts as `*`: its meaning is unknown.
    pub(crate) fn of(headers: &HeaderMap, keyed: &[HeaderName]) -> Self {
        let mut names = Vec::new();
        for value in headers.get_all(header::VARY) {
            let Ok(value) = value.to_str() else {
                return Self::Any;
            };
            for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if name == "*" {
                    return Self::Any;
                }
                let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
                    return Self::Any;
                };
                if !keyed.contains(&name) {
                    names.push(name);
                }
            }
        }
        if names.is_empty() {
            return Self::Keyed;
        }
        names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        names.dedup();
        Self::Headers(names)
    }

    /// The digest of `request`'s values of the headers this response varies
    /// on, `None` when it varies on nothing beyond the key.
    pub(crate) fn digest(&self, request: &HeaderMap) -> Option<Key> {
        let Self::Headers(names) = self else {
            return None;
        };
        let mut hasher = Sha256::new();
        let mut field = |bytes: &[u8]| {
            hasher.update((bytes.len() as u64).to_be_bytes());
            hasher.update(bytes);
        };
        for name in names {
            field(name.as_str().as_bytes());
            let values = request.get_all(name);
            field(&(values.iter().count() as u64).to_be_bytes());
            values.iter().for_each(|value| field(value.as_bytes()));
        }
        Some(Key::from_bytes(hasher.finalize().into()))
    }

    /// Whether a response that varies so, produced for a request whose
    /// values had digest `theirs`, may answer `request`.
    pub(crate) fn fits(&self, theirs: Option<Key>, request: &HeaderMap) -> bool {
        match self {
            Self::Keyed => true,
            Self::Any => false,
            Self::Headers(_) => theirs.is_some() && self.digest(request) == theirs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    use crate::test_support::headers;

    fn keyed() -> Vec<HeaderName> {
        vec![header::ACCEPT_ENCODING, header::AUTHORIZATION]
    }

    #[test]
    fn names_are_case_insensitive_comma_separated_across_lines() {
        let mut response = headers(&[("vary", "Accept-Encoding, ORIGIN")]);
        response.append(header::VARY, HeaderValue::from_static(" x-Tenant ,origin,"));
        assert_eq!(
            Vary::of(&response, &keyed()),
            Vary::Headers(vec![header::ORIGIN, HeaderName::from_static("x-tenant")])
        );
    }

    #[test]
    fn star_and_garbage_vary_on_everything() {
        assert_eq!(
            Vary::of(&headers(&[("vary", "origin, *")]), &keyed()),
            Vary::Any
        );
        assert_eq!(
            Vary::of(&headers(&[("vary", "bad name")]), &keyed()),
            Vary::Any
        );
    }

    #[test]
    fn headers_in_the_key_need_nothing_more() {
        assert_eq!(Vary::of(&headers(&[]), &keyed()), Vary::Keyed);
        assert_eq!(
            Vary::of(&headers(&[("vary", "accept-encoding")]), &keyed()),
            Vary::Keyed
        );
    }

    #[test]
    fn only_the_same_values_fit() {
        let vary = Vary::of(&headers(&[("vary", "origin")]), &keyed());
        let a = headers(&[("origin", "https://a.example"), ("x-other", "1")]);
        let digest = vary.digest(&a);
        assert!(vary.fits(digest, &headers(&[("origin", "https://a.example")])));
        assert!(!vary.fits(digest, &headers(&[("origin", "https://b.example")])));
        assert!(!vary.fits(digest, &headers(&[])));
        // A record without a digest (older, or with unreadable metadata) fits
        // no request.
        assert!(!vary.fits(None, &a));
        // Absent and empty are different values.
        let absent = vary.digest(&headers(&[]));
        assert!(!vary.fits(absent, &headers(&[("origin", "")])));
        assert!(vary.fits(absent, &headers(&[])));
    }
}
