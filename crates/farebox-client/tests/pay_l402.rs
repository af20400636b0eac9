//! The paying client against a real paywall: L402 rail, embedded dev node, loopback HTTP.
//! What is asserted is what an agent builder notices: what was paid, what the ledger and the
//! wallet show, and which typed error comes back when the client must not pay.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use farebox_client::{Budget, ClientError, L402Wallet, Ledger, PaymentMiddleware};
use farebox_core::{Asset, Money, Price};
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
        .build()
        .unwrap();
    let app = Router::new()
        .route("/cheap", get(|| async { "cheap" }))
        .route("/pricey", get(|| async { "pricey" }))
        // A server that keeps answering 402 even to a valid proof.
        .route(
            "/broken",
            get(|| async { (StatusCode::PAYMENT_REQUIRED, "still 402") }),
        )
        .layer(PaywallLayer::new(paywall));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    World {
        base,
        server_node,
        wallet_node,
    }
}

fn client(w: &World, per_request: u64, total: u64) -> (ClientWithMiddleware, Ledger, Budget) {
    let budget = Budget::new()
        .allow(Money::sats(per_request), Money::sats(total))
        .unwrap();
    let payer =
        PaymentMiddleware::new(budget.clone()).wallet(L402Wallet::new(w.wallet_node.clone(), 0));
    let ledger = payer.ledger();
    (
        farebox_client::paying_client(reqwest::Client::new(), payer),
        ledger,
        budget,
    )
}

#[tokio::test]
async fn pays_once_and_reuses_the_token() {
    let w = world().await;
    let (client, ledger, budget) = client(&w, 100, 1000);
    for _ in 0..3 {
        let r = client
            .get(format!("{}/cheap", w.base))
            .send()
            .await
            .unwrap();
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
    let err = client
        .get(format!("{}/pricey", w.base))
        .send()
        .await
        .unwrap_err();
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
    assert!(
        client
            .get(format!("{}/pricey", w.base))
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    // 400 of 405 spent: the 10 sat route no longer fits, and is not paid.
    let err = client
        .get(format!("{}/cheap", w.base))
        .send()
        .await
        .unwrap_err();
    let typed = ClientError::from_middleware(&err).expect("typed error");
    assert!(typed.to_string().contains("5 sat left"), "{typed}");
    assert_eq!(ledger.entries().len(), 1);
    assert_eq!(w.wallet_node.balance_msat(), 1_000_000 - 400_000);
}

#[tokio::test]
async fn a_server_that_refuses_the_proof_is_not_paid_twice() {
    let w = world().await;
    let (client, ledger, _) = client(&w, 100, 1000);
    let err = client
        .get(format!("{}/broken", w.base))
        .send()
        .await
        .unwrap_err();
    let typed = ClientError::from_middleware(&err).expect("typed error");
    assert!(
        matches!(typed, ClientError::ProofRejected { status: 402, .. }),
        "{typed}"
    );
    assert_eq!(
        ledger.entries().len(),
        1,
        "the payment that was made is in the ledger"
    );
    assert_eq!(
        w.wallet_node.balance_msat(),
        1_000_000 - 10_000,
        "and it was made once"
    );
}

#[tokio::test]
async fn a_failed_payment_spends_nothing() {
    let w = world().await;
    w.wallet_node.set_available(false);
    let (client, ledger, budget) = client(&w, 100, 1000);
    let err = client
        .get(format!("{}/cheap", w.base))
        .send()
        .await
        .unwrap_err();
    let typed = ClientError::from_middleware(&err).expect("typed error");
    assert!(matches!(typed, ClientError::PaymentFailed(_)), "{typed}");
    assert!(ledger.entries().is_empty());
    assert_eq!(budget.spent(&Asset::Bitcoin), Money::sats(0));
    // The reservation was released: the full budget is usable once the wallet is back.
    w.wallet_node.set_available(true);
    assert!(
        client
            .get(format!("{}/cheap", w.base))
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
}

#[tokio::test]
async fn a_server_whose_node_is_down_answers_503_and_nothing_is_paid() {
    let w = world().await;
    w.server_node.set_available(false);
    let (client, ledger, _) = client(&w, 100, 1000);
    let r = client
        .get(format!("{}/cheap", w.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    assert!(ledger.entries().is_empty());
}
