//! The binary form of a [`Record`] as stored in Redis.
//!
//! A record is written as one byte string with a magic tag and a format version
//! up front, so that anything else found under a key (an older or newer
//! deployment's entries, another program's value, random garbage) is
//! recognised instead of misread. All integers are big-endian.
//!
//! | Field          | Size  | Encoding                                                         |
//! |----------------|-------|------------------------------------------------------------------|
//! | magic          | 4     | `b"TIR\0"`                                                       |
//! | format version | 1     | `1`                                                              |
//! | status         | 2     | `u16`, 100..=999                                                 |
//! | HTTP version   | 1     | 0 = HTTP/0.9, 1 = HTTP/1.0, 2 = HTTP/1.1, 3 = HTTP/2, 4 = HTTP/3 |
//! | `created_at`   | 8     | `u64`, milliseconds since the Unix epoch                         |
//! | `expires_at`   | 8     | `u64`, milliseconds since the Unix epoch                         |
//! | headers        | 4 + … | header list (below)                                              |
//! | body           | 8 + n | `u64` length `n`, then `n` bytes                                 |
//! | trailers flag  | 1     | 0 = no trailers, 1 = trailers follow                             |
//! | trailers       | 4 + … | header list, present only when the flag is 1                     |
//! | meta           | 4 + n | `u32` length `n`, then `n` bytes                                 |
//!
//! Nothing may follow `meta`, the entry's [`Meta`](super::Meta) as JSON
//! (empty when there is none): the payload fingerprint, the model, token
//! usage and, for a response whose `Vary` names request headers outside the
//! key, the digest of the values they had. Fields are optional, so records
//! written before a field existed still decode; a `Vary` that needs a digest
//! the metadata lacks (or unreadable metadata) makes the record a miss,
//! never a replay to the wrong request. A header list is a count followed by that many
//! entries:
//!
//! | Field        | Size | Encoding                                            |
//! |--------------|------|-----------------------------------------------------|
//! | count        | 4    | `u32`, the number of entries that follow            |
//! | name length  | 2    | `u16` (entry, repeated `count` times)               |
//! | name         | n    | the name as `http` holds it: lower-case token bytes |
//! | value length | 4    | `u32`                                               |
//! | value        | n    | the raw value bytes (visible ASCII, tab, obs-text)  |
//!
//! There is one entry per value, in [`HeaderMap`] iteration order: a repeated
//! name appears once per value, and the values of one name keep their order.
//! Header values' `is_sensitive` flag is not stored.
//!
//! # Garbage is a miss
//!
//! [`decode`] trusts nothing: its input comes from Redis and may be truncated,
//! written by a future version of this crate, or hostile. Every length is
//! checked against the bytes that remain before anything is sliced or
//! allocated, every header name, header value and status goes through `http`'s
//! own validation, and no input makes it panic. Whatever is not a well-formed
//! record yields a [`DecodeError`], which the caller treats as a cache miss
//! (the request runs as if nothing were stored), never as a failed request.
//!
//! Decoding is zero-copy where `http` allows it: the body, `meta` and every
//! header value are slices of the input [`Bytes`]; header names are copied
//! (or resolved to `http`'s static standard names).

use std::fmt;

use bytes::{Buf, Bytes};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode, Version};

use super::Record;

/// The tag every encoded record starts with.
const MAGIC: [u8; 4] = *b"TIR\0";

/// The format version this module writes, and the only one it reads.
const FORMAT_VERSION: u8 = 1;

/// Bytes before the header list: magic, format version, status, HTTP version,
/// `created_at` and `expires_at`.
const FIXED_PREFIX_LEN: usize = 4 + 1 + 2 + 1 + 8 + 8;

/// The fewest bytes one header-list entry can take: its two length prefixes.
const MIN_HEADER_ENTRY_LEN: usize = 2 + 4;

/// The most header entries a decoded map reserves room for up front; a longer
/// (valid) list still decodes, growing the map as it goes.
const MAX_PREALLOCATED_HEADERS: usize = 256;

/// Why stored bytes are not a record.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum DecodeError {
    /// The bytes do not start with this format's magic tag.
    BadMagic,
    /// The format version byte names a version this build cannot read.
    UnsupportedVersion(u8),
    /// The bytes end before the record does.
    Truncated,
    /// A field holds a value that is not allowed (named by the string).
    Invalid(&'static str),
    /// Bytes follow the end of the record.
    TrailingBytes,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic => f.write_str("stored entry does not start with the record magic tag"),
            Self::UnsupportedVersion(version) => {
                write!(f, "stored entry has unsupported format version {version}")
            }
            Self::Truncated => f.write_str("stored entry is truncated"),
            Self::Invalid(what) => write!(f, "stored entry has an invalid {what}"),
            Self::TrailingBytes => f.write_str("stored entry has trailing bytes after the record"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Encodes `record` in the format described in the [module docs](self).
///
/// The output is allocated once, with its exact length computed up front.
///
/// # Panics
///
/// If a header value or `meta` is 4 GiB or longer, or a header list has
/// `u32::MAX` or more values: lengths the format cannot express, and far past
/// what Redis (512 MiB per value) could store anyway.
pub(crate) fn encode(record: &Record) -> Vec<u8> {
    let len = encoded_len(record);
    let mut out = Vec::with_capacity(len);

    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&record.status.as_u16().to_be_bytes());
    out.push(version_to_byte(record.version));
    out.extend_from_slice(&record.created_at.to_be_bytes());
    out.extend_from_slice(&record.expires_at.to_be_bytes());
    put_headers(&mut out, &record.headers);
    // `usize` is at most 64 bits on every supported target.
    out.extend_from_slice(&(record.body.len() as u64).to_be_bytes());
    out.extend_from_slice(&record.body);
    match &record.trailers {
        None => out.push(0),
        Some(trailers) => {
            out.push(1);
            put_headers(&mut out, trailers);
        }
    }
    out.extend_from_slice(&u32_len(record.meta.len(), "meta").to_be_bytes());
    out.extend_from_slice(&record.meta);

    debug_assert_eq!(out.len(), len, "encoded_len disagrees with encode");
    out
}

/// Decodes a record written by [`encode`].
///
/// The body, `meta` and header values of the result share `bytes`' buffer.
/// Any input that is not exactly one well-formed record is an error; no input
/// panics, and nothing is allocated for a length that the input cannot back.
pub(crate) fn decode(bytes: Bytes) -> Result<Record, DecodeError> {
    let mut reader = Reader { buf: bytes };

    reader.magic()?;
    let format_version = reader.u8()?;
    if format_version != FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion(format_version));
    }

    let status =
        StatusCode::from_u16(reader.u16()?).map_err(|_| DecodeError::Invalid("status code"))?;
    let version = version_from_byte(reader.u8()?)?;
    let created_at = reader.u64()?;
    let expires_at = reader.u64()?;
    let headers = reader.header_list()?;

    // A length that does not fit in `usize` cannot fit in the input either.
    let body_len = usize::try_from(reader.u64()?).map_err(|_| DecodeError::Truncated)?;
    let body = reader.take(body_len)?;

    let trailers = match reader.u8()? {
        0 => None,
        1 => Some(reader.header_list()?),
        _ => return Err(DecodeError::Invalid("trailers flag")),
    };

    let meta_len = usize::try_from(reader.u32()?).map_err(|_| DecodeError::Truncated)?;
    let meta = reader.take(meta_len)?;

    if reader.remaining() != 0 {
        return Err(DecodeError::TrailingBytes);
    }

    Ok(Record {
        status,
        version,
        headers,
        body,
        trailers,
        created_at,
        expires_at,
        info: super::Meta::decode(&meta),
        meta,
    })
}

/// The exact length of `encode(record)`.
fn encoded_len(record: &Record) -> usize {
    let trailers = match &record.trailers {
        None => 0,
        Some(trailers) => header_list_len(trailers),
    };
    FIXED_PREFIX_LEN
        + header_list_len(&record.headers)
        + 8
        + record.body.len()
        + 1
        + trailers
        + 4
        + record.meta.len()
}

/// The encoded length of one header list.
fn header_list_len(headers: &HeaderMap) -> usize {
    headers.iter().fold(4, |len, (name, value)| {
        len + 2 + name.as_str().len() + 4 + value.len()
    })
}

/// Appends one header list to `out`.
fn put_headers(out: &mut Vec<u8>, headers: &HeaderMap) {
    out.extend_from_slice(&u32_len(headers.len(), "header count").to_be_bytes());
    for (name, value) in headers {
        let name = name.as_str().as_bytes();
        // `http` caps header names at 65,535 bytes.
        let Ok(name_len) = u16::try_from(name.len()) else {
            panic!("header name is longer than http allows")
        };
        out.extend_from_slice(&name_len.to_be_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&u32_len(value.len(), "header value").to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
}

/// `len` as a `u32` length prefix; see [`encode`]'s panics.
fn u32_len(len: usize, what: &str) -> u32 {
    match u32::try_from(len) {
        Ok(len) => len,
        Err(_) => panic!("{what} length {len} does not fit the record format's u32"),
    }
}

fn version_to_byte(version: Version) -> u8 {
    match version {
        Version::HTTP_09 => 0,
        Version::HTTP_10 => 1,
        Version::HTTP_11 => 2,
        Version::HTTP_2 => 3,
        Version::HTTP_3 => 4,
        // `http` has no other versions; should one appear, HTTP/1.1 is the
        // version-neutral choice for replaying a response.
        _ => 2,
    }
}

fn version_from_byte(byte: u8) -> Result<Version, DecodeError> {
    match byte {
        0 => Ok(Version::HTTP_09),
        1 => Ok(Version::HTTP_10),
        2 => Ok(Version::HTTP_11),
        3 => Ok(Version::HTTP_2),
        4 => Ok(Version::HTTP_3),
        _ => Err(DecodeError::Invalid("HTTP version")),
    }
}

/// A cursor over the input that checks every read against what remains.
struct Reader {
    buf: Bytes,
}

impl Reader {
    fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// The next `len` bytes, sharing the input's buffer.
    fn take(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        if len > self.buf.len() {
            return Err(DecodeError::Truncated);
        }
        Ok(self.buf.split_to(len))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let array = *self.buf.first_chunk::<N>().ok_or(DecodeError::Truncated)?;
        self.buf.advance(N);
        Ok(array)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.array().map(u8::from_be_bytes)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_be_bytes)
    }

    /// Checks the magic tag: a mismatch is [`DecodeError::BadMagic`], a
    /// matching but short prefix is [`DecodeError::Truncated`].
    fn magic(&mut self) -> Result<(), DecodeError> {
        let seen = self.buf.len().min(MAGIC.len());
        if self.buf.get(..seen) != MAGIC.get(..seen) {
            return Err(DecodeError::BadMagic);
        }
        self.array::<4>().map(drop)
    }

    fn header_list(&mut self) -> Result<HeaderMap, DecodeError> {
        let count = usize::try_from(self.u32()?).map_err(|_| DecodeError::Truncated)?;
        // Each entry takes at least its two length prefixes, so the remaining
        // input bounds how many there can be, before anything is allocated.
        if count > self.remaining() / MIN_HEADER_ENTRY_LEN {
            return Err(DecodeError::Truncated);
        }
        let mut headers = HeaderMap::try_with_capacity(count.min(MAX_PREALLOCATED_HEADERS))
            .map_err(|_| DecodeError::Invalid("header count"))?;
        for _ in 0..count {
            let name_len = usize::from(self.u16()?);
            let name = HeaderName::from_bytes(&self.take(name_len)?)
                .map_err(|_| DecodeError::Invalid("header name"))?;
            let value_len = usize::try_from(self.u32()?).map_err(|_| DecodeError::Truncated)?;
            let value = HeaderValue::from_maybe_shared(self.take(value_len)?)
                .map_err(|_| DecodeError::Invalid("header value"))?;
            headers
                .try_append(name, value)
                .map_err(|_| DecodeError::Invalid("header count"))?;
        }
        Ok(headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header_map(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        map
    }

    fn realistic() -> Record {
        Record {
            status: StatusCode::CREATED,
            version: Version::HTTP_11,
            headers: header_map(&[
                ("content-type", b"application/json"),
                ("x-a", b"first"),
                ("x-b", b"between"),
                ("x-a", b"second"),
                ("x-a", b"third"),
                ("x-raw", b"caf\xe9 \xff"),
                ("x-empty", b""),
            ]),
            body: Bytes::from_static(br#"{"id":42,"name":"widget","tags":["a","b"]}"#),
            trailers: Some(header_map(&[
                ("grpc-status", b"0"),
                ("x-checksum", b"abc"),
                ("x-checksum", b"def"),
            ])),
            created_at: 1_700_000_000_123,
            expires_at: 1_700_000_600_123,
            meta: Bytes::from_static(b"\x00\x01meta\xff"),
            info: Default::default(),
        }
    }

    fn minimal() -> Record {
        Record {
            status: StatusCode::NO_CONTENT,
            version: Version::HTTP_2,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            trailers: None,
            created_at: 0,
            expires_at: u64::MAX,
            meta: Bytes::new(),
            info: Default::default(),
        }
    }

    /// Every (name, value) pair in iteration order, to check order as well as
    /// the per-name equality `HeaderMap: PartialEq` gives.
    fn pairs(map: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
        map.iter().map(|(n, v)| (n.clone(), v.clone())).collect()
    }

    fn assert_same(a: &Record, b: &Record) {
        assert_eq!(a.status, b.status);
        assert_eq!(a.version, b.version);
        assert_eq!(a.headers, b.headers);
        assert_eq!(pairs(&a.headers), pairs(&b.headers));
        assert_eq!(a.body, b.body);
        assert_eq!(a.trailers, b.trailers);
        assert_eq!(
            a.trailers.as_ref().map(pairs),
            b.trailers.as_ref().map(pairs)
        );
        assert_eq!(a.created_at, b.created_at);
        assert_eq!(a.expires_at, b.expires_at);
        assert_eq!(a.meta, b.meta);
    }

    /// The fixed prefix of a record, up to (not including) the header list.
    fn prefix(status: u16) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&status.to_be_bytes());
        out.push(2);
        out.extend_from_slice(&1u64.to_be_bytes());
        out.extend_from_slice(&2u64.to_be_bytes());
        out
    }

    /// A whole record whose only header is `name: value`, built by hand.
    fn with_header(name: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = prefix(200);
        out.extend_from_slice(&1u32.to_be_bytes());
        out.extend_from_slice(&(name.len() as u16).to_be_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value);
        out.extend_from_slice(&0u64.to_be_bytes()); // body
        out.push(0); // no trailers
        out.extend_from_slice(&0u32.to_be_bytes()); // meta
        out
    }

    fn dec(bytes: Vec<u8>) -> Result<Record, DecodeError> {
        decode(Bytes::from(bytes))
    }

    fn err(bytes: Vec<u8>) -> DecodeError {
        dec(bytes).unwrap_err()
    }

    #[test]
    fn realistic_round_trip() {
        let record = realistic();
        let encoded = encode(&record);
        let decoded = decode(Bytes::from(encoded)).unwrap();
        assert_same(&record, &decoded);
        let x_a: Vec<_> = decoded.headers.get_all("x-a").iter().collect();
        assert_eq!(x_a, ["first", "second", "third"]);
        assert_eq!(decoded.headers["x-raw"].as_bytes(), b"caf\xe9 \xff");
    }

    /// A response varying on a header outside the key keeps the leader's
    /// digest through Redis; one without it (written before the digest
    /// existed, or with unreadable metadata) answers no request.
    #[test]
    fn the_vary_digest_travels_with_the_record_and_its_absence_is_a_miss() {
        let keyed = [http::header::ACCEPT_ENCODING];
        let request = header_map(&[("origin", b"https://a.example")]);
        let other = header_map(&[("origin", b"https://b.example")]);
        let mut record = minimal();
        record.headers = header_map(&[("vary", b"Origin, Accept-Encoding")]);
        record.info.vary = super::super::Vary::of(&record.headers, &keyed).digest(&request);
        record.meta = record.info.encode();
        let decoded = dec(encode(&record)).unwrap();
        assert!(decoded.fits(&request, &keyed));
        assert!(!decoded.fits(&other, &keyed));

        for meta in [&b""[..], b"{\"model\":\"m\"}", b"\xff not json"] {
            record.meta = Bytes::copy_from_slice(meta);
            let decoded = dec(encode(&record)).unwrap();
            assert!(!decoded.fits(&request, &keyed), "{meta:?}");
        }
        // Without a `Vary` beyond the key, no digest is needed.
        record.headers = header_map(&[("vary", b"accept-encoding")]);
        assert!(dec(encode(&record)).unwrap().fits(&other, &keyed));
    }

    #[test]
    fn minimal_round_trip() {
        let record = minimal();
        let encoded = encode(&record);
        assert_eq!(encoded.len(), FIXED_PREFIX_LEN + 4 + 8 + 1 + 4);
        assert_same(&record, &dec(encoded).unwrap());
    }

    #[test]
    fn every_http_version_round_trips() {
        for version in [
            Version::HTTP_09,
            Version::HTTP_10,
            Version::HTTP_11,
            Version::HTTP_2,
            Version::HTTP_3,
        ] {
            let record = Record {
                version,
                ..minimal()
            };
            assert_eq!(dec(encode(&record)).unwrap().version, version);
        }
    }

    #[test]
    fn encode_allocates_exactly_once() {
        for record in [realistic(), minimal()] {
            let encoded = encode(&record);
            assert_eq!(encoded.len(), encoded_len(&record));
            assert_eq!(encoded.capacity(), encoded.len());
        }
    }

    #[test]
    fn layout_matches_the_documented_table() {
        let encoded = encode(&minimal());
        let mut expected = Vec::new();
        expected.extend_from_slice(b"TIR\0");
        expected.push(1);
        expected.extend_from_slice(&204u16.to_be_bytes());
        expected.push(3);
        expected.extend_from_slice(&0u64.to_be_bytes());
        expected.extend_from_slice(&u64::MAX.to_be_bytes());
        expected.extend_from_slice(&0u32.to_be_bytes());
        expected.extend_from_slice(&0u64.to_be_bytes());
        expected.push(0);
        expected.extend_from_slice(&0u32.to_be_bytes());
        assert_eq!(encoded, expected);
    }

    #[test]
    fn decode_is_zero_copy() {
        let input = Bytes::from(encode(&realistic()));
        let range = input.as_ptr_range();
        let decoded = decode(input.clone()).unwrap();
        assert!(range.contains(&decoded.body.as_ptr()));
        assert!(range.contains(&decoded.meta.as_ptr()));
        let value = &decoded.headers["x-b"];
        assert!(range.contains(&value.as_bytes().as_ptr()));
    }

    #[test]
    fn every_truncation_is_an_error() {
        for record in [realistic(), minimal()] {
            let encoded = encode(&record);
            for len in 0..encoded.len() {
                let prefix = Bytes::copy_from_slice(&encoded[..len]);
                assert_eq!(
                    decode(prefix).unwrap_err(),
                    DecodeError::Truncated,
                    "prefix {len}"
                );
            }
        }
    }

    #[test]
    fn wrong_magic() {
        let mut encoded = encode(&minimal());
        encoded[0] = b'X';
        assert_eq!(err(encoded), DecodeError::BadMagic);
        assert_eq!(err(b"{\"json\":1}".to_vec()), DecodeError::BadMagic);
        assert_eq!(err(b"TIX".to_vec()), DecodeError::BadMagic);
        assert_eq!(err(b"TI".to_vec()), DecodeError::Truncated);
    }

    #[test]
    fn unsupported_versions() {
        for version in [0, 2, 255] {
            let mut encoded = encode(&minimal());
            encoded[4] = version;
            assert_eq!(err(encoded), DecodeError::UnsupportedVersion(version));
        }
    }

    #[test]
    fn trailing_byte() {
        let mut encoded = encode(&realistic());
        encoded.push(0);
        assert_eq!(err(encoded), DecodeError::TrailingBytes);
    }

    #[test]
    fn huge_header_count_is_truncated_without_allocating() {
        let mut bytes = prefix(200);
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        bytes.extend_from_slice(&[0; 32]);
        assert_eq!(err(bytes), DecodeError::Truncated);

        // The same for a trailer list.
        let mut bytes = prefix(200);
        bytes.extend_from_slice(&0u32.to_be_bytes());
        bytes.extend_from_slice(&0u64.to_be_bytes());
        bytes.push(1);
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        bytes.extend_from_slice(&[0; 32]);
        assert_eq!(err(bytes), DecodeError::Truncated);
    }

    #[test]
    fn huge_lengths_are_truncated() {
        let mut bytes = prefix(200);
        bytes.extend_from_slice(&0u32.to_be_bytes());
        bytes.extend_from_slice(&u64::MAX.to_be_bytes());
        bytes.extend_from_slice(&[0; 32]);
        assert_eq!(err(bytes), DecodeError::Truncated);

        let mut bytes = prefix(200);
        bytes.extend_from_slice(&1u32.to_be_bytes());
        bytes.extend_from_slice(&3u16.to_be_bytes());
        bytes.extend_from_slice(b"x-a");
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        bytes.extend_from_slice(&[b'a'; 32]);
        assert_eq!(err(bytes), DecodeError::Truncated);

        let mut bytes = prefix(200);
        bytes.extend_from_slice(&1u32.to_be_bytes());
        bytes.extend_from_slice(&u16::MAX.to_be_bytes());
        bytes.extend_from_slice(&[b'a'; 32]);
        assert_eq!(err(bytes), DecodeError::Truncated);

        let mut bytes = encode(&minimal());
        let meta_len_at = bytes.len() - 4;
        bytes[meta_len_at..].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(err(bytes), DecodeError::Truncated);
    }

    #[test]
    fn valid_header_built_by_hand_decodes() {
        let record = dec(with_header(b"X-Upper", b"v")).unwrap();
        assert_eq!(record.headers["x-upper"], "v");
    }

    #[test]
    fn invalid_header_names_and_values() {
        for name in [&b"bad name"[..], b"", b"x:y", b"\xff", b"a\0"] {
            assert_eq!(
                err(with_header(name, b"v")),
                DecodeError::Invalid("header name"),
                "{name:?}"
            );
        }
        for value in [&b"line\nbreak"[..], b"\r", b"\x7f", b"\0"] {
            assert_eq!(
                err(with_header(b"x-a", value)),
                DecodeError::Invalid("header value"),
                "{value:?}"
            );
        }
    }

    #[test]
    fn invalid_status_codes() {
        for status in [0, 99, 1000, u16::MAX] {
            let mut bytes = encode(&minimal());
            bytes[5..7].copy_from_slice(&u16::to_be_bytes(status));
            assert_eq!(err(bytes), DecodeError::Invalid("status code"));
        }
    }

    #[test]
    fn invalid_http_version_and_trailers_flag() {
        let mut bytes = encode(&minimal());
        bytes[7] = 5;
        assert_eq!(err(bytes), DecodeError::Invalid("HTTP version"));

        let mut bytes = encode(&minimal());
        let flag_at = bytes.len() - 5;
        bytes[flag_at] = 2;
        assert_eq!(err(bytes), DecodeError::Invalid("trailers flag"));
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            DecodeError::Truncated.to_string(),
            "stored entry is truncated"
        );
        assert_eq!(
            DecodeError::UnsupportedVersion(2).to_string(),
            "stored entry has unsupported format version 2"
        );
        assert_eq!(
            DecodeError::Invalid("header name").to_string(),
            "stored entry has an invalid header name"
        );
        for error in [
            DecodeError::BadMagic,
            DecodeError::TrailingBytes,
            DecodeError::Invalid("status code"),
        ] {
            let message = error.to_string();
            assert!(message.starts_with("stored entry "), "{message}");
        }
        let _: &dyn std::error::Error = &DecodeError::BadMagic;
    }

    fn header_name() -> impl Strategy<Value = HeaderName> {
        prop_oneof![
            // A small pool, so that names repeat.
            prop::sample::select(vec!["x-a", "x-b", "content-type", "set-cookie", "vary"])
                .prop_map(HeaderName::from_static),
            "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,24}"
                .prop_map(|name| HeaderName::from_bytes(name.as_bytes()).unwrap()),
        ]
    }

    fn header_value() -> impl Strategy<Value = HeaderValue> {
        prop_oneof![
            "[ -~]{0,40}".prop_map(|value| HeaderValue::from_str(&value).unwrap()),
            // Visible ASCII, tabs and obs-text bytes.
            prop::collection::vec(
                prop_oneof![0x20u8..=0x7e, 0x80u8..=0xff, Just(b'\t')],
                0..24
            )
            .prop_map(|value| HeaderValue::from_bytes(&value).unwrap()),
        ]
    }

    fn headers() -> impl Strategy<Value = HeaderMap> {
        prop::collection::vec((header_name(), header_value()), 0..12).prop_map(|pairs| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.append(name, value);
            }
            map
        })
    }

    /// Up to 4 KiB of arbitrary bytes. Drawn from a length and a seed rather
    /// than byte by byte, which keeps the cases cheap; only the length shrinks.
    fn body() -> impl Strategy<Value = Bytes> {
        (0usize..=4096, any::<u64>()).prop_map(|(len, mut state)| {
            (0..len)
                .map(|_| {
                    // xorshift64*; `| 1` keeps the state away from zero.
                    state |= 1;
                    state ^= state >> 12;
                    state ^= state << 25;
                    state ^= state >> 27;
                    (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
                })
                .collect()
        })
    }

    fn record() -> impl Strategy<Value = Record> {
        (
            100u16..=999,
            prop::sample::select(vec![
                Version::HTTP_09,
                Version::HTTP_10,
                Version::HTTP_11,
                Version::HTTP_2,
                Version::HTTP_3,
            ]),
            headers(),
            body(),
            prop::option::of(headers()),
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(
                |(status, version, headers, body, trailers, created_at, expires_at, meta)| Record {
                    status: StatusCode::from_u16(status).unwrap(),
                    version,
                    headers,
                    body,
                    trailers,
                    created_at,
                    expires_at,
                    meta: Bytes::from(meta),
                    info: Default::default(),
                },
            )
    }

    /// Decodes without panicking; anything that decodes must re-encode to
    /// something that decodes to the same record.
    fn check_decode(bytes: Vec<u8>) {
        if let Ok(record) = dec(bytes) {
            assert_same(&record, &dec(encode(&record)).unwrap());
        }
    }

    proptest! {
        #[test]
        fn prop_round_trip(record in record()) {
            let encoded = encode(&record);
            prop_assert_eq!(encoded.len(), encoded_len(&record));
            let decoded = dec(encoded).unwrap();
            prop_assert_eq!(decoded.status, record.status);
            prop_assert_eq!(decoded.version, record.version);
            prop_assert_eq!(&decoded.headers, &record.headers);
            prop_assert_eq!(pairs(&decoded.headers), pairs(&record.headers));
            prop_assert_eq!(&decoded.body, &record.body);
            prop_assert_eq!(&decoded.trailers, &record.trailers);
            prop_assert_eq!(
                decoded.trailers.as_ref().map(pairs),
                record.trailers.as_ref().map(pairs)
            );
            prop_assert_eq!(decoded.created_at, record.created_at);
            prop_assert_eq!(decoded.expires_at, record.expires_at);
            prop_assert_eq!(&decoded.meta, &record.meta);
        }

        #[test]
        fn prop_arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            check_decode(bytes);
        }

        #[test]
        fn prop_arbitrary_bytes_after_valid_prefix_never_panic(
            tail in prop::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut bytes = prefix(200);
            bytes.extend_from_slice(&tail);
            check_decode(bytes);
        }

        #[test]
        fn prop_flipped_encodings_never_panic(
            record in record(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..), 1..8),
        ) {
            let mut bytes = encode(&record);
            for (at, mask) in flips {
                let at = at.index(bytes.len());
                bytes[at] ^= mask;
            }
            check_decode(bytes);
        }

        #[test]
        fn prop_body_is_zero_copy(record in record()) {
            let input = Bytes::from(encode(&record));
            let range = input.as_ptr_range();
            let decoded = decode(input.clone()).unwrap();
            // An empty body's pointer may be anywhere; only its end bound can
            // equal the range's end.
            let body = decoded.body.as_ptr_range();
            prop_assert!(range.start <= body.start && body.end <= range.end);
            if !decoded.body.is_empty() {
                prop_assert!(range.contains(&decoded.body.as_ptr()));
            }
        }
    }
}
