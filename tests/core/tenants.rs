//! Per-tenant savings: counted under a keyed hash of the credential, never
//! the credential, with bounded memory.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tower::Layer;
use tower_idempotency::IdempotencyLayer;

use crate::support::*;

fn ask(credential: (&str, &str), body: &'static str) -> Request<Full<Bytes>> {
    Request::post("/v1/chat")
        .header(credential.0, credential.1)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

#[tokio::test]
async fn each_tenant_sees_what_it_saved_and_no_credential_is_kept() {
    let (inner, calls) = numbered();
    let layer = IdempotencyLayer::builder().count_tenants(10).build();
    let service = layer.layer(inner);
    let alice = ("authorization", "Bearer sk-alice-secret");
    let bob = ("x-api-key", "sk-bob-secret");
    for _ in 0..3 {
        fetch(&service, ask(alice, "q")).await;
    }
    fetch(&service, ask(bob, "q")).await;
    fetch(&service, ask(bob, "other")).await;
    // No credential: not counted per tenant.
    fetch(&service, post("/v1/chat", "q")).await;
    assert_eq!(calls.get(), 4);

    let stats = layer.stats();
    let tenants = &stats.tenants;
    assert_eq!(tenants.len(), 2, "{tenants:?}");
    let (a, b) = (&tenants[0], &tenants[1]);
    assert_eq!((a.requests, a.upstream_calls, a.calls_saved), (3, 1, 2));
    assert_eq!((b.requests, b.upstream_calls, b.calls_saved), (2, 2, 0));
    assert_eq!(a.tenant.len(), 16);
    assert_ne!(a.tenant, b.tenant);
    let json = serde_json::to_string(&stats).unwrap();
    assert!(!json.contains("alice") && !json.contains("bob"), "{json}");
}

#[tokio::test]
async fn ids_agree_under_one_secret_and_differ_across_deployments() {
    let tenant_of = |layer: &IdempotencyLayer| layer.stats().tenants[0].tenant.clone();
    let run = |layer: IdempotencyLayer| async move {
        let (inner, _calls) = numbered();
        fetch(
            &layer.clone().layer(inner),
            ask(("authorization", "Bearer k"), "q"),
        )
        .await;
        layer
    };
    let one = run(IdempotencyLayer::builder().tenant_secret("fleet").build()).await;
    let two = run(IdempotencyLayer::builder().tenant_secret("fleet").build()).await;
    let other = run(IdempotencyLayer::builder().tenant_secret("another").build()).await;
    let random = run(IdempotencyLayer::builder().count_tenants(5).build()).await;
    assert_eq!(tenant_of(&one), tenant_of(&two));
    assert_ne!(tenant_of(&one), tenant_of(&other));
    assert_ne!(tenant_of(&one), tenant_of(&random));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_stays_bounded_under_many_concurrent_tenants() {
    let (inner, _calls) = numbered();
    let layer = IdempotencyLayer::builder().count_tenants(16).build();
    let service = layer.layer(inner);
    let tasks: Vec<_> = (0..400)
        .map(|i| {
            let service = service.clone();
            tokio::spawn(async move {
                let key: &'static str = Box::leak(format!("sk-{i}").into_boxed_str());
                fetch(&service, ask(("x-api-key", key), "q")).await;
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let tenants = layer.stats().tenants;
    assert_eq!(tenants.len(), 16);
    let counted: u64 = tenants.iter().map(|t| t.requests).sum();
    let overcount: u64 = tenants.iter().map(|t| t.overcount).sum();
    // Space-saving keeps the sum of the counts exact.
    assert_eq!(counted, 400);
    assert!(overcount <= counted);
}
