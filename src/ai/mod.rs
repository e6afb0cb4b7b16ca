//! Reading AI API traffic: token usage, model names, prices and sampling.
//!
//! * [`parse_usage`] reads the token [`Usage`] of a complete response body,
//!   JSON or server-sent events, from OpenAI (chat completions, embeddings,
//!   Responses API) and Anthropic (messages); [`UsageScanner`] does the same
//!   for a streamed body chunk by chunk in bounded memory.
//! * [`request_model`] and [`response_model`] read the model name.
//! * [`PriceTable`] turns usage into a [`Cost`] with prices the user supplies.
//! * [`sampling()`] tells whether a request asks for deterministic output.
//!
//! Every function takes untrusted bytes and never panics; what it cannot
//! recognise gives `None` (or [`Sampling::Unknown`]).
//!
//! # Example
//!
//! ```
//! use tower_idempotency::ai::{parse_usage, request_model, response_model, sampling, PriceTable, Sampling};
//!
//! let request = br#"{"model":"gpt-4o","temperature":0,"messages":[]}"#;
//! let response = br#"{"model":"gpt-4o-2024-08-06","usage":{"prompt_tokens":1000,"completion_tokens":200}}"#;
//!
//! assert_eq!(request_model(request).as_deref(), Some("gpt-4o"));
//! assert_eq!(sampling(request), Sampling::Deterministic);
//!
//! let model = response_model(Some("application/json"), response);
//! let usage = parse_usage(Some("application/json"), response);
//! assert_eq!(usage.map(|u| u.total()), Some(1200));
//!
//! let prices = PriceTable::new().with_model("gpt-4o", 2.50, 10.00);
//! let cost = prices.cost(model.as_deref(), usage.as_ref());
//! assert_eq!(cost.micro_dollars(), 4_500); // $0.0025 + $0.002
//! ```

mod json;
mod price;
mod sampling;
mod scanner;
mod sse;
mod usage;

pub use price::{Cost, ModelPrice, PriceTable};
pub use sampling::{sampling, Sampling};
pub use scanner::UsageScanner;
pub use usage::Usage;

use json::{non_empty_string, pick_scalar_fields};
use scanner::ScanState;

/// Reads the token usage from a complete response body.
///
/// `content_type` is the value of the response's `content-type` header; the
/// body must be decoded (no `Content-Encoding`).
///
/// * `application/json` or any `+json` type: the body is one JSON object whose
///   top-level `usage` object is read (OpenAI chat completions, embeddings and
///   the Responses API; Anthropic messages). A `usage` inside a top-level
///   `message` or `response` object counts too, as in stream events.
/// * `text/event-stream`: the body is read with a [`UsageScanner`] (see there
///   for the events understood and how the usage of several events merges).
/// * anything else, or no header: the body is taken as JSON if its first
///   non-whitespace byte is `{`, else as an event stream.
///
/// Media types are compared case-insensitively and parameters such as
/// `; charset=utf-8` are ignored. The counts are normalised as documented on
/// [`Usage`] (Anthropic's cache counts are added to `input_tokens`).
///
/// Returns `None` when no `usage` object with at least one known token count
/// is found. Counts that are not non-negative integers (negative numbers,
/// fractions, numbers beyond `u64`, strings) are treated as absent. Never
/// panics, whatever the bytes.
///
/// ```
/// use tower_idempotency::ai::{parse_usage, Usage};
///
/// let body = br#"{"type":"message","usage":{"input_tokens":10,"cache_read_input_tokens":90,"output_tokens":5}}"#;
/// assert_eq!(
///     parse_usage(Some("application/json"), body),
///     Some(Usage { input_tokens: 100, output_tokens: 5, cached_input_tokens: 90, cache_creation_input_tokens: 0 })
/// );
/// assert_eq!(parse_usage(Some("application/json"), b"not json"), None);
/// ```
pub fn parse_usage(content_type: Option<&str>, body: &[u8]) -> Option<Usage> {
    match body_kind(content_type, body) {
        BodyKind::Json => {
            let mut state = ScanState::default();
            state.event(body);
            state.usage()
        }
        BodyKind::EventStream => {
            let mut scanner = UsageScanner::new();
            scanner.feed(body);
            scanner.finish()
        }
    }
}

/// The `model` field of a JSON request body: a non-empty string at the top
/// level of a JSON object, else `None`.
///
/// ```
/// use tower_idempotency::ai::request_model;
///
/// assert_eq!(request_model(br#"{"model":"gpt-4o-mini","messages":[]}"#).as_deref(), Some("gpt-4o-mini"));
/// assert_eq!(request_model(br#"{"model":42}"#), None);
/// ```
pub fn request_model(body: &[u8]) -> Option<String> {
    let [model] = pick_scalar_fields(body, ["model"])?;
    non_empty_string(model.as_ref()).map(str::to_owned)
}

/// The model named by a response body, if any.
///
/// The content type is handled as in [`parse_usage`]. For JSON it is the
/// top-level `model` string. For an event stream it is the first `model`
/// string of an event: at the top level (OpenAI chat chunks), in `message`
/// (Anthropic `message_start`) or in `response` (Responses API
/// `response.created`). Empty strings count as absent.
///
/// ```
/// use tower_idempotency::ai::response_model;
///
/// let json = br#"{"id":"chatcmpl-1","model":"gpt-4o-2024-08-06","choices":[]}"#;
/// assert_eq!(response_model(Some("application/json"), json).as_deref(), Some("gpt-4o-2024-08-06"));
///
/// let events = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\"}}\n\n";
/// assert_eq!(response_model(Some("text/event-stream"), events).as_deref(), Some("claude-x"));
/// assert_eq!(response_model(None, br#"{"model":""}"#), None);
/// ```
pub fn response_model(content_type: Option<&str>, body: &[u8]) -> Option<String> {
    match body_kind(content_type, body) {
        BodyKind::Json => {
            let mut state = ScanState::default();
            state.event(body);
            state.into_model()
        }
        BodyKind::EventStream => {
            let mut scanner = UsageScanner::new();
            scanner.feed(body);
            scanner.finish_with_model().1
        }
    }
}

/// The usage and the model of a complete response body, in one pass: what
/// [`parse_usage`] and [`response_model`] return.
pub(crate) fn usage_and_model(
    content_type: Option<&str>,
    body: &[u8],
) -> (Option<Usage>, Option<String>) {
    match body_kind(content_type, body) {
        BodyKind::Json => {
            let mut state = ScanState::default();
            state.event(body);
            (state.usage(), state.into_model())
        }
        BodyKind::EventStream => {
            let mut scanner = UsageScanner::new();
            scanner.feed(body);
            scanner.finish_with_model()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Json,
    EventStream,
}

fn body_kind(content_type: Option<&str>, body: &[u8]) -> BodyKind {
    let essence = content_type
        .and_then(|value| value.split(';').next())
        .map(str::trim);
    match essence {
        Some(essence) if essence.eq_ignore_ascii_case("text/event-stream") => BodyKind::EventStream,
        Some(essence) if is_json_media_type(essence) => BodyKind::Json,
        _ => sniff(body),
    }
}

/// `application/json` or any `+json` type, compared case-insensitively.
fn is_json_media_type(essence: &str) -> bool {
    match essence.split_once('/') {
        Some((kind, subtype))
            if kind.eq_ignore_ascii_case("application") && subtype.eq_ignore_ascii_case("json") =>
        {
            true
        }
        Some((kind, subtype)) => {
            let subtype = subtype.as_bytes();
            !kind.is_empty()
                && subtype.len() >= 5
                && subtype[subtype.len() - 5..].eq_ignore_ascii_case(b"+json")
        }
        None => false,
    }
}

fn sniff(body: &[u8]) -> BodyKind {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => BodyKind::Json,
        _ => BodyKind::EventStream,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types() {
        let json = b"{}";
        for ct in [
            "application/json",
            "Application/JSON; charset=utf-8",
            " application/problem+json ",
            "application/vnd.api+json",
        ] {
            assert_eq!(body_kind(Some(ct), b"data: x"), BodyKind::Json, "{ct}");
        }
        for ct in ["text/event-stream", "TEXT/EVENT-STREAM;charset=utf-8"] {
            assert_eq!(body_kind(Some(ct), json), BodyKind::EventStream, "{ct}");
        }
        for ct in [
            None,
            Some("text/plain"),
            Some("json"),
            Some("/+json"),
            Some(""),
        ] {
            assert_eq!(body_kind(ct, b" \n{}"), BodyKind::Json, "{ct:?}");
            assert_eq!(body_kind(ct, b"data: {}"), BodyKind::EventStream, "{ct:?}");
        }
    }

    #[test]
    fn json_usage_variants() {
        let ct = Some("application/json");
        assert_eq!(parse_usage(ct, br#"{"usage":null}"#), None);
        assert_eq!(parse_usage(ct, br#"{"usage":{}}"#), None);
        assert_eq!(parse_usage(ct, br#"{"error":{"message":"x"}}"#), None);
        assert_eq!(parse_usage(ct, br#"[{"usage":{"prompt_tokens":1}}]"#), None);
        assert_eq!(
            parse_usage(
                ct,
                br#"{"usage":{"prompt_tokens":0,"completion_tokens":0}}"#
            ),
            Some(Usage::default())
        );
        assert_eq!(
            parse_usage(
                ct,
                br#"{"usage":{"prompt_tokens":-3,"completion_tokens":2.5,"total_tokens":9}}"#
            ),
            None
        );
        assert_eq!(
            parse_usage(
                ct,
                br#"{"usage":{"prompt_tokens":99999999999999999999999,"completion_tokens":4}}"#
            ),
            Some(Usage {
                output_tokens: 4,
                ..Usage::default()
            })
        );
        assert_eq!(
            parse_usage(ct, br#"{"usage":{"prompt_tokens":1e400}}"#),
            None,
            "number out of f64 range is a JSON error"
        );
    }

    #[test]
    fn usage_and_model_in_one_pass_agree_with_each_alone() {
        let bodies: [(Option<&str>, &[u8]); 7] = [
            (
                Some("application/json"),
                br#"{"model":"m","usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
            ),
            (
                Some("Application/Vnd.Api+JSON"),
                br#"{"usage":{"input_tokens":1},"message":{"model":"c"}}"#,
            ),
            (Some("application/json"), b"not json"),
            (
                Some("text/event-stream"),
                b"data: {\"model\":\"s\",\"usage\":{\"prompt_tokens\":1}}\n\n",
            ),
            (None, br#" {"model":"sniffed","usage":{"output_tokens":2}}"#),
            (Some("text/plain"), b"data: {\"model\":\"x\"}\n\n"),
            (Some("application/json"), br#"{"model":"","usage":null}"#),
        ];
        for (ct, body) in bodies {
            assert_eq!(
                usage_and_model(ct, body),
                (parse_usage(ct, body), response_model(ct, body)),
                "{ct:?} {}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(
            usage_and_model(Some("application/json"), bodies[0].1),
            (
                Some(Usage {
                    input_tokens: 3,
                    output_tokens: 4,
                    ..Usage::default()
                }),
                Some("m".to_owned())
            )
        );
    }

    #[test]
    fn json_declared_body_is_not_read_as_events() {
        let sse = b"data: {\"usage\":{\"prompt_tokens\":1}}\n\n";
        assert_eq!(parse_usage(Some("application/json"), sse), None);
        assert!(parse_usage(None, sse).is_some());
        assert!(parse_usage(Some("text/event-stream"), sse).is_some());
    }

    #[test]
    fn request_model_cases() {
        assert_eq!(request_model(br#"{"model":""}"#), None);
        assert_eq!(request_model(br#"{"model":null}"#), None);
        assert_eq!(request_model(br#"{"x":{"model":"nested"}}"#), None);
        assert_eq!(request_model(br#"["model"]"#), None);
        assert_eq!(request_model(b"\xff\xfe"), None);
        assert_eq!(
            request_model(br#"{"model":"a","model":"b"}"#).as_deref(),
            Some("b")
        );
        assert_eq!(
            request_model(br#"{"model":"gpt-\u00e9"}"#).as_deref(),
            Some("gpt-é")
        );
    }

    #[test]
    fn response_model_cases() {
        assert_eq!(
            response_model(None, br#"{"model":"m","usage":null}"#).as_deref(),
            Some("m")
        );
        assert_eq!(
            response_model(
                Some("text/event-stream"),
                b"data: {\"model\":\"first\"}\n\ndata: {\"model\":\"second\"}\n\n"
            )
            .as_deref(),
            Some("first")
        );
        assert_eq!(
            response_model(Some("text/event-stream"), b"data: [DONE]\n\n"),
            None
        );
    }
}
