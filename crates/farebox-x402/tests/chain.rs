//! The facilitator and the x402 rail against a real anvil running FareboxUSD (a FiatToken-style
//! EIP-3009 token, EIP-712 domain "USDC" / "2", chain id 84532). Payments are built the way a
//! client builds them (sign with `eip3009::sign`, `validAfter = now − 600`, `validBefore = now +
//! 60`, a random nonce; v2 echoes the server's requirement verbatim) and the tests assert what
//! users notice: status codes, reason codes, balances on chain, the number of on-chain transfers.
//!
//! Each test starts its own anvil on a port anvil picks; every wait is bounded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use farebox_core::{
    Asset, Hold, HoldOutcome, Money, PresentedCredential, Price, ProofRecord, ProofState, Rail,
    ReplayStore, Resource, StoreError,
};
use farebox_evm::anvil::{Anvil, DevAccount};
use farebox_evm::eip3009::{self, TokenDomain, TransferWithAuthorization};
use farebox_evm::{Address, B256, Bytes, EvmRpc, ReceiptOutcome, U256};
use farebox_server::{Paywall, PaywallLayer, PricedRoute};
use farebox_store::{MemoryStore, SqliteStore};
use farebox_x402::exact_evm::{Authorization, ExactEvmPayload};
use farebox_x402::facilitator::chain::ChainReader;
use farebox_x402::facilitator::http_client::RemoteFacilitator;
use farebox_x402::facilitator::local::{self, ChainAccess, LocalFacilitator};
use farebox_x402::facilitator::{Facilitator, http_server};
use farebox_x402::facilitator_api::{VerifyResponse, VersionedPayment};
use farebox_x402::{
    Amount, Payload, Reason, Reconciled, X402Config, X402Rail, codec, rail, v1, v2,
};
use http::{HeaderMap, Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;

const CHAIN_ID: u64 = 84_532;
const FUNDS: u64 = 1_000_000_000; // 1,000 USDC
const PRICE: u64 = 10_000; // 0.01 USDC
const WAIT: Duration = Duration::from_secs(20);

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

// ---- the chain ----

struct Chain {
    anvil: Anvil,
    rpc: EvmRpc,
    token: Address,
    domain: TokenDomain,
}

impl Chain {
    async fn start() -> Self {
        Self::start_with(Anvil::builder().chain_id(CHAIN_ID)).await
    }

    async fn start_with(builder: farebox_evm::anvil::AnvilBuilder) -> Self {
        let anvil = builder.start().expect("anvil (run `cargo xtask setup`)");
        let rpc = anvil.rpc().await.unwrap().clone();
        let token = anvil.deploy_token("USDC", "2").await.unwrap();
        anvil.mint(token, anvil.accounts()[1].address, U256::from(FUNDS)).await.unwrap();
        let domain = TokenDomain::new("USDC", "2", CHAIN_ID, token);
        Chain { anvil, rpc, token, domain }
    }

    /// Funded with FUNDS tokens.
    fn payer(&self) -> &DevAccount {
        &self.anvil.accounts()[1]
    }

    fn pay_to(&self) -> Address {
        self.anvil.accounts()[2].address
    }

    /// The facilitator's gas key.
    fn gas(&self) -> &DevAccount {
        &self.anvil.accounts()[3]
    }

    /// Has ETH, no tokens.
    fn unfunded(&self) -> &DevAccount {
        &self.anvil.accounts()[6]
    }

    fn stranger(&self) -> &DevAccount {
        &self.anvil.accounts()[7]
    }

    fn facilitator(&self, store: Arc<dyn ReplayStore>) -> LocalFacilitator {
        LocalFacilitator::new(
            vec![ChainAccess { rpc: self.rpc.clone(), signer: self.gas().signer.clone() }],
            store,
        )
    }

    fn config(&self) -> X402Config {
        X402Config::builder()
            .network(format!("eip155:{CHAIN_ID}"))
            .asset(self.token.to_checksum(None))
            .described_as(&farebox_evm::usdc::BASE_SEPOLIA)
            .pay_to(self.pay_to().to_checksum(None))
            .max_timeout_seconds(60)
            .public_url("https://api.example.com")
            .offer_v1(true)
            .build()
            .unwrap()
    }

    /// The v2 requirement the rail offers (the same function of the config as `X402Rail`).
    fn requirement(&self) -> v2::PaymentRequirements {
        let mut extra = serde_json::Map::new();
        extra.insert("name".into(), "USDC".into());
        extra.insert("version".into(), "2".into());
        v2::PaymentRequirements {
            scheme: "exact".into(),
            network: format!("eip155:{CHAIN_ID}"),
            amount: Amount::from(PRICE),
            asset: self.token.to_checksum(None),
            pay_to: self.pay_to().to_checksum(None),
            max_timeout_seconds: 60,
            extra: Some(extra),
            other: serde_json::Map::new(),
        }
    }

    async fn balance(&self, who: Address) -> u64 {
        self.rpc.balance_of(self.token, who).await.unwrap().to::<u64>()
    }

    /// ERC-20 `Transfer` events out of the payer: the payments that really moved money.
    async fn transfers_from(&self, from: Address) -> usize {
        let topic0 = alloy_primitives::keccak256("Transfer(address,address,uint256)");
        let filter = json!({
            "fromBlock": "0x0",
            "toBlock": "latest",
            "address": format!("{:#x}", self.token),
            "topics": [format!("{topic0:#x}"), format!("{:#x}", from.into_word())],
        });
        let logs: Vec<Value> = self.rpc.request("eth_getLogs", (filter,)).await.unwrap();
        logs.len()
    }

    /// Transactions the facilitator's gas key has sent.
    async fn gas_transactions(&self) -> u64 {
        let count: U256 = self
            .rpc
            .request(
                "eth_getTransactionCount",
                (format!("{:#x}", self.gas().address), "latest".to_string()),
            )
            .await
            .unwrap();
        count.to::<u64>()
    }

    /// An authorization of PRICE from the payer to payTo, as a client makes it.
    fn authorization(&self) -> TransferWithAuthorization {
        let now = now();
        TransferWithAuthorization {
            from: self.payer().address,
            to: self.pay_to(),
            value: U256::from(PRICE),
            validAfter: U256::from(now - 600),
            validBefore: U256::from(now + 60),
            nonce: B256::from(rand::random::<[u8; 32]>()),
        }
    }

    /// The `exact` payload of `auth` signed by `signer` in `domain`.
    fn payload_signed(
        &self,
        signer: &DevAccount,
        domain: &TokenDomain,
        auth: &TransferWithAuthorization,
    ) -> Payload {
        let signature = eip3009::sign(&signer.signer, domain, auth);
        let payload = ExactEvmPayload {
            signature: Bytes::copy_from_slice(&signature),
            authorization: Authorization {
                from: auth.from,
                to: auth.to,
                value: auth.value,
                valid_after: auth.validAfter.to::<u64>(),
                valid_before: auth.validBefore.to::<u64>(),
                nonce: auth.nonce,
            },
        };
        Payload::from_serialize(&payload).unwrap()
    }

    /// `auth` signed by its `from` (the payer or the unfunded account) in the token's domain.
    fn payload(&self, auth: &TransferWithAuthorization) -> Payload {
        let signer = self.anvil.accounts().iter().find(|a| a.address == auth.from).unwrap();
        self.payload_signed(signer, &self.domain, auth)
    }

    /// A v2 facilitator request: `accepted` = the requirement, verbatim.
    fn request(&self, payload: Payload) -> VersionedPayment {
        request_for(self.requirement(), payload)
    }

    async fn wait_mined(&self, tx: &str) {
        let hash = tx.parse().unwrap();
        let outcome = self.rpc.wait_for_receipt(hash, WAIT).await.unwrap();
        assert!(matches!(outcome, ReceiptOutcome::Success { .. }), "{tx}: {outcome:?}");
    }
}

fn request_for(requirement: v2::PaymentRequirements, payload: Payload) -> VersionedPayment {
    VersionedPayment::V2 {
        payment_payload: v2::PaymentPayload {
            x402_version: farebox_x402::Version,
            resource: None,
            accepted: requirement.clone(),
            payload,
            extensions: None,
        },
        payment_requirements: requirement,
    }
}

fn is_tx_hash(s: &str) -> bool {
    s.len() == 66 && s.starts_with("0x") && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

// ---- the server ----

struct Server {
    app: Router,
    /// How many times a paid handler ran.
    served: Arc<AtomicUsize>,
    rail: Arc<X402Rail>,
}

fn server(chain: &Chain, facilitator: Arc<dyn Facilitator>, store: Arc<dyn ReplayStore>) -> Server {
    server_with(chain, X402Rail::new(chain.config(), facilitator, store))
}

fn server_with(chain: &Chain, rail: X402Rail) -> Server {
    let config = chain.config();
    let price = Price::one(Money::new(Asset::Token(config.token()), u128::from(PRICE)));
    let rail = Arc::new(rail);
    let paywall = Paywall::builder()
        .shared_rail(rail.clone())
        .route(PricedRoute::new(None, "/data", price.clone()).unwrap().describe("market data"))
        .route(PricedRoute::new(None, "/data-fails", price).unwrap().describe("market data"))
        .build()
        .unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let (ok, fails) = (served.clone(), served.clone());
    let app = Router::new()
        .route(
            "/data",
            axum::routing::get(move || async move {
                ok.fetch_add(1, Ordering::SeqCst);
                "the data"
            }),
        )
        .route(
            "/data-fails",
            axum::routing::get(move || async move {
                fails.fetch_add(1, Ordering::SeqCst);
                (StatusCode::INTERNAL_SERVER_ERROR, "boom")
            }),
        )
        .layer(PaywallLayer::new(paywall));
    Server { app, served, rail }
}

async fn get(
    app: &Router,
    path: &str,
    header: Option<(&str, &str)>,
) -> (StatusCode, HeaderMap, Value) {
    let mut req = Request::get(path);
    if let Some((name, value)) = header {
        req = req.header(name, value);
    }
    let res = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let (parts, body) = res.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
    (parts.status, parts.headers, json)
}

/// The client: reads the 402 and pays its v2 requirement (echoed verbatim) with `auth`.
async fn pay_v2(chain: &Chain, app: &Router, auth: &TransferWithAuthorization) -> String {
    let (status, headers, _) = get(app, "/data", None).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    let required: v2::PaymentRequired =
        codec::decode_header(headers["payment-required"].to_str().unwrap()).unwrap();
    assert_eq!(required.accepts[0], chain.requirement(), "the offered requirement");
    let payment = v2::PaymentPayload {
        x402_version: farebox_x402::Version,
        resource: Some(required.resource.clone()),
        accepted: required.accepts[0].clone(),
        payload: chain.payload(auth),
        extensions: None,
    };
    codec::encode_header(&payment)
}

/// The client, v1: reads `accepts` from the 402 body.
async fn pay_v1(chain: &Chain, app: &Router, auth: &TransferWithAuthorization) -> String {
    let (status, _, body) = get(app, "/data", None).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    let accepts: Vec<v1::PaymentRequirements> =
        serde_json::from_value(body["accepts"].clone()).unwrap();
    assert_eq!(accepts[0].network, "base-sepolia");
    assert_eq!(accepts[0].max_amount_required.as_str(), PRICE.to_string());
    let payment = v1::PaymentPayload {
        x402_version: farebox_x402::Version,
        scheme: accepts[0].scheme.clone(),
        network: accepts[0].network.clone(),
        payload: chain.payload(auth),
    };
    codec::encode_header(&payment)
}

/// A server whose rail and facilitator share one in-memory store.
fn local_server(chain: &Chain) -> (Server, Arc<LocalFacilitator>, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::new());
    let facilitator = Arc::new(chain.facilitator(store.clone()));
    (server(chain, facilitator.clone(), store.clone()), facilitator, store)
}

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

fn remote(addr: SocketAddr) -> RemoteFacilitator {
    RemoteFacilitator::new(format!("http://{addr}/").parse().unwrap()).unwrap()
}

// ---- happy paths through the paywall ----

#[tokio::test]
async fn v2_payment_is_served_and_settled_on_chain() {
    let chain = Chain::start().await;
    let (s, _, _) = local_server(&chain);
    let auth = chain.authorization();
    let payment = pay_v2(&chain, &s.app, &auth).await;
    let (status, headers, body) = get(&s.app, "/data", Some(("PAYMENT-SIGNATURE", &payment))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "the data");
    let receipt: v2::SettleResponse =
        codec::decode_header(headers["payment-response"].to_str().unwrap()).unwrap();
    assert!(receipt.success, "{receipt:?}");
    assert!(is_tx_hash(&receipt.transaction), "{}", receipt.transaction);
    assert_eq!(receipt.network, "eip155:84532");
    assert_eq!(receipt.payer.as_deref(), Some(format!("{:#x}", auth.from).as_str()));
    chain.wait_mined(&receipt.transaction).await;
    assert_eq!(chain.balance(chain.pay_to()).await, PRICE);
    assert_eq!(chain.balance(auth.from).await, FUNDS - PRICE);
    assert_eq!(chain.balance(chain.gas().address).await, 0);
    assert_eq!(chain.transfers_from(auth.from).await, 1);
    assert_eq!(s.served.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn v1_payment_is_served_and_settled_on_chain() {
    let chain = Chain::start().await;
    let (s, _, _) = local_server(&chain);
    let auth = chain.authorization();
    let payment = pay_v1(&chain, &s.app, &auth).await;
    let (status, headers, body) = get(&s.app, "/data", Some(("X-PAYMENT", &payment))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!headers.contains_key("payment-response"), "a v1 client gets the v1 header");
    let receipt: v1::SettlementResponse =
        codec::decode_header(headers["x-payment-response"].to_str().unwrap()).unwrap();
    assert!(receipt.success, "{receipt:?}");
    assert!(is_tx_hash(&receipt.transaction), "{}", receipt.transaction);
    assert_eq!(receipt.network, "base-sepolia");
    assert_eq!(receipt.payer.to_lowercase(), format!("{:#x}", auth.from));
    chain.wait_mined(&receipt.transaction).await;
    assert_eq!(chain.balance(chain.pay_to()).await, PRICE);
    assert_eq!(chain.balance(auth.from).await, FUNDS - PRICE);
    assert_eq!(chain.transfers_from(auth.from).await, 1);
}

// ---- /verify of the local facilitator ----

#[tokio::test]
async fn verify_answers_what_each_check_finds() {
    let chain = Chain::start().await;
    let f = chain.facilitator(Arc::new(MemoryStore::new()));
    let payer = format!("{:#x}", chain.payer().address);
    let verify = |request: VersionedPayment| {
        let f = &f;
        async move { f.verify(&request).await.unwrap() }
    };
    let expect = |answer: &VerifyResponse, reason: Reason, case: &str| {
        assert!(!answer.is_valid, "{case}: {answer:?}");
        assert_eq!(answer.invalid_reason.as_deref(), Some(reason.as_str()), "{case}: {answer:?}");
    };

    // Valid.
    let auth = chain.authorization();
    let answer = verify(chain.request(chain.payload(&auth))).await;
    assert!(answer.is_valid, "{answer:?}");
    assert_eq!(answer.payer.as_deref(), Some(payer.as_str()));

    // Signed by another key on the payer's behalf.
    let auth = chain.authorization();
    let forged = chain.payload_signed(chain.stranger(), &chain.domain, &auth);
    let answer = verify(chain.request(forged)).await;
    expect(&answer, Reason::InvalidSignature, "forged");
    assert_eq!(answer.invalid_reason.as_deref(), Some("invalid_exact_evm_payload_signature"));
    assert_eq!(answer.payer.as_deref(), Some(payer.as_str()));

    // Signed in the mainnet USDC domain name.
    let wrong_domain = TokenDomain::new("USD Coin", "2", CHAIN_ID, chain.token);
    let auth = chain.authorization();
    let answer =
        verify(chain.request(chain.payload_signed(chain.payer(), &wrong_domain, &auth))).await;
    expect(&answer, Reason::InvalidSignature, "USD Coin domain");

    // To someone else.
    let auth = TransferWithAuthorization { to: chain.stranger().address, ..chain.authorization() };
    let answer = verify(chain.request(chain.payload(&auth))).await;
    expect(&answer, Reason::RecipientMismatch, "recipient");

    // Under- and overpaid by one unit.
    for value in [PRICE - 1, PRICE + 1] {
        let auth = TransferWithAuthorization { value: U256::from(value), ..chain.authorization() };
        let answer = verify(chain.request(chain.payload(&auth))).await;
        expect(&answer, Reason::ValueMismatch, &format!("value {value}"));
        assert_eq!(
            answer.invalid_reason.as_deref(),
            Some("invalid_exact_evm_payload_authorization_value_mismatch")
        );
    }

    // validBefore inside the 6 s block margin, then just outside it.
    let auth =
        TransferWithAuthorization { validBefore: U256::from(now() + 5), ..chain.authorization() };
    let answer = verify(chain.request(chain.payload(&auth))).await;
    expect(&answer, Reason::Expired, "validBefore now+5");
    let auth =
        TransferWithAuthorization { validBefore: U256::from(now() + 7), ..chain.authorization() };
    let answer = verify(chain.request(chain.payload(&auth))).await;
    assert!(answer.is_valid, "validBefore now+7: {answer:?}");

    // Not valid yet.
    let auth = TransferWithAuthorization {
        validAfter: U256::from(now() + 60),
        validBefore: U256::from(now() + 120),
        ..chain.authorization()
    };
    let answer = verify(chain.request(chain.payload(&auth))).await;
    expect(&answer, Reason::NotYetValid, "validAfter in the future");

    // A network this facilitator does not serve (the payment and the requirement agree on it,
    // and the signature is right for it).
    let mut base = chain.requirement();
    base.network = "eip155:8453".into();
    let base_domain = TokenDomain::new("USDC", "2", 8453, chain.token);
    let auth = chain.authorization();
    let answer =
        verify(request_for(base, chain.payload_signed(chain.payer(), &base_domain, &auth))).await;
    expect(&answer, Reason::InvalidNetwork, "unserved network");

    // A payment on another network than the requirement's.
    let auth = chain.authorization();
    let request = match chain.request(chain.payload(&auth)) {
        VersionedPayment::V2 { mut payment_payload, payment_requirements } => {
            payment_payload.accepted.network = "eip155:8453".into();
            VersionedPayment::V2 { payment_payload, payment_requirements }
        }
        v1 => v1,
    };
    let answer = verify(request).await;
    expect(&answer, Reason::InvalidNetwork, "network mismatch");

    // A well-signed authorization from an account without tokens.
    let auth =
        TransferWithAuthorization { from: chain.unfunded().address, ..chain.authorization() };
    let answer = verify(chain.request(chain.payload(&auth))).await;
    expect(&answer, Reason::InsufficientFunds, "unfunded");
    assert_eq!(answer.invalid_reason.as_deref(), Some("insufficient_funds"));

    // Nothing above moved money.
    assert_eq!(chain.transfers_from(chain.payer().address).await, 0);
    assert_eq!(chain.gas_transactions().await, 0);
}

#[tokio::test]
async fn verify_refuses_a_nonce_already_settled() {
    let chain = Chain::start().await;
    let f = chain.facilitator(Arc::new(MemoryStore::new()));
    let request = chain.request(chain.payload(&chain.authorization()));
    assert!(f.verify(&request).await.unwrap().is_valid);
    let settled = f.settle(&request).await.unwrap();
    assert!(settled.success, "{settled:?}");
    assert!(is_tx_hash(&settled.transaction));
    // A fresh facilitator (empty store) still refuses it: the chain says the nonce is used.
    for f in [f, chain.facilitator(Arc::new(MemoryStore::new()))] {
        let answer = f.verify(&request).await.unwrap();
        assert!(!answer.is_valid);
        assert_eq!(answer.invalid_reason.as_deref(), Some("invalid_exact_evm_nonce_already_used"));
        let again = f.settle(&request).await.unwrap();
        assert!(!again.success);
        assert_eq!(again.error_reason.as_deref(), Some("invalid_exact_evm_nonce_already_used"));
    }
    assert_eq!(chain.transfers_from(chain.payer().address).await, 1);
    assert_eq!(chain.gas_transactions().await, 1, "nothing broadcast for the refused settles");
}

// ---- replay ----

#[tokio::test]
async fn a_payment_sent_twice_is_settled_once() {
    let chain = Chain::start().await;
    let (s, _, _) = local_server(&chain);
    let payment = pay_v2(&chain, &s.app, &chain.authorization()).await;
    let header = Some(("PAYMENT-SIGNATURE", payment.as_str()));
    assert_eq!(get(&s.app, "/data", header).await.0, StatusCode::OK);
    let (status, headers, body) = get(&s.app, "/data", header).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(body["code"], "invalid_exact_evm_nonce_already_used", "{body}");
    assert!(headers.contains_key("payment-required"), "fresh requirements");
    assert_eq!(s.served.load(Ordering::SeqCst), 1);
    assert_eq!(chain.transfers_from(chain.payer().address).await, 1);
    assert_eq!(chain.balance(chain.pay_to()).await, PRICE);
    assert_eq!(chain.gas_transactions().await, 1);
}

#[tokio::test]
async fn concurrent_duplicates_are_served_and_settled_once() {
    let chain = Chain::start().await;
    let (s, _, _) = local_server(&chain);
    let payment = pay_v2(&chain, &s.app, &chain.authorization()).await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (app, payment) = (s.app.clone(), payment.clone());
            tokio::spawn(async move {
                let (status, _, body) =
                    get(&app, "/data", Some(("PAYMENT-SIGNATURE", &payment))).await;
                (status, body)
            })
        })
        .collect();
    let mut served = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            StatusCode::OK => served += 1,
            StatusCode::PAYMENT_REQUIRED => {
                let code = body["code"].as_str().unwrap_or_default().to_string();
                assert!(
                    ["invalid_exact_evm_nonce_already_used", "settlement_pending"]
                        .contains(&code.as_str()),
                    "{body}"
                );
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(served, 1);
    assert_eq!(s.served.load(Ordering::SeqCst), 1);
    assert_eq!(chain.transfers_from(chain.payer().address).await, 1);
    assert_eq!(chain.balance(chain.pay_to()).await, PRICE);
    assert_eq!(chain.balance(chain.payer().address).await, FUNDS - PRICE);
    assert_eq!(chain.gas_transactions().await, 1);
}

#[tokio::test]
async fn a_replay_after_a_restart_is_refused_before_the_handler() {
    let chain = Chain::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replay.sqlite");
    let auth = chain.authorization();

    let payment = {
        let store: Arc<dyn ReplayStore> = Arc::new(SqliteStore::open(&path).await.unwrap());
        let s = server(&chain, Arc::new(chain.facilitator(store.clone())), store);
        let payment = pay_v2(&chain, &s.app, &auth).await;
        let header = Some(("PAYMENT-SIGNATURE", payment.as_str()));
        assert_eq!(get(&s.app, "/data", header).await.0, StatusCode::OK);
        assert_eq!(s.served.load(Ordering::SeqCst), 1);
        payment
    }; // the server, rail, facilitator and store are gone

    let store = Arc::new(SqliteStore::open(&path).await.unwrap());
    let s = server(&chain, Arc::new(chain.facilitator(store.clone())), store.clone());
    let (status, _, body) = get(&s.app, "/data", Some(("PAYMENT-SIGNATURE", &payment))).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(body["code"], "invalid_exact_evm_nonce_already_used", "{body}");
    assert_eq!(s.served.load(Ordering::SeqCst), 0, "the handler did not run");
    assert_eq!(chain.transfers_from(auth.from).await, 1);

    // The rail's record survived the restart, settled, with its transaction.
    let sent: v2::PaymentPayload = codec::decode_header(&payment).unwrap();
    let request = request_for(chain.requirement(), sent.payload);
    let checked = farebox_x402::exact_evm::check_request(&request, now()).unwrap();
    let key = local::replay_key(&checked);
    for namespace in [rail::NAMESPACE, local::NAMESPACE] {
        let record = store.get(namespace, &key).await.unwrap().expect(namespace);
        assert_eq!(record.state, ProofState::Settled, "{namespace}");
        assert!(is_tx_hash(record.reference.as_deref().unwrap_or_default()), "{record:?}");
    }
}

#[tokio::test]
async fn concurrent_settles_of_one_payload_send_one_transfer() {
    let chain = Chain::start().await;
    let f = Arc::new(chain.facilitator(Arc::new(MemoryStore::new())));
    let request = chain.request(chain.payload(&chain.authorization()));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (f, request) = (f.clone(), request.clone());
            tokio::spawn(async move { f.settle(&request).await.unwrap() })
        })
        .collect();
    let mut successes = 0;
    for t in tasks {
        let answer = t.await.unwrap();
        if answer.success {
            successes += 1;
            assert!(is_tx_hash(&answer.transaction));
        } else {
            let reason = answer.error_reason.as_deref().unwrap_or_default();
            assert!(
                ["settlement_pending", "invalid_exact_evm_nonce_already_used"].contains(&reason),
                "{answer:?}"
            );
        }
    }
    assert_eq!(successes, 1);
    assert_eq!(chain.transfers_from(chain.payer().address).await, 1);
    assert_eq!(chain.balance(chain.pay_to()).await, PRICE);
    assert_eq!(chain.gas_transactions().await, 1);
}

// ---- the handler fails ----

#[tokio::test]
async fn a_failing_handler_is_not_charged_and_the_payment_stays_usable() {
    let chain = Chain::start().await;
    let (s, _, _) = local_server(&chain);
    let payment = pay_v2(&chain, &s.app, &chain.authorization()).await;
    let header = Some(("PAYMENT-SIGNATURE", payment.as_str()));
    let (status, headers, _) = get(&s.app, "/data-fails", header).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!headers.contains_key("payment-response"));
    assert_eq!(chain.balance(chain.payer().address).await, FUNDS);
    assert_eq!(chain.balance(chain.pay_to()).await, 0);
    assert_eq!(chain.gas_transactions().await, 0);

    let (status, headers, _) = get(&s.app, "/data", header).await;
    assert_eq!(status, StatusCode::OK);
    let receipt: v2::SettleResponse =
        codec::decode_header(headers["payment-response"].to_str().unwrap()).unwrap();
    assert!(receipt.success);
    assert_eq!(chain.balance(chain.pay_to()).await, PRICE);
    assert_eq!(chain.transfers_from(chain.payer().address).await, 1);
    assert_eq!(s.served.load(Ordering::SeqCst), 2);
}

// ---- the facilitator is down ----

#[tokio::test]
async fn an_unreachable_remote_facilitator_is_a_503() {
    let chain = Chain::start().await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    }; // closed again
    let s = server(&chain, Arc::new(remote(closed)), Arc::new(MemoryStore::new()));
    let payment = pay_v2(&chain, &s.app, &chain.authorization()).await;
    let (status, headers, body) = get(&s.app, "/data", Some(("PAYMENT-SIGNATURE", &payment))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(s.served.load(Ordering::SeqCst), 0);
    assert_eq!(chain.balance(chain.payer().address).await, FUNDS);
}

#[tokio::test]
async fn a_local_facilitator_whose_node_is_down_is_a_503() {
    let mut chain = Chain::start().await;
    let (s, _, store) = local_server(&chain);
    let payment = pay_v2(&chain, &s.app, &chain.authorization()).await;
    chain.anvil.stop();
    let (status, headers, body) = get(&s.app, "/data", Some(("PAYMENT-SIGNATURE", &payment))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(s.served.load(Ordering::SeqCst), 0);
    assert!(store.pending(rail::NAMESPACE).await.unwrap().is_empty(), "nothing reserved");
}

// ---- the HTTP faces ----

#[tokio::test]
async fn the_http_facilitator_serves_a_remote_rail() {
    let chain = Chain::start().await;
    let store = Arc::new(MemoryStore::new());
    let local: Arc<dyn Facilitator> = Arc::new(chain.facilitator(store));
    let addr = serve(http_server::router(local)).await;
    let remote = remote(addr);

    // /supported.
    let supported = remote.supported().await.unwrap();
    let kinds: Vec<(u64, &str, &str)> = supported
        .kinds
        .iter()
        .map(|k| (k.x402_version, k.scheme.as_str(), k.network.as_str()))
        .collect();
    assert!(kinds.contains(&(2, "exact", "eip155:84532")), "{kinds:?}");
    assert!(kinds.contains(&(1, "exact", "base-sepolia")), "{kinds:?}");
    let gas = format!("{:#x}", chain.gas().address);
    assert!(
        supported.signers.values().flatten().any(|s| s.eq_ignore_ascii_case(&gas)),
        "{supported:?}"
    );

    // A /verify body that is no payment at all is a 400.
    let http = reqwest::Client::new();
    for body in ["{not json", r#"{"x402Version":2}"#, "[1,2]"] {
        let res = http
            .post(format!("http://{addr}/verify"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), reqwest::StatusCode::BAD_REQUEST, "{body}");
        let answer: Value = res.json().await.unwrap();
        assert!(answer["error"].is_string(), "{answer}");
    }

    // The rail through the HTTP client.
    let s = server(&chain, Arc::new(remote), Arc::new(MemoryStore::new()));
    let auth = chain.authorization();
    let payment = pay_v2(&chain, &s.app, &auth).await;
    let (status, headers, body) = get(&s.app, "/data", Some(("PAYMENT-SIGNATURE", &payment))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let receipt: v2::SettleResponse =
        codec::decode_header(headers["payment-response"].to_str().unwrap()).unwrap();
    assert!(receipt.success && is_tx_hash(&receipt.transaction), "{receipt:?}");
    assert_eq!(chain.balance(chain.pay_to()).await, PRICE);
    assert_eq!(chain.balance(auth.from).await, FUNDS - PRICE);

    // And an invalid payment is a 200 `isValid: false` over HTTP, read back as such.
    let forged = chain.payload_signed(chain.stranger(), &chain.domain, &chain.authorization());
    let res = http
        .post(format!("http://{addr}/verify"))
        .json(&chain.request(forged))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    let answer: VerifyResponse = res.json().await.unwrap();
    assert_eq!(answer.reason(), Some(Reason::InvalidSignature));
}

/// A payment the facilitator cannot take (an unknown version, a payload or requirements that do
/// not decode) is answered in the protocol's terms on both endpoints: 200, `isValid: false` /
/// `success: false`, a spec reason code, and words, not Rust's `Some(99)`.
#[tokio::test]
async fn an_unknown_x402_version_gets_is_valid_false_with_a_reason() {
    let chain = Chain::start().await;
    let local: Arc<dyn Facilitator> = Arc::new(chain.facilitator(Arc::new(MemoryStore::new())));
    let addr = serve(http_server::router(local)).await;
    let http = reqwest::Client::new();
    let good = serde_json::to_value(chain.request(chain.payload(&chain.authorization()))).unwrap();
    let mut unknown = good.clone();
    unknown["x402Version"] = json!(99);
    unknown["paymentPayload"]["x402Version"] = json!(99);
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("x402Version");
    let mut bad_payload = good.clone();
    bad_payload["paymentPayload"] = json!({});
    let mut bad_requirements = good.clone();
    bad_requirements["paymentRequirements"] = json!({"scheme": 7});
    for (body, reason) in [
        (&unknown, "invalid_x402_version"),
        (&missing, "invalid_x402_version"),
        (&bad_payload, "invalid_payload"),
        (&bad_requirements, "invalid_payment_requirements"),
    ] {
        for (endpoint, valid, code, message) in [
            ("verify", "isValid", "invalidReason", "invalidMessage"),
            ("settle", "success", "errorReason", "errorMessage"),
        ] {
            let res =
                http.post(format!("http://{addr}/{endpoint}")).json(body).send().await.unwrap();
            assert_eq!(res.status(), reqwest::StatusCode::OK, "{endpoint} {reason}");
            let answer: Value = res.json().await.unwrap();
            assert_eq!(answer[valid], false, "{endpoint}: {answer}");
            assert_eq!(answer[code], reason, "{endpoint}: {answer}");
            let words = answer[message].as_str().unwrap();
            assert!(!words.contains("Some(") && !words.contains("None"), "{words}");
        }
    }
    // Nothing was settled.
    assert_eq!(chain.balance(chain.pay_to()).await, 0);
}

// ---- pending, then reconciled ----

#[tokio::test]
async fn a_settlement_without_a_receipt_is_pending_then_reconciled() {
    let chain = Chain::start().await;
    // No block until the test mines one: the receipt cannot arrive in time, deterministically.
    let _: Value = chain.rpc.request("evm_setAutomine", (false,)).await.unwrap();
    let store = Arc::new(MemoryStore::new());
    let facilitator =
        Arc::new(chain.facilitator(store.clone()).with_receipt_timeout(Duration::from_millis(1)));
    let s = server(&chain, facilitator.clone(), store.clone());
    let auth = chain.authorization();
    let payment = pay_v2(&chain, &s.app, &auth).await;
    let header = Some(("PAYMENT-SIGNATURE", payment.as_str()));

    let (status, headers, body) = get(&s.app, "/data", header).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{body}");
    assert_eq!(body["code"], "settlement_pending", "{body}");
    assert_ne!(body, "the data");
    let receipt: v2::SettleResponse =
        codec::decode_header(headers["payment-response"].to_str().unwrap()).unwrap();
    assert!(!receipt.success);
    assert_eq!(receipt.error_reason.as_deref(), Some("settlement_pending"));
    let tx = receipt.transaction.clone();
    assert!(is_tx_hash(&tx), "{tx}");
    for namespace in [local::NAMESPACE, rail::NAMESPACE] {
        let pending = store.pending(namespace).await.unwrap();
        assert_eq!(pending.len(), 1, "{namespace}");
        assert_eq!(pending[0].1.reference.as_deref(), Some(tx.as_str()), "{namespace}");
    }
    // Not mined yet: reconciling changes nothing, and the same payment is still refused.
    assert_eq!(facilitator.reconcile(local::NAMESPACE).await.unwrap(), 0);
    let (status, _, body) = get(&s.app, "/data", header).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(body["code"], "settlement_pending", "{body}");
    assert!(body["detail"].as_str().unwrap_or_default().contains(&tx), "{body}");

    chain.anvil.mine().await.unwrap();
    chain.wait_mined(&tx).await;
    assert_eq!(facilitator.reconcile(local::NAMESPACE).await.unwrap(), 1);
    assert_eq!(facilitator.reconcile(rail::NAMESPACE).await.unwrap(), 1);
    for namespace in [local::NAMESPACE, rail::NAMESPACE] {
        assert!(store.pending(namespace).await.unwrap().is_empty(), "{namespace}");
    }
    let checked = farebox_x402::exact_evm::check_request(
        &request_for(chain.requirement(), chain.payload(&auth)),
        now(),
    )
    .unwrap();
    let record = store.get(rail::NAMESPACE, &local::replay_key(&checked)).await.unwrap().unwrap();
    assert_eq!(record.state, ProofState::Settled);
    assert_eq!(record.reference.as_deref(), Some(tx.as_str()));

    assert_eq!(chain.balance(chain.pay_to()).await, PRICE);
    assert_eq!(chain.transfers_from(auth.from).await, 1);
    assert_eq!(s.served.load(Ordering::SeqCst), 1, "the handler ran once; its answer was withheld");
    let (status, _, body) = get(&s.app, "/data", header).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(body["code"], "invalid_exact_evm_nonce_already_used", "{body}");
}

// ---- a store that fails after the transfer was broadcast ----

/// A replay store whose `update` fails while `failing` is set (it went away mid-settlement).
#[derive(Default)]
struct FlakyStore {
    inner: MemoryStore,
    failing: AtomicBool,
}

#[async_trait]
impl ReplayStore for FlakyStore {
    async fn reserve(&self, ns: &str, key: &str, expires_at: u64) -> Result<bool, StoreError> {
        self.inner.reserve(ns, key, expires_at).await
    }
    async fn update(
        &self,
        ns: &str,
        key: &str,
        state: ProofState,
        reference: Option<&str>,
    ) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("scripted outage".into()));
        }
        self.inner.update(ns, key, state, reference).await
    }
    async fn release(&self, ns: &str, key: &str) -> Result<(), StoreError> {
        self.inner.release(ns, key).await
    }
    async fn get(&self, ns: &str, key: &str) -> Result<Option<ProofRecord>, StoreError> {
        self.inner.get(ns, key).await
    }
    async fn pending(&self, ns: &str) -> Result<Vec<(String, ProofRecord)>, StoreError> {
        self.inner.pending(ns).await
    }
    async fn purge_expired(&self, now: u64) -> Result<u64, StoreError> {
        self.inner.purge_expired(now).await
    }
    async fn settled_mark(&self) -> Result<u64, StoreError> {
        self.inner.settled_mark().await
    }
    async fn reserve_hold(
        &self,
        ns: &str,
        key: &str,
        expires_at: u64,
        hold: &Hold<'_>,
    ) -> Result<HoldOutcome, StoreError> {
        self.inner.reserve_hold(ns, key, expires_at, hold).await
    }
}

#[tokio::test]
async fn a_facilitator_store_failure_after_broadcast_is_pending_with_the_hash() {
    let chain = Chain::start().await;
    let facilitator_store = Arc::new(FlakyStore::default());
    facilitator_store.failing.store(true, Ordering::SeqCst);
    let rail_store = Arc::new(MemoryStore::new());
    let f = Arc::new(chain.facilitator(facilitator_store.clone()));
    let s = server(&chain, f, rail_store.clone());
    let auth = chain.authorization();
    let payment = pay_v2(&chain, &s.app, &auth).await;
    let header = Some(("PAYMENT-SIGNATURE", payment.as_str()));

    let (status, headers, body) = get(&s.app, "/data", header).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(body["code"], "settlement_outcome_unknown", "{body}");
    let receipt: v2::SettleResponse =
        codec::decode_header(headers["payment-response"].to_str().unwrap()).unwrap();
    assert!(!receipt.success);
    assert_eq!(receipt.error_reason.as_deref(), Some("settlement_pending"));
    let tx = receipt.transaction.clone();
    assert!(is_tx_hash(&tx), "the client is told the hash of the transfer: {tx:?}");

    // The money did move.
    chain.wait_mined(&tx).await;
    assert_eq!(chain.balance(chain.pay_to()).await, PRICE);
    assert_eq!(chain.transfers_from(auth.from).await, 1);
    // The rail kept the nonce, pending with the hash, and refuses the payment again.
    let pending = rail_store.pending(rail::NAMESPACE).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].1.reference.as_deref(), Some(tx.as_str()));
    facilitator_store.failing.store(false, Ordering::SeqCst);
    let (status, _, body) = get(&s.app, "/data", header).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(body["code"], "settlement_pending", "{body}");
    assert_eq!(s.served.load(Ordering::SeqCst), 1, "the handler ran once; its answer was withheld");
    assert_eq!(chain.transfers_from(auth.from).await, 1);
}

// ---- the rail reconciles its own pending settlements ----

/// A server whose rail settles through `farebox facilitator`'s HTTP API (its own store, receipts
/// that never arrive in time: automine is off) and reads the chain itself to reconcile.
#[tokio::test]
async fn a_rail_behind_an_http_facilitator_reconciles_its_pending_settlement() {
    let chain = Chain::start().await;
    let _: Value = chain.rpc.request("evm_setAutomine", (false,)).await.unwrap();
    let facilitator = chain
        .facilitator(Arc::new(MemoryStore::new()))
        .with_receipt_timeout(Duration::from_millis(1));
    let addr = serve(http_server::router(Arc::new(facilitator))).await;
    let store = Arc::new(MemoryStore::new());
    let rail = X402Rail::new(chain.config(), Arc::new(remote(addr)), store.clone())
        .with_chain_reader(ChainReader::new([chain.rpc.clone()]));
    let s = server_with(&chain, rail);
    let auth = chain.authorization();
    let payment = pay_v2(&chain, &s.app, &auth).await;
    let header = Some(("PAYMENT-SIGNATURE", payment.as_str()));

    let (status, headers, body) = get(&s.app, "/data", header).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{body}");
    assert_eq!(body["code"], "settlement_pending", "{body}");
    let receipt: v2::SettleResponse =
        codec::decode_header(headers["payment-response"].to_str().unwrap()).unwrap();
    let tx = receipt.transaction.clone();
    assert!(is_tx_hash(&tx), "{tx}");

    // In the mempool, not mined: the rail leaves it pending.
    assert_eq!(
        s.rail.reconcile().await.unwrap(),
        Reconciled { unresolved: 1, ..Default::default() }
    );
    assert_eq!(store.pending(rail::NAMESPACE).await.unwrap().len(), 1);

    chain.anvil.mine().await.unwrap();
    chain.wait_mined(&tx).await;
    assert_eq!(s.rail.reconcile().await.unwrap(), Reconciled { settled: 1, ..Default::default() });
    assert!(store.pending(rail::NAMESPACE).await.unwrap().is_empty());
    let sent: v2::PaymentPayload = codec::decode_header(&payment).unwrap();
    let checked = farebox_x402::exact_evm::check_request(
        &request_for(chain.requirement(), sent.payload),
        now(),
    )
    .unwrap();
    let record = store.get(rail::NAMESPACE, &local::replay_key(&checked)).await.unwrap().unwrap();
    assert_eq!(record.state, ProofState::Settled);
    assert_eq!(record.reference.as_deref(), Some(tx.as_str()));
    assert_eq!(chain.balance(chain.pay_to()).await, PRICE);

    let (status, _, body) = get(&s.app, "/data", header).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(body["code"], "invalid_exact_evm_nonce_already_used", "{body}");
    assert_eq!(chain.transfers_from(auth.from).await, 1);
}

/// With the in-process facilitator, the rail needs no reader of its own.
#[tokio::test]
async fn a_rail_with_a_local_facilitator_reconciles_through_it() {
    let chain = Chain::start().await;
    let _: Value = chain.rpc.request("evm_setAutomine", (false,)).await.unwrap();
    let facilitator = chain
        .facilitator(Arc::new(MemoryStore::new()))
        .with_receipt_timeout(Duration::from_millis(1));
    let store = Arc::new(MemoryStore::new());
    let s = server(&chain, Arc::new(facilitator), store.clone());
    let payment = pay_v2(&chain, &s.app, &chain.authorization()).await;
    let (_, headers, body) = get(&s.app, "/data", Some(("PAYMENT-SIGNATURE", &payment))).await;
    assert_eq!(body["code"], "settlement_pending", "{body}");
    let receipt: v2::SettleResponse =
        codec::decode_header(headers["payment-response"].to_str().unwrap()).unwrap();
    assert_eq!(
        s.rail.reconcile().await.unwrap(),
        Reconciled { unresolved: 1, ..Default::default() }
    );
    chain.anvil.mine().await.unwrap();
    chain.wait_mined(&receipt.transaction).await;
    assert_eq!(s.rail.reconcile().await.unwrap(), Reconciled { settled: 1, ..Default::default() });
    assert!(store.pending(rail::NAMESPACE).await.unwrap().is_empty());
}

// ---- bad input, case by case, through the paywall ----

/// Re-encodes a v2 payment header after `change`.
fn tampered(header: &str, change: impl FnOnce(&mut v2::PaymentPayload)) -> String {
    let mut payment: v2::PaymentPayload = codec::decode_header(header).unwrap();
    change(&mut payment);
    codec::encode_header(&payment)
}

/// A refusal that asks for a new payment: 402, the exact reason, fresh requirements.
async fn expect_402(chain: &Chain, app: &Router, header: (&str, &str), code: &str, case: &str) {
    let (status, headers, body) = get(app, "/data", Some(header)).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{case}: {body}");
    assert_eq!(body["code"], code, "{case}: {body}");
    let required: v2::PaymentRequired =
        codec::decode_header(headers["payment-required"].to_str().unwrap()).unwrap();
    assert_eq!(required.accepts, vec![chain.requirement()], "{case}: fresh requirements");
    assert!(!headers.contains_key("retry-after"), "{case}");
}

#[tokio::test]
async fn each_bad_payment_gets_its_status_header_and_reason() {
    let chain = Chain::start().await;
    let (s, _, _) = local_server(&chain);
    let app = &s.app;
    let sig = "PAYMENT-SIGNATURE";

    // Headers that are not a payment at all.
    expect_402(&chain, app, (sig, "not base64!"), "invalid_payload", "malformed base64").await;
    let not_json = "e25vdCBqc29u"; // `{not json`
    expect_402(&chain, app, (sig, not_json), "invalid_payload", "malformed JSON").await;
    let v9 = codec::encode_header(&json!({"x402Version": 9, "payload": {}}));
    expect_402(&chain, app, (sig, &v9), "invalid_x402_version", "unknown x402Version").await;
    expect_402(&chain, app, ("X-PAYMENT", &v9), "invalid_x402_version", "unknown, v1 header").await;

    // Signed payments that do not pay this route.
    let valid = pay_v2(&chain, app, &chain.authorization()).await;
    let other_network = tampered(&valid, |p| p.accepted.network = "eip155:8453".into());
    expect_402(&chain, app, (sig, &other_network), "invalid_network", "wrong network (v2)").await;
    let v1_other_network = codec::encode_header(&v1::PaymentPayload {
        x402_version: farebox_x402::Version,
        scheme: "exact".into(),
        network: "base".into(),
        payload: chain.payload(&chain.authorization()),
    });
    let case = "wrong network (v1)";
    expect_402(&chain, app, ("X-PAYMENT", &v1_other_network), "invalid_network", case).await;

    let auth =
        TransferWithAuthorization { validBefore: U256::from(now() - 1), ..chain.authorization() };
    let expired = pay_v2(&chain, app, &auth).await;
    let code = "invalid_exact_evm_payload_authorization_valid_before";
    expect_402(&chain, app, (sig, &expired), code, "expired").await;

    let auth = TransferWithAuthorization {
        validAfter: U256::from(now() + 60),
        validBefore: U256::from(now() + 120),
        ..chain.authorization()
    };
    let early = pay_v2(&chain, app, &auth).await;
    let code = "invalid_exact_evm_payload_authorization_valid_after";
    expect_402(&chain, app, (sig, &early), code, "not yet valid").await;

    let auth = TransferWithAuthorization { to: chain.stranger().address, ..chain.authorization() };
    let elsewhere = pay_v2(&chain, app, &auth).await;
    let code = "invalid_exact_evm_payload_recipient_mismatch";
    expect_402(&chain, app, (sig, &elsewhere), code, "wrong recipient").await;

    let code = "invalid_exact_evm_payload_authorization_value_mismatch";
    for (value, case) in [(PRICE - 1, "underpayment"), (PRICE + 1, "overpayment")] {
        let auth = TransferWithAuthorization { value: U256::from(value), ..chain.authorization() };
        let payment = pay_v2(&chain, app, &auth).await;
        expect_402(&chain, app, (sig, &payment), code, case).await;
    }

    let auth = chain.authorization();
    // Signed by another key, in the payer's name: only the signature gives it away.
    let forged = tampered(&valid, |p| {
        p.payload = chain.payload_signed(chain.stranger(), &chain.domain, &auth)
    });
    let code = "invalid_exact_evm_payload_signature";
    expect_402(&chain, app, (sig, &forged), code, "forged signature").await;

    // Nothing above was served or moved money.
    assert_eq!(s.served.load(Ordering::SeqCst), 0);
    assert_eq!(chain.gas_transactions().await, 0);

    // A replay of a payment that was served.
    let (status, _, body) = get(app, "/data", Some((sig, &valid))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let code = "invalid_exact_evm_nonce_already_used";
    expect_402(&chain, app, (sig, &valid), code, "replay").await;
    assert_eq!(s.served.load(Ordering::SeqCst), 1);
    assert_eq!(chain.transfers_from(chain.payer().address).await, 1);
    assert_eq!(chain.balance(chain.pay_to()).await, PRICE);

    // A facilitator that is down: 503 with Retry-After, never the content.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    }; // closed again
    let down = server(&chain, Arc::new(remote(closed)), Arc::new(MemoryStore::new()));
    let payment = pay_v2(&chain, &down.app, &chain.authorization()).await;
    let (status, headers, body) = get(&down.app, "/data", Some((sig, &payment))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(headers["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(body["code"], "facilitator_unavailable", "{body}");
    assert!(!headers.contains_key("payment-required"));
    assert_eq!(down.served.load(Ordering::SeqCst), 0);
}

// ---- a settlement refused at gas estimation ----

/// Moves all of the payer's tokens to the stranger, as the payer spending them elsewhere.
async fn drain_payer(chain: &Chain) {
    let balance = U256::from(chain.balance(chain.payer().address).await);
    let transfer = farebox_evm::contracts::FareboxUSD::transferCall {
        to: chain.stranger().address,
        value: balance,
    };
    let tx = chain.rpc.send_call(&chain.payer().signer, chain.token, &transfer).await.unwrap();
    chain.wait_mined(&format!("{tx:#x}")).await;
}

#[tokio::test]
async fn a_settle_refused_at_gas_estimation_keeps_the_authorization_usable() {
    let chain = Chain::start().await;
    let store = Arc::new(MemoryStore::new());
    let f = chain.facilitator(store.clone());
    let request = chain.request(chain.payload(&chain.authorization()));
    assert!(f.verify(&request).await.unwrap().is_valid);
    drain_payer(&chain).await;

    let refused = f.settle(&request).await.unwrap();
    assert!(!refused.success);
    assert_eq!(refused.error_reason.as_deref(), Some("insufficient_funds"), "{refused:?}");
    assert_eq!(refused.transaction, "", "nothing was broadcast");
    assert_eq!(chain.gas_transactions().await, 0);
    let checked = farebox_x402::exact_evm::check_request(&request, now()).unwrap();
    let key = local::replay_key(&checked);
    assert_eq!(store.get(local::NAMESPACE, &key).await.unwrap(), None, "not marked used");

    chain.anvil.mint(chain.token, chain.payer().address, U256::from(PRICE)).await.unwrap();
    let settled = f.settle(&request).await.unwrap();
    assert!(settled.success, "{settled:?}");
    assert_eq!(chain.balance(chain.pay_to()).await, PRICE);
}

#[tokio::test]
async fn a_payer_whose_funds_left_before_settlement_can_pay_again_with_the_same_signature() {
    let chain = Chain::start().await;
    let store = Arc::new(MemoryStore::new());
    let facilitator = Arc::new(chain.facilitator(store.clone()));
    let rail = X402Rail::new(chain.config(), facilitator, store.clone());
    let price = Price::one(Money::new(Asset::Token(chain.config().token()), u128::from(PRICE)));
    let paywall = Paywall::builder()
        .rail(rail)
        .route(PricedRoute::new(None, "/data", price).unwrap())
        .build()
        .unwrap();
    // The first time it runs, the handler spends the payer's tokens elsewhere (as a payer could
    // between verification and settlement).
    let chain = Arc::new(chain);
    let (drainer, drained) = (chain.clone(), Arc::new(AtomicBool::new(false)));
    let app = Router::new()
        .route(
            "/data",
            axum::routing::get(move || async move {
                if !drained.swap(true, Ordering::SeqCst) {
                    drain_payer(&drainer).await;
                }
                "the data"
            }),
        )
        .layer(PaywallLayer::new(paywall));
    let payment = pay_v2(&chain, &app, &chain.authorization()).await;
    let header = Some(("PAYMENT-SIGNATURE", payment.as_str()));

    let (status, headers, body) = get(&app, "/data", header).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{body}");
    assert_eq!(body["code"], "insufficient_funds", "{body}");
    let receipt: v2::SettleResponse =
        codec::decode_header(headers["payment-response"].to_str().unwrap()).unwrap();
    assert!(!receipt.success && receipt.transaction.is_empty(), "{receipt:?}");
    assert_eq!(chain.gas_transactions().await, 0, "nothing was broadcast");
    let sent: v2::PaymentPayload = codec::decode_header(&payment).unwrap();
    let request = request_for(chain.requirement(), sent.payload);
    let key = local::replay_key(&farebox_x402::exact_evm::check_request(&request, now()).unwrap());
    for namespace in [rail::NAMESPACE, local::NAMESPACE] {
        assert_eq!(store.get(namespace, &key).await.unwrap(), None, "{namespace}: not marked used");
    }

    // Funded again, the same signed payment is accepted and settled.
    chain.anvil.mint(chain.token, chain.payer().address, U256::from(PRICE)).await.unwrap();
    let (status, headers, body) = get(&app, "/data", header).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let receipt: v2::SettleResponse =
        codec::decode_header(headers["payment-response"].to_str().unwrap()).unwrap();
    assert!(receipt.success, "{receipt:?}");
    assert_eq!(chain.balance(chain.pay_to()).await, PRICE);
}

// ---- a payer's payments in flight never take more than its balance ----

/// A dev account holding `prices` × PRICE of the token (and nothing else of it).
async fn payer_funded_for(chain: &Chain, prices: u64) -> Address {
    let payer = chain.unfunded().address;
    chain.anvil.mint(chain.token, payer, U256::from(prices * PRICE)).await.unwrap();
    payer
}

/// Sends every `(header, payment)` to `/data` at once; returns how many were served (200).
async fn all_at_once(app: &Router, payments: Vec<(&'static str, String)>) -> usize {
    let tasks: Vec<_> = payments
        .into_iter()
        .map(|(header, payment)| {
            let app = app.clone();
            tokio::spawn(
                async move { get(&app, "/data", Some((header, payment.as_str()))).await.0 },
            )
        })
        .collect();
    let mut served = 0;
    for t in tasks {
        if t.await.unwrap() == StatusCode::OK {
            served += 1;
        }
    }
    served
}

/// `n` payments of PRICE by `payer`, each with its own nonce, `v1` or v2 as the client pays.
async fn payments_of(
    chain: &Chain,
    app: &Router,
    payer: Address,
    n: usize,
    v1: impl Fn(usize) -> bool,
) -> Vec<(&'static str, String)> {
    let mut payments = Vec::new();
    for i in 0..n {
        let auth = TransferWithAuthorization { from: payer, ..chain.authorization() };
        payments.push(if v1(i) {
            ("X-PAYMENT", pay_v1(chain, app, &auth).await)
        } else {
            ("PAYMENT-SIGNATURE", pay_v2(chain, app, &auth).await)
        });
    }
    payments
}

/// Twenty concurrent payments (v1 or v2) of a payer funded for one price: one is served.
async fn twenty_payments_of_a_payer_funded_for_one(v1: bool) {
    let chain = Chain::start().await;
    let (s, _, _) = local_server(&chain);
    let payer = payer_funded_for(&chain, 1).await;
    let payments = payments_of(&chain, &s.app, payer, 20, |_| v1).await;
    let served = all_at_once(&s.app, payments).await;
    assert_eq!(s.served.load(Ordering::SeqCst), 1, "the handler ran once");
    assert_eq!(served, 1);
    assert_eq!(chain.balance(chain.pay_to()).await, PRICE);
    assert_eq!(chain.balance(payer).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_v2_payments_of_a_payer_funded_for_one_run_the_handler_once() {
    twenty_payments_of_a_payer_funded_for_one(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_v1_payments_of_a_payer_funded_for_one_run_the_handler_once() {
    twenty_payments_of_a_payer_funded_for_one(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_payments_of_a_payer_funded_for_three_run_the_handler_at_most_thrice() {
    let chain = Chain::start().await;
    let store = Arc::new(MemoryStore::new());
    let facilitator = Arc::new(chain.facilitator(store.clone()));
    let rail = X402Rail::new(chain.config(), facilitator, store).with_node(chain.rpc.clone());
    let s = server_with(&chain, rail);
    let payer = payer_funded_for(&chain, 3).await;
    let payments = payments_of(&chain, &s.app, payer, 20, |i| i % 2 == 1).await;
    let served = all_at_once(&s.app, payments).await;
    let handled = s.served.load(Ordering::SeqCst);
    assert!((1..=3).contains(&handled), "the handler ran {handled} times");
    assert_eq!(served, handled);
    assert_eq!(chain.balance(chain.pay_to()).await, handled as u64 * PRICE, "every run was paid");
}

#[tokio::test]
async fn a_payer_may_have_as_many_payments_in_flight_as_its_balance_covers() {
    let chain = Chain::start().await;
    let payer = payer_funded_for(&chain, 3).await;
    let store = Arc::new(MemoryStore::new());
    let facilitator = Arc::new(chain.facilitator(store.clone()));
    let with_node = Arc::new(
        X402Rail::new(chain.config(), facilitator.clone(), store.clone())
            .with_node(chain.rpc.clone()),
    );
    let s = server_with(&chain, X402Rail::new(chain.config(), facilitator, store));
    let resource = Resource {
        method: http::Method::GET,
        path: "/data".into(),
        route: "/data".into(),
        price: Price::one(Money::new(Asset::Token(chain.config().token()), u128::from(PRICE))),
        description: Some("market data".into()),
        accept_payment: None,
    };
    let credential = |value: String| PresentedCredential {
        header: http::HeaderName::from_static("payment-signature"),
        auth: None,
        value,
    };
    let mut payments = Vec::new();
    for (_, payment) in payments_of(&chain, &s.app, payer, 5, |_| false).await {
        payments.push(credential(payment));
    }
    // Verified, not settled: each holds PRICE of the payer's 3 × PRICE.
    let mut held = Vec::new();
    for payment in &payments[..3] {
        held.push(with_node.clone().verify(&resource, payment).await.unwrap());
    }
    let refused = with_node.clone().verify(&resource, &payments[3]).await.unwrap_err();
    assert_eq!(refused.code, "insufficient_funds", "{refused:?}");
    // Released (its handler failed), a payment holds nothing any more.
    held.pop().unwrap().into_verified().release(&resource).await;
    with_node.clone().verify(&resource, &payments[3]).await.unwrap();
    // Without a node to read balances, a payer has one payment in flight at most.
    let store = Arc::new(MemoryStore::new());
    let s2 = server(&chain, Arc::new(chain.facilitator(store.clone())), store);
    let one = payments_of(&chain, &s2.app, payer, 2, |_| false).await;
    let first = s2.rail.clone().verify(&resource, &credential(one[0].1.clone())).await.unwrap();
    let second =
        s2.rail.clone().verify(&resource, &credential(one[1].1.clone())).await.unwrap_err();
    assert_eq!(second.code, "insufficient_funds", "{second:?}");
    first.into_verified().release(&resource).await;
    s2.rail.clone().verify(&resource, &credential(one[1].1.clone())).await.unwrap();
    assert_eq!(chain.balance(chain.pay_to()).await, 0, "nothing was settled");
}
