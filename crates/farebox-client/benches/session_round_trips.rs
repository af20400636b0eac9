//! Paid requests on one MPP EVM session through the *paying client* (`PaymentMiddleware` with
//! an `MppWallet`) against the farebox server: what a session costs end to end, HTTP round
//! trips included, where `farebox-mpp`'s `session_throughput` measures the server alone with
//! pre-signed vouchers.
//!
//! A real anvil (FareboxUSD, SessionEscrow), the paywall with the MPP rail on loopback (axum,
//! two runtime workers, channel records in SQLite), and the paying client on the same machine.
//! The first request opens the channel (not timed); then each request pays one voucher. Prints
//! requests/s, latency percentiles and how many HTTP requests the server saw per paid response.
//! `cargo bench -p farebox-client --bench session_round_trips`; without `--bench` (as
//! `cargo test --benches` runs it) it makes a few requests, to keep it working.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use farebox_client::{Budget, PaymentMiddleware};
use farebox_core::{Money, Price, SessionStore};
use farebox_evm::U256;
use farebox_evm::anvil::Anvil;
use farebox_mpp::client::MppWallet;
use farebox_mpp::client::session::EvmSessionPolicy;
use farebox_mpp::evm::escrow::DEFAULT_CLOSE_GRACE_PERIOD;
use farebox_mpp::evm::escrow::EscrowRpc;
use farebox_mpp::{EvmSessionConfig, MppConfig, MppRail};
use farebox_server::{Paywall, PaywallLayer, PricedRoute};
use farebox_store::{MemoryStore, SqliteStore};

const PRICE: u128 = 1;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench");
    // Filters, as criterion takes them: when there are some and none matches, nothing runs.
    let filters: Vec<&String> =
        args.iter().filter(|a| !a.starts_with('-') && a.parse::<f64>().is_err()).collect();
    if !filters.is_empty() && !filters.iter().any(|f| "session_round_trips".contains(f.as_str())) {
        return;
    }
    let requests = if full { 1_000 } else { 10 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run(requests));
}

async fn run(requests: u128) {
    let anvil = Anvil::start().expect("anvil (run `cargo xtask setup`)");
    let rpc = anvil.rpc().await.unwrap().clone();
    let token = anvil.deploy_token("USDC", "2").await.unwrap();
    let (payer, payee) = (anvil.accounts()[1].clone(), anvil.accounts()[2].clone());
    let deposit = 2 + requests;
    anvil.mint(token, payer.address, U256::from(deposit)).await.unwrap();
    let escrow = rpc
        .deploy_session_escrow(&anvil.accounts()[0].signer, DEFAULT_CLOSE_GRACE_PERIOD)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sessions: Arc<dyn SessionStore> =
        Arc::new(SqliteStore::open(dir.path().join("sessions.db")).await.unwrap());
    let config = EvmSessionConfig::builder(rpc.clone(), payee.signer.clone())
        .escrow(escrow)
        .token(token)
        .described_as(&farebox_evm::usdc::BASE_SEPOLIA)
        .build()
        .unwrap();
    let asset = config.asset();
    let rail = MppRail::builder(
        MppConfig::new("bench.example", b"a-benchmark-secret-of-at-least-32-bytes!".to_vec()),
        Arc::new(MemoryStore::new()),
    )
    .evm_session(config, sessions)
    .build()
    .unwrap();
    let price = Price::one(Money::new(asset.clone(), PRICE));
    let paywall = Paywall::builder()
        .rail(rail)
        .route(PricedRoute::new(None, "/data", price).unwrap())
        .build()
        .unwrap();
    // Counts every HTTP request the server receives, paid or not.
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let app = axum::Router::new()
        .route("/data", axum::routing::get(|| async { "ok" }))
        .layer(PaywallLayer::new(paywall))
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                counter.fetch_add(1, Ordering::Relaxed);
                next.run(req)
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/data", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let policy = EvmSessionPolicy::new(rpc.clone(), escrow, deposit).deposit(deposit);
    let wallet = MppWallet::new().evm(payer.signer.clone()).evm_sessions(policy);
    let sessions = wallet.sessions();
    let budget = Budget::new()
        .allow(Money::new(asset.clone(), PRICE), Money::new(asset.clone(), deposit))
        .unwrap();
    let middleware = PaymentMiddleware::new(budget).wallet(wallet);
    let client = farebox_client::paying_client(reqwest::Client::new(), middleware);
    // Opens the channel.
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);

    let before = seen.load(Ordering::Relaxed);
    let mut latencies = Vec::with_capacity(requests as usize);
    let started = Instant::now();
    for _ in 0..requests {
        let t = Instant::now();
        let res = client.get(&url).send().await.unwrap();
        assert_eq!(res.status(), 200);
        res.bytes().await.unwrap();
        latencies.push(t.elapsed());
    }
    let elapsed = started.elapsed();
    let http_requests = seen.load(Ordering::Relaxed) - before;
    report("sequential, paying client", elapsed, &mut latencies, http_requests);
    for closed in sessions.close_all().await {
        closed.expect("closing the bench channel");
    }
}

fn report(what: &str, elapsed: Duration, latencies: &mut [Duration], http_requests: usize) {
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
    println!(
        "session_round_trips/{what}: {} paid responses in {:.2} s = {:.0} req/s; latency p50 {:?} p99 {:?}; {:.2} HTTP requests per response",
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        http_requests as f64 / latencies.len() as f64,
    );
}
