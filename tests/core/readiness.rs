//! `poll_ready` is forwarded, and the readied instance is the one called.

use std::task::Poll;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, Service};
use tower_idempotency::{IdempotencyLayer, RequestBody};
use tower_test::mock;

use crate::support::*;

type Mock = mock::Mock<Request<RequestBody<Full<Bytes>>>, Response<TestBody>>;

#[tokio::test]
async fn backpressure_is_forwarded() {
    let (service, mut handle): (Mock, _) = mock::pair();
    let mut service = IdempotencyLayer::new().layer(service);
    let mut task = tokio_test::task::spawn(());

    handle.allow(0);
    assert!(task.enter(|cx, _| service.poll_ready(cx)).is_pending());

    handle.allow(1);
    assert!(matches!(
        task.enter(|cx, _| service.poll_ready(cx)),
        Poll::Ready(Ok(()))
    ));
    let response = tokio::spawn(service.call(post("/", "q")));
    let (request, send) = handle.next_request().await.unwrap();
    assert_eq!(request.uri(), "/");
    send.send_response(Response::new(full("ok")));
    let answer = Answer::read(response.await.unwrap().unwrap()).await;
    assert_eq!(&answer.body[..], b"ok");
}

#[tokio::test]
async fn a_hit_needs_no_inner_readiness_slot() {
    let (service, mut handle): (Mock, _) = mock::pair();
    let mut service = IdempotencyLayer::new().layer(service);
    let mut task = tokio_test::task::spawn(());

    handle.allow(1);
    assert!(task.enter(|cx, _| service.poll_ready(cx)).is_ready());
    let first = tokio::spawn(service.call(post("/", "q")));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(Response::new(full("stored")));
    Answer::read(first.await.unwrap().unwrap()).await;

    // The next request is a hit: it is answered without the inner service.
    handle.allow(1);
    assert!(task.enter(|cx, _| service.poll_ready(cx)).is_ready());
    let replay = Answer::read(service.call(post("/", "q")).await.unwrap()).await;
    assert_eq!(&replay.body[..], b"stored");
    handle.allow(1);
    assert!(task.enter(|cx, _| service.poll_ready(cx)).is_ready());
    let bypass = tokio::spawn(service.call(request("DELETE", "/", "")));
    let (request, send) = handle.next_request().await.unwrap();
    assert_eq!(request.method(), http::Method::DELETE);
    send.send_response(Response::new(full("gone")));
    assert_eq!(bypass.await.unwrap().unwrap().status(), 200);
}
