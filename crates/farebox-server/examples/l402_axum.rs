//! Put a price on an axum route with L402, then pay for it.
//!
//! ```text
//! cargo run -p farebox-server --example l402_axum
//! ```
//!
//! The route `GET /fortune` costs 21 sat. The server's Lightning node and the paying wallet are
//! embedded dev nodes on one in-process network: invoices are really signed, preimages really
//! released; only the routing between the two nodes is simulated. Swap `DevNode` for another
//! `LightningBackend` to take real payments.

use std::sync::Arc;

use axum::routing::get;
use axum::{Extension, Router};
use farebox_client::{Budget, PaymentMiddleware};
use farebox_core::{Money, Price};
use farebox_l402::client::L402Wallet;
use farebox_l402::{DerivedRootKeys, L402Config, L402Rail};
use farebox_lightning::{DevNetwork, DevNode};
use farebox_server::{Paid, Paywall, PaywallLayer, PricedRoute};
use http::Method;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The server side: a Lightning node that issues invoices, and an L402 rail using it. The
    // master secret derives each token's root key; keep it secret and stable across restarts.
    let network = DevNetwork::new();
    let server_node = Arc::new(DevNode::random(&network, 0));
    let rail = L402Rail::new(
        L402Config::new(
            "fortunes",
            Arc::new(DerivedRootKeys::new(b"change me: 32+ bytes of secret!!")?),
        ),
        server_node.clone(),
    )?;
    let paywall = Paywall::builder()
        .rail(rail)
        .route(
            PricedRoute::new(Some(Method::GET), "/fortune", Price::one(Money::sats(21)))?
                .describe("a fortune"),
        )
        .build()?;

    // The handler sees what was paid through the `Paid` extension.
    let app = Router::new()
        .route(
            "/fortune",
            get(|Extension(paid): Extension<Paid>| async move {
                format!("You will find {} well spent. (paid over {})\n", paid.amount, paid.rail)
            }),
        )
        .layer(PaywallLayer::new(paywall));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/fortune", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    // A plain request meets the 402.
    let plain = reqwest::get(&url).await?;
    println!("without payment: {}", plain.status());
    for line in plain.headers().get_all("www-authenticate") {
        println!("  WWW-Authenticate: {}…", &line.to_str()?[..60]);
    }

    // The paying client: a wallet node with 1000 sat, at most 50 sat per request.
    let wallet = Arc::new(DevNode::random(&network, 1_000_000));
    let payer = PaymentMiddleware::new(Budget::new().allow(Money::sats(50), Money::sats(500))?)
        .wallet(L402Wallet::new(wallet.clone(), 1_000));
    let ledger = payer.ledger();
    let client = farebox_client::paying_client(reqwest::Client::new(), payer);
    let paid = client.get(&url).send().await?;
    println!("with payment: {} {}", paid.status(), paid.text().await?.trim());
    println!(
        "ledger: {:?}",
        ledger.entries().iter().map(|e| e.amount.to_string()).collect::<Vec<_>>()
    );
    println!("server node balance: {}", Money::msats(server_node.balance_msat()));
    Ok(())
}
