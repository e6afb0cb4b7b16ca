//! What the benches (and the measuring examples) share: the request they
//! send, an inner service that answers at once, and one round trip through a
//! service.
//!
//! Included with `mod support;` by each bench and with
//! `#[path = "../benches/support/mod.rs"] mod support;` by an example; each
//! uses only part of it.
#![allow(dead_code)]

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt};

/// A chat-completions request body of about 200 bytes.
pub const CHAT: &str = r#"{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Describe the attached product photo in one sentence."}]}"#;

/// A `POST /v1/chat/completions` with `body` of `content_type`, and the
/// headers a client sends with it (a bearer token, `accept`).
pub fn request(content_type: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::post("/v1/chat/completions")
        .header("content-type", content_type)
        .header("authorization", "Bearer sk-bench-0123456789abcdef")
        .header("accept", "application/json")
        .body(Full::new(body.into()))
        .unwrap()
}

/// [`request`] with a JSON body.
pub fn chat(body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    request("application/json", body)
}

/// The inner service: answers every request at once, with a JSON body
/// `answer` makes for it.
pub fn upstream_with<B, F>(
    answer: F,
) -> impl Service<Request<B>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
       + Clone
       + Send
       + 'static
where
    B: Send + 'static,
    F: Fn() -> Bytes + Clone + Send + 'static,
{
    tower::service_fn(move |_: Request<B>| {
        let body = answer();
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(body))
                    .unwrap(),
            )
        }
    })
}

/// The inner service: answers every request at once with `stored` (a
/// `Bytes` clone).
pub fn upstream<B>(
    stored: Bytes,
) -> impl Service<Request<B>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
       + Clone
       + Send
       + 'static
where
    B: Send + 'static,
{
    upstream_with(move || stored.clone())
}

/// One request: waits for the service to be ready, calls it, then reads the
/// body whole; returns its length.
pub async fn round_trip<S, RB>(service: &mut S, request: Request<Full<Bytes>>) -> usize
where
    S: Service<Request<Full<Bytes>>, Response = Response<RB>>,
    S::Error: std::fmt::Debug,
    RB: Body,
    RB::Error: std::fmt::Debug,
{
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .len()
}
