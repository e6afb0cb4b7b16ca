//! Usage and model read from recorded shapes of public OpenAI and Anthropic
//! responses (`tests/fixtures/`), however the body is split or framed.

use proptest::prelude::*;
use tower_idempotency::ai::{parse_usage, response_model, Usage, UsageScanner};

const JSON: Option<&str> = Some("application/json");
const SSE: Option<&str> = Some("text/event-stream");

struct Fixture {
    name: &'static str,
    body: &'static [u8],
    content_type: Option<&'static str>,
    usage: Usage,
    model: &'static str,
}

fn usage(input: u64, output: u64, cached: u64, creation: u64) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        cached_input_tokens: cached,
        cache_creation_input_tokens: creation,
    }
}

fn fixtures() -> Vec<Fixture> {
    vec![
        Fixture {
            name: "openai_chat.json",
            body: include_bytes!("fixtures/openai_chat.json"),
            content_type: JSON,
            usage: usage(1117, 46, 1024, 0),
            model: "gpt-4o-2024-08-06",
        },
        Fixture {
            name: "openai_chat_stream.sse",
            body: include_bytes!("fixtures/openai_chat_stream.sse"),
            content_type: SSE,
            usage: usage(1290, 8, 1152, 0),
            model: "gpt-4o-mini-2024-07-18",
        },
        Fixture {
            name: "openai_responses.json",
            body: include_bytes!("fixtures/openai_responses.json"),
            content_type: JSON,
            usage: usage(1873, 52, 1280, 0),
            model: "gpt-4.1-2025-04-14",
        },
        Fixture {
            name: "openai_responses_stream.sse",
            body: include_bytes!("fixtures/openai_responses_stream.sse"),
            content_type: SSE,
            usage: usage(1437, 4, 1408, 0),
            model: "gpt-4.1-mini-2025-04-14",
        },
        Fixture {
            name: "openai_embeddings.json",
            body: include_bytes!("fixtures/openai_embeddings.json"),
            content_type: JSON,
            usage: usage(17, 0, 0, 0),
            model: "text-embedding-3-small",
        },
        Fixture {
            name: "anthropic_messages.json",
            body: include_bytes!("fixtures/anthropic_messages.json"),
            content_type: JSON,
            // input_tokens 21 + cache_read 3100 + cache_creation 1200
            usage: usage(4321, 393, 3100, 1200),
            model: "claude-sonnet-4-20250514",
        },
        Fixture {
            name: "anthropic_messages_stream.sse",
            body: include_bytes!("fixtures/anthropic_messages_stream.sse"),
            content_type: SSE,
            // input_tokens 472 + cache_read 2048 + cache_creation 256; last output_tokens 89
            usage: usage(2776, 89, 2048, 256),
            model: "claude-sonnet-4-20250514",
        },
    ]
}

fn sse_fixtures() -> Vec<Fixture> {
    fixtures()
        .into_iter()
        .filter(|f| f.content_type == SSE)
        .collect()
}

fn scan_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> (Option<Usage>, Option<String>) {
    let mut scanner = UsageScanner::new();
    for chunk in chunks {
        scanner.feed(chunk);
    }
    scanner.finish_with_model()
}

/// Rewrites every `\n` line ending as `ending`.
fn with_line_endings(body: &[u8], ending: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() * 2);
    for &b in body {
        if b == b'\n' {
            out.extend_from_slice(ending);
        } else {
            out.push(b);
        }
    }
    out
}

#[test]
fn exact_usage_and_model_of_every_fixture() {
    for f in fixtures() {
        assert_eq!(
            parse_usage(f.content_type, f.body),
            Some(f.usage),
            "{}",
            f.name
        );
        assert_eq!(
            response_model(f.content_type, f.body).as_deref(),
            Some(f.model),
            "{}",
            f.name
        );
    }
}

#[test]
fn totals() {
    let totals: Vec<(&str, u64)> = fixtures()
        .iter()
        .map(|f| {
            (
                f.name,
                parse_usage(f.content_type, f.body).map_or(0, |u| u.total()),
            )
        })
        .collect();
    assert_eq!(
        totals,
        [
            ("openai_chat.json", 1163), // = the response's total_tokens
            ("openai_chat_stream.sse", 1298),
            ("openai_responses.json", 1925),
            ("openai_responses_stream.sse", 1441),
            ("openai_embeddings.json", 17),
            ("anthropic_messages.json", 4714),
            ("anthropic_messages_stream.sse", 2865),
        ]
    );
}

#[test]
fn content_type_variants_and_sniffing() {
    for f in fixtures() {
        let upper = f
            .content_type
            .map(|ct| format!("{}; charset=utf-8", ct.to_uppercase()));
        assert_eq!(
            parse_usage(upper.as_deref(), f.body),
            Some(f.usage),
            "{}",
            f.name
        );
        assert_eq!(
            parse_usage(None, f.body),
            Some(f.usage),
            "{} sniffed",
            f.name
        );
        assert_eq!(
            parse_usage(Some("application/octet-stream"), f.body),
            Some(f.usage),
            "{} sniffed",
            f.name
        );
    }
}

#[test]
fn json_fixtures_declared_as_event_stream_give_nothing() {
    for f in fixtures().iter().filter(|f| f.content_type == JSON) {
        assert_eq!(parse_usage(SSE, f.body), None, "{}", f.name);
    }
}

#[test]
fn byte_by_byte_equals_all_at_once() {
    for f in sse_fixtures() {
        let whole = scan_chunks([f.body]);
        assert_eq!(
            whole,
            (Some(f.usage), Some(f.model.to_owned())),
            "{}",
            f.name
        );
        assert_eq!(scan_chunks(f.body.chunks(1)), whole, "{}", f.name);
        for size in [2, 3, 7, 64, 4096] {
            assert_eq!(
                scan_chunks(f.body.chunks(size)),
                whole,
                "{} by {size}",
                f.name
            );
        }
    }
}

#[test]
fn every_line_ending_gives_the_same_answer() {
    for f in sse_fixtures() {
        for ending in [&b"\r\n"[..], b"\r"] {
            let body = with_line_endings(f.body, ending);
            assert_eq!(
                parse_usage(SSE, &body),
                Some(f.usage),
                "{} {ending:?}",
                f.name
            );
            assert_eq!(
                scan_chunks(body.chunks(1)),
                (Some(f.usage), Some(f.model.to_owned())),
                "{} {ending:?} byte by byte",
                f.name
            );
        }
    }
}

#[test]
fn without_the_final_blank_line_the_last_event_still_counts() {
    for f in sse_fixtures() {
        let trimmed = f.body.trim_ascii_end();
        assert_eq!(parse_usage(SSE, trimmed), Some(f.usage), "{}", f.name);
    }
}

#[test]
fn usage_so_far_while_streaming() {
    let body = include_bytes!("fixtures/anthropic_messages_stream.sse");
    let mut scanner = UsageScanner::new();
    let split = body
        .windows(b"event: message_delta".len())
        .position(|w| w == b"event: message_delta")
        .expect("fixture has a message_delta");
    scanner.feed(&body[..split]);
    assert_eq!(scanner.usage(), Some(usage(2776, 2, 2048, 256)));
    scanner.feed(&body[split..]);
    assert_eq!(scanner.finish(), Some(usage(2776, 89, 2048, 256)));
}

#[test]
fn truncated_bodies_never_panic() {
    for f in fixtures() {
        for end in 0..f.body.len() {
            let _ = parse_usage(f.content_type, &f.body[..end]);
            let _ = response_model(f.content_type, &f.body[..end]);
        }
    }
}

#[test]
fn truncated_streams_lose_only_what_is_missing() {
    let body = include_bytes!("fixtures/openai_chat_stream.sse");
    let last_chunk = body
        .windows(b"\"choices\":[]".len())
        .position(|w| w == b"\"choices\":[]")
        .expect("fixture has a usage chunk");
    // Cut inside the usage chunk: no usage, but the model is known.
    let cut = &body[..last_chunk];
    assert_eq!(parse_usage(SSE, cut), None);
    assert_eq!(
        response_model(SSE, cut).as_deref(),
        Some("gpt-4o-mini-2024-07-18")
    );
}

proptest! {
    #[test]
    fn random_splits_give_the_same_answer(
        index in 0usize..3,
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..40),
        crlf in any::<bool>(),
    ) {
        let f = &sse_fixtures()[index];
        let body = if crlf { with_line_endings(f.body, b"\r\n") } else { f.body.to_vec() };
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(body.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut start = 0;
        for point in points {
            chunks.push(&body[start..point]);
            start = point;
        }
        chunks.push(&body[start..]);
        prop_assert_eq!(
            scan_chunks(chunks.iter().copied()),
            (Some(f.usage), Some(f.model.to_owned()))
        );
    }
}
