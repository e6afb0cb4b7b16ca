//! Aliases: the raw digest of a request already keyed, and its key, so a
//! byte-identical repeat skips the JSON canonicalisation (see
//! [`KeySpec::key_aliased`](super::KeySpec::key_aliased)).

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

use http::request::Parts;
use sha2::{Digest, Sha256};

use super::{is_json, BodyMode, BuildKeyHasher, Key, KeySpec, Sink, BODY_ALIAS};

const SHARDS: usize = 16;
/// Aliases a shard holds before it starts over: 16 × 1,024 of 64 bytes each,
/// about a MiB in all. Losing one costs a repeat one canonicalisation.
const PER_SHARD: usize = 1024;

impl KeySpec {
    /// The key of a request in `namespace`, as [`key`](Self::key), found
    /// through `aliases` when a byte-identical request was keyed before: a
    /// repeat then costs one SHA-256 of its raw bytes, not the
    /// canonicalisation of its JSON body.
    ///
    /// The alias is the digest of the same framing as the key's, up to the
    /// body, followed by the raw body under a tag of its own. It covers
    /// everything the key covers (namespace, method, authority, path, query,
    /// vary headers) and the body byte for byte, so the key is a function of
    /// it: two requests with different keys never share an alias. Only the
    /// content key of a JSON body is aliased; a custom key function may read
    /// anything in the request, and a raw or normalised body gains nothing.
    pub(crate) fn key_aliased(
        &self,
        namespace: &str,
        parts: &Parts,
        body: &[u8],
        aliases: &Aliases,
    ) -> Option<Key> {
        if self.custom.is_some() || !matches!(self.body, BodyMode::Json(_)) || !is_json(parts) {
            return self.key(namespace, parts, body);
        }
        let mut hasher = Sha256::new();
        self.hash_head(namespace, parts, &mut hasher);
        let mut raw = hasher.clone();
        raw.put(&[BODY_ALIAS]);
        raw.put(body);
        let raw = Key(raw.finalize().into());
        if let Some(key) = aliases.get(&raw) {
            return Some(key);
        }
        self.frame_body(parts, body, &mut hasher);
        let key = Key(hasher.finalize().into());
        aliases.insert(raw, key);
        Some(key)
    }
}

/// A small bounded map from raw digest to key.
pub(crate) struct Aliases {
    shards: Box<[Mutex<HashMap<Key, Key, BuildKeyHasher>>]>,
}

impl Default for Aliases {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl Aliases {
    fn shard(&self, raw: &Key) -> std::sync::MutexGuard<'_, HashMap<Key, Key, BuildKeyHasher>> {
        // Digests: any byte spreads them evenly.
        self.shards[usize::from(raw.as_bytes()[0]) % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn get(&self, raw: &Key) -> Option<Key> {
        self.shard(raw).get(raw).copied()
    }

    pub(crate) fn insert(&self, raw: Key, key: Key) {
        let mut shard = self.shard(&raw);
        if shard.len() >= PER_SHARD {
            shard.clear();
        }
        shard.insert(raw, key);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use http::{request::Parts, Request};

    use super::*;
    use crate::key::{IgnoreFields, KeySpec};

    fn parts(builder: http::request::Builder) -> Parts {
        builder.body(()).unwrap().into_parts().0
    }

    fn post(uri: &str) -> http::request::Builder {
        Request::post(uri).header("content-type", "application/json")
    }

    /// Keyed through the aliases, twice (the second time from the alias),
    /// and checked against the key computed without them.
    fn keyed(
        spec: &KeySpec,
        aliases: &Aliases,
        ns: &str,
        builder: http::request::Builder,
        body: &str,
    ) -> Key {
        let head = parts(builder);
        let plain = spec.key(ns, &head, body.as_bytes()).unwrap();
        let first = spec
            .key_aliased(ns, &head, body.as_bytes(), aliases)
            .unwrap();
        let again = spec
            .key_aliased(ns, &head, body.as_bytes(), aliases)
            .unwrap();
        assert_eq!((first, again), (plain, plain));
        plain
    }

    #[test]
    fn the_same_raw_body_elsewhere_is_another_key() {
        let spec = KeySpec::default();
        let aliases = Aliases::default();
        let body = r#"{"model":"m","messages":[]}"#;
        let base = keyed(&spec, &aliases, "", post("https://a.example/v1/chat"), body);
        let elsewhere = [
            keyed(
                &spec,
                &aliases,
                "",
                post("https://a.example/v1/other"),
                body,
            ),
            keyed(&spec, &aliases, "", post("https://b.example/v1/chat"), body),
            keyed(
                &spec,
                &aliases,
                "",
                post("https://a.example/v1/chat?x=1"),
                body,
            ),
            keyed(
                &spec,
                &aliases,
                "v2",
                post("https://a.example/v1/chat"),
                body,
            ),
            keyed(
                &spec,
                &aliases,
                "",
                post("https://a.example/v1/chat").header("authorization", "Bearer other"),
                body,
            ),
            keyed(
                &spec,
                &aliases,
                "",
                Request::put("https://a.example/v1/chat")
                    .header("content-type", "application/json"),
                body,
            ),
        ];
        for (n, key) in elsewhere.iter().enumerate() {
            assert_ne!(*key, base, "case {n}");
        }
        assert_eq!(aliases.len(), 7);
    }

    #[test]
    fn canonically_equal_bodies_share_the_key_not_the_alias() {
        let spec = KeySpec::default();
        let aliases = Aliases::default();
        let a = keyed(&spec, &aliases, "", post("/"), r#"{"a":1,"b":2}"#);
        let b = keyed(&spec, &aliases, "", post("/"), r#"{ "b": 2, "a": 1 }"#);
        assert_eq!(a, b);
        assert_eq!(aliases.len(), 2);
    }

    #[test]
    fn ignored_fields_and_invalid_json_still_key_as_without_aliases() {
        let spec = KeySpec {
            body: crate::key::BodyMode::Json(IgnoreFields::new(["user"])),
            ..KeySpec::default()
        };
        let aliases = Aliases::default();
        let a = keyed(&spec, &aliases, "", post("/"), r#"{"q":1,"user":"x"}"#);
        let b = keyed(&spec, &aliases, "", post("/"), r#"{"q":1,"user":"y"}"#);
        assert_eq!(a, b);
        keyed(&spec, &aliases, "", post("/"), "{not json");
    }

    #[test]
    fn a_custom_key_or_a_text_body_is_never_aliased() {
        let aliases = Aliases::default();
        let mut spec = KeySpec::default();
        keyed(
            &spec,
            &aliases,
            "",
            Request::post("/").header("content-type", "text/plain"),
            "hi",
        );
        spec.custom = Some(std::sync::Arc::new(|_: &Parts, body: &[u8]| {
            Some(body.to_vec())
        }));
        keyed(&spec, &aliases, "", post("/"), r#"{"a":1}"#);
        assert_eq!(aliases.len(), 0);
    }

    #[test]
    fn a_full_shard_starts_over() {
        let aliases = Aliases::default();
        for n in 0..(SHARDS * PER_SHARD * 3) as u32 {
            let mut bytes = [0u8; 32];
            bytes[..4].copy_from_slice(&n.to_le_bytes());
            aliases.insert(Key::from_bytes(bytes), Key::from_bytes(bytes));
        }
        assert!(aliases.len() <= SHARDS * PER_SHARD);
    }
}
