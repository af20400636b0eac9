//! What the HTTP tests share: a server selling a joke on the prepaid rail, on a loopback
//! listener.

use std::sync::Arc;

use axum::Router;
use ed25519_dalek::SigningKey;
use farebox_core::{Asset, Money, Price};
use farebox_rail_prepaid::PrepaidRail;
use farebox_server::{Paywall, PaywallLayer, PricedRoute};
use farebox_store::MemoryStore;

pub const JOKE: &str = "a prepaid joke";

/// `/joke` for 21 sat on the prepaid rail of `seller`, behind the paywall.
pub fn paywalled(seller: &SigningKey) -> Router {
    let store = Arc::new(MemoryStore::new());
    let rail = PrepaidRail::new(Asset::Bitcoin, seller.verifying_key(), store);
    let paywall = Paywall::builder()
        .rail(rail)
        .route(PricedRoute::new(None, "/joke", Price::one(Money::sats(21))).unwrap())
        .build()
        .unwrap();
    Router::new()
        .route("/joke", axum::routing::get(|| async { JOKE }))
        .layer(PaywallLayer::new(paywall))
}

/// Serves `app` on a loopback listener: its base URL (`http://127.0.0.1:<port>`).
pub async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}")
}
