//! Request fingerprints: what makes two requests "the same".
//!
//! A [`Key`] is the SHA-256 (all 256 bits) of a length-prefixed framing of:
//!
//! 1. a format version and the key kind (content or custom),
//! 2. the namespace (bump it to invalidate everything, e.g. on a model change),
//! 3. the method, the authority (the URI's, else the `Host` header's, with the
//!    host lower-cased), the path. The scheme is left out, so that a server
//!    keys alike a request that reached it over HTTP/1.1 (origin-form, `Host`)
//!    and over HTTP/2 (`:scheme` and `:authority`), and a client request
//!    (absolute URI) keys as the server that receives it would,
//! 4. the query pairs sorted by name (a stable sort, so repeated names keep
//!    their order: `a=1&a=2` and `a=2&a=1` are different requests),
//! 5. the configured vary headers, each with all of its values in order,
//! 6. the body: raw, canonical JSON, or the output of a user normaliser.
//!
//! Every variable-length field is prefixed by its length and every list by its
//! count, so no two different requests frame to the same bytes. The body comes
//! last, after a tag byte naming how it was prepared, which lets canonical JSON
//! stream straight into the hasher without an intermediate buffer.

mod alias;
mod explain;
mod hash;
mod json;

use std::{cell::RefCell, fmt, sync::Arc};

use http::{request::Parts, HeaderName};
use sha2::{Digest, Sha256};

pub(crate) use alias::Aliases;
pub(crate) use hash::BuildKeyHasher;
pub(crate) use json::{canonicalize, IgnoreFields};

/// Version of the framing below. Bump it when the framing changes, so that old
/// entries are simply never found again.
const FORMAT_VERSION: u8 = 2;

const KIND_CONTENT: u8 = 0;
const KIND_CUSTOM: u8 = 1;
const KIND_HEADER: u8 = 2;
const KIND_BUCKET: u8 = 3;

const BODY_RAW: u8 = 0;
const BODY_JSON: u8 = 1;
const BODY_NORMALIZED: u8 = 2;
/// The raw body in an alias (see [`KeySpec::key_aliased`]), never in a key.
const BODY_ALIAS: u8 = 3;

/// The fingerprint of a request: 32 bytes of SHA-256.
///
/// [`IdempotencyLayer::key_for`](crate::layer::IdempotencyLayer::key_for)
/// computes the key of a request; a response the layer answered carries its
/// key in its extensions. Keys print as 64 hexadecimal digits (their `Debug`
/// form shows only the first 16) and parse back.
///
/// # Examples
///
/// ```
/// use http::Request;
/// use tower_idempotency::{IdempotencyLayer, Key};
///
/// let layer = IdempotencyLayer::new();
/// let key_of = |body: &str| {
///     let (head, ()) = Request::post("https://api.example.com/v1/chat/completions")
///         .header("content-type", "application/json")
///         .body(())
///         .unwrap()
///         .into_parts();
///     layer.key_for(&head, body.as_bytes()).unwrap()
/// };
///
/// // Canonical JSON: member order and white space do not matter…
/// let key = key_of(r#"{"model":"gpt-4o","temperature":0}"#);
/// assert_eq!(key, key_of(r#"{ "temperature": 0, "model": "gpt-4o" }"#));
/// // …values do.
/// assert_ne!(key, key_of(r#"{"model":"gpt-4o","temperature":1}"#));
///
/// let hex = key.to_hex();
/// assert_eq!(hex.len(), 64);
/// assert_eq!(Key::from_hex(&hex), Some(key));
/// assert_eq!(Key::from_bytes(*key.as_bytes()), key);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key([u8; 32]);

impl Key {
    /// Wraps 32 raw bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hexadecimal, 64 characters.
    pub fn to_hex(&self) -> String {
        self.to_string()
    }

    /// The key of sample bucket `bucket` of this key.
    pub(crate) fn bucket(&self, bucket: u64) -> Key {
        let mut hasher = Sha256::new();
        hasher.put(&[FORMAT_VERSION, KIND_BUCKET]);
        hasher.put(&self.0);
        hasher.put(&bucket.to_be_bytes());
        Key(hasher.finalize().into())
    }

    /// Parses 64 hexadecimal characters.
    pub fn from_hex(hex: &str) -> Option<Self> {
        let hex = hex.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
            let digit = |c: u8| (c as char).to_digit(16);
            *byte = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
        }
        Some(Self(out))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl serde::Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let hex = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Key::from_hex(&hex)
            .ok_or_else(|| serde::de::Error::custom("a key is 64 hexadecimal digits"))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The first 8 bytes identify an entry in logs; the full key is in Display.
        write!(f, "Key(")?;
        self.0[..8].iter().try_for_each(|b| write!(f, "{b:02x}"))?;
        write!(f, "…)")
    }
}

/// Rewrites a request body before it is hashed, so that bodies that mean the
/// same thing share an entry.
///
/// Implemented for closures `Fn(&Parts, &[u8]) -> Vec<u8>`; [`TextNormalizer`]
/// is a ready one. Set it with
/// [`Builder::normalize_body`](crate::builder::Builder::normalize_body); it
/// replaces JSON canonicalisation.
///
/// # Examples
///
/// ```
/// use http::{request::Parts, Request};
/// use tower_idempotency::IdempotencyLayer;
///
/// // Order lines may come in any order: sort them before hashing.
/// let layer = IdempotencyLayer::builder()
///     .normalize_body(|_: &Parts, body: &[u8]| {
///         let mut lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
///         lines.sort_unstable();
///         lines.join(&b'\n')
///     })
///     .build();
///
/// let (head, ()) = Request::post("/v1/orders").body(()).unwrap().into_parts();
/// assert_eq!(
///     layer.key_for(&head, b"apples\npears"),
///     layer.key_for(&head, b"pears\napples"),
/// );
/// assert_ne!(
///     layer.key_for(&head, b"apples\npears"),
///     layer.key_for(&head, b"apples\nplums"),
/// );
/// ```
pub trait NormalizeBody: Send + Sync + 'static {
    /// Returns the bytes to hash in place of `body`.
    fn normalize(&self, parts: &Parts, body: &[u8]) -> Vec<u8>;
}

impl<F> NormalizeBody for F
where
    F: Fn(&Parts, &[u8]) -> Vec<u8> + Send + Sync + 'static,
{
    fn normalize(&self, parts: &Parts, body: &[u8]) -> Vec<u8> {
        self(parts, body)
    }
}

/// Lower-cases text and collapses runs of white space into one space, so that
/// `"Hello  World\n"` and `"hello world"` share an entry.
///
/// Bodies that are not UTF-8 are hashed unchanged.
///
/// # Examples
///
/// ```
/// use http::Request;
/// use tower_idempotency::{IdempotencyLayer, NormalizeBody, TextNormalizer};
///
/// let (head, ()) = Request::post("/v1/describe").body(()).unwrap().into_parts();
/// assert_eq!(TextNormalizer.normalize(&head, b"  Hello \t World\n"), b"hello world");
///
/// let layer = IdempotencyLayer::builder()
///     .normalize_body(TextNormalizer)
///     .build();
/// assert_eq!(
///     layer.key_for(&head, b"Describe  this photo"),
///     layer.key_for(&head, b"describe this photo\n"),
/// );
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct TextNormalizer;

impl NormalizeBody for TextNormalizer {
    fn normalize(&self, _parts: &Parts, body: &[u8]) -> Vec<u8> {
        match std::str::from_utf8(body) {
            Ok(text) => {
                let mut out = String::with_capacity(text.len());
                for word in text.split_whitespace() {
                    if !out.is_empty() {
                        out.push(' ');
                    }
                    out.extend(word.chars().flat_map(char::to_lowercase));
                }
                out.into_bytes()
            }
            Err(_) => body.to_vec(),
        }
    }
}

/// Supplies the whole key material for a request, replacing the content
/// fingerprint.
///
/// Return `None` to let the request bypass the layer. The returned bytes are
/// hashed together with the namespace, so keys stay 256 bits and namespaced.
/// Implemented for closures `Fn(&Parts, &[u8]) -> Option<Vec<u8>>`. Set it
/// with [`Builder::key_fn`](crate::builder::Builder::key_fn).
///
/// # Examples
///
/// ```
/// use http::{request::Parts, Request};
/// use tower_idempotency::IdempotencyLayer;
///
/// // One entry per document id, whatever else the request holds; requests
/// // without one go through uncached.
/// let layer = IdempotencyLayer::builder()
///     .key_fn(|head: &Parts, _body: &[u8]| {
///         let id = head.headers.get("x-document-id")?;
///         Some(id.as_bytes().to_vec())
///     })
///     .build();
///
/// let head = |id: Option<&str>| {
///     let mut request = Request::post("/v1/summarise");
///     if let Some(id) = id {
///         request = request.header("x-document-id", id);
///     }
///     request.body(()).unwrap().into_parts().0
/// };
/// let key = layer.key_for(&head(Some("doc-7")), b"first draft");
/// assert!(key.is_some());
/// assert_eq!(key, layer.key_for(&head(Some("doc-7")), b"second draft"));
/// assert_ne!(key, layer.key_for(&head(Some("doc-8")), b"first draft"));
/// assert_eq!(layer.key_for(&head(None), b"first draft"), None);
/// ```
pub trait MakeKey: Send + Sync + 'static {
    /// The key material for this request, or `None` to bypass.
    fn make_key(&self, parts: &Parts, body: &[u8]) -> Option<Vec<u8>>;
}

impl<F> MakeKey for F
where
    F: Fn(&Parts, &[u8]) -> Option<Vec<u8>> + Send + Sync + 'static,
{
    fn make_key(&self, parts: &Parts, body: &[u8]) -> Option<Vec<u8>> {
        self(parts, body)
    }
}

/// How the body enters the key.
#[derive(Clone)]
pub(crate) enum BodyMode {
    /// Canonical JSON for JSON content types, raw bytes otherwise.
    Json(IgnoreFields),
    /// Raw bytes, always.
    Raw,
    /// A user normaliser.
    Normalize(Arc<dyn NormalizeBody>),
}

/// What goes into a key, fixed when the layer is built.
#[derive(Clone)]
pub(crate) struct KeySpec {
    pub(crate) namespace: String,
    pub(crate) vary: Vec<HeaderName>,
    /// Whether the authority the request is addressed to is in the key.
    pub(crate) authority: bool,
    pub(crate) body: BodyMode,
    pub(crate) custom: Option<Arc<dyn MakeKey>>,
}

/// The headers that keep tenants and representations apart by default: the
/// generic credentials and representation headers, then the AI providers' own
/// credential, account and version headers.
///
/// - `x-api-key`, `anthropic-version`, `anthropic-beta`: Anthropic;
/// - `api-key`: Azure OpenAI;
/// - `x-goog-api-key`, `x-goog-user-project` (the project billed): Gemini and
///   Google Cloud;
/// - `openai-organization`, `openai-project`, `openai-beta`: OpenAI.
///
/// `proxy-authorization` is not one: it is hop-by-hop, meant for the next
/// proxy, never for the origin that answers.
pub(crate) fn default_vary() -> Vec<HeaderName> {
    use http::header::{ACCEPT, ACCEPT_ENCODING, AUTHORIZATION, CONTENT_TYPE, COOKIE};
    let mut vary = vec![AUTHORIZATION, COOKIE, CONTENT_TYPE, ACCEPT, ACCEPT_ENCODING];
    vary.extend(
        [
            "x-api-key",
            "api-key",
            "x-goog-api-key",
            "x-goog-user-project",
            "anthropic-version",
            "anthropic-beta",
            "openai-organization",
            "openai-project",
            "openai-beta",
        ]
        .map(HeaderName::from_static),
    );
    vary
}

impl Default for KeySpec {
    fn default() -> Self {
        Self {
            namespace: String::new(),
            vary: default_vary(),
            authority: true,
            body: BodyMode::Json(IgnoreFields::default()),
            custom: None,
        }
    }
}

impl KeySpec {
    /// The key of a request in `namespace`, or `None` when a custom key
    /// function declined it.
    pub(crate) fn key(&self, namespace: &str, parts: &Parts, body: &[u8]) -> Option<Key> {
        let mut hasher = Sha256::new();
        if self.custom.is_some() {
            self.frame(namespace, parts, body, &mut hasher)?;
        } else {
            self.hash_head(namespace, parts, &mut hasher);
            self.frame_body(parts, body, &mut hasher);
        }
        Some(Key(hasher.finalize().into()))
    }

    /// Hashes the framing of a content key up to the body: the same bytes
    /// as [`frame`](Self::frame) writes, gathered first and hashed in one
    /// update. The head is dozens of small fields (every vary header's name
    /// and count), and `Sha256::update` has a cost per call that was most of
    /// a short request's key.
    ///
    /// The buffer is the thread's own, reused: a request's key allocates
    /// nothing for its head.
    fn hash_head(&self, namespace: &str, parts: &Parts, hasher: &mut Sha256) {
        /// A head longer than this (long queries, many header values) gets
        /// a buffer of its own rather than keeping the thread's one large.
        const KEEP: usize = 16 * 1024;
        thread_local! {
            static HEAD: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        HEAD.with(|head| {
            // Nothing in `frame_head` runs user code, so the buffer is never
            // borrowed twice; if it somehow were, a fresh one does the job.
            let mut fresh = Vec::new();
            let mut borrowed = head.try_borrow_mut();
            let buffer = match borrowed.as_deref_mut() {
                Ok(buffer) => buffer,
                Err(_) => &mut fresh,
            };
            buffer.clear();
            self.frame_head(namespace, parts, buffer);
            hasher.update(&buffer[..]);
            if buffer.capacity() > KEEP {
                *buffer = Vec::new();
            }
        });
    }

    /// The key of a request that names itself with an `Idempotency-Key`: the
    /// header's value, scoped by method, authority, path and the vary headers
    /// (so one tenant's key never names another tenant's request, nor one
    /// virtual host's another's).
    pub(crate) fn header_key(&self, namespace: &str, parts: &Parts, value: &str) -> Key {
        let mut hasher = Sha256::new();
        hasher.put(&[FORMAT_VERSION, KIND_HEADER]);
        field(&mut hasher, namespace.as_bytes());
        field(&mut hasher, parts.method.as_str().as_bytes());
        if self.authority {
            frame_authority(parts, &mut hasher);
        }
        field(&mut hasher, parts.uri.path().as_bytes());
        self.frame_vary(parts, &mut hasher);
        field(&mut hasher, value.as_bytes());
        Key(hasher.finalize().into())
    }

    /// Writes the framing of a request into `sink`.
    pub(crate) fn frame(
        &self,
        namespace: &str,
        parts: &Parts,
        body: &[u8],
        sink: &mut impl Sink,
    ) -> Option<()> {
        if let Some(custom) = &self.custom {
            let material = custom.make_key(parts, body)?;
            sink.put(&[FORMAT_VERSION, KIND_CUSTOM]);
            field(sink, namespace.as_bytes());
            field(sink, &material);
            return Some(());
        }

        self.frame_head(namespace, parts, sink);
        self.frame_body(parts, body, sink);
        Some(())
    }

    /// Writes the framing of a content key up to the body into `sink`.
    fn frame_head(&self, namespace: &str, parts: &Parts, sink: &mut impl Sink) {
        sink.put(&[FORMAT_VERSION, KIND_CONTENT]);
        field(sink, namespace.as_bytes());
        field(sink, parts.method.as_str().as_bytes());
        if self.authority {
            frame_authority(parts, sink);
        }
        field(sink, parts.uri.path().as_bytes());

        let mut pairs: Vec<&str> = parts
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|pair| !pair.is_empty())
            .collect();
        pairs.sort_by_key(|pair| pair.split('=').next());
        count(sink, pairs.len());
        pairs.iter().for_each(|pair| field(sink, pair.as_bytes()));

        self.frame_vary(parts, sink);
    }

    fn frame_vary(&self, parts: &Parts, sink: &mut impl Sink) {
        count(sink, self.vary.len());
        for name in &self.vary {
            field(sink, name.as_str().as_bytes());
            let values = parts.headers.get_all(name);
            count(sink, values.iter().count());
            values
                .iter()
                .for_each(|value| field(sink, value.as_bytes()));
        }
    }

    fn frame_body(&self, parts: &Parts, body: &[u8], sink: &mut impl Sink) {
        match &self.body {
            BodyMode::Json(ignore) if is_json(parts) => {
                // The canonical form streams straight into the sink; a body
                // that turns out not to be valid JSON (we only know at the
                // end) rewinds it and hashes raw.
                let mark = sink.mark();
                sink.put(&[BODY_JSON]);
                if json::canonicalize(body, ignore, sink).is_ok() {
                    return;
                }
                sink.rewind(mark);
                sink.put(&[BODY_RAW]);
                sink.put(body);
            }
            BodyMode::Json(_) | BodyMode::Raw => {
                sink.put(&[BODY_RAW]);
                sink.put(body);
            }
            BodyMode::Normalize(normalizer) => {
                let normalized = normalizer.normalize(parts, body);
                sink.put(&[BODY_NORMALIZED]);
                sink.put(&normalized);
            }
        }
    }
}

/// Frames the authority the request is addressed to: the URI's when it has
/// one (absolute-form, HTTP/2), else every `Host` header (origin-form), as a
/// counted list, so that a URI authority and a single `Host` of the same
/// value frame alike, and no `Host` or several differ from both. Host names
/// are case-insensitive: their ASCII letters are lower-cased (user
/// information before an `@` is kept as it is).
fn frame_authority(parts: &Parts, sink: &mut impl Sink) {
    let lower = |bytes: &[u8]| {
        let host = bytes
            .iter()
            .rposition(|&b| b == b'@')
            .map_or(0, |at| at + 1);
        let mut out = bytes.to_vec();
        if let Some(host) = out.get_mut(host..) {
            host.make_ascii_lowercase();
        }
        out
    };
    match parts.uri.authority() {
        Some(authority) => {
            count(sink, 1);
            field(sink, &lower(authority.as_str().as_bytes()));
        }
        None => {
            let hosts = parts.headers.get_all(http::header::HOST);
            count(sink, hosts.iter().count());
            hosts
                .iter()
                .for_each(|host| field(sink, &lower(host.as_bytes())));
        }
    }
}

/// Whether the request says its body is JSON (`application/json` or `+json`).
pub(crate) fn is_json(parts: &Parts) -> bool {
    let Some(value) = parts.headers.get(http::header::CONTENT_TYPE) else {
        return false;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json")
            || subtype.len() > 5 && subtype[subtype.len() - 5..].eq_ignore_ascii_case("+json"))
}

/// Where framed bytes go: a hasher, or a buffer in tests. A sink can be
/// rewound to a mark, to take back what a failed canonicalisation wrote.
pub(crate) trait Sink {
    /// What [`rewind`](Sink::rewind) needs to go back to now.
    type Mark;

    fn put(&mut self, bytes: &[u8]);
    fn mark(&self) -> Self::Mark;
    fn rewind(&mut self, mark: Self::Mark);
}

impl Sink for Sha256 {
    /// The hasher's state: a hundred bytes or so.
    type Mark = Sha256;

    fn put(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }

    fn mark(&self) -> Sha256 {
        self.clone()
    }

    fn rewind(&mut self, mark: Sha256) {
        *self = mark;
    }
}

impl Sink for Vec<u8> {
    type Mark = usize;

    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }

    fn mark(&self) -> usize {
        self.len()
    }

    fn rewind(&mut self, mark: usize) {
        self.truncate(mark);
    }
}

fn count(sink: &mut impl Sink, n: usize) {
    sink.put(&(n as u64).to_be_bytes());
}

fn field(sink: &mut impl Sink, bytes: &[u8]) {
    count(sink, bytes.len());
    sink.put(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(builder: http::request::Builder) -> Parts {
        builder.body(()).unwrap().into_parts().0
    }

    fn key(spec: &KeySpec, builder: http::request::Builder, body: &str) -> Key {
        spec.key(&spec.namespace, &parts(builder), body.as_bytes())
            .unwrap()
    }

    fn post(uri: &str) -> http::request::Builder {
        Request::post(uri).header("content-type", "application/json")
    }

    #[test]
    fn same_request_same_key() {
        let spec = KeySpec::default();
        assert_eq!(
            key(&spec, post("/v1/chat"), r#"{"a":1}"#),
            key(&spec, post("/v1/chat"), r#"{"a":1}"#)
        );
    }

    #[test]
    fn json_key_order_and_whitespace_do_not_matter() {
        let spec = KeySpec::default();
        assert_eq!(
            key(
                &spec,
                post("/"),
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#
            ),
            key(
                &spec,
                post("/"),
                "{ \"messages\" : [ {\"content\":\"hi\", \"role\":\"user\"} ],\n \"model\":\"m\" }"
            )
        );
    }

    #[test]
    fn json_values_are_not_touched() {
        let spec = KeySpec::default();
        assert_ne!(
            key(&spec, post("/"), r#"{"t":1}"#),
            key(&spec, post("/"), r#"{"t":1.0}"#)
        );
        assert_ne!(
            key(&spec, post("/"), r#"{"n":12345678901234567890123}"#),
            key(&spec, post("/"), r#"{"n":12345678901234567890124}"#)
        );
        assert_ne!(
            key(&spec, post("/"), r#"[1,2]"#),
            key(&spec, post("/"), r#"[2,1]"#)
        );
    }

    #[test]
    fn invalid_json_hashes_raw() {
        let spec = KeySpec::default();
        let a = key(&spec, post("/"), "{not json");
        let b = key(&spec, post("/"), "{not  json");
        assert_ne!(a, b);
        assert_eq!(a, key(&spec, post("/"), "{not json"));
    }

    #[test]
    fn non_json_bodies_hash_raw() {
        let spec = KeySpec::default();
        let text = |body| {
            key(
                &spec,
                Request::post("/").header("content-type", "text/plain"),
                body,
            )
        };
        assert_ne!(text(r#"{"a":1}"#), text(r#"{ "a":1}"#));
    }

    #[test]
    fn everything_in_the_key_changes_it() {
        let spec = KeySpec::default();
        let base = key(&spec, post("/a?x=1"), "{}");
        assert_ne!(base, key(&spec, post("/b?x=1"), "{}"));
        assert_ne!(base, key(&spec, post("/a?x=2"), "{}"));
        assert_ne!(base, key(&spec, post("/a?x=1"), "[]"));
        assert_ne!(
            base,
            key(
                &spec,
                post("/a?x=1").header("authorization", "Bearer t"),
                "{}"
            )
        );
        assert_ne!(
            base,
            key(&spec, post("/a?x=1").header("x-api-key", "k"), "{}")
        );
        assert_ne!(
            base,
            key(
                &spec,
                post("/a?x=1").header("accept", "text/event-stream"),
                "{}"
            )
        );
        assert_ne!(
            base,
            key(
                &spec,
                Request::put("/a?x=1").header("content-type", "application/json"),
                "{}"
            )
        );
        assert_ne!(base, key(&spec, post("http://api.example/a?x=1"), "{}"));
        let other_ns = KeySpec {
            namespace: "model-v2".into(),
            ..KeySpec::default()
        };
        assert_ne!(base, key(&other_ns, post("/a?x=1"), "{}"));
    }

    #[test]
    fn headers_outside_vary_do_not_change_it() {
        let spec = KeySpec::default();
        assert_eq!(
            key(&spec, post("/").header("x-request-id", "1"), "{}"),
            key(&spec, post("/").header("x-request-id", "2"), "{}")
        );
    }

    #[test]
    fn query_pairs_sorted_by_name_stable_for_repeats() {
        let spec = KeySpec::default();
        let get = |uri| key(&spec, Request::get(uri), "");
        assert_eq!(get("/s?b=2&a=1"), get("/s?a=1&b=2"));
        assert_ne!(get("/s?a=1&a=2"), get("/s?a=2&a=1"));
        assert_eq!(get("/s?a=1&b=2&a=3"), get("/s?a=1&a=3&b=2"));
    }

    #[test]
    fn framing_is_length_prefixed() {
        // Moving bytes between adjacent fields must change the framing.
        let spec = KeySpec {
            vary: vec![
                HeaderName::from_static("x-a"),
                HeaderName::from_static("x-b"),
            ],
            ..KeySpec::default()
        };
        let framed = |builder: http::request::Builder| {
            let mut out = Vec::new();
            spec.frame("", &parts(builder), b"", &mut out).unwrap();
            out
        };
        assert_ne!(
            framed(Request::get("/").header("x-a", "ab").header("x-b", "c")),
            framed(Request::get("/").header("x-a", "a").header("x-b", "bc"))
        );
        assert_ne!(
            framed(Request::get("/?ab&c")),
            framed(Request::get("/?a&bc"))
        );
    }

    #[test]
    fn ignored_fields_do_not_matter() {
        let spec = KeySpec {
            body: BodyMode::Json(IgnoreFields::new(["user", "metadata.request_id"])),
            ..KeySpec::default()
        };
        assert_eq!(
            key(
                &spec,
                post("/"),
                r#"{"q":1,"user":"a","metadata":{"request_id":"x","k":1}}"#
            ),
            key(
                &spec,
                post("/"),
                r#"{"q":1,"user":"b","metadata":{"request_id":"y","k":1}}"#
            )
        );
        assert_ne!(
            key(&spec, post("/"), r#"{"q":1,"metadata":{"k":1}}"#),
            key(&spec, post("/"), r#"{"q":1,"metadata":{"k":2}}"#)
        );
    }

    #[test]
    fn text_normalizer_matches_the_seed() {
        let spec = KeySpec {
            body: BodyMode::Normalize(Arc::new(TextNormalizer)),
            ..KeySpec::default()
        };
        let text = |body| key(&spec, Request::post("/"), body);
        assert_eq!(text("Hello   World\n"), text("hello world"));
        assert_ne!(text("hello world"), text("hello  worlds"));
    }

    #[test]
    fn custom_key_replaces_content_and_can_bypass() {
        let custom =
            |parts: &Parts, _: &[u8]| parts.headers.get("x-doc").map(|v| v.as_bytes().to_vec());
        let spec = KeySpec {
            custom: Some(Arc::new(custom)),
            ..KeySpec::default()
        };
        assert_eq!(
            key(&spec, post("/a").header("x-doc", "1"), "{}"),
            key(&spec, post("/b").header("x-doc", "1"), "[]")
        );
        assert!(spec.key("", &parts(post("/a")), b"").is_none());
    }

    #[test]
    fn a_body_refused_halfway_hashes_raw() {
        // The canonical form streams into the hasher: a body found invalid
        // past its start must frame exactly as a raw body, nothing of the
        // canonical attempt left in the key.
        let json = KeySpec::default();
        let raw = KeySpec {
            body: BodyMode::Raw,
            ..KeySpec::default()
        };
        let framed = |spec: &KeySpec, body: &str| {
            let mut out = Vec::new();
            spec.frame("", &parts(post("/")), body.as_bytes(), &mut out)
                .unwrap();
            out
        };
        for body in [
            r#"{"a":[1,2,{"b":"x"}],"z":}"#,
            r#"{"a":1,"a":2}"#,
            r#"[1,2,{"b":{"c":1,"c":1}}]"#,
            r#"[1,2,3"#,
            r#"[1,2,3] x"#,
        ] {
            assert_eq!(framed(&json, body), framed(&raw, body), "{body}");
            assert_eq!(
                key(&json, post("/"), body),
                Key(Sha256::digest(framed(&raw, body)).into()),
                "{body}"
            );
        }
    }

    #[test]
    fn duplicate_member_names_hash_raw() {
        let spec = KeySpec::default();
        assert_ne!(
            key(&spec, post("/"), r#"{"a":1,"a":2}"#),
            key(&spec, post("/"), r#"{"a":2}"#)
        );
        assert_ne!(
            key(&spec, post("/"), r#"{"m":{"a":1,"a":2}}"#),
            key(&spec, post("/"), r#"{"m":{"a":2}}"#)
        );
        // Hashed raw: spelt differently, they differ.
        assert_ne!(
            key(&spec, post("/"), r#"{"a":1,"a":2}"#),
            key(&spec, post("/"), r#"{"a":1, "a":2}"#)
        );
    }

    #[test]
    fn hex_round_trip() {
        let k = key(&KeySpec::default(), post("/"), "{}");
        assert_eq!(k.to_hex().len(), 64);
        assert_eq!(Key::from_hex(&k.to_hex()), Some(k));
        assert_eq!(Key::from_hex("zz"), None);
    }

    #[test]
    fn json_content_types() {
        let is = |ct: &str| is_json(&parts(Request::post("/").header("content-type", ct)));
        assert!(is("application/json"));
        assert!(is("Application/JSON; charset=utf-8"));
        assert!(is("application/vnd.api+json"));
        assert!(!is("text/plain"));
        assert!(!is("application/jsonx"));
        assert!(!is("application/+json"));
    }
}
