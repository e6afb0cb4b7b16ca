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
use tokio::sync::watch;

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
    /// A small body, but only once the traffic has stopped: until then the
    /// call never answers.
    Stuck,
    /// A 503 after a delay: passed through, never stored.
    Failing,
}

impl Shape {
    pub fn of(path: &str) -> Shape {
        match path.split('?').next().unwrap_or("") {
            "/v1/stream" => Shape::Streamed,
            "/v1/big" => Shape::Big,
            "/v1/huge" => Shape::Huge,
            "/v1/stuck" => Shape::Stuck,
            "/v1/failing" => Shape::Failing,
            _ => Shape::Plain,
        }
    }

    /// The answer to a request with this digest, chunk by chunk.
    pub fn chunks(self, digest: &[u8; 32]) -> Vec<Bytes> {
        let hex = hex(digest);
        let head = Bytes::from(format!("digest={hex}\n"));
        let filler = |len: usize| Bytes::from(hex.as_bytes().repeat(len / 64));
        match self {
            Shape::Plain | Shape::Stuck => vec![head, filler(256)],
            Shape::Failing => vec![Bytes::from(format!("failed digest={hex}\n"))],
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

    /// The status the upstream answers with.
    pub fn status(self) -> u16 {
        match self {
            Shape::Failing => 503,
            _ => 200,
        }
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

/// The upstream service, the ledger of its calls, and the switch that lets
/// stuck calls answer (`send(true)` once the traffic has stopped).
pub fn service() -> (impl TestService, Ledger, watch::Sender<bool>) {
    let ledger = Ledger::default();
    let seen_by = ledger.clone();
    let (unstick, stuck) = watch::channel(false);
    let (service, _calls) = upstream(move |seen: Seen| {
        let ledger = seen_by.clone();
        let mut stuck = stuck.clone();
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
            match shape {
                Shape::Stuck => {
                    let _ = stuck.wait_for(|unstuck| *unstuck).await;
                }
                Shape::Failing => tokio::time::sleep(Duration::from_millis(50)).await,
                _ => {}
            }
            let body: TestBody = match shape {
                Shape::Plain | Shape::Big | Shape::Stuck | Shape::Failing => {
                    full(shape.body(&digest))
                }
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
            *response.status_mut() = http::StatusCode::from_u16(shape.status()).unwrap();
            response
                .headers_mut()
                .insert("content-type", "text/plain".parse().unwrap());
            response
        }
    });
    (service, ledger, unstick)
}
