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
