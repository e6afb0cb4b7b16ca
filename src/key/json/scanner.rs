//! The cursor both passes read the input with: it validates what it steps
//! over, strings, numbers and literals as strictly as `serde_json`.

use super::{
    error,
    string::{has_control, hex4, special},
};

/// What a string literal holds, as far as writing it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
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
pub(super) struct Scanner<'a> {
    pub(super) bytes: &'a [u8],
    pub(super) pos: usize,
    /// Whether any white space was skipped.
    pub(super) spaced: bool,
}

impl<'a> Scanner<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            pos: 0,
            spaced: false,
        }
    }

    pub(super) fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    pub(super) fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.pos += 1;
            self.spaced = true;
        }
    }

    /// Steps past `byte` and the white space after it, or fails.
    pub(super) fn expect(&mut self, byte: u8, reason: &'static str) -> serde_json::Result<()> {
        if self.peek() != Some(byte) {
            return Err(error(reason));
        }
        self.pos += 1;
        self.skip_whitespace();
        Ok(())
    }

    /// Steps over one value, validating it, without recursion: `open` is
    /// the stack of containers still open (`true` for an object).
    pub(super) fn skip_value(&mut self, open: &mut Vec<bool>) -> serde_json::Result<()> {
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
    pub(super) fn scalar(&mut self) -> serde_json::Result<()> {
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
    pub(super) fn key(&mut self) -> serde_json::Result<Kind> {
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
    ///
    /// Jumps from one quote or backslash to the next ([`special`]), then
    /// checks the whole literal for control characters at once
    /// ([`has_control`]): two passes over the bytes, each many bytes an
    /// instruction, rather than one that stops at every byte.
    pub(super) fn string(&mut self) -> serde_json::Result<Kind> {
        self.pos += 1;
        let start = self.pos;
        let mut escaped = false;
        let mut canonical = true;
        loop {
            let rest = self.bytes.get(self.pos..).unwrap_or_default();
            let Some(at) = special(rest) else {
                self.pos = self.bytes.len();
                return Err(self.unterminated(start));
            };
            self.pos += at;
            match self.peek() {
                Some(b'"') => break,
                _ => {
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
            }
        }
        if has_control(self.bytes.get(start..self.pos).unwrap_or_default()) {
            return Err(error("control character while parsing a string"));
        }
        self.pos += 1;
        Ok(match (escaped, canonical) {
            (false, _) => Kind::Plain,
            (true, true) => Kind::Canonical,
            (true, false) => Kind::Escaped,
        })
    }

    /// The error for a string from `start` without its closing quote.
    fn unterminated(&self, start: usize) -> serde_json::Error {
        if has_control(self.bytes.get(start..).unwrap_or_default()) {
            error("control character while parsing a string")
        } else {
            error("EOF while parsing a string")
        }
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
