//! What the MPP session tests share: a real farebox paywall serving `/data` (optionally behind
//! a layer that tampers with its answers, to play a misbehaving server), an anvil chain with
//! the real SessionEscrow and a token, and a paying client.
#![allow(dead_code)] // each test file uses its own part

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use farebox_client::{Budget, ClientError, EntryKind, Ledger, PaymentMiddleware};
use farebox_core::{Asset, Money, Price, SessionStore};
use farebox_evm::anvil::{Anvil, DevAccount};
use farebox_evm::{Address, EvmRpc, U256};
use farebox_mpp::client::MppWallet;
use farebox_mpp::client::Sessions;
use farebox_mpp::client::session::EvmSessionPolicy;
use farebox_mpp::evm::escrow::DEFAULT_CLOSE_GRACE_PERIOD;
use farebox_mpp::evm::escrow::EscrowRpc;
use farebox_mpp::{
    ChallengeKey, ChallengeParams, Credential, EvmSessionConfig, MppConfig, MppRail, PaymentReceipt,
};
use farebox_server::{Paywall, PaywallLayer, PricedRoute};
use farebox_store::MemoryStore;
use http::Method;
use http::header::{AUTHORIZATION, CONTENT_LENGTH};
use http::response::Parts;
use reqwest_middleware::ClientWithMiddleware;

pub const SECRET: &[u8] = b"an-mpp-test-secret-of-at-least-32-bytes!";
pub const PRICE: u128 = 1_000; // 0.001 USDC
pub const FUNDS: u128 = 1_000_000; // 1 USDC

/// Rewrites a response on its way out (headers and body).
pub type Tamper = Arc<dyn Fn(&mut Parts, &mut Vec<u8>) + Send + Sync>;

/// A running paywall.
pub struct Server {
    pub base: String,
    /// How often the handler ran.
    pub served: Arc<AtomicUsize>,
    /// How many requests carried an `Authorization` header (a credential).
    pub credentials: Arc<AtomicUsize>,
    /// How many HTTP requests arrived, paid or not.
    pub requests: Arc<AtomicUsize>,
    /// How many of the next credentials arrive with their challenge expired (re-issued by the
    /// server's key a minute in the past), as from a client whose clock runs behind.
    pub expire_next: Arc<AtomicUsize>,
    /// Set: requests are priced by the second paywall given to [`serve_repriced`] (the
    /// operator changed the price; channel records and challenge key stay).
    pub repriced: Arc<AtomicBool>,
}

/// Serves `/data` behind `paywall`, counting handler calls and credentials, with `tamper`
/// applied to every answer.
pub async fn serve(paywall: Paywall, tamper: Option<Tamper>) -> Server {
    serve_repriced(paywall, None, tamper).await
}

/// [`serve`], switching to `repriced` (if any) once [`Server::repriced`] is set.
pub async fn serve_repriced(
    paywall: Paywall,
    repriced: Option<Paywall>,
    tamper: Option<Tamper>,
) -> Server {
    let served = Arc::new(AtomicUsize::new(0));
    let credentials = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let expire_next = Arc::new(AtomicUsize::new(0));
    let switched = Arc::new(AtomicBool::new(false));
    let (seen, arrived, expire) = (credentials.clone(), requests.clone(), expire_next.clone());
    let priced = |paywall: Paywall| {
        let counter = served.clone();
        Router::new()
            .route(
                "/data",
                get(move || {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async { "data" }
                }),
            )
            .layer(PaywallLayer::new(paywall))
    };
    let app = match repriced.map(priced) {
        None => priced(paywall),
        Some(dear) => {
            let (cheap, switch) = (priced(paywall), switched.clone());
            Router::new().fallback(move |req: Request| {
                use tower::ServiceExt;
                let app = if switch.load(Ordering::SeqCst) { dear.clone() } else { cheap.clone() };
                async move { app.oneshot(req).await.unwrap() }
            })
        }
    };
    let app = app.layer(axum::middleware::from_fn(move |mut req: Request, next: Next| {
        let (tamper, seen) = (tamper.clone(), seen.clone());
        arrived.fetch_add(1, Ordering::SeqCst);
        if let Some(value) = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok())
            && expire.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
        {
            let expired = expired_credential(value);
            req.headers_mut().insert(AUTHORIZATION, expired.parse().unwrap());
        }
        async move {
            if req.headers().contains_key(AUTHORIZATION) {
                seen.fetch_add(1, Ordering::SeqCst);
            }
            let response = next.run(req).await;
            let Some(tamper) = tamper else { return response };
            let (mut parts, body) = response.into_parts();
            let mut bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap().to_vec();
            tamper(&mut parts, &mut bytes);
            parts.headers.remove(CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(bytes))
        }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server { base, served, credentials, requests, expire_next, repriced: switched }
}

/// The `Authorization: Payment` credential `value` with its challenge re-issued by this
/// server's key as expired a minute ago (payload and source unchanged).
fn expired_credential(value: &str) -> String {
    use farebox_mpp::challenge::{decode_opaque, decode_request};
    let cred = Credential::decode(farebox_mpp::credential::payment_token(value).unwrap()).unwrap();
    let ch = &cred.challenge;
    let challenge = ChallengeKey::new(SECRET)
        .unwrap()
        .issue(ChallengeParams {
            realm: ch.realm.clone(),
            method: ch.method.clone(),
            intent: ch.intent.clone(),
            request: decode_request(&ch.request).unwrap(),
            expires: Some(farebox_mpp::time::format(farebox_mpp::time::unix_now().unwrap() - 60)),
            description: None,
            digest: None,
            opaque: ch.opaque.as_deref().map(|o| decode_opaque(o).unwrap()),
            header: None,
        })
        .unwrap();
    let mut again = Credential::new(&challenge, cred.payload.clone());
    again.source = cred.source.clone();
    again.to_authorization()
}

/// Sets `name` in the response's `Payment-Receipt` (if it has one).
pub fn set_receipt_member(parts: &mut Parts, name: &str, value: serde_json::Value) {
    let Some(header) = parts.headers.get("payment-receipt") else { return };
    let mut receipt = PaymentReceipt::decode(header.to_str().unwrap()).unwrap();
    receipt.extensions.insert(name.into(), value);
    parts.headers.insert("payment-receipt", receipt.encode().parse().unwrap());
}

/// Sets `name` in a JSON body (if it is a JSON object).
pub fn set_body_member(body: &mut Vec<u8>, name: &str, value: serde_json::Value) {
    let Ok(serde_json::Value::Object(mut object)) = serde_json::from_slice(body) else { return };
    object.insert(name.into(), value);
    *body = serde_json::to_vec(&object).unwrap();
}

/// Whether a JSON body is a session close answer.
pub fn is_close_answer(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .is_ok_and(|v| v["status"].as_str() == Some("closed"))
}

pub fn paying(budget: &Budget, wallet: MppWallet) -> (ClientWithMiddleware, Ledger) {
    let payer = PaymentMiddleware::new(budget.clone()).wallet(wallet);
    let ledger = payer.ledger();
    (farebox_client::paying_client(reqwest::Client::new(), payer), ledger)
}

pub fn kinds(ledger: &Ledger) -> Vec<EntryKind> {
    ledger.entries().iter().map(|e| e.kind).collect()
}

/// An anvil chain with a token (the payer, account 1, holds [`FUNDS`]) and a SessionEscrow.
pub struct EvmChain {
    pub anvil: Anvil,
    pub rpc: EvmRpc,
    pub token: Address,
    pub escrow: Address,
    pub asset: Asset,
}

/// How the EVM session server is set up.
#[derive(Default)]
pub struct EvmSetup {
    /// The escrow its challenges name (default: the chain's SessionEscrow).
    pub escrow: Option<Address>,
    /// The deposit its challenges suggest (default: 100 requests).
    pub suggested_deposit: Option<u128>,
    /// Also sell `/data` for 10 sat, as Lightning charges received by this node.
    pub lightning: Option<Arc<dyn farebox_lightning::LightningBackend>>,
    pub tamper: Option<Tamper>,
    /// A price per request the server switches to when [`EvmWorld::repriced`] is set.
    pub repriced: Option<u128>,
}

/// A chain and an EVM session server on it (payee: account 2).
pub struct EvmWorld {
    pub anvil: Anvil,
    pub rpc: EvmRpc,
    pub token: Address,
    pub escrow: Address,
    pub asset: Asset,
    pub sessions: Arc<MemoryStore>,
    pub base: String,
    pub served: Arc<AtomicUsize>,
    pub credentials: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    pub expire_next: Arc<AtomicUsize>,
    pub repriced: Arc<AtomicBool>,
}

impl EvmChain {
    pub async fn start() -> EvmChain {
        let anvil = Anvil::start().expect("anvil (run `cargo xtask setup`)");
        let rpc = anvil.rpc().await.unwrap().clone();
        let token = anvil.deploy_token("USDC", "2").await.unwrap();
        anvil.mint(token, anvil.accounts()[1].address, U256::from(FUNDS)).await.unwrap();
        let escrow = rpc
            .deploy_session_escrow(&anvil.accounts()[0].signer, DEFAULT_CLOSE_GRACE_PERIOD)
            .await
            .unwrap();
        let payee = anvil.accounts()[2].signer.clone();
        let asset = EvmSessionConfig::builder(rpc.clone(), payee)
            .escrow(escrow)
            .token(token)
            .described_as(&farebox_evm::usdc::BASE_SEPOLIA)
            .build()
            .unwrap()
            .asset();
        EvmChain { anvil, rpc, token, escrow, asset }
    }

    /// Starts the server `setup` describes.
    pub async fn serve(self, setup: EvmSetup) -> EvmWorld {
        let mut config =
            EvmSessionConfig::builder(self.rpc.clone(), self.anvil.accounts()[2].signer.clone())
                .escrow(setup.escrow.unwrap_or(self.escrow))
                .token(self.token)
                .described_as(&farebox_evm::usdc::BASE_SEPOLIA);
        if let Some(deposit) = setup.suggested_deposit {
            config = config.suggested_deposit(deposit);
        }
        let config = config.build().unwrap();
        let sessions = Arc::new(MemoryStore::new());
        let replays = Arc::new(MemoryStore::new());
        // One rail per price, sharing the channel records, the replay store and the key: the
        // same server before and after its operator changes the price.
        let paywall = |per_request: u128| {
            let mut rail =
                MppRail::builder(MppConfig::new("api.example.com", SECRET), replays.clone())
                    .evm_session(config.clone(), sessions.clone());
            let mut price = vec![Money::new(self.asset.clone(), per_request)];
            if let Some(node) = &setup.lightning {
                rail = rail.lightning(node.clone());
                price.push(Money::sats(10));
            }
            let price = Price::any_of(price).unwrap();
            Paywall::builder()
                .rail(rail.build().unwrap())
                .route(PricedRoute::new(Some(Method::GET), "/data", price).unwrap())
                .build()
                .unwrap()
        };
        let server =
            serve_repriced(paywall(PRICE), setup.repriced.map(paywall), setup.tamper).await;
        EvmWorld {
            anvil: self.anvil,
            rpc: self.rpc,
            token: self.token,
            escrow: self.escrow,
            asset: self.asset,
            sessions,
            base: server.base,
            served: server.served,
            credentials: server.credentials,
            requests: server.requests,
            expire_next: server.expire_next,
            repriced: server.repriced,
        }
    }
}

/// A chain and an honest server on its SessionEscrow.
pub async fn evm_world() -> EvmWorld {
    EvmChain::start().await.serve(EvmSetup::default()).await
}

impl EvmWorld {
    pub async fn balance(&self, who: Address) -> u128 {
        self.rpc.balance_of(self.token, who).await.unwrap().to::<u128>()
    }

    pub async fn allowance(&self, owner: Address, spender: Address) -> u128 {
        let call = farebox_evm::contracts::FareboxUSD::allowanceCall { owner, spender };
        self.rpc.call(self.token, &call, None).await.unwrap().to::<u128>()
    }

    /// Transactions the payer has sent.
    pub async fn payer_nonce(&self) -> U256 {
        self.rpc.request("eth_getTransactionCount", (self.payer().address, "latest")).await.unwrap()
    }

    /// What the server holds of `p`'s (one) channel: the voucher accepted and what it spent.
    pub async fn held(&self, p: &Payer) -> (u128, u128) {
        let channel = &p.ledger.entries()[0].reference;
        let record = self.sessions.load_session("mpp-evm-session", channel).await.unwrap();
        let record = record.expect("the server knows the channel").value;
        (record.accepted, record.spent)
    }

    pub fn payer(&self) -> &DevAccount {
        &self.anvil.accounts()[1]
    }

    pub fn payee(&self) -> Address {
        self.anvil.accounts()[2].address
    }

    pub fn money(&self, amount: u128) -> Money {
        Money::new(self.asset.clone(), amount)
    }

    /// A budget of `per_request` and `total` base units.
    pub fn budget(&self, per_request: u128, total: u128) -> Budget {
        Budget::new().allow(self.money(per_request), self.money(total)).unwrap()
    }

    /// A session policy trusting the chain's SessionEscrow with up to `cap` per channel.
    pub fn policy(&self, cap: u128) -> EvmSessionPolicy {
        EvmSessionPolicy::new(self.rpc.clone(), self.escrow, cap)
    }

    /// The payer's wallet: `deposit` per channel, trusting the chain's SessionEscrow.
    pub fn wallet(&self, deposit: u128) -> MppWallet {
        self.wallet_with(self.policy(FUNDS).deposit(deposit))
    }

    pub fn wallet_with(&self, policy: EvmSessionPolicy) -> MppWallet {
        MppWallet::new().evm(self.payer().signer.clone()).evm_sessions(policy)
    }
}

/// A Lightning session server (charges too) receiving through `node`: `/data` at 10 sat,
/// sessions opened with `deposit_sat`.
pub async fn lightning_server(
    node: Arc<dyn farebox_lightning::LightningBackend>,
    deposit_sat: u64,
    tamper: Option<Tamper>,
) -> Server {
    let rail =
        MppRail::builder(MppConfig::new("api.example.com", SECRET), Arc::new(MemoryStore::new()))
            .lightning(node)
            .lightning_session(
                farebox_mpp::LightningSessionConfig {
                    deposit_sat: Some(deposit_sat),
                    ..farebox_mpp::LightningSessionConfig::default()
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
    serve(paywall, tamper).await
}

/// A Lightning wallet with sessions under `policy`, paying through `node`.
pub fn lightning_wallet(
    node: Arc<farebox_lightning::DevNode>,
    policy: farebox_mpp::client::session::LightningSessionPolicy,
) -> MppWallet {
    MppWallet::new().lightning(node, 1_000).lightning_sessions(policy)
}

/// A paying client: the client, its ledger and its wallet's sessions.
pub struct Payer {
    pub client: ClientWithMiddleware,
    pub ledger: Ledger,
    pub sessions: Sessions,
}

impl Payer {
    pub fn new(budget: &Budget, wallet: MppWallet) -> Payer {
        let sessions = wallet.sessions();
        let (client, ledger) = paying(budget, wallet);
        Payer { client, ledger, sessions }
    }

    /// `GET {base}/data`.
    pub async fn get(&self, base: &str) -> reqwest_middleware::Result<reqwest::Response> {
        self.client.get(format!("{base}/data")).send().await
    }

    /// `n` requests to `{base}/data`, each served.
    pub async fn served(&self, base: &str, n: usize) {
        for _ in 0..n {
            assert_eq!(self.get(base).await.unwrap().status(), 200);
        }
    }

    /// Closes the wallet's one session.
    pub async fn close(&self) -> Result<farebox_mpp::client::session::ClosedSession, ClientError> {
        let mut closed = self.sessions.close_all().await;
        assert_eq!(closed.len(), 1, "one session was open");
        closed.remove(0)
    }
}
