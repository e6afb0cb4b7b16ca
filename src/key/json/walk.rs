//! The second pass: writes the canonical form, an object's members sorted
//! from the first pass's notes.

use std::borrow::Cow;

use super::{
    error,
    ignore::Node,
    offset,
    prescan::{Member, Notes, ESCAPED},
    scanner::{Kind, Scanner},
    string::{compare_names, decode, name_end, write_string},
    too_deep, Sink,
};

/// The second pass, which writes the canonical form.
pub(super) struct Walk<'a> {
    text: &'a str,
    scanner: Scanner<'a>,
    notes: Notes,
    /// Scratch stack for [`Scanner::skip_value`].
    open: Vec<bool>,
}

impl<'a> Walk<'a> {
    /// A walk over `text`, from its first value (white space skipped), with
    /// the first pass's `notes`.
    pub(super) fn new(text: &'a str, notes: Notes) -> Self {
        let mut scanner = Scanner::new(text.as_bytes());
        scanner.skip_whitespace();
        Self {
            text,
            scanner,
            notes,
            open: Vec::new(),
        }
    }

    fn slice(&self, start: usize, end: usize) -> serde_json::Result<&'a str> {
        self.text
            .get(start..end)
            .ok_or_else(|| error("json offset out of range"))
    }

    /// Writes the value at the cursor (white space skipped) and steps past
    /// it, with at most `depth` more containers nested in it.
    pub(super) fn value(
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
