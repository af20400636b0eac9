//! The MPP rail end to end behind the paywall, next to the L402 rail on the same Lightning node:
//! what a client sees for a payment and for each way a credential can be wrong.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use farebox_core::{Money, Price, ReplayStore};
use farebox_l402::{DerivedRootKeys, L402Config, L402Rail};
use farebox_lightning::{DevNetwork, DevNode, LightningBackend, bolt11};
use farebox_mpp::lightning::charge::{self as lightning_charge, LightningChargeRequest};
use farebox_mpp::{Challenge, Credential, MppConfig, MppRail, PaymentReceipt, jcs};
use farebox_server::{Paywall, PaywallLayer, PricedRoute};
use farebox_store::MemoryStore;
use http::{HeaderMap, Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;

const SECRET: &[u8] = b"an-mpp-test-secret-of-at-least-32-bytes!";
const PROBLEMS: &str = "https://paymentauth.org/problems/";

struct World {
    app: Router,
    server: DevNode,
    wallet: DevNode,
    store: Arc<MemoryStore>,
    rail: Arc<MppRail>,
}

fn world() -> World {
    let network = DevNetwork::new();
    let server = DevNode::random(&network, 0);
    let wallet = DevNode::random(&network, 10_000_000);
    let store = Arc::new(MemoryStore::new());
    let backend: Arc<dyn LightningBackend> = Arc::new(server.clone());
    let mpp = Arc::new(
        MppRail::new(MppConfig::new("api.example.com", SECRET), backend.clone(), store.clone())
            .unwrap(),
    );
    let l402 = L402Rail::new(
        L402Config::new("api", Arc::new(DerivedRootKeys::new(&[0x5a; 32]).unwrap())),
        backend,
    )
    .unwrap();
    let price = Price::one(Money::sats(21));
    let paywall = Paywall::builder()
        .rail(l402)
        .shared_rail(mpp.clone())
        .route(PricedRoute::new(None, "/data", price.clone()).unwrap().describe("market data"))
        .route(PricedRoute::new(None, "/other", price.clone()).unwrap())
        .route(PricedRoute::new(None, "/cheap", Price::one(Money::sats(1))).unwrap())
        .route(PricedRoute::new(None, "/fails", price).unwrap())
        .build()
        .unwrap();
    let app = Router::new()
        .route("/data", axum::routing::get(|| async { "the data" }))
        .route("/other", axum::routing::get(|| async { "other" }))
        .route("/cheap", axum::routing::get(|| async { "cheap" }))
        .route(
            "/fails",
            axum::routing::get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        )
        .layer(PaywallLayer::new(paywall));
    World { app, server, wallet, store, rail: mpp }
}

async fn send(app: &Router, path: &str, auth: &[String]) -> (StatusCode, HeaderMap, Value) {
    let mut req = Request::get(path);
    for a in auth {
        req = req.header("authorization", a);
    }
    let res = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let (parts, body) = res.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
    (parts.status, parts.headers, json)
}

fn payment_challenge(headers: &HeaderMap) -> Challenge {
    let values: Vec<&str> =
        headers.get_all("www-authenticate").iter().map(|v| v.to_str().unwrap()).collect();
    let mut all = farebox_mpp::parse_www_authenticate(values).unwrap();
    assert_eq!(all.len(), 1, "one Payment challenge");
    all.remove(0)
}

/// Asks `path` for a challenge and pays its invoice: the challenge and the paid credential.
async fn pay(w: &World, path: &str) -> (Challenge, Credential) {
    let (status, headers, _) = send(&w.app, path, &[]).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    let challenge = payment_challenge(&headers);
    let request = LightningChargeRequest::from_json(&challenge.request).unwrap();
    let paid = w.wallet.pay(&request.invoice, 0).await.unwrap();
    let credential = Credential::new(&challenge, lightning_charge::payload(&paid.preimage));
    (challenge, credential)
}

fn assert_problem(status: StatusCode, headers: &HeaderMap, body: &Value, name: &str) {
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{body}");
    assert_eq!(body["type"], format!("{PROBLEMS}{name}"), "{body}");
    assert!(headers.get("payment-receipt").is_none(), "never a receipt on an error");
    // A fresh challenge comes with every 402.
    let _ = payment_challenge(headers);
}

#[tokio::test]
async fn one_402_offers_payment_next_to_l402() {
    let w = world();
    let (status, headers, body) = send(&w.app, "/data", &[]).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(headers["cache-control"], "no-store");
    let schemes: Vec<String> = headers
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().split(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(schemes, ["LSAT", "L402", "Payment"]);
    assert_eq!(body["status"], 402);

    let c = payment_challenge(&headers);
    assert_eq!(
        (c.realm.as_str(), c.method.as_str(), c.intent.as_str()),
        ("api.example.com", "lightning", "charge")
    );
    assert_eq!(c.description.as_deref(), Some("market data"));
    assert!(w.rail.key().verify_id(&c.slots(), &c.id));
    let expires = farebox_mpp::time::parse(c.expires.as_deref().unwrap()).unwrap();
    let now = farebox_mpp::time::unix_now().unwrap();
    assert!(expires > now && expires <= now + 301);
    assert_eq!(c.opaque_map().unwrap().unwrap()["route"], "/data");
    assert_eq!(c.request["amount"], "21");
    assert_eq!(c.request["currency"], "sat");
    assert_eq!(c.request["methodDetails"]["network"], "regtest");
    let r = LightningChargeRequest::from_json(&c.request).unwrap();
    let invoice = bolt11::parse_invoice(&r.invoice).unwrap();
    assert_eq!(invoice.amount_msat, Some(21_000));
    assert_eq!(invoice.payment_hash, r.payment_hash);
    assert_eq!(c.request_b64, jcs::encode_b64_jcs(&c.request).unwrap(), "request is JCS");
}

#[tokio::test]
async fn a_paid_credential_is_served_once_with_a_receipt() {
    let w = world();
    let (challenge, credential) = pay(&w, "/data").await;
    let auth = credential.to_authorization();
    let (status, headers, body) = send(&w.app, "/data", std::slice::from_ref(&auth)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "the data");
    assert!(headers["cache-control"].to_str().unwrap().contains("private"));
    let receipt = PaymentReceipt::decode(headers["payment-receipt"].to_str().unwrap()).unwrap();
    let request = LightningChargeRequest::from_json(&challenge.request).unwrap();
    assert_eq!(receipt.status, "success");
    assert_eq!(receipt.method, "lightning");
    assert_eq!(receipt.reference, hex::encode(request.payment_hash));
    assert_eq!(receipt.extensions["challengeId"], challenge.id.as_str());
    farebox_mpp::time::parse(&receipt.timestamp).unwrap();
    assert_eq!(w.server.balance_msat(), 21_000);

    // The same credential again: refused, with a fresh challenge to pay.
    let (status, headers, body) = send(&w.app, "/data", &[auth]).await;
    assert_problem(status, &headers, &body, "invalid-challenge");
    let record = w.store.get("mpp", &challenge.id).await.unwrap().unwrap();
    assert_eq!(record.state, farebox_core::ProofState::Settled);
}

#[tokio::test]
async fn concurrent_replays_are_served_at_most_once() {
    let w = world();
    let (_, credential) = pay(&w, "/data").await;
    let auth = credential.to_authorization();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (app, auth) = (w.app.clone(), auth.clone());
            tokio::spawn(async move { send(&app, "/data", &[auth]).await.0 })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() == StatusCode::OK {
            ok += 1;
        }
    }
    assert_eq!(ok, 1);
}

#[tokio::test]
async fn a_tampered_challenge_is_refused() {
    let w = world();
    let (_, credential) = pay(&w, "/data").await;

    let mut bad_id = credential.clone();
    bad_id.challenge.id = format!("A{}", &bad_id.challenge.id[1..]);
    if bad_id.challenge.id == credential.challenge.id {
        bad_id.challenge.id = format!("B{}", &bad_id.challenge.id[1..]);
    }
    let (status, headers, body) = send(&w.app, "/data", &[bad_id.to_authorization()]).await;
    assert_problem(status, &headers, &body, "invalid-challenge");

    // A cheaper amount written into the request breaks the binding.
    let mut cheaper = credential.clone();
    let mut request = farebox_mpp::challenge::decode_request(&cheaper.challenge.request).unwrap();
    request["amount"] = json!("1");
    cheaper.challenge.request = jcs::encode_b64_jcs(&request).unwrap();
    let (status, headers, body) = send(&w.app, "/data", &[cheaper.to_authorization()]).await;
    assert_problem(status, &headers, &body, "invalid-challenge");

    // A longer lifetime, likewise.
    let mut later = credential.clone();
    later.challenge.expires = Some("2099-01-01T00:00:00Z".into());
    let (status, headers, body) = send(&w.app, "/data", &[later.to_authorization()]).await;
    assert_problem(status, &headers, &body, "invalid-challenge");

    // Untouched, it still works (nothing above consumed it).
    let (status, _, body) = send(&w.app, "/data", &[credential.to_authorization()]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_wrong_preimage_fails_verification() {
    let w = world();
    let (challenge, _) = pay(&w, "/data").await;
    let wrong = Credential::new(&challenge, lightning_charge::payload(&[0x11; 32]));
    let (status, headers, body) = send(&w.app, "/data", &[wrong.to_authorization()]).await;
    assert_problem(status, &headers, &body, "verification-failed");

    let mut no_preimage = Credential::new(&challenge, serde_json::Map::new());
    no_preimage.source = Some("did:example:1".into());
    let (status, headers, body) = send(&w.app, "/data", &[no_preimage.to_authorization()]).await;
    assert_problem(status, &headers, &body, "malformed-credential");
}

#[tokio::test]
async fn a_challenge_for_another_route_is_refused() {
    let w = world();
    let (_, credential) = pay(&w, "/other").await;
    let (status, headers, body) = send(&w.app, "/data", &[credential.to_authorization()]).await;
    assert_problem(status, &headers, &body, "invalid-challenge");
    assert!(body["detail"].as_str().unwrap().contains("another route"), "{body}");
    // It still pays for the route it was issued for.
    let (status, _, _) = send(&w.app, "/other", &[credential.to_authorization()]).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn an_expired_challenge_is_refused() {
    let w = world();
    let (challenge, credential) = pay(&w, "/data").await;
    let resource = farebox_core::Resource {
        method: http::Method::GET,
        path: "/data".into(),
        route: "/data".into(),
        price: Price::one(Money::sats(21)),
        description: None,
        accept_payment: None,
    };
    let auth = credential.to_authorization();
    let expires = farebox_mpp::time::parse(challenge.expires.as_deref().unwrap()).unwrap();
    assert!(w.rail.check_credential(&resource, &auth, expires).is_ok(), "valid up to expires");
    let e = w.rail.check_credential(&resource, &auth, expires + 1).unwrap_err();
    assert_eq!(e.to_problem().type_uri, format!("{PROBLEMS}payment-expired"));
    assert_eq!(e.kind.status(), StatusCode::PAYMENT_REQUIRED);

    // A price raised since the challenge was issued: the old challenge pays too little.
    let dearer = farebox_core::Resource { price: Price::one(Money::sats(22)), ..resource };
    let e = w.rail.check_credential(&dearer, &auth, expires).unwrap_err();
    assert_eq!(e.to_problem().type_uri, format!("{PROBLEMS}payment-insufficient"));
}

#[tokio::test]
async fn malformed_credentials_get_a_fresh_402() {
    let w = world();
    for bad in ["Payment !!!not-base64!!!", "Payment W10", "Payment e30", "Payment bm90IGpzb24"] {
        let (status, headers, body) = send(&w.app, "/data", &[bad.to_string()]).await;
        assert_problem(status, &headers, &body, "malformed-credential");
    }
}

#[tokio::test]
async fn another_method_is_unsupported() {
    let w = world();
    let (_, mut credential) = pay(&w, "/data").await;
    credential.challenge.method = "tempo".into();
    let (status, headers, body) = send(&w.app, "/data", &[credential.to_authorization()]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["type"], format!("{PROBLEMS}method-unsupported"));
    assert!(headers.get("www-authenticate").is_none());
}

#[tokio::test]
async fn two_credentials_are_a_bad_request() {
    let w = world();
    let (_, credential) = pay(&w, "/data").await;
    let (status, _, _) =
        send(&w.app, "/data", &[credential.to_authorization(), "L402 abc:00".into()]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_failed_handler_gives_the_challenge_back() {
    let w = world();
    let (challenge, credential) = pay(&w, "/fails").await;
    let auth = credential.to_authorization();
    let (status, _, _) = send(&w.app, "/fails", std::slice::from_ref(&auth)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(w.store.get("mpp", &challenge.id).await.unwrap(), None, "reservation released");
    let (status, _, _) = send(&w.app, "/fails", &[auth]).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "the credential was usable again");
}

#[tokio::test]
async fn a_cheap_challenge_does_not_pay_for_a_dear_route() {
    let w = world();
    let (_, credential) = pay(&w, "/cheap").await;
    // Bound to /cheap: refused on /data before the amount is even looked at.
    let (status, headers, body) = send(&w.app, "/data", &[credential.to_authorization()]).await;
    assert_problem(status, &headers, &body, "invalid-challenge");
}

#[tokio::test]
async fn a_lightning_outage_fails_closed() {
    let w = world();
    w.server.set_available(false);
    let (status, headers, _) = send(&w.app, "/data", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.get("retry-after").is_some());
    assert!(headers.get("www-authenticate").is_none());
}

#[tokio::test]
async fn config_is_checked() {
    let network = DevNetwork::new();
    let backend: Arc<dyn LightningBackend> = Arc::new(DevNode::random(&network, 0));
    let store: Arc<dyn ReplayStore> = Arc::new(MemoryStore::new());
    let short = MppConfig::new("r", &b"too short"[..]);
    assert!(MppRail::new(short, backend.clone(), store.clone()).is_err());
    let bad_realm = MppConfig::new("caf\u{e9}", SECRET);
    assert!(MppRail::new(bad_realm, backend.clone(), store.clone()).is_err());
    let mut zero = MppConfig::new("r", SECRET);
    zero.challenge_ttl = std::time::Duration::ZERO;
    assert!(MppRail::new(zero, backend, store).is_err());
}

/// A node that, like LNbits, reveals the preimages of unpaid invoices (and can go down).
struct LeakyNode {
    node: DevNode,
    down: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl LightningBackend for LeakyNode {
    async fn create_invoice(
        &self,
        request: farebox_lightning::InvoiceRequest,
    ) -> Result<farebox_lightning::CreatedInvoice, farebox_lightning::LightningError> {
        self.node.create_invoice(request).await
    }

    async fn invoice_state(
        &self,
        hash: &farebox_lightning::PaymentHash,
    ) -> Result<farebox_lightning::InvoiceState, farebox_lightning::LightningError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(farebox_lightning::LightningError::Unavailable("down".into()));
        }
        self.node.invoice_state(hash).await
    }

    async fn pay(
        &self,
        bolt11: &str,
        max_fee_msat: u64,
    ) -> Result<farebox_lightning::PaymentOutcome, farebox_lightning::LightningError> {
        self.node.pay(bolt11, max_fee_msat).await
    }

    fn preimage_proves_payment(&self) -> bool {
        false
    }
}

#[tokio::test]
async fn a_leaked_preimage_of_an_unpaid_invoice_is_refused_and_the_paid_one_served() {
    let network = DevNetwork::new();
    let server = DevNode::random(&network, 0);
    let wallet = DevNode::random(&network, 10_000_000);
    let leaky = Arc::new(LeakyNode { node: server.clone(), down: Default::default() });
    let store = Arc::new(MemoryStore::new());
    let mpp =
        MppRail::new(MppConfig::new("api.example.com", SECRET), leaky.clone(), store).unwrap();
    let paywall = Paywall::builder()
        .rail(mpp)
        .route(PricedRoute::new(None, "/data", Price::one(Money::sats(21))).unwrap())
        .build()
        .unwrap();
    let app = Router::new()
        .route("/data", axum::routing::get(|| async { "the data" }))
        .layer(PaywallLayer::new(paywall));

    let (status, headers, _) = send(&app, "/data", &[]).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    let challenge = payment_challenge(&headers);
    let request = LightningChargeRequest::from_json(&challenge.request).unwrap();
    let leaked = server.leaked_preimage(&request.payment_hash).unwrap();
    let auth = Credential::new(&challenge, lightning_charge::payload(&leaked)).to_authorization();
    // Unpaid: the right preimage buys nothing.
    let (status, headers, body) = send(&app, "/data", std::slice::from_ref(&auth)).await;
    assert_problem(status, &headers, &body, "verification-failed");
    // The node cannot say: 503 with Retry-After.
    leaky.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let (status, headers, _) = send(&app, "/data", std::slice::from_ref(&auth)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key("retry-after"));
    leaky.down.store(false, std::sync::atomic::Ordering::SeqCst);
    // Paid: the same credential is served.
    wallet.pay(&request.invoice, 0).await.unwrap();
    let (status, _, body) = send(&app, "/data", &[auth]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "the data");
}

/// A Lightning session's deposit preimage is its bearer secret: a backend that reveals
/// preimages (LNbits, to whoever asks about the session id) would let anyone spend or close it.
#[tokio::test]
async fn lightning_sessions_on_a_backend_that_reveals_preimages_are_refused_at_start() {
    let network = DevNetwork::new();
    let leaky =
        Arc::new(LeakyNode { node: DevNode::random(&network, 0), down: Default::default() });
    let sessions = Arc::new(MemoryStore::new());
    let built = MppRail::builder(MppConfig::new("api.example.com", SECRET), sessions.clone())
        .lightning(leaky)
        .lightning_session(farebox_mpp::LightningSessionConfig::default(), sessions)
        .build();
    assert!(matches!(built, Err(farebox_mpp::ConfigError::SessionBackendRevealsPreimages)));
}
