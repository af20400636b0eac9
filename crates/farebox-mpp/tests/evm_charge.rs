//! The MPP `evm` charge behind the paywall, on a real anvil running FareboxUSD (EIP-712 domain
//! "USDC" / "2", 2 decimals). Credentials are built the way mppx builds them: EIP-3009 with
//! `nonce = keccak256(id ‖ realm)`, `validAfter = 0`, `validBefore = expires`.
//!
//! Each test starts its own anvil.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::{Extension, Router};
use farebox_core::{Money, Price, ProofState, Rail, ReplayStore};
use farebox_evm::anvil::Anvil;
use farebox_evm::eip3009::{self, TokenDomain, TransferWithAuthorization};
use farebox_evm::token::TokenInfo;
use farebox_evm::{Address, B256, EvmRpc, U256};
use farebox_mpp::evm::charge::{self as evm_charge, EvmChargeRequest};
use farebox_mpp::{
    Challenge, ChallengeParams, Credential, EvmChargeConfig, MppConfig, MppRail, PaymentReceipt,
    time,
};
use farebox_server::{Paid, Paywall, PaywallLayer, PricedRoute};
use farebox_store::MemoryStore;
use http::{HeaderMap, Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

const SECRET: &[u8] = b"an-mpp-test-secret-of-at-least-32-bytes!";
const REALM: &str = "api.example.com";
const PROBLEMS: &str = "https://paymentauth.org/problems/";
const FUNDS: u64 = 100_000; // 1,000.00
const PRICE: u128 = 150; // 1.50

struct World {
    anvil: Anvil,
    rpc: EvmRpc,
    app: Router,
    token: Address,
    domain: TokenDomain,
    rail: Arc<MppRail>,
    store: Arc<MemoryStore>,
    /// Who the paywall said paid, once per run of the handler.
    paid_by: Arc<Mutex<Vec<Option<String>>>>,
}

impl World {
    fn payer(&self) -> &farebox_evm::anvil::DevAccount {
        &self.anvil.accounts()[1]
    }

    fn recipient(&self) -> Address {
        self.anvil.accounts()[2].address
    }
}

async fn world() -> World {
    world_with(FUNDS, Duration::from_secs(20)).await
}

/// The payer holds `funds`; settlement waits `receipt_timeout` for receipts.
async fn world_with(funds: u64, receipt_timeout: Duration) -> World {
    let anvil = Anvil::start().expect("anvil (run `cargo xtask setup`)");
    let rpc = anvil.rpc().await.unwrap().clone();
    let token = anvil.deploy_token("USDC", "2").await.unwrap();
    anvil.mint(token, anvil.accounts()[1].address, U256::from(funds)).await.unwrap();
    let domain = TokenDomain::new("USDC", "2", anvil.chain_id(), token);
    let evm = EvmChargeConfig::builder(rpc.clone(), anvil.accounts()[3].signer.clone())
        .token(token)
        .described_as(TokenInfo {
            symbol: "USDC".into(),
            decimals: 2,
            eip712_name: "USDC".into(),
            eip712_version: "2".into(),
        })
        .recipient(anvil.accounts()[2].address)
        .receipt_timeout(receipt_timeout)
        .build()
        .unwrap();
    let asset = evm.asset();
    let store = Arc::new(MemoryStore::new());
    let rail = Arc::new(
        MppRail::with_methods(MppConfig::new(REALM, SECRET), None, Some(evm), store.clone())
            .unwrap(),
    );
    let paywall = Paywall::builder()
        .shared_rail(rail.clone())
        .route(PricedRoute::new(None, "/data", Price::one(Money::new(asset, PRICE))).unwrap())
        .build()
        .unwrap();
    let paid_by = Arc::new(Mutex::new(Vec::new()));
    let runs = paid_by.clone();
    let app = Router::new()
        .route(
            "/data",
            axum::routing::get(move |Extension(paid): Extension<Paid>| {
                runs.lock().unwrap().push(paid.payer);
                async { "the data" }
            }),
        )
        .layer(PaywallLayer::new(paywall));
    World { anvil, rpc, app, token, domain, rail, store, paid_by }
}

impl World {
    /// How many times the handler ran.
    fn served(&self) -> usize {
        self.paid_by.lock().unwrap().len()
    }
}

async fn send(app: &Router, auth: Option<&str>) -> (StatusCode, HeaderMap, Value) {
    let mut req = Request::get("/data");
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let res = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let (parts, body) = res.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
    (parts.status, parts.headers, json)
}

async fn challenge(w: &World) -> Challenge {
    let (status, headers, _) = send(&w.app, None).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    let values: Vec<&str> =
        headers.get_all("www-authenticate").iter().map(|v| v.to_str().unwrap()).collect();
    let mut all = farebox_mpp::parse_www_authenticate(values).unwrap();
    assert_eq!(all.len(), 1, "one Payment challenge");
    let c = all.remove(0);
    assert_eq!((c.method.as_str(), c.intent.as_str()), ("evm", "charge"));
    c
}

/// The authorization a client signs for `c`.
fn authorization(w: &World, c: &Challenge) -> TransferWithAuthorization {
    let request = EvmChargeRequest::from_json(&c.request).unwrap();
    TransferWithAuthorization {
        from: w.payer().address,
        to: request.recipient,
        value: request.amount,
        validAfter: U256::ZERO,
        validBefore: U256::from(time::parse(c.expires.as_deref().unwrap()).unwrap()),
        nonce: evm_charge::challenge_nonce(&c.id, &c.realm),
    }
}

fn credential(w: &World, c: &Challenge, auth: &TransferWithAuthorization) -> String {
    let signature = eip3009::sign(&w.payer().signer, &w.domain, auth);
    Credential::new(c, evm_charge::payload(auth, &signature)).to_authorization()
}

async fn balance(w: &World, who: Address) -> U256 {
    w.rpc.balance_of(w.token, who).await.unwrap()
}

fn assert_problem(status: StatusCode, headers: &HeaderMap, body: &Value, name: &str) {
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{body}");
    assert_eq!(body["type"], format!("{PROBLEMS}{name}"), "{body}");
    assert!(headers.get("payment-receipt").is_none(), "never a receipt on an error");
}

#[tokio::test]
async fn challenge_request_matches_mppx_names() {
    let w = world().await;
    let c = challenge(&w).await;
    assert_eq!(c.request["amount"], "150");
    assert_eq!(c.request["currency"], format!("{:#x}", w.token));
    assert_eq!(c.request["recipient"], format!("{:#x}", w.recipient()));
    assert_eq!(c.request["methodDetails"]["chainId"], w.anvil.chain_id());
    assert_eq!(c.request["methodDetails"]["decimals"], 2);
    assert_eq!(c.request["methodDetails"]["credentialTypes"][0], "authorization");
}

#[tokio::test]
async fn pays_and_moves_the_tokens() {
    let w = world().await;
    let c = challenge(&w).await;
    let auth = authorization(&w, &c);
    let (status, headers, body) = send(&w.app, Some(&credential(&w, &c, &auth))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "the data");
    let receipt = PaymentReceipt::decode(headers["payment-receipt"].to_str().unwrap()).unwrap();
    assert_eq!(receipt.method, "evm");
    assert_eq!(receipt.extensions["challengeId"], c.id);
    assert!(receipt.reference.starts_with("0x") && receipt.reference.len() == 66);
    assert_eq!(balance(&w, w.recipient()).await, U256::from(PRICE));
    assert_eq!(balance(&w, w.payer().address).await, U256::from(FUNDS - PRICE as u64));
    let record = w.store.get("mpp", &c.id).await.unwrap().unwrap();
    assert_eq!(record.state, ProofState::Settled);
    assert_eq!(record.reference.as_deref(), Some(receipt.reference.as_str()));
    assert!(w.rpc.authorization_state(w.token, auth.from, auth.nonce).await.unwrap());
}

#[tokio::test]
async fn a_replay_is_refused() {
    let w = world().await;
    let c = challenge(&w).await;
    let cred = credential(&w, &c, &authorization(&w, &c));
    let (status, _, body) = send(&w.app, Some(&cred)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, headers, body) = send(&w.app, Some(&cred)).await;
    assert_problem(status, &headers, &body, "invalid-challenge");
    assert_eq!(balance(&w, w.recipient()).await, U256::from(PRICE), "paid once");
}

#[tokio::test]
async fn a_nonce_not_bound_to_the_challenge_is_refused() {
    let w = world().await;
    let c = challenge(&w).await;
    let mut auth = authorization(&w, &c);
    auth.nonce = B256::repeat_byte(0x42);
    let (status, headers, body) = send(&w.app, Some(&credential(&w, &c, &auth))).await;
    assert_problem(status, &headers, &body, "verification-failed");
    // A nonce bound to another challenge is no better.
    let other = challenge(&w).await;
    auth.nonce = evm_charge::challenge_nonce(&other.id, &other.realm);
    let (status, headers, body) = send(&w.app, Some(&credential(&w, &c, &auth))).await;
    assert_problem(status, &headers, &body, "verification-failed");
    assert_eq!(balance(&w, w.recipient()).await, U256::ZERO);
}

#[tokio::test]
async fn a_wrong_amount_is_refused() {
    let w = world().await;
    let c = challenge(&w).await;
    for value in [PRICE - 1, PRICE + 1] {
        let mut auth = authorization(&w, &c);
        auth.value = U256::from(value);
        let (status, headers, body) = send(&w.app, Some(&credential(&w, &c, &auth))).await;
        assert_problem(status, &headers, &body, "verification-failed");
    }
    assert_eq!(balance(&w, w.recipient()).await, U256::ZERO);
}

#[tokio::test]
async fn a_forged_signature_is_refused() {
    let w = world().await;
    let c = challenge(&w).await;
    let auth = authorization(&w, &c);
    // Signed by someone else, claiming to be the payer.
    let signature = eip3009::sign(&w.anvil.accounts()[5].signer, &w.domain, &auth);
    let cred = Credential::new(&c, evm_charge::payload(&auth, &signature)).to_authorization();
    let (status, headers, body) = send(&w.app, Some(&cred)).await;
    assert_problem(status, &headers, &body, "verification-failed");
    // And an altered signature.
    let mut signature = eip3009::sign(&w.payer().signer, &w.domain, &auth);
    signature[10] ^= 1;
    let cred = Credential::new(&c, evm_charge::payload(&auth, &signature)).to_authorization();
    let (status, headers, body) = send(&w.app, Some(&cred)).await;
    assert_problem(status, &headers, &body, "verification-failed");
    assert_eq!(balance(&w, w.recipient()).await, U256::ZERO);
}

#[tokio::test]
async fn an_expired_challenge_is_refused() {
    let w = world().await;
    let fresh = challenge(&w).await;
    // The same challenge, issued by this server, expired a minute ago.
    let past = time::unix_now().unwrap() - 60;
    let c = w
        .rail
        .key()
        .issue(ChallengeParams {
            realm: fresh.realm.clone(),
            method: fresh.method.clone(),
            intent: fresh.intent.clone(),
            request: fresh.request.clone(),
            expires: Some(time::format(past)),
            description: None,
            digest: None,
            opaque: fresh.opaque_map().unwrap(),
            header: None,
        })
        .unwrap();
    let auth = authorization(&w, &c);
    let (status, headers, body) = send(&w.app, Some(&credential(&w, &c, &auth))).await;
    assert_problem(status, &headers, &body, "payment-expired");
    assert_eq!(balance(&w, w.recipient()).await, U256::ZERO);
}

#[tokio::test]
async fn node_down_is_503() {
    let mut w = world().await;
    let c = challenge(&w).await;
    let cred = credential(&w, &c, &authorization(&w, &c));
    w.anvil.stop();
    let (status, headers, body) = send(&w.app, Some(&cred)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(headers.get("retry-after").is_some());
    assert!(headers.get("payment-receipt").is_none());
    assert!(w.store.get("mpp", &c.id).await.unwrap().is_none(), "nothing reserved");
}

// ---- a payer's payments in flight never take more than its balance ----

/// `n` credentials of the payer, each for its own challenge, sent at once; returns how many
/// were served (200).
async fn pay_all_at_once(w: &World, n: usize) -> usize {
    let mut credentials = Vec::new();
    for _ in 0..n {
        let c = challenge(w).await;
        credentials.push(credential(w, &c, &authorization(w, &c)));
    }
    let tasks: Vec<_> = credentials
        .into_iter()
        .map(|cred| {
            let app = w.app.clone();
            tokio::spawn(async move { send(&app, Some(&cred)).await.0 })
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_charges_of_a_payer_funded_for_one_run_the_handler_once() {
    let w = world_with(PRICE as u64, Duration::from_secs(20)).await;
    let served = pay_all_at_once(&w, 20).await;
    assert_eq!(w.served(), 1, "the handler ran once");
    assert_eq!(served, 1);
    assert_eq!(balance(&w, w.recipient()).await, U256::from(PRICE));
    assert_eq!(balance(&w, w.payer().address).await, U256::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_charges_of_a_payer_funded_for_three_run_the_handler_at_most_thrice() {
    let w = world_with(3 * PRICE as u64, Duration::from_secs(20)).await;
    let served = pay_all_at_once(&w, 20).await;
    let handled = w.served();
    assert!((1..=3).contains(&handled), "the handler ran {handled} times");
    assert_eq!(served, handled);
    let paid = U256::from(handled as u128 * PRICE);
    assert_eq!(balance(&w, w.recipient()).await, paid, "every run was paid");
}

#[tokio::test]
async fn the_payer_is_who_signed_not_the_credentials_source() {
    let w = world().await;
    let c = challenge(&w).await;
    let auth = authorization(&w, &c);
    let signature = eip3009::sign(&w.payer().signer, &w.domain, &auth);
    let someone_else = w.anvil.accounts()[5].address;
    let mut cred = Credential::new(&c, evm_charge::payload(&auth, &signature));
    cred.source = Some(evm_charge::source(w.anvil.chain_id(), someone_else));
    let (status, _, body) = send(&w.app, Some(&cred.to_authorization())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let payer = format!("{:#x}", w.payer().address);
    assert_eq!(*w.paid_by.lock().unwrap(), [Some(payer)]);
}

// ---- the nonce another SDK derives ----

#[tokio::test]
async fn a_nonce_derived_as_a_json_array_is_served() {
    let w = world().await;
    let c = challenge(&w).await;
    let mut auth = authorization(&w, &c);
    auth.nonce = evm_charge::challenge_nonce_json(&c.id, &c.realm);
    let (status, _, body) = send(&w.app, Some(&credential(&w, &c, &auth))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(balance(&w, w.recipient()).await, U256::from(PRICE));
    assert!(w.rpc.authorization_state(w.token, auth.from, auth.nonce).await.unwrap());
}

#[tokio::test]
async fn a_json_array_nonce_of_another_challenge_is_refused() {
    let w = world().await;
    let c = challenge(&w).await;
    let other = challenge(&w).await;
    let mut auth = authorization(&w, &c);
    auth.nonce = evm_charge::challenge_nonce_json(&other.id, &other.realm);
    let (status, headers, body) = send(&w.app, Some(&credential(&w, &c, &auth))).await;
    assert_problem(status, &headers, &body, "verification-failed");
    assert_eq!(balance(&w, w.recipient()).await, U256::ZERO);
    assert_eq!(w.served(), 0);
}

// ---- settlements whose outcome was unknown ----

/// Pays one challenge while the chain mines nothing: settlement times out with the transaction
/// in the mempool. Returns the challenge id and the transaction hash the record keeps.
async fn pay_while_nothing_is_mined(w: &World) -> (String, String) {
    let c = challenge(w).await;
    let (status, headers, body) =
        send(&w.app, Some(&credential(w, &c, &authorization(w, &c)))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(headers.get("payment-receipt").is_none());
    let record = w.store.get("mpp", &c.id).await.unwrap().unwrap();
    assert_eq!(record.state, ProofState::Pending);
    let tx = record.reference.expect("the transaction hash is kept");
    (c.id, tx)
}

async fn automine(w: &World, on: bool) {
    let () = w.rpc.request("evm_setAutomine", (on,)).await.unwrap();
}

#[tokio::test]
async fn a_settlement_mined_after_its_receipt_timed_out_is_settled_by_upkeep() {
    let w = world_with(FUNDS, Duration::from_millis(500)).await;
    automine(&w, false).await;
    let (id, _) = pay_while_nothing_is_mined(&w).await;
    assert_eq!(w.served(), 1, "served once the payment verified (settled after the response)");
    // Not mined yet: upkeep leaves it pending.
    w.rail.maintain().await.unwrap();
    assert_eq!(w.store.get("mpp", &id).await.unwrap().unwrap().state, ProofState::Pending);
    w.anvil.mine().await.unwrap();
    w.rail.maintain().await.unwrap();
    assert_eq!(w.store.get("mpp", &id).await.unwrap().unwrap().state, ProofState::Settled);
    assert_eq!(balance(&w, w.recipient()).await, U256::from(PRICE));
}

#[tokio::test]
async fn a_settlement_that_reverted_after_its_receipt_timed_out_is_failed_by_upkeep() {
    let w = world_with(FUNDS, Duration::from_millis(500)).await;
    automine(&w, false).await;
    let (id, _) = pay_while_nothing_is_mined(&w).await;
    // Before it is mined, the payer moves everything away with a higher tip (anvil orders a
    // block by fees), so the settlement reverts.
    let selector = &alloy_primitives::keccak256("transfer(address,uint256)")[..4];
    let mut data = selector.to_vec();
    data.extend_from_slice(w.anvil.accounts()[7].address.into_word().as_slice());
    data.extend_from_slice(&U256::from(FUNDS).to_be_bytes::<32>());
    let drain = serde_json::json!({
        "from": format!("{:#x}", w.payer().address),
        "to": format!("{:#x}", w.token),
        "data": alloy_primitives::hex::encode_prefixed(&data),
        "gas": "0x30000",
        "maxPriorityFeePerGas": "0x174876e800", // 100 gwei
        "maxFeePerGas": "0x2e90edd000",         // 200 gwei
    });
    let _: B256 = w.rpc.request("eth_sendTransaction", (drain,)).await.unwrap();
    w.anvil.mine().await.unwrap();
    w.rail.maintain().await.unwrap();
    assert_eq!(w.store.get("mpp", &id).await.unwrap().unwrap().state, ProofState::Failed);
    assert_eq!(balance(&w, w.recipient()).await, U256::ZERO, "nothing was paid");
}

#[tokio::test]
async fn configurations_that_would_lose_the_money_are_refused_by_field() {
    let anvil = Anvil::start().expect("anvil (run `cargo xtask setup`)");
    let rpc = anvil.rpc().await.unwrap().clone();
    let key = anvil.accounts()[3].signer.clone();
    let (token, payee) = (Address::repeat_byte(0x70), anvil.accounts()[2].address);
    let usdc = &farebox_evm::usdc::BASE_SEPOLIA;
    let charge = |recipient| {
        EvmChargeConfig::builder(rpc.clone(), key.clone())
            .token(token)
            .described_as(usdc)
            .recipient(recipient)
    };
    assert!(charge(payee).build().is_ok());
    let field = |e: farebox_mpp::ConfigError| match e {
        farebox_mpp::ConfigError::Field { field, .. } => field,
        other => panic!("{other}"),
    };
    assert_eq!(field(charge(Address::ZERO).build().unwrap_err()), "recipient");
    assert_eq!(field(charge(payee).token(Address::ZERO).build().unwrap_err()), "token");
    let unsigned = TokenInfo::unsigned("USDC", 6);
    assert_eq!(field(charge(payee).described_as(unsigned).build().unwrap_err()), "eip712_domain");
    let too_fine = TokenInfo { decimals: 77, ..usdc.into() };
    assert_eq!(field(charge(payee).described_as(too_fine).build().unwrap_err()), "decimals");

    let session = |escrow| {
        farebox_mpp::EvmSessionConfig::builder(rpc.clone(), key.clone())
            .escrow(escrow)
            .token(token)
            .described_as(usdc)
    };
    let escrow = Address::repeat_byte(0x71);
    assert!(session(escrow).build().is_ok());
    assert_eq!(field(session(Address::ZERO).build().unwrap_err()), "escrow");
    assert_eq!(field(session(token).build().unwrap_err()), "escrow");
    assert_eq!(
        field(session(escrow).suggested_deposit(0).build().unwrap_err()),
        "suggested_deposit"
    );
    // A session signs nothing under the token's domain: an unsigned description is enough.
    assert!(session(escrow).described_as(TokenInfo::unsigned("USDC", 6)).build().is_ok());
    let nameless = TokenInfo::unsigned(" ", 6);
    assert_eq!(field(session(escrow).described_as(nameless).build().unwrap_err()), "symbol");
}
