//! Property tests: nothing panics on arbitrary input, and how a stream is
//! split never changes what the scanner reads from it.

use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use tower_idempotency::ai::{
    parse_usage, request_model, response_model, sampling, PriceTable, UsageScanner,
};
use tower_idempotency::idempotency_key::{
    parse_idempotency_key, parse_idempotency_key_value, KeyError, IDEMPOTENCY_KEY,
};

/// Bytes built from pieces that matter to the parsers, so that random input
/// reaches deep paths (valid JSON objects, SSE fields, usage keys, numbers).
fn structured_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(&b"data: "[..]),
        Just(&b"data:"[..]),
        Just(&b"event: message_delta"[..]),
        Just(&b": comment"[..]),
        Just(&b"\n"[..]),
        Just(&b"\r"[..]),
        Just(&b"\r\n"[..]),
        Just(&b"[DONE]"[..]),
        Just(&b"{"[..]),
        Just(&b"}"[..]),
        Just(&b"["[..]),
        Just(&b"]"[..]),
        Just(&b","[..]),
        Just(&b":"[..]),
        Just(&b"\"usage\""[..]),
        Just(&b"\"model\""[..]),
        Just(&b"\"message\""[..]),
        Just(&b"\"response\""[..]),
        Just(&b"\"temperature\""[..]),
        Just(&b"\"seed\""[..]),
        Just(&b"\"prompt_tokens\""[..]),
        Just(&b"\"input_tokens\""[..]),
        Just(&b"\"output_tokens\""[..]),
        Just(&b"\"cache_read_input_tokens\""[..]),
        Just(&b"\"cache_creation_input_tokens\""[..]),
        Just(&b"\"prompt_tokens_details\""[..]),
        Just(&b"\"cached_tokens\""[..]),
        Just(&b"\"gpt-4o\""[..]),
        Just(&b"0"[..]),
        Just(&b"-1"[..]),
        Just(&b"1.5"[..]),
        Just(&b"18446744073709551615"[..]),
        Just(&b"18446744073709551616"[..]),
        Just(&b"1e400"[..]),
        Just(&b"null"[..]),
        Just(&b"\xEF\xBB\xBF"[..]),
        Just(&b"\xff"[..]),
    ];
    proptest::collection::vec(piece, 0..60).prop_map(|pieces| pieces.concat())
}

/// A JSON number or other value as text, of every awkward kind.
fn json_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:?}")),
        (0u32..40).prop_map(|e| format!("1e{e}")),
        Just("99999999999999999999999999".to_owned()),
        Just("-0".to_owned()),
        Just("null".to_owned()),
        Just("\"12\"".to_owned()),
        Just("{}".to_owned()),
        (0u64..5000).prop_map(|n| format!("{{\"cached_tokens\":{n}}}")),
    ]
}

/// A usage object with random known keys and awkward values.
fn usage_object() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("prompt_tokens"),
        Just("completion_tokens"),
        Just("input_tokens"),
        Just("output_tokens"),
        Just("cache_read_input_tokens"),
        Just("cache_creation_input_tokens"),
        Just("prompt_tokens_details"),
        Just("input_tokens_details"),
        Just("total_tokens"),
    ];
    proptest::collection::vec((key, json_value()), 0..6).prop_map(|fields| {
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", body.join(","))
    })
}

/// An event stream of well-formed events whose usage values are random.
fn event_stream() -> impl Strategy<Value = Vec<u8>> {
    let event = (usage_object(), 0usize..4, prop_oneof![Just("\n"), Just("\r\n"), Just("\r")]).prop_map(
        |(usage, shape, eol)| {
            let json = match shape {
                0 => format!("{{\"model\":\"m\",\"usage\":{usage}}}"),
                1 => format!("{{\"type\":\"message_start\",\"message\":{{\"model\":\"c\",\"usage\":{usage}}}}}"),
                2 => format!("{{\"type\":\"response.completed\",\"response\":{{\"usage\":{usage}}}}}"),
                _ => "[DONE]".to_owned(),
            };
            format!("event: x{eol}data: {json}{eol}{eol}")
        },
    );
    proptest::collection::vec(event, 0..6).prop_map(|events| events.concat().into_bytes())
}

fn any_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        structured_bytes(),
        event_stream(),
        usage_object().prop_map(|usage| format!("{{\"usage\":{usage}}}").into_bytes()),
    ]
}

fn content_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("application/json".to_owned())),
        Just(Some("text/event-stream".to_owned())),
        any::<String>().prop_map(Some),
    ]
}

fn scan<'a>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> (Option<tower_idempotency::ai::Usage>, Option<String>) {
    let mut scanner = UsageScanner::new();
    for chunk in chunks {
        scanner.feed(chunk);
    }
    scanner.finish_with_model()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn ai_parsers_never_panic(ct in content_type(), body in any_body()) {
        let usage = parse_usage(ct.as_deref(), &body);
        let model = response_model(ct.as_deref(), &body);
        let _ = request_model(&body);
        let _ = sampling(&body);
        let prices = PriceTable::new().with_model("", 1.0, 1.0).with_per_call(0.01);
        let _ = prices.cost(model.as_deref(), usage.as_ref());
    }

    #[test]
    fn scanner_split_never_matters(
        body in any_body(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let whole = scan([body.as_slice()]);
        prop_assert_eq!(scan(body.chunks(1)), whole.clone());
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(body.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut start = 0;
        for point in points {
            chunks.push(&body[start..point]);
            start = point;
        }
        chunks.push(&body[start..]);
        prop_assert_eq!(scan(chunks.iter().copied()), whole.clone());
        prop_assert_eq!(parse_usage(Some("text/event-stream"), &body), whole.0);
    }

    #[test]
    fn small_line_limits_never_panic(body in any_body(), max in 0usize..64) {
        let mut scanner = UsageScanner::with_max_line_len(max);
        for chunk in body.chunks(3) {
            scanner.feed(chunk);
        }
        let _ = scanner.finish();
    }

    #[test]
    fn idempotency_key_never_panics(
        values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..3),
        max in 0usize..300,
    ) {
        let mut headers = HeaderMap::new();
        for value in &values {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                let _ = parse_idempotency_key_value(&value, max);
                headers.append(IDEMPOTENCY_KEY, value);
            }
        }
        if let Ok(key) = parse_idempotency_key(&headers, max) {
            prop_assert!(!key.is_empty() && key.len() <= max);
            prop_assert!(key.bytes().all(|b| (0x20..=0x7E).contains(&b)));
        }
    }

    #[test]
    fn idempotency_key_strings(value in any::<String>()) {
        if let Ok(value) = HeaderValue::from_str(&value) {
            let _ = parse_idempotency_key_value(&value, 255);
        }
    }

    #[test]
    fn quoting_round_trips(key in "[ -~]{1,255}") {
        let quoted = format!("\"{}\"", key.replace('\\', "\\\\").replace('"', "\\\""));
        let value = HeaderValue::from_str(&quoted).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let parsed = parse_idempotency_key_value(&value, 255).map(|k| k.into_owned());
        // A key of spaces only is empty, quoted or not.
        let expected = if key.trim_matches(' ').is_empty() {
            Err(KeyError::Empty)
        } else {
            Ok(key.clone())
        };
        prop_assert_eq!(parsed, expected);
        if !key.contains(' ') && !key.starts_with('"') {
            let bare = HeaderValue::from_str(&key).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let parsed = parse_idempotency_key_value(&bare, 255).map(|k| k.into_owned());
            prop_assert_eq!(parsed, Ok(key));
        }
    }
}

#[test]
fn generated_streams_do_reach_usage() {
    // Guards the generators above: a good share of their bodies must carry
    // usage, or the properties would only ever test the "nothing found" path.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = event_stream();
    let found = (0..200)
        .filter(|_| {
            let body = strategy
                .new_tree(&mut runner)
                .map(|tree| tree.current())
                .unwrap_or_default();
            parse_usage(Some("text/event-stream"), &body).is_some()
        })
        .count();
    assert!(
        found > 50,
        "only {found} of 200 generated streams had usage"
    );
}
