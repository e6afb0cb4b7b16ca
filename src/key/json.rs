//! Canonical JSON: object keys sorted, insignificant white space dropped,
//! values untouched.
//!
//! Numbers, `true`, `false` and `null` are copied byte for byte from the
//! input (so `1`, `1.0` and `1e0` stay different, and integers of any size
//! keep every digit). Strings are written as `serde_json` writes them, so
//! `"\u0041"` and `"A"` are the same string. Object keys are sorted by their
//! decoded value, in the byte order of UTF-8 (the order of
//! `BTreeMap<String, _>`). Duplicate object keys keep the last value, as
//! `serde_json` does. Ignored fields ([`IgnoreFields`]) are left out.
//!
//! # Algorithm
//!
//! One pass over the input bytes ([`scan`]) validates the document (RFC 8259,
//! as strict as `serde_json`) and records a span for every value and key in
//! pre-order: its kind, its byte range and the index of the span after its
//! subtree, so a container's children are found by hopping from one to the
//! next. The scan is iterative (its stack of open containers is on the heap),
//! so no nesting can exhaust the thread's stack, and it classifies each string
//! as it goes: without a backslash, with only the escapes `serde_json` writes
//! (`\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, and lower-case `\u00xx` for other
//! control characters), or with other escapes.
//!
//! A second, recursive walk over the spans ([`Doc::write`]) writes the
//! canonical form. Numbers, literals and strings of the first two classes are
//! copied from the input as they are (they are already what `serde_json`
//! writes); other strings are decoded and re-escaped. An object's keys are
//! borrowed when they have no backslash and decoded otherwise, sorted stably,
//! and of equal keys only the last is written.
//!
//! # Guarantees
//!
//! - Linear: the scan looks at each byte a bounded number of times, the walk
//!   visits each span once and sorts each object's keys once (`n log n` in the
//!   members of that object). Spans take 16 bytes each, and there are at most
//!   about half as many spans as input bytes. Inputs of 4 GiB or more are
//!   refused (spans store `u32` offsets).
//! - Bounded recursion: the walk descends into at most [`MAX_DEPTH`] nested
//!   containers and fails past that; the scan does not recurse.
//! - Exactly the documents the former `serde_json`-based walk accepted are
//!   accepted, with the same output (the tests check this differentially).
//!   In particular, strings and keys that are written must not hold lone
//!   surrogates in `\u` escapes (`serde_json` refuses them when decoding to a
//!   `String`), while ignored subtrees are only checked for syntax, and the
//!   depth limit applies only to what is written, as before.
//! - Never panics: every access to the input and to the spans is checked.

use std::{borrow::Cow, collections::BTreeMap, io, sync::Arc};

use super::Sink;
/// Dotted paths of JSON object fields to leave out of the key, such as
/// `user` or `metadata.request_id`. Arrays are transparent: `messages.name`
/// drops `name` from every element of `messages`.
#[derive(Clone, Debug, Default)]
pub(crate) struct IgnoreFields(Option<Arc<Node>>);

#[derive(Debug, Default)]
struct Node {
    /// `None`: this field is ignored whole; `Some`: only some of its children.
    children: BTreeMap<String, Option<Node>>,
}

impl IgnoreFields {
    pub(crate) fn new<I, S>(paths: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut root = Node::default();
        for path in paths {
            let segments: Vec<&str> = path.as_ref().split('.').collect();
            if segments.iter().any(|s| s.is_empty()) {
                continue;
            }
            root.insert(&segments);
        }
        if root.children.is_empty() {
            Self(None)
        } else {
            Self(Some(Arc::new(root)))
        }
    }

    fn root(&self) -> Option<&Node> {
        self.0.as_deref()
    }
}

impl Node {
    fn insert(&mut self, segments: &[&str]) {
        let Some((first, rest)) = segments.split_first() else {
            return;
        };
        if rest.is_empty() {
            // The whole field is ignored, whatever was said of its children.
            self.children.insert((*first).to_owned(), None);
            return;
        }
        // A field already ignored whole stays so.
        if let Some(child) = self
            .children
            .entry((*first).to_owned())
            .or_insert_with(|| Some(Node::default()))
        {
            child.insert(rest);
        }
    }
}

/// Writes the canonical form of `input` into `out`, or fails when `input` is
/// not one valid JSON document, or nests deeper than [`MAX_DEPTH`] (in which
/// case `out` holds garbage).
pub(crate) fn canonicalize(
    input: &[u8],
    ignore: &IgnoreFields,
    out: &mut impl Sink,
) -> serde_json::Result<()> {
    let text = std::str::from_utf8(input).map_err(|_| error("a JSON document is UTF-8"))?;
    let spans = scan(text.as_bytes())?;
    Doc {
        text,
        spans: &spans,
    }
    .write(0, ignore.root(), MAX_DEPTH, out)
}

/// How deep containers may nest in what is written: `serde_json`'s own limit.
/// A deeper document is not canonicalised (its body is hashed raw), and the
/// recursive walk never goes deeper than this.
const MAX_DEPTH: usize = 128;

fn error(reason: &'static str) -> serde_json::Error {
    <serde_json::Error as serde::de::Error>::custom(reason)
}

/// One value or object key of the document, in pre-order.
#[derive(Clone, Copy, Debug)]
struct Span {
    /// Byte offset of its first byte (a string's opening quote).
    start: u32,
    /// Byte offset just past its last byte (a string's closing quote).
    end: u32,
    /// Index of the span after this one's subtree: its next sibling, or the
    /// end of its parent's children.
    next: u32,
    kind: Kind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A number, `true`, `false` or `null`: copied as it is.
    Verbatim,
    /// A string without any backslash.
    Plain,
    /// A string whose escapes are all those `serde_json` writes.
    Canonical,
    /// A string with some other escape (`\/`, `\u0041`, `\u00E9`, …).
    Escaped,
    Array,
    Object,
}

/// Validates `bytes` as one JSON document and returns its spans in pre-order
/// (the root first).
fn scan(bytes: &[u8]) -> serde_json::Result<Vec<Span>> {
    if u32::try_from(bytes.len()).is_err() {
        return Err(error("json too large to canonicalise"));
    }
    let mut scanner = Scanner {
        bytes,
        pos: 0,
        spans: Vec::new(),
    };
    // Indices of the containers still open, innermost last.
    let mut open: Vec<usize> = Vec::new();
    scanner.skip_whitespace();
    'value: loop {
        // A value starts here (white space already skipped).
        match scanner.peek() {
            Some(b'{') => {
                open.push(scanner.open(Kind::Object));
                if scanner.peek() != Some(b'}') {
                    scanner.key()?;
                    continue 'value;
                }
            }
            Some(b'[') => {
                open.push(scanner.open(Kind::Array));
                if scanner.peek() != Some(b']') {
                    continue 'value;
                }
            }
            Some(b'"') => scanner.string()?,
            Some(b'-' | b'0'..=b'9') => scanner.number()?,
            Some(b't') => scanner.literal(b"true")?,
            Some(b'f') => scanner.literal(b"false")?,
            Some(b'n') => scanner.literal(b"null")?,
            _ => return Err(error("expected a JSON value")),
        }
        // After a value, or before the closing bracket of an empty container:
        // close containers until one has another value to come.
        loop {
            scanner.skip_whitespace();
            let Some(&top) = open.last() else {
                return if scanner.pos == bytes.len() {
                    Ok(scanner.spans)
                } else {
                    Err(error("trailing characters after the JSON document"))
                };
            };
            let kind = scanner.spans.get(top).map(|span| span.kind);
            match (kind, scanner.peek()) {
                (Some(Kind::Array), Some(b']')) | (Some(Kind::Object), Some(b'}')) => {
                    scanner.pos += 1;
                    let end = scanner.offset();
                    let next = scanner.index();
                    let span = scanner
                        .spans
                        .get_mut(top)
                        .ok_or_else(|| error("unbalanced json"))?;
                    span.end = end;
                    span.next = next;
                    open.pop();
                }
                (Some(Kind::Array), Some(b',')) => {
                    scanner.pos += 1;
                    scanner.skip_whitespace();
                    continue 'value;
                }
                (Some(Kind::Object), Some(b',')) => {
                    scanner.pos += 1;
                    scanner.skip_whitespace();
                    scanner.key()?;
                    continue 'value;
                }
                _ => return Err(error("expected `,` or the end of a container")),
            }
        }
    }
}

struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
    spans: Vec<Span>,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// The current position as a span offset (the input is under 4 GiB).
    fn offset(&self) -> u32 {
        u32::try_from(self.pos).unwrap_or(u32::MAX)
    }

    /// The index the next span will have (fewer spans than input bytes).
    fn index(&self) -> u32 {
        u32::try_from(self.spans.len()).unwrap_or(u32::MAX)
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.pos += 1;
        }
    }

    /// Records a scalar span from `start` to the current position.
    fn push(&mut self, start: usize, kind: Kind) {
        let next = self.index().saturating_add(1);
        self.spans.push(Span {
            start: u32::try_from(start).unwrap_or(u32::MAX),
            end: self.offset(),
            next,
            kind,
        });
    }

    /// Opens a container at its bracket: records its span (completed when it
    /// closes), steps past the bracket and white space, and returns its index.
    fn open(&mut self, kind: Kind) -> usize {
        let index = self.spans.len();
        self.spans.push(Span {
            start: self.offset(),
            end: self.offset(),
            next: self.index(),
            kind,
        });
        self.pos += 1;
        self.skip_whitespace();
        index
    }

    /// An object key, its colon and the white space around it.
    fn key(&mut self) -> serde_json::Result<()> {
        if self.peek() != Some(b'"') {
            return Err(error("key must be a string"));
        }
        self.string()?;
        self.skip_whitespace();
        if self.peek() != Some(b':') {
            return Err(error("expected `:`"));
        }
        self.pos += 1;
        self.skip_whitespace();
        Ok(())
    }

    /// A string, from its opening quote. Validates it as `serde_json` does a
    /// string it does not decode (control characters and unknown escapes are
    /// errors; `\u` escapes need four hex digits, surrogates are not paired
    /// here but when the string is decoded).
    fn string(&mut self) -> serde_json::Result<()> {
        let start = self.pos;
        self.pos += 1;
        let mut escaped = false;
        let mut canonical = true;
        loop {
            self.pos += plain_run(self.bytes.get(self.pos..).unwrap_or_default());
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    escaped = true;
                    match self.bytes.get(self.pos + 1) {
                        Some(b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't') => self.pos += 2,
                        Some(b'/') => {
                            canonical = false;
                            self.pos += 2;
                        }
                        Some(b'u') => {
                            let hex = self.bytes.get(self.pos + 2..self.pos + 6);
                            let code = hex4(hex).ok_or_else(|| error("invalid \\u escape"))?;
                            let lower = hex.is_some_and(|hex| {
                                hex.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                            });
                            let short_form = matches!(code, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d);
                            if !lower || code >= 0x20 || short_form {
                                canonical = false;
                            }
                            self.pos += 6;
                        }
                        _ => return Err(error("invalid escape")),
                    }
                }
                Some(_) => return Err(error("control character while parsing a string")),
                None => return Err(error("EOF while parsing a string")),
            }
        }
        let kind = match (escaped, canonical) {
            (false, _) => Kind::Plain,
            (true, true) => Kind::Canonical,
            (true, false) => Kind::Escaped,
        };
        self.push(start, kind);
        Ok(())
    }

    /// A number: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> serde_json::Result<()> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(error("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(error("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(error("invalid number"));
            }
        }
        self.push(start, Kind::Verbatim);
        Ok(())
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    fn literal(&mut self, word: &[u8]) -> serde_json::Result<()> {
        let start = self.pos;
        if self.bytes.get(start..start + word.len()) != Some(word) {
            return Err(error("expected a JSON value"));
        }
        self.pos += word.len();
        self.push(start, Kind::Verbatim);
        Ok(())
    }
}

/// How many bytes at the start of `bytes` may stand in a string as they
/// are: up to the first quote, backslash or control character (or the end).
/// Eight bytes at a time, with the usual bit tricks: `v - 0x01…01 & !v &
/// 0x80…80` marks the zero bytes of `v`, and the lowest mark is exact.
fn plain_run(bytes: &[u8]) -> usize {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let mut run = 0;
    for chunk in bytes.chunks_exact(8) {
        let Ok(word) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let word = u64::from_le_bytes(word);
        let marks = zero(word ^ (ONES * u64::from(b'"')))
            | zero(word ^ (ONES * u64::from(b'\\')))
            // Bytes below 0x20.
            | (word.wrapping_sub(ONES * 0x20) & !word & HIGHS);
        if marks != 0 {
            return run + (marks.trailing_zeros() / 8) as usize;
        }
        run += 8;
    }
    let tail = bytes.get(run..).unwrap_or_default();
    run + tail
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .unwrap_or(tail.len())
}

/// The value of four hex digits (either case), if they are four hex digits.
fn hex4(hex: Option<&[u8]>) -> Option<u32> {
    let hex = hex?;
    if hex.len() != 4 {
        return None;
    }
    hex.iter().try_fold(0u32, |value, &b| {
        Some((value << 4) | char::from(b).to_digit(16)?)
    })
}

/// The scanned document: its text and spans.
struct Doc<'a> {
    text: &'a str,
    spans: &'a [Span],
}

impl<'a> Doc<'a> {
    fn span(&self, index: usize) -> serde_json::Result<Span> {
        self.spans
            .get(index)
            .copied()
            .ok_or_else(|| error("json span out of range"))
    }

    /// The text of a span.
    fn text(&self, span: Span) -> serde_json::Result<&'a str> {
        self.text
            .get(span.start as usize..span.end as usize)
            .ok_or_else(|| error("json span out of range"))
    }

    /// The index after `index`'s subtree, checked to move forward (so no walk
    /// can loop).
    fn next(&self, index: usize) -> serde_json::Result<usize> {
        let next = self.span(index)?.next as usize;
        if next <= index {
            return Err(error("json span out of order"));
        }
        Ok(next)
    }

    /// The decoded value of a key: borrowed when it has no escape.
    fn key(&self, span: Span) -> serde_json::Result<Cow<'a, str>> {
        let literal = self.text(span)?;
        if span.kind == Kind::Plain {
            let inner = literal
                .get(1..literal.len().saturating_sub(1))
                .ok_or_else(|| error("json span out of range"))?;
            Ok(Cow::Borrowed(inner))
        } else {
            decode(literal).map(Cow::Owned)
        }
    }

    /// Writes the canonical form of the value at `index`, with at most
    /// `depth` more containers nested in it.
    fn write(
        &self,
        index: usize,
        ignore: Option<&Node>,
        depth: usize,
        out: &mut impl Sink,
    ) -> serde_json::Result<()> {
        let span = self.span(index)?;
        match span.kind {
            // Already canonical: as it is.
            Kind::Verbatim | Kind::Plain | Kind::Canonical => out.put(self.text(span)?.as_bytes()),
            Kind::Escaped => write_string(&decode(self.text(span)?)?, out)?,
            Kind::Array => {
                let depth = depth.checked_sub(1).ok_or_else(too_deep)?;
                let end = self.next(index)?;
                out.put(b"[");
                let mut child = index + 1;
                while child < end {
                    if child > index + 1 {
                        out.put(b",");
                    }
                    self.write(child, ignore, depth, out)?;
                    child = self.next(child)?;
                }
                out.put(b"]");
            }
            Kind::Object => {
                let depth = depth.checked_sub(1).ok_or_else(too_deep)?;
                let end = self.next(index)?;
                // (decoded key, index of the key's span; its value is next.)
                let mut members: Vec<(Cow<'a, str>, usize)> = Vec::new();
                let mut child = index + 1;
                while child < end {
                    members.push((self.key(self.span(child)?)?, child));
                    // Past the key, then past its value.
                    child = self.next(self.next(child)?)?;
                }
                // Stable: equal keys stay in document order, the last wins.
                members.sort_by(|a, b| a.0.cmp(&b.0));
                out.put(b"{");
                let mut first = true;
                for (i, (name, key)) in members.iter().enumerate() {
                    if members.get(i + 1).is_some_and(|later| later.0 == *name) {
                        continue;
                    }
                    let child = match ignore.and_then(|node| node.children.get(name.as_ref())) {
                        Some(None) => continue,
                        Some(Some(node)) => Some(node),
                        None => None,
                    };
                    if !first {
                        out.put(b",");
                    }
                    first = false;
                    let key_span = self.span(*key)?;
                    match key_span.kind {
                        Kind::Plain | Kind::Canonical => out.put(self.text(key_span)?.as_bytes()),
                        _ => write_string(name, out)?,
                    }
                    out.put(b":");
                    self.write(key + 1, child, depth, out)?;
                }
                out.put(b"}");
            }
        }
        Ok(())
    }
}

fn too_deep() -> serde_json::Error {
    error("json too deep to canonicalise")
}

/// Decodes a string literal (quotes included) as `serde_json` decodes one into
/// a `String`: a `\u` escape of a surrogate must be a leading surrogate
/// followed at once by a `\u` escape of a trailing one.
fn decode(literal: &str) -> serde_json::Result<String> {
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

fn write_string(value: &str, out: &mut impl Sink) -> serde_json::Result<()> {
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

/// The former implementation, kept as the oracle of the differential tests:
/// every nesting level re-parses its subtree through `serde_json`'s
/// [`RawValue`], within a budget of 16 times the input.
#[cfg(test)]
mod reference {
    use std::collections::BTreeMap;

    use serde_json::value::RawValue;

    use super::{write_string, IgnoreFields, Node, Sink};

    /// Writes the canonical form of `input` into `out`, or fails when `input` is
    /// not one valid JSON document (in which case `out` holds garbage).
    pub(super) fn canonicalize(
        input: &[u8],
        ignore: &IgnoreFields,
        out: &mut impl Sink,
    ) -> serde_json::Result<()> {
        let text = std::str::from_utf8(input).map_err(|_| {
            <serde_json::Error as serde::de::Error>::custom("a JSON document is UTF-8")
        })?;
        // The root is parsed straight into its members (which validates the
        // whole document, trailing bytes included) rather than first as a raw
        // value: one scan less of the whole body.
        let mut walk = Walk {
            depth: MAX_DEPTH,
            budget: (input.len() * SCAN_BUDGET).max(MIN_BUDGET),
        };
        match text.trim_start().as_bytes().first() {
            Some(b'{' | b'[') => write_container(text, ignore.root(), &mut walk, out),
            _ => write_value(
                serde_json::from_str::<&RawValue>(text)?,
                ignore.root(),
                &mut walk,
                out,
            ),
        }
    }

    /// What the walk may still spend. Each container is parsed once more than its
    /// parent did, so a document costs its size times its depth: both are bounded,
    /// and a document past either is hashed raw.
    struct Walk {
        /// How many more levels may nest.
        depth: usize,
        /// How many more bytes may be parsed.
        budget: usize,
    }

    /// Bytes parsed per byte of input, at most: room for ordinary nesting (a
    /// chat body costs about five).
    const SCAN_BUDGET: usize = 16;
    const MIN_BUDGET: usize = 64 * 1024;

    /// How deep containers may nest: serde_json's own limit. A deeper document
    /// is not canonicalised (its body is hashed raw), so no request can make the
    /// walk exhaust the stack.
    const MAX_DEPTH: usize = 128;

    fn write_value(
        raw: &RawValue,
        ignore: Option<&Node>,
        walk: &mut Walk,
        out: &mut impl Sink,
    ) -> serde_json::Result<()> {
        let text = raw.get();
        match text.as_bytes().first() {
            Some(b'{' | b'[') => write_container(text, ignore, walk, out)?,
            // A string whose escapes are those serde_json writes is already
            // canonical: copy it as it is.
            Some(b'"') if canonical_escapes(text) => out.put(text.as_bytes()),
            Some(b'"') => {
                let value: String = serde_json::from_str(text)?;
                write_string(&value, out)?;
            }
            // Numbers, true, false, null: untouched.
            _ => out.put(text.as_bytes()),
        }
        Ok(())
    }

    /// Writes an object (keys sorted) or an array; `text` is its JSON text.
    fn write_container(
        text: &str,
        ignore: Option<&Node>,
        walk: &mut Walk,
        out: &mut impl Sink,
    ) -> serde_json::Result<()> {
        let exhausted = || {
            <serde_json::Error as serde::de::Error>::custom(
                "json too deep or too costly to canonicalise",
            )
        };
        walk.depth = walk.depth.checked_sub(1).ok_or_else(exhausted)?;
        walk.budget = walk.budget.checked_sub(text.len()).ok_or_else(exhausted)?;
        if text.trim_start().starts_with('[') {
            let items: Vec<&RawValue> = serde_json::from_str(text)?;
            out.put(b"[");
            for (i, item) in items.into_iter().enumerate() {
                if i > 0 {
                    out.put(b",");
                }
                write_value(item, ignore, walk, out)?;
            }
            out.put(b"]");
            walk.depth += 1;
            return Ok(());
        }
        let map: BTreeMap<String, &RawValue> = serde_json::from_str(text)?;
        out.put(b"{");
        let mut first = true;
        for (name, value) in map {
            let child = match ignore.and_then(|node| node.children.get(&name)) {
                Some(None) => continue,
                Some(Some(node)) => Some(node),
                None => None,
            };
            if !first {
                out.put(b",");
            }
            first = false;
            write_string(&name, out)?;
            out.put(b":");
            write_value(value, child, walk, out)?;
        }
        out.put(b"}");
        walk.depth += 1;
        Ok(())
    }

    /// Whether every escape in a (valid) JSON string literal is the one
    /// `serde_json` would write: `\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, and
    /// `\u00xx` (lower-case hex) for the other control characters.
    pub(super) fn canonical_escapes(literal: &str) -> bool {
        let bytes = literal.as_bytes();
        let mut i = 0;
        while let Some(offset) = bytes[i..].iter().position(|&b| b == b'\\') {
            i += offset;
            match bytes.get(i + 1) {
                Some(b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                Some(b'u') => {
                    let Some(hex) = bytes.get(i + 2..i + 6) else {
                        return false;
                    };
                    let lower = hex
                        .iter()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
                    let Some(code) = std::str::from_utf8(hex)
                        .ok()
                        .and_then(|h| u32::from_str_radix(h, 16).ok())
                    else {
                        return false;
                    };
                    let short_form = matches!(code, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d);
                    if !lower || code >= 0x20 || short_form {
                        return false;
                    }
                    i += 6;
                }
                _ => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::reference::canonical_escapes;
    use super::*;

    fn canon(input: &str) -> String {
        canon_ignoring(input, &[])
    }

    fn canon_ignoring(input: &str, ignore: &[&str]) -> String {
        let mut out = Vec::new();
        canonicalize(input.as_bytes(), &IgnoreFields::new(ignore), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn sorts_keys_and_drops_white_space() {
        assert_eq!(
            canon(r#" { "b" : [ 1 , { "d":null, "c":true } ], "a" : "x" } "#),
            r#"{"a":"x","b":[1,{"c":true,"d":null}]}"#
        );
    }

    #[test]
    fn keeps_numbers_verbatim() {
        assert_eq!(
            canon("[1, 1.0, 1e0, -0, 123456789012345678901234567890]"),
            "[1,1.0,1e0,-0,123456789012345678901234567890]"
        );
    }

    #[test]
    fn normalises_string_escapes() {
        assert_eq!(canon(r#"{"\u0061":"\u0041\/\n"}"#), r#"{"a":"A/\n"}"#);
        assert_eq!(canon(r#""é""#), canon(r#""\u00e9""#));
    }

    #[test]
    fn duplicate_keys_keep_the_last() {
        assert_eq!(canon(r#"{"a":1,"a":2}"#), r#"{"a":2}"#);
    }

    #[test]
    fn rejects_what_is_not_one_document() {
        let mut out = Vec::new();
        for bad in ["", "{", "{} {}", "[1,]", "nul", "\"\\x\""] {
            assert!(
                canonicalize(bad.as_bytes(), &IgnoreFields::default(), &mut out).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn ignores_fields_by_path_through_arrays() {
        assert_eq!(
            canon_ignoring(
                r#"{"user":"u","metadata":{"request_id":1,"keep":2},"messages":[{"name":"n","content":"c"}]}"#,
                &["user", "metadata.request_id", "messages.name"]
            ),
            r#"{"messages":[{"content":"c"}],"metadata":{"keep":2}}"#
        );
        // A whole-field rule wins over a deeper one.
        assert_eq!(
            canon_ignoring(r#"{"a":{"b":1},"c":1}"#, &["a.b", "a"]),
            r#"{"c":1}"#
        );
        // Empty segments are not paths.
        assert_eq!(canon_ignoring(r#"{"a":1}"#, &["", "a."]), r#"{"a":1}"#);
    }

    #[test]
    fn canonical_escapes_are_copied_and_others_rewritten() {
        assert_eq!(canon(r#""a\nb\"c\\d\u001f""#), r#""a\nb\"c\\d\u001f""#);
        assert_eq!(canon(r#""\u000a""#), r#""\n""#);
        assert_eq!(canon(r#""\u001F""#), r#""\u001f""#);
        assert_eq!(canon(r#""\/""#), r#""/""#);
        assert_eq!(canon(r#""\u00e9""#), "\"é\"");
        for literal in [r#""\n""#, r#""\u0001""#, r#""x\\""#] {
            assert!(canonical_escapes(literal), "{literal}");
        }
        for literal in [r#""\/""#, r#""\u000a""#, r#""\u00E9""#, r#""\u0041""#] {
            assert!(!canonical_escapes(literal), "{literal}");
        }
    }

    #[test]
    fn root_whitespace_and_trailing_garbage() {
        assert_eq!(canon(" \n { \"b\":1 , \"a\":[ ] } \n"), r#"{"a":[],"b":1}"#);
        assert_eq!(canon(" 42 "), "42");
        let mut out = Vec::new();
        assert!(canonicalize(b"{} x", &IgnoreFields::default(), &mut out).is_err());
        assert!(canonicalize(b"[1] [2]", &IgnoreFields::default(), &mut out).is_err());
        assert!(canonicalize(b"\xff", &IgnoreFields::default(), &mut out).is_err());
    }

    /// Writes `value` as a JSON string literal, escaping each character in
    /// one of the ways JSON allows, chosen by `choices`.
    fn escaped_anyhow(value: &str, choices: &[u8]) -> String {
        let mut out = String::from("\"");
        for (i, c) in value.chars().enumerate() {
            let choice = choices.get(i % choices.len().max(1)).copied().unwrap_or(0) % 3;
            match c {
                '"' => out.push_str(if choice == 0 { "\\\"" } else { "\\u0022" }),
                '\\' => out.push_str(if choice == 0 { "\\\\" } else { "\\u005C" }),
                '/' if choice == 1 => out.push_str("\\/"),
                c if (c as u32) < 0x20 || choice == 2 => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    proptest::proptest! {
        #[test]
        fn any_spelling_of_a_string_canonicalises_to_what_serde_json_writes(
            value in "\\PC*|[\\x00-\\x1f\"\\\\/ aé😀]*",
            choices in proptest::collection::vec(proptest::num::u8::ANY, 1..8),
        ) {
            let canonical = serde_json::to_string(&value).unwrap();
            proptest::prop_assert_eq!(canon(&escaped_anyhow(&value, &choices)), canonical.clone());
            proptest::prop_assert_eq!(canon(&canonical), canonical);
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_followed() {
        let mut out = Vec::new();
        let at_limit = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(canonicalize(at_limit.as_bytes(), &IgnoreFields::default(), &mut out).is_ok());
        // Deep enough to exhaust any thread's stack if the walk followed it.
        let hostile = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(canonicalize(hostile.as_bytes(), &IgnoreFields::default(), &mut out).is_err());
        let objects = format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
        assert!(canonicalize(objects.as_bytes(), &IgnoreFields::default(), &mut out).is_err());
    }

    #[test]
    fn the_cost_of_the_walk_is_linear_in_the_body_size() {
        let mut out = Vec::new();
        let payload = format!("\"{}\"", "x".repeat(1 << 20));
        let nest = |depth: usize| format!("{}{payload}{}", "[".repeat(depth), "]".repeat(depth));
        // One scan and one walk, whatever the nesting (the former walk, which
        // re-parsed each level, refused the second as too costly).
        for depth in [5, 100] {
            out.clear();
            let document = nest(depth);
            assert!(canonicalize(document.as_bytes(), &IgnoreFields::default(), &mut out).is_ok());
            assert_eq!(out, document.as_bytes());
        }
    }

    #[test]
    fn the_depth_limit_is_the_former_one() {
        for depth in MAX_DEPTH - 2..=MAX_DEPTH + 2 {
            let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let mixed = format!(
                "{}0{}",
                r#"[{"a":"#.repeat(depth / 2),
                "}]".repeat(depth / 2)
            );
            // (document, how many containers nest in it)
            for (document, nesting) in [(arrays, depth), (mixed, depth / 2 * 2)] {
                let mut new = Vec::new();
                let mut old = Vec::new();
                let new = canonicalize(document.as_bytes(), &IgnoreFields::default(), &mut new)
                    .map(|()| new);
                let old = super::reference::canonicalize(
                    document.as_bytes(),
                    &IgnoreFields::default(),
                    &mut old,
                )
                .map(|()| old);
                assert_eq!(new.is_ok(), nesting <= MAX_DEPTH, "{nesting}");
                assert_eq!(new.ok(), old.ok(), "{depth}");
            }
        }
    }

    #[test]
    fn deep_nesting_inside_an_ignored_field_is_validated_not_walked() {
        // As before: the depth limit bounds the walk, which skips ignored
        // fields; their contents are only checked for syntax.
        let deep = format!(r#"{{"a":{}1{},"b":1}}"#, "[".repeat(1000), "]".repeat(1000));
        assert_eq!(canon_ignoring(&deep, &["a"]), r#"{"b":1}"#);
        let mut out = Vec::new();
        assert!(canonicalize(deep.as_bytes(), &IgnoreFields::default(), &mut out).is_err());
        let broken = format!(r#"{{"a":{}1{}}}"#, "[".repeat(1000), "]".repeat(999));
        assert!(canonicalize(broken.as_bytes(), &IgnoreFields::new(["a"]), &mut out).is_err());
    }

    #[test]
    fn lone_surrogates_fail_where_serde_json_decodes_them() {
        let ok = |input: &str, ignore: &[&str]| {
            let mut out = Vec::new();
            canonicalize(input.as_bytes(), &IgnoreFields::new(ignore), &mut out)
                .ok()
                .map(|()| String::from_utf8(out).unwrap())
        };
        assert_eq!(ok(r#""\ud800""#, &[]), None);
        assert_eq!(ok(r#""\udc00""#, &[]), None);
        assert_eq!(ok(r#""\ud800\u0041""#, &[]), None);
        assert_eq!(ok(r#""\ud800\n""#, &[]), None);
        assert_eq!(ok(r#""\ud800""#, &[]), None);
        assert_eq!(ok(r#""\ud83d\ude00""#, &[]).as_deref(), Some("\"😀\""));
        assert_eq!(ok(r#""\uD83D\uDE00""#, &[]).as_deref(), Some("\"😀\""));
        // Every key of a written object is decoded, even an ignored one…
        assert_eq!(ok(r#"{"\ud800":1}"#, &[]), None);
        // …but values are decoded only when written.
        assert_eq!(ok(r#"{"a":"\ud800"}"#, &["a"]).as_deref(), Some("{}"));
        assert_eq!(
            ok(r#"{"a":"\ud800","a":1}"#, &[]).as_deref(),
            Some(r#"{"a":1}"#)
        );
        assert_eq!(ok(r#"{"a":{"\udc00":1}}"#, &["a"]).as_deref(), Some("{}"));
        assert_eq!(ok(r#"{"a":"\ud800"}"#, &[]), None);
    }

    #[test]
    fn is_idempotent() {
        let once = canon(r#"{"z":[{"y":"\u00e9","x":1.50}],"a":{}}"#);
        assert_eq!(canon(&once), once);
    }

    /// Differential tests: the single-pass implementation against the former
    /// one ([`reference`]), on documents generated as text and on bytes.
    mod differential {
        use proptest::{collection::vec, prelude::*, sample::select};

        use super::super::{reference, scan, IgnoreFields, Kind};

        /// Inputs are kept small enough that the former walk's budget (16
        /// times the input, at least 64 KiB) never binds: at most 8 nested
        /// containers times 4 KiB.
        const MAX_INPUT: usize = 4 * 1024;

        /// Both implementations' answers: `None` for an error (the sink then
        /// holds garbage, which is not compared).
        fn both(input: &[u8], ignore: &IgnoreFields) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
            let mut new = Vec::new();
            let new = super::super::canonicalize(input, ignore, &mut new)
                .ok()
                .map(|()| new);
            let mut old = Vec::new();
            let old = reference::canonicalize(input, ignore, &mut old)
                .ok()
                .map(|()| old);
            (new, old)
        }

        fn ws() -> impl Strategy<Value = String> {
            vec(select(vec!["", " ", "\t", "\n", "\r", "  \n  "]), 0..3).prop_map(|w| w.concat())
        }

        fn number() -> impl Strategy<Value = String> {
            prop_oneof![
                "-?(0|[1-9][0-9]{0,30})(\\.[0-9]{1,4})?([eE][+-]?[0-9]{1,3})?",
                select(vec![
                    "0",
                    "-0",
                    "1e5",
                    "1E+5",
                    "1e-5",
                    "0.50",
                    "-0.0e-0",
                    "123456789012345678901234567890",
                    "18446744073709551616",
                    "-9223372036854775809",
                    "1.7976931348623157e309",
                ])
                .prop_map(String::from),
            ]
        }

        /// Writes `value` as a JSON string literal, each character spelt in
        /// one of the ways JSON allows, chosen by `choices`: as it is, as a
        /// short escape, or as `\u` escapes (UTF-16, so surrogate pairs past
        /// the BMP) in lower, upper or mixed case.
        fn spell(value: &str, choices: &[u8]) -> String {
            let mut out = String::from("\"");
            for (i, c) in value.chars().enumerate() {
                let choice = choices.get(i % choices.len().max(1)).copied().unwrap_or(0) % 5;
                let short = match c {
                    '"' => Some("\\\""),
                    '\\' => Some("\\\\"),
                    '/' => Some("\\/"),
                    '\u{8}' => Some("\\b"),
                    '\u{c}' => Some("\\f"),
                    '\n' => Some("\\n"),
                    '\r' => Some("\\r"),
                    '\t' => Some("\\t"),
                    _ => None,
                };
                let bare = !matches!(c, '"' | '\\') && (c as u32) >= 0x20;
                match (choice, short) {
                    (0, _) if bare => out.push(c),
                    (0 | 1, Some(short)) => out.push_str(short),
                    (0 | 1, None) if bare => out.push(c),
                    _ => {
                        let mut units = [0u16; 2];
                        for (j, unit) in c.encode_utf16(&mut units).iter().enumerate() {
                            let upper = choice == 3 || (choice == 4 && j == 0);
                            if upper {
                                out.push_str(&format!("\\u{unit:04X}"));
                            } else {
                                out.push_str(&format!("\\u{unit:04x}"));
                            }
                        }
                    }
                }
            }
            out.push('"');
            out
        }

        fn string() -> impl Strategy<Value = String> {
            (
                prop_oneof![
                    "[\\x00-\\x1f\"\\\\/ aAzé\u{7f}\u{80}\u{2028}\u{fffd}\u{ffff}😀𝄞\u{10ffff}]{0,8}",
                    "\\PC{0,6}",
                ],
                vec(any::<u8>(), 1..6),
            )
                .prop_map(|(value, choices)| spell(&value, &choices))
        }

        /// Keys: often from a small pool with several spellings of the same
        /// key (so duplicates and escaped duplicates are common), else any.
        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                6 => select(vec![
                    r#""a""#, r#""\u0061""#, r#""b""#, r#""A""#, r#""""#, r#""é""#,
                    r#""\u00e9""#, r#""\u00E9""#, r#""user""#, r#""\u0075ser""#,
                    r#""name""#, r#""metadata""#, r#""request_id""#, r#""messages""#,
                    r#""\"""#, r#""\u0022""#, r#""\\""#, r#""😀""#, r#""\ud83d\ude00""#,
                    r#""a\/b""#, r#""a/b""#, r#""\n""#, r#""\u000a""#, r#""aa""#,
                    r#""a\u0000""#, r#""\u007f""#, r#""z""#,
                ])
                .prop_map(String::from),
                1 => string(),
            ]
        }

        fn ignore() -> impl Strategy<Value = Vec<&'static str>> {
            vec(
                select(vec![
                    "a",
                    "b",
                    "a.b",
                    "a.a",
                    "user",
                    "metadata.request_id",
                    "messages.name",
                    "é",
                    "\"",
                    "😀",
                    "a/b",
                    "\n",
                    "b.a.b",
                    "name",
                    "aa",
                    "a.",
                ]),
                1..4,
            )
        }

        /// A valid JSON document, as text, nested up to six containers deep,
        /// with white space everywhere it may go.
        fn document() -> impl Strategy<Value = String> {
            let leaf = prop_oneof![
                number(),
                string(),
                select(vec!["true", "false", "null"]).prop_map(String::from),
            ];
            let tree = leaf.prop_recursive(6, 48, 5, |inner| {
                prop_oneof![
                    (vec((ws(), inner.clone(), ws()), 0..5), ws()).prop_map(|(items, w)| {
                        let items: Vec<String> =
                            items.into_iter().map(|(a, v, b)| a + &v + &b).collect();
                        format!("[{w}{}]", items.join(","))
                    }),
                    (vec((ws(), key(), ws(), ws(), inner, ws()), 0..5), ws()).prop_map(
                        |(members, w)| {
                            let members: Vec<String> = members
                                .into_iter()
                                .map(|(a, k, b, c, v, d)| format!("{a}{k}{b}:{c}{v}{d}"))
                                .collect();
                            format!("{{{w}{}}}", members.join(","))
                        }
                    ),
                ]
            });
            (ws(), tree, ws()).prop_map(|(a, t, b)| a + &t + &b)
        }

        /// One change to a document: a byte replaced, removed or inserted, the
        /// text cut short, or a lone surrogate escape put in.
        #[derive(Clone, Debug)]
        enum Mutation {
            Replace(usize, u8),
            Remove(usize),
            Insert(usize, u8),
            Truncate(usize),
            Splice(usize, &'static str),
        }

        fn mutation() -> impl Strategy<Value = Mutation> {
            let byte = prop_oneof![
                select(b"\"\\u/bd8cfeE{}[],: \t0-+.9aA\x00\x1f\x7f\x80\xbf\xc3\xff".to_vec()),
                any::<u8>(),
            ];
            prop_oneof![
                (any::<usize>(), byte.clone()).prop_map(|(at, b)| Mutation::Replace(at, b)),
                any::<usize>().prop_map(Mutation::Remove),
                (any::<usize>(), byte).prop_map(|(at, b)| Mutation::Insert(at, b)),
                any::<usize>().prop_map(Mutation::Truncate),
                (
                    any::<usize>(),
                    select(vec![
                        "\\ud800",
                        "\\udc00",
                        "\\ud800\\u0041",
                        "\\ud800\\n",
                        "\\uDBFF\\uDFFF",
                        "\\u12",
                        "\\",
                        "\"",
                        "\u{0}",
                    ])
                )
                    .prop_map(|(at, s)| Mutation::Splice(at, s)),
            ]
        }

        fn mutate(document: &str, mutation: &Mutation) -> Vec<u8> {
            let mut bytes = document.as_bytes().to_vec();
            let len = bytes.len();
            match *mutation {
                Mutation::Replace(at, b) if len > 0 => bytes[at % len] = b,
                Mutation::Remove(at) if len > 0 => {
                    bytes.remove(at % len);
                }
                Mutation::Insert(at, b) => bytes.insert(at % (len + 1), b),
                Mutation::Truncate(at) => bytes.truncate(at % (len + 1)),
                Mutation::Splice(at, s) => {
                    let at = at % (len + 1);
                    bytes.splice(at..at, s.bytes());
                }
                _ => {}
            }
            bytes
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn documents_canonicalise_as_before(
                document in document(),
                paths in ignore(),
            ) {
                prop_assume!(document.len() <= MAX_INPUT);
                for ignore in [IgnoreFields::default(), IgnoreFields::new(&paths)] {
                    let (new, old) = both(document.as_bytes(), &ignore);
                    // Generated documents are valid: both must succeed.
                    prop_assert!(old.is_some(), "reference refused {document:?}");
                    prop_assert_eq!(
                        new.as_deref().map(String::from_utf8_lossy),
                        old.as_deref().map(String::from_utf8_lossy),
                        "{:?} ignoring {:?}", document, paths
                    );
                }
            }

            #[test]
            fn changed_documents_are_accepted_and_refused_as_before(
                document in document(),
                mutation in mutation(),
                paths in ignore(),
            ) {
                let bytes = mutate(&document, &mutation);
                prop_assume!(bytes.len() <= MAX_INPUT);
                for ignore in [IgnoreFields::default(), IgnoreFields::new(&paths)] {
                    let (new, old) = both(&bytes, &ignore);
                    prop_assert_eq!(
                        new, old,
                        "{:?} ignoring {:?}", String::from_utf8_lossy(&bytes), paths
                    );
                }
            }

            #[test]
            fn any_bytes_are_accepted_and_refused_as_before(
                bytes in prop_oneof![
                    vec(any::<u8>(), 0..48),
                    vec(select(b"{}[],:\" \n0123456789-+.eEtrufalsn\\/ubd8A\xc3\xa9".to_vec()), 0..48),
                ],
                paths in ignore(),
            ) {
                for ignore in [IgnoreFields::default(), IgnoreFields::new(&paths)] {
                    let (new, old) = both(&bytes, &ignore);
                    prop_assert_eq!(new, old, "{:?}", String::from_utf8_lossy(&bytes));
                }
            }

            #[test]
            fn strings_are_classified_as_canonical_escapes_says(literal in string()) {
                let spans = scan(literal.as_bytes()).unwrap();
                let kind = spans[0].kind;
                prop_assert_eq!(kind == Kind::Plain, !literal.contains('\\'));
                prop_assert_eq!(kind != Kind::Escaped, reference::canonical_escapes(&literal));
            }
        }
    }
}
