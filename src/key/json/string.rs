//! String literals: finding their end, comparing member names without
//! decoding them, decoding escapes as `serde_json` does, and writing a
//! string as `serde_json` writes it.

use std::io;

use super::{error, Sink};

/// Where the (valid) string literal starting at `start` ends, just past its
/// closing quote.
pub(super) fn name_end(text: &[u8], start: usize) -> usize {
    let mut pos = start + 1;
    loop {
        let Some(at) = special(text.get(pos..).unwrap_or_default()) else {
            return text.len();
        };
        pos += at;
        match text.get(pos) {
            Some(b'\\') => pos += 2,
            _ => return pos + 1,
        }
    }
}

/// Orders two member names (string literals starting at `a` and `b`) by
/// their decoded values, in the byte order of UTF-8 (which is the order of
/// their characters), without allocating.
pub(super) fn compare_names(text: &[u8], a: usize, b: usize) -> std::cmp::Ordering {
    let inner = |start: usize| {
        let end = name_end(text, start);
        text.get(start + 1..end.saturating_sub(1))
            .unwrap_or_default()
    };
    let (a, b) = (inner(a), inner(b));
    if !a.contains(&b'\\') && !b.contains(&b'\\') {
        return a.cmp(b);
    }
    Chars(a).cmp(Chars(b))
}

/// The characters of a (validated) string literal's content, escapes decoded.
/// A lone surrogate, which validation has already refused where it matters,
/// reads as U+FFFD.
struct Chars<'a>(&'a [u8]);

impl Iterator for Chars<'_> {
    type Item = char;

    fn next(&mut self) -> Option<char> {
        let bytes = self.0;
        let first = *bytes.first()?;
        let (c, len) = match first {
            b'\\' => {
                let unit = |at: usize| hex4(bytes.get(at..at + 4));
                match bytes.get(1) {
                    Some(b'b') => ('\u{8}', 2),
                    Some(b'f') => ('\u{c}', 2),
                    Some(b'n') => ('\n', 2),
                    Some(b'r') => ('\r', 2),
                    Some(b't') => ('\t', 2),
                    Some(b'u') => match unit(2) {
                        Some(high @ 0xD800..=0xDBFF)
                            if bytes.get(6..8) == Some(b"\\u")
                                && unit(8).is_some_and(|low| (0xDC00..=0xDFFF).contains(&low)) =>
                        {
                            let low = unit(8).unwrap_or(0xDC00);
                            let code = 0x1_0000 + ((high - 0xD800) << 10) + (low - 0xDC00);
                            (char::from_u32(code).unwrap_or('\u{fffd}'), 12)
                        }
                        Some(code) => (char::from_u32(code).unwrap_or('\u{fffd}'), 6),
                        None => ('\u{fffd}', 2),
                    },
                    Some(&escaped) => (char::from(escaped), 2),
                    None => ('\u{fffd}', 1),
                }
            }
            _ => {
                // One UTF-8 character: the input is valid UTF-8.
                let len = match first {
                    0x00..=0x7F => 1,
                    0xC0..=0xDF => 2,
                    0xE0..=0xEF => 3,
                    _ => 4,
                };
                let c = bytes
                    .get(..len)
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .and_then(|s| s.chars().next())
                    .unwrap_or('\u{fffd}');
                (c, len)
            }
        };
        self.0 = bytes.get(len..).unwrap_or_default();
        Some(c)
    }
}

/// Where the first quote or backslash in `bytes` is, if any: `memchr2`,
/// which compares 16 or 32 bytes an instruction where the CPU can.
pub(super) fn special(bytes: &[u8]) -> Option<usize> {
    memchr::memchr2(b'"', b'\\', bytes)
}

/// Whether `bytes` holds a control character (below 0x20), which a string
/// may not hold as it is. Folds 32 bytes at a time without branching, which
/// the compiler turns into vector compares.
pub(super) fn has_control(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(32);
    let found = (&mut chunks).fold(false, |found, chunk| {
        found | chunk.iter().fold(false, |found, &b| found | (b < 0x20))
    });
    found || chunks.remainder().iter().any(|&b| b < 0x20)
}

/// The value of four hex digits (either case), if they are four hex digits.
pub(super) fn hex4(hex: Option<&[u8]>) -> Option<u32> {
    let hex = hex?;
    if hex.len() != 4 {
        return None;
    }
    hex.iter().try_fold(0u32, |value, &b| {
        Some((value << 4) | char::from(b).to_digit(16)?)
    })
}

/// Decodes a string literal (quotes included) as `serde_json` decodes one into
/// a `String`: a `\u` escape of a surrogate must be a leading surrogate
/// followed at once by a `\u` escape of a trailing one.
pub(super) fn decode(literal: &str) -> serde_json::Result<String> {
    let invalid = || error("invalid escape");
    let mut rest = literal
        .get(1..literal.len().saturating_sub(1))
        .ok_or_else(invalid)?;
    let mut value = String::with_capacity(rest.len());
    while let Some(at) = rest.find('\\') {
        value.push_str(rest.get(..at).ok_or_else(invalid)?);
        let escape = rest.get(at + 1..).ok_or_else(invalid)?.as_bytes();
        let (c, len) = match escape.first() {
            Some(b'"') => ('"', 1),
            Some(b'\\') => ('\\', 1),
            Some(b'/') => ('/', 1),
            Some(b'b') => ('\u{8}', 1),
            Some(b'f') => ('\u{c}', 1),
            Some(b'n') => ('\n', 1),
            Some(b'r') => ('\r', 1),
            Some(b't') => ('\t', 1),
            Some(b'u') => {
                let unit = hex4(escape.get(1..5)).ok_or_else(invalid)?;
                match unit {
                    0xDC00..=0xDFFF => return Err(error("lone trailing surrogate in \\u escape")),
                    0xD800..=0xDBFF => {
                        let lone = || error("lone leading surrogate in \\u escape");
                        if escape.get(5..7) != Some(b"\\u") {
                            return Err(lone());
                        }
                        let low = hex4(escape.get(7..11)).ok_or_else(invalid)?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return Err(lone());
                        }
                        let code = 0x1_0000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                        (char::from_u32(code).ok_or_else(lone)?, 11)
                    }
                    _ => (char::from_u32(unit).ok_or_else(invalid)?, 5),
                }
            }
            _ => return Err(invalid()),
        };
        value.push(c);
        rest = rest.get(at + 1 + len..).ok_or_else(invalid)?;
    }
    value.push_str(rest);
    Ok(value)
}

pub(super) fn write_string(value: &str, out: &mut impl Sink) -> serde_json::Result<()> {
    serde_json::to_writer(SinkWriter(out), value)
}

/// Lets `serde_json` write into a [`Sink`].
struct SinkWriter<'a, S>(&'a mut S);

impl<S: Sink> io::Write for SinkWriter<'_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.put(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
