//! What the tests of live streams across instances (`streams`,
//! `stream_faults`) share: upstreams that stream what the test feeds,
//! instances on one Redis, and a leader whose process can die.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use tokio::{runtime::Runtime, time::timeout};
use tower::{Layer, ServiceExt};
use tower_idempotency::{IdempotencyLayer, RedisStore, RedisStoreBuilder, ResponseBody};

use crate::support::redis_server::{RedisCluster, RedisServer};
use crate::support::{
    channel_body, next_data, respond, upstream, Calls, Feed, Seen, TestBody, TestService,
};

/// How long a test waits for a head, a chunk or a body's end.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// The headers of an answer of server-sent events, for `streaming`.
pub const SSE: &[(&str, &str)] = &[("content-type", "text/event-stream")];

/// A response with `status` streaming `body` as server-sent events.
pub fn sse(status: u16, body: TestBody) -> Response<TestBody> {
    let mut response = Response::new(body);
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
    response.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    response
}

/// An upstream whose first call answers with a body the test feeds (with
/// `headers`); later calls answer `fresh #<call>` at once.
pub fn streaming(
    headers: &'static [(&'static str, &'static str)],
) -> (impl TestService, Calls, Feed) {
    let (feed, body) = channel_body();
    let body = Arc::new(Mutex::new(Some(body)));
    let (service, calls) = upstream(move |seen: Seen| {
        let body = body.lock().unwrap().take();
        async move {
            match body {
                Some(body) => {
                    let mut response = Response::new(body.boxed());
                    for (name, value) in headers {
                        response
                            .headers_mut()
                            .insert(*name, HeaderValue::from_static(value));
                    }
                    response
                }
                None => respond(200, format!("fresh #{}", seen.call)),
            }
        }
    });
    (service, calls, feed)
}

/// Instances A and B, each its own layer (own L1), on `server` through
/// `store`.
pub async fn instances(
    server: &RedisServer,
    store: impl Fn(&str) -> RedisStoreBuilder,
) -> (IdempotencyLayer, IdempotencyLayer) {
    let a = crate::instance(store(&server.url())).await;
    let b = crate::instance(store(&server.url())).await;
    (a, b)
}

/// A store on `cluster` with streams on, a 5 s fallback poll and a 500 ms
/// look-up timeout.
pub fn cluster_store(cluster: &RedisCluster) -> RedisStoreBuilder {
    RedisStore::cluster_builder(cluster.urls())
        .streams(true)
        .poll_interval(Duration::from_secs(5))
        .timeout(Duration::from_millis(500))
}

/// Instance A in a runtime of its own, on `redis`, sends `request` through
/// `inner`: shutting the runtime down is the process dying, lease, stream
/// writer and all. Returns the runtime, and A with the leader's response
/// (still streaming), for the test to keep until A is dead.
pub async fn leader_in_a_runtime_of_its_own(
    redis: RedisStoreBuilder,
    inner: impl TestService,
    request: Request<Full<Bytes>>,
) -> (
    Runtime,
    (IdempotencyLayer, Response<ResponseBody<TestBody>>),
) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let leader = runtime
        .spawn(async move {
            let a = IdempotencyLayer::builder()
                .redis(redis.connect().await.unwrap())
                .build();
            let response = a.layer(inner).oneshot(request).await.unwrap();
            (a, response)
        })
        .await
        .unwrap();
    (runtime, leader)
}

/// The next data frame of a body, within `PATIENCE`.
pub async fn next_chunk<B>(body: &mut B) -> Bytes
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    timeout(PATIENCE, next_data(body))
        .await
        .expect("a chunk in time")
        .expect("a chunk")
}

/// Whether the layer answered `response` by following another instance's
/// flight.
pub fn collapsed<B>(response: &Response<B>) -> bool {
    response.headers()["cache-status"] == "tower-idempotency; fwd=uri-miss; collapsed"
}
