//! Helpers the unit tests share.

use http::{HeaderMap, HeaderName, HeaderValue};

/// A header map from `(name, value)` pairs, in order.
pub(crate) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
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
