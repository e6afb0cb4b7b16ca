//! The upstream behind both instances: answers each request with a body
//! derived from the request itself (its digest up front), so a client can
//! tell its own answer from anyone else's.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::support::{channel_body, full, upstream, Seen, TestBody, TestService};

/// SHA-256 of what the upstream answer depends on: method, path and query,
/// the tenant (`authorization`) and the body, each length-prefixed.
pub fn request_digest(method: &str, path: &str, authorization: &[u8], body: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in [method.as_bytes(), path.as_bytes(), authorization, body] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

pub fn hex(digest: &[u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// How the upstream answers a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// A small body in one piece.
    Plain,
    /// Eight chunks, a few milliseconds apart.
    Streamed,
    /// 1 MiB, under the response limit: stored.
    Big,
    /// 3 MiB, over the response limit: reaches the caller, never stored.
    Huge,
}

impl Shape {
    pub fn of(path: &str) -> Shape {
        match path.split('?').next().unwrap_or("") {
            "/v1/stream" => Shape::Streamed,
            "/v1/big" => Shape::Big,
            "/v1/huge" => Shape::Huge,
            _ => Shape::Plain,
        }
    }

    /// The answer to a request with this digest, chunk by chunk.
    pub fn chunks(self, digest: &[u8; 32]) -> Vec<Bytes> {
        let hex = hex(digest);
        let head = Bytes::from(format!("digest={hex}\n"));
        let filler = |len: usize| Bytes::from(hex.as_bytes().repeat(len / 64));
        match self {
            Shape::Plain => vec![head, filler(256)],
            Shape::Streamed => std::iter::once(head)
                .chain((0..7).map(|_| filler(2048)))
                .collect(),
            Shape::Big => vec![head, filler(1 << 20)],
            Shape::Huge => std::iter::once(head)
                .chain((0..12).map(|_| filler(256 << 10)))
                .collect(),
        }
    }

    pub fn body(self, digest: &[u8; 32]) -> Bytes {
        Bytes::from(self.chunks(digest).concat())
    }
}

/// Upstream calls per request digest.
#[derive(Clone, Default)]
pub struct Ledger(Arc<Mutex<HashMap<[u8; 32], u32>>>);

impl Ledger {
    fn record(&self, digest: [u8; 32]) {
        *self.0.lock().unwrap().entry(digest).or_default() += 1;
    }

    pub fn snapshot(&self) -> HashMap<[u8; 32], u32> {
        self.0.lock().unwrap().clone()
    }
}

/// The upstream service, and the ledger of its calls.
pub fn service() -> (impl TestService, Ledger) {
    let ledger = Ledger::default();
    let seen_by = ledger.clone();
    let (service, _calls) = upstream(move |seen: Seen| {
        let ledger = seen_by.clone();
        async move {
            let path = seen
                .head
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            let authorization = seen
                .head
                .headers
                .get("authorization")
                .map_or(&b""[..], |v| v.as_bytes());
            let digest =
                request_digest(seen.head.method.as_str(), &path, authorization, &seen.body);
            ledger.record(digest);
            let shape = Shape::of(&path);
            // A little latency, so that duplicates overlap.
            tokio::time::sleep(Duration::from_millis(3)).await;
            let body: TestBody = match shape {
                Shape::Plain | Shape::Big => full(shape.body(&digest)),
                Shape::Streamed | Shape::Huge => {
                    let (feed, body) = channel_body();
                    let chunks = shape.chunks(&digest);
                    tokio::spawn(async move {
                        for chunk in chunks {
                            feed.data(chunk);
                            tokio::time::sleep(Duration::from_millis(4)).await;
                        }
                    });
                    body.boxed()
                }
            };
            let mut response = http::Response::new(body);
            response
                .headers_mut()
                .insert("content-type", "text/plain".parse().unwrap());
            response
        }
    });
    (service, ledger)
}
