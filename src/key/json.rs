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
    let raw: &RawValue = serde_json::from_slice(input)?;
    write_value(raw, ignore.root(), out)
}

fn write_value(
    raw: &RawValue,
    ignore: Option<&Node>,
    out: &mut impl Sink,
) -> serde_json::Result<()> {
    let text = raw.get().trim();
    match text.as_bytes().first() {
        Some(b'{') => {
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
                write_value(value, child, out)?;
            }
            out.put(b"}");
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(text)?;
            out.put(b"[");
            for (i, item) in items.into_iter().enumerate() {
                if i > 0 {
                    out.put(b",");
                }
                write_value(item, ignore, out)?;
            }
            out.put(b"]");
        }
        Some(b'"') if !text.contains('\\') => {
            // A valid JSON string without escapes is already canonical.
            out.put(text.as_bytes());
        }
        Some(b'"') => {
            let value: String = serde_json::from_str(text)?;
            write_string(&value, out)?;
        }
        // Numbers, true, false, null: untouched.
        _ => out.put(text.as_bytes()),
    }
    Ok(())
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
    fn is_idempotent() {
        let once = canon(r#"{"z":[{"y":"\u00e9","x":1.50}],"a":{}}"#);
        assert_eq!(canon(&once), once);
    }
}
