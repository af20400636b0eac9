//! [`LnbitsBackend`] against a loopback server that follows LNbits' wallet API
//! (`lnbits/core/views/payment_api.py`, `decorators.py`, `exceptions.py`): `POST
//! /api/v1/payments` creates (`out: false`, amount in sats) or pays (`out: true`, admin key
//! only), `GET /api/v1/payments/{payment_hash}` answers `{paid, status, preimage, details}` and
//! omits `details` for a key that is not the wallet's, `GET /api/v1/payments/fee-reserve`;
//! errors `{"detail"}` with 401 (no key), 404 "Wallet not found." (unknown key), 403 (invoice
//! key paying), 400, and 520 `{"detail", "status"}` for payment errors. Plain HTTP on loopback,
//! as LNbits usually runs behind a proxy.
//!
//! One mock instance holds several wallets, each on its own dev node.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use common::scenarios::{MockNode, pair};
use common::{Faults, Server, request, serve};
use farebox_lightning::lnbits::{LnbitsBackend, LnbitsKey};
use farebox_lightning::rest::{Endpoint, Secret, Timeouts};
use farebox_lightning::{
    DevNetwork, DevNode, InvoiceRequest, InvoiceState, LightningBackend, LightningError,
    PaymentHash, parse_invoice, sha256,
};
use serde_json::{Value, json};

struct Wallet {
    id: String,
    invoice_key: String,
    admin_key: String,
    node: DevNode,
}

/// A payment record as LNbits keeps it: msat, negative for outgoing.
#[derive(Clone)]
struct Record {
    wallet: usize,
    hash: PaymentHash,
    bolt11: String,
    amount: i64,
    fee: i64,
    /// For outgoing payments; incoming ones read their state from the dev node.
    status: String,
    preimage: Option<String>,
    memo: String,
}

struct Lnbits {
    wallets: Vec<Wallet>,
    faults: Arc<Faults>,
    records: Mutex<Vec<Record>>,
    /// The funding source answers slowly: payments are left pending and complete later.
    deferred: AtomicBool,
}

enum Key {
    Missing,
    Unknown,
    Wallet(usize, bool),
}

fn detail(http: StatusCode, detail: &str) -> Response {
    (http, axum::Json(json!({ "detail": detail }))).into_response()
}

fn payment_error(detail: &str, status: &str) -> Response {
    let code = StatusCode::from_u16(520).unwrap();
    (code, axum::Json(json!({ "detail": detail, "status": status }))).into_response()
}

fn fee_reserve(amount_msat: u64) -> u64 {
    // LNbits defaults: reserve_fee_min 2000 msat, reserve_fee_percent 1.0.
    (amount_msat / 100).max(2_000)
}

impl Lnbits {
    /// Which wallet the `X-Api-Key` header names, and whether it is the admin key.
    fn wallet_for(&self, headers: &HeaderMap) -> Key {
        let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) else {
            return Key::Missing;
        };
        for (i, wallet) in self.wallets.iter().enumerate() {
            if key == wallet.admin_key {
                return Key::Wallet(i, true);
            }
            if key == wallet.invoice_key {
                return Key::Wallet(i, false);
            }
        }
        Key::Unknown
    }

    /// The record's JSON (LNbits' `Payment`) and its status now.
    async fn payment(&self, record: &Record) -> (Value, String, Option<String>) {
        let (status, preimage) = if record.amount > 0 {
            match self.wallets[record.wallet].node.invoice_state(&record.hash).await.unwrap() {
                InvoiceState::Settled { preimage, .. } => {
                    ("success".to_string(), Some(hex::encode(preimage)))
                }
                InvoiceState::Expired => ("failed".to_string(), None),
                // LNbits stores a preimage with each invoice and hands it out while pending.
                _ if self.faults.lie() => ("success".to_string(), Some(hex::encode([0x42; 32]))),
                _ => {
                    let node = &self.wallets[record.wallet].node;
                    ("pending".to_string(), node.leaked_preimage(&record.hash).map(hex::encode))
                }
            }
        } else {
            (record.status.clone(), record.preimage.clone())
        };
        let parsed = parse_invoice(&record.bolt11).unwrap();
        let json = json!({
            "checking_id": hex::encode(record.hash), "payment_hash": hex::encode(record.hash),
            "wallet_id": self.wallets[record.wallet].id, "amount": record.amount, "fee": record.fee,
            "bolt11": record.bolt11, "payment_request": record.bolt11, "fiat_provider": null,
            "status": status, "memo": record.memo, "expiry": parsed.expires_at(), "webhook": null,
            "webhook_status": null, "preimage": preimage, "tag": null, "extension": null,
            "time": "2026-12-07T00:00:00+00:00", "created_at": "2026-12-07T00:00:00+00:00",
            "updated_at": "2026-12-07T00:00:00+00:00", "labels": [], "extra": {},
        });
        (json, status, preimage)
    }

    async fn create(&self, wallet: usize, body: &Value) -> Response {
        let amount = body.get("amount").and_then(Value::as_f64).unwrap_or(0.0);
        let memo = body.get("memo").and_then(Value::as_str).unwrap_or("").to_string();
        if memo.len() > 640 {
            return detail(
                StatusCode::BAD_REQUEST,
                "memo: ensure this value has at most 640 characters",
            );
        }
        if body.get("unit").and_then(Value::as_str).unwrap_or("sat") != "sat" {
            return detail(StatusCode::BAD_REQUEST, "The provided unit is not supported");
        }
        if amount <= 0.0 {
            return payment_error("Amountless invoices not supported.", "failed");
        }
        let expiry =
            Duration::from_secs(body.get("expiry").and_then(Value::as_u64).unwrap_or(3600));
        let amount_msat = (amount * 1000.0) as u64;
        let request = InvoiceRequest { amount_msat, memo: memo.clone(), expiry };
        let made = match self.wallets[wallet].node.create_invoice(request).await {
            Ok(made) => made,
            Err(e) => return payment_error(&e.to_string(), "pending"),
        };
        let record = Record {
            wallet,
            hash: made.payment_hash,
            bolt11: made.bolt11,
            amount: amount_msat as i64,
            fee: 0,
            status: "pending".into(),
            preimage: None,
            memo,
        };
        self.records.lock().unwrap().push(record.clone());
        (StatusCode::CREATED, axum::Json(self.payment(&record).await.0)).into_response()
    }

    async fn pay(self: &Arc<Self>, wallet: usize, admin: bool, body: &Value) -> Response {
        if !admin {
            return detail(StatusCode::FORBIDDEN, "Invoice (or Admin) key required.");
        }
        let Some(bolt11) = body.get("bolt11").and_then(Value::as_str).map(str::to_string) else {
            return detail(StatusCode::BAD_REQUEST, "Missing BOLT11 invoice");
        };
        let Ok(invoice) = parse_invoice(&bolt11) else {
            return detail(StatusCode::BAD_REQUEST, "Invalid bolt11 invoice.");
        };
        let Some(amount_msat) = invoice.amount_msat else {
            return detail(StatusCode::BAD_REQUEST, "Missig invoice amount.");
        };
        let existing = self
            .records
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.wallet == wallet && r.hash == invoice.payment_hash && r.amount < 0)
            .map(|r| r.status.clone());
        match existing.as_deref() {
            Some("success") => return payment_error("Payment already paid.", "success"),
            Some("pending") => return payment_error("Payment is still pending.", "pending"),
            _ => {}
        }
        let reserve = fee_reserve(amount_msat);
        let node = self.wallets[wallet].node.clone();
        if node.balance_msat() < amount_msat + reserve {
            return payment_error(
                &format!(
                    "You must reserve at least ({}  sat) to cover potential routing fees.",
                    reserve / 1000
                ),
                "failed",
            );
        }
        let mut record = Record {
            wallet,
            hash: invoice.payment_hash,
            bolt11: bolt11.clone(),
            amount: -(amount_msat as i64),
            fee: -(reserve as i64),
            status: "pending".into(),
            preimage: None,
            memo: String::new(),
        };
        self.records.lock().unwrap().push(record.clone());
        if self.deferred.load(Ordering::SeqCst) {
            let lnbits = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let result = node.pay(&bolt11, reserve).await;
                lnbits.settle_outgoing(wallet, &invoice.payment_hash, result);
            });
            return (StatusCode::CREATED, axum::Json(self.payment(&record).await.0))
                .into_response();
        }
        let result = node.pay(&bolt11, reserve).await;
        let failed = result.as_ref().err().map(|e| e.to_string());
        self.settle_outgoing(wallet, &invoice.payment_hash, result);
        if let Some(message) = failed {
            return payment_error(&format!("Payment failed: {message}"), "failed");
        }
        record = self
            .records
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|r| r.hash == invoice.payment_hash && r.wallet == wallet)
            .cloned()
            .unwrap();
        (StatusCode::CREATED, axum::Json(self.payment(&record).await.0)).into_response()
    }

    fn settle_outgoing(
        &self,
        wallet: usize,
        hash: &PaymentHash,
        result: Result<farebox_lightning::PaymentOutcome, LightningError>,
    ) {
        let mut records = self.records.lock().unwrap();
        let Some(record) = records
            .iter_mut()
            .rev()
            .find(|r| r.wallet == wallet && &r.hash == hash && r.amount < 0)
        else {
            return;
        };
        match result {
            Ok(paid) => {
                record.status = "success".into();
                record.fee = -(paid.fee_msat as i64);
                let preimage = if self.faults.lie() { [0x42; 32] } else { paid.preimage };
                record.preimage = Some(hex::encode(preimage));
            }
            Err(_) => record.status = "failed".into(),
        }
    }
}

async fn post_payments(
    State(lnbits): State<Arc<Lnbits>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let (wallet, admin) = match lnbits.wallet_for(&headers) {
        Key::Wallet(wallet, admin) => (wallet, admin),
        Key::Missing => return detail(StatusCode::UNAUTHORIZED, "No Api Key provided."),
        Key::Unknown => return detail(StatusCode::NOT_FOUND, "Wallet not found."),
    };
    let Ok(body) = serde_json::from_str::<Value>(&body) else {
        return detail(StatusCode::BAD_REQUEST, "JSON decode error");
    };
    // CreateInvoice.out defaults to true.
    if body.get("out").and_then(Value::as_bool).unwrap_or(true) {
        lnbits.pay(wallet, admin, &body).await
    } else {
        lnbits.create(wallet, &body).await
    }
}

async fn get_payment(
    State(lnbits): State<Arc<Lnbits>>,
    headers: HeaderMap,
    Path(payment_hash): Path<String>,
) -> Response {
    // The key is optional here, and one that matches no wallet is simply ignored.
    let wallet = match lnbits.wallet_for(&headers) {
        Key::Wallet(wallet, _) => Some(wallet),
        Key::Missing | Key::Unknown => None,
    };
    let Some(Ok(hash)) = hex::decode(&payment_hash).ok().map(PaymentHash::try_from) else {
        return detail(StatusCode::NOT_FOUND, "Payment does not exist.");
    };
    let record = lnbits
        .records
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|r| r.hash == hash && wallet.is_none_or(|w| w == r.wallet))
        .cloned();
    let Some(record) = record else {
        return detail(StatusCode::NOT_FOUND, "Payment does not exist.");
    };
    let (details, status, preimage) = lnbits.payment(&record).await;
    let mut answer = match status.as_str() {
        "success" => json!({ "paid": true, "preimage": preimage }),
        "failed" => json!({ "paid": false, "status": "failed" }),
        _ => json!({ "paid": false, "status": status, "preimage": preimage }),
    };
    if wallet == Some(record.wallet) {
        answer["details"] = details;
    }
    axum::Json(answer).into_response()
}

async fn get_fee_reserve(Query(query): Query<HashMap<String, String>>) -> Response {
    let amount =
        query.get("invoice").and_then(|b| parse_invoice(b).ok()).and_then(|i| i.amount_msat);
    match amount {
        Some(amount) => axum::Json(json!({ "fee_reserve": fee_reserve(amount) })).into_response(),
        None => detail(StatusCode::BAD_REQUEST, "Invoice has no amount."),
    }
}

/// A mock LNbits instance: plain HTTP on loopback, wallets on their own dev nodes.
struct Node {
    lnbits: Arc<Lnbits>,
    server: Server,
}

impl Node {
    async fn with_wallets(network: &DevNetwork, balances: &[u64]) -> Node {
        let faults = Arc::new(Faults::default());
        let wallets = balances
            .iter()
            .enumerate()
            .map(|(i, balance)| Wallet {
                id: format!("wallet{i}"),
                invoice_key: format!("{i}a1c4b1f8e0c4d2a9b3e7f6a5d4c3b2a1"),
                admin_key: format!("{i}d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4"),
                node: DevNode::random(network, *balance),
            })
            .collect();
        let lnbits = Arc::new(Lnbits {
            wallets,
            faults: faults.clone(),
            records: Mutex::default(),
            deferred: AtomicBool::new(false),
        });
        let router = Router::new()
            .route("/api/v1/payments", post(post_payments))
            .route("/api/v1/payments/fee-reserve", get(get_fee_reserve))
            .route("/api/v1/payments/{payment_hash}", get(get_payment))
            .with_state(lnbits.clone())
            .layer(axum::middleware::from_fn_with_state(faults, common::apply_faults));
        let server = serve(router, None).await;
        Node { lnbits, server }
    }

    fn with_key(&self, key: LnbitsKey, timeouts: Timeouts) -> LnbitsBackend {
        let endpoint = Endpoint::new(&self.url()).unwrap().with_timeouts(timeouts);
        LnbitsBackend::new(endpoint, key).unwrap()
    }

    fn invoice_key(&self, wallet: usize) -> LnbitsKey {
        LnbitsKey::Invoice(Secret::new(&self.lnbits.wallets[wallet].invoice_key).unwrap())
    }

    fn admin_key(&self, wallet: usize) -> LnbitsKey {
        LnbitsKey::Admin(Secret::new(&self.lnbits.wallets[wallet].admin_key).unwrap())
    }
}

const WRONG_KEY: &str = "ffffffffffffffffffffffffffffffff";

impl MockNode for Node {
    const PAY_PATH: &'static str = "/api/v1/payments";
    const PRE_PAY_PATHS: &'static [&'static str] = &["/api/v1/payments/fee-reserve"];
    const SCHEME: &'static str = "http";

    async fn start(network: &DevNetwork, balance_msat: u64) -> Self {
        Node::with_wallets(network, &[balance_msat]).await
    }

    fn dev(&self) -> &DevNode {
        &self.lnbits.wallets[0].node
    }

    fn faults(&self) -> &Faults {
        &self.lnbits.faults
    }

    /// The admin key: the scenarios both receive and pay through it.
    fn backend_with(&self, timeouts: Timeouts) -> Box<dyn LightningBackend> {
        Box::new(self.with_key(self.admin_key(0), timeouts))
    }

    fn refused_backend(&self) -> (Box<dyn LightningBackend>, String, String) {
        let backend =
            self.with_key(LnbitsKey::Admin(Secret::new(WRONG_KEY).unwrap()), Timeouts::default());
        let debug = format!("{backend:?}");
        (Box::new(backend), WRONG_KEY.to_string(), debug)
    }

    fn backend_at(url: &str) -> Box<dyn LightningBackend> {
        let endpoint = Endpoint::new(url).unwrap();
        Box::new(
            LnbitsBackend::new(endpoint, LnbitsKey::Admin(Secret::new(WRONG_KEY).unwrap()))
                .unwrap(),
        )
    }

    fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }
}

scenario_tests!(Node);

#[tokio::test]
async fn msat_amounts_that_are_not_whole_sats_are_refused_not_rounded() {
    let network = DevNetwork::new();
    let alice = Node::with_wallets(&network, &[0]).await;
    let server = alice.with_key(alice.invoice_key(0), Timeouts::default());
    let err = server.create_invoice(request(21_500)).await.unwrap_err();
    assert!(matches!(err, LightningError::InvalidRequest(_)), "{err}");
    assert_eq!(alice.faults().requests(), 0, "nothing was asked of LNbits");
    let invoice = server.create_invoice(request(21_000)).await.unwrap();
    assert_eq!(parse_invoice(&invoice.bolt11).unwrap().amount_msat, Some(21_000));
}

#[tokio::test]
async fn an_invoice_key_receives_but_cannot_pay() {
    let (_network, alice, bob) = pair::<Node>(100_000).await;
    let invoice = alice.backend().create_invoice(request(5_000)).await.unwrap();

    let receive_only = bob.with_key(bob.invoice_key(0), Timeouts::default());
    receive_only.create_invoice(request(1_000)).await.unwrap();
    let err = receive_only.pay(&invoice.bolt11, 10_000).await.unwrap_err();
    assert!(matches!(err, LightningError::Unsupported(_)), "{err}");

    // The invoice key configured as if it were the admin key: LNbits answers 403.
    let mistaken = LnbitsKey::Admin(Secret::new(&bob.lnbits.wallets[0].invoice_key).unwrap());
    let err =
        bob.with_key(mistaken, Timeouts::default()).pay(&invoice.bolt11, 10_000).await.unwrap_err();
    assert!(matches!(err, LightningError::AuthRefused(_)), "{err}");
    assert_eq!(bob.dev().balance_msat(), 100_000);
}

#[tokio::test]
async fn one_wallets_key_does_not_see_another_wallets_invoices() {
    let network = DevNetwork::new();
    let shared = Node::with_wallets(&network, &[0, 0]).await;
    let payer = Node::with_wallets(&network, &[100_000]).await;
    let first = shared.with_key(shared.invoice_key(0), Timeouts::default());
    let second = shared.with_key(shared.invoice_key(1), Timeouts::default());
    let invoice = first.create_invoice(request(5_000)).await.unwrap();
    payer.backend().pay(&invoice.bolt11, 10_000).await.unwrap();

    assert!(matches!(
        first.invoice_state(&invoice.payment_hash).await.unwrap(),
        InvoiceState::Settled { .. }
    ));
    assert_eq!(second.invoice_state(&invoice.payment_hash).await.unwrap(), InvoiceState::Unknown);
}

#[tokio::test]
async fn a_fee_reserve_over_the_limit_is_refused_before_paying() {
    let (_network, alice, bob) = pair::<Node>(100_000).await;
    let invoice = alice.backend().create_invoice(request(5_000)).await.unwrap();
    // LNbits may spend up to 2 sat on fees for this payment; the caller allows 1.
    let err = bob.backend().pay(&invoice.bolt11, 1_000).await.unwrap_err();
    assert!(matches!(err, LightningError::PaymentFailed(_)), "{err}");
    assert_eq!(bob.faults().requests_exact("/api/v1/payments"), 0, "nothing was sent");
    assert_eq!(bob.dev().balance_msat(), 100_000);
}

#[tokio::test]
async fn a_pending_payment_is_followed_until_it_settles() {
    let (_network, alice, bob) = pair::<Node>(100_000).await;
    let invoice = alice.backend().create_invoice(request(5_000)).await.unwrap();
    bob.lnbits.deferred.store(true, Ordering::SeqCst);
    let paid = bob.backend().pay(&invoice.bolt11, 10_000).await.unwrap();
    assert_eq!(sha256(&paid.preimage), invoice.payment_hash);
    assert_eq!(paid.amount_msat, 5_000);
    assert_eq!(bob.faults().requests_exact("/api/v1/payments"), 1);
    assert_eq!(bob.dev().sent_payments().len(), 1);
}

#[tokio::test]
async fn amountless_invoices_are_unsupported_and_named_amounts_are_paid() {
    let (_network, alice, bob) = pair::<Node>(100_000).await;
    let server = alice.backend();
    let err = server
        .create_amountless_invoice("refund".into(), Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(matches!(err, LightningError::Unsupported(_)), "{err}");

    let stranger = DevNode::random(alice.dev().network(), 0);
    let amountless =
        stranger.create_amountless_invoice("tip".into(), Duration::from_secs(60)).await.unwrap();
    let err = bob.backend().pay_amount(&amountless.bolt11, 1_000, 10_000).await.unwrap_err();
    assert!(matches!(err, LightningError::Unsupported(_)), "{err}");

    let invoice = server.create_invoice(request(3_000)).await.unwrap();
    let paid = bob.backend().pay_amount(&invoice.bolt11, 3_000, 10_000).await.unwrap();
    assert_eq!(paid.amount_msat, 3_000);
}

#[tokio::test]
async fn a_preimage_lnbits_reveals_for_an_unpaid_invoice_is_not_taken_as_payment() {
    use farebox_lightning::{PaymentProof, confirm_paid};
    let (_network, shop, payer) = pair::<Node>(100_000).await;
    let server = shop.with_key(shop.invoice_key(0), Timeouts::default());
    assert!(!server.preimage_proves_payment());
    let invoice = server.create_invoice(request(5_000)).await.unwrap();

    // Anyone may ask LNbits for an invoice's status, without a key: it names the preimage.
    let url = format!("{}/api/v1/payments/{}", shop.url(), hex::encode(invoice.payment_hash));
    let answer: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    assert_eq!(answer["paid"], json!(false));
    let leaked: [u8; 32] =
        hex::decode(answer["preimage"].as_str().unwrap()).unwrap().try_into().unwrap();
    assert_eq!(sha256(&leaked), invoice.payment_hash, "the leaked preimage is the real one");
    let proof = confirm_paid(&server, &leaked, &invoice.payment_hash).await.unwrap();
    assert_eq!(proof, PaymentProof::NotSettled, "unpaid: refused");
    assert_eq!(
        confirm_paid(&server, &[7; 32], &invoice.payment_hash).await.unwrap(),
        PaymentProof::WrongPreimage
    );

    // LNbits cannot answer: no verdict, so the rails answer 503 and serve nothing.
    shop.faults().set(common::FaultState { answer: common::Answer::NotJson, ..Default::default() });
    assert!(confirm_paid(&server, &leaked, &invoice.payment_hash).await.is_err());
    shop.faults().clear();

    let paid = payer.backend().pay(&invoice.bolt11, 10_000).await.unwrap();
    assert_eq!(paid.preimage, leaked);
    let proof = confirm_paid(&server, &paid.preimage, &invoice.payment_hash).await.unwrap();
    assert_eq!(proof, PaymentProof::Proven, "paid: served");
}
