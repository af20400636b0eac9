//! A loopback LNbits: the wallet API of `lnbits/core/views/payment_api.py`, `decorators.py`
//! and `exceptions.py`. `POST /api/v1/payments` creates (`out: false`, amount in sats) or pays
//! (`out: true`, admin key only), `GET /api/v1/payments/{payment_hash}` answers `{paid,
//! status, preimage, details}` and omits `details` for a key that is not the wallet's, `GET
//! /api/v1/payments/fee-reserve`; the key in `X-Api-Key`; errors `{"detail"}` with 401 (no
//! key), 404 "Wallet not found." (unknown key), 403 (invoice key paying), 400, and 520
//! `{"detail", "status"}` for payment errors. Plain HTTP on loopback, as LNbits usually runs
//! behind a proxy. Like LNbits, it hands out the preimage of a pending invoice to whoever asks.
//!
//! One instance holds several wallets, each on its own dev node.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::{Faults, Server, serve};
use crate::{
    DevNetwork, DevNode, InvoiceRequest, InvoiceState, LightningBackend, LightningError,
    PaymentHash, parse_invoice,
};

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
        result: Result<crate::PaymentOutcome, LightningError>,
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

/// A loopback LNbits instance: plain HTTP on loopback, wallets on their own dev nodes; stops
/// when dropped.
pub struct LoopbackLnbits {
    lnbits: Arc<Lnbits>,
    server: Server,
}

impl LoopbackLnbits {
    /// Starts an LNbits with one wallet on a new dev node on `network` holding `balance_msat`.
    pub async fn start(network: &DevNetwork, balance_msat: u64) -> Self {
        Self::with_wallets(network, &[balance_msat]).await
    }

    /// Starts an LNbits with one wallet per balance, each on its own dev node on `network`.
    pub async fn with_wallets(network: &DevNetwork, balances: &[u64]) -> Self {
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
            .layer(axum::middleware::from_fn_with_state(faults, super::apply_faults));
        let server = serve(router, None).await;
        LoopbackLnbits { lnbits, server }
    }

    /// The dev node behind wallet `wallet` (panics if there is no such wallet).
    pub fn dev(&self, wallet: usize) -> &DevNode {
        &self.lnbits.wallets[wallet].node
    }

    /// Wallet `wallet`'s invoice key (receive and check).
    pub fn invoice_key(&self, wallet: usize) -> &str {
        &self.lnbits.wallets[wallet].invoice_key
    }

    /// Wallet `wallet`'s admin key (also pays).
    pub fn admin_key(&self, wallet: usize) -> &str {
        &self.lnbits.wallets[wallet].admin_key
    }

    /// Whether the funding source is slow: payments are answered `pending` and complete about
    /// half a second later.
    pub fn set_deferred(&self, deferred: bool) {
        self.lnbits.deferred.store(deferred, Ordering::SeqCst);
    }

    /// This server's fault switches and request log.
    pub fn faults(&self) -> &Faults {
        &self.lnbits.faults
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }
}
