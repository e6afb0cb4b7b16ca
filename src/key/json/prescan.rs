//! The first pass: validates the document without recursion and notes the
//! members of every object the walk must sort.

use super::{
    error, offset, scanner::Kind, scanner::Scanner, string::compare_names, MAX_DEPTH, MAX_NESTING,
};

/// What the first pass notes for the walk.
pub(super) struct Notes {
    /// The members of every object with two or more, each object's together.
    pub(super) members: Vec<Member>,
    /// Where each such object's members are, by the object's offset.
    pub(super) tables: Vec<Table>,
    /// Whether the document is its own canonical form: no white space,
    /// every object's members in order (so no two of the same name), no
    /// string to decode, nesting within [`MAX_DEPTH`]. With no field
    /// ignored, the walk would write it unchanged: it is hashed as it is.
    pub(super) canonical: bool,
}

/// An object member: 8 bytes.
#[derive(Clone, Copy, Debug)]
pub(super) struct Member {
    /// Offset of the name's opening quote (the value follows the name, a
    /// colon and white space).
    pub(super) name: u32,
    /// For a scalar value, the offset just past it, with [`ESCAPED`] set for
    /// a string to decode and write again; 0 for a container, walked when it
    /// is written.
    pub(super) end: u32,
}

/// In [`Member::end`]: the string has escapes `serde_json` does not write.
/// Offsets stay below it (inputs under 2 GiB).
pub(super) const ESCAPED: u32 = 1 << 31;

/// Where the members of one object are in [`Notes::members`]: 12 bytes.
#[derive(Clone, Copy, Debug)]
pub(super) struct Table {
    /// Offset of the object's `{`.
    pub(super) offset: u32,
    pub(super) start: u32,
    pub(super) len: u32,
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
pub(super) fn prescan(bytes: &[u8]) -> serde_json::Result<Notes> {
    let mut scanner = Scanner::new(bytes);
    let mut notes = Notes {
        members: Vec::new(),
        tables: Vec::new(),
        canonical: true,
    };
    // Whether what was read so far is in canonical form (white space aside,
    // which the scanner notes).
    let mut canonical = true;
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
                canonical &= open.len() <= MAX_DEPTH;
                scanner.pos += 1;
                scanner.skip_whitespace();
                let close = if object { b'}' } else { b']' };
                if scanner.peek() != Some(close) {
                    if object {
                        member = Some(offset(scanner.pos));
                        canonical &= scanner.key()? != Kind::Escaped;
                    }
                    continue 'value;
                }
            }
            Some(b'"') => {
                let kind = scanner.string()?;
                canonical &= kind != Kind::Escaped;
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
                notes.canonical = canonical && !scanner.spaced;
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
                    let name = scanner.pos;
                    member = Some(offset(name));
                    let kind = scanner.key()?;
                    // In order after the object's previous member (the
                    // last pending: any nested in its value are gone).
                    canonical = canonical
                        && kind != Kind::Escaped
                        && pending.last().is_some_and(|previous| {
                            compare_names(bytes, previous.name as usize, name).is_lt()
                        });
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
