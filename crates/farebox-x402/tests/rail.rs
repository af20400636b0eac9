//! The x402 rail behind the paywall, with a scripted facilitator: what a client sees for each
//! outcome the facilitator can report, and that a nonce is never accepted twice.
//! (The same rail against a real chain is in `tests/chain.rs`.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use farebox_core::{Asset, Money, Price, ReplayStore};
use farebox_server::{Paywall, PaywallLayer, PricedRoute};
use farebox_store::MemoryStore;
use farebox_x402::facilitator::http_client::RemoteFacilitator;
use farebox_x402::facilitator::{Facilitator, FacilitatorError};
use farebox_x402::facilitator_api::{
    SettleResponse, SupportedResponse, VerifyResponse, VersionedPayment,
};
use farebox_x402::{Payload, Reason, Reconciled, X402Config, X402Rail, codec, v1, v2};
use http::{Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;

const PAY_TO: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";
const ASSET: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
const PAYER: &str = "0x857b06519E91e3A54538791bDbb0E22373e36b66";

#[derive(Clone, Copy, PartialEq)]
enum Script {
    Ok,
    Invalid,
    Down,
    Pending,
    Reverted,
    /// Refused before broadcast (gas estimation): no transaction.
    Refused,
}

struct Scripted {
    verify: Mutex<Script>,
    settle: Mutex<Script>,
    settles: AtomicUsize,
    verifies: AtomicUsize,
    /// What `authorization_used` answers (reconciliation's view of the chain).
    used: Mutex<Result<Option<bool>, FacilitatorError>>,
}

#[async_trait]
impl Facilitator for Scripted {
    async fn verify(&self, _: &VersionedPayment) -> Result<VerifyResponse, FacilitatorError> {
        self.verifies.fetch_add(1, Ordering::SeqCst);
        match *self.verify.lock().unwrap() {
            Script::Down => Err(FacilitatorError::Unavailable("scripted outage".into())),
            Script::Invalid => {
                Ok(VerifyResponse::invalid(Reason::InsufficientFunds, 2, Some(PAYER.into())))
            }
            _ => Ok(VerifyResponse::valid(PAYER.into())),
        }
    }
    async fn settle(&self, r: &VersionedPayment) -> Result<SettleResponse, FacilitatorError> {
        self.settles.fetch_add(1, Ordering::SeqCst);
        let network = r.network().to_string();
        match *self.settle.lock().unwrap() {
            Script::Down => Err(FacilitatorError::Unavailable("scripted outage".into())),
            Script::Pending => {
                let mut s =
                    SettleResponse::failure(Reason::SettlementPending, network, Some(PAYER.into()));
                s.transaction = "0xfeed".into();
                Ok(s)
            }
            Script::Refused => {
                Ok(SettleResponse::failure(Reason::InsufficientFunds, network, Some(PAYER.into())))
            }
            Script::Reverted => {
                let mut s =
                    SettleResponse::failure(Reason::TransactionFailed, network, Some(PAYER.into()));
                s.transaction = "0xdead".into();
                Ok(s)
            }
            _ => Ok(SettleResponse::success("0xbeef".into(), network, Some(PAYER.into()))),
        }
    }
    async fn supported(&self) -> Result<SupportedResponse, FacilitatorError> {
        Err(FacilitatorError::Unavailable("not scripted".into()))
    }
    async fn authorization_used(
        &self,
        network: &str,
        token: farebox_evm::Address,
        from: farebox_evm::Address,
        _: farebox_evm::B256,
    ) -> Result<Option<bool>, FacilitatorError> {
        assert_eq!(network, "eip155:84532");
        assert_eq!(token, ASSET.parse::<farebox_evm::Address>().unwrap());
        assert_eq!(from, PAYER.parse::<farebox_evm::Address>().unwrap());
        self.used.lock().unwrap().clone()
    }
}

struct World {
    app: Router,
    facilitator: Arc<Scripted>,
    store: Arc<MemoryStore>,
    rail: Arc<X402Rail>,
}

fn scripted() -> Arc<Scripted> {
    Arc::new(Scripted {
        verify: Mutex::new(Script::Ok),
        settle: Mutex::new(Script::Ok),
        settles: AtomicUsize::new(0),
        verifies: AtomicUsize::new(0),
        used: Mutex::new(Ok(None)),
    })
}

/// Verifies with the scripted facilitator, settles with another (e.g. one over HTTP).
struct Split {
    verify: Arc<Scripted>,
    settle: Arc<dyn Facilitator>,
}

#[async_trait]
impl Facilitator for Split {
    async fn verify(&self, r: &VersionedPayment) -> Result<VerifyResponse, FacilitatorError> {
        self.verify.verify(r).await
    }
    async fn settle(&self, r: &VersionedPayment) -> Result<SettleResponse, FacilitatorError> {
        self.settle.settle(r).await
    }
    async fn supported(&self) -> Result<SupportedResponse, FacilitatorError> {
        self.settle.supported().await
    }
}

fn config() -> X402Config {
    X402Config::builder()
        .network("eip155:84532")
        .asset(ASSET)
        .described_as(&farebox_evm::usdc::BASE_SEPOLIA)
        .pay_to(PAY_TO)
        .max_timeout_seconds(60)
        .public_url("https://api.example.com")
        .offer_v1(true)
        .build()
        .unwrap()
}

fn world() -> World {
    let facilitator = scripted();
    world_with(facilitator.clone(), facilitator)
}

/// The paywall with `settle` as the rail's facilitator; `scripted` is the one tests script.
fn world_with(scripted: Arc<Scripted>, facilitator: Arc<dyn Facilitator>) -> World {
    let store = Arc::new(MemoryStore::new());
    let rail = Arc::new(X402Rail::new(config(), facilitator, store.clone()));
    let price = Price::one(Money::new(Asset::Token(config().token()), 10_000));
    let paywall = Paywall::builder()
        .shared_rail(rail.clone())
        .route(PricedRoute::new(None, "/data", price).unwrap().describe("market data"))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/data", axum::routing::get(|| async { "the data" }))
        .route(
            "/data-fails",
            axum::routing::get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        )
        .layer(PaywallLayer::new(paywall));
    World { app, facilitator: scripted, store, rail }
}

async fn send(
    app: &Router,
    header: Option<(&str, String)>,
) -> (StatusCode, http::HeaderMap, Value) {
    let mut req = Request::get("/data");
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

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A payload with well-formed fields (the signature is checked by the facilitator, scripted here).
fn exact_payload(nonce_byte: u8) -> Payload {
    payload_of(nonce_byte, "10000")
}

/// [`exact_payload`] authorizing `value`.
fn payload_of(nonce_byte: u8, value: &str) -> Payload {
    Payload::from_serialize(&json!({
        "signature": format!("0x{}", "11".repeat(65)),
        "authorization": {
            "from": PAYER, "to": PAY_TO, "value": value,
            "validAfter": (now() - 600).to_string(), "validBefore": (now() + 60).to_string(),
            "nonce": format!("0x{}", format!("{nonce_byte:02x}").repeat(32)),
        }
    }))
    .unwrap()
}

/// The client side: reads the 402's v2 requirement and echoes it.
async fn v2_payment(w: &World, nonce_byte: u8) -> String {
    v2_paying(w, exact_payload(nonce_byte)).await
}

/// The client side, paying the v2 requirement with `payload`.
async fn v2_paying(w: &World, payload: Payload) -> String {
    let (status, headers, _) = send(&w.app, None).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    let required: v2::PaymentRequired =
        codec::decode_header(headers["payment-required"].to_str().unwrap()).unwrap();
    let payload = v2::PaymentPayload {
        x402_version: farebox_x402::Version,
        resource: Some(required.resource.clone()),
        accepted: required.accepts[0].clone(),
        payload,
        extensions: None,
    };
    codec::encode_header(&payload)
}

/// The v1 client side: reads the 402 body's requirement and pays it with `payload`.
async fn v1_paying(w: &World, payload: Payload) -> String {
    let (_, _, body) = send(&w.app, None).await;
    let accepts: Vec<v1::PaymentRequirements> =
        serde_json::from_value(body["accepts"].clone()).unwrap();
    let payment = v1::PaymentPayload {
        x402_version: farebox_x402::Version,
        scheme: accepts[0].scheme.clone(),
        network: accepts[0].network.clone(),
        payload,
    };
    codec::encode_header(&payment)
}

/// The `error` of a 402: v2's (`PAYMENT-REQUIRED`) and v1's (the body).
fn errors(headers: &http::HeaderMap, body: &Value) -> (String, String) {
    let required: v2::PaymentRequired =
        codec::decode_header(headers["payment-required"].to_str().unwrap()).unwrap();
    (required.error.unwrap_or_default(), body["error"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn one_402_offers_v2_in_the_header_and_v1_in_the_body() {
    let w = world();
    let (status, headers, body) = send(&w.app, None).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    let required: v2::PaymentRequired =
        codec::decode_header(headers["payment-required"].to_str().unwrap()).unwrap();
    let req = &required.accepts[0];
    assert_eq!(
        (req.scheme.as_str(), req.network.as_str(), req.amount.as_str()),
        ("exact", "eip155:84532", "10000")
    );
    assert_eq!(req.extra.as_ref().unwrap()["name"], "USDC");
    assert_eq!(required.resource.url, "https://api.example.com/data");
    assert_eq!(body["x402Version"], 1);
    let v1: Vec<v1::PaymentRequirements> = serde_json::from_value(body["accepts"].clone()).unwrap();
    assert_eq!(v1[0].network, "base-sepolia");
    assert_eq!(v1[0].max_amount_required.as_str(), "10000");
    assert_eq!(body["status"], 402, "the body is still a problem+json object");
}

#[tokio::test]
async fn a_valid_payment_is_served_with_a_settlement_receipt() {
    let w = world();
    let payment = v2_payment(&w, 1).await;
    let (status, headers, body) = send(&w.app, Some(("PAYMENT-SIGNATURE", payment))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "the data");
    let receipt: v2::SettleResponse =
        codec::decode_header(headers["payment-response"].to_str().unwrap()).unwrap();
    assert!(receipt.success);
    assert_eq!(receipt.transaction, "0xbeef");
}

#[tokio::test]
async fn a_replayed_payment_is_refused_before_the_handler() {
    let w = world();
    let payment = v2_payment(&w, 2).await;
    assert_eq!(send(&w.app, Some(("PAYMENT-SIGNATURE", payment.clone()))).await.0, StatusCode::OK);
    let (status, _, body) = send(&w.app, Some(("PAYMENT-SIGNATURE", payment))).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(body["code"], "invalid_exact_evm_nonce_already_used");
    assert_eq!(w.facilitator.settles.load(Ordering::SeqCst), 1, "settled once");
}

#[tokio::test]
async fn concurrent_duplicates_are_served_once() {
    let w = world();
    let payment = v2_payment(&w, 3).await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (app, payment) = (w.app.clone(), payment.clone());
            tokio::spawn(async move { send(&app, Some(("PAYMENT-SIGNATURE", payment))).await.0 })
        })
        .collect();
    let mut served = 0;
    for t in tasks {
        if t.await.unwrap() == StatusCode::OK {
            served += 1;
        }
    }
    assert_eq!(served, 1);
    assert_eq!(w.facilitator.settles.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_invalid_payment_gets_a_fresh_402_with_the_facilitators_reason() {
    let w = world();
    *w.facilitator.verify.lock().unwrap() = Script::Invalid;
    let payment = v2_payment(&w, 4).await;
    let (status, headers, body) = send(&w.app, Some(("PAYMENT-SIGNATURE", payment))).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(body["code"], "insufficient_funds");
    assert!(headers.contains_key("payment-required"), "fresh requirements");
}

#[tokio::test]
async fn a_request_without_payment_is_told_which_header_to_send() {
    let w = world();
    let (status, headers, body) = send(&w.app, None).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(
        errors(&headers, &body),
        (
            "PAYMENT-SIGNATURE header is required".to_owned(),
            "X-PAYMENT header is required".to_owned()
        )
    );
}

#[tokio::test]
async fn a_refused_payments_402_says_why_in_v2_and_v1() {
    let w = world();
    // Refused here (the value is not the price), in each version's spelling of the code.
    let value_codes = (
        "invalid_exact_evm_payload_authorization_value_mismatch".to_owned(),
        "invalid_exact_evm_payload_authorization_value".to_owned(),
    );
    let underpaying = v2_paying(&w, payload_of(13, "9999")).await;
    let (status, headers, body) = send(&w.app, Some(("PAYMENT-SIGNATURE", underpaying))).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(errors(&headers, &body), value_codes);
    let underpaying = v1_paying(&w, payload_of(14, "9999")).await;
    let (status, headers, body) = send(&w.app, Some(("X-PAYMENT", underpaying))).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(errors(&headers, &body), value_codes);
    // Refused by the facilitator.
    *w.facilitator.verify.lock().unwrap() = Script::Invalid;
    let funds = ("insufficient_funds".to_owned(), "insufficient_funds".to_owned());
    for (header, payment) in [
        ("PAYMENT-SIGNATURE", v2_payment(&w, 15).await),
        ("X-PAYMENT", v1_paying(&w, exact_payload(16)).await),
    ] {
        let (status, headers, body) = send(&w.app, Some((header, payment))).await;
        assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
        assert_eq!(errors(&headers, &body), funds, "{header}");
    }
    assert_eq!(w.facilitator.settles.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_tampered_requirement_is_refused_without_asking_the_facilitator() {
    let w = world();
    let (_, headers, _) = send(&w.app, None).await;
    let required: v2::PaymentRequired =
        codec::decode_header(headers["payment-required"].to_str().unwrap()).unwrap();
    let mut accepted = required.accepts[0].clone();
    accepted.amount = farebox_x402::Amount::from(1u64);
    let payload = v2::PaymentPayload {
        x402_version: farebox_x402::Version,
        resource: None,
        accepted,
        payload: exact_payload(5),
        extensions: None,
    };
    *w.facilitator.verify.lock().unwrap() = Script::Down; // would be a 503 if it were asked
    let (status, _, body) =
        send(&w.app, Some(("PAYMENT-SIGNATURE", codec::encode_header(&payload)))).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(body["code"], "accepted_requirements_mismatch");
}

#[tokio::test]
async fn garbage_headers_get_a_402_with_their_exact_reason() {
    let w = world();
    let v2_in_x_payment = v2_payment(&w, 11).await;
    let cases = [
        ("PAYMENT-SIGNATURE", "not base64!".to_string(), "invalid_payload"),
        // `{"x402Version":2,`: truncated
        ("PAYMENT-SIGNATURE", "eyJ4NDAyVmVyc2lvbiI6Miw=".to_string(), "invalid_payload"),
        ("PAYMENT-SIGNATURE", "e25vdCBqc29u".to_string(), "invalid_payload"), // `{not json`
        ("PAYMENT-SIGNATURE", "e30=".to_string(), "invalid_x402_version"),    // `{}`
        ("X-PAYMENT", "eyJ4NDAyVmVyc2lvbiI6OX0=".to_string(), "invalid_x402_version"), // version 9
        ("PAYMENT-SIGNATURE", "eyJ4NDAyVmVyc2lvbiI6OX0=".to_string(), "invalid_x402_version"),
        ("X-PAYMENT", v2_in_x_payment, "invalid_x402_version"),
    ];
    for (header, value, code) in cases {
        let (status, headers, body) = send(&w.app, Some((header, value.clone()))).await;
        assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{header}: {value}");
        assert_eq!(body["code"], code, "{header}: {value}: {body}");
        assert!(headers.contains_key("payment-required"), "fresh requirements: {header}: {value}");
    }
    assert_eq!(w.facilitator.verifies.load(Ordering::SeqCst), 0, "never worth a facilitator call");
}

#[tokio::test]
async fn a_facilitator_that_is_down_fails_closed_and_reserves_nothing() {
    let w = world();
    let payment = v2_payment(&w, 6).await;
    *w.facilitator.verify.lock().unwrap() = Script::Down;
    let (status, headers, _) = send(&w.app, Some(("PAYMENT-SIGNATURE", payment.clone()))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key("retry-after"));
    *w.facilitator.verify.lock().unwrap() = Script::Ok;
    assert_eq!(
        send(&w.app, Some(("PAYMENT-SIGNATURE", payment))).await.0,
        StatusCode::OK,
        "the same payment works once it is back"
    );
}

#[tokio::test]
async fn a_pending_settlement_is_refused_with_its_transaction_hash() {
    let w = world();
    *w.facilitator.settle.lock().unwrap() = Script::Pending;
    let payment = v2_payment(&w, 7).await;
    let (status, headers, body) = send(&w.app, Some(("PAYMENT-SIGNATURE", payment.clone()))).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(body["code"], "settlement_pending");
    let receipt: v2::SettleResponse =
        codec::decode_header(headers["payment-response"].to_str().unwrap()).unwrap();
    assert_eq!(receipt.transaction, "0xfeed");
    let pending = w.store.pending("x402").await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].1.reference.as_deref(), Some("0xfeed"));
    // The same authorization again: not settled twice, and still told it is pending.
    let (status, _, body) = send(&w.app, Some(("PAYMENT-SIGNATURE", payment))).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(body["code"], "settlement_pending");
    assert!(body["detail"].as_str().unwrap().contains("0xfeed"));
    assert_eq!(w.facilitator.settles.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_reverted_settlement_withholds_the_content() {
    let w = world();
    *w.facilitator.settle.lock().unwrap() = Script::Reverted;
    let payment = v2_payment(&w, 8).await;
    let (status, headers, body) = send(&w.app, Some(("PAYMENT-SIGNATURE", payment))).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_ne!(body, "the data");
    let receipt: v2::SettleResponse =
        codec::decode_header(headers["payment-response"].to_str().unwrap()).unwrap();
    assert!(!receipt.success);
    assert_eq!(receipt.transaction, "0xdead");
}

#[tokio::test]
async fn a_settlement_that_cannot_be_sent_leaves_the_authorization_usable() {
    let w = world();
    *w.facilitator.settle.lock().unwrap() = Script::Down;
    let payment = v2_payment(&w, 9).await;
    let (status, _, _) = send(&w.app, Some(("PAYMENT-SIGNATURE", payment.clone()))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    *w.facilitator.settle.lock().unwrap() = Script::Ok;
    assert_eq!(send(&w.app, Some(("PAYMENT-SIGNATURE", payment))).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_v1_payment_is_answered_in_v1() {
    let w = world();
    let (_, _, body) = send(&w.app, None).await;
    let v1_req: Vec<v1::PaymentRequirements> =
        serde_json::from_value(body["accepts"].clone()).unwrap();
    let payment = v1::PaymentPayload {
        x402_version: farebox_x402::Version,
        scheme: "exact".into(),
        network: v1_req[0].network.clone(),
        payload: exact_payload(10),
    };
    let (status, headers, _) =
        send(&w.app, Some(("X-PAYMENT", codec::encode_header(&payment)))).await;
    assert_eq!(status, StatusCode::OK);
    let receipt: v1::SettlementResponse =
        codec::decode_header(headers["x-payment-response"].to_str().unwrap()).unwrap();
    assert!(receipt.success);
    assert_eq!(receipt.network, "base-sepolia");
}

// ---- settlement through a facilitator over HTTP whose answer does not say what happened ----

/// A facilitator HTTP API whose `/settle` answers `status` with `body`, or never answers in
/// time when `status` is `None`.
async fn settle_answering(status: Option<StatusCode>, body: &'static str) -> String {
    let router = Router::new().route(
        "/settle",
        axum::routing::post(move || async move {
            match status {
                Some(status) => (status, [("content-type", "application/json")], body),
                None => {
                    tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                    (StatusCode::OK, [("content-type", "application/json")], body)
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}/")
}

fn remote(base: &str) -> Arc<dyn Facilitator> {
    let http =
        reqwest::Client::builder().timeout(std::time::Duration::from_millis(500)).build().unwrap();
    Arc::new(RemoteFacilitator::with_client(base.parse().unwrap(), http))
}

fn split_world(settle: Arc<dyn Facilitator>) -> World {
    let verify = scripted();
    world_with(verify.clone(), Arc::new(Split { verify, settle }))
}

/// The 503 of a settlement whose outcome is unknown: the nonce stays reserved as pending, the
/// client is told the transaction hash that is known, and the same payment is not served again.
async fn assert_outcome_unknown(w: &World, payment: String, expected_tx: &str) {
    let (status, headers, body) = send(&w.app, Some(("PAYMENT-SIGNATURE", payment.clone()))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(body["code"], "settlement_outcome_unknown", "{body}");
    assert_ne!(body, "the data");
    let receipt: v2::SettleResponse =
        codec::decode_header(headers["payment-response"].to_str().unwrap()).unwrap();
    assert!(!receipt.success);
    assert_eq!(receipt.error_reason.as_deref(), Some("settlement_pending"));
    assert_eq!(receipt.transaction, expected_tx);
    assert_eq!(receipt.payer.map(|p| p.to_lowercase()), Some(PAYER.to_lowercase()));
    let pending = w.store.pending("x402").await.unwrap();
    assert_eq!(pending.len(), 1, "the nonce stays reserved, as pending");
    let reference = (!expected_tx.is_empty()).then_some(expected_tx);
    assert_eq!(pending[0].1.reference.as_deref(), reference);
    // The same authorization again: refused, never served a second time for one payment.
    let (status, _, body) = send(&w.app, Some(("PAYMENT-SIGNATURE", payment))).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{body}");
    assert_eq!(body["code"], "settlement_pending", "{body}");
}

#[tokio::test]
async fn a_5xx_from_settle_keeps_the_nonce_pending() {
    for status in [StatusCode::INTERNAL_SERVER_ERROR, StatusCode::SERVICE_UNAVAILABLE] {
        let base = settle_answering(Some(status), r#"{"error":"boom"}"#).await;
        let w = split_world(remote(&base));
        let payment = v2_payment(&w, 20).await;
        assert_outcome_unknown(&w, payment, "").await;
    }
}

#[tokio::test]
async fn a_5xx_settle_body_with_a_transaction_passes_its_hash_to_the_client() {
    let body = r#"{"success":false,"errorReason":"unexpected_settle_error",
                  "transaction":"0xabc123","network":"eip155:84532"}"#;
    let base = settle_answering(Some(StatusCode::INTERNAL_SERVER_ERROR), body).await;
    let w = split_world(remote(&base));
    let payment = v2_payment(&w, 21).await;
    assert_outcome_unknown(&w, payment, "0xabc123").await;
}

#[tokio::test]
async fn a_settle_answer_lost_after_sending_keeps_the_nonce_pending() {
    let base = settle_answering(None, "{}").await;
    let w = split_world(remote(&base));
    let payment = v2_payment(&w, 22).await;
    assert_outcome_unknown(&w, payment, "").await;
}

#[tokio::test]
async fn a_settle_that_cannot_connect_releases_the_nonce() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/", listener.local_addr().unwrap())
    }; // closed again
    let w = split_world(remote(&closed));
    let payment = v2_payment(&w, 23).await;
    let (status, headers, body) = send(&w.app, Some(("PAYMENT-SIGNATURE", payment))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(body["code"], "facilitator_unavailable", "{body}");
    assert!(!headers.contains_key("payment-response"), "nothing was sent");
    assert!(w.store.pending("x402").await.unwrap().is_empty());
}

/// A facilitator that broadcast a transfer but lost track of it.
struct Unknown;

#[async_trait]
impl Facilitator for Unknown {
    async fn verify(&self, _: &VersionedPayment) -> Result<VerifyResponse, FacilitatorError> {
        Ok(VerifyResponse::valid(PAYER.into()))
    }
    async fn settle(&self, _: &VersionedPayment) -> Result<SettleResponse, FacilitatorError> {
        Err(FacilitatorError::OutcomeUnknown {
            detail: "broadcast, not recorded".into(),
            transaction: Some("0xfeedbeef".into()),
        })
    }
    async fn supported(&self) -> Result<SupportedResponse, FacilitatorError> {
        Err(FacilitatorError::Unavailable("not scripted".into()))
    }
}

#[tokio::test]
async fn the_http_facilitator_answers_an_unknown_outcome_as_pending_with_its_hash() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = farebox_x402::facilitator::http_server::router(Arc::new(Unknown));
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    // On the wire: a settle response a client of the x402 facilitator API recognises.
    let w = world();
    let payment = v2_payment(&w, 24).await;
    let decoded: v2::PaymentPayload = codec::decode_header(&payment).unwrap();
    let request = VersionedPayment::V2 {
        payment_requirements: decoded.accepted.clone(),
        payment_payload: decoded,
    };
    let res = reqwest::Client::new()
        .post(format!("http://{addr}/settle"))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    let answer: SettleResponse = res.json().await.unwrap();
    assert!(!answer.success);
    assert_eq!(answer.error_reason.as_deref(), Some("settlement_pending"));
    assert_eq!(answer.transaction, "0xfeedbeef");
    assert_eq!(answer.network, "eip155:84532");
    assert_eq!(answer.payer.as_deref().map(str::to_lowercase), Some(PAYER.to_lowercase()));

    // Through a rail: a 402 that withholds the content and carries the hash; the nonce pending.
    let w = split_world(remote(&format!("http://{addr}/")));
    let payment = v2_payment(&w, 25).await;
    let (status, headers, body) = send(&w.app, Some(("PAYMENT-SIGNATURE", payment))).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{body}");
    assert_eq!(body["code"], "settlement_pending");
    let receipt: v2::SettleResponse =
        codec::decode_header(headers["payment-response"].to_str().unwrap()).unwrap();
    assert_eq!(receipt.transaction, "0xfeedbeef");
    let pending = w.store.pending("x402").await.unwrap();
    assert_eq!(pending[0].1.reference.as_deref(), Some("0xfeedbeef"));
}

// ---- reconciliation of the rail's own pending settlements ----

#[tokio::test]
async fn reconcile_settles_a_pending_payment_once_the_chain_says_so() {
    let w = world();
    *w.facilitator.settle.lock().unwrap() = Script::Pending;
    let payment = v2_payment(&w, 30).await;
    let header = Some(("PAYMENT-SIGNATURE", payment.clone()));
    assert_eq!(send(&w.app, header.clone()).await.2["code"], "settlement_pending");

    // The chain cannot be read, then the authorization is not used yet: still pending.
    let unresolved = Reconciled { unresolved: 1, ..Default::default() };
    assert_eq!(w.rail.reconcile().await.unwrap(), unresolved);
    *w.facilitator.used.lock().unwrap() = Ok(Some(false));
    assert_eq!(w.rail.reconcile().await.unwrap(), unresolved);
    assert_eq!(w.store.pending("x402").await.unwrap().len(), 1);
    // A node that is down is an error, and changes nothing.
    *w.facilitator.used.lock().unwrap() = Err(FacilitatorError::Unavailable("down".into()));
    assert!(matches!(w.rail.reconcile().await, Err(FacilitatorError::Unavailable(_))));
    assert_eq!(w.store.pending("x402").await.unwrap().len(), 1);

    // Mined: settled, with the hash it was sent as.
    *w.facilitator.used.lock().unwrap() = Ok(Some(true));
    assert_eq!(w.rail.reconcile().await.unwrap(), Reconciled { settled: 1, ..Default::default() });
    assert!(w.store.pending("x402").await.unwrap().is_empty());
    let record = w.store.get("x402", &key(30)).await.unwrap().unwrap();
    assert_eq!(record.state, farebox_core::ProofState::Settled);
    assert_eq!(record.reference.as_deref(), Some("0xfeed"));
    assert_eq!(w.rail.reconcile().await.unwrap(), Reconciled::default(), "nothing left");

    // The client now hears that the authorization was used, not that it is pending.
    let (status, _, body) = send(&w.app, header).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(body["code"], "invalid_exact_evm_nonce_already_used", "{body}");
    assert_eq!(w.facilitator.settles.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn reconcile_fails_a_pending_payment_that_expired_unused() {
    let w = world();
    let key = key(0xab);
    assert!(w.store.reserve("x402", &key, now() - 1).await.unwrap());
    w.store.update("x402", &key, farebox_core::ProofState::Pending, None).await.unwrap();
    *w.facilitator.used.lock().unwrap() = Ok(Some(false));
    assert_eq!(w.rail.reconcile().await.unwrap(), Reconciled { failed: 1, ..Default::default() });
    let record = w.store.get("x402", &key).await.unwrap().unwrap();
    assert_eq!(record.state, farebox_core::ProofState::Failed);
}

/// The rail's replay key of the test payload with `nonce_byte` (`network:token:payer:nonce`).
fn key(nonce_byte: u8) -> String {
    format!(
        "eip155:84532:{}:{}:0x{}",
        ASSET.to_lowercase(),
        PAYER.to_lowercase(),
        format!("{nonce_byte:02x}").repeat(32)
    )
}

#[tokio::test]
async fn a_replay_is_refused_from_the_store_without_asking_the_facilitator() {
    let w = world();
    let payment = v2_payment(&w, 40).await;
    let header = Some(("PAYMENT-SIGNATURE", payment));
    assert_eq!(send(&w.app, header.clone()).await.0, StatusCode::OK);
    assert_eq!(w.facilitator.verifies.load(Ordering::SeqCst), 1);
    // Even with the facilitator down, a replay is a replay (402), not a 503.
    *w.facilitator.verify.lock().unwrap() = Script::Down;
    let (status, headers, body) = send(&w.app, header).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{body}");
    assert_eq!(body["code"], "invalid_exact_evm_nonce_already_used");
    assert!(headers.contains_key("payment-required"));
    assert_eq!(w.facilitator.verifies.load(Ordering::SeqCst), 1, "the facilitator was not asked");
    assert_eq!(w.facilitator.settles.load(Ordering::SeqCst), 1);

    // A pending one likewise, with its transaction hash.
    *w.facilitator.verify.lock().unwrap() = Script::Ok;
    *w.facilitator.settle.lock().unwrap() = Script::Pending;
    let payment = v2_payment(&w, 41).await;
    let header = Some(("PAYMENT-SIGNATURE", payment));
    assert_eq!(send(&w.app, header.clone()).await.2["code"], "settlement_pending");
    *w.facilitator.verify.lock().unwrap() = Script::Down;
    let (status, _, body) = send(&w.app, header).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{body}");
    assert_eq!(body["code"], "settlement_pending");
    assert!(body["detail"].as_str().unwrap().contains("0xfeed"), "{body}");
    assert_eq!(w.facilitator.verifies.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_settlement_refused_before_broadcast_leaves_the_authorization_usable() {
    let w = world();
    *w.facilitator.settle.lock().unwrap() = Script::Refused;
    let payment = v2_payment(&w, 42).await;
    let header = Some(("PAYMENT-SIGNATURE", payment));
    let (status, headers, body) = send(&w.app, header.clone()).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{body}");
    assert_eq!(body["code"], "insufficient_funds");
    assert_ne!(body, "the data");
    let receipt: v2::SettleResponse =
        codec::decode_header(headers["payment-response"].to_str().unwrap()).unwrap();
    assert!(!receipt.success);
    assert_eq!(receipt.transaction, "");
    assert_eq!(w.store.get("x402", &key(42)).await.unwrap(), None, "not marked used");

    // The payer tops up; the same authorization then pays.
    *w.facilitator.settle.lock().unwrap() = Script::Ok;
    let (status, _, body) = send(&w.app, header).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let record = w.store.get("x402", &key(42)).await.unwrap().unwrap();
    assert_eq!(record.state, farebox_core::ProofState::Settled);
}
