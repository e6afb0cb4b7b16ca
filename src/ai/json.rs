//! Picks a few top-level fields out of a JSON object without building the
//! whole document.
//!
//! AI request and response bodies can be large (base64 images in requests,
//! thousands of floats in embeddings responses) while this crate needs only a
//! handful of top-level fields. [`pick_fields`] keeps those as
//! [`serde_json::Value`]s and skips everything else with
//! [`serde::de::IgnoredAny`], which scans without allocating. Duplicate keys
//! are allowed, the last one wins (as with `serde_json::Value`).

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// The values of the top-level fields `names` of the JSON object in `body`.
///
/// Returns `None` when `body` is not exactly one JSON object (surrounding
/// whitespace and a leading UTF-8 byte order mark are allowed). A field that is
/// present with the value `null` comes back as `Some(Value::Null)`.
pub(crate) fn pick_fields<const N: usize>(
    body: &[u8],
    names: [&str; N],
) -> Option<[Option<Value>; N]> {
    pick(body, &names, false)
}

/// As [`pick_fields`], for fields whose use is a scalar: an array or object
/// comes back empty (`[]`, `{}`), its contents skipped, never built. A
/// request body is the client's: a field it makes a huge container would
/// otherwise cost many times its size (a `serde_json::Value` per `0,`).
pub(crate) fn pick_scalar_fields<const N: usize>(
    body: &[u8],
    names: [&str; N],
) -> Option<[Option<Value>; N]> {
    pick(body, &names, true)
}

fn pick<const N: usize>(
    body: &[u8],
    names: &[&str; N],
    shallow: bool,
) -> Option<[Option<Value>; N]> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let mut de = serde_json::Deserializer::from_slice(body);
    let picked = ObjectSeed { names, shallow }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(picked)
}

/// A non-empty JSON string, else `None`.
pub(crate) fn non_empty_string(value: Option<&Value>) -> Option<&str> {
    match value {
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        _ => None,
    }
}

struct ObjectSeed<'n, const N: usize> {
    names: &'n [&'n str; N],
    /// Containers come back empty.
    shallow: bool,
}

impl<'de, const N: usize> DeserializeSeed<'de> for ObjectSeed<'_, N> {
    type Value = [Option<Value>; N];

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, const N: usize> Visitor<'de> for ObjectSeed<'_, N> {
    type Value = [Option<Value>; N];

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out: [Option<Value>; N] = std::array::from_fn(|_| None);
        while let Some(index) = map.next_key_seed(KeySeed { names: self.names })? {
            match index.and_then(|i| out.get_mut(i)) {
                Some(slot) if self.shallow => *slot = Some(map.next_value_seed(Shallow)?),
                Some(slot) => *slot = Some(map.next_value::<Value>()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

/// A JSON value with any array or object in it skipped: `[]` or `{}` stands
/// for it.
struct Shallow;

impl<'de> DeserializeSeed<'de> for Shallow {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Shallow {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Value::Array(Vec::new()))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Value::Object(serde_json::Map::new()))
    }
}

/// Deserializes an object key into the index of the matching wanted name.
struct KeySeed<'n> {
    names: &'n [&'n str],
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.names.iter().position(|name| *name == key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_wanted_fields_and_skips_the_rest() {
        let body = br#"{"a":1,"skip":{"deep":[1,2,{"x":null}]},"b":"two","c":null}"#;
        let [a, b, c, d] = pick_fields(body, ["a", "b", "c", "d"]).expect("object");
        assert_eq!(a, Some(Value::from(1)));
        assert_eq!(b, Some(Value::from("two")));
        assert_eq!(c, Some(Value::Null));
        assert_eq!(d, None);
    }

    #[test]
    fn scalar_fields_come_back_as_they_are_and_containers_empty() {
        let body = br#"{"a":[1,[2]],"b":{"c":{"d":1}},"s":"x","n":-1.5,"u":null,"t":true}"#;
        let picked = pick_scalar_fields(body, ["a", "b", "s", "n", "u", "t"]).expect("object");
        assert_eq!(
            picked,
            [
                Some(Value::Array(Vec::new())),
                Some(Value::Object(serde_json::Map::new())),
                Some(Value::from("x")),
                Some(Value::from(-1.5)),
                Some(Value::Null),
                Some(Value::Bool(true)),
            ]
        );
        // The skipped contents are still checked: the document is refused
        // as a whole as before.
        assert!(pick_scalar_fields(br#"{"a":[1,}"#, ["a"]).is_none());
    }

    #[test]
    fn last_duplicate_wins() {
        let [a] = pick_fields(br#"{"a":1,"a":2}"#, ["a"]).expect("object");
        assert_eq!(a, Some(Value::from(2)));
    }

    #[test]
    fn escaped_keys_match() {
        let [a] = pick_fields(br#"{"\u0061":1}"#, ["a"]).expect("object");
        assert_eq!(a, Some(Value::from(1)));
    }

    #[test]
    fn rejects_non_objects_and_trailing_garbage() {
        assert!(pick_fields(b"[1,2]", ["a"]).is_none());
        assert!(pick_fields(b"\"a\"", ["a"]).is_none());
        assert!(pick_fields(b"{} {}", ["a"]).is_none());
        assert!(pick_fields(b"{\"a\":1", ["a"]).is_none());
        assert!(pick_fields(b"", ["a"]).is_none());
        assert!(pick_fields(b"\xff{}", ["a"]).is_none());
    }

    #[test]
    fn accepts_bom_and_whitespace() {
        assert!(pick_fields(b"\xEF\xBB\xBF {\"a\":1}\n", ["a"]).is_some());
    }

    #[test]
    fn skipped_numbers_out_of_f64_range_are_fine() {
        let [a] = pick_fields(br#"{"big":1e400,"a":true}"#, ["a"]).expect("object");
        assert_eq!(a, Some(Value::Bool(true)));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let mut body = b"{\"x\":".to_vec();
        body.resize(body.len() + 100_000, b'[');
        assert!(pick_fields(&body, ["a"]).is_none());
        let mut body = b"{\"a\":".to_vec();
        body.resize(body.len() + 100_000, b'[');
        assert!(pick_fields(&body, ["a"]).is_none());
    }
}
