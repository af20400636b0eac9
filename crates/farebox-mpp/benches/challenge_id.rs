//! Cost of the stateless challenge binding: compute an MPP challenge id (HMAC-SHA256 over the
//! seven slots of a realistic Lightning charge challenge, ~600 B with its BOLT11 invoice, and of
//! the ~40 B conformance vector) and verify one in constant time.
//!
//! `cargo bench -p farebox-mpp --bench challenge_id -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use farebox_mpp::challenge::{ChallengeKey, IdSlots};
use farebox_mpp::jcs;
use serde_json::json;

fn bench(c: &mut Criterion) {
    let key = ChallengeKey::new(b"test-vector-secret-minimum-32-byte-secret").unwrap();

    let small_request = jcs::encode_b64_jcs(&json!({"amount": "1000000"})).unwrap();
    let small = IdSlots {
        realm: "api.example.com",
        method: "tempo",
        intent: "charge",
        request: &small_request,
        ..Default::default()
    };

    let invoice = format!("lnbcrt210n1{}", "q".repeat(300));
    let ln_request = jcs::encode_b64_jcs(&json!({
        "amount": "21", "currency": "sat",
        "methodDetails": {"invoice": invoice, "paymentHash": "ab".repeat(32), "network": "regtest"}
    }))
    .unwrap();
    let opaque =
        jcs::encode_b64_jcs(&json!({"httpMethod": "GET", "route": "/v1/weather/*"})).unwrap();
    let ln = IdSlots {
        realm: "api.example.com",
        method: "lightning",
        intent: "charge",
        request: &ln_request,
        expires: "2030-01-01T00:00:00Z",
        opaque: &opaque,
        ..Default::default()
    };

    for (name, slots) in [("vector", small), ("lightning", ln)] {
        let id = key.compute_id(&slots);
        c.bench_function(&format!("challenge_id/compute/{name}"), |b| {
            let mut out = [0u8; farebox_mpp::challenge::ID_LEN];
            b.iter(|| key.compute_id_into(black_box(&slots), &mut out))
        });
        c.bench_function(&format!("challenge_id/verify/{name}"), |b| {
            b.iter(|| assert!(key.verify_id(black_box(&slots), black_box(&id))))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
