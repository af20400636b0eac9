//! `pay_invoice` round trip over NWC: an [`NwcClient`] pays a dev node invoice through the dev
//! node's [`WalletService`] and an in-process relay on loopback (sign, encrypt, publish, relay,
//! decrypt, pay, answer, relay, decrypt, check the preimage).
//!
//! Criterion reports the mean and median; under `cargo bench` (not `cargo test --benches`) the
//! percentiles (p50, p90, p99) over `FAREBOX_NWC_BENCH_PAYMENTS` payments (500 by default) are
//! printed after it.
//!
//! `cargo bench -p farebox-lightning --features nwc --bench nwc`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use farebox_lightning::nwc::{
    ConnectionSettings, NwcClient, NwcOptions, ServiceOptions, WalletService, relay,
};
use farebox_lightning::{DevNetwork, DevNode, InvoiceRequest, LightningBackend};
use tokio::runtime::Runtime;

struct Setup {
    shop: DevNode,
    wallet: NwcClient,
    // Kept alive for the whole run.
    _service: WalletService,
    _relay: relay::LoopbackRelay,
}

fn setup(runtime: &Runtime) -> Setup {
    runtime.block_on(async {
        let relay = relay::LoopbackRelay::start(relay::relay_builder(), None).await.unwrap();
        let network = DevNetwork::new();
        let payer = DevNode::random(&network, u64::MAX / 4);
        let shop = DevNode::random(&network, 0);
        let service = WalletService::start(
            Arc::new(payer),
            vec![relay.url().clone()],
            ServiceOptions::default(),
        )
        .await
        .unwrap();
        let uri =
            service.create_connection(ConnectionSettings::unrestricted("bench")).await.unwrap();
        let wallet = NwcClient::with_options(&uri, NwcOptions::default());
        wallet.wallet_info().await.unwrap();
        Setup { shop, wallet, _service: service, _relay: relay }
    })
}

/// One payment, timed from `pay` to its verified preimage (the invoice is made beforehand).
async fn timed_payment(setup: &Setup) -> Duration {
    let invoice = setup
        .shop
        .create_invoice(InvoiceRequest {
            amount_msat: 1_000,
            memo: "bench".into(),
            expiry: Duration::from_secs(600),
        })
        .await
        .unwrap();
    let start = Instant::now();
    setup.wallet.pay(&invoice.bolt11, 0).await.unwrap();
    start.elapsed()
}

fn pay_invoice_round_trip(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let setup = setup(&runtime);
    let mut group = c.benchmark_group("nwc");
    group.sample_size(30).measurement_time(Duration::from_secs(10));
    group.bench_function("pay_invoice_round_trip", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += timed_payment(&setup).await;
                }
                total
            })
        })
    });
    group.finish();

    // Percentiles only under `cargo bench`: `cargo test --benches` stays at one payment.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let payments: usize = std::env::var("FAREBOX_NWC_BENCH_PAYMENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(500)
        .max(1);
    let cpu_before = process_cpu();
    let mut samples: Vec<Duration> = runtime.block_on(async {
        let mut samples = Vec::with_capacity(payments);
        for _ in 0..payments {
            samples.push(timed_payment(&setup).await);
        }
        samples
    });
    let cpu = process_cpu().zip(cpu_before).map(|(after, before)| after.saturating_sub(before));
    samples.sort();
    let at =
        |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    println!(
        "nwc/pay_invoice_round_trip over {payments} payments: p50 {:?}  p90 {:?}  p99 {:?}  max {:?}",
        at(0.50),
        at(0.90),
        at(0.99),
        samples[samples.len() - 1]
    );
    // Wall time above depends on what else the machine runs; the CPU time does not.
    if let Some(cpu) = cpu {
        println!(
            "nwc/pay_invoice_round_trip CPU (client + relay + wallet service + dev node, one \
             process): {:?} per payment",
            cpu / payments as u32
        );
    }
}

/// CPU time (user + system) of this process so far, from /proc (Linux; USER_HZ is 100).
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

criterion_group!(benches, pay_invoice_round_trip);
criterion_main!(benches);
