//! The paying client against a real paywall: L402 rail, embedded dev node, loopback HTTP.
//! What is asserted is what an agent builder notices: what was paid, what the ledger and the
//! wallet show, and which typed error comes back when the client must not pay.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use farebox_client::{Budget, ClientError, Ledger, PaymentMiddleware};
use farebox_core::{Asset, Money, Price};
use farebox_l402::client::L402Wallet;
use farebox_l402::{DerivedRootKeys, L402Config, L402Rail};
use farebox_lightning::{DevNetwork, DevNode};
use farebox_server::{Paywall, PaywallLayer, PricedRoute};
use http::{Method, StatusCode};
use reqwest_middleware::ClientWithMiddleware;

struct World {
    base: String,
    server_node: Arc<DevNode>,
    wallet_node: Arc<DevNode>,
}

async fn world() -> World {
    let network = DevNetwork::new();
    let server_node = Arc::new(DevNode::new(&network, [1; 32], 0));
    let wallet_node = Arc::new(DevNode::new(&network, [2; 32], 1_000_000));
    let rail = L402Rail::new(
        L402Config::new("api", Arc::new(DerivedRootKeys::new(&[9; 32]).unwrap())),
        server_node.clone(),
    )
    .unwrap();
    let route = |m: Method, p: &str, sats: u64| {
        PricedRoute::new(Some(m), p, Price::one(Money::sats(sats))).unwrap()
    };
    let paywall = Paywall::builder()
        .rail(rail)
        .route(route(Method::GET, "/cheap", 10))
        .route(route(Method::GET, "/pricey", 400))
        .route(route(Method::GET, "/broken", 10))
        .route(route(Method::GET, "/echo-auth", 10))
        .route(route(Method::GET, "/v1/joke", 10))
        .route(route(Method::GET, "/v1/weather/*", 20))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/cheap", get(|| async { "cheap" }))
        .route("/pricey", get(|| async { "pricey" }))
        // A server that keeps answering 402 even to a valid proof.
        .route("/broken", get(|| async { (StatusCode::PAYMENT_REQUIRED, "still 402") }))
        .route("/v1/joke", get(|| async { "joke" }))
        .route("/v1/weather/{city}", get(|| async { "weather" }))
        // Echoes the upstream's own credentials, to show the client did not drop them.
        .route(
            "/echo-auth",
            get(|headers: http::HeaderMap| async move {
                let values: Vec<String> = headers
                    .get_all("authorization")
                    .iter()
                    .map(|v| v.to_str().unwrap().to_string())
                    .collect();
                values.join(" | ")
            }),
        )
        .layer(PaywallLayer::new(paywall));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    World { base, server_node, wallet_node }
}

fn client(w: &World, per_request: u64, total: u64) -> (ClientWithMiddleware, Ledger, Budget) {
    let budget = Budget::new().allow(Money::sats(per_request), Money::sats(total)).unwrap();
    let payer =
        PaymentMiddleware::new(budget.clone()).wallet(L402Wallet::new(w.wallet_node.clone(), 0));
    let ledger = payer.ledger();
    (farebox_client::paying_client(reqwest::Client::new(), payer), ledger, budget)
}

#[tokio::test]
async fn pays_once_and_reuses_the_token() {
    let w = world().await;
    let (client, ledger, budget) = client(&w, 100, 1000);
    for _ in 0..3 {
        let r = client.get(format!("{}/cheap", w.base)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.text().await.unwrap(), "cheap");
    }
    let entries = ledger.entries();
    assert_eq!(entries.len(), 1, "one payment, then the token is reused");
    assert_eq!(entries[0].amount, Money::sats(10));
    assert_eq!(entries[0].rail, "l402");
    assert_eq!(budget.spent(&Asset::Bitcoin), Money::sats(10));
    assert_eq!(w.wallet_node.balance_msat(), 1_000_000 - 10_000);
    assert_eq!(w.server_node.balance_msat(), 10_000);
}

#[tokio::test]
async fn over_the_per_request_limit_nothing_is_paid() {
    let w = world().await;
    let (client, ledger, _) = client(&w, 100, 1000);
    let err = client.get(format!("{}/pricey", w.base)).send().await.unwrap_err();
    let typed = ClientError::from_middleware(&err).expect("typed error");
    assert!(matches!(typed, ClientError::OverBudget { .. }), "{typed}");
    assert!(typed.to_string().contains("100 sat per request"), "{typed}");
    assert!(ledger.entries().is_empty());
    assert_eq!(w.wallet_node.balance_msat(), 1_000_000);
}

#[tokio::test]
async fn the_total_budget_caps_spending_across_requests() {
    let w = world().await;
    let (client, ledger, _) = client(&w, 500, 405);
    assert!(client.get(format!("{}/pricey", w.base)).send().await.unwrap().status().is_success());
    // 400 of 405 spent: the 10 sat route no longer fits, and is not paid.
    let err = client.get(format!("{}/cheap", w.base)).send().await.unwrap_err();
    let typed = ClientError::from_middleware(&err).expect("typed error");
    assert!(typed.to_string().contains("5 sat left"), "{typed}");
    assert_eq!(ledger.entries().len(), 1);
    assert_eq!(w.wallet_node.balance_msat(), 1_000_000 - 400_000);
}

#[tokio::test]
async fn a_server_that_refuses_the_proof_is_not_paid_twice() {
    let w = world().await;
    let (client, ledger, _) = client(&w, 100, 1000);
    let err = client.get(format!("{}/broken", w.base)).send().await.unwrap_err();
    let typed = ClientError::from_middleware(&err).expect("typed error");
    assert!(matches!(typed, ClientError::ProofRejected { status: 402, .. }), "{typed}");
    assert_eq!(ledger.entries().len(), 1, "the payment that was made is in the ledger");
    assert_eq!(w.wallet_node.balance_msat(), 1_000_000 - 10_000, "and it was made once");
}

#[tokio::test]
async fn a_failed_payment_spends_nothing() {
    let w = world().await;
    w.wallet_node.set_available(false);
    let (client, ledger, budget) = client(&w, 100, 1000);
    let err = client.get(format!("{}/cheap", w.base)).send().await.unwrap_err();
    let typed = ClientError::from_middleware(&err).expect("typed error");
    // A wallet node that cannot be reached is told apart from a payment that failed.
    assert!(matches!(typed, ClientError::Unavailable(_)), "{typed}");
    assert!(ledger.entries().is_empty());
    assert_eq!(budget.spent(&Asset::Bitcoin), Money::sats(0));
    // The reservation was released: the full budget is usable once the wallet is back.
    w.wallet_node.set_available(true);
    assert!(client.get(format!("{}/cheap", w.base)).send().await.unwrap().status().is_success());
}

#[tokio::test]
async fn a_server_whose_node_is_down_answers_503_and_nothing_is_paid() {
    let w = world().await;
    w.server_node.set_available(false);
    let (client, ledger, _) = client(&w, 100, 1000);
    let r = client.get(format!("{}/cheap", w.base)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    assert!(ledger.entries().is_empty());
}

#[tokio::test]
async fn concurrent_first_requests_buy_one_token() {
    let w = world().await;
    let (client, ledger, _) = client(&w, 100, 1000);
    let url = format!("{}/cheap", w.base);
    let requests = (0..6).map(|_| {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
    });
    for r in requests {
        assert_eq!(r.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(ledger.entries().len(), 1, "the others waited and reused the token");
}

#[tokio::test]
async fn a_token_that_does_not_fit_a_neighbouring_route_is_kept_for_its_own() {
    let w = world().await;
    let (client, ledger, _) = client(&w, 100, 1000);
    for path in ["/v1/joke", "/v1/weather/oslo", "/v1/joke", "/v1/weather/rome"] {
        let r = client.get(format!("{}{path}", w.base)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    let paid: Vec<_> = ledger.entries().iter().map(|e| e.amount.clone()).collect();
    assert_eq!(paid, [Money::sats(10), Money::sats(20)], "one token per route, none bought twice");
}

#[tokio::test]
async fn the_callers_own_authorization_still_goes_out() {
    let w = world().await;
    let (client, _, _) = client(&w, 100, 1000);
    let r = client
        .get(format!("{}/echo-auth", w.base))
        .bearer_auth("upstream-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let seen = r.text().await.unwrap();
    assert!(seen.starts_with("Bearer upstream-key | L402 "), "{seen}");
}

/// A wallet whose node pays but hands back the wrong preimage.
struct LyingNode(Arc<DevNode>);

#[async_trait::async_trait]
impl farebox_lightning::LightningBackend for LyingNode {
    async fn create_invoice(
        &self,
        r: farebox_lightning::InvoiceRequest,
    ) -> Result<farebox_lightning::CreatedInvoice, farebox_lightning::LightningError> {
        self.0.create_invoice(r).await
    }
    async fn invoice_state(
        &self,
        h: &farebox_lightning::PaymentHash,
    ) -> Result<farebox_lightning::InvoiceState, farebox_lightning::LightningError> {
        self.0.invoice_state(h).await
    }
    async fn pay(
        &self,
        bolt11: &str,
        max_fee_msat: u64,
    ) -> Result<farebox_lightning::PaymentOutcome, farebox_lightning::LightningError> {
        let mut outcome = self.0.pay(bolt11, max_fee_msat).await?;
        outcome.preimage = [0; 32];
        Ok(outcome)
    }
}

#[tokio::test]
async fn money_that_left_without_a_proof_is_still_counted() {
    let w = world().await;
    let budget = Budget::new().allow(Money::sats(100), Money::sats(1000)).unwrap();
    let payer = PaymentMiddleware::new(budget.clone())
        .wallet(L402Wallet::new(Arc::new(LyingNode(w.wallet_node.clone())), 0));
    let ledger = payer.ledger();
    let client = farebox_client::paying_client(reqwest::Client::new(), payer);
    let err = client.get(format!("{}/cheap", w.base)).send().await.unwrap_err();
    let typed = ClientError::from_middleware(&err).expect("typed error");
    assert!(matches!(typed, ClientError::PaidWithoutProof(_)), "{typed}");
    assert_eq!(w.wallet_node.balance_msat(), 1_000_000 - 10_000, "the money did leave");
    assert_eq!(ledger.entries().len(), 1, "so the ledger says so");
    assert_eq!(budget.spent(&Asset::Bitcoin), Money::sats(10), "and the budget counts it");
}
