//! Races between a flight's end and the next request.

use tower::Layer;
use tower_idempotency::IdempotencyLayer;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unstored_answer_never_reaches_a_request_sent_after_it_ended() {
    let (inner, calls) =
        upstream(|seen: Seen| async move { respond(500, format!("failure #{}", seen.call)) });
    let service = IdempotencyLayer::new().layer(inner);
    for round in 0..2000 {
        let body: &'static str = Box::leak(format!("prompt {round}").into_boxed_str());
        let first = fetch(&service, post("/", body)).await;
        let second = fetch(&service, post("/", body)).await;
        assert_eq!(first.status, 500);
        assert_eq!(
            &second.body[..],
            format!("failure #{}", 2 * round + 2).as_bytes(),
            "round {round}: the second request was answered with the first's response"
        );
    }
    assert_eq!(calls.get(), 4000);
}

/// A body of `chunks` chunks of `size` bytes that makes its reader wait
/// (and wakes it) before each one, so that the chunks arrive across polls.
struct Trickle {
    left: usize,
    size: usize,
    ready: bool,
}

impl http_body::Body for Trickle {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        if !self.ready {
            self.ready = true;
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        self.ready = false;
        self.left -= 1;
        let byte = b'a' + (self.left % 26) as u8;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(bytes::Bytes::from(
            vec![byte; self.size],
        )))))
    }
}

fn trickled(chunks: usize, size: usize) -> bytes::Bytes {
    (0..chunks)
        .rev()
        .flat_map(|left| vec![b'a' + (left % 26) as u8; size])
        .collect()
}

/// The leader's caller drives the recording while it reads; when it drops
/// its body part-way, the recording goes on in a task of its own. Followers
/// reading at the same time, on other threads, get every byte, and so does
/// the next request, from the store: one upstream call per round.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_dropping_its_body_while_followers_read_loses_no_byte() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    const CHUNKS: usize = 8;
    let (inner, calls) = upstream(|_| async {
        http::Response::new(BodyExt::boxed(Trickle {
            left: CHUNKS,
            size: 100,
            ready: false,
        }))
    });
    let layer = IdempotencyLayer::new();
    let service = layer.layer(inner);
    let expected = trickled(CHUNKS, 100);
    for round in 0..400 {
        let body: &'static str = Box::leak(format!("prompt {round}").into_boxed_str());
        let leader = service.clone().oneshot(post("/", body)).await.unwrap();
        let followers: Vec<_> = (0..3)
            .map(|_| {
                let service = service.clone();
                tokio::spawn(async move { fetch(&service, post("/", body)).await })
            })
            .collect();
        // Read a few chunks (none in the first round of four), then drop.
        let mut leader = leader.into_body();
        for _ in 0..round % 4 {
            assert!(next_data(&mut leader).await.is_some());
        }
        drop(leader);
        for follower in followers {
            let answer = tokio::time::timeout(std::time::Duration::from_secs(10), follower)
                .await
                .expect("a follower is answered")
                .unwrap();
            assert_eq!(answer.status, 200);
            assert_eq!(answer.body, expected, "round {round}");
        }
        until("the flight is over", || layer.in_flight() == 0).await;
        let again = fetch(&service, post("/", body)).await;
        assert!(
            again.cache_status().starts_with("tower-idempotency; hit"),
            "round {round}: {}",
            again.cache_status()
        );
        assert_eq!(again.body, expected, "round {round}");
        assert_eq!(calls.get(), round + 1, "round {round}");
    }
    assert_eq!(layer.recording_bytes(), 0);
}

/// The upstream body ends on one thread while the leader's caller drops its
/// body on another: whichever wins, the recording completes once, the
/// answer is stored whole, and nothing is left in flight or in the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_upstream_ending_while_the_leader_drops_its_body_still_stores() {
    use tower::ServiceExt;

    let feeds = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Feed>::new()));
    let (inner, calls) = upstream({
        let feeds = std::sync::Arc::clone(&feeds);
        move |_| {
            let (feed, body) = channel_body();
            feed.data("head of the answer; ");
            feeds.lock().unwrap().push(feed);
            async move { http::Response::new(body.boxed()) }
        }
    });
    let layer = IdempotencyLayer::new();
    let service = layer.layer(inner);
    for round in 0..500 {
        let body: &'static str = Box::leak(format!("prompt {round}").into_boxed_str());
        let leader = service.clone().oneshot(post("/", body)).await.unwrap();
        let feed = feeds.lock().unwrap().pop().expect("the call was made");
        let mut leader = leader.into_body();
        if round % 2 == 0 {
            assert_eq!(
                next_data(&mut leader).await.as_deref(),
                Some(&b"head of the answer; "[..])
            );
        }
        let end = tokio::spawn(async move {
            feed.data("tail");
            drop(feed);
        });
        let dropped = tokio::spawn(async move { drop(leader) });
        end.await.unwrap();
        dropped.await.unwrap();
        until("the flight is over", || layer.in_flight() == 0).await;
        let again = fetch(&service, post("/", body)).await;
        assert!(
            again.cache_status().starts_with("tower-idempotency; hit"),
            "round {round}: {}",
            again.cache_status()
        );
        assert_eq!(
            &again.body[..],
            b"head of the answer; tail",
            "round {round}"
        );
        assert_eq!(calls.get(), round + 1, "round {round}");
    }
    assert_eq!(layer.recording_bytes(), 0);
}

/// An upstream whose every call waits for the returned gate
/// (`notify_one`), then answers a trickled body.
fn gated_trickle(chunks: usize) -> (impl TestService, Calls, std::sync::Arc<tokio::sync::Notify>) {
    use http_body_util::BodyExt;

    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let opened = std::sync::Arc::clone(&gate);
    let (service, calls) = upstream(move |_| {
        let gate = std::sync::Arc::clone(&opened);
        async move {
            gate.notified().await;
            http::Response::new(BodyExt::boxed(Trickle {
                left: chunks,
                size: 64,
                ready: false,
            }))
        }
    });
    (service, calls, gate)
}

/// Followers join on other threads while the leader's caller is driving
/// the call (before its head): the recording moves into a task of its own
/// at any point of it, and everyone gets every byte of one upstream call.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn followers_joining_while_the_leader_drives_its_call_share_it() {
    const CHUNKS: usize = 4;
    let (inner, calls, gate) = gated_trickle(CHUNKS);
    let layer = IdempotencyLayer::new();
    let service = layer.layer(inner);
    let expected = trickled(CHUNKS, 64);
    for round in 0..400 {
        let body: &'static str = Box::leak(format!("prompt {round}").into_boxed_str());
        let ask = || {
            let service = service.clone();
            tokio::spawn(async move { fetch(&service, post("/", body)).await })
        };
        let leader = ask();
        until("the leader called upstream", || calls.get() == round + 1).await;
        // The gate opens while followers are joining.
        let open = tokio::spawn({
            let gate = std::sync::Arc::clone(&gate);
            async move { gate.notify_one() }
        });
        let followers: Vec<_> = (0..3).map(|_| ask()).collect();
        open.await.unwrap();
        for answer in std::iter::once(leader).chain(followers) {
            let answer = tokio::time::timeout(std::time::Duration::from_secs(10), answer)
                .await
                .expect("every caller is answered")
                .unwrap();
            assert_eq!(answer.status, 200, "round {round}");
            assert_eq!(answer.body, expected, "round {round}");
        }
        assert_eq!(calls.get(), round + 1, "round {round}");
    }
    until("the flights are over", || layer.in_flight() == 0).await;
    assert_eq!(layer.recording_bytes(), 0);
}

/// The leader's caller goes away (its task aborted) while the upstream
/// answers, on another thread: the call it drove goes on in a task of its
/// own, completes and is stored, and the next request is a hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_gone_while_the_upstream_answers_still_stores() {
    const CHUNKS: usize = 3;
    let (inner, calls, gate) = gated_trickle(CHUNKS);
    let layer = IdempotencyLayer::new();
    let service = layer.layer(inner);
    let expected = trickled(CHUNKS, 64);
    for round in 0..400 {
        let body: &'static str = Box::leak(format!("prompt {round}").into_boxed_str());
        let leader = tokio::spawn({
            let service = service.clone();
            async move { fetch(&service, post("/", body)).await }
        });
        until("the leader called upstream", || calls.get() == round + 1).await;
        let open = tokio::spawn({
            let gate = std::sync::Arc::clone(&gate);
            async move { gate.notify_one() }
        });
        leader.abort();
        open.await.unwrap();
        // Answered before the abort took effect, or cancelled: either way
        // the call completes and is stored.
        let _ = leader.await;
        until("the flight is over", || layer.in_flight() == 0).await;
        let again = fetch(&service, post("/", body)).await;
        assert!(
            again.cache_status().starts_with("tower-idempotency; hit"),
            "round {round}: {}",
            again.cache_status()
        );
        assert_eq!(again.body, expected, "round {round}");
        assert_eq!(calls.get(), round + 1, "round {round}");
    }
    assert_eq!(layer.recording_bytes(), 0);
}
