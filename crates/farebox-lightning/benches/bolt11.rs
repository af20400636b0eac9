//! BOLT11 costs on the request path: parsing an invoice (bech32 decode + signature recovery),
//! and the dev node creating one (preimage, hash, sign).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use farebox_lightning::{DevNetwork, DevNode, InvoiceRequest, LightningBackend, parse_invoice};

/// BOLT11 spec example 2 ("$3 for a cup of coffee").
const SPEC_INVOICE: &str = "lnbc2500u1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygspp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdq5xysxxatsyp3k7enxv4jsxqzpu9qrsgquk0rl77nj30yxdy8j9vdx85fkpmdla2087ne0xh8nhedh8w27kyke0lp53ut353s06fv3qfegext0eh0ymjpf39tuven09sam30g4vgpfna3rh";

fn bench(c: &mut Criterion) {
    c.bench_function("parse_invoice (spec example 2, incl. signature recovery)", |b| {
        b.iter(|| parse_invoice(black_box(SPEC_INVOICE)))
    });

    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let network = DevNetwork::new();
    let node = DevNode::random(&network, 0);
    let request = InvoiceRequest {
        amount_msat: 21_000,
        memo: "GET /api/weather".into(),
        expiry: Duration::from_secs(600),
    };
    c.bench_function("DevNode::create_invoice (sign)", |b| {
        b.iter(|| runtime.block_on(node.create_invoice(black_box(request.clone()))))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
