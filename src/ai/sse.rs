//! An incremental, bounded-memory parser for `text/event-stream` bodies.
//!
//! Framing follows the WHATWG HTML "event stream interpretation": lines end in
//! `\n`, `\r\n` or `\r`; a leading UTF-8 byte order mark is dropped; lines
//! starting with `:` are comments; a line is split at its first `:` into a
//! field name and a value (one space after the colon is dropped; a line without
//! a colon is a field name with an empty value); the values of an event's
//! `data` fields are joined with `\n`; an empty line dispatches the event, and
//! an event whose data buffer is empty is not dispatched. Other fields
//! (`event`, `id`, `retry`) are not needed here and are ignored.
//!
//! Two deliberate differences, both for accounting of truncated or sloppy
//! streams:
//! * at [`SseParser::finish`] a last line without a line ending is processed
//!   and a pending event is dispatched (the spec discards it);
//! * a line longer than the limit is skipped, and the event it belongs to is
//!   dropped, so memory stays bounded: the current line and the current
//!   event's data each hold at most the limit.

/// The default limit of one line and of one event's data: 1 MiB.
pub(crate) const DEFAULT_MAX_LINE_LEN: usize = 1 << 20;

/// Splits a byte stream into event data payloads.
#[derive(Debug, Clone)]
pub(crate) struct SseParser {
    /// The current, not yet terminated line.
    line: Vec<u8>,
    /// The current line went over `max_len`; skip it up to its line ending.
    line_too_long: bool,
    /// The data of the current event, each `data` value followed by `\n`.
    data: Vec<u8>,
    /// The current event lost a line or its data went over `max_len`.
    event_spoiled: bool,
    /// The previous chunk ended in `\r`: a `\n` at the start of the next chunk
    /// belongs to that line ending.
    pending_cr: bool,
    /// No line has been processed yet (for the byte order mark).
    at_start: bool,
    max_len: usize,
}

impl Default for SseParser {
    fn default() -> Self {
        SseParser::new(DEFAULT_MAX_LINE_LEN)
    }
}

impl SseParser {
    /// A parser that skips lines, and drops events whose data is, longer than
    /// `max_len` bytes.
    pub(crate) fn new(max_len: usize) -> Self {
        SseParser {
            line: Vec::new(),
            line_too_long: false,
            data: Vec::new(),
            event_spoiled: false,
            pending_cr: false,
            at_start: true,
            max_len,
        }
    }

    /// Feeds the next bytes of the stream; `on_event` gets the data of every
    /// event completed by them.
    pub(crate) fn feed(&mut self, mut chunk: &[u8], on_event: &mut impl FnMut(&[u8])) {
        if self.pending_cr {
            match chunk.split_first() {
                None => return,
                Some((b'\n', rest)) => chunk = rest,
                Some(_) => {}
            }
            self.pending_cr = false;
        }
        while let Some(end) = chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.push(&chunk[..end]);
            self.end_line(on_event);
            let after = &chunk[end + 1..];
            chunk = if chunk[end] == b'\r' {
                match after.split_first() {
                    Some((b'\n', rest)) => rest,
                    Some(_) => after,
                    None => {
                        self.pending_cr = true;
                        after
                    }
                }
            } else {
                after
            };
        }
        self.push(chunk);
    }

    /// Ends the stream: processes a last unterminated line and dispatches a
    /// pending event.
    pub(crate) fn finish(&mut self, on_event: &mut impl FnMut(&[u8])) {
        if !self.line.is_empty() || self.line_too_long {
            self.end_line(on_event);
        }
        self.dispatch(on_event);
        self.pending_cr = false;
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.line_too_long || bytes.is_empty() {
            return;
        }
        if self.line.len().saturating_add(bytes.len()) > self.max_len {
            self.line_too_long = true;
            self.line.clear();
            self.line.shrink_to(self.max_len);
        } else {
            extend_bounded(&mut self.line, bytes, 0, self.max_len);
        }
    }

    fn end_line(&mut self, on_event: &mut impl FnMut(&[u8])) {
        let at_start = std::mem::replace(&mut self.at_start, false);
        if std::mem::take(&mut self.line_too_long) {
            self.event_spoiled = true;
            return;
        }
        let line = std::mem::take(&mut self.line);
        let mut bytes = line.as_slice();
        if at_start {
            bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        }
        if bytes.is_empty() {
            self.dispatch(on_event);
        } else if bytes[0] != b':' {
            let (field, value) = match bytes.iter().position(|&b| b == b':') {
                Some(colon) => {
                    let value = &bytes[colon + 1..];
                    (&bytes[..colon], value.strip_prefix(b" ").unwrap_or(value))
                }
                None => (bytes, &[][..]),
            };
            if field == b"data" {
                self.append_data(value);
            }
        }
        // Reuse the allocation for the next line.
        self.line = line;
        self.line.clear();
    }

    fn append_data(&mut self, value: &[u8]) {
        if self.event_spoiled {
            return;
        }
        if self.data.len().saturating_add(value.len()) >= self.max_len {
            self.event_spoiled = true;
            self.data.clear();
            self.data.shrink_to(self.max_len);
        } else {
            extend_bounded(&mut self.data, value, 1, self.max_len);
            self.data.push(b'\n'); // within the capacity: len + value + 1 <= max_len
        }
    }

    fn dispatch(&mut self, on_event: &mut impl FnMut(&[u8])) {
        if !std::mem::take(&mut self.event_spoiled) && !self.data.is_empty() {
            let end = self.data.len() - 1; // drop the last `\n`
            on_event(&self.data[..end]);
        }
        self.data.clear();
    }
}

/// Appends `bytes`, leaving room for `spare` more bytes, growing the capacity
/// by doubling as `Vec` does but never beyond `max`, so a buffer never takes
/// more than `max` bytes of memory. The caller checks that the result fits.
fn extend_bounded(buf: &mut Vec<u8>, bytes: &[u8], spare: usize, max: usize) {
    let needed = buf.len().saturating_add(bytes.len()).saturating_add(spare);
    if needed > buf.capacity() {
        let target = buf.capacity().saturating_mul(2).min(max).max(needed);
        buf.reserve_exact(target - buf.len());
    }
    buf.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events_with(max_len: usize, chunks: &[&[u8]]) -> Vec<String> {
        let mut parser = SseParser::new(max_len);
        let mut out = Vec::new();
        let mut on_event = |data: &[u8]| out.push(String::from_utf8_lossy(data).into_owned());
        for chunk in chunks {
            parser.feed(chunk, &mut on_event);
        }
        parser.finish(&mut on_event);
        out
    }

    fn events(chunks: &[&[u8]]) -> Vec<String> {
        events_with(DEFAULT_MAX_LINE_LEN, chunks)
    }

    #[test]
    fn basic_events() {
        assert_eq!(
            events(&[b"event: a\ndata: one\n\ndata:two\n\n"]),
            ["one", "two"]
        );
    }

    #[test]
    fn multi_line_data_is_joined_with_lf() {
        assert_eq!(
            events(&[b"data: a\ndata:  b\ndata\ndata:\n\n"]),
            ["a\n b\n\n"]
        );
    }

    #[test]
    fn all_line_endings() {
        let expected = ["x", "y", "z"];
        assert_eq!(
            events(&[b"data: x\r\n\r\ndata: y\r\rdata: z\n\n"]),
            expected
        );
        // A CR at a chunk's end followed by LF at the next one's start is one line ending.
        assert_eq!(
            events(&[b"data: x\r", b"\n\r", b"\n", b"data: y\r", b"\r"]),
            ["x", "y"]
        );
        // Empty chunks between CR and LF don't split the line ending.
        assert_eq!(events(&[b"data: x\r", b"", b"\ndata: y\n\n"]), ["x\ny"]);
    }

    #[test]
    fn comments_and_other_fields_are_ignored() {
        assert_eq!(
            events(&[b": keep-alive\nid: 7\nretry: 10\nevent: ping\ndata: p\n\n: x\n\n"]),
            ["p"]
        );
    }

    #[test]
    fn event_without_data_is_not_dispatched() {
        assert!(events(&[b"event: ping\n\n\n\n"]).is_empty());
    }

    #[test]
    fn bom_only_at_start() {
        assert_eq!(events(&[b"\xEF\xBB\xBFdata: a\n\n"]), ["a"]);
        assert_eq!(events(&[b"\xEF\xBB", b"\xBFdata: a\n\n"]), ["a"]);
        assert!(events(&[b"\n\xEF\xBB\xBFdata: a\n\n"]).is_empty());
    }

    #[test]
    fn unterminated_end_is_dispatched_on_finish() {
        assert_eq!(events(&[b"data: a\n\ndata: b"]), ["a", "b"]);
        assert_eq!(events(&[b"data: a\n"]), ["a"]);
    }

    #[test]
    fn over_long_lines_spoil_their_event_only() {
        assert_eq!(
            events_with(8, &[b"data: 0123456789\ndata: b\n\ndata: ok\n\n"]),
            ["ok"]
        );
        assert_eq!(
            events_with(8, &[b"data: 01", b"23456789", b"\n\ndata: ok\n\n"]),
            ["ok"]
        );
        // Joined data over the limit is dropped as well.
        assert_eq!(
            events_with(8, &[b"data:ab\ndata:cd\ndata:ef\n\ndata:ok\n\n"]),
            ["ok"]
        );
        // A long comment line spoils nothing it does not belong to.
        assert_eq!(events_with(8, &[b": 0123456789\n\ndata:ok\n\n"]), ["ok"]);
    }

    #[test]
    fn buffers_stay_within_the_limit() {
        let max = 1000;
        let mut parser = SseParser::new(max);
        let mut seen = Vec::new();
        let line = [b"data: ".as_slice(), &[b'x'; 900]].concat();
        for chunk in line.chunks(7) {
            parser.feed(chunk, &mut |_| ());
            assert!(parser.line.capacity() <= max, "{}", parser.line.capacity());
        }
        parser.feed(b"\n", &mut |_| ());
        parser.feed(b"data: y\n\n", &mut |data| seen.push(data.len()));
        assert!(parser.data.capacity() <= max, "{}", parser.data.capacity());
        assert_eq!(seen, [902]);
        parser.feed(&[b'z'; 5000], &mut |_| ());
        assert!(parser.line.capacity() <= max);
    }

    #[test]
    fn byte_by_byte_equals_all_at_once() {
        let stream: &[u8] = b"\xEF\xBB\xBFdata: a\r\ndata: b\r\r: c\rdata: d\n\ndata: e";
        let whole = events(&[stream]);
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(events(&bytes), whole);
        assert_eq!(whole, ["a\nb", "d", "e"]);
    }
}
