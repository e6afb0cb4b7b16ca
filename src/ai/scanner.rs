//! [`UsageScanner`]: reads usage from a server-sent-events body as it streams.

use serde_json::Value;

use crate::ai::json::{non_empty_string, pick_fields};
use crate::ai::sse::{SseParser, DEFAULT_MAX_LINE_LEN};
use crate::ai::usage::{RawUsage, Usage};

/// Reads token usage and the model name from a `text/event-stream` response
/// body fed to it chunk by chunk, keeping bounded memory.
///
/// It keeps only the current partial line and the data of the current event,
/// each at most [`DEFAULT_MAX_LINE_LEN`](Self::DEFAULT_MAX_LINE_LEN) bytes
/// (1 MiB) unless set with [`with_max_line_len`](Self::with_max_line_len). A
/// longer line is skipped, and so is the event it belongs to. Splitting the
/// body differently never changes the result.
///
/// Every event's data (except `[DONE]`) is read as a JSON object, and usage is
/// taken from its `usage`, `message.usage` and `response.usage` objects:
///
/// * OpenAI chat completions with `stream_options.include_usage`: the last
///   chunk's `usage`;
/// * OpenAI Responses API: `response.usage` of `response.completed` (or
///   `response.incomplete` / `response.failed`);
/// * Anthropic messages: `message.usage` of `message_start` merged with
///   `usage` of each `message_delta`.
///
/// Usage objects of one stream are merged field by field: a later non-zero
/// value replaces an earlier one, and a zero never overwrites a non-zero value
/// (so Anthropic's cumulative `output_tokens` ends at its last value, and the
/// input and cache counts of `message_start` survive a `message_delta` that
/// reports them as zero). The model is the first non-empty `model`,
/// `message.model` or `response.model` string.
///
/// The body must be decoded (no `Content-Encoding`).
///
/// # Example
///
/// ```
/// use tower_idempotency::ai::{Usage, UsageScanner};
///
/// let mut scanner = UsageScanner::new();
/// scanner.feed(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":");
/// scanner.feed(b"{\"model\":\"claude-x\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n");
/// scanner.feed(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n");
/// assert_eq!(scanner.model(), Some("claude-x"));
/// assert_eq!(
///     scanner.finish(),
///     Some(Usage { input_tokens: 25, output_tokens: 15, ..Usage::default() })
/// );
/// ```
#[derive(Debug, Clone, Default)]
pub struct UsageScanner {
    parser: SseParser,
    state: ScanState,
}

impl UsageScanner {
    /// The default limit of a line and of an event's data: 1 MiB.
    pub const DEFAULT_MAX_LINE_LEN: usize = DEFAULT_MAX_LINE_LEN;

    /// A scanner with the default 1 MiB line limit.
    pub fn new() -> Self {
        UsageScanner::default()
    }

    /// A scanner that skips lines, and events whose data is, longer than
    /// `max_len` bytes.
    ///
    /// The OpenAI Responses API's `response.completed` event repeats the whole
    /// response on one line, so a response longer than the limit (say, with
    /// base64 images from an image-generation tool) loses its usage unless the
    /// limit is raised.
    pub fn with_max_line_len(max_len: usize) -> Self {
        UsageScanner {
            parser: SseParser::new(max_len),
            state: ScanState::default(),
        }
    }

    /// Feeds the next bytes of the body, split anywhere.
    pub fn feed(&mut self, chunk: &[u8]) {
        let UsageScanner { parser, state } = self;
        parser.feed(chunk, &mut |data| state.event(data));
    }

    /// The usage seen so far, in completed events only.
    pub fn usage(&self) -> Option<Usage> {
        self.state.usage()
    }

    /// The model seen so far, in completed events only.
    pub fn model(&self) -> Option<&str> {
        self.state.model.as_deref()
    }

    /// Ends the body (a last event without its closing empty line still
    /// counts) and returns the usage, if any was found.
    pub fn finish(self) -> Option<Usage> {
        self.finish_with_model().0
    }

    /// Like [`finish`](Self::finish), also returning the model.
    pub fn finish_with_model(mut self) -> (Option<Usage>, Option<String>) {
        let UsageScanner { parser, state } = &mut self;
        parser.finish(&mut |data| state.event(data));
        (self.state.usage(), self.state.model)
    }
}

/// What has been read from the events so far.
#[derive(Debug, Clone, Default)]
pub(crate) struct ScanState {
    usage: Option<RawUsage>,
    model: Option<String>,
}

impl ScanState {
    /// Reads one event's data (or a whole JSON body).
    pub(crate) fn event(&mut self, data: &[u8]) {
        if data == b"[DONE]" {
            return;
        }
        // Most events of a stream are text deltas: once the model is known,
        // only an event that mentions usage can tell anything new.
        if self.model.is_some() && !contains(data, b"\"usage\"") {
            return;
        }
        let Some([usage, model, message, response]) =
            pick_fields(data, ["usage", "model", "message", "response"])
        else {
            return;
        };
        self.absorb(usage.as_ref(), model.as_ref());
        for nested in [message, response].iter().flatten() {
            if let Value::Object(object) = nested {
                self.absorb(object.get("usage"), object.get("model"));
            }
        }
    }

    fn absorb(&mut self, usage: Option<&Value>, model: Option<&Value>) {
        if let Some(raw) = usage.and_then(RawUsage::from_value) {
            match &mut self.usage {
                Some(current) => current.merge(&raw),
                None => self.usage = Some(raw),
            }
        }
        if self.model.is_none() {
            self.model = non_empty_string(model).map(str::to_owned);
        }
    }

    pub(crate) fn usage(&self) -> Option<Usage> {
        self.usage.as_ref().map(RawUsage::normalise)
    }

    pub(crate) fn into_model(self) -> Option<String> {
        self.model
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || haystack
            .windows(needle.len())
            .any(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(body: &[u8]) -> (Option<Usage>, Option<String>) {
        let mut scanner = UsageScanner::new();
        scanner.feed(body);
        scanner.finish_with_model()
    }

    #[test]
    fn done_and_garbage_events_are_ignored() {
        let (usage, model) = scan(b"data: [DONE]\n\ndata: {not json\n\ndata: [1]\n\n");
        assert_eq!((usage, model), (None, None));
    }

    #[test]
    fn last_openai_usage_wins() {
        let body = b"data: {\"model\":\"m\",\"usage\":null}\n\n\
            data: {\"model\":\"m\",\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n\
            data: {\"model\":\"m\",\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":9}}\n\n\
            data: [DONE]\n\n";
        let (usage, model) = scan(body);
        assert_eq!(model.as_deref(), Some("m"));
        assert_eq!(
            usage,
            Some(Usage {
                input_tokens: 3,
                output_tokens: 9,
                ..Usage::default()
            })
        );
    }

    #[test]
    fn newer_anthropic_message_delta_with_input_counts() {
        let body = br#"event: message_start
data: {"type":"message_start","message":{"model":"claude-sonnet-4-5","usage":{"input_tokens":472,"cache_creation_input_tokens":0,"cache_read_input_tokens":2048,"output_tokens":2}}}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"input_tokens":480,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":89,"server_tool_use":{"web_search_requests":1}}}

event: message_stop
data: {"type":"message_stop"}

"#;
        let (usage, model) = scan(body);
        assert_eq!(model.as_deref(), Some("claude-sonnet-4-5"));
        assert_eq!(
            usage,
            Some(Usage {
                input_tokens: 480 + 2048,
                output_tokens: 89,
                cached_input_tokens: 2048,
                cache_creation_input_tokens: 0,
            })
        );
    }

    #[test]
    fn error_event_with_string_message_does_not_break_anything() {
        let body = b"data: {\"type\":\"error\",\"message\":\"boom\",\"code\":null}\n\n";
        assert_eq!(scan(body), (None, None));
    }

    #[test]
    fn usage_so_far_and_model_so_far() {
        let mut scanner = UsageScanner::new();
        scanner.feed(b"data: {\"model\":\"a\",\"usage\":{\"prompt_tokens\":1}}\n");
        assert_eq!(scanner.usage(), None);
        assert_eq!(scanner.model(), None);
        scanner.feed(b"\n");
        assert_eq!(scanner.model(), Some("a"));
        assert_eq!(scanner.usage().map(|u| u.input_tokens), Some(1));
    }

    #[test]
    fn over_long_event_is_skipped() {
        let mut scanner = UsageScanner::with_max_line_len(40);
        scanner.feed(b"data: {\"usage\":{\"prompt_tokens\":1},\"pad\":\"xxxxxxxxxxxxx\"}\n\n");
        scanner.feed(b"data: {\"usage\":{\"output_tokens\":2}}\n\n");
        assert_eq!(
            scanner.finish(),
            Some(Usage {
                output_tokens: 2,
                ..Usage::default()
            })
        );
    }
}
