//! The paying client against farebox's own paywall with the x402 rail, settling on a real anvil
//! (FareboxUSD, EIP-712 "USDC" / "2", chain id 84532) through the in-process facilitator.
//! Asserted: what the client got, what moved on chain, what the ledger and budget show, and
//! which payment headers reached the server (so a refused price is seen never to be paid).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::Router;
use axum::routing::get;
use farebox_client::{
    Budget, ClientError, Ledger, Offer, PaymentMiddleware, PaymentRequired, Proof, Wallet,
};
use farebox_core::{Asset, Money, Price};
use farebox_evm::anvil::{Anvil, DevAccount};
use farebox_evm::{Address, EvmRpc, U256};
use farebox_server::{Paywall, PaywallLayer, PricedRoute};
use farebox_store::MemoryStore;
use farebox_x402::client::X402Wallet;
use farebox_x402::facilitator::local::{ChainAccess, LocalFacilitator};
use farebox_x402::{X402Config, X402Rail, codec, v1, v2};
use http::Method;
use reqwest_middleware::ClientWithMiddleware;

const CHAIN_ID: u64 = 84_532;
const FUNDS: u64 = 1_000_000_000; // 1,000 USDC
const CHEAP: u128 = 10_000; // 0.01 USDC
const PRICEY: u128 = 5_000_000; // 5 USDC

/// The payment headers of one request that reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    payment_signature: bool,
    x_payment: bool,
}

struct World {
    base: String,
    _anvil: Anvil,
    rpc: EvmRpc,
    token: Address,
    payer: DevAccount,
    pay_to: Address,
    asset: Asset,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl World {
    async fn balance(&self, who: Address) -> u64 {
        self.rpc.balance_of(self.token, who).await.unwrap().to::<u64>()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn budget(&self, per_request: u128, total: u128) -> Budget {
        let money = |amount| Money::new(self.asset.clone(), amount);
        Budget::new().allow(money(per_request), money(total)).unwrap()
    }
}

/// The server. `v1_only`: its 402s lose the `PAYMENT-REQUIRED` header on the way out, so it
/// looks like an x402 v1 server (the v1 `accepts` stay in the body).
async fn world(v1_only: bool) -> World {
    let anvil =
        Anvil::builder().chain_id(CHAIN_ID).start().expect("anvil (run `cargo xtask setup`)");
    let rpc = anvil.rpc().await.unwrap().clone();
    let token = anvil.deploy_token("USDC", "2").await.unwrap();
    let payer = anvil.accounts()[1].clone();
    let pay_to = anvil.accounts()[2].address;
    anvil.mint(token, payer.address, U256::from(FUNDS)).await.unwrap();
    let store = Arc::new(MemoryStore::new());
    let facilitator = LocalFacilitator::new(
        vec![ChainAccess { rpc: rpc.clone(), signer: anvil.accounts()[3].signer.clone() }],
        store.clone(),
    );
    let config = X402Config::builder()
        .network(format!("eip155:{CHAIN_ID}"))
        .asset(token.to_checksum(None))
        .described_as(&farebox_evm::usdc::BASE_SEPOLIA)
        .pay_to(pay_to.to_checksum(None))
        .max_timeout_seconds(60)
        .public_url("http://127.0.0.1")
        .offer_v1(true)
        .build()
        .unwrap();
    let asset = Asset::Token(config.token());
    let rail = X402Rail::new(config, Arc::new(facilitator), store);
    let route = |path: &str, amount| {
        PricedRoute::new(Some(Method::GET), path, Price::one(Money::new(asset.clone(), amount)))
            .unwrap()
    };
    let paywall = Paywall::builder()
        .rail(rail)
        .route(route("/cheap", CHEAP))
        .route(route("/pricey", PRICEY))
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = seen.clone();
    let mut app = Router::new()
        .route("/cheap", get(|| async { "cheap" }))
        .route("/pricey", get(|| async { "pricey" }))
        .layer(PaywallLayer::new(paywall));
    if v1_only {
        app = app.layer(axum::middleware::map_response(|mut r: axum::response::Response| async {
            r.headers_mut().remove("payment-required");
            r
        }));
    }
    let app = app.layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let recorder = recorder.clone();
            async move {
                recorder.lock().unwrap().push(Seen {
                    payment_signature: request.headers().contains_key("payment-signature"),
                    x_payment: request.headers().contains_key("x-payment"),
                });
                next.run(request).await
            }
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    World { base, _anvil: anvil, rpc, token, payer, pay_to, asset, seen }
}

/// The x402 wallet, counting the payments it signs.
struct Counting {
    inner: X402Wallet,
    signed: Arc<AtomicUsize>,
}

#[async_trait]
impl Wallet for Counting {
    fn rail(&self) -> &'static str {
        self.inner.rail()
    }
    fn offers(&self, response: &PaymentRequired) -> Result<Vec<Offer>, ClientError> {
        self.inner.offers(response)
    }
    async fn pay(&self, offer: &Offer) -> Result<Proof, ClientError> {
        self.signed.fetch_add(1, Ordering::SeqCst);
        self.inner.pay(offer).await
    }
}

fn paying(w: &World, budget: &Budget) -> (ClientWithMiddleware, Ledger, Arc<AtomicUsize>) {
    let signed = Arc::new(AtomicUsize::new(0));
    let wallet =
        Counting { inner: X402Wallet::new(w.payer.signer.clone()), signed: signed.clone() };
    let payer = PaymentMiddleware::new(budget.clone()).wallet(wallet);
    let ledger = payer.ledger();
    (farebox_client::paying_client(reqwest::Client::new(), payer), ledger, signed)
}

const UNPAID: Seen = Seen { payment_signature: false, x_payment: false };

#[tokio::test]
async fn pays_an_x402_v2_route_and_the_money_moves_on_chain() {
    let w = world(false).await;
    let budget = w.budget(100_000, 1_000_000);
    let (client, ledger, signed) = paying(&w, &budget);

    let res = client.get(format!("{}/cheap", w.base)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let receipt: v2::SettleResponse =
        codec::decode_header(res.headers()["payment-response"].to_str().unwrap()).unwrap();
    assert!(receipt.success, "{receipt:?}");
    assert_eq!(receipt.network, "eip155:84532");
    assert!(receipt.transaction.starts_with("0x") && receipt.transaction.len() == 66);
    assert_eq!(res.text().await.unwrap(), "cheap");

    assert_eq!(w.balance(w.pay_to).await, CHEAP as u64);
    assert_eq!(w.balance(w.payer.address).await, FUNDS - CHEAP as u64);
    assert_eq!(signed.load(Ordering::SeqCst), 1);
    let entries = ledger.entries();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].rail, "x402");
    assert_eq!(entries[0].amount, Money::new(w.asset.clone(), CHEAP));
    assert_eq!(budget.spent(&w.asset), Money::new(w.asset.clone(), CHEAP));
    // One unpaid request, then one retry with the v2 header only.
    let paid = Seen { payment_signature: true, x_payment: false };
    assert_eq!(w.seen(), vec![UNPAID, paid]);
}

#[tokio::test]
async fn a_price_over_budget_is_refused_before_anything_is_signed() {
    let w = world(false).await;
    let budget = w.budget(100_000, 1_000_000);
    let (client, ledger, signed) = paying(&w, &budget);

    let err = client.get(format!("{}/pricey", w.base)).send().await.unwrap_err();
    let typed = ClientError::from_middleware(&err).expect("typed error");
    assert!(matches!(typed, ClientError::OverBudget { .. }), "{typed}");

    assert_eq!(signed.load(Ordering::SeqCst), 0, "no authorization was signed");
    assert_eq!(w.seen(), vec![UNPAID], "no payment header reached the server");
    assert_eq!(w.balance(w.payer.address).await, FUNDS);
    assert_eq!(w.balance(w.pay_to).await, 0);
    assert!(ledger.entries().is_empty());
    assert_eq!(budget.spent(&w.asset), Money::new(w.asset.clone(), 0));
}

#[tokio::test]
async fn pays_a_v1_only_server_from_the_402_body() {
    let w = world(true).await;
    // The server really offers no v2 header: a client must read the v1 body.
    let raw = reqwest::get(format!("{}/cheap", w.base)).await.unwrap();
    assert_eq!(raw.status(), 402);
    assert!(!raw.headers().contains_key("payment-required"));
    let body: serde_json::Value = raw.json().await.unwrap();
    assert_eq!(body["x402Version"], 1);
    w.seen.lock().unwrap().clear();

    let budget = w.budget(100_000, 1_000_000);
    let (client, ledger, signed) = paying(&w, &budget);
    let res = client.get(format!("{}/cheap", w.base)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(!res.headers().contains_key("payment-response"), "a v1 payment gets the v1 header");
    let receipt: v1::SettlementResponse =
        codec::decode_header(res.headers()["x-payment-response"].to_str().unwrap()).unwrap();
    assert!(receipt.success, "{receipt:?}");
    assert_eq!(receipt.network, "base-sepolia");
    assert_eq!(res.text().await.unwrap(), "cheap");

    assert_eq!(w.balance(w.pay_to).await, CHEAP as u64);
    assert_eq!(w.balance(w.payer.address).await, FUNDS - CHEAP as u64);
    assert_eq!(signed.load(Ordering::SeqCst), 1);
    assert_eq!(ledger.entries().len(), 1);
    let paid = Seen { payment_signature: false, x_payment: true };
    assert_eq!(w.seen(), vec![UNPAID, paid]);
}
