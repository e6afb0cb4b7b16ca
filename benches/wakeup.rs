//! Cross-instance wake-up: how long a request waiting on instance B for a
//! key that instance A is computing takes to get its answer once A has it.
//!
//! Two layers, each with its own `RedisStore` (own connections, own events
//! subscription, own Tokio runtime with one worker thread), stand for two
//! instances of an application; they share one `redis-server` that the bench
//! starts on a free loopback port (see `tests/support/redis_server.rs`; the
//! Redis on 127.0.0.1:6379, if any, is never used).
//!
//! Each burst, on a fresh key:
//!
//! 1. A's request claims the lease and calls its upstream, which holds its
//!    answer;
//! 2. B's request for the same body starts; the bench waits until B's
//!    look-up has run in Redis (`INFO commandstats`: one more `EVALSHA`),
//!    so B is waiting on A's lease (its wake-up is armed before it looks);
//! 3. A's upstream answers (1 KiB); A's caller reads it whole, then A
//!    stores it and publishes the completion;
//! 4. B is woken, finds the entry (an L2 hit) and its caller reads it whole.
//!
//! Latency of a burst, two ways: from the instant A's caller had its last
//! byte (the store-and-release runs after it) to the instant B's caller had
//! its last byte; and from the instant a third connection subscribed to the
//! events channel received A's completion message to the same end.
//!
//! Two runs:
//!
//! - `notified`: the stores as configured by default: B is woken by the
//!   completion message. Target: p99 under 5 ms on loopback.
//! - `polled`: B's store connects as a Redis user without rights on any
//!   pub/sub channel, so its subscription fails and only its fallback poll
//!   (`RedisStoreBuilder::poll_interval`, `--poll-ms`, default 1000 ms:
//!   the seed article's one-second poll) wakes it. A holds its answer for a
//!   uniformly random time within one poll interval after B starts waiting,
//!   so the answer lands at a random point of B's poll cycle, as a call of
//!   some seconds does. This is what waiters got without the notification.
//!
//! Every burst checks that B was answered from L2 (`cache-status: ...;
//! hit`) and that B's upstream was never called. A run starts once every
//! subscription to the events channel is up (`PUBSUB NUMSUB`), and the
//! polled run checks at its end that B never subscribed.
//!
//! ```text
//! cargo bench --bench wakeup
//! cargo bench --bench wakeup -- --bursts 1000 --baseline-bursts 100 --poll-ms 1000
//! ```
//!
//! Run without `--bench` (as `cargo test --benches` does), it makes a quick
//! pass: 20 bursts, then 3 polled ones at a 50 ms poll.

#[path = "../tests/support/redis_server.rs"]
mod redis_server;

use std::{
    convert::Infallible,
    future::poll_fn,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_core::Stream;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use redis::aio::MultiplexedConnection;
use redis_server::RedisServer;
use tokio::{
    runtime::Runtime,
    sync::{mpsc, Mutex},
};
use tower::{Layer, Service, ServiceExt};
use tower_idempotency::{IdempotencyLayer, RedisStore};

const RESPONSE_BYTES: usize = 1024;

/// A Redis user that may run every command on every key, but may neither
/// publish nor subscribe on any channel.
const DEAF_USER: &str = "deaf";
const DEAF_PASSWORD: &str = "bench";

/// How long any one step of a burst may take before the bench gives up.
const STEP_LIMIT: Duration = Duration::from_secs(10);

struct Options {
    bursts: usize,
    baseline_bursts: usize,
    poll: Duration,
}

impl Options {
    /// `--bursts N`, `--baseline-bursts N`, `--poll-ms N`; other arguments
    /// (`--bench` from cargo, filters) are ignored.
    fn from_args() -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let benching = args.iter().any(|arg| arg == "--bench");
        let mut options = if benching {
            Self {
                bursts: 1000,
                baseline_bursts: 100,
                poll: Duration::from_millis(1000),
            }
        } else {
            Self {
                bursts: 20,
                baseline_bursts: 3,
                poll: Duration::from_millis(50),
            }
        };
        let value = |name: &str| {
            args.iter()
                .position(|arg| arg == name)
                .and_then(|i| args.get(i + 1))
                .map(|value| {
                    value
                        .parse::<u64>()
                        .unwrap_or_else(|_| panic!("{name} takes a number, not {value:?}"))
                })
        };
        if let Some(n) = value("--bursts") {
            options.bursts = n as usize;
        }
        if let Some(n) = value("--baseline-bursts") {
            options.baseline_bursts = n as usize;
        }
        if let Some(ms) = value("--poll-ms") {
            options.poll = Duration::from_millis(ms);
        }
        options
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// B hears A's completion message.
    Notified,
    /// B cannot subscribe: only its poll wakes it.
    Polled(Duration),
}

fn main() {
    let options = Options::from_args();
    let server = RedisServer::start();
    let answer = server.cli(&[
        "ACL",
        "SETUSER",
        DEAF_USER,
        "on",
        &format!(">{DEAF_PASSWORD}"),
        "~*",
        "resetchannels",
        "+@all",
    ]);
    assert_eq!(answer, "OK", "ACL SETUSER");

    if options.bursts > 0 {
        let run = run(&server, Mode::Notified, options.bursts);
        run.print("notified: B woken by A's completion message");
        let p99 = percentile(&run.from_last_byte, 0.99);
        println!(
            "  target p99 < 5 ms (from A's last byte): {}",
            if p99 < Duration::from_millis(5) {
                "met"
            } else {
                "missed"
            }
        );
    }
    if options.baseline_bursts > 0 {
        let run = run(&server, Mode::Polled(options.poll), options.baseline_bursts);
        run.print(&format!(
            "polled: B cannot subscribe, woken by its {} ms poll",
            options.poll.as_millis()
        ));
    }
}

/// The latencies of one run, one per burst.
struct Run {
    from_last_byte: Vec<Duration>,
    from_message: Vec<Duration>,
}

impl Run {
    fn print(&self, title: &str) {
        println!("{title} ({} bursts)", self.from_last_byte.len());
        for (what, samples) in [
            ("from A's last byte", &self.from_last_byte),
            ("from the completion message", &self.from_message),
        ] {
            println!(
                "  {what:<30} p50 {:>9}  p90 {:>9}  p99 {:>9}  max {:>9}",
                millis(percentile(samples, 0.50)),
                millis(percentile(samples, 0.90)),
                millis(percentile(samples, 0.99)),
                millis(percentile(samples, 1.0)),
            );
        }
    }
}

fn millis(duration: Duration) -> String {
    format!("{:.3} ms", duration.as_secs_f64() * 1000.0)
}

/// The nearest-rank percentile `q` (0 to 1) of `samples`.
fn percentile(samples: &[Duration], q: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied().unwrap_or_default()
}

/// One instance: a runtime with one worker thread, and a layer on a store
/// of its own, built on that runtime.
struct Instance {
    runtime: Runtime,
    layer: IdempotencyLayer,
}

impl Instance {
    fn start(url: String, poll: Option<Duration>) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let layer = runtime.block_on(async {
            // A generous timeout: on a busy machine a look-up that timed out
            // would make B a leader. No counter flushes during the run: they
            // would be scripts of their own in `INFO commandstats`.
            let mut store = RedisStore::builder(url)
                .timeout(Duration::from_secs(1))
                .flush_interval(Duration::from_secs(3600));
            if let Some(poll) = poll {
                store = store.poll_interval(poll);
            }
            let store = store.connect().await.expect("connect to the bench redis");
            IdempotencyLayer::builder().redis(store).build()
        });
        Self { runtime, layer }
    }
}

/// A's upstream: tells the bench it was called, then holds its answer until
/// the bench lets it go.
#[derive(Clone)]
struct Held {
    called: mpsc::UnboundedSender<()>,
    release: Arc<Mutex<mpsc::UnboundedReceiver<()>>>,
    answer: Bytes,
}

impl<B> Service<Request<B>> for Held {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let _ = this.called.send(());
            this.release.lock().await.recv().await;
            Ok(Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(this.answer))
                .unwrap())
        })
    }
}

/// B's upstream: must never be called (B is always answered from L2).
fn never<B: Send + 'static>(
) -> impl Service<Request<B>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
       + Clone
       + Send
       + 'static {
    tower::service_fn(|_: Request<B>| async {
        panic!("B's upstream was called: B did not wait for A");
        #[allow(unreachable_code)]
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    })
}

fn request(body: Bytes) -> Request<Full<Bytes>> {
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-bench-0123456789abcdef")
        .body(Full::new(body))
        .unwrap()
}

/// A request body no earlier burst has sent.
fn unique_body() -> Bytes {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Relaxed);
    Bytes::from(format!(
        r#"{{"model":"gpt-4o-mini","temperature":0,"messages":[{{"role":"user","content":"Summarise report number {n}."}}]}}"#
    ))
}

/// Sends one request and reads the answer whole; returns the instant the
/// last byte was read and the `cache-status` header.
async fn send<S, RB>(mut service: S, body: Bytes) -> (Instant, String)
where
    S: Service<Request<Full<Bytes>>, Response = Response<RB>>,
    S::Error: std::fmt::Debug,
    RB: http_body::Body,
    RB::Error: std::fmt::Debug,
{
    let response = service
        .ready()
        .await
        .unwrap()
        .call(request(body))
        .await
        .unwrap();
    let status = response
        .headers()
        .get("cache-status")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(bytes.len(), RESPONSE_BYTES);
    (Instant::now(), status)
}

/// Calls of the scripts (`EVALSHA`, `EVAL`) Redis has run so far.
async fn script_calls(conn: &mut MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .filter(|line| line.starts_with("cmdstat_evalsha:") || line.starts_with("cmdstat_eval:"))
        .filter_map(|line| {
            line.split([':', ','])
                .find_map(|field| field.strip_prefix("calls="))
                .and_then(|calls| calls.parse::<u64>().ok())
        })
        .sum()
}

/// A small deterministic generator for A's hold in the polled run.
struct XorShift(u64);

impl XorShift {
    fn next_fraction(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn run(server: &RedisServer, mode: Mode, bursts: usize) -> Run {
    let url = server.url();
    let (b_url, b_poll) = match mode {
        Mode::Notified => (url.clone(), None),
        Mode::Polled(poll) => (
            format!(
                "redis://{DEAF_USER}:{DEAF_PASSWORD}@127.0.0.1:{}/",
                server.port()
            ),
            Some(poll),
        ),
    };
    let a = Instance::start(url.clone(), None);
    let b = Instance::start(b_url, b_poll);

    let (called_tx, mut called) = mpsc::unbounded_channel();
    let (release, release_rx) = mpsc::unbounded_channel();
    let held = Held {
        called: called_tx,
        release: Arc::new(Mutex::new(release_rx)),
        answer: Bytes::from(vec![b'x'; RESPONSE_BYTES]),
    };
    let service_a = a.layer.layer(held);
    let service_b = b.layer.layer(never());

    // The bench's own connections, driven by a runtime of their own.
    let bench = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut result = Run {
        from_last_byte: Vec::with_capacity(bursts),
        from_message: Vec::with_capacity(bursts),
    };

    bench.block_on(async {
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        // Completion messages, stamped as they arrive.
        let (messages_tx, mut messages) = mpsc::unbounded_channel::<(String, Instant)>();
        let mut pubsub = client.get_async_pubsub().await.unwrap();
        pubsub.subscribe("tidem:events").await.unwrap();
        let mut stream = Box::pin(pubsub.into_on_message());
        tokio::spawn(async move {
            while let Some(message) = poll_fn(|cx| stream.as_mut().poll_next(cx)).await {
                let at = Instant::now();
                let payload = String::from_utf8_lossy(message.get_payload_bytes()).into_owned();
                if messages_tx.send((payload, at)).is_err() {
                    return;
                }
            }
        });

        // Both stores' subscriptions and ours are up before the first burst
        // (B's never comes up in the polled run): a message sent before B
        // subscribed would leave B to its poll.
        let subscribers = if mode == Mode::Notified { 3 } else { 2 };
        within(
            async {
                loop {
                    let (_, n): (String, usize) = redis::cmd("PUBSUB")
                        .arg("NUMSUB")
                        .arg("tidem:events")
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    if n >= subscribers {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            "the events subscriptions",
        )
        .await;

        for burst in 0..bursts {
            let body = unique_body();
            let key = {
                let (parts, _) = request(body.clone()).into_parts();
                a.layer.key_for(&parts, &body).expect("a key")
            };
            let done = format!("d:{key}");

            let leader = a.runtime.spawn(send(service_a.clone(), body.clone()));
            within(called.recv(), "A's upstream to be called").await;
            let before = script_calls(&mut conn).await;
            let waiter = b.runtime.spawn(send(service_b.clone(), body));
            within(
                async {
                    while script_calls(&mut conn).await == before {
                        tokio::task::yield_now().await;
                    }
                },
                "B's look-up to reach Redis",
            )
            .await;
            if let Mode::Polled(poll) = mode {
                tokio::time::sleep(poll.mul_f64(rng.next_fraction())).await;
            }
            release.send(()).unwrap();

            let (a_done, a_status) = within(leader, "A's answer").await.unwrap();
            let (b_done, b_status) = within(waiter, "B's answer").await.unwrap();
            let message_at = within(
                async {
                    loop {
                        let (payload, at) = messages.recv().await.expect("events subscription");
                        if payload == done {
                            return at;
                        }
                    }
                },
                "A's completion message",
            )
            .await;
            assert!(
                a_status.contains("fwd=uri-miss") && a_status.contains("stored"),
                "burst {burst}: A was not the leader: {a_status}"
            );
            assert!(
                b_status.ends_with("hit") || b_status.contains("; hit;"),
                "burst {burst}: B was not answered from L2: {b_status}"
            );
            result
                .from_last_byte
                .push(b_done.saturating_duration_since(a_done));
            result
                .from_message
                .push(b_done.saturating_duration_since(message_at));
        }
        // In the polled run, B never heard a message.
        let (_, n): (String, usize) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("tidem:events")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, subscribers, "subscriptions to the events channel");
    });

    let (stats_a, stats_b) = (a.layer.stats(), b.layer.stats());
    assert_eq!(stats_a.upstream_calls, bursts as u64, "{stats_a:?}");
    assert_eq!(stats_b.upstream_calls, 0, "{stats_b:?}");
    assert_eq!(stats_b.hits.l2, bursts as u64, "{stats_b:?}");
    for stats in [&stats_a, &stats_b] {
        assert_eq!(
            (stats.store.errors, stats.store.skipped, stats.wait_timeouts),
            (0, 0, 0),
            "redis must not have failed during the run: {stats:?}"
        );
    }
    drop((service_a, service_b, bench));
    result
}

/// Awaits `future`, or panics after [`STEP_LIMIT`] naming what it waited for.
async fn within<F: std::future::Future>(future: F, what: &str) -> F::Output {
    tokio::time::timeout(STEP_LIMIT, future)
        .await
        .unwrap_or_else(|_| panic!("waited {STEP_LIMIT:?} for {what}"))
}
