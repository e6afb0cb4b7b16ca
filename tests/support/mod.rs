//! Test support: upstreams that count their calls, bodies the test drives,
//! and helpers to send requests through a layer.
#![allow(dead_code)]

use std::{
    convert::Infallible,
    future::Future,
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
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use tokio::sync::mpsc;
use tower::{Service, ServiceExt};
use tower_idempotency::RequestBody;

/// The response body test upstreams return.
pub type TestBody = BoxBody<Bytes, io::Error>;

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A response with `body` and the given status.
pub fn respond(status: u16, body: impl Into<Bytes>) -> Response<TestBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
    response
}

/// An in-process upstream the layer can wrap.
pub trait TestService:
    Service<
        Request<RequestBody<Full<Bytes>>>,
        Response = Response<TestBody>,
        Error = Infallible,
        Future: Send,
    > + Clone
    + Send
    + 'static
{
}

impl<S> TestService for S where
    S: Service<
            Request<RequestBody<Full<Bytes>>>,
            Response = Response<TestBody>,
            Error = Infallible,
            Future: Send,
        > + Clone
        + Send
        + 'static
{
}

/// Counts the calls an upstream received.
#[derive(Clone, Default)]
pub struct Calls(Arc<AtomicUsize>);

impl Calls {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    /// Counts one more call; returns its number (1 for the first).
    pub fn inc(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// What a test upstream sees of a request: its head and whole body.
pub struct Seen {
    pub head: http::request::Parts,
    pub body: Bytes,
    /// 1 for the first call, 2 for the second…
    pub call: usize,
}

/// An in-process upstream running `handler` on each request (body read
/// whole first), counting its calls.
pub fn upstream<F, Fut>(handler: F) -> (impl TestService, Calls)
where
    F: Fn(Seen) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let calls = Calls::default();
    let counter = calls.clone();
    let service = tower::service_fn(move |request: Request<RequestBody<Full<Bytes>>>| {
        let call = counter.inc();
        let handler = handler.clone();
        async move {
            let (head, body) = request.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            Ok::<_, Infallible>(handler(Seen { head, body, call }).await)
        }
    });
    (service, calls)
}

/// An upstream that answers 200 with a body naming the call number, so that
/// two calls never answer alike.
pub fn numbered() -> (impl TestService, Calls) {
    upstream(|seen: Seen| async move { respond(200, format!("answer #{}", seen.call)) })
}

/// A request with a `Full` body.
pub fn request(method: &str, uri: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

pub fn post(uri: &str, body: &'static str) -> Request<Full<Bytes>> {
    request("POST", uri, body)
}

/// Sends one request and reads the whole answer.
pub async fn fetch<S, B, RB>(service: &S, request: Request<B>) -> Answer
where
    S: Service<Request<B>, Response = Response<RB>> + Clone,
    S::Error: std::fmt::Debug,
    RB: Body,
    RB::Error: std::fmt::Debug,
{
    let response = service.clone().oneshot(request).await.unwrap();
    Answer::read(response).await
}

/// A response read whole.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Answer {
    pub async fn read<RB>(response: Response<RB>) -> Self
    where
        RB: Body,
        RB::Error: std::fmt::Debug,
    {
        let (parts, body) = response.into_parts();
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: collected.to_bytes(),
            trailers,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn cache_status(&self) -> &str {
        self.header("cache-status").expect("a cache-status header")
    }
}

/// A body the test feeds frame by frame through a channel.
pub struct ChannelBody {
    rx: mpsc::UnboundedReceiver<Result<Frame<Bytes>, io::Error>>,
}

/// The test's end of a [`ChannelBody`].
#[derive(Clone)]
pub struct Feed(mpsc::UnboundedSender<Result<Frame<Bytes>, io::Error>>);

impl Feed {
    pub fn data(&self, bytes: impl Into<Bytes>) {
        let _ = self.0.send(Ok(Frame::data(bytes.into())));
    }

    pub fn trailers(&self, trailers: HeaderMap) {
        let _ = self.0.send(Ok(Frame::trailers(trailers)));
    }

    pub fn fail(&self) {
        let _ = self.0.send(Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "upstream reset",
        )));
    }
}

pub fn channel_body() -> (Feed, ChannelBody) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Feed(tx), ChannelBody { rx })
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.rx.poll_recv(cx)
    }
}

impl ChannelBody {
    pub fn boxed(self) -> TestBody {
        BodyExt::boxed(self)
    }
}

/// Reads the next data frame of a body, skipping trailers.
pub async fn next_data<B>(body: &mut B) -> Option<Bytes>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    loop {
        let frame = body.frame().await?.unwrap();
        if let Ok(data) = frame.into_data() {
            return Some(data);
        }
    }
}

pub mod redis_server;

/// Reads `INFO commandstats` into (command, calls) pairs.
pub fn command_calls(server: &redis_server::RedisServer) -> std::collections::HashMap<String, u64> {
    server
        .cli(&["INFO", "commandstats"])
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

/// Waits until `check` holds, polling every 10 ms, for at most `limit`.
pub async fn eventually(limit: std::time::Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    check()
}

/// Waits until `check` holds, failing the test if it does not within ten
/// seconds. `what` names the awaited state in the failure.
pub async fn until(what: &str, check: impl FnMut() -> bool) {
    assert!(
        eventually(std::time::Duration::from_secs(10), check).await,
        "timed out waiting until {what}"
    );
}

/// Lets every other task on this runtime run until each waits on something:
/// a follower has joined its flight, a read-ahead has filled its window.
///
/// Only for tests on the current-thread runtime with the clock paused
/// (`#[tokio::test(start_paused = true)]`), where the runtime moves the clock
/// only when no task can make progress, so this timer fires exactly then.
/// Panics on a running clock, where it would be a guess.
pub async fn settle() {
    tokio::time::advance(std::time::Duration::ZERO).await;
    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
}

/// An upstream whose first call waits until the test opens the returned gate
/// (`notify_one`); later calls answer at once. `answer` builds each response
/// from what the upstream saw.
pub fn gated<F>(answer: F) -> (impl TestService, Calls, std::sync::Arc<tokio::sync::Notify>)
where
    F: Fn(&Seen) -> Response<TestBody> + Clone + Send + Sync + 'static,
{
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let opened = std::sync::Arc::clone(&gate);
    let (service, calls) = upstream(move |seen: Seen| {
        let gate = std::sync::Arc::clone(&opened);
        let answer = answer.clone();
        async move {
            if seen.call == 1 {
                gate.notified().await;
            }
            answer(&seen)
        }
    });
    (service, calls, gate)
}

/// The status of a response the layer answered itself, and the kind of its
/// [`tower_idempotency::Error`] (checking it came as `application/problem+json`).
pub async fn rejection<S, B>(
    service: &S,
    request: Request<B>,
) -> (u16, Option<tower_idempotency::ErrorKind>)
where
    S: Service<Request<B>, Response = Response<tower_idempotency::ResponseBody<TestBody>>> + Clone,
    S::Error: std::fmt::Debug,
{
    let response = service.clone().oneshot(request).await.unwrap();
    let kind = response
        .extensions()
        .get::<tower_idempotency::Error>()
        .map(|e| e.kind());
    if kind.is_some() {
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    (response.status().as_u16(), kind)
}
