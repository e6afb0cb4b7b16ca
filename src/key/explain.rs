//! What went into a key, in words: the answer to "why did this miss?".
//!
//! Names only, never a value a caller may not want echoed or logged: the
//! query's parameter names, the names of the vary headers the request sent,
//! how the body was read. The key itself ends the line, so two explanations
//! can be compared side by side.

use std::fmt::Write;

use http::request::Parts;

use super::{is_json, json, BodyMode, Key, KeySpec};

impl KeySpec {
    /// Explains the content key of a request in `namespace`, or, with
    /// `idempotency_key`, the key an `Idempotency-Key` header names (scoped
    /// by method, authority, path and the vary headers; the body is only the
    /// payload's fingerprint then).
    ///
    /// The result is visible ASCII, items separated by `; `:
    /// `method=POST; authority=api.example.com; path=/v1/chat/completions;
    /// query=stream; headers=authorization,content-type;
    /// body=canonical-json; ignored=user; namespace=v1; key=<hex>`.
    pub(crate) fn explain(
        &self,
        namespace: &str,
        parts: &Parts,
        body: &[u8],
        idempotency_key: bool,
        key: &Key,
    ) -> String {
        let mut out = String::new();
        if self.custom.is_some() && !idempotency_key {
            out.push_str("custom=key-fn");
        } else {
            item(&mut out, "method", parts.method.as_str().as_bytes());
            if self.authority {
                let authority = match parts.uri.authority() {
                    Some(authority) => authority.as_str().as_bytes().to_vec(),
                    None => names(
                        parts
                            .headers
                            .get_all(http::header::HOST)
                            .iter()
                            .map(|h| h.as_bytes()),
                    ),
                };
                item(&mut out, "authority", &authority);
            }
            item(&mut out, "path", parts.uri.path().as_bytes());
            if !idempotency_key {
                let query = parts.uri.query().unwrap_or("");
                let mut query: Vec<&str> = query
                    .split('&')
                    .filter(|pair| !pair.is_empty())
                    .map(|pair| pair.split('=').next().unwrap_or(""))
                    .collect();
                query.sort_unstable();
                item(
                    &mut out,
                    "query",
                    &names(query.iter().map(|name| name.as_bytes())),
                );
            }
            let present = self
                .vary
                .iter()
                .filter(|name| parts.headers.contains_key(*name))
                .map(|name| name.as_str().as_bytes());
            item(&mut out, "headers", &names(present));
            if idempotency_key {
                item(&mut out, "idempotency-key", b"header");
            } else {
                self.explain_body(&mut out, parts, body);
            }
        }
        item(&mut out, "namespace", namespace.as_bytes());
        item(&mut out, "key", key.to_hex().as_bytes());
        out
    }

    fn explain_body(&self, out: &mut String, parts: &Parts, body: &[u8]) {
        match &self.body {
            BodyMode::Json(ignore) if is_json(parts) => {
                let canonical = json::canonicalize(body, ignore, &mut Vec::new()).is_ok();
                let mode: &[u8] = if canonical {
                    b"canonical-json"
                } else {
                    b"raw (not valid json)"
                };
                item(out, "body", mode);
                let ignored = ignore.paths();
                if canonical && !ignored.is_empty() {
                    item(out, "ignored", &names(ignored.iter().map(|p| p.as_bytes())));
                }
            }
            BodyMode::Json(_) => item(out, "body", b"raw (not json)"),
            BodyMode::Raw => item(out, "body", b"raw"),
            BodyMode::Normalize(_) => item(out, "body", b"normalized"),
        }
        item(out, "body-bytes", body.len().to_string().as_bytes());
    }
}

/// A comma-separated list.
fn names<'a>(names: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for name in names {
        if !out.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(name);
    }
    out
}

/// Appends `name=value`, the value's bytes outside visible ASCII (and the
/// separator `;`) percent-encoded, so the line is always a valid header value.
fn item(out: &mut String, name: &str, value: &[u8]) {
    if !out.is_empty() {
        out.push_str("; ");
    }
    out.push_str(name);
    out.push('=');
    for &byte in value {
        match byte {
            b'%' | b';' => {
                let _ = write!(out, "%{byte:02X}");
            }
            0x20..=0x7e => out.push(byte as char),
            _ => {
                let _ = write!(out, "%{byte:02X}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderValue, Request};

    use super::*;
    use crate::key::IgnoreFields;

    fn parts(request: Request<()>) -> Parts {
        request.into_parts().0
    }

    #[test]
    fn names_every_part_and_no_header_value() {
        let spec = KeySpec {
            body: BodyMode::Json(IgnoreFields::new(["user", "metadata.id"])),
            ..KeySpec::default()
        };
        let head = parts(
            Request::post("https://api.example.com/v1/chat?stream=true&b=2")
                .header("authorization", "Bearer sk-secret")
                .header("content-type", "application/json")
                .body(())
                .unwrap(),
        );
        let body = br#"{"model":"m","user":"u"}"#;
        let key = spec.key("v1", &head, body).unwrap();
        let text = spec.explain("v1", &head, body, false, &key);
        assert_eq!(
            text,
            format!(
                "method=POST; authority=api.example.com; path=/v1/chat; query=b,stream; \
                 headers=authorization,content-type; body=canonical-json; \
                 ignored=metadata.id,user; body-bytes=24; namespace=v1; key={key}"
            )
        );
        assert!(!text.contains("secret"));
        assert!(!text.contains("true"));
        HeaderValue::from_str(&text).unwrap();
    }

    #[test]
    fn says_how_a_body_that_is_not_canonical_json_was_read() {
        let spec = KeySpec::default();
        let key = Key::from_bytes([0; 32]);
        let json = parts(
            Request::post("/a")
                .header("content-type", "application/json")
                .body(())
                .unwrap(),
        );
        assert!(spec
            .explain("", &json, b"{not json", false, &key)
            .contains("body=raw (not valid json)"));
        let text = parts(Request::post("/a").body(()).unwrap());
        assert!(spec
            .explain("", &text, b"hello", false, &key)
            .contains("body=raw (not json)"));
    }

    #[test]
    fn anything_outside_visible_ascii_is_escaped() {
        let spec = KeySpec::default();
        let key = Key::from_bytes([0; 32]);
        let mut head = parts(Request::get("/a").body(()).unwrap());
        head.headers
            .insert("host", HeaderValue::from_bytes(b"caf\xc3\xa9;x").unwrap());
        let text = spec.explain("n;s", &head, b"", false, &key);
        assert!(text.contains("authority=caf%C3%A9%3Bx"), "{text}");
        assert!(text.contains("namespace=n%3Bs"), "{text}");
        HeaderValue::from_str(&text).unwrap();
    }

    #[test]
    fn an_idempotency_key_is_explained_by_its_scope() {
        let spec = KeySpec::default();
        let key = Key::from_bytes([7; 32]);
        let head = parts(
            Request::post("/pay?x=1")
                .header("idempotency-key", "\"abc\"")
                .header("x-api-key", "secret")
                .body(())
                .unwrap(),
        );
        let text = spec.explain("", &head, b"{}", true, &key);
        assert!(
            text.contains("headers=x-api-key; idempotency-key=header"),
            "{text}"
        );
        assert!(!text.contains("query="), "{text}");
        assert!(!text.contains("abc") && !text.contains("secret"), "{text}");
    }
}
