//! The MPP `evm` charge behind the paywall, on a real anvil running FareboxUSD (EIP-712 domain
//! "USDC" / "2", 2 decimals). Credentials are built the way mppx builds them: EIP-3009 with
//! `nonce = keccak256(id ‖ realm)`, `validAfter = 0`, `validBefore = expires`.
//!
//! Each test starts its own anvil.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use farebox_core::{Money, Price, ProofState, ReplayStore};
use farebox_evm::anvil::Anvil;
use farebox_evm::eip3009::{self, TokenDomain, TransferWithAuthorization};
use farebox_evm::{Address, B256, EvmRpc, U256};
use farebox_mpp::evm_charge::{self, EvmChargeRequest};
use farebox_mpp::{
    Challenge, ChallengeParams, Credential, EvmChargeConfig, MppConfig, MppRail, PaymentReceipt,
    time,
};
use farebox_server::{Paywall, PaywallLayer, PricedRoute};
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
    let anvil = Anvil::start().expect("anvil (run `cargo xtask setup`)");
    let rpc = anvil.rpc().await.unwrap().clone();
    let token = anvil.deploy_token("USDC", "2").await.unwrap();
    anvil.mint(token, anvil.accounts()[1].address, U256::from(FUNDS)).await.unwrap();
    let domain = TokenDomain::new("USDC", "2", anvil.chain_id(), token);
    let evm = EvmChargeConfig::new(
        rpc.clone(),
        anvil.accounts()[3].signer.clone(),
        token,
        "USDC",
        "2",
        2,
        anvil.accounts()[2].address,
    );
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
    let app = Router::new()
        .route("/data", axum::routing::get(|| async { "the data" }))
        .layer(PaywallLayer::new(paywall));
    World { anvil, rpc, app, token, domain, rail, store }
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
    let past = time::unix_now() - 60;
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
}
