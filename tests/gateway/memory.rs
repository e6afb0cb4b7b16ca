//! What a stored entry keeps alive: only its own bytes. The gateway's
//! upstream client hands out body chunks and header values that are slices
//! of its connection's read buffer; an entry that kept those slices would
//! keep whole buffers alive, far beyond what the L1 budget weighs.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response};
use tower::Layer;
use tower_idempotency::IdempotencyLayer;

use crate::support::{channel_body, eventually, fetch, full, post, upstream, Seen};

/// A large buffer that says when it is freed.
struct ReadBuffer {
    bytes: Vec<u8>,
    freed: Arc<AtomicBool>,
}

impl AsRef<[u8]> for ReadBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for ReadBuffer {
    fn drop(&mut self) {
        self.freed.store(true, Ordering::SeqCst);
    }
}

fn read_buffer(freed: &Arc<AtomicBool>) -> Bytes {
    Bytes::from_owner(ReadBuffer {
        bytes: vec![b'x'; 64 * 1024],
        freed: Arc::clone(freed),
    })
}

/// Stores one response whose parts come from `answer`, replays it, and
/// tells whether the buffers `answer` sliced were freed meanwhile.
async fn freed_after_storing(
    answer: impl Fn(&Arc<AtomicBool>) -> Response<Bytes> + Clone + Send + Sync + 'static,
) -> bool {
    let freed = Arc::new(AtomicBool::new(false));
    let layer = IdempotencyLayer::new();
    let (inner, calls) = upstream({
        let freed = Arc::clone(&freed);
        move |_: Seen| {
            let response = answer(&freed).map(full);
            async move { response }
        }
    });
    let service = layer.layer(inner);
    let first = fetch(&service, post("http://api/v1/x", "{}")).await;
    assert_eq!(first.status, 200);
    assert!(
        eventually(Duration::from_secs(5), || layer.stats().stored == 1).await,
        "stored"
    );
    drop(first);
    let replay = fetch(&service, post("http://api/v1/x", "{}")).await;
    assert!(replay.cache_status().contains("; hit"), "{replay:?}");
    assert_eq!(calls.get(), 1);
    assert_eq!(&replay.body[..], &[b'x'; 100][..]);
    assert_eq!(replay.header("x-slice"), Some("xxxxxxxxxx"));
    freed.load(Ordering::SeqCst)
}

#[tokio::test]
async fn a_stored_body_keeps_no_read_buffer_alive() {
    let freed = freed_after_storing(|freed| {
        Response::builder()
            .header("x-slice", "xxxxxxxxxx")
            .body(read_buffer(freed).slice(0..100))
            .unwrap()
    })
    .await;
    assert!(
        freed,
        "the entry keeps the 64 KiB buffer its 100-byte body came from"
    );
}

#[tokio::test]
async fn stored_headers_keep_no_read_buffer_alive() {
    let freed = freed_after_storing(|freed| {
        let value = HeaderValue::from_maybe_shared(read_buffer(freed).slice(0..10)).unwrap();
        Response::builder()
            .header("x-slice", value)
            .body(Bytes::from(vec![b'x'; 100]))
            .unwrap()
    })
    .await;
    assert!(
        freed,
        "the entry keeps the 64 KiB buffer a header value came from"
    );
}

#[tokio::test]
async fn stored_trailers_keep_no_read_buffer_alive() {
    let freed = Arc::new(AtomicBool::new(false));
    let layer = IdempotencyLayer::new();
    let (inner, calls) = upstream({
        let freed = Arc::clone(&freed);
        move |_: Seen| {
            let (feed, body) = channel_body();
            feed.data(vec![b'x'; 100]);
            let mut trailers = HeaderMap::new();
            let value = HeaderValue::from_maybe_shared(read_buffer(&freed).slice(0..10)).unwrap();
            trailers.insert("x-checksum", value);
            feed.trailers(trailers);
            async move { Response::new(body.boxed()) }
        }
    });
    let service = layer.layer(inner);
    let first = fetch(&service, post("http://api/v1/x", "{}")).await;
    assert_eq!(first.status, 200);
    assert!(
        eventually(Duration::from_secs(5), || layer.stats().stored == 1).await,
        "stored"
    );
    drop(first);
    let replay = fetch(&service, post("http://api/v1/x", "{}")).await;
    assert!(replay.cache_status().contains("; hit"), "{replay:?}");
    assert_eq!(calls.get(), 1);
    let trailers = replay.trailers.expect("the trailers are replayed");
    assert_eq!(trailers["x-checksum"], "xxxxxxxxxx");
    assert!(
        freed.load(Ordering::SeqCst),
        "the entry keeps the 64 KiB buffer a trailer value came from"
    );
}
