//! Bodies without loss: over the limit, unreadable, streamed, with trailers.

use std::{
    collections::VecDeque,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt};
use tower_idempotency::{ErrorKind, IdempotencyLayer, RequestBody};

use crate::support::*;

/// An upstream that echoes a digest of what it received: length and a sum.
fn echo_digest() -> (
    impl tower::Service<
            Request<RequestBody<Frames>>,
            Response = Response<TestBody>,
            Error = std::convert::Infallible,
            Future: Send,
        > + Clone
        + Send
        + 'static,
    Calls,
) {
    let calls = Calls::default();
    let counter = calls.clone();
    let service = tower::service_fn(move |request: Request<RequestBody<Frames>>| {
        counter.inc();
        async move {
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let sum: u64 = body.iter().map(|&b| u64::from(b)).sum();
            Ok(respond(200, format!("{} bytes, sum {sum}", body.len())))
        }
    });
    (service, calls)
}

/// A request body of the given frames, with no declared length.
pub struct Frames(VecDeque<Result<Frame<Bytes>, io::Error>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        Poll::Ready(self.0.pop_front())
    }
}

fn big_body(len: usize) -> (Vec<u8>, Frames) {
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let frames = data
        .chunks(64 * 1024)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    (data, Frames(frames))
}

#[tokio::test]
async fn body_over_the_limit_reaches_the_inner_service_intact_and_uncached() {
    let (inner, calls) = echo_digest();
    let layer = IdempotencyLayer::new();
    let service = layer.layer(inner);
    let (data, frames) = big_body(17 * 1024 * 1024);
    let expected = format!(
        "{} bytes, sum {}",
        data.len(),
        data.iter().map(|&b| u64::from(b)).sum::<u64>()
    );

    let first = fetch(&service, Request::post("/upload").body(frames).unwrap()).await;
    assert_eq!(first.body, expected);
    assert_eq!(first.cache_status(), "tower-idempotency; fwd=bypass");

    let (_, again) = big_body(17 * 1024 * 1024);
    let second = fetch(&service, Request::post("/upload").body(again).unwrap()).await;
    assert_eq!(second.body, expected);
    assert_eq!(calls.get(), 2, "a body over the limit is never cached");
    assert_eq!(layer.stats().bypassed.too_large, 2);
}

#[tokio::test]
async fn unreadable_request_body_is_answered_400() {
    let (inner, calls) = echo_digest();
    let layer = IdempotencyLayer::new();
    let service = layer.layer(inner);
    let frames = Frames(VecDeque::from([
        Ok(Frame::data(Bytes::from_static(b"half a"))),
        Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "client went away",
        )),
    ]));
    let response = service
        .oneshot(Request::post("/").body(frames).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let error = response
        .extensions()
        .get::<tower_idempotency::Error>()
        .unwrap();
    assert_eq!(error.kind(), ErrorKind::RequestBody);
    assert!(std::error::Error::source(error)
        .unwrap()
        .to_string()
        .contains("client went away"));
    assert_eq!(calls.get(), 0);
    assert_eq!(layer.stats().bad_requests, 1);
}

#[tokio::test]
async fn response_over_the_limit_reaches_every_caller_but_is_not_stored() {
    let chunk = Bytes::from(vec![b'x'; 1024]);
    let (inner, calls) = upstream(move |seen: Seen| {
        let chunk = chunk.clone();
        async move {
            let (feed, body) = channel_body();
            tokio::spawn(async move {
                for _ in 0..64 {
                    feed.data(chunk.clone());
                    tokio::task::yield_now().await;
                }
                feed.data(format!("|call {}", seen.call));
            });
            Response::new(body.boxed())
        }
    });
    let layer = IdempotencyLayer::builder()
        .max_response_body(16 * 1024)
        .build();
    let service = layer.layer(inner);

    let (a, b) = tokio::join!(
        fetch(&service, post("/big", "q")),
        fetch(&service, post("/big", "q"))
    );
    for answer in [&a, &b] {
        assert_eq!(answer.body.len(), 64 * 1024 + "|call 1".len());
        assert!(answer.body.ends_with(b"|call 1"));
    }
    assert_eq!(calls.get(), 1);
    let later = fetch(&service, post("/big", "q")).await;
    assert!(
        later.body.ends_with(b"|call 2"),
        "an unstored response is never replayed"
    );
    assert_eq!(layer.stats().stored, 0);
    assert_eq!(layer.in_flight(), 0);
}

/// A response body of `frames` 1 KiB frames, ready at once, counting how
/// many were pulled.
struct Counted {
    left: usize,
    pulled: Arc<AtomicUsize>,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        self.left -= 1;
        self.pulled.fetch_add(1, Ordering::SeqCst);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![7u8; 1024])))))
    }
}

#[tokio::test(start_paused = true)]
async fn slow_reader_past_the_limit_holds_the_upstream_back() {
    // Past the limit the upstream body is read no faster than the readers
    // take it, so memory stays bounded by the limit, not the response size.
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&pulled);
    let (inner, _) = upstream(move |_| {
        let body = Counted {
            left: 1024,
            pulled: Arc::clone(&counter),
        };
        async move { Response::new(BodyExt::boxed(body)) }
    });
    let service = IdempotencyLayer::builder()
        .max_response_body(4 * 1024)
        .build()
        .layer(inner);
    let response = service.oneshot(post("/", "q")).await.unwrap();
    // Whatever could read ahead runs until it waits.
    settle().await;
    let early = pulled.load(Ordering::SeqCst);
    assert!(
        early <= 8,
        "the upstream was read ahead of its only reader: {early} KiB pulled"
    );

    let mut body = response.into_body();
    let mut total = 0;
    while let Some(data) = next_data(&mut body).await {
        total += data.len();
    }
    assert_eq!(total, 1024 * 1024);
}

#[tokio::test]
async fn trailers_pass_through_and_are_replayed() {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    let sent = trailers.clone();
    let (inner, calls) = upstream(move |_| {
        let trailers = sent.clone();
        async move {
            let (feed, body) = channel_body();
            feed.data("payload");
            feed.trailers(trailers);
            Response::new(body.boxed())
        }
    });
    let service = IdempotencyLayer::new().layer(inner);
    let first = fetch(&service, post("/", "q")).await;
    assert_eq!(first.trailers.as_ref(), Some(&trailers));
    let replay = fetch(&service, post("/", "q")).await;
    assert!(replay.cache_status().contains("hit"));
    assert_eq!(
        (&replay.body[..], replay.trailers.as_ref()),
        (&b"payload"[..], Some(&trailers))
    );
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn inner_service_sees_the_exact_request_bytes() {
    let (inner, _) = upstream(|seen: Seen| async move { respond(200, seen.body) });
    let service = IdempotencyLayer::new().layer(inner);
    let body = "{ \"keep\" : \"my   whitespace\" }";
    let request = Request::post("/")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    assert_eq!(
        fetch(&service, request).await.body,
        body,
        "canonicalisation is for the key only"
    );
}
