//! L402 paid requests through farebox-server's paywall layer and the L402 rail, with the
//! server's Lightning backend on Nostr Wallet Connect vs the in-process dev node, in the same
//! run. Every request buys a new token: GET (402: the rail asks the backend for an invoice and
//! mints a macaroon), pay the invoice from a dev node wallet on the same dev network, GET again
//! with `L402 <macaroon>:<preimage>` (verified), 200. So one request measures invoice issue +
//! payment + verify.
//!
//! * `dev_node`: the rail's backend is the server's dev node itself.
//! * `nwc`: the rail's backend is an `NwcClient` reaching the same kind of dev node through an
//!   in-process relay on loopback and the dev node's NIP-47 wallet service, as `farebox demo`
//!   wires its wallet: each invoice is a `make_invoice` round trip over the relay.
//!
//! Criterion times one request after another. After it (under `cargo bench` only, not `cargo
//! test --benches`), each backend serves `FAREBOX_L402_BENCH_REQUESTS` requests (300 by default)
//! one at a time, for p50 / p99 latency and requests/s, then the same number from 16
//! concurrent clients, for requests/s under load.
//!
//! `cargo bench -p farebox-l402 --bench paid_over_nwc`

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use criterion::{Criterion, criterion_group, criterion_main};
use farebox_core::auth::parse_challenges;
use farebox_core::{Money, Price};
use farebox_l402::{DerivedRootKeys, L402Config, L402Rail, format_credential, parse_challenge};
use farebox_lightning::nwc::{ConnectionSettings, NwcClient, ServiceOptions, WalletService, relay};
use farebox_lightning::{DevNetwork, DevNode, LightningBackend};
use farebox_server::{Paywall, PaywallLayer, PricedRoute};
use http::{Method, Request, StatusCode};
use tokio::runtime::Runtime;
use tower::ServiceExt;

const PATH: &str = "/v1/paid";

/// A paywalled app whose L402 rail uses one backend, and a wallet that pays its invoices.
struct Setup {
    app: Router,
    wallet: DevNode,
    // Kept alive for the whole run (NWC only).
    _nwc: Option<(WalletService, relay::LoopbackRelay)>,
}

async fn setup(nwc: bool) -> Setup {
    let network = DevNetwork::new();
    let server = DevNode::random(&network, 0);
    let wallet = DevNode::random(&network, u64::MAX / 4);
    let (backend, kept): (Arc<dyn LightningBackend>, _) = if nwc {
        let relay = relay::LoopbackRelay::start(relay::relay_builder(), None).await.unwrap();
        let service = WalletService::start(
            Arc::new(server),
            vec![relay.url().clone()],
            ServiceOptions::default(),
        )
        .await
        .unwrap();
        let uri =
            service.create_connection(ConnectionSettings::unrestricted("paywall")).await.unwrap();
        let client = NwcClient::new(&uri);
        client.wallet_info().await.unwrap();
        (Arc::new(client), Some((service, relay)))
    } else {
        (Arc::new(server), None)
    };
    let keys = Arc::new(DerivedRootKeys::new(&[0x42; 32]).unwrap());
    let rail = Arc::new(L402Rail::new(L402Config::new("bench", keys), backend).unwrap());
    let route = PricedRoute::new(Some(Method::GET), "/v1/*", Price::one(Money::sats(10))).unwrap();
    let paywall = Arc::new(Paywall::builder().shared_rail(rail).route(route).build().unwrap());
    let app = Router::new()
        .route(PATH, axum::routing::get(|| async { "paid" }))
        .layer(PaywallLayer::shared(paywall));
    Setup { app, wallet, _nwc: kept }
}

async fn get(app: &Router, auth: Option<&str>) -> http::Response<Body> {
    let mut request = Request::get(PATH);
    if let Some(auth) = auth {
        request = request.header(http::header::AUTHORIZATION, auth);
    }
    app.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap()
}

/// One paid request: 402, pay its invoice, retry with the token, 200.
async fn paid_request(setup: &Setup) {
    let challenged = get(&setup.app, None).await;
    assert_eq!(challenged.status(), StatusCode::PAYMENT_REQUIRED);
    let lines = challenged.headers().get_all(http::header::WWW_AUTHENTICATE);
    let parsed = parse_challenges(lines.iter().filter_map(|v| v.to_str().ok())).unwrap();
    let challenge = parsed.iter().find_map(|c| parse_challenge(c).ok()).unwrap();
    let paid = setup.wallet.pay(&challenge.invoice, 0).await.unwrap();
    let auth = format_credential(&challenge.macaroon, &paid.preimage);
    let served = get(&setup.app, Some(&auth)).await;
    assert_eq!(served.status(), StatusCode::OK);
}

const BACKENDS: [(&str, bool); 2] = [("dev_node", false), ("nwc", true)];

fn paid_requests(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let setups: Vec<(&str, Arc<Setup>)> = BACKENDS
        .iter()
        .map(|(name, nwc)| (*name, Arc::new(runtime.block_on(setup(*nwc)))))
        .collect();
    let mut group = c.benchmark_group("l402_paid_request");
    group.sample_size(20).measurement_time(Duration::from_secs(8));
    for (name, setup) in &setups {
        group.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        paid_request(setup).await;
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();

    // Percentiles and load only under `cargo bench`: `cargo test --benches` stays quick.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let requests: usize = std::env::var("FAREBOX_L402_BENCH_REQUESTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300)
        .max(1);
    for (name, setup) in &setups {
        report(&runtime, name, setup, requests);
    }
}

/// Prints p50 / p99 and requests/s of `requests` paid requests one at a time, then requests/s
/// with 16 clients at once.
fn report(runtime: &Runtime, name: &str, setup: &Arc<Setup>, requests: usize) {
    let (mut samples, elapsed) = runtime.block_on(async {
        let mut samples = Vec::with_capacity(requests);
        let start = Instant::now();
        for _ in 0..requests {
            let one = Instant::now();
            paid_request(setup).await;
            samples.push(one.elapsed());
        }
        (samples, start.elapsed())
    });
    samples.sort();
    let at =
        |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    println!(
        "l402_paid_request/{name}: {requests} one at a time: p50 {:?}  p99 {:?}  {:.0} requests/s",
        at(0.50),
        at(0.99),
        requests as f64 / elapsed.as_secs_f64()
    );

    const CLIENTS: usize = 16;
    let elapsed = runtime.block_on(async {
        let start = Instant::now();
        let per_client = requests.div_ceil(CLIENTS);
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..CLIENTS {
            let setup = setup.clone();
            clients.spawn(async move {
                for _ in 0..per_client {
                    paid_request(&setup).await;
                }
            });
        }
        while let Some(done) = clients.join_next().await {
            done.unwrap();
        }
        start.elapsed()
    });
    let done = requests.div_ceil(CLIENTS) * CLIENTS;
    println!(
        "l402_paid_request/{name}: {done} from {CLIENTS} clients at once: {:.0} requests/s",
        done as f64 / elapsed.as_secs_f64()
    );
}

criterion_group!(benches, paid_requests);
criterion_main!(benches);
