//! Challenge minting as a client meets it: `L402Rail::challenge` with the embedded dev node, i.e.
//! a BOLT11 invoice signed by the node plus a macaroon minted for it and both header lines
//! written. Also the macaroon part alone, to show where the time goes.
//!
//! Run: `cargo bench -p farebox-l402 --bench mint -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use farebox_core::time::unix_now;
use farebox_core::{Money, Price, Rail, Resource};
use farebox_l402::{DerivedRootKeys, L402Config, L402Rail};
use farebox_lightning::{DevNetwork, DevNode};

fn bench(c: &mut Criterion) {
    let keys = Arc::new(DerivedRootKeys::new(&[0x5a; 32]).unwrap());
    let node = Arc::new(DevNode::new(&DevNetwork::new(), [3; 32], 0));
    let rail = L402Rail::new(L402Config::new("bench", keys), node).unwrap();
    let resource = Resource {
        method: http::Method::GET,
        path: "/joke".into(),
        route: "/joke".into(),
        price: Price::one(Money::sats(10)),
        description: Some("a joke".into()),
        accept_payment: None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();

    let mut group = c.benchmark_group("mint");
    group.bench_function("rail_challenge_with_dev_node_invoice", |b| {
        b.iter(|| runtime.block_on(rail.challenge(black_box(&resource), None)).unwrap().unwrap())
    });
    let now = unix_now().unwrap();
    group.bench_function("macaroon_only", |b| {
        b.iter(|| rail.verifier().mint_token(black_box([7; 32]), 10_000, &resource, now).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
