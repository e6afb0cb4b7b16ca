//! The clients: a mix of requests sent through either instance, every
//! completed answer checked against what the upstream returns for that very
//! request.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use crate::upstream::{hex, request_digest, Shape};
use crate::Dice;

/// The request body limit the instances are built with.
pub const MAX_REQUEST_BODY: usize = 2 << 20;

/// How long any one request may take before it counts as hung.
const PATIENCE: Duration = Duration::from_secs(20);

/// One request, and the digest its answer must carry.
#[derive(Clone)]
pub struct Call {
    pub method: &'static str,
    pub path: String,
    pub authorization: Option<&'static str>,
    pub content_type: &'static str,
    pub body: Bytes,
    pub digest: [u8; 32],
}

impl Call {
    pub fn new(
        method: &'static str,
        path: impl Into<String>,
        authorization: Option<&'static str>,
        content_type: &'static str,
        body: Bytes,
    ) -> Call {
        let path = path.into();
        let digest = request_digest(
            method,
            &path,
            authorization.map_or(&b""[..], str::as_bytes),
            &body,
        );
        Call {
            method,
            path,
            authorization,
            content_type,
            body,
            digest,
        }
    }

    pub fn request(&self) -> Request<Full<Bytes>> {
        let mut builder = Request::builder()
            .method(self.method)
            .uri(&self.path)
            .header("content-type", self.content_type);
        if let Some(authorization) = self.authorization {
            builder = builder.header("authorization", authorization);
        }
        builder.body(Full::new(self.body.clone())).unwrap()
    }

    /// Whether the layer may store the answer: a body it reads whole, and a
    /// response under the response limit.
    pub fn cacheable(&self) -> bool {
        self.body.len() <= MAX_REQUEST_BODY
            && matches!(
                Shape::of(&self.path),
                Shape::Plain | Shape::Streamed | Shape::Big
            )
    }
}

/// What the clients saw, shared by all of them.
#[derive(Default)]
pub struct Tally {
    pub requests: AtomicU64,
    pub completed: AtomicU64,
    pub cancelled: AtomicU64,
    /// Requests to a stuck upstream the client stopped waiting for.
    pub gave_up: AtomicU64,
    /// Upstream failures passed through as they came.
    pub upstream_failures: AtomicU64,
    pub hits: AtomicU64,
    pub collapsed: AtomicU64,
    pub bytes: AtomicU64,
    /// Answers carrying another request's digest, or damaged bytes.
    pub wrong: Mutex<Vec<String>>,
    /// Non-2xx answers, errors, hung requests.
    pub failed: Mutex<Vec<String>>,
    /// Requests sent per digest (cancelled ones included), and whether the
    /// answer may be stored.
    pub sent: Mutex<HashMap<[u8; 32], (u32, bool)>>,
}

impl Tally {
    fn sent(&self, call: &Call) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.sent
            .lock()
            .unwrap()
            .entry(call.digest)
            .or_insert((0, call.cacheable()))
            .0 += 1;
    }

    fn failure(&self, what: String) {
        let mut failed = self.failed.lock().unwrap();
        if failed.len() < 20 {
            eprintln!("soak: {what}");
        }
        failed.push(what);
    }
}

/// The fixed inputs of the mix: hot prompts, tenants, large bodies.
pub struct Catalogue {
    pub upload: Vec<Bytes>,
    pub oversized: Vec<Bytes>,
}

impl Catalogue {
    pub fn new() -> Catalogue {
        let fill = |len: usize, seed: u8| {
            Bytes::from(
                (0..len)
                    .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
                    .collect::<Vec<u8>>(),
            )
        };
        Catalogue {
            // Under the limit: keyed, stored, replayed.
            upload: (0..3).map(|i| fill(3 << 19, i)).collect(),
            // Over the limit: passed through untouched, every time.
            oversized: (0..2).map(|i| fill(3 << 20, 100 + i)).collect(),
        }
    }
}

const TENANTS: [Option<&str>; 3] = [Some("Bearer tenant-a"), Some("Bearer tenant-b"), None];

/// One request of the mix; fresh ones are unique to this client and step.
fn pick(dice: &mut Dice, catalogue: &Catalogue, client: usize, step: u64) -> (Call, Mode) {
    let tenant = TENANTS[dice.below(TENANTS.len())];
    let fresh = format!("c{client}-s{step}");
    let json = "application/json";
    let text = "text/plain";
    let roll = dice.below(100);
    let hot = |n: usize, dice: &mut Dice| {
        Bytes::from(format!(r#"{{"prompt":"hot {}","n":1}}"#, dice.below(n)))
    };
    let (call, mode) = match roll {
        0..=34 => (
            Call::new("POST", "/v1/plain", tenant, json, hot(30, dice)),
            Mode::Whole,
        ),
        35..=49 => (
            Call::new("POST", "/v1/stream", tenant, json, hot(10, dice)),
            Mode::Whole,
        ),
        50..=51 => (
            Call::new(
                "GET",
                format!("/v1/plain?q=hot{}&lang=en", dice.below(10)),
                tenant,
                text,
                Bytes::new(),
            ),
            Mode::Whole,
        ),
        52..=61 => (
            Call::new(
                "POST",
                "/v1/plain",
                tenant,
                text,
                Bytes::from(format!("miss {fresh}")),
            ),
            Mode::Whole,
        ),
        62..=63 => (
            Call::new(
                "GET",
                format!("/v1/plain?q={fresh}"),
                tenant,
                text,
                Bytes::new(),
            ),
            Mode::Whole,
        ),
        64..=71 => {
            let path = if dice.below(2) == 0 {
                "/v1/stream"
            } else {
                "/v1/plain"
            };
            (
                Call::new(
                    "POST",
                    path,
                    tenant,
                    json,
                    Bytes::from(format!(r#"{{"burst":"{fresh}"}}"#)),
                ),
                Mode::Burst(2 + dice.below(7)),
            )
        }
        72..=75 => (
            Call::new(
                "POST",
                "/v1/big",
                tenant,
                json,
                Bytes::from(format!(r#"{{"big":{}}}"#, dice.below(4))),
            ),
            Mode::Whole,
        ),
        76..=77 => (
            Call::new(
                "POST",
                "/v1/huge",
                tenant,
                json,
                Bytes::from(format!(r#"{{"huge":{}}}"#, dice.below(2))),
            ),
            Mode::Whole,
        ),
        78..=80 => (
            Call::new(
                "POST",
                "/v1/upload",
                tenant,
                "application/octet-stream",
                catalogue.upload[dice.below(3)].clone(),
            ),
            Mode::Whole,
        ),
        81..=82 => (
            Call::new(
                "POST",
                "/v1/upload",
                tenant,
                "application/octet-stream",
                catalogue.oversized[dice.below(2)].clone(),
            ),
            Mode::Whole,
        ),
        83..=91 => {
            let body = if dice.below(2) == 0 {
                hot(10, dice)
            } else {
                Bytes::from(format!(r#"{{"gone":"{fresh}"}}"#))
            };
            (
                Call::new("POST", "/v1/stream", tenant, json, body),
                Mode::Cancel(Duration::from_millis(dice.below(40) as u64)),
            )
        }
        92..=95 => (
            Call::new(
                "POST",
                "/v1/stream",
                tenant,
                json,
                Bytes::from(format!(r#"{{"abandon":"{fresh}"}}"#)),
            ),
            Mode::FirstChunkOnly,
        ),
        // A few keys whose upstream call never answers while the traffic
        // runs: duplicates on the other instance wait on the lease until
        // their wait deadline, then go through (and hang too).
        96 => (
            Call::new(
                "POST",
                "/v1/stuck",
                tenant,
                json,
                Bytes::from(format!(r#"{{"stuck":{}}}"#, dice.below(3))),
            ),
            Mode::GiveUp(STUCK_PATIENCE),
        ),
        // An upstream that fails after a delay: never stored, so waiters
        // elsewhere go through at once.
        _ => (
            Call::new(
                "POST",
                "/v1/failing",
                tenant,
                json,
                Bytes::from(format!(r#"{{"failing":{}}}"#, dice.below(5))),
            ),
            Mode::Whole,
        ),
    };
    (call, mode)
}

/// How a client handles its request.
#[derive(Clone, Copy)]
enum Mode {
    /// Read the whole answer and check it.
    Whole,
    /// Send it `n` times at once, spread over the instances.
    Burst(usize),
    /// Drop the task doing it after this long, wherever it is.
    Cancel(Duration),
    /// Read the head and one chunk, check them, drop the rest.
    FirstChunkOnly,
    /// A request that cannot complete during the traffic: stop waiting
    /// after this long.
    GiveUp(Duration),
}

/// How long a client waits for a stuck upstream: past the instances' wait
/// deadline, so that waiters on the other instance have gone through.
const STUCK_PATIENCE: Duration = Duration::from_millis(2_500);

/// Sends `call` through `service` and checks the answer.
pub async fn send<S, B>(service: S, call: Call, tally: Arc<Tally>, whole: bool)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    tally.sent(&call);
    let outcome = tokio::time::timeout(PATIENCE, async {
        let response = match service.oneshot(call.request()).await {
            Ok(response) => response,
            Err(error) => return Err(format!("service error {error:?}")),
        };
        let (parts, mut body) = response.into_parts();
        let shape = Shape::of(&call.path);
        if parts.status.as_u16() != shape.status() {
            return Err(format!("status {}", parts.status));
        }
        if !parts.status.is_success() {
            tally.upstream_failures.fetch_add(1, Ordering::Relaxed);
        }
        let status = parts
            .headers
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if !whole {
            let expected = Shape::of(&call.path).chunks(&call.digest);
            let first = match body.frame().await {
                Some(Ok(frame)) => frame.into_data().unwrap_or_default(),
                Some(Err(error)) => return Err(format!("body error {error:?}")),
                None => Bytes::new(),
            };
            // The first chunk may be a prefix of the whole answer, or more.
            let all = Bytes::from(expected.concat());
            if first.is_empty() || !all.starts_with(&first) {
                return Ok(Err(mismatch(&call, &first)));
            }
            return Ok(Ok((status, first.len())));
        }
        let bytes = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) => return Err(format!("body error {error:?}")),
        };
        if bytes != Shape::of(&call.path).body(&call.digest) {
            return Ok(Err(mismatch(&call, &bytes)));
        }
        Ok(Ok((status, bytes.len())))
    })
    .await;
    match outcome {
        Err(_) => tally.failure(format!(
            "{} {} hung for {PATIENCE:?}",
            call.method, call.path
        )),
        Ok(Err(failure)) => tally.failure(format!("{} {}: {failure}", call.method, call.path)),
        Ok(Ok(Err(wrong))) => {
            eprintln!("soak: WRONG ANSWER {wrong}");
            tally.wrong.lock().unwrap().push(wrong);
        }
        Ok(Ok(Ok((status, len)))) => {
            tally.completed.fetch_add(1, Ordering::Relaxed);
            tally.bytes.fetch_add(len as u64, Ordering::Relaxed);
            if status.contains("; hit") {
                tally.hits.fetch_add(1, Ordering::Relaxed);
            } else if status.contains("collapsed") {
                tally.collapsed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn mismatch(call: &Call, got: &[u8]) -> String {
    let line = got.split(|&b| b == b'\n').next().unwrap_or(b"");
    format!(
        "{} {} expected digest={} ({} bytes), got {:?} ({} bytes)",
        call.method,
        call.path,
        hex(&call.digest),
        Shape::of(&call.path).body(&call.digest).len(),
        String::from_utf8_lossy(&line[..line.len().min(80)]),
        got.len()
    )
}

/// One client: picks requests from the mix until `deadline`, each through
/// any of `instances`.
pub async fn client<S, B>(
    instances: Vec<S>,
    catalogue: Arc<Catalogue>,
    tally: Arc<Tally>,
    client: usize,
    seed: u64,
    deadline: Instant,
) where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: std::fmt::Debug,
{
    let mut dice = Dice(seed);
    let mut step = 0;
    let mut given_up = Vec::new();
    while Instant::now() < deadline {
        step += 1;
        let (call, mode) = pick(&mut dice, &catalogue, client, step);
        let service = instances[dice.below(instances.len())].clone();
        match mode {
            Mode::Whole => send(service, call, Arc::clone(&tally), true).await,
            Mode::FirstChunkOnly => send(service, call, Arc::clone(&tally), false).await,
            Mode::Burst(n) => {
                let tasks: Vec<_> = (0..n)
                    .map(|i| {
                        let service = instances[i % instances.len()].clone();
                        tokio::spawn(send(service, call.clone(), Arc::clone(&tally), true))
                    })
                    .collect();
                for task in tasks {
                    task.await.unwrap();
                }
            }
            Mode::GiveUp(after) => {
                // In the background: the client goes on meanwhile.
                let tally = Arc::clone(&tally);
                given_up.push(tokio::spawn(async move {
                    let answered =
                        tokio::time::timeout(after, send(service, call, Arc::clone(&tally), true))
                            .await;
                    if answered.is_err() {
                        tally.gave_up.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            Mode::Cancel(after) => {
                let task = tokio::spawn(send(service, call, Arc::clone(&tally), true));
                tokio::time::sleep(after).await;
                if !task.is_finished() {
                    task.abort();
                    tally.cancelled.fetch_add(1, Ordering::Relaxed);
                }
                let _ = task.await;
            }
        }
        tokio::time::sleep(Duration::from_millis(dice.below(8) as u64)).await;
    }
    for task in given_up {
        task.await.unwrap();
    }
}
