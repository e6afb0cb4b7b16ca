//! The former implementation, kept as the oracle of the differential tests:
//! every nesting level re-parses its subtree through `serde_json`'s
//! [`RawValue`], within a budget of 16 times the input.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use super::{ignore::Node, string::write_string, IgnoreFields, Sink};

/// Writes the canonical form of `input` into `out`, or fails when `input` is
/// not one valid JSON document (in which case `out` holds garbage).
pub(super) fn canonicalize(
    input: &[u8],
    ignore: &IgnoreFields,
    out: &mut impl Sink,
) -> serde_json::Result<()> {
    let text = std::str::from_utf8(input)
        .map_err(|_| <serde_json::Error as serde::de::Error>::custom("a JSON document is UTF-8"))?;
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
