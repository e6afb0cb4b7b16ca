//! The entries of a key's stream: what a leader appends and a follower
//! reads. Anything under our keys that does not decode is a failed stream,
//! never a panic.

use bytes::Bytes;
use http::{HeaderMap, StatusCode, Version};
use redis::Value;

use crate::record::{codec, Record};

/// Field names, one per entry.
pub(super) const HEAD: &str = "h";
pub(super) const CHUNK: &str = "c";
pub(super) const END: &str = "e";
pub(super) const FAILED: &str = "f";
/// The second field of every entry: the lease token of the leader that
/// wrote it.
pub(super) const WRITER: &str = "w";
/// The third field of a chunk and of an end: where it starts in the body,
/// in decimal (for an end, the body's whole length). A follower checks
/// that the chunks it receives are contiguous and that the end comes after
/// all of them: a stream that lost entries (another leader's `DEL`, an
/// entry trimmed away) fails instead of passing for complete.
pub(super) const OFFSET: &str = "o";
/// The reason of a failed end when the answer grew past the response
/// limit: the leader's caller got it whole, it is just not shared.
pub(super) const TOO_LARGE: &[u8] = b"too large";

/// What a follower receives after the head.
#[derive(Debug)]
pub(crate) enum StreamEntry {
    /// More body bytes.
    Chunk(Bytes),
    /// The body ended, complete, with these trailers.
    End(Option<HeaderMap>),
    /// The body will not complete: the leader's upstream body failed. Its
    /// followers share that failure, as local followers share their
    /// leader's.
    LeaderFailed,
    /// The body will not complete here: the leader went away or lost its
    /// lease, the answer outgrew the stream, or Redis failed. A follower
    /// may go through in its place. What was received must not pass for a
    /// complete body.
    Failed(&'static str),
}

/// The head entry's value: the record's binary form, without a body.
pub(super) fn encode_head(head: &Record) -> Vec<u8> {
    codec::encode(head)
}

/// The end entry's value: trailers, carried in the record's binary form.
pub(super) fn encode_end(trailers: Option<&HeaderMap>) -> Vec<u8> {
    codec::encode(&Record {
        status: StatusCode::OK,
        version: Version::HTTP_11,
        headers: HeaderMap::new(),
        body: Bytes::new(),
        trailers: trailers.cloned(),
        created_at: 0,
        expires_at: 0,
        meta: Bytes::new(),
        info: Default::default(),
    })
}

/// One entry as read: its id, field and value.
pub(super) struct Raw {
    pub(super) id: String,
    pub(super) field: Vec<u8>,
    pub(super) value: Bytes,
    /// The lease token of the leader that wrote it.
    pub(super) writer: Option<Bytes>,
    /// Where a chunk starts in the body, or an end's total length; `None`
    /// when missing or not a decimal number.
    pub(super) offset: Option<u64>,
}

impl Raw {
    /// What a follower gets from this entry, if anything: a head met again
    /// is skipped, an unknown entry fails the stream.
    pub(super) fn entry(&self) -> Option<StreamEntry> {
        match self.field.as_slice() {
            f if f == CHUNK.as_bytes() => Some(StreamEntry::Chunk(self.value.clone())),
            f if f == END.as_bytes() => Some(match codec::decode(self.value.clone()) {
                Ok(carrier) => StreamEntry::End(carrier.trailers),
                Err(_) => StreamEntry::Failed("the stream's end did not decode"),
            }),
            f if f == FAILED.as_bytes() && self.value == TOO_LARGE => Some(StreamEntry::Failed(
                "the answer grew past the response limit",
            )),
            f if f == FAILED.as_bytes() => Some(StreamEntry::LeaderFailed),
            f if f == HEAD.as_bytes() => None,
            _ => Some(StreamEntry::Failed("an unknown entry in the stream")),
        }
    }

    /// The head this entry carries, if it is one that decodes.
    pub(super) fn head(&self) -> Option<Record> {
        if self.field != HEAD.as_bytes() {
            return None;
        }
        codec::decode(self.value.clone()).ok()
    }

    pub(super) fn is_failure(&self) -> bool {
        self.field == FAILED.as_bytes()
    }

    /// Whether the leader holding the lease `token` wrote it.
    pub(super) fn written_by(&self, token: &[u8]) -> bool {
        self.writer.as_deref() == Some(token)
    }
}

/// The entries of an `XRANGE` reply (or of one stream in an `XREAD`
/// reply): `[[id, [field, value, ...]], ...]`. Entries that do not have
/// that shape are dropped.
pub(super) fn entries(value: &Value) -> Vec<Raw> {
    let Value::Array(items) = value else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(pair) = item else {
                return None;
            };
            let [id, fields] = pair.as_slice() else {
                return None;
            };
            let id = text(id)?;
            let Value::Array(fields) = fields else {
                return None;
            };
            let [field, value, rest @ ..] = fields.as_slice() else {
                return None;
            };
            let (mut writer, mut offset) = (None, None);
            for pair in rest.chunks_exact(2) {
                let Some(name) = bytes(&pair[0]) else {
                    continue;
                };
                if name.as_ref() == WRITER.as_bytes() {
                    writer = bytes(&pair[1]);
                } else if name.as_ref() == OFFSET.as_bytes() {
                    offset = text(&pair[1]).and_then(|text| text.parse().ok());
                }
            }
            Some(Raw {
                id,
                field: bytes(field)?.to_vec(),
                value: bytes(value)?,
                writer,
                offset,
            })
        })
        .collect()
}

/// The streams of an `XREAD` reply, by name: `[[name, entries], ...]`
/// (RESP2) or a map of name to entries (RESP3). `Nil` (nothing new) is none.
pub(super) fn streams(value: &Value) -> Vec<(String, Vec<Raw>)> {
    match value {
        Value::Array(items) => items
            .iter()
            .filter_map(|item| match item {
                Value::Array(pair) => match pair.as_slice() {
                    [name, entries_value] => Some((text(name)?, entries(entries_value))),
                    _ => None,
                },
                _ => None,
            })
            .collect(),
        Value::Map(pairs) => pairs
            .iter()
            .filter_map(|(name, entries_value)| Some((text(name)?, entries(entries_value))))
            .collect(),
        _ => Vec::new(),
    }
}

fn bytes(value: &Value) -> Option<Bytes> {
    match value {
        Value::BulkString(data) => Some(Bytes::copy_from_slice(data)),
        Value::SimpleString(text) => Some(Bytes::copy_from_slice(text.as_bytes())),
        _ => None,
    }
}

fn text(value: &Value) -> Option<String> {
    String::from_utf8(bytes(value)?.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(data: &[u8]) -> Value {
        Value::BulkString(data.to_vec())
    }

    #[test]
    fn entries_decode_and_garbage_is_dropped_or_fails() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-done", "yes".parse().unwrap());
        let reply = Value::Array(vec![
            Value::Array(vec![
                bulk(b"1-0"),
                Value::Array(vec![bulk(b"c"), bulk(b"data: 1\n\n")]),
            ]),
            Value::Array(vec![
                bulk(b"1-1"),
                Value::Array(vec![bulk(b"e"), bulk(&encode_end(Some(&trailers)))]),
            ]),
            Value::Array(vec![
                bulk(b"1-2"),
                Value::Array(vec![bulk(b"e"), bulk(b"garbage")]),
            ]),
            Value::Array(vec![
                bulk(b"1-3"),
                Value::Array(vec![bulk(b"zz"), bulk(b"")]),
            ]),
            Value::Array(vec![
                bulk(b"1-4"),
                Value::Array(vec![bulk(b"f"), bulk(TOO_LARGE)]),
            ]),
            Value::Array(vec![
                bulk(b"1-5"),
                Value::Array(vec![bulk(b"f"), bulk(b"gone")]),
            ]),
            Value::Array(vec![bulk(b"1-6")]),
            Value::Int(7),
        ]);
        let raw = entries(&reply);
        assert_eq!(raw.len(), 6, "the malformed ones are dropped");
        assert!(matches!(raw[4].entry(), Some(StreamEntry::Failed(why)) if why.contains("limit")));
        assert!(matches!(raw[5].entry(), Some(StreamEntry::LeaderFailed)));
        assert!(matches!(raw[0].entry(), Some(StreamEntry::Chunk(b)) if b == "data: 1\n\n"));
        assert!(matches!(raw[1].entry(), Some(StreamEntry::End(Some(t))) if t == trailers));
        assert!(matches!(raw[2].entry(), Some(StreamEntry::Failed(_))));
        assert!(matches!(raw[3].entry(), Some(StreamEntry::Failed(_))));
        assert!(raw[0].head().is_none());
        assert!(streams(&Value::Nil).is_empty());
        let read = Value::Array(vec![Value::Array(vec![bulk(b"s"), reply])]);
        assert_eq!(streams(&read)[0].0, "s");
    }

    #[test]
    fn the_writer_and_the_offset_are_read_in_any_order_and_garbage_is_none() {
        let entry = |fields: &[&[u8]]| {
            let fields = fields.iter().map(|field| bulk(field)).collect();
            Value::Array(vec![Value::Array(vec![bulk(b"1-0"), Value::Array(fields)])])
        };
        let raw = entries(&entry(&[b"c", b"ab", b"w", b"t", b"o", b"42"]));
        assert_eq!(raw[0].writer.as_deref(), Some(&b"t"[..]));
        assert_eq!(raw[0].offset, Some(42));
        let raw = entries(&entry(&[b"e", b"", b"o", b"7", b"w", b"t"]));
        assert_eq!(
            (raw[0].writer.as_deref(), raw[0].offset),
            (Some(&b"t"[..]), Some(7))
        );
        for garbage in [&b"-1"[..], b"x", b"", b"99999999999999999999999"] {
            let raw = entries(&entry(&[b"c", b"ab", b"w", b"t", b"o", garbage]));
            assert_eq!(raw[0].offset, None, "{garbage:?}");
        }
        let raw = entries(&entry(&[b"c", b"ab", b"w", b"t"]));
        assert_eq!(raw[0].offset, None, "an older writer's");
    }
}
