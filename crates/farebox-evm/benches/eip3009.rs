//! What an x402 facilitator pays per EIP-3009 signature check: the EIP-712 digest with a cached
//! domain separator, address recovery (libsecp256k1), and both together.
//!
//! `cargo bench -p farebox-evm --bench eip3009 -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use farebox_evm::eip3009::{self, TransferWithAuthorization};
use farebox_evm::{Address, B256, U256, usdc};

fn spec_example() -> (TransferWithAuthorization, Vec<u8>) {
    let auth = TransferWithAuthorization {
        from: "0x857b06519E91e3A54538791bDbb0E22373e36b66".parse().unwrap_or(Address::ZERO),
        to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C".parse().unwrap_or(Address::ZERO),
        value: U256::from(10_000u64),
        validAfter: U256::from(1_740_672_089u64),
        validBefore: U256::from(1_740_672_154u64),
        nonce: "0xf3746613c2d920b5fdabc0856f2aeb2d4f88ee6037b8cc5d04a71a4462f13480"
            .parse()
            .unwrap_or(B256::ZERO),
    };
    let hex = "2d6a7588d6acca505cbf0d9a4a227e0c52c6c34008c8e8986a1283259764173608a2ce6496642e377d6da8dbbf5836e9bd15092f9ecab05ded3d6293af148b571c";
    let sig = (0..hex.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect();
    (auth, sig)
}

fn bench(c: &mut Criterion) {
    let (auth, sig) = spec_example();
    let domain = usdc::BASE_SEPOLIA.domain();
    let separator = domain.separator();
    let digest = eip3009::signing_hash(&separator, &auth);
    assert_eq!(eip3009::recover(&digest, &sig).ok(), Some(auth.from));

    let mut group = c.benchmark_group("eip3009");
    group.bench_function("signing_hash (cached separator)", |b| {
        b.iter(|| eip3009::signing_hash(black_box(&separator), black_box(&auth)))
    });
    group.bench_function("recover (libsecp256k1)", |b| {
        b.iter(|| eip3009::recover(black_box(&digest), black_box(&sig)))
    });
    group.bench_function("signing_hash + recover", |b| {
        b.iter(|| {
            let digest = eip3009::signing_hash(black_box(&separator), black_box(&auth));
            eip3009::recover(&digest, black_box(&sig))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
