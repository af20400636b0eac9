//! MPP Lightning sessions behind the paywall, on the embedded dev network: a deposit invoice
//! paid once, requests drawn from the balance with the deposit's preimage, a top-up from a
//! fresh challenge, a close refunded to the payer's own amountless invoice, idle sessions closed
//! by the server; every refusal checked for its status and problem type.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use farebox_core::{Money, Price, SessionStatus, SessionStore};
use farebox_lightning::{DevNetwork, DevNode, LightningBackend, Preimage};
use farebox_mpp::lightning::session::{LightningSessionRequest, SessionPayload};
use farebox_mpp::{Challenge, Credential, LightningSessionConfig, MppConfig, MppRail};
use farebox_server::{Paywall, PaywallLayer, PricedRoute};
use farebox_store::MemoryStore;
use http::{HeaderMap, Request, StatusCode};
use serde_json::Value;

const PROBLEMS: &str = "https://paymentauth.org/problems/lightning/";
const PRICE_SAT: u64 = 10;
const DEPOSIT_SAT: u64 = 30;

struct World {
    app: Router,
    rail: Arc<MppRail>,
    server: DevNode,
    wallet: DevNode,
    sessions: Arc<MemoryStore>,
    handled: Arc<AtomicUsize>,
}

fn world(idle_timeout: Duration) -> World {
    let network = DevNetwork::new();
    let server = DevNode::random(&network, 0);
    let wallet = DevNode::random(&network, 1_000_000);
    let sessions = Arc::new(MemoryStore::new());
    let config = LightningSessionConfig {
        deposit_sat: Some(DEPOSIT_SAT),
        idle_timeout,
        ..LightningSessionConfig::default()
    };
    let rail = Arc::new(
        MppRail::builder(
            MppConfig::new("api.example.com", common::SECRET),
            Arc::new(MemoryStore::new()),
        )
        .lightning(Arc::new(server.clone()))
        .lightning_session(config, sessions.clone())
        .build()
        .unwrap(),
    );
    let price = Price::one(Money::sats(PRICE_SAT));
    let paywall = Paywall::builder()
        .shared_rail(rail.clone())
        .route(PricedRoute::new(None, "/data", price.clone()).unwrap())
        .route(PricedRoute::new(None, "/fails", price).unwrap())
        .build()
        .unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let app = Router::new()
        .route(
            "/data",
            axum::routing::get(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                async { "the data" }
            }),
        )
        .route("/fails", axum::routing::get(|| async { (StatusCode::BAD_GATEWAY, "down") }))
        .layer(PaywallLayer::new(paywall));
    World { app, rail, server, wallet, sessions, handled }
}

async fn send(app: &Router, path: &str, auth: Option<&str>) -> (StatusCode, HeaderMap, Value) {
    common::get(app, path, auth.as_slice()).await
}

/// The session challenge of a fresh 402 (there is a charge challenge beside it).
async fn session_challenge(w: &World) -> (Challenge, LightningSessionRequest) {
    let (status, headers, _) = send(&w.app, "/data", None).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    session_challenge_of(&headers)
}

fn session_challenge_of(headers: &HeaderMap) -> (Challenge, LightningSessionRequest) {
    let values: Vec<&str> =
        headers.get_all("www-authenticate").iter().map(|v| v.to_str().unwrap()).collect();
    let c = farebox_mpp::parse_www_authenticate(values)
        .unwrap()
        .into_iter()
        .find(|c| c.intent == "session")
        .expect("a session challenge");
    let r = LightningSessionRequest::from_json(&c.request).unwrap();
    (c, r)
}

fn cred(c: &Challenge, p: &SessionPayload) -> String {
    Credential::new(c, p.to_json()).to_authorization()
}

fn refused(got: &(StatusCode, HeaderMap, Value), name: &str) {
    let (status, headers, body) = got;
    assert_eq!(*status, StatusCode::PAYMENT_REQUIRED, "{body}");
    assert_eq!(body["type"], format!("{PROBLEMS}{name}"), "{body}");
    assert!(headers.get("payment-receipt").is_none());
    assert!(headers.get("www-authenticate").is_some(), "a fresh challenge to start over with");
}

/// Pays the deposit of a fresh challenge and opens a session (serving one request): the
/// challenge, the session id and its bearer preimage.
async fn open(w: &World) -> (Challenge, [u8; 32], Preimage) {
    let (c, r) = session_challenge(w).await;
    let paid = w.wallet.pay(r.deposit_invoice.as_deref().unwrap(), 1_000).await.unwrap();
    let refund = w
        .wallet
        .create_amountless_invoice("refund".into(), Duration::from_secs(30 * 86_400))
        .await
        .unwrap();
    let p = SessionPayload::Open { preimage: paid.preimage, return_invoice: refund.bolt11 };
    let (status, headers, body) = send(&w.app, "/data", Some(&cred(&c, &p))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rc = common::receipt(&headers);
    assert_eq!(rc.method, "lightning");
    assert_eq!(rc.reference, hex::encode(r.payment_hash));
    assert_eq!(rc.extensions["spent"], PRICE_SAT);
    assert_eq!(rc.extensions["balance"], DEPOSIT_SAT - PRICE_SAT);
    (c, r.payment_hash, paid.preimage)
}

#[tokio::test]
async fn a_session_from_deposit_to_refund() {
    let w = world(Duration::from_secs(300));
    let (c, r) = session_challenge(&w).await;
    assert_eq!(r.amount_sat, PRICE_SAT);
    assert_eq!(r.deposit_sat, Some(DEPOSIT_SAT));
    assert_eq!(r.idle_timeout_secs, Some(300));
    drop(c);
    let wallet_before = w.wallet.balance_msat();
    let (c, session, preimage) = open(&w).await;
    let bearer = cred(&c, &SessionPayload::Bearer { session_id: session, preimage });
    // The deposit pays for three requests in all: the opening one and two more.
    for left in [10, 0] {
        let (status, headers, _) = send(&w.app, "/data", Some(&bearer)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(common::receipt(&headers).extensions["balance"], left);
    }
    let short = send(&w.app, "/data", Some(&bearer)).await;
    refused(&short, "insufficient-balance");
    assert_eq!(short.2["sessionId"], hex::encode(session));
    assert_eq!(short.2["balanceRequired"], PRICE_SAT);
    assert_eq!(w.handled.load(Ordering::SeqCst), 3);

    // Top up from the fresh challenge the refusal carried.
    let (fresh, fresh_request) = session_challenge_of(&short.1);
    let topped = w.wallet.pay(fresh_request.deposit_invoice.as_deref().unwrap(), 1_000).await;
    let top_up =
        SessionPayload::TopUp { session_id: session, top_up_preimage: topped.unwrap().preimage };
    let (status, headers, body) = send(&w.app, "/data", Some(&cred(&fresh, &top_up))).await;
    assert_eq!((status, &body["status"]), (StatusCode::OK, &Value::from("ok")));
    assert_eq!(common::receipt(&headers).extensions["deposit"], 2 * DEPOSIT_SAT);
    assert_eq!(w.handled.load(Ordering::SeqCst), 3, "a top-up does not run the handler");
    // The same top-up again counts for nothing.
    refused(&send(&w.app, "/data", Some(&cred(&fresh, &top_up))).await, "unknown-challenge");

    assert_eq!(send(&w.app, "/data", Some(&bearer)).await.0, StatusCode::OK);
    // A failed request is not charged.
    assert_eq!(send(&w.app, "/fails", Some(&bearer)).await.0, StatusCode::BAD_GATEWAY);

    // Close: what is left (60 - 40 = 20 sat) goes back to the payer's return invoice.
    let close = cred(&c, &SessionPayload::Close { session_id: session, preimage });
    let (status, headers, body) = send(&w.app, "/data", Some(&close)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"status": "closed", "refundSats": 20, "refundStatus": "succeeded"})
    );
    assert_eq!(common::receipt(&headers).extensions["refundSats"], 20);
    assert_eq!(w.wallet.balance_msat(), wallet_before - 2 * DEPOSIT_SAT * 1000 + 20_000);
    assert_eq!(w.server.balance_msat(), (2 * DEPOSIT_SAT - 20) * 1000);
    // Closed for good.
    refused(&send(&w.app, "/data", Some(&bearer)).await, "session-closed");
    refused(&send(&w.app, "/data", Some(&close)).await, "session-closed");
    let record = w.sessions.load_session("mpp-lightning-session", &hex::encode(session)).await;
    let record = record.unwrap().unwrap().value;
    assert_eq!(
        (record.status, record.spent, record.settled),
        (SessionStatus::Closed, 40_000, 40_000)
    );
}

#[tokio::test]
async fn bad_session_credentials_get_the_drafts_problem_types() {
    let w = world(Duration::from_secs(300));
    let (c, session, preimage) = open(&w).await;
    // Wrong preimage for the session.
    let wrong = cred(&c, &SessionPayload::Bearer { session_id: session, preimage: [7; 32] });
    refused(&send(&w.app, "/data", Some(&wrong)).await, "invalid-preimage");
    // A session nobody opened (its preimage matches its id, but the server never saw it).
    let stranger = [9u8; 32];
    let id: [u8; 32] = sha256(&stranger);
    let unknown = cred(&c, &SessionPayload::Bearer { session_id: id, preimage: stranger });
    refused(&send(&w.app, "/data", Some(&unknown)).await, "session-not-found");
    // The open's challenge cannot open a second session.
    let again = SessionPayload::Open {
        preimage,
        return_invoice: w
            .wallet
            .create_amountless_invoice("r".into(), Duration::from_secs(86_400))
            .await
            .unwrap()
            .bolt11,
    };
    refused(&send(&w.app, "/data", Some(&cred(&c, &again))).await, "unknown-challenge");

    // An open with a preimage that did not pay the deposit, an expired challenge, and a return
    // invoice that names an amount.
    let (fresh, r) = session_challenge(&w).await;
    let return_invoice = w
        .wallet
        .create_amountless_invoice("r".into(), Duration::from_secs(86_400))
        .await
        .unwrap()
        .bolt11;
    let unpaid = SessionPayload::Open { preimage: [1; 32], return_invoice: return_invoice.clone() };
    refused(&send(&w.app, "/data", Some(&cred(&fresh, &unpaid))).await, "invalid-preimage");
    let paid = w.wallet.pay(r.deposit_invoice.as_deref().unwrap(), 1_000).await.unwrap();
    let expired = common::expired(&fresh, 60);
    let late =
        SessionPayload::Open { preimage: paid.preimage, return_invoice: return_invoice.clone() };
    refused(&send(&w.app, "/data", Some(&cred(&expired, &late))).await, "challenge-expired");
    let with_amount = w
        .wallet
        .create_invoice(farebox_lightning::InvoiceRequest {
            amount_msat: 5_000,
            memo: "r".into(),
            expiry: Duration::from_secs(86_400),
        })
        .await
        .unwrap()
        .bolt11;
    let greedy = SessionPayload::Open { preimage: paid.preimage, return_invoice: with_amount };
    refused(&send(&w.app, "/data", Some(&cred(&fresh, &greedy))).await, "invalid-return-invoice");
    // A return invoice that expires before the idle timeout.
    let short_lived = w
        .wallet
        .create_amountless_invoice("r".into(), Duration::from_secs(60))
        .await
        .unwrap()
        .bolt11;
    let hasty = SessionPayload::Open { preimage: paid.preimage, return_invoice: short_lived };
    refused(&send(&w.app, "/data", Some(&cred(&fresh, &hasty))).await, "invalid-return-invoice");
    // Malformed.
    let mut p = SessionPayload::Bearer { session_id: session, preimage }.to_json();
    p.insert("preimage".into(), "xyz".into());
    refused(
        &send(&w.app, "/data", Some(&Credential::new(&c, p).to_authorization())).await,
        "malformed-credential",
    );
    // After all that, the right open still works: nothing above consumed the challenge.
    let good = SessionPayload::Open { preimage: paid.preimage, return_invoice };
    assert_eq!(send(&w.app, "/data", Some(&cred(&fresh, &good))).await.0, StatusCode::OK);
}

#[tokio::test]
async fn concurrent_bearers_spend_the_balance_once() {
    let w = world(Duration::from_secs(300));
    let (c, session, preimage) = open(&w).await; // 20 sat left: two more requests
    let bearer = cred(&c, &SessionPayload::Bearer { session_id: session, preimage });
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (app, bearer) = (w.app.clone(), bearer.clone());
            tokio::spawn(async move { send(&app, "/data", Some(&bearer)).await.0 })
        })
        .collect();
    let mut served = 0;
    for t in tasks {
        if t.await.unwrap() == StatusCode::OK {
            served += 1;
        }
    }
    assert_eq!(served, 2);
    assert_eq!(w.handled.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn idle_sessions_are_closed_and_refunded_by_the_server() {
    let w = world(Duration::from_secs(1));
    let wallet_before = w.wallet.balance_msat();
    let (c, session, preimage) = open(&w).await;
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(w.rail.close_idle_sessions(Duration::from_secs(86_400)).await.unwrap(), 1);
    // Paid the deposit, spent one request, got the rest back.
    assert_eq!(w.wallet.balance_msat(), wallet_before - PRICE_SAT * 1000);
    let bearer = cred(&c, &SessionPayload::Bearer { session_id: session, preimage });
    refused(&send(&w.app, "/data", Some(&bearer)).await, "session-closed");
    // A session found idle when it is used is closed (and refunded) then and there.
    let wallet_before = w.wallet.balance_msat();
    let (c, session, preimage) = open(&w).await;
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let bearer = cred(&c, &SessionPayload::Bearer { session_id: session, preimage });
    refused(&send(&w.app, "/data", Some(&bearer)).await, "session-closed");
    assert_eq!(w.wallet.balance_msat(), wallet_before - PRICE_SAT * 1000);
}

fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

#[tokio::test]
async fn accept_payment_chooses_and_orders_the_offers() {
    let w = world(Duration::from_secs(300));
    let offers = |accept: Option<&'static str>| {
        let app = w.app.clone();
        async move {
            let mut req = Request::get("/data");
            if let Some(a) = accept {
                req = req.header("accept-payment", a);
            }
            let res = tower::ServiceExt::oneshot(app, req.body(axum::body::Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::PAYMENT_REQUIRED);
            common::challenges(res.headers())
                .into_iter()
                .map(|c| format!("{}/{}", c.method, c.intent))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(offers(None).await, ["lightning/charge", "lightning/session"]);
    assert_eq!(offers(Some("lightning/session")).await, ["lightning/session"]);
    assert_eq!(
        offers(Some("lightning/charge;q=0.5, */session")).await,
        ["lightning/session", "lightning/charge"]
    );
    assert_eq!(offers(Some("*/*;q=0, lightning/charge")).await, ["lightning/charge"]);
    // Nothing this server has, or a malformed header: every offer, as if none was sent.
    assert_eq!(offers(Some("tempo/charge")).await, ["lightning/charge", "lightning/session"]);
    assert_eq!(offers(Some("lightning")).await, ["lightning/charge", "lightning/session"]);
}

#[tokio::test]
async fn a_cheaper_invoice_from_the_node_never_reaches_a_client() {
    use farebox_l402::{DerivedRootKeys, L402Config, L402Rail};
    let network = DevNetwork::new();
    let liar = Arc::new(TestNode::new(DevNode::random(&network, 0), Paying::Slowly));
    let honest = DevNode::random(&network, 0);
    let sessions = Arc::new(MemoryStore::new());
    let mpp = MppRail::builder(
        MppConfig::new("api.example.com", common::SECRET),
        Arc::new(MemoryStore::new()),
    )
    .lightning(liar.clone())
    .lightning_session(LightningSessionConfig::default(), sessions)
    .build()
    .unwrap();
    let keys = Arc::new(DerivedRootKeys::new(&[0x5a; 32]).unwrap());
    let l402 = |backend: Arc<dyn LightningBackend>| {
        L402Rail::new(L402Config::new("api", keys.clone()), backend).unwrap()
    };
    let app = |rails: Vec<Arc<dyn farebox_core::Rail>>| {
        let mut paywall = Paywall::builder();
        for rail in rails {
            paywall = paywall.shared_rail(rail);
        }
        let route = PricedRoute::new(None, "/data", Price::one(Money::sats(PRICE_SAT))).unwrap();
        Router::new()
            .route("/data", axum::routing::get(|| async { "the data" }))
            .layer(PaywallLayer::new(paywall.route(route).build().unwrap()))
    };
    let mpp: Arc<dyn farebox_core::Rail> = Arc::new(mpp);
    let with_honest_l402 = app(vec![mpp.clone(), Arc::new(l402(Arc::new(honest)))]);
    let all_liars = app(vec![mpp, Arc::new(l402(liar.clone()))]);

    // Honest, the MPP offers are there (which pins the node's network).
    let (status, headers, _) = send(&with_honest_l402, "/data", None).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(common::challenges(&headers).len(), 2);

    liar.cheat.store(true, Ordering::SeqCst);
    liar.issued.lock().unwrap().clear();
    // The lying node's rail is left out; the other rail still offers.
    let (status, headers, body) = send(&with_honest_l402, "/data", None).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    let lines: Vec<&str> =
        headers.get_all("www-authenticate").iter().map(|v| v.to_str().unwrap()).collect();
    assert!(!lines.is_empty() && lines.iter().all(|l| l.starts_with("L")), "{lines:?}");
    // Nobody offers anything: refused, never free, and none of the lies in the answer.
    let (status, headers, body2) = send(&all_liars, "/data", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.get("www-authenticate").is_none());
    let issued = liar.issued.lock().unwrap().clone();
    assert!(!issued.is_empty());
    for invoice in issued {
        for text in [body.to_string(), body2.to_string(), format!("{lines:?}")] {
            assert!(!text.contains(&invoice), "a cheaper invoice reached the client");
        }
    }
}

/// How [`TestNode`] pays refunds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Paying {
    /// Pays after a pause, so that concurrent closes overlap.
    Slowly,
    /// Pays, then never answers: the server stops between paying and recording.
    ThenHangs,
    /// Pays, then reports the outcome as unknown (the node's answer was lost).
    ThenLosesTheAnswer,
}

/// The server's node, counting the refunds it is asked to pay, and handing out invoices for
/// half the amount asked once `cheat` is set (re-signed, so each is valid BOLT11).
struct TestNode {
    node: DevNode,
    paying: Paying,
    paid_msat: std::sync::Mutex<Vec<u64>>,
    cheat: std::sync::atomic::AtomicBool,
    issued: std::sync::Mutex<Vec<String>>,
}

impl TestNode {
    fn new(node: DevNode, paying: Paying) -> Self {
        TestNode {
            node,
            paying,
            paid_msat: Default::default(),
            cheat: false.into(),
            issued: Default::default(),
        }
    }
}

#[async_trait::async_trait]
impl LightningBackend for TestNode {
    async fn create_invoice(
        &self,
        request: farebox_lightning::InvoiceRequest,
    ) -> Result<farebox_lightning::CreatedInvoice, farebox_lightning::LightningError> {
        let mut invoice = self.node.create_invoice(request.clone()).await?;
        if self.cheat.load(Ordering::SeqCst) {
            let mut params = farebox_lightning::InvoiceParams::new(
                invoice.payment_hash,
                Some(request.amount_msat / 2),
                request.memo,
            );
            params.expiry = request.expiry;
            let key = farebox_lightning::SecretKey::from_slice(&[7; 32]).unwrap();
            invoice.bolt11 = farebox_lightning::sign_invoice(&params, &key)?;
        }
        self.issued.lock().unwrap().push(invoice.bolt11.clone());
        Ok(invoice)
    }
    async fn invoice_state(
        &self,
        hash: &farebox_lightning::PaymentHash,
    ) -> Result<farebox_lightning::InvoiceState, farebox_lightning::LightningError> {
        self.node.invoice_state(hash).await
    }
    async fn pay(
        &self,
        bolt11: &str,
        max_fee_msat: u64,
    ) -> Result<farebox_lightning::PaymentOutcome, farebox_lightning::LightningError> {
        self.node.pay(bolt11, max_fee_msat).await
    }
    async fn pay_amount(
        &self,
        bolt11: &str,
        amount_msat: u64,
        max_fee_msat: u64,
    ) -> Result<farebox_lightning::PaymentOutcome, farebox_lightning::LightningError> {
        if self.paying == Paying::Slowly {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Every attempt counts: a real node need not refuse a second payment the way the dev
        // node refuses to pay an invoice twice.
        self.paid_msat.lock().unwrap().push(amount_msat);
        let paid = self.node.pay_amount(bolt11, amount_msat, max_fee_msat).await?;
        match self.paying {
            Paying::Slowly => Ok(paid),
            Paying::ThenHangs => std::future::pending().await,
            Paying::ThenLosesTheAnswer => {
                Err(farebox_lightning::LightningError::OutcomeUnknown("connection reset".into()))
            }
        }
    }
}

/// Two server instances (each with its own connection to one SQLite file) in front of one node.
struct Instances {
    apps: [Router; 2],
    rails: [Arc<MppRail>; 2],
    backend: Arc<TestNode>,
    wallet: DevNode,
    sessions: Arc<farebox_store::SqliteStore>,
    _dir: tempfile::TempDir,
}

async fn two_instances(paying: Paying, config: LightningSessionConfig) -> Instances {
    let network = DevNetwork::new();
    let backend = Arc::new(TestNode::new(DevNode::random(&network, 0), paying));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("farebox.sqlite");
    let mut apps = Vec::new();
    let mut rails = Vec::new();
    for _ in 0..2 {
        let store = Arc::new(farebox_store::SqliteStore::open(&path).await.unwrap());
        let rail = Arc::new(
            MppRail::builder(MppConfig::new("api.example.com", common::SECRET), store.clone())
                .lightning(backend.clone())
                .lightning_session(config.clone(), store)
                .build()
                .unwrap(),
        );
        let paywall = Paywall::builder()
            .shared_rail(rail.clone())
            .route(PricedRoute::new(None, "/data", Price::one(Money::sats(PRICE_SAT))).unwrap())
            .build()
            .unwrap();
        apps.push(
            Router::new()
                .route("/data", axum::routing::get(|| async { "the data" }))
                .layer(PaywallLayer::new(paywall)),
        );
        rails.push(rail);
    }
    let sessions = Arc::new(farebox_store::SqliteStore::open(&path).await.unwrap());
    Instances {
        apps: apps.try_into().unwrap_or_else(|_| unreachable!()),
        rails: rails.try_into().unwrap_or_else(|_| unreachable!()),
        backend,
        wallet: DevNode::random(&network, 1_000_000),
        sessions,
        _dir: dir,
    }
}

/// Opens a session on the first instance: its close credential and a bearer one.
async fn open_on(i: &Instances) -> ([u8; 32], String, String) {
    let (status, headers, _) = send(&i.apps[0], "/data", None).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    let (c, r) = session_challenge_of(&headers);
    let paid = i.wallet.pay(r.deposit_invoice.as_deref().unwrap(), 1_000).await.unwrap();
    let refund = i
        .wallet
        .create_amountless_invoice("refund".into(), Duration::from_secs(30 * 86_400))
        .await
        .unwrap();
    let open = SessionPayload::Open { preimage: paid.preimage, return_invoice: refund.bolt11 };
    assert_eq!(send(&i.apps[0], "/data", Some(&cred(&c, &open))).await.0, StatusCode::OK);
    let session = r.payment_hash;
    let close = SessionPayload::Close { session_id: session, preimage: paid.preimage };
    let bearer = SessionPayload::Bearer { session_id: session, preimage: paid.preimage };
    (session, cred(&c, &close), cred(&c, &bearer))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_is_refunded_once_however_many_close_it() {
    let config = LightningSessionConfig {
        deposit_sat: Some(DEPOSIT_SAT),
        idle_timeout: Duration::from_secs(1),
        ..LightningSessionConfig::default()
    };
    let i = two_instances(Paying::Slowly, config).await;
    let wallet_before = i.wallet.balance_msat();
    let (session, close, bearer) = open_on(&i).await;
    // Idle past its timeout: the upkeep and a bearer request will want to close it too.
    tokio::time::sleep(Duration::from_millis(2_100)).await;

    let mut answers = Vec::new();
    let mut ticks = Vec::new();
    for n in 0..6 {
        let (app, close, bearer) = (i.apps[n % 2].clone(), close.clone(), bearer.clone());
        answers.push(tokio::spawn(async move {
            let auth = if n == 5 { bearer } else { close };
            send(&app, "/data", Some(&auth)).await
        }));
        let rail = i.rails[n % 2].clone();
        ticks.push(tokio::spawn(async move {
            rail.close_idle_sessions(Duration::from_secs(86_400)).await.unwrap()
        }));
    }
    for answer in answers {
        let (status, _, body) = answer.await.unwrap();
        match status {
            StatusCode::OK => {
                assert_eq!(body["refundStatus"], "succeeded", "{body}");
                assert_eq!(body["refundSats"], DEPOSIT_SAT - PRICE_SAT, "{body}");
            }
            StatusCode::PAYMENT_REQUIRED => {
                assert_eq!(body["type"], format!("{PROBLEMS}session-closed"), "{body}")
            }
            other => panic!("{other}: {body}"),
        }
    }
    for tick in ticks {
        tick.await.unwrap();
    }
    assert_eq!(*i.backend.paid_msat.lock().unwrap(), [(DEPOSIT_SAT - PRICE_SAT) * 1000]);
    assert_eq!(i.wallet.balance_msat(), wallet_before - PRICE_SAT * 1000);
    let record = i.sessions.load_session("mpp-lightning-session", &hex::encode(session)).await;
    let record = record.unwrap().unwrap().value;
    assert_eq!(
        (record.status, record.settled),
        (SessionStatus::Closed, u128::from(PRICE_SAT) * 1000)
    );
    // Later ticks on either instance change nothing.
    for rail in &i.rails {
        assert_eq!(rail.close_idle_sessions(Duration::from_secs(86_400)).await.unwrap(), 0);
    }
    assert_eq!(i.backend.paid_msat.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_interrupted_after_paying_is_never_paid_again() {
    let config = LightningSessionConfig {
        deposit_sat: Some(DEPOSIT_SAT),
        refund_claim_timeout: Duration::from_secs(1),
        ..LightningSessionConfig::default()
    };
    let i = two_instances(Paying::ThenHangs, config).await;
    let (session, close, _) = open_on(&i).await;
    // The first instance pays, then stops before it can record it.
    let interrupted =
        tokio::time::timeout(Duration::from_millis(500), send(&i.apps[0], "/data", Some(&close)));
    assert!(interrupted.await.is_err(), "the close never answered");
    assert_eq!(i.backend.paid_msat.lock().unwrap().len(), 1);

    // The other instance's upkeep and the client's retried close do not pay again; once the
    // claim is older than its timeout, the refund is recorded as unknown.
    assert_eq!(i.rails[1].close_idle_sessions(Duration::from_secs(86_400)).await.unwrap(), 0);
    let (status, _, body) = send(&i.apps[1], "/data", Some(&close)).await;
    assert_eq!((status, &body["refundStatus"]), (StatusCode::OK, &"pending".into()), "{body}");
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(i.rails[1].close_idle_sessions(Duration::from_secs(86_400)).await.unwrap(), 1);
    assert_eq!(i.rails[0].close_idle_sessions(Duration::from_secs(86_400)).await.unwrap(), 0);
    let record = i.sessions.load_session("mpp-lightning-session", &hex::encode(session)).await;
    let record = record.unwrap().unwrap().value;
    assert_eq!(record.status, SessionStatus::Closed);
    assert!(record.data.contains("\"unknown\""), "{}", record.data);
    refused(&send(&i.apps[1], "/data", Some(&close)).await, "session-closed");
    assert_eq!(i.backend.paid_msat.lock().unwrap().len(), 1, "paid once");
}

#[tokio::test]
async fn a_refund_whose_answer_was_lost_is_reported_unknown_and_not_retried() {
    let config = LightningSessionConfig {
        deposit_sat: Some(DEPOSIT_SAT),
        ..LightningSessionConfig::default()
    };
    let i = two_instances(Paying::ThenLosesTheAnswer, config).await;
    let (_, close, _) = open_on(&i).await;
    let (status, _, body) = send(&i.apps[0], "/data", Some(&close)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["refundStatus"], "unknown");
    for rail in &i.rails {
        rail.close_idle_sessions(Duration::from_secs(86_400)).await.unwrap();
    }
    refused(&send(&i.apps[1], "/data", Some(&close)).await, "session-closed");
    assert_eq!(i.backend.paid_msat.lock().unwrap().len(), 1);
}

#[test]
fn session_policies_that_cannot_work_are_refused_by_field() {
    let node = Arc::new(DevNode::random(&DevNetwork::new(), 0));
    let build = |config: LightningSessionConfig| {
        MppRail::builder(
            MppConfig::new("api.example.com", common::SECRET),
            Arc::new(MemoryStore::new()),
        )
        .lightning(node.clone())
        .lightning_session(config, Arc::new(MemoryStore::new()))
        .build()
    };
    let field = |config| match build(config) {
        Err(farebox_mpp::ConfigError::Field { field, .. }) => field,
        Err(other) => panic!("{other}"),
        Ok(_) => "built",
    };
    let good = LightningSessionConfig::default();
    assert_eq!(field(good.clone()), "built");
    assert_eq!(
        field(LightningSessionConfig { deposit_sat: Some(0), ..good.clone() }),
        "deposit_sat"
    );
    assert_eq!(field(LightningSessionConfig { deposit_units: 0, ..good.clone() }), "deposit_units");
    // A fixed deposit needs no multiple of the price.
    let fixed = LightningSessionConfig { deposit_sat: Some(500), deposit_units: 0, ..good.clone() };
    assert_eq!(field(fixed), "built");
    let instant = LightningSessionConfig { idle_timeout: Duration::ZERO, ..good.clone() };
    assert_eq!(field(instant), "idle_timeout");
    let never = LightningSessionConfig { refund_claim_timeout: Duration::ZERO, ..good };
    assert_eq!(field(never), "refund_claim_timeout");
}
