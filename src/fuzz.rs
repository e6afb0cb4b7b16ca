//! Entry points for the fuzz targets in `fuzz/`, the property tests and the
//! benches: the parsers that take untrusted bytes, and the look-up script.
//! Not part of the public API.

#[cfg(feature = "redis")]
use bytes::Bytes;

/// Decodes a stored record (bytes from Redis); returns whether it decoded.
/// Must never panic.
#[cfg(feature = "redis")]
pub fn decode_record(bytes: &[u8]) -> bool {
    crate::record::codec::decode(Bytes::copy_from_slice(bytes)).is_ok()
}

/// Decodes a stored record and, when it decodes, encodes it again; returns
/// the re-encoding, which must decode to the same bytes once more.
#[cfg(feature = "redis")]
pub fn reencode_record(bytes: &[u8]) -> Option<Vec<u8>> {
    crate::record::codec::decode(Bytes::copy_from_slice(bytes))
        .ok()
        .map(|record| crate::record::codec::encode(&record))
}

/// Canonical JSON of `input` with the given ignored fields, or `None` when
/// it is not one JSON document.
pub fn canonical_json(input: &[u8], ignore: &[&str]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    crate::key::canonicalize(input, &crate::key::IgnoreFields::new(ignore), &mut out).ok()?;
    Some(out)
}

/// The framing the key hashes, for a request of these parts (default
/// configuration: JSON canonicalised, default vary headers).
pub fn key_framing(parts: &http::request::Parts, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let spec = crate::key::KeySpec::default();
    let _ = spec.frame("", parts, body, &mut out);
    out
}

/// The `Idempotency-Key` parser on one raw header value.
pub fn parse_idempotency_key(value: &[u8]) -> Option<String> {
    let value = http::HeaderValue::from_bytes(value).ok()?;
    crate::idempotency_key::parse_idempotency_key_value(
        &value,
        crate::idempotency_key::DEFAULT_MAX_LEN,
    )
    .ok()
    .map(|key| key.into_owned())
}

/// The Lua source of the look-up-or-claim script, for the bench that times
/// it without the layer.
#[cfg(feature = "redis")]
pub const LOOKUP_SCRIPT: &str = crate::store::redis::scripts::LOOKUP_SOURCE;

/// The L1 as the layer configures it, for the bench that times an insert
/// in isolation against moka without our configuration.
pub struct L1(crate::store::MemoryStore);

impl L1 {
    /// An L1 of `capacity_bytes`.
    pub fn new(capacity_bytes: u64) -> Self {
        Self(crate::store::MemoryStore::new(capacity_bytes))
    }

    /// Stores a 200 answer with one header and `body` under `key`, for an
    /// hour.
    pub async fn insert(&self, key: [u8; 32], body: bytes::Bytes) {
        let now = crate::record::now_millis();
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        let record = crate::record::Record {
            status: http::StatusCode::OK,
            version: http::Version::HTTP_11,
            headers,
            body,
            trailers: None,
            created_at: now,
            expires_at: now + 3_600_000,
            meta: bytes::Bytes::new(),
            info: Default::default(),
        };
        self.0
            .insert(
                crate::key::Key::from_bytes(key),
                std::sync::Arc::new(record),
            )
            .await;
    }
}
