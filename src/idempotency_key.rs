//! The `Idempotency-Key` request header and RFC 9457 problem bodies.
//!
//! The IETF draft (draft-ietf-httpapi-idempotency-key-header) makes the value
//! an RFC 8941 sf-string, a quoted string:
//!
//! ```text
//! Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"
//! ```
//!
//! while Stripe and most clients send it bare:
//!
//! ```text
//! Idempotency-Key: 8e03978e-40d5-43e8-bc93-6894a57f9324
//! ```
//!
//! [`parse_idempotency_key`] accepts both and gives the same key for both.
//!
//! # Example
//!
//! ```
//! use tower_idempotency::idempotency_key::{parse_idempotency_key, problem_json, KeyError, DEFAULT_MAX_LEN, IDEMPOTENCY_KEY};
//! use http::{HeaderMap, HeaderValue};
//!
//! let mut headers = HeaderMap::new();
//! headers.insert(IDEMPOTENCY_KEY, HeaderValue::from_static("\"order-42\""));
//! assert_eq!(parse_idempotency_key(&headers, DEFAULT_MAX_LEN).as_deref(), Ok("order-42"));
//!
//! let error = parse_idempotency_key(&HeaderMap::new(), DEFAULT_MAX_LEN).unwrap_err();
//! assert_eq!(error, KeyError::Missing);
//! let body = problem_json(400, "Bad Request", &error.to_string());
//! assert_eq!(
//!     &body[..],
//!     br#"{"type":"about:blank","title":"Bad Request","status":400,"detail":"idempotency-key header is missing"}"#
//! );
//! ```

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};

/// The `Idempotency-Key` header name.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The default longest key: 255 characters, Stripe's limit.
pub const DEFAULT_MAX_LEN: usize = 255;

/// The media type of [`problem_json`] bodies.
pub const PROBLEM_JSON_CONTENT_TYPE: &str = "application/problem+json";

/// Why an `Idempotency-Key` header was refused.
///
/// # Examples
///
/// ```
/// use http::HeaderValue;
/// use tower_idempotency::idempotency_key::{parse_idempotency_key_value, KeyError};
///
/// let too_long = HeaderValue::from_static("abcdef");
/// let error = parse_idempotency_key_value(&too_long, 4).unwrap_err();
/// assert_eq!(error, KeyError::TooLong { len: 6, max: 4 });
/// assert_eq!(
///     &error.to_problem_json()[..],
///     br#"{"type":"about:blank","title":"Bad Request","status":400,"detail":"idempotency-key is 6 characters long, more than the maximum of 4"}"#
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// No `Idempotency-Key` header.
    Missing,
    /// The header is there but the key is empty (`""` or only whitespace).
    Empty,
    /// The key is longer than allowed.
    TooLong {
        /// The key's length in characters (after removing the quoting).
        len: usize,
        /// The longest allowed.
        max: usize,
    },
    /// A character outside visible ASCII (or space, inside quotes), or a
    /// malformed quoted string.
    InvalidCharacter,
    /// More than one key: the header sent several times, or a list of quoted
    /// strings.
    MultipleValues,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Missing => f.write_str("idempotency-key header is missing"),
            KeyError::Empty => f.write_str("idempotency-key header is empty"),
            KeyError::TooLong { len, max } => write!(
                f,
                "idempotency-key is {len} characters long, more than the maximum of {max}"
            ),
            KeyError::InvalidCharacter => f.write_str(
                "idempotency-key must be visible ascii characters, optionally as a quoted string",
            ),
            KeyError::MultipleValues => {
                f.write_str("idempotency-key header has more than one value")
            }
        }
    }
}

impl std::error::Error for KeyError {}

impl KeyError {
    /// An RFC 9457 `400 Bad Request` problem body describing this error, to be
    /// served with content-type [`PROBLEM_JSON_CONTENT_TYPE`].
    pub fn to_problem_json(&self) -> Bytes {
        problem_json(400, "Bad Request", &self.to_string())
    }
}

/// Parses the `Idempotency-Key` header(s) of a request.
///
/// * There must be exactly one header field ([`KeyError::Missing`],
///   [`KeyError::MultipleValues`]).
/// * Surrounding spaces and tabs are ignored.
/// * A value starting with `"` must be one RFC 8941 sf-string: printable ASCII
///   and spaces between double quotes, with `\"` and `\\` as the only escapes;
///   the key is its decoded content. Anything else after the closing quote is
///   [`KeyError::InvalidCharacter`], except a `,` starting another list member,
///   which is [`KeyError::MultipleValues`] (what a proxy makes of two headers).
/// * Any other value is the key as is and may hold only visible ASCII
///   (`0x21..=0x7E`); a `,` is an ordinary character there.
/// * The key must have 1 to `max_len` characters ([`KeyError::Empty`],
///   [`KeyError::TooLong`]); [`DEFAULT_MAX_LEN`] is Stripe's 255.
///
/// The result borrows from `headers` unless the key had escapes. Never panics.
///
/// # Examples
///
/// ```
/// use http::{HeaderMap, HeaderValue};
/// use tower_idempotency::idempotency_key::{parse_idempotency_key, KeyError, DEFAULT_MAX_LEN, IDEMPOTENCY_KEY};
///
/// let key = |values: &[&'static str]| {
///     let mut headers = HeaderMap::new();
///     for value in values {
///         headers.append(IDEMPOTENCY_KEY, HeaderValue::from_static(value));
///     }
///     parse_idempotency_key(&headers, DEFAULT_MAX_LEN).map(|key| key.into_owned())
/// };
/// // Quoted (the draft) or bare (Stripe): the same key.
/// assert_eq!(key(&[r#""order-42""#]).as_deref(), Ok("order-42"));
/// assert_eq!(key(&["order-42"]).as_deref(), Ok("order-42"));
/// assert_eq!(key(&[r#""a \"quoted\" key""#]).as_deref(), Ok(r#"a "quoted" key"#));
/// assert_eq!(key(&[]), Err(KeyError::Missing));
/// assert_eq!(key(&["a", "b"]), Err(KeyError::MultipleValues));
/// assert_eq!(key(&[r#""a", "b""#]), Err(KeyError::MultipleValues));
/// assert_eq!(key(&["order 42"]), Err(KeyError::InvalidCharacter));
/// ```
pub fn parse_idempotency_key(
    headers: &HeaderMap,
    max_len: usize,
) -> Result<Cow<'_, str>, KeyError> {
    let mut values = headers.get_all(&IDEMPOTENCY_KEY).iter();
    let value = values.next().ok_or(KeyError::Missing)?;
    if values.next().is_some() {
        return Err(KeyError::MultipleValues);
    }
    parse_idempotency_key_value(value, max_len)
}

/// Parses one `Idempotency-Key` header value, by the rules of
/// [`parse_idempotency_key`].
///
/// # Examples
///
/// ```
/// use http::HeaderValue;
/// use tower_idempotency::idempotency_key::{parse_idempotency_key_value, KeyError, DEFAULT_MAX_LEN};
///
/// let value = HeaderValue::from_static(r#"  "8e03978e-40d5"  "#);
/// assert_eq!(parse_idempotency_key_value(&value, DEFAULT_MAX_LEN).as_deref(), Ok("8e03978e-40d5"));
/// let empty = HeaderValue::from_static(r#""""#);
/// assert_eq!(parse_idempotency_key_value(&empty, DEFAULT_MAX_LEN), Err(KeyError::Empty));
/// ```
pub fn parse_idempotency_key_value(
    value: &HeaderValue,
    max_len: usize,
) -> Result<Cow<'_, str>, KeyError> {
    parse_key_bytes(value.as_bytes(), max_len)
}

fn parse_key_bytes(bytes: &[u8], max_len: usize) -> Result<Cow<'_, str>, KeyError> {
    let bytes = trim_ows(bytes);
    let key = match bytes.strip_prefix(b"\"") {
        Some(quoted) => unquote(quoted)?,
        None => {
            if !bytes.iter().all(|b| (0x21..=0x7E).contains(b)) {
                return Err(KeyError::InvalidCharacter);
            }
            Cow::Borrowed(std::str::from_utf8(bytes).map_err(|_| KeyError::InvalidCharacter)?)
        }
    };
    // Only ASCII is left, so bytes are characters.
    match key.len() {
        _ if key.trim_matches(' ').is_empty() => Err(KeyError::Empty),
        len if len > max_len => Err(KeyError::TooLong { len, max: max_len }),
        _ => Ok(key),
    }
}

/// Decodes an sf-string whose opening quote is already consumed.
fn unquote(rest: &[u8]) -> Result<Cow<'_, str>, KeyError> {
    let mut owned: Option<Vec<u8>> = None;
    let mut i = 0;
    while let Some(&b) = rest.get(i) {
        match b {
            b'"' => {
                let content = &rest[..i];
                check_after_string(&rest[i + 1..])?;
                // Only printable ASCII got this far, so both conversions succeed.
                let key = match owned {
                    Some(buf) => String::from_utf8(buf).ok().map(Cow::Owned),
                    None => std::str::from_utf8(content).ok().map(Cow::Borrowed),
                };
                return key.ok_or(KeyError::InvalidCharacter);
            }
            b'\\' => {
                let escaped = match rest.get(i + 1) {
                    Some(&e @ (b'"' | b'\\')) => e,
                    _ => return Err(KeyError::InvalidCharacter),
                };
                owned
                    .get_or_insert_with(|| rest[..i].to_vec())
                    .push(escaped);
                i += 2;
            }
            0x20..=0x7E => {
                if let Some(buf) = owned.as_mut() {
                    buf.push(b);
                }
                i += 1;
            }
            _ => return Err(KeyError::InvalidCharacter),
        }
    }
    // No closing quote.
    Err(KeyError::InvalidCharacter)
}

/// What may follow the closing quote: nothing (the value is already trimmed),
/// or `,` and another member, which means several keys.
fn check_after_string(after: &[u8]) -> Result<(), KeyError> {
    match after.first() {
        None => Ok(()),
        Some(b',') => Err(KeyError::MultipleValues),
        Some(_) => Err(KeyError::InvalidCharacter),
    }
}

fn trim_ows(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

/// An RFC 9457 problem details body:
/// `{"type":"about:blank","title":…,"status":…,"detail":…}`, to be served with
/// content-type [`PROBLEM_JSON_CONTENT_TYPE`].
///
/// `type` is always `about:blank`, meaning the problem is just what the
/// status code says; `title` should be the status's reason phrase.
///
/// # Examples
///
/// ```
/// use tower_idempotency::idempotency_key::problem_json;
///
/// let body = problem_json(422, "Unprocessable Content", "the key was used with another \"payload\"");
/// let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
/// assert_eq!(problem["status"], 422);
/// assert_eq!(problem["detail"], r#"the key was used with another "payload""#);
/// ```
pub fn problem_json(status: u16, title: &str, detail: &str) -> Bytes {
    #[derive(serde::Serialize)]
    struct Problem<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        title: &'a str,
        status: u16,
        detail: &'a str,
    }
    let problem = Problem {
        kind: "about:blank",
        title,
        status,
        detail,
    };
    match serde_json::to_vec(&problem) {
        Ok(body) => Bytes::from(body),
        // Serializing strings and an integer cannot fail; keep a valid body anyway.
        Err(_) => Bytes::from_static(br#"{"type":"about:blank"}"#),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            let value = HeaderValue::from_bytes(value).expect("test header value");
            map.append(IDEMPOTENCY_KEY, value);
        }
        map
    }

    fn parse(value: &[u8]) -> Result<String, KeyError> {
        parse_idempotency_key(&headers(&[value]), DEFAULT_MAX_LEN).map(Cow::into_owned)
    }

    #[test]
    fn valid_unquoted() {
        let map = headers(&[b"8e03978e-40d5-43e8-bc93-6894a57f9324"]);
        let key = parse_idempotency_key(&map, DEFAULT_MAX_LEN);
        assert_eq!(key.as_deref(), Ok("8e03978e-40d5-43e8-bc93-6894a57f9324"));
        assert!(matches!(key, Ok(Cow::Borrowed(_))));
        assert_eq!(parse(b"!~a,b\"c"), Ok("!~a,b\"c".to_owned()));
        assert_eq!(parse(b" \tkey\t "), Ok("key".to_owned()));
    }

    #[test]
    fn valid_quoted() {
        let map = headers(&[b"\"8e03978e-40d5-43e8-bc93-6894a57f9324\""]);
        let key = parse_idempotency_key(&map, DEFAULT_MAX_LEN);
        assert_eq!(key.as_deref(), Ok("8e03978e-40d5-43e8-bc93-6894a57f9324"));
        assert!(matches!(key, Ok(Cow::Borrowed(_))));
        assert_eq!(parse(b"\"with space\""), Ok("with space".to_owned()));
        assert_eq!(parse(b"  \"x\"  "), Ok("x".to_owned()));
    }

    #[test]
    fn quoted_with_escapes() {
        let map = headers(&[br#""a\"b\\c""#]);
        let key = parse_idempotency_key(&map, DEFAULT_MAX_LEN);
        assert_eq!(key.as_deref(), Ok(r#"a"b\c"#));
        assert!(matches!(key, Ok(Cow::Owned(_))));
        assert_eq!(parse(br#""\\""#), Ok("\\".to_owned()));
        assert_eq!(parse(br#""\n""#), Err(KeyError::InvalidCharacter));
        assert_eq!(parse(br#""abc\""#), Err(KeyError::InvalidCharacter));
        assert_eq!(parse(br#""abc"#), Err(KeyError::InvalidCharacter));
        assert_eq!(parse(br#""a"b"#), Err(KeyError::InvalidCharacter));
        assert_eq!(parse(br#""a";p=1"#), Err(KeyError::InvalidCharacter));
    }

    #[test]
    fn empty() {
        assert_eq!(parse(b""), Err(KeyError::Empty));
        assert_eq!(parse(b"   "), Err(KeyError::Empty));
        assert_eq!(parse(b"\"\""), Err(KeyError::Empty));
        assert_eq!(
            parse(b"\"   \""),
            Err(KeyError::Empty),
            "a quoted key of spaces names nothing"
        );
    }

    #[test]
    fn too_long() {
        let max = "k".repeat(255);
        assert_eq!(parse(max.as_bytes()), Ok(max.clone()));
        let long = "k".repeat(256);
        assert_eq!(
            parse(long.as_bytes()),
            Err(KeyError::TooLong { len: 256, max: 255 })
        );
        let quoted = format!("\"{long}\"");
        assert_eq!(
            parse(quoted.as_bytes()),
            Err(KeyError::TooLong { len: 256, max: 255 })
        );
        // The limit counts decoded characters: 255 escaped quotes fit.
        let escaped = format!("\"{}\"", "\\\"".repeat(255));
        assert_eq!(parse(escaped.as_bytes()), Ok("\"".repeat(255)));
        assert_eq!(
            parse_idempotency_key(&headers(&[b"abc"]), 2),
            Err(KeyError::TooLong { len: 3, max: 2 })
        );
        assert_eq!(
            parse_idempotency_key(&headers(&[b"abc"]), 0),
            Err(KeyError::TooLong { len: 3, max: 0 })
        );
    }

    #[test]
    fn control_character() {
        // Tab is the one control character a `HeaderValue` may hold.
        assert_eq!(parse(b"ab\tcd"), Err(KeyError::InvalidCharacter));
        assert_eq!(parse(b"\"ab\tcd\""), Err(KeyError::InvalidCharacter));
        // Others, straight from bytes (bypassing `HeaderValue`'s checks).
        assert_eq!(
            parse_key_bytes(b"ab\x7fcd", 255),
            Err(KeyError::InvalidCharacter)
        );
        assert_eq!(
            parse_key_bytes(b"\"ab\x7f\"", 255),
            Err(KeyError::InvalidCharacter)
        );
        assert_eq!(
            parse_key_bytes(b"a\x01b", 255),
            Err(KeyError::InvalidCharacter)
        );
        assert_eq!(
            parse_key_bytes(b"\"a\x00\"", 255),
            Err(KeyError::InvalidCharacter)
        );
    }

    #[test]
    fn non_ascii() {
        assert_eq!(parse("clé".as_bytes()), Err(KeyError::InvalidCharacter));
        assert_eq!(parse("\"clé\"".as_bytes()), Err(KeyError::InvalidCharacter));
        assert_eq!(parse(b"\xff"), Err(KeyError::InvalidCharacter));
    }

    #[test]
    fn space_in_unquoted_key() {
        assert_eq!(parse(b"a b"), Err(KeyError::InvalidCharacter));
    }

    #[test]
    fn multiple_values() {
        let map = headers(&[b"one", b"two"]);
        assert_eq!(
            parse_idempotency_key(&map, DEFAULT_MAX_LEN),
            Err(KeyError::MultipleValues)
        );
        let same = headers(&[b"one", b"one"]);
        assert_eq!(
            parse_idempotency_key(&same, DEFAULT_MAX_LEN),
            Err(KeyError::MultipleValues)
        );
        assert_eq!(parse(b"\"one\", \"two\""), Err(KeyError::MultipleValues));
        assert_eq!(parse(b"\"one\",\"two\""), Err(KeyError::MultipleValues));
    }

    #[test]
    fn missing() {
        assert_eq!(
            parse_idempotency_key(&HeaderMap::new(), DEFAULT_MAX_LEN),
            Err(KeyError::Missing)
        );
        let mut other = HeaderMap::new();
        other.insert("idempotency-token", HeaderValue::from_static("x"));
        assert_eq!(
            parse_idempotency_key(&other, DEFAULT_MAX_LEN),
            Err(KeyError::Missing)
        );
    }

    #[test]
    fn header_name_is_case_insensitive() {
        let mut map = HeaderMap::new();
        let name = HeaderName::from_bytes(b"Idempotency-Key").expect("name");
        map.insert(name, HeaderValue::from_static("k"));
        assert_eq!(
            parse_idempotency_key(&map, DEFAULT_MAX_LEN).as_deref(),
            Ok("k")
        );
    }

    #[test]
    fn display_messages_are_lower_case() {
        let errors = [
            KeyError::Missing,
            KeyError::Empty,
            KeyError::TooLong { len: 256, max: 255 },
            KeyError::InvalidCharacter,
            KeyError::MultipleValues,
        ];
        for error in errors {
            let message = error.to_string();
            assert_eq!(message, message.to_lowercase());
            assert!(message.starts_with("idempotency-key"));
        }
        assert_eq!(
            KeyError::TooLong { len: 256, max: 255 }.to_string(),
            "idempotency-key is 256 characters long, more than the maximum of 255"
        );
    }

    #[test]
    fn problem_json_fields() {
        let body = problem_json(
            409,
            "Conflict",
            "a request with this \"key\" is in progress",
        );
        let value: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            value,
            serde_json::json!({
                "type": "about:blank",
                "title": "Conflict",
                "status": 409,
                "detail": "a request with this \"key\" is in progress",
            })
        );
        assert!(
            body.starts_with(br#"{"type":"about:blank","title":"Conflict","status":409,"detail":"#)
        );
        let from_error: serde_json::Value =
            serde_json::from_slice(&KeyError::Empty.to_problem_json()).expect("json");
        assert_eq!(from_error["status"], 400);
        assert_eq!(from_error["detail"], "idempotency-key header is empty");
    }
}
