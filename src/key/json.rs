//! Canonical JSON: object keys sorted, insignificant white space dropped,
//! values untouched.
//!
//! Numbers, `true`, `false` and `null` are copied byte for byte from the
//! input (so `1`, `1.0` and `1e0` stay different, and integers of any size
//! keep every digit). Strings are re-escaped the way `serde_json` writes them,
//! so `"\u0041"` and `"A"` are the same string. Duplicate object keys keep the
//! last value, as `serde_json` does.
//!
//! The walk borrows the input through [`RawValue`], one level at a time, so
//! nothing is converted to floating point and no `serde_json` feature that
//! would change other crates' behaviour is needed.

use std::{collections::BTreeMap, io, sync::Arc};

use serde_json::value::RawValue;

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
/// not one valid JSON document (in which case `out` holds garbage).
pub(crate) fn canonicalize(
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
fn canonical_escapes(literal: &str) -> bool {
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

#[cfg(test)]
mod tests {
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
    fn the_cost_of_the_walk_is_bounded_by_the_body_size() {
        let mut out = Vec::new();
        let payload = format!("\"{}\"", "x".repeat(1 << 20));
        let nest = |depth: usize| format!("{}{payload}{}", "[".repeat(depth), "]".repeat(depth));
        // Ordinary nesting around a large value is canonicalised…
        assert!(canonicalize(nest(5).as_bytes(), &IgnoreFields::default(), &mut out).is_ok());
        // …but within the depth limit, a large value nested deep enough to
        // cost more than SCAN_BUDGET times the body is hashed raw instead.
        assert!(canonicalize(nest(100).as_bytes(), &IgnoreFields::default(), &mut out).is_err());
    }

    #[test]
    fn is_idempotent() {
        let once = canon(r#"{"z":[{"y":"\u00e9","x":1.50}],"a":{}}"#);
        assert_eq!(canon(&once), once);
    }
}
