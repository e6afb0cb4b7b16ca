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
