//! The demo stack: upstream API, paid server (paywall + forwarding proxy), the embedded
//! Lightning dev network, and — when anvil is installed — a local EVM chain with the FareboxUSD
//! token and an in-process x402 facilitator.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use farebox_core::{Asset, Money, Price, Token};
use farebox_evm::anvil::Anvil;
use farebox_evm::{Address, EvmRpc, PrivateKeySigner, U256};
use farebox_l402::{DerivedRootKeys, L402Config, L402Rail};
use farebox_lightning::{DevNetwork, DevNode};
use farebox_mpp::{EvmSessionConfig, MppConfig, MppRail};
use farebox_server::{Paywall, PaywallLayer, PricedRoute};
use farebox_x402::facilitator::local::{ChainAccess, LocalFacilitator};
use farebox_x402::{X402Config, X402Rail};
use http::Method;

use crate::proxy::{self, Upstream};
use farebox_mpp::evm::escrow::EscrowRpc;

/// Sats the demo wallet starts with.
pub const WALLET_OPENING_SATS: u64 = 100_000;
/// USDC (6 decimals) the demo's EVM account starts with.
pub const WALLET_OPENING_USDC: u128 = 100_000_000;
/// The chain id the demo chain runs with (Base Sepolia's, as x402 clients expect).
pub const CHAIN_ID: u64 = 84532;

/// A route's price: sats, USDC base units (6 decimals), or both.
pub struct DemoPrice {
    pub method: &'static str,
    pub pattern: &'static str,
    pub sats: Option<u64>,
    pub usdc_units: Option<u128>,
}

pub const PRICES: &[DemoPrice] = &[
    DemoPrice { method: "GET", pattern: "/joke", sats: Some(10), usdc_units: Some(10_000) },
    DemoPrice { method: "GET", pattern: "/weather/*", sats: Some(25), usdc_units: None },
    DemoPrice { method: "GET", pattern: "/report", sats: None, usdc_units: Some(50_000) },
    DemoPrice { method: "GET", pattern: "/premium", sats: Some(1_000), usdc_units: None },
    DemoPrice { method: "GET", pattern: "/ticks/*", sats: None, usdc_units: Some(1_000) },
];

/// The local chain side of the demo.
pub struct Evm {
    pub anvil: Anvil,
    pub rpc: EvmRpc,
    pub token: Address,
    /// The client's account.
    pub payer: PrivateKeySigner,
    /// The API provider's account (x402 `payTo`, the payee of MPP session channels).
    pub pay_to: Address,
    /// Its key: the payee closes session channels.
    pub pay_to_key: PrivateKeySigner,
    /// The MPP session escrow (`SessionEscrow`).
    pub escrow: Address,
    /// The facilitator's gas key.
    pub gas: PrivateKeySigner,
}

impl Evm {
    pub fn usdc(&self) -> Token {
        Token {
            network: farebox_evm::network::caip2(CHAIN_ID),
            address: format!("{:#x}", self.token),
            symbol: "USDC".into(),
            decimals: 6,
        }
    }

    pub async fn balance(&self, who: Address) -> anyhow::Result<Money> {
        let units: u128 =
            self.rpc.balance_of(self.token, who).await?.try_into().unwrap_or(u128::MAX);
        Ok(Money::new(Asset::Token(self.usdc()), units))
    }
}

/// Starts anvil with the token deployed and the payer funded, or says why not.
pub async fn start_evm() -> anyhow::Result<Evm> {
    let anvil = Anvil::builder()
        .chain_id(CHAIN_ID)
        .start()
        .context("starting anvil (install it with `cargo xtask setup`)")?;
    let token = anvil.deploy_token("USDC", "2").await?;
    let accounts = anvil.accounts();
    let (payer, pay_to_key, gas) =
        (accounts[1].signer.clone(), accounts[2].signer.clone(), accounts[3].signer.clone());
    anvil.mint(token, payer.address(), U256::from(WALLET_OPENING_USDC)).await?;
    let rpc = EvmRpc::connect(anvil.url()).await?;
    let escrow = rpc
        .deploy_session_escrow(
            &accounts[0].signer,
            farebox_mpp::evm::escrow::DEFAULT_CLOSE_GRACE_PERIOD,
        )
        .await?;
    Ok(Evm { anvil, rpc, token, payer, pay_to: pay_to_key.address(), pay_to_key, escrow, gas })
}

pub struct Stack {
    pub upstream: SocketAddr,
    pub server: SocketAddr,
    pub server_node: Arc<DevNode>,
    pub wallet_node: Arc<DevNode>,
    pub store_path: PathBuf,
}

impl Drop for Stack {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.store_path.display()));
        }
    }
}

async fn serve(listener: tokio::net::TcpListener, app: axum::Router) {
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "server stopped");
    }
}

/// Starts everything on loopback. `server_port` 0 picks a free port. With `evm`, routes priced
/// in USDC are offered over x402 too.
pub async fn start(server_port: u16, evm: Option<&Evm>) -> anyhow::Result<Stack> {
    let network = DevNetwork::new();
    let server_node = Arc::new(DevNode::random(&network, 0));
    let wallet_node = Arc::new(DevNode::random(&network, WALLET_OPENING_SATS * 1000));

    let upstream_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let upstream = upstream_listener.local_addr()?;
    tokio::spawn(serve(upstream_listener, crate::upstream::router()));

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", server_port))
        .await
        .with_context(|| format!("binding 127.0.0.1:{server_port}"))?;
    let server = listener.local_addr()?;

    // The embedded default store: SQLite, so replay protection survives a restart.
    let store_path =
        std::env::temp_dir().join(format!("farebox-demo-{}.sqlite", std::process::id()));
    let store = Arc::new(farebox_store::SqliteStore::open(&store_path).await?);

    let mut master = [0u8; 32];
    rand_fill(&mut master);
    // The store also keeps L402 revocations and the counts of request-limited delegations.
    let l402 = L402Rail::new(
        L402Config::new("demo", Arc::new(DerivedRootKeys::new(&master)?)).with_store(store.clone()),
        server_node.clone(),
    )?;
    let mut paywall = Paywall::builder().rail(l402);
    let mut usdc = None;
    if let Some(evm) = evm {
        let facilitator = LocalFacilitator::new(
            vec![ChainAccess { rpc: evm.rpc.clone(), signer: evm.gas.clone() }],
            store.clone(),
        );
        let token = evm.usdc();
        let config = X402Config::builder()
            .network(token.network.clone())
            .asset(token.address.clone())
            // The dev chain's FareboxUSD is deployed with Base Sepolia USDC's domain.
            .described_as(&farebox_evm::usdc::BASE_SEPOLIA)
            .pay_to(format!("{:#x}", evm.pay_to))
            .max_timeout_seconds(60)
            .public_url(format!("http://{server}"))
            .offer_v1(true)
            .build()?;
        // With the node, a payer may have several payments in flight when its balance covers
        // them all (without it, one at a time).
        let rail = X402Rail::new(config, Arc::new(facilitator), store.clone());
        paywall = paywall.rail(rail.with_node(evm.rpc.clone()));
        // MPP sessions on the same token: channels in the escrow, accounting in the same store.
        let session = EvmSessionConfig::builder(evm.rpc.clone(), evm.pay_to_key.clone())
            .escrow(evm.escrow)
            .token(evm.token)
            .described_as(&farebox_evm::usdc::BASE_SEPOLIA)
            .build()?;
        let mpp = MppRail::builder(MppConfig::new("farebox-demo", master.to_vec()), store.clone())
            .evm_session(session, store.clone())
            .build()?;
        paywall = paywall.shared_rail(Arc::new(mpp));
        usdc = Some(token);
    }
    for p in PRICES {
        let mut offers = Vec::new();
        if let Some(sats) = p.sats {
            offers.push(Money::sats(sats));
        }
        if let (Some(units), Some(token)) = (p.usdc_units, &usdc) {
            offers.push(Money::new(Asset::Token(token.clone()), units));
        }
        if offers.is_empty() {
            continue; // priced only in an asset this run cannot take
        }
        let price = Price::any_of(offers).map_err(anyhow::Error::msg)?;
        let method: Method = p.method.parse().context("route method")?;
        let route = PricedRoute::new(Some(method), p.pattern, price)?
            .describe(&format!("farebox demo {}", p.pattern));
        paywall = paywall.route(route);
    }
    let paywall = Arc::new(paywall.build()?);
    // Upkeep: reconcile x402 settlements left pending, answer forced closes of MPP channels
    // before their grace period ends, close idle sessions. Refused if 10 s is not well inside
    // the escrow's grace period.
    paywall.spawn_maintenance(Duration::from_secs(10)).await?;
    let upstream_state = Upstream {
        base: format!("http://{upstream}/").parse()?,
        client: reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?,
        paywall: paywall.clone(),
    };
    let app = axum::Router::new()
        .fallback(proxy::forward)
        .with_state(upstream_state)
        .layer(PaywallLayer::shared(paywall));
    tokio::spawn(serve(listener, app));
    Ok(Stack { upstream, server, server_node, wallet_node, store_path })
}

/// Starts the dev wallet's HTTP API on loopback for `farebox pay`.
pub async fn serve_wallet(wallet: Arc<DevNode>, port: u16) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("binding 127.0.0.1:{port}"))?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve(listener, farebox_lightning::dev_wallet::router(wallet)));
    Ok(addr)
}

fn rand_fill(buf: &mut [u8]) {
    use rand::RngCore;
    rand::rngs::OsRng.fill_bytes(buf);
}

/// The dev wallet as an agent's real wallet is reached: behind a Nostr Wallet Connect wallet
/// service, through a relay running in this process (a real websocket on loopback).
pub struct NwcWallet {
    /// The connection URI: a secret, never logged.
    pub uri: farebox_lightning::nwc::ConnectionUri,
    service: farebox_lightning::nwc::WalletService,
    relay: farebox_lightning::nwc::relay::LoopbackRelay,
}

impl NwcWallet {
    /// A relay on `port` (0: any free port) and a wallet service in front of `wallet`, with one
    /// unrestricted connection.
    pub async fn start(wallet: Arc<DevNode>, port: u16) -> anyhow::Result<NwcWallet> {
        use farebox_lightning::nwc::{ConnectionSettings, ServiceOptions, WalletService, relay};
        let port = (port != 0).then_some(port);
        let relay = relay::LoopbackRelay::start(relay::relay_builder(), port).await?;
        let service =
            WalletService::start(wallet, vec![relay.url().clone()], ServiceOptions::default())
                .await?;
        let uri = service.create_connection(ConnectionSettings::unrestricted("farebox")).await?;
        Ok(NwcWallet { uri, service, relay })
    }

    /// A wallet client on the connection.
    pub fn client(&self) -> Arc<farebox_lightning::nwc::NwcClient> {
        Arc::new(farebox_lightning::nwc::NwcClient::new(&self.uri))
    }

    /// The relay's URL.
    pub fn relay_url(&self) -> String {
        self.relay.url().to_string()
    }

    pub async fn shutdown(&self) {
        self.service.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wallet_file::{LightningConfig, SecretSource, lightning_backend};
    use farebox_client::{Budget, PaymentMiddleware};
    use farebox_l402::client::L402Wallet;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_wallet_on_nwc_pays_an_l402_server_through_a_relay() {
        let stack = start(0, None).await.unwrap();
        let nwc = NwcWallet::start(stack.wallet_node.clone(), 0).await.unwrap();
        // The URI is configured as a user does: a private file the wallet file names.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nwc.uri");
        std::fs::write(&path, nwc.uri.expose_secret()).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let node =
            lightning_backend(&LightningConfig::Nwc { uri: SecretSource::File(path) }).unwrap();
        let budget = Budget::new().allow(Money::sats(100), Money::sats(500)).unwrap();
        let payer = PaymentMiddleware::new(budget).wallet(L402Wallet::new(node, 1_000));
        let client = farebox_client::paying_client(reqwest::Client::new(), payer);
        let before = stack.wallet_node.balance_msat();
        let answer = client.get(format!("http://{}/joke", stack.server)).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(stack.server_node.balance_msat(), 10_000, "the server was paid 10 sat");
        assert_eq!(stack.wallet_node.balance_msat(), before - 10_000, "from the NWC wallet");

        // The wallet service gone: nothing paid, a typed "backend down" error, no payment.
        nwc.shutdown().await;
        let node = Arc::new(farebox_lightning::nwc::NwcClient::with_options(
            &nwc.uri,
            farebox_lightning::nwc::NwcOptions {
                timeout: Duration::from_millis(1500),
                connect_timeout: Duration::from_secs(3),
                ..Default::default()
            },
        ));
        let budget = Budget::new().allow(Money::sats(100), Money::sats(500)).unwrap();
        let payer = PaymentMiddleware::new(budget).wallet(L402Wallet::new(node, 1_000));
        let client = farebox_client::paying_client(reqwest::Client::new(), payer);
        let err = client.get(format!("http://{}/joke", stack.server)).send().await.unwrap_err();
        let typed = farebox_client::ClientError::from_middleware(&err);
        assert!(
            matches!(
                typed,
                Some(
                    farebox_client::ClientError::Unavailable(_)
                        | farebox_client::ClientError::PaidWithoutProof(_)
                )
            ),
            "{err}"
        );
        assert_eq!(stack.server_node.balance_msat(), 10_000, "nothing more was paid");
    }
}
