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
//! A first pass ([`prescan`](prescan::prescan())) validates the document
//! (RFC 8259, as strict as `serde_json`) without recursion and notes, for
//! each object with two or more members, each [`Member`](prescan::Member):
//! where its name starts and, for a scalar value, where the value ends (two
//! `u32`, 8 bytes), each object's members together and found by the object's
//! offset ([`Table`](prescan::Table), 12 bytes). Arrays and scalars keep
//! their order, so nothing is noted for them, nor for an object of one
//! member.
//!
//! A document that the first pass finds to be its own canonical form
//! (compact, members in order, no escape to rewrite: what a client
//! serialising a sorted map sends) is hashed as it is, without the second
//! pass, when no field is ignored.
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
//! re-escaped. What it writes goes through a small buffer ([`Buffered`]),
//! so that the many short pieces (brackets, commas, names) reach the hasher
//! as a few large updates.
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
//! - Linear work: the first pass reads each byte once (a string's bytes
//!   twice: once for its end, once for control characters, both many bytes
//!   an instruction); the second reads
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
//!
//! # Layout
//!
//! - `ignore`: the fields left out ([`IgnoreFields`]);
//! - `buffer`: the buffer between the walk and the sink;
//! - `scanner`: the validating cursor both passes read with (strings,
//!   numbers, literals, and stepping over a whole value);
//! - `string`: string literals (their end, names compared without decoding,
//!   escapes decoded and written as `serde_json` does);
//! - `prescan`: the first pass and its notes;
//! - `walk`: the second pass, which writes;
//! - `reference` (tests only): the former implementation, the oracle of the
//!   differential tests in `tests`.

mod buffer;
mod ignore;
mod prescan;
#[cfg(test)]
mod reference;
mod scanner;
mod string;
#[cfg(test)]
mod tests;
mod walk;

pub(crate) use ignore::IgnoreFields;

use super::Sink;
use buffer::Buffered;
use prescan::{prescan, ESCAPED};
use walk::Walk;

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
    if notes.canonical && ignore.root().is_none() {
        // Already canonical: the walk would write it unchanged.
        out.put(input);
        return Ok(());
    }
    let mut out = Buffered::new(out);
    Walk::new(text, notes).value(ignore.root(), MAX_DEPTH, &mut out)?;
    out.flush();
    Ok(())
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

/// An offset in the input (under 2 GiB).
fn offset(pos: usize) -> u32 {
    u32::try_from(pos).unwrap_or(u32::MAX)
}

fn too_deep() -> serde_json::Error {
    error("json too deep to canonicalise")
}
