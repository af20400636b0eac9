//! Sustained paid requests on one MPP EVM session through the farebox server, with every
//! voucher and debit persisted to SQLite (WAL, `synchronous=FULL`) before the response.
//!
//! A real anvil (FareboxUSD, SessionEscrow), the paywall with the MPP rail on loopback (axum,
//! two runtime workers), and a reqwest client on the same machine. One channel is opened; then:
//!
//! - **sequential**: one connection, each request carrying the next cumulative voucher (every
//!   request accepts a new voucher: signature recovery, compare-and-swap, fsync);
//! - **concurrent**: 16 requests in flight, all carrying one large voucher (the first accepts it,
//!   the others are idempotent retries that debit what it authorized: contention on one record).
//!
//! Vouchers are signed before the clock starts, so the figures are the server's. Prints
//! requests/s and latency percentiles. `cargo bench -p farebox-mpp --bench session_throughput`
//! (or `cargo xtask bench session_throughput`); without `--bench` (as `cargo test --benches`
//! runs it) it makes a few requests of each kind, to keep it working.

use std::sync::Arc;
use std::time::{Duration, Instant};

use farebox_core::{Money, Price, SessionStore};
use farebox_evm::anvil::Anvil;
use farebox_evm::{B256, U256};
use farebox_mpp::evm::escrow::DEFAULT_CLOSE_GRACE_PERIOD;
use farebox_mpp::evm::escrow::EscrowRpc;
use farebox_mpp::evm::session::{OpenPayload, SessionPayload, SignedVoucher};
use farebox_mpp::{Challenge, Credential, EvmSessionConfig, MppConfig, MppRail};
use farebox_server::{Paywall, PaywallLayer, PricedRoute};
use farebox_store::{MemoryStore, SqliteStore};

const PRICE: u128 = 1;
const IN_FLIGHT: usize = 16;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench");
    // Filters, as criterion takes them (the words that are neither flags nor flag values):
    // when there are some and none matches this benchmark, there is nothing to run.
    let filters: Vec<&String> =
        args.iter().filter(|a| !a.starts_with('-') && a.parse::<f64>().is_err()).collect();
    if !filters.is_empty() && !filters.iter().any(|f| "session_throughput".contains(f.as_str())) {
        return;
    }
    let (sequential, concurrent) = if full { (3_000, 6_000) } else { (20, 40) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run(sequential, concurrent));
}

async fn run(sequential: u128, concurrent: u128) {
    let anvil = Anvil::start().expect("anvil (run `cargo xtask setup`)");
    let rpc = anvil.rpc().await.unwrap().clone();
    let token = anvil.deploy_token("USDC", "2").await.unwrap();
    let (payer, payee) = (anvil.accounts()[1].clone(), anvil.accounts()[2].clone());
    let deposit = 1 + sequential + concurrent;
    anvil.mint(token, payer.address, U256::from(deposit)).await.unwrap();
    let escrow = rpc
        .deploy_session_escrow(&anvil.accounts()[0].signer, DEFAULT_CLOSE_GRACE_PERIOD)
        .await
        .unwrap();
    let domain = rpc.voucher_domain(escrow);
    let dir = tempfile::tempdir().unwrap();
    let sessions: Arc<dyn SessionStore> =
        Arc::new(SqliteStore::open(dir.path().join("sessions.db")).await.unwrap());
    let config = EvmSessionConfig::builder(rpc.clone(), payee.signer.clone())
        .escrow(escrow)
        .token(token)
        .described_as(&farebox_evm::usdc::BASE_SEPOLIA)
        .build()
        .unwrap();
    let price = Price::one(Money::new(config.asset(), PRICE));
    let rail = MppRail::builder(
        MppConfig::new("bench.example", b"a-benchmark-secret-of-at-least-32-bytes!".to_vec()),
        Arc::new(MemoryStore::new()),
    )
    .evm_session(config, sessions)
    .build()
    .unwrap();
    let paywall = Paywall::builder()
        .rail(rail)
        .route(PricedRoute::new(None, "/data", price).unwrap())
        .build()
        .unwrap();
    let app = axum::Router::new()
        .route("/data", axum::routing::get(|| async { "ok" }))
        .layer(PaywallLayer::new(paywall));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/data", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::new();

    let sign =
        |amount: u128, channel: B256| SignedVoucher::sign(&payer.signer, &domain, channel, amount);
    let challenge = challenge_of(&http, &url).await;
    let salt = B256::repeat_byte(0xbe);
    rpc.erc20_approve(&payer.signer, token, escrow, deposit).await.unwrap();
    let (tx, channel) = rpc
        .escrow_open(&payer.signer, escrow, payee.address, token, deposit, salt, None)
        .await
        .unwrap();
    let open = SessionPayload::Open(OpenPayload {
        hash: tx,
        salt,
        authorized_signer: None,
        voucher: sign(PRICE, channel),
    });
    assert_eq!(send(&http, &url, &credential(&challenge, &open)).await, 200);

    // Sequential: a fresh voucher per request.
    let vouchers: Vec<String> = (2..=1 + sequential)
        .map(|n| credential(&challenge, &SessionPayload::Voucher(sign(n * PRICE, channel))))
        .collect();
    let mut latencies = Vec::with_capacity(vouchers.len());
    let started = Instant::now();
    for v in &vouchers {
        let t = Instant::now();
        assert_eq!(send(&http, &url, v).await, 200);
        latencies.push(t.elapsed());
    }
    report("sequential, a new voucher per request", started.elapsed(), &mut latencies);

    // Concurrent: one voucher for all the rest, 16 requests in flight.
    let big = Arc::new(credential(&challenge, &SessionPayload::Voucher(sign(deposit, channel))));
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (http, url, big, next) = (http.clone(), url.clone(), big.clone(), next.clone());
            tokio::spawn(async move {
                let mut mine = Vec::new();
                while (next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) as u128) < concurrent
                {
                    let t = Instant::now();
                    assert_eq!(send(&http, &url, &big).await, 200);
                    mine.push(t.elapsed());
                }
                mine
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await.unwrap());
    }
    report(
        &format!("{IN_FLIGHT} in flight, one voucher debited by each"),
        started.elapsed(),
        &mut latencies,
    );
    // Every debit landed once: the channel is exactly spent.
    assert_eq!(send(&http, &url, &big).await, 402, "the deposit is exhausted");
}

fn credential(challenge: &Challenge, payload: &SessionPayload) -> String {
    Credential::new(challenge, payload.to_json()).to_authorization()
}

async fn challenge_of(http: &reqwest::Client, url: &str) -> Challenge {
    let res = http.get(url).send().await.unwrap();
    let values: Vec<&str> =
        res.headers().get_all("www-authenticate").iter().filter_map(|v| v.to_str().ok()).collect();
    farebox_mpp::parse_www_authenticate(values).unwrap().remove(0)
}

async fn send(http: &reqwest::Client, url: &str, authorization: &str) -> u16 {
    let res = http.get(url).header("authorization", authorization).send().await.unwrap();
    let status = res.status().as_u16();
    let body = res.bytes().await.unwrap_or_default();
    if status == 503 {
        eprintln!("503: {}", String::from_utf8_lossy(&body));
    }
    status
}

fn report(what: &str, elapsed: Duration, latencies: &mut [Duration]) {
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
    println!(
        "session_throughput/{what}: {} requests in {:.2} s = {:.0} req/s; latency p50 {:?} p99 {:?}",
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99)
    );
}
