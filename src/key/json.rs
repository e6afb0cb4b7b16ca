//! Canonical JSON: object members sorted by name, insignificant white space
//! dropped, values untouched.
//!
//! Numbers, `true`, `false` and `null` are copied byte for byte from the
//! input (so `1`, `1.0` and `1e0` stay different, and integers of any size
//! keep every digit). Strings are written as `serde_json` writes them, so
//! `"\u0041"` and `"A"` are the same string. Members are sorted by their
//! decoded name, in the byte order of UTF-8 (the order of
//! `BTreeMap<String, _>`). Ignored fields ([`IgnoreFields`]) are left out.
//!
//! An object with two members of the same name (however spelt) is refused,
//! so the body is hashed raw: upstreams read `{"a":1,"a":2}` differently
//! (the first, the last, an error), and it must not share an entry with
//! `{"a":2}`. Inside an ignored field, which is not in the key, names are not
//! compared.
//!
//! # Algorithm
//!
//! A first pass ([`prescan`]) validates the document (RFC 8259, as strict as
//! `serde_json`) without recursion and notes, for each object with two or
//! more members, each [`Member`]: where its name starts and, for a scalar
//! value, where the value ends (two `u32`, 8 bytes), each object's members
//! together and found by the object's offset ([`Table`], 12 bytes). Arrays and
//! scalars keep their order, so nothing is noted for them, nor for an object
//! of one member.
//!
//! A second, recursive pass ([`Walk`]) writes the canonical form straight
//! into the sink (the caller rewinds the sink if it fails): arrays and
//! scalars as they are read, an object's noted members sorted by decoded
//! name (compared without allocating), two equal names refusing the
//! document, each scalar value copied from where the first pass found it and
//! each container walked from where it starts. Numbers, literals, and
//! strings without escapes or with only those `serde_json` writes (`\"`,
//! `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, and lower-case `\u00xx` for other control
//! characters) are copied from the input; other strings are decoded and
//! re-escaped.
//!
//! # Guarantees
//!
//! - Memory: 8 bytes per member of an object of two or more, plus 12 per
//!   such object: at most about the size of the input for member-dense
//!   objects (`{"a1f":0,…}` costs 0.7 to 0.9 times its size; an object of two
//!   members takes at least 14 bytes, `{"a":0,"b":0},`, and costs 28), plus
//!   a quarter for spare capacity; nothing for arrays and scalars (`[0,0,…]` costs
//!   nothing); and one decoded string at a time. Inputs of 2 GiB or more are
//!   refused (`u32` offsets, one bit of which marks strings to decode).
//!   `examples/key_memory.rs` measures it.
//! - Linear work: the first pass reads each byte once; the second reads
//!   again only array items, lone members and names, and steps once over
//!   each ignored field (far below the former walk's bound of 16 times the
//!   input).
//! - Bounded recursion: the walk descends into at most [`MAX_DEPTH`] nested
//!   containers and fails past that; the first pass does not recurse, and
//!   refuses nesting deeper than [`MAX_NESTING`] anywhere, so its stack stays
//!   small.
//! - Exactly the documents the former `serde_json`-based walk accepted are
//!   accepted, with the same output (the tests check this differentially),
//!   except those with duplicate names or nested deeper than
//!   [`MAX_NESTING`]. In particular, strings and names that are written must
//!   not hold lone surrogates in `\u` escapes (`serde_json` refuses them when
//!   decoding to a `String`), while ignored subtrees are only checked for
//!   syntax, and the depth limit applies only to what is written, as before.
//! - Never panics: every access to the input and to the notes is checked.

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
/// not one valid JSON document, has an object with two members of the same
/// name, or nests deeper than [`MAX_DEPTH`] in what is written (or
/// [`MAX_NESTING`] anywhere). On failure `out` holds part of the output: the
/// caller rewinds it.
pub(crate) fn canonicalize(
    input: &[u8],
    ignore: &IgnoreFields,
    out: &mut impl Sink,
) -> serde_json::Result<()> {
    let text = std::str::from_utf8(input).map_err(|_| error("a JSON document is UTF-8"))?;
    if text.len() >= ESCAPED as usize {
        return Err(error("json too large to canonicalise"));
    }
    let notes = prescan(text.as_bytes())?;
    let mut walk = Walk {
        text,
        scanner: Scanner {
            bytes: text.as_bytes(),
            pos: 0,
        },
        notes,
        open: Vec::new(),
    };
    walk.scanner.skip_whitespace();
    walk.value(ignore.root(), MAX_DEPTH, out)
}

/// How deep containers may nest in what is written: `serde_json`'s own limit.
/// A deeper document is not canonicalised (its body is hashed raw), and the
/// recursive walk never goes deeper than this.
const MAX_DEPTH: usize = 128;

/// How deep containers may nest anywhere, ignored fields included: the
/// first pass's stack of open containers stays under 64 KiB.
const MAX_NESTING: usize = 4096;

fn error(reason: &'static str) -> serde_json::Error {
    <serde_json::Error as serde::de::Error>::custom(reason)
}

/// What a string literal holds, as far as writing it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Without any backslash: copied as it is.
    Plain,
    /// Whose escapes are all those `serde_json` writes: copied as it is.
    Canonical,
    /// With some other escape (`\/`, `\u0041`, `\u00E9`, …): decoded and
    /// written again.
    Escaped,
}

/// A cursor over the input that validates what it steps over (RFC 8259, as
/// strict as `serde_json`).
struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.pos += 1;
        }
    }

    /// Steps past `byte` and the white space after it, or fails.
    fn expect(&mut self, byte: u8, reason: &'static str) -> serde_json::Result<()> {
        if self.peek() != Some(byte) {
            return Err(error(reason));
        }
        self.pos += 1;
        self.skip_whitespace();
        Ok(())
    }

    /// Steps over one value, validating it, without recursion: `open` is
    /// the stack of containers still open (`true` for an object).
    fn skip_value(&mut self, open: &mut Vec<bool>) -> serde_json::Result<()> {
        open.clear();
        'value: loop {
            // A value starts here (white space already skipped).
            match self.peek() {
                Some(b'{') => {
                    open.push(true);
                    self.pos += 1;
                    self.skip_whitespace();
                    if self.peek() != Some(b'}') {
                        self.key()?;
                        continue 'value;
                    }
                }
                Some(b'[') => {
                    open.push(false);
                    self.pos += 1;
                    self.skip_whitespace();
                    if self.peek() != Some(b']') {
                        continue 'value;
                    }
                }
                _ => self.scalar()?,
            }
            // After a value, or before the closing bracket of an empty
            // container: close containers until one has another value to come.
            loop {
                let Some(&object) = open.last() else {
                    return Ok(());
                };
                self.skip_whitespace();
                match (object, self.peek()) {
                    (false, Some(b']')) | (true, Some(b'}')) => {
                        self.pos += 1;
                        open.pop();
                    }
                    (false, Some(b',')) => {
                        self.pos += 1;
                        self.skip_whitespace();
                        continue 'value;
                    }
                    (true, Some(b',')) => {
                        self.pos += 1;
                        self.skip_whitespace();
                        self.key()?;
                        continue 'value;
                    }
                    _ => return Err(error("expected `,` or the end of a container")),
                }
            }
        }
    }

    /// A string, number or literal.
    fn scalar(&mut self) -> serde_json::Result<()> {
        match self.peek() {
            Some(b'"') => self.string().map(drop),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            _ => Err(error("expected a JSON value")),
        }
    }

    /// An object key, its colon and the white space around it.
    fn key(&mut self) -> serde_json::Result<Kind> {
        if self.peek() != Some(b'"') {
            return Err(error("key must be a string"));
        }
        let kind = self.string()?;
        self.skip_whitespace();
        self.expect(b':', "expected `:`")?;
        Ok(kind)
    }

    /// A string, from its opening quote. Validates it as `serde_json` does a
    /// string it does not decode (control characters and unknown escapes are
    /// errors; `\u` escapes need four hex digits, surrogates are not paired
    /// here but when the string is decoded).
    fn string(&mut self) -> serde_json::Result<Kind> {
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
        Ok(match (escaped, canonical) {
            (false, _) => Kind::Plain,
            (true, true) => Kind::Canonical,
            (true, false) => Kind::Escaped,
        })
    }

    /// A number: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> serde_json::Result<()> {
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
        if self.bytes.get(self.pos..self.pos + word.len()) != Some(word) {
            return Err(error("expected a JSON value"));
        }
        self.pos += word.len();
        Ok(())
    }
}

/// What the first pass notes for the walk.
struct Notes {
    /// The members of every object with two or more, each object's together.
    members: Vec<Member>,
    /// Where each such object's members are, by the object's offset.
    tables: Vec<Table>,
}

/// An object member: 8 bytes.
#[derive(Clone, Copy, Debug)]
struct Member {
    /// Offset of the name's opening quote (the value follows the name, a
    /// colon and white space).
    name: u32,
    /// For a scalar value, the offset just past it, with [`ESCAPED`] set for
    /// a string to decode and write again; 0 for a container, walked when it
    /// is written.
    end: u32,
}

/// In [`Member::end`]: the string has escapes `serde_json` does not write.
/// Offsets stay below it (inputs under 2 GiB).
const ESCAPED: u32 = 1 << 31;

/// Where the members of one object are in [`Notes::members`]: 12 bytes.
#[derive(Clone, Copy, Debug)]
struct Table {
    /// Offset of the object's `{`.
    offset: u32,
    start: u32,
    len: u32,
}

/// A container the first pass has not closed yet.
#[derive(Clone, Copy)]
struct Open {
    object: bool,
    /// Offset of its bracket.
    offset: u32,
    /// Index in the pending members of its first member.
    first: u32,
}

/// The first pass: validates `bytes` as one JSON document, without
/// recursion, and notes the members of every object that has two or more
/// (one member needs no sorting: the walk reads it where it is).
fn prescan(bytes: &[u8]) -> serde_json::Result<Notes> {
    let mut scanner = Scanner { bytes, pos: 0 };
    let mut notes = Notes {
        members: Vec::new(),
        tables: Vec::new(),
    };
    // Members of the objects still open, innermost last.
    let mut pending: Vec<Member> = Vec::new();
    let mut open: Vec<Open> = Vec::new();
    // Whether the value about to start is a member's, and its name's offset.
    let mut member: Option<u32> = None;
    scanner.skip_whitespace();
    'value: loop {
        // A value starts here (white space already skipped).
        let is_member = match member.take() {
            Some(name) => {
                grow(&mut pending, 1);
                pending.push(Member { name, end: 0 });
                true
            }
            None => false,
        };
        // A member's scalar value: where it ends.
        let note_end = |pending: &mut Vec<Member>, end: u32| {
            if let (true, Some(member)) = (is_member, pending.last_mut()) {
                member.end = end;
            }
        };
        match scanner.peek() {
            Some(bracket @ (b'{' | b'[')) => {
                if open.len() >= MAX_NESTING {
                    return Err(error("json nested too deep to canonicalise"));
                }
                let object = bracket == b'{';
                open.push(Open {
                    object,
                    offset: offset(scanner.pos),
                    first: offset(pending.len()),
                });
                scanner.pos += 1;
                scanner.skip_whitespace();
                let close = if object { b'}' } else { b']' };
                if scanner.peek() != Some(close) {
                    if object {
                        member = Some(offset(scanner.pos));
                        scanner.key()?;
                    }
                    continue 'value;
                }
            }
            Some(b'"') => {
                let kind = scanner.string()?;
                let escaped = if kind == Kind::Escaped { ESCAPED } else { 0 };
                note_end(&mut pending, offset(scanner.pos) | escaped);
            }
            _ => {
                scanner.scalar()?;
                note_end(&mut pending, offset(scanner.pos));
            }
        }
        // After a value, or before the closing bracket of an empty container:
        // close containers until one has another value to come.
        loop {
            scanner.skip_whitespace();
            let Some(&top) = open.last() else {
                if scanner.pos != bytes.len() {
                    return Err(error("trailing characters after the JSON document"));
                }
                notes.tables.sort_unstable_by_key(|table| table.offset);
                return Ok(notes);
            };
            match (top.object, scanner.peek()) {
                (false, Some(b']')) => {
                    scanner.pos += 1;
                    open.pop();
                }
                (true, Some(b'}')) => {
                    scanner.pos += 1;
                    open.pop();
                    let first = top.first as usize;
                    let len = pending.len().saturating_sub(first);
                    if len >= 2 && first == 0 && len > notes.members.len() {
                        // The outermost open object, with more members than
                        // all noted so far (the root of `{"a0":0,…}`): its
                        // members stay where they are, and the fewer others
                        // move after them, so the larger is never copied.
                        let others =
                            std::mem::replace(&mut notes.members, std::mem::take(&mut pending));
                        for table in &mut notes.tables {
                            table.start = table.start.saturating_add(offset(len));
                        }
                        grow(&mut notes.members, others.len());
                        notes.members.extend(others);
                        grow(&mut notes.tables, 1);
                        notes.tables.push(Table {
                            offset: top.offset,
                            start: 0,
                            len: offset(len),
                        });
                    } else if len >= 2 {
                        grow(&mut notes.tables, 1);
                        notes.tables.push(Table {
                            offset: top.offset,
                            start: offset(notes.members.len()),
                            len: offset(len),
                        });
                        grow(&mut notes.members, len);
                        notes.members.extend(pending.drain(first..));
                    } else {
                        pending.truncate(first);
                    }
                }
                (false, Some(b',')) => {
                    scanner.pos += 1;
                    scanner.skip_whitespace();
                    continue 'value;
                }
                (true, Some(b',')) => {
                    scanner.pos += 1;
                    scanner.skip_whitespace();
                    member = Some(offset(scanner.pos));
                    scanner.key()?;
                    continue 'value;
                }
                _ => return Err(error("expected `,` or the end of a container")),
            }
        }
    }
}

/// Makes room in `notes` for `more` items, growing by a quarter of its
/// length rather than doubling it, so that spare capacity stays small next
/// to the input (large reallocations move pages rather than copy them).
fn grow<T>(notes: &mut Vec<T>, more: usize) {
    if notes.capacity() - notes.len() < more {
        notes.reserve_exact(more.max(notes.len() / 4).max(64));
    }
}

/// The second pass, which writes the canonical form.
struct Walk<'a> {
    text: &'a str,
    scanner: Scanner<'a>,
    notes: Notes,
    /// Scratch stack for [`Scanner::skip_value`].
    open: Vec<bool>,
}

impl<'a> Walk<'a> {
    fn slice(&self, start: usize, end: usize) -> serde_json::Result<&'a str> {
        self.text
            .get(start..end)
            .ok_or_else(|| error("json offset out of range"))
    }

    /// Writes the value at the cursor (white space skipped) and steps past
    /// it, with at most `depth` more containers nested in it.
    fn value(
        &mut self,
        ignore: Option<&Node>,
        depth: usize,
        out: &mut impl Sink,
    ) -> serde_json::Result<()> {
        let start = self.scanner.pos;
        match self.scanner.peek() {
            Some(b'[') => self.array(ignore, depth, out),
            Some(b'{') => self.object(ignore, depth, out),
            Some(b'"') => {
                let kind = self.scanner.string()?;
                let literal = self.slice(start, self.scanner.pos)?;
                match kind {
                    Kind::Plain | Kind::Canonical => out.put(literal.as_bytes()),
                    Kind::Escaped => write_string(&decode(literal)?, out)?,
                }
                Ok(())
            }
            // Numbers, `true`, `false`, `null`: as they are.
            _ => {
                self.scanner.scalar()?;
                out.put(self.slice(start, self.scanner.pos)?.as_bytes());
                Ok(())
            }
        }
    }

    /// An array: its items in order, streamed as they come.
    fn array(
        &mut self,
        ignore: Option<&Node>,
        depth: usize,
        out: &mut impl Sink,
    ) -> serde_json::Result<()> {
        let depth = depth.checked_sub(1).ok_or_else(too_deep)?;
        self.scanner.expect(b'[', "expected `[`")?;
        out.put(b"[");
        if self.scanner.peek() == Some(b']') {
            self.scanner.pos += 1;
            out.put(b"]");
            return Ok(());
        }
        loop {
            self.value(ignore, depth, out)?;
            self.scanner.skip_whitespace();
            match self.scanner.peek() {
                Some(b',') => {
                    self.scanner.expect(b',', "expected `,`")?;
                    out.put(b",");
                }
                Some(b']') => {
                    self.scanner.pos += 1;
                    out.put(b"]");
                    return Ok(());
                }
                _ => return Err(error("expected `,` or `]`")),
            }
        }
    }

    /// An object: its members sorted by name. Those of an object with two
    /// or more come from the first pass's notes; a lone member is read
    /// where it is.
    fn object(
        &mut self,
        ignore: Option<&Node>,
        depth: usize,
        out: &mut impl Sink,
    ) -> serde_json::Result<()> {
        let depth = depth.checked_sub(1).ok_or_else(too_deep)?;
        let at = offset(self.scanner.pos);
        let tables = &self.notes.tables;
        let Ok(found) = tables.binary_search_by_key(&at, |table| table.offset) else {
            // No member, or one.
            self.scanner.expect(b'{', "expected `{`")?;
            out.put(b"{");
            if self.scanner.peek() != Some(b'}') {
                let name = self.scanner.pos;
                let kind = self.scanner.key()?;
                self.member(name, kind, 0, ignore, depth, true, out)?;
                self.scanner.skip_whitespace();
            }
            self.scanner.expect(b'}', "expected `}`")?;
            out.put(b"}");
            return Ok(());
        };
        let table = tables
            .get(found)
            .copied()
            .ok_or_else(|| error("json table out of range"))?;
        let range = table.start as usize..(table.start as usize + table.len as usize);
        let text = self.text.as_bytes();
        let members = self
            .notes
            .members
            .get_mut(range.clone())
            .ok_or_else(|| error("json members out of range"))?;
        // Where the object ends: past its last member in the document.
        let last = members.iter().map(|m| m.name).max().unwrap_or(0) as usize;
        let name = |member: &Member| member.name as usize;
        members.sort_unstable_by(|a, b| compare_names(text, name(a), name(b)));
        if members
            .windows(2)
            .any(|pair| compare_names(text, name(&pair[0]), name(&pair[1])).is_eq())
        {
            // Upstreams read duplicate names differently (the first, the
            // last, an error): the body is hashed raw.
            return Err(error("duplicate member name"));
        }
        out.put(b"{");
        let mut first = true;
        let mut end = None;
        for index in range {
            let member = self
                .notes
                .members
                .get(index)
                .copied()
                .ok_or_else(|| error("json members out of range"))?;
            let name = member.name as usize;
            self.scanner.pos = name;
            let kind = self.scanner.key()?;
            let written = self.member(name, kind, member.end, ignore, depth, first, out)?;
            first &= !written;
            if name == last {
                end = Some(self.scanner.pos);
            }
        }
        out.put(b"}");
        self.scanner.pos = end.ok_or_else(|| error("json object without its last member"))?;
        self.scanner.skip_whitespace();
        self.scanner.expect(b'}', "expected `}`")
    }

    /// Writes one member, unless it is ignored; the cursor is at its value.
    /// `end` is the first pass's [`Member::end`], or 0 to read the value
    /// where it is. Leaves the cursor past the value; returns whether the
    /// member was written.
    #[allow(clippy::too_many_arguments)]
    fn member(
        &mut self,
        name: usize,
        kind: Kind,
        end: u32,
        ignore: Option<&Node>,
        depth: usize,
        first: bool,
        out: &mut impl Sink,
    ) -> serde_json::Result<bool> {
        let literal = self.slice(name, name_end(self.text.as_bytes(), name))?;
        let plain = kind == Kind::Plain;
        // Every name of a written object is decoded, as before: one with a
        // lone surrogate fails here, even when it is ignored.
        let decoded: Cow<'a, str> = if plain {
            Cow::Borrowed(
                literal
                    .get(1..literal.len().saturating_sub(1))
                    .unwrap_or_default(),
            )
        } else {
            Cow::Owned(decode(literal)?)
        };
        let child = match ignore.and_then(|node| node.children.get(decoded.as_ref())) {
            Some(None) => {
                // Not in the key: stepped over, its syntax checked.
                if end == 0 {
                    self.scanner.skip_value(&mut self.open)?;
                } else {
                    self.scanner.pos = (end & !ESCAPED) as usize;
                }
                return Ok(false);
            }
            Some(Some(node)) => Some(node),
            None => None,
        };
        if !first {
            out.put(b",");
        }
        if kind != Kind::Escaped {
            out.put(literal.as_bytes());
        } else {
            write_string(&decoded, out)?;
        }
        out.put(b":");
        match end {
            0 => self.value(child, depth, out)?,
            end => {
                let literal = self.slice(self.scanner.pos, (end & !ESCAPED) as usize)?;
                if end & ESCAPED == 0 {
                    out.put(literal.as_bytes());
                } else {
                    write_string(&decode(literal)?, out)?;
                }
                self.scanner.pos = (end & !ESCAPED) as usize;
            }
        }
        Ok(true)
    }
}

/// An offset in the input (under 2 GiB).
fn offset(pos: usize) -> u32 {
    u32::try_from(pos).unwrap_or(u32::MAX)
}

/// Where the (valid) string literal starting at `start` ends, just past its
/// closing quote.
fn name_end(text: &[u8], start: usize) -> usize {
    let mut pos = start + 1;
    loop {
        pos += plain_run(text.get(pos..).unwrap_or_default());
        match text.get(pos) {
            Some(b'\\') => pos += 2,
            Some(b'"') => return pos + 1,
            _ => return text.len(),
        }
    }
}

/// Orders two member names (string literals starting at `a` and `b`) by
/// their decoded values, in the byte order of UTF-8 (which is the order of
/// their characters), without allocating.
fn compare_names(text: &[u8], a: usize, b: usize) -> std::cmp::Ordering {
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

fn too_deep() -> serde_json::Error {
    error("json too deep to canonicalise")
}

/// How many bytes at the start of `bytes` may stand in a string as they
/// are: up to the first quote, backslash or control character (or the end).
///
/// Thirty-two bytes at a time while none is special (a branch-free fold the
/// compiler turns into vector compares), then eight at a time with the usual
/// bit tricks: `v - 0x01…01 & !v & 0x80…80` marks the zero bytes of `v`, and
/// the lowest mark is exact.
fn plain_run(bytes: &[u8]) -> usize {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    let special = |b: u8| (b == b'"') | (b == b'\\') | (b < 0x20);
    let mut run = 0;
    for chunk in bytes.chunks_exact(16) {
        if chunk.iter().fold(false, |found, &b| found | special(b)) {
            break;
        }
        run += 16;
    }
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    for chunk in bytes.get(run..).unwrap_or_default().chunks_exact(8) {
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
    run + tail.iter().position(|&b| special(b)).unwrap_or(tail.len())
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
        let Members(map) = serde_json::from_str(text)?;
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

    /// An object's members, refusing a name seen twice.
    struct Members<'a>(BTreeMap<String, &'a RawValue>);

    impl<'de: 'a, 'a> serde::Deserialize<'de> for Members<'a> {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Visit<'a>(std::marker::PhantomData<&'a ()>);
            impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
                type Value = Members<'a>;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Members<'a>, A::Error> {
                    let mut members = BTreeMap::new();
                    while let Some((name, value)) = map.next_entry::<String, &'a RawValue>()? {
                        if members.insert(name, value).is_some() {
                            return Err(serde::de::Error::custom("duplicate member name"));
                        }
                    }
                    Ok(Members(members))
                }
            }
            deserializer.deserialize_map(Visit(std::marker::PhantomData))
        }
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
    fn duplicate_names_are_refused_at_any_depth_however_spelt() {
        let refused = |input: &str, ignore: &[&str]| {
            let mut out = Vec::new();
            canonicalize(input.as_bytes(), &IgnoreFields::new(ignore), &mut out).is_err()
        };
        for input in [
            r#"{"a":1,"a":2}"#,
            r#"{"a":2,"a":2}"#,
            r#"{"a":1,"b":0,"\u0061":2}"#,
            r#"{"x":{"a":1,"a":2}}"#,
            r#"[0,{"m":[{"a":1,"b":2,"a":3}]}]"#,
            r#"{"\ud83d\ude00":1,"😀":2}"#,
            r#"{"user":1,"user":2}"#,
        ] {
            assert!(refused(input, &[]), "{input}");
        }
        // An ignored name seen twice is still two members of a written object.
        assert!(refused(r#"{"user":1,"user":2,"q":1}"#, &["user"]));
        // Inside an ignored field, which is not in the key, names are not
        // compared.
        assert_eq!(
            canon_ignoring(r#"{"meta":{"a":1,"a":2},"q":1}"#, &["meta"]),
            r#"{"q":1}"#
        );
        // Names that differ only by case or by escapes of other characters
        // are different names.
        assert_eq!(canon(r#"{"a":1,"A":2}"#), r#"{"A":2,"a":1}"#);
        assert_eq!(canon(r#"{"a\/b":1,"a/c":2}"#), r#"{"a/b":1,"a/c":2}"#);
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
        assert_eq!(ok(r#"{"a":"\ud800","a":1}"#, &[]), None);
        assert_eq!(ok(r#"{"a":{"\udc00":1}}"#, &["a"]).as_deref(), Some("{}"));
        assert_eq!(ok(r#"{"a":"\ud800"}"#, &[]), None);
    }

    #[test]
    fn the_first_pass_notes_objects_of_two_or_more_members_only() {
        let zeros = format!("[{}0]", "0,".repeat(100_000));
        let notes = prescan(zeros.as_bytes()).unwrap();
        assert_eq!((notes.members.capacity(), notes.tables.capacity()), (0, 0));
        let lone = r#"[{"a":1},{"b":[{"c":{"d":"x"}}]},{}]"#;
        let notes = prescan(lone.as_bytes()).unwrap();
        assert_eq!((notes.members.len(), notes.tables.len()), (0, 0));
        assert_eq!(canon(lone), lone);
        let members: String = (0..100_000)
            .rev()
            .map(|i| format!("\"a{i:x}\":0,"))
            .collect();
        let dense = format!("{{{members}\"z\":0}}");
        let notes = prescan(dense.as_bytes()).unwrap();
        assert_eq!((notes.members.len(), notes.tables.len()), (100_001, 1));
        let bytes = notes.members.len() * std::mem::size_of::<Member>()
            + notes.tables.len() * std::mem::size_of::<Table>();
        assert!(
            bytes <= dense.len(),
            "{bytes} bytes of notes for {}",
            dense.len()
        );
        // Nested objects noted before the larger root: still in place.
        let nested = format!(r#"{{"n":{{"x":1,"y":2}},{members}"z":0}}"#);
        let canonical = canon(&nested);
        assert!(
            canonical.starts_with(r#"{"a0":0,"a1":0,"#),
            "{}",
            &canonical[..40]
        );
        assert!(canonical.contains(r#""n":{"x":1,"y":2},"z":0}"#));
    }

    #[test]
    fn nesting_past_the_first_pass_bound_is_refused_even_when_ignored() {
        let mut out = Vec::new();
        let deep = |n: usize| format!(r#"{{"a":{}1{},"b":1}}"#, "[".repeat(n), "]".repeat(n));
        let ignore_a = IgnoreFields::new(["a"]);
        assert!(canonicalize(deep(MAX_NESTING - 2).as_bytes(), &ignore_a, &mut out).is_ok());
        assert!(canonicalize(deep(MAX_NESTING).as_bytes(), &ignore_a, &mut out).is_err());
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

        use super::super::{reference, IgnoreFields, Kind, Scanner};

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
                    // Generated documents are valid: both must succeed,
                    // unless an object has two members of the same name.
                    if old.is_none() {
                        let mut out = Vec::new();
                        let why = reference::canonicalize(document.as_bytes(), &ignore, &mut out)
                            .unwrap_err()
                            .to_string();
                        prop_assert!(why.contains("duplicate member name"), "{document:?}: {why}");
                    }
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
                let kind = Scanner { bytes: literal.as_bytes(), pos: 0 }.string().unwrap();
                prop_assert_eq!(kind == Kind::Plain, !literal.contains('\\'));
                prop_assert_eq!(kind != Kind::Escaped, reference::canonical_escapes(&literal));
            }
        }
    }
}
