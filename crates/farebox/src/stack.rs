//! The demo stack: upstream API, paid server (paywall + forwarding proxy) and the embedded
//! Lightning dev network with a receiving node and a paying wallet node.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use farebox_core::{Money, Price};
use farebox_l402::{DerivedRootKeys, L402Config, L402Rail};
use farebox_lightning::{DevNetwork, DevNode};
use farebox_server::{Paywall, PaywallLayer, PricedRoute};
use http::Method;

use crate::proxy::{self, Upstream};

/// Sats the demo wallet starts with.
pub const WALLET_OPENING_SATS: u64 = 100_000;

/// What the paid server charges, for the narration.
pub const PRICES: &[(&str, &str, u64)] =
    &[("GET", "/joke", 10), ("GET", "/weather/*", 25), ("GET", "/premium", 1_000)];

pub struct Stack {
    pub upstream: SocketAddr,
    pub server: SocketAddr,
    pub server_node: Arc<DevNode>,
    pub wallet_node: Arc<DevNode>,
}

async fn serve(listener: tokio::net::TcpListener, app: axum::Router) {
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "server stopped");
    }
}

/// Starts everything on loopback. `server_port` 0 picks a free port.
pub async fn start(server_port: u16) -> anyhow::Result<Stack> {
    let network = DevNetwork::new();
    let server_node = Arc::new(DevNode::random(&network, 0));
    let wallet_node = Arc::new(DevNode::random(&network, WALLET_OPENING_SATS * 1000));

    let upstream_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let upstream = upstream_listener.local_addr()?;
    tokio::spawn(serve(upstream_listener, crate::upstream::router()));

    let mut master = [0u8; 32];
    rand_fill(&mut master);
    let rail = L402Rail::new(
        L402Config::new("demo", Arc::new(DerivedRootKeys::new(&master)?)),
        server_node.clone(),
    )?;
    let mut paywall = Paywall::builder().rail(rail);
    for (method, pattern, sats) in PRICES {
        let method: Method = method.parse().context("route method")?;
        let route = PricedRoute::new(Some(method), pattern, Price::one(Money::sats(*sats)))?
            .describe(&format!("farebox demo {pattern}"));
        paywall = paywall.route(route);
    }
    let paywall = Arc::new(paywall.build()?);
    let upstream_state = Upstream {
        base: format!("http://{upstream}/").parse()?,
        client: reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?,
        paywall: paywall.clone(),
    };
    let app = axum::Router::new()
        .fallback(proxy::forward)
        .with_state(upstream_state)
        .layer(PaywallLayer::shared(paywall));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", server_port))
        .await
        .with_context(|| format!("binding 127.0.0.1:{server_port}"))?;
    let server = listener.local_addr()?;
    tokio::spawn(serve(listener, app));
    Ok(Stack { upstream, server, server_node, wallet_node })
}

/// Starts the dev wallet's HTTP API on loopback for `farebox pay`.
pub async fn serve_wallet(wallet: Arc<DevNode>, port: u16) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("binding 127.0.0.1:{port}"))?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve(listener, crate::devnet::router(wallet)));
    Ok(addr)
}

fn rand_fill(buf: &mut [u8]) {
    use rand::RngCore;
    rand::rngs::OsRng.fill_bytes(buf);
}
