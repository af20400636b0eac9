//! The paying client with MPP sessions against a real paywall: a Lightning prepaid balance on
//! the embedded dev network, an EVM payment channel on a real anvil with SessionEscrow.
//! Asserted: many requests on one deposit, top-ups within the budget, the deposit counted
//! against the budget before anything moves, and the refund credited back at close (explicit
//! or when the wallet is dropped).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::routing::get;
use farebox_client::{
    Budget, ClientError, EntryKind, EvmSessionPolicy, Ledger, LightningSessionPolicy, MppWallet,
    PaymentMiddleware,
};
use farebox_core::{Asset, Money, Price, SessionStore};
use farebox_evm::anvil::Anvil;
use farebox_evm::escrow::DEFAULT_CLOSE_GRACE_PERIOD;
use farebox_evm::{Address, EvmRpc, U256};
use farebox_lightning::{DevNetwork, DevNode};
use farebox_mpp::{EvmSessionConfig, LightningSessionConfig, MppConfig, MppRail};
use farebox_server::{Paywall, PaywallLayer, PricedRoute};
use farebox_store::MemoryStore;
use http::Method;
use reqwest_middleware::ClientWithMiddleware;

const SECRET: &[u8] = b"an-mpp-test-secret-of-at-least-32-bytes!";

/// Serves `/data` behind `paywall`, counting handler calls.
async fn serve(paywall: Paywall) -> (String, Arc<AtomicUsize>) {
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    let app = Router::new()
        .route(
            "/data",
            get(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                async { "data" }
            }),
        )
        .layer(PaywallLayer::new(paywall));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, served)
}

fn paying(budget: &Budget, wallet: MppWallet) -> (ClientWithMiddleware, Ledger) {
    let payer = PaymentMiddleware::new(budget.clone()).wallet(wallet);
    let ledger = payer.ledger();
    (farebox_client::paying_client(reqwest::Client::new(), payer), ledger)
}

fn kinds(ledger: &Ledger) -> Vec<EntryKind> {
    ledger.entries().iter().map(|e| e.kind).collect()
}

// ---- Lightning ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lightning_session_many_requests_one_deposit_top_up_and_refund() {
    let network = DevNetwork::new();
    let server = Arc::new(DevNode::random(&network, 0));
    let wallet = Arc::new(DevNode::random(&network, 1_000_000));
    let rail =
        MppRail::builder(MppConfig::new("api.example.com", SECRET), Arc::new(MemoryStore::new()))
            .lightning(server.clone())
            .lightning_session(
                LightningSessionConfig {
                    deposit_sat: Some(30),
                    ..LightningSessionConfig::default()
                },
                Arc::new(MemoryStore::new()),
            )
            .build()
            .unwrap();
    let paywall = Paywall::builder()
        .rail(rail)
        .route(PricedRoute::new(Some(Method::GET), "/data", Price::one(Money::sats(10))).unwrap())
        .build()
        .unwrap();
    let (base, served) = serve(paywall).await;
    let budget = Budget::new().allow(Money::sats(50), Money::sats(100)).unwrap();
    let mpp = MppWallet::new()
        .lightning(wallet.clone(), 1_000)
        .lightning_sessions(LightningSessionPolicy::default());
    let sessions = mpp.sessions();
    let (client, ledger) = paying(&budget, mpp);
    // 30 sat pays three requests; the fourth tops up with another 30.
    for _ in 0..5 {
        let res = client.get(format!("{base}/data")).send().await.unwrap();
        assert_eq!(res.status(), 200);
    }
    assert_eq!(served.load(Ordering::SeqCst), 5);
    assert_eq!(budget.spent(&Asset::Bitcoin), Money::sats(60), "two deposits left the wallet");
    assert_eq!(wallet.balance_msat(), 1_000_000 - 60_000);
    let deposits = kinds(&ledger).iter().filter(|k| **k == EntryKind::Deposit).count();
    assert_eq!(deposits, 2);

    let closed = sessions.close_all().await;
    assert_eq!(closed.len(), 1);
    let closed = closed.into_iter().next().unwrap().unwrap();
    assert_eq!(closed.refunded, Money::sats(10), "60 put up, 50 spent");
    assert_eq!(closed.reference, "succeeded");
    assert_eq!(wallet.balance_msat(), 1_000_000 - 50_000);
    assert_eq!(budget.spent(&Asset::Bitcoin), Money::sats(50), "the refund came back");
    assert_eq!(kinds(&ledger).last(), Some(&EntryKind::Refund));
    assert_eq!(sessions.open_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_above_the_budget_is_never_paid_and_the_charge_is_paid_instead() {
    let network = DevNetwork::new();
    let server = Arc::new(DevNode::random(&network, 0));
    let wallet = Arc::new(DevNode::random(&network, 1_000_000));
    let rail =
        MppRail::builder(MppConfig::new("api.example.com", SECRET), Arc::new(MemoryStore::new()))
            .lightning(server.clone())
            .lightning_session(
                LightningSessionConfig {
                    deposit_sat: Some(500),
                    ..LightningSessionConfig::default()
                },
                Arc::new(MemoryStore::new()),
            )
            .build()
            .unwrap();
    let paywall = Paywall::builder()
        .rail(rail)
        .route(PricedRoute::new(Some(Method::GET), "/data", Price::one(Money::sats(10))).unwrap())
        .build()
        .unwrap();
    let (base, served) = serve(paywall).await;
    // The price fits the per-request limit, the 500 sat deposit does not fit the total.
    let budget = Budget::new().allow(Money::sats(50), Money::sats(400)).unwrap();
    let sessions_only = MppWallet::new()
        .lightning(wallet.clone(), 1_000)
        .lightning_sessions(LightningSessionPolicy::default());
    let (client, ledger) = paying(&budget, sessions_only);
    // The 402 offers the session and a 10 sat charge: the deposit is refused before anything
    // is paid, and the charge, which fits, is paid instead.
    let res = client.get(format!("{base}/data")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(kinds(&ledger), [EntryKind::Payment]);
    assert_eq!(wallet.balance_msat(), 1_000_000 - 10_000, "no deposit left the wallet");
    assert_eq!(served.load(Ordering::SeqCst), 1);
    // With a total too small even for the charge: refused, nothing paid.
    let tight = Budget::new().allow(Money::sats(50), Money::sats(5)).unwrap();
    let wallet2 = MppWallet::new()
        .lightning(wallet.clone(), 1_000)
        .lightning_sessions(LightningSessionPolicy::default());
    let (client, ledger) = paying(&tight, wallet2);
    let err = client.get(format!("{base}/data")).send().await.unwrap_err();
    assert!(
        matches!(ClientError::from_middleware(&err), Some(ClientError::OverBudget { .. })),
        "{err}"
    );
    assert!(ledger.entries().is_empty());
    assert_eq!(wallet.balance_msat(), 1_000_000 - 10_000);
}

// ---- EVM ----

const PRICE: u128 = 1_000; // 0.001 USDC
const FUNDS: u128 = 1_000_000; // 1 USDC

struct EvmWorld {
    anvil: Anvil,
    rpc: EvmRpc,
    token: Address,
    escrow: Address,
    sessions: Arc<MemoryStore>,
    base: String,
    served: Arc<AtomicUsize>,
    asset: Asset,
}

impl EvmWorld {
    async fn balance(&self, who: Address) -> u128 {
        self.rpc.balance_of(self.token, who).await.unwrap().to::<u128>()
    }

    fn payer(&self) -> &farebox_evm::anvil::DevAccount {
        &self.anvil.accounts()[1]
    }

    fn payee(&self) -> Address {
        self.anvil.accounts()[2].address
    }

    fn wallet(&self, deposit: u128) -> MppWallet {
        MppWallet::new()
            .evm(self.payer().signer.clone())
            .evm_sessions(EvmSessionPolicy::new(self.rpc.clone()).deposit(deposit))
    }
}

async fn evm_world() -> EvmWorld {
    let anvil = Anvil::start().expect("anvil (run `cargo xtask setup`)");
    let rpc = anvil.rpc().await.unwrap().clone();
    let token = anvil.deploy_token("USDC", "2").await.unwrap();
    anvil.mint(token, anvil.accounts()[1].address, U256::from(FUNDS)).await.unwrap();
    let escrow = rpc
        .deploy_session_escrow(&anvil.accounts()[0].signer, DEFAULT_CLOSE_GRACE_PERIOD)
        .await
        .unwrap();
    let config = EvmSessionConfig::new(
        rpc.clone(),
        anvil.accounts()[2].signer.clone(),
        escrow,
        token,
        "USDC",
        6,
    );
    let asset = config.asset();
    let sessions = Arc::new(MemoryStore::new());
    let rail =
        MppRail::builder(MppConfig::new("api.example.com", SECRET), Arc::new(MemoryStore::new()))
            .evm_session(config, sessions.clone())
            .build()
            .unwrap();
    let paywall = Paywall::builder()
        .rail(rail)
        .route(
            PricedRoute::new(
                Some(Method::GET),
                "/data",
                Price::one(Money::new(asset.clone(), PRICE)),
            )
            .unwrap(),
        )
        .build()
        .unwrap();
    let (base, served) = serve(paywall).await;
    EvmWorld { anvil, rpc, token, escrow, sessions, base, served, asset }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evm_session_opens_tops_up_and_closes_with_a_refund_on_chain() {
    let w = evm_world().await;
    let budget = Budget::new()
        .allow(Money::new(w.asset.clone(), 10 * PRICE), Money::new(w.asset.clone(), 20 * PRICE))
        .unwrap();
    let mpp = w.wallet(5 * PRICE);
    let sessions = mpp.sessions();
    let (client, ledger) = paying(&budget, mpp);
    // Five requests fit the first deposit; the sixth tops up by another five.
    for _ in 0..7 {
        let res = client.get(format!("{}/data", w.base)).send().await.unwrap();
        assert_eq!(res.status(), 200);
    }
    assert_eq!(w.served.load(Ordering::SeqCst), 7);
    assert_eq!(w.balance(w.escrow).await, 10 * PRICE, "both deposits are in the escrow");
    assert_eq!(w.balance(w.payee()).await, 0, "nothing settled before the close");
    assert_eq!(budget.spent(&w.asset), Money::new(w.asset.clone(), 10 * PRICE));
    let k = kinds(&ledger);
    assert_eq!(k.iter().filter(|k| **k == EntryKind::Deposit).count(), 2);
    assert_eq!(k.iter().filter(|k| **k == EntryKind::Session).count(), 7);

    let closed = sessions.close_all().await.into_iter().next().unwrap().unwrap();
    assert_eq!(closed.spent, Money::new(w.asset.clone(), 7 * PRICE));
    assert_eq!(closed.refunded, Money::new(w.asset.clone(), 3 * PRICE));
    assert!(closed.reference.starts_with("0x"), "the close transaction");
    assert_eq!(w.balance(w.payee()).await, 7 * PRICE);
    assert_eq!(w.balance(w.payer().address).await, FUNDS - 7 * PRICE);
    assert_eq!(budget.spent(&w.asset), Money::new(w.asset.clone(), 7 * PRICE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evm_deposit_over_budget_moves_nothing() {
    let w = evm_world().await;
    let budget = Budget::new()
        .allow(Money::new(w.asset.clone(), 10 * PRICE), Money::new(w.asset.clone(), 50 * PRICE))
        .unwrap();
    let (client, _) = paying(&budget, w.wallet(100 * PRICE));
    let err = client.get(format!("{}/data", w.base)).send().await.unwrap_err();
    assert!(
        matches!(ClientError::from_middleware(&err), Some(ClientError::OverBudget { .. })),
        "{err}"
    );
    assert_eq!(w.balance(w.payer().address).await, FUNDS);
    let nonce: U256 =
        w.rpc.request("eth_getTransactionCount", (w.payer().address, "latest")).await.unwrap();
    assert_eq!(nonce, U256::ZERO, "not even an approve was sent");
    assert_eq!(w.served.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_client_closes_its_channel() {
    let w = evm_world().await;
    let budget = Budget::new()
        .allow(Money::new(w.asset.clone(), 10 * PRICE), Money::new(w.asset.clone(), 20 * PRICE))
        .unwrap();
    {
        let (client, _) = paying(&budget, w.wallet(5 * PRICE));
        for _ in 0..2 {
            assert_eq!(client.get(format!("{}/data", w.base)).send().await.unwrap().status(), 200);
        }
    } // the client, its middleware and the wallet go away here
    assert_eq!(w.balance(w.payee()).await, 2 * PRICE, "captured what was spent");
    assert_eq!(w.balance(w.payer().address).await, FUNDS - 2 * PRICE, "the rest refunded");
    assert_eq!(budget.spent(&w.asset), Money::new(w.asset.clone(), 2 * PRICE));
    let closed = w.sessions.idle_sessions(
        "mpp-evm-session",
        farebox_core::SessionStatus::Closed,
        u64::MAX,
        10,
    );
    assert_eq!(closed.await.unwrap().len(), 1);
}
