//! The paying client against a real paywall's MPP rail: the Lightning charge on an embedded dev
//! node network, and the EVM charge on a real anvil (FareboxUSD, EIP-712 "USDC" / "2",
//! 2 decimals). Asserted: what was paid, what the ledger, the budget and the balances show, and
//! that a price over budget is never paid.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use farebox_client::{Budget, ClientError, Ledger, PaymentMiddleware};
use farebox_core::{Asset, Money, Price};
use farebox_evm::U256;
use farebox_evm::anvil::Anvil;
use farebox_lightning::{DevNetwork, DevNode};
use farebox_mpp::client::MppWallet;
use farebox_mpp::{EvmChargeConfig, MppConfig, MppRail, PaymentReceipt};
use farebox_server::{Paywall, PaywallLayer, PricedRoute};
use farebox_store::MemoryStore;
use http::Method;
use reqwest_middleware::ClientWithMiddleware;

const SECRET: &[u8] = b"an-mpp-test-secret-of-at-least-32-bytes!";

async fn serve(paywall: Paywall) -> String {
    let app = Router::new()
        .route("/cheap", get(|| async { "cheap" }))
        .route("/pricey", get(|| async { "pricey" }))
        .layer(PaywallLayer::new(paywall));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

fn route(path: &str, price: Money) -> PricedRoute {
    PricedRoute::new(Some(Method::GET), path, Price::one(price)).unwrap()
}

fn paying(budget: &Budget, wallet: MppWallet) -> (ClientWithMiddleware, Ledger) {
    let payer = PaymentMiddleware::new(budget.clone()).wallet(wallet);
    let ledger = payer.ledger();
    (farebox_client::paying_client(reqwest::Client::new(), payer), ledger)
}

// ---- Lightning ----

struct LightningWorld {
    base: String,
    server_node: Arc<DevNode>,
    wallet_node: Arc<DevNode>,
}

async fn lightning_world() -> LightningWorld {
    let network = DevNetwork::new();
    let server_node = Arc::new(DevNode::new(&network, [1; 32], 0));
    let wallet_node = Arc::new(DevNode::new(&network, [2; 32], 1_000_000));
    let rail = MppRail::new(
        MppConfig::new("api.example.com", SECRET),
        server_node.clone(),
        Arc::new(MemoryStore::new()),
    )
    .unwrap();
    let paywall = Paywall::builder()
        .rail(rail)
        .route(route("/cheap", Money::sats(10)))
        .route(route("/pricey", Money::sats(400)))
        .build()
        .unwrap();
    LightningWorld { base: serve(paywall).await, server_node, wallet_node }
}

#[tokio::test]
async fn pays_a_lightning_charge() {
    let w = lightning_world().await;
    let budget = Budget::new().allow(Money::sats(100), Money::sats(1000)).unwrap();
    let (client, ledger) = paying(&budget, MppWallet::new().lightning(w.wallet_node.clone(), 0));
    for _ in 0..2 {
        let res = client.get(format!("{}/cheap", w.base)).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let receipt = res.headers()["payment-receipt"].to_str().unwrap().to_string();
        assert_eq!(PaymentReceipt::decode(&receipt).unwrap().method, "lightning");
        assert_eq!(res.text().await.unwrap(), "cheap");
    }
    // A charge is paid per request: the credential is not reusable.
    let entries = ledger.entries();
    assert_eq!(entries.len(), 2);
    assert!(entries.iter().all(|e| e.rail == "mpp" && e.amount == Money::sats(10)));
    assert_eq!(budget.spent(&Asset::Bitcoin), Money::sats(20));
    assert_eq!(w.wallet_node.balance_msat(), 1_000_000 - 20_000);
    assert_eq!(w.server_node.balance_msat(), 20_000);
}

#[tokio::test]
async fn over_budget_a_lightning_charge_is_not_paid() {
    let w = lightning_world().await;
    let budget = Budget::new().allow(Money::sats(100), Money::sats(1000)).unwrap();
    let (client, ledger) = paying(&budget, MppWallet::new().lightning(w.wallet_node.clone(), 0));
    let err = client.get(format!("{}/pricey", w.base)).send().await.unwrap_err();
    let typed = ClientError::from_middleware(&err).expect("typed error");
    assert!(matches!(typed, ClientError::OverBudget { .. }), "{typed}");
    assert!(ledger.entries().is_empty());
    assert_eq!(w.wallet_node.balance_msat(), 1_000_000);
}

#[tokio::test]
async fn a_wallet_without_the_method_pays_nothing() {
    let w = lightning_world().await;
    let anvil_key = farebox_evm::anvil::dev_accounts().remove(1).signer;
    let budget = Budget::new().allow(Money::sats(100), Money::sats(1000)).unwrap();
    let (client, ledger) = paying(&budget, MppWallet::new().evm(anvil_key));
    let res = client.get(format!("{}/cheap", w.base)).send().await;
    match res {
        Ok(r) => assert_eq!(r.status(), 402),
        Err(e) => assert!(ClientError::from_middleware(&e).is_some(), "{e}"),
    }
    assert!(ledger.entries().is_empty());
    assert_eq!(w.wallet_node.balance_msat(), 1_000_000);
}

// ---- EVM ----

#[tokio::test]
async fn pays_an_evm_charge_on_anvil() {
    let anvil = Anvil::start().expect("anvil (run `cargo xtask setup`)");
    let rpc = anvil.rpc().await.unwrap().clone();
    let token = anvil.deploy_token("USDC", "2").await.unwrap();
    let payer = anvil.accounts()[1].clone();
    let recipient = anvil.accounts()[2].address;
    anvil.mint(token, payer.address, U256::from(10_000u64)).await.unwrap();
    let evm = EvmChargeConfig::builder(rpc.clone(), anvil.accounts()[3].signer.clone())
        .token(token)
        // A two-decimal token under USDC's Base Sepolia domain.
        .described_as(farebox_evm::token::TokenInfo {
            decimals: 2,
            ..(&farebox_evm::usdc::BASE_SEPOLIA).into()
        })
        .recipient(recipient)
        .build()
        .unwrap();
    let asset = evm.asset();
    let rail = MppRail::with_methods(
        MppConfig::new("api.example.com", SECRET),
        None,
        Some(evm),
        Arc::new(MemoryStore::new()),
    )
    .unwrap();
    let paywall = Paywall::builder()
        .rail(rail)
        .route(route("/cheap", Money::new(asset.clone(), 150)))
        .route(route("/pricey", Money::new(asset.clone(), 5_000)))
        .build()
        .unwrap();
    let base = serve(paywall).await;
    let budget = Budget::new()
        .allow(Money::new(asset.clone(), 1_000), Money::new(asset.clone(), 2_000))
        .unwrap();
    let (client, ledger) = paying(&budget, MppWallet::new().evm(payer.signer.clone()));

    let res = client.get(format!("{base}/cheap")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let receipt =
        PaymentReceipt::decode(res.headers()["payment-receipt"].to_str().unwrap()).unwrap();
    assert_eq!(receipt.method, "evm");
    assert_eq!(res.text().await.unwrap(), "cheap");
    assert_eq!(rpc.balance_of(token, recipient).await.unwrap(), U256::from(150u64));
    assert_eq!(ledger.entries().len(), 1);
    assert_eq!(ledger.entries()[0].amount, Money::new(asset.clone(), 150));
    assert_eq!(budget.spent(&asset), Money::new(asset.clone(), 150));

    // Over the per-request limit: refused before signing anything.
    let err = client.get(format!("{base}/pricey")).send().await.unwrap_err();
    let typed = ClientError::from_middleware(&err).expect("typed error");
    assert!(matches!(typed, ClientError::OverBudget { .. }), "{typed}");
    assert_eq!(ledger.entries().len(), 1);
    assert_eq!(rpc.balance_of(token, recipient).await.unwrap(), U256::from(150u64));
}

/// Prepends unpayable `Payment` challenges to every 402: one on a field line of its own whose
/// quote never ends, and one well-formed whose request is not base64url JSON.
async fn with_broken_challenges_first(
    response: axum::response::Response,
) -> axum::response::Response {
    if response.status() != http::StatusCode::PAYMENT_REQUIRED {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let good: Vec<_> =
        parts.headers.get_all(http::header::WWW_AUTHENTICATE).iter().cloned().collect();
    parts.headers.remove(http::header::WWW_AUTHENTICATE);
    for bad in [
        r#"Payment id="unterminated, realm="api.example.com", method="lightning", intent="charge""#,
        r#"Payment id="bad-request", realm="api.example.com", method="lightning", intent="charge", request="!!not-base64url!!", expires="2099-01-01T00:00:00Z""#,
    ] {
        parts.headers.append(http::header::WWW_AUTHENTICATE, bad.parse().unwrap());
    }
    for value in good {
        parts.headers.append(http::header::WWW_AUTHENTICATE, value);
    }
    axum::response::Response::from_parts(parts, body)
}

#[tokio::test]
async fn a_malformed_payment_challenge_does_not_keep_the_client_from_paying_the_others() {
    let network = DevNetwork::new();
    let server_node = Arc::new(DevNode::new(&network, [1; 32], 0));
    let wallet_node = Arc::new(DevNode::new(&network, [2; 32], 1_000_000));
    let rail = MppRail::new(
        MppConfig::new("api.example.com", SECRET),
        server_node.clone(),
        Arc::new(MemoryStore::new()),
    )
    .unwrap();
    let paywall =
        Paywall::builder().rail(rail).route(route("/cheap", Money::sats(10))).build().unwrap();
    let app = Router::new()
        .route("/cheap", get(|| async { "cheap" }))
        .layer(PaywallLayer::new(paywall))
        .layer(axum::middleware::map_response(with_broken_challenges_first));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let budget = Budget::new().allow(Money::sats(100), Money::sats(1000)).unwrap();
    let (client, ledger) = paying(&budget, MppWallet::new().lightning(wallet_node.clone(), 0));
    let res = client.get(format!("{base}/cheap")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "cheap");
    assert_eq!(ledger.entries().len(), 1);
    assert_eq!(wallet_node.balance_msat(), 1_000_000 - 10_000);
    assert_eq!(server_node.balance_msat(), 10_000);
}
