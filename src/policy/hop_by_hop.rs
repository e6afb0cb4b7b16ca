//! Headers that describe one connection rather than the message (RFC 9110,
//! section 7.6.1): never forwarded by a proxy, never stored.

use http::{header, HeaderMap, HeaderName};

/// The hop-by-hop headers every message may carry, whatever its
/// `Connection` header names.
const FIXED: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes the headers that describe one connection, not the message
/// (RFC 9110, section 7.6.1): every header the `Connection` header names,
/// then `connection`, `keep-alive`, `proxy-connection`,
/// `proxy-authenticate`, `proxy-authorization`, `te`, `trailer`,
/// `transfer-encoding` and `upgrade`.
///
/// A proxy calls it on the request it forwards and on the response it
/// relays. Call it before the layer too, so that the key covers the request
/// as the upstream will see it. The layer applies the same rules to the
/// responses it stores and shares.
///
/// # Examples
///
/// ```
/// use http::{HeaderMap, HeaderValue};
/// use tower_idempotency::strip_hop_by_hop;
///
/// let mut headers = HeaderMap::new();
/// headers.insert("content-type", HeaderValue::from_static("application/json"));
/// headers.insert("connection", HeaderValue::from_static("keep-alive, x-session"));
/// headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
/// headers.insert("x-session", HeaderValue::from_static("42"));
/// headers.insert("upgrade", HeaderValue::from_static("websocket"));
///
/// strip_hop_by_hop(&mut headers);
///
/// assert_eq!(headers.len(), 1);
/// assert_eq!(headers["content-type"], "application/json");
/// ```
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in named_by_connection(headers).into_iter().chain(FIXED) {
        headers.remove(name);
    }
}

/// The hop-by-hop headers of one message: the fixed ones and those its
/// `Connection` header names.
pub(crate) struct HopByHop {
    named: Vec<HeaderName>,
}

impl HopByHop {
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        Self {
            named: named_by_connection(headers),
        }
    }

    pub(crate) fn contains(&self, name: &HeaderName) -> bool {
        FIXED.contains(name) || self.named.contains(name)
    }
}

/// The header names listed in `Connection`.
fn named_by_connection(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn strips_the_fixed_list_and_what_connection_names() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("content-type", "text/plain"),
            ("connection", "Keep-Alive, X-Conn-Only, vary"),
            ("x-conn-only", "1"),
            ("vary", "accept"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authenticate", "Basic"),
            ("proxy-authorization", "Basic abc"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("x-request-id", "abc"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        // A proxy drops whatever `Connection` names, `vary` included.
        assert_eq!(left, ["content-type", "x-request-id"]);
    }

    #[test]
    fn a_message_without_them_is_untouched() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        headers.insert(header::AGE, HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 2);
        assert!(!HopByHop::of(&headers).contains(&header::AGE));
    }
}
