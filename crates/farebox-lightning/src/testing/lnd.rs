//! A loopback lnd: the REST gateway documented in lnd's `lightning.swagger.json`,
//! `invoicesrpc/invoices.swagger.json` and `routerrpc/router.swagger.json`: int64 fields as JSON
//! strings, `bytes` as base64 (URL-safe in paths), `{"code", "message", "details"}` errors with
//! gRPC codes, streams of `{"result": …}` lines, the macaroon in `Grpc-Metadata-macaroon`
//! (hex), macaroon refusals as plain gRPC Unknown errors, HTTPS with a self-signed CA-marked
//! certificate like lnd's `tls.cert`.
//!
//! Routes: `POST /v1/invoices`, `GET /v1/invoice/{r_hash_str}`,
//! `GET /v2/invoices/subscribe/{r_hash}`, `POST /v2/router/send`,
//! `GET /v2/router/track/{payment_hash}`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde_json::{Value, json};

use super::{Faults, NodeTls, Server, lnd_tls, serve};
use crate::{
    DevNetwork, DevNode, InvoiceRequest, InvoiceState, LightningBackend, LightningError,
    PaymentHash, parse_invoice,
};

/// The admin macaroon this node accepts (receive and pay).
pub const ADMIN_MACAROON: &[u8] = b"\x02\x01\x03lnd admin macaroon for tests";
/// The invoice macaroon this node accepts (receive only: paying is "permission denied").
pub const INVOICE_MACAROON: &[u8] = b"\x02\x01\x03lnd invoice macaroon for tests";

/// One mock lnd.
struct Lnd {
    node: DevNode,
    faults: Arc<Faults>,
    /// Invoices this node created: hash -> (bolt11, memo, add_index).
    invoices: Mutex<HashMap<PaymentHash, (String, String, u64)>>,
    /// Payments this node made, as lnd `Payment` objects.
    payments: Mutex<HashMap<PaymentHash, Value>>,
    next_index: AtomicU64,
}

/// lnd's fields of `Invoice` and `SendPaymentRequest`; grpc-gateway refuses unknown ones.
const INVOICE_FIELDS: &[&str] = &[
    "memo",
    "r_preimage",
    "r_hash",
    "value",
    "value_msat",
    "settled",
    "creation_date",
    "settle_date",
    "payment_request",
    "description_hash",
    "expiry",
    "fallback_addr",
    "cltv_expiry",
    "route_hints",
    "private",
    "add_index",
    "settle_index",
    "amt_paid",
    "amt_paid_sat",
    "amt_paid_msat",
    "state",
    "htlcs",
    "features",
    "is_keysend",
    "payment_addr",
    "is_amp",
    "amp_invoice_state",
    "is_blinded",
    "blinded_path_config",
];
const SEND_FIELDS: &[&str] = &[
    "dest",
    "amt",
    "payment_hash",
    "final_cltv_delta",
    "payment_request",
    "timeout_seconds",
    "fee_limit_sat",
    "cltv_limit",
    "route_hints",
    "dest_custom_records",
    "amt_msat",
    "fee_limit_msat",
    "last_hop_pubkey",
    "allow_self_payment",
    "dest_features",
    "max_parts",
    "no_inflight_updates",
    "outgoing_chan_ids",
    "payment_addr",
    "max_shard_size_msat",
    "amp",
    "time_pref",
    "cancelable",
    "first_hop_custom_records",
];

/// A unary error as grpc-gateway writes it.
fn status(http: StatusCode, code: i64, message: &str) -> Response {
    (http, axum::Json(json!({"code": code, "message": message, "details": []}))).into_response()
}

/// A streaming call's error before its first message, as grpc-gateway writes it.
fn stream_status(http: StatusCode, code: i64, message: &str) -> Response {
    (http, axum::Json(json!({"error": {"code": code, "message": message, "details": []}})))
        .into_response()
}

/// lnd's macaroon check: a plain error, hence gRPC Unknown (2) and HTTP 500. The message echoes
/// what was presented, as a hostile node might, to prove farebox never repeats it.
fn macaroon_error(headers: &HeaderMap, needs_admin: bool) -> Option<String> {
    let presented =
        headers.get("grpc-metadata-macaroon").map(|v| v.to_str().unwrap_or("").to_string());
    match presented {
        None => Some("expected 1 macaroon, got 0".into()),
        Some(hex) if hex == hex::encode(ADMIN_MACAROON) => None,
        Some(hex) if hex == hex::encode(INVOICE_MACAROON) => {
            needs_admin.then(|| "permission denied".into())
        }
        Some(hex) => Some(format!(
            "verification failed: signature mismatch after caveat verification ({hex})"
        )),
    }
}

/// An int64 that grpc-gateway accepts as a JSON number or string.
fn int(value: Option<&Value>) -> Result<i64, ()> {
    match value {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n.as_i64().ok_or(()),
        Some(Value::String(s)) => s.parse().map_err(|_| ()),
        Some(_) => Err(()),
    }
}

fn unknown_field(body: &Value, known: &[&str]) -> Option<String> {
    body.as_object()?.keys().find(|k| !known.contains(&k.as_str())).cloned()
}

fn decode_path_bytes(text: &str) -> Option<PaymentHash> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    // grpc-gateway's runtime.Bytes: standard base64 first, then URL-safe.
    let bytes = STANDARD.decode(text).or_else(|_| URL_SAFE.decode(text)).ok()?;
    bytes.try_into().ok()
}

impl Lnd {
    async fn invoice_json(&self, hash: &PaymentHash) -> Option<Value> {
        let (bolt11, memo, add_index) = self.invoices.lock().unwrap().get(hash).cloned()?;
        let parsed = parse_invoice(&bolt11).unwrap();
        let value_msat = parsed.amount_msat.unwrap_or(0);
        let (state, preimage, paid) = match self.node.invoice_state(hash).await.unwrap() {
            InvoiceState::Settled { preimage, amount_msat } => {
                ("SETTLED", preimage.to_vec(), amount_msat)
            }
            InvoiceState::Expired => ("CANCELED", vec![], 0),
            _ if self.faults.lie() => ("SETTLED", vec![0x42; 32], value_msat),
            _ => ("OPEN", vec![], 0),
        };
        Some(json!({
            "memo": memo, "r_preimage": b64(&preimage), "r_hash": b64(hash),
            "value": (value_msat / 1000).to_string(), "value_msat": value_msat.to_string(),
            "settled": state == "SETTLED", "creation_date": parsed.timestamp.to_string(),
            "settle_date": "0", "payment_request": bolt11, "description_hash": "",
            "expiry": parsed.expiry.as_secs().to_string(), "fallback_addr": "",
            "cltv_expiry": parsed.min_final_cltv_expiry_delta.to_string(), "route_hints": [],
            "private": false, "add_index": add_index.to_string(), "settle_index": "0",
            "amt_paid": (paid * 1000).to_string(), "amt_paid_sat": (paid / 1000).to_string(),
            "amt_paid_msat": paid.to_string(), "state": state, "htlcs": [], "features": {},
            "is_keysend": false, "payment_addr": b64(&parsed.payment_secret), "is_amp": false,
            "amp_invoice_state": {}, "is_blinded": false,
        }))
    }
}

async fn add_invoice(State(lnd): State<Arc<Lnd>>, headers: HeaderMap, body: String) -> Response {
    if let Some(message) = macaroon_error(&headers, false) {
        return status(StatusCode::INTERNAL_SERVER_ERROR, 2, &message);
    }
    let Ok(body) = serde_json::from_str::<Value>(&body) else {
        return status(StatusCode::BAD_REQUEST, 3, "invalid JSON");
    };
    if let Some(field) = unknown_field(&body, INVOICE_FIELDS) {
        return status(StatusCode::BAD_REQUEST, 3, &format!("unknown field \"{field}\""));
    }
    let (Ok(value), Ok(value_msat), Ok(expiry)) =
        (int(body.get("value")), int(body.get("value_msat")), int(body.get("expiry")))
    else {
        return status(StatusCode::BAD_REQUEST, 3, "bad integer");
    };
    if value != 0 && value_msat != 0 {
        return status(
            StatusCode::INTERNAL_SERVER_ERROR,
            2,
            "value and value_msat are mutually exclusive",
        );
    }
    let amount_msat = if value_msat != 0 { value_msat } else { value * 1000 };
    let memo = body.get("memo").and_then(Value::as_str).unwrap_or("").to_string();
    let expiry = Duration::from_secs(if expiry == 0 { 86_400 } else { expiry as u64 });
    let created = if amount_msat == 0 {
        lnd.node.create_amountless_invoice(memo.clone(), expiry).await
    } else {
        lnd.node
            .create_invoice(InvoiceRequest {
                amount_msat: amount_msat as u64,
                memo: memo.clone(),
                expiry,
            })
            .await
    };
    let created = match created {
        Ok(created) => created,
        Err(e) => return status(StatusCode::INTERNAL_SERVER_ERROR, 2, &e.to_string()),
    };
    let index = lnd.next_index.fetch_add(1, Ordering::SeqCst) + 1;
    lnd.invoices
        .lock()
        .unwrap()
        .insert(created.payment_hash, (created.bolt11.clone(), memo, index));
    let secret = parse_invoice(&created.bolt11).unwrap().payment_secret;
    axum::Json(json!({
        "r_hash": b64(&created.payment_hash),
        "payment_request": created.bolt11,
        "add_index": index.to_string(),
        "payment_addr": b64(&secret),
    }))
    .into_response()
}

async fn lookup_invoice(
    State(lnd): State<Arc<Lnd>>,
    headers: HeaderMap,
    Path(r_hash_str): Path<String>,
) -> Response {
    if let Some(message) = macaroon_error(&headers, false) {
        return status(StatusCode::INTERNAL_SERVER_ERROR, 2, &message);
    }
    let Ok(bytes) = hex::decode(&r_hash_str) else {
        return status(StatusCode::INTERNAL_SERVER_ERROR, 2, "encoding/hex: invalid byte");
    };
    let Ok(hash) = PaymentHash::try_from(bytes.as_slice()) else {
        return status(
            StatusCode::INTERNAL_SERVER_ERROR,
            2,
            "payment hash must be exactly 32 bytes",
        );
    };
    match lnd.invoice_json(&hash).await {
        Some(invoice) => axum::Json(invoice).into_response(),
        None => status(StatusCode::NOT_FOUND, 5, "unable to locate invoice"),
    }
}

fn line(value: Value) -> Result<Vec<u8>, std::io::Error> {
    let mut text = serde_json::to_vec(&json!({"result": value})).unwrap();
    text.push(b'\n');
    Ok(text)
}

async fn subscribe_invoice(
    State(lnd): State<Arc<Lnd>>,
    headers: HeaderMap,
    Path(r_hash): Path<String>,
) -> Response {
    use futures_util::StreamExt;
    if let Some(message) = macaroon_error(&headers, false) {
        return stream_status(StatusCode::INTERNAL_SERVER_ERROR, 2, &message);
    }
    let Some(hash) = decode_path_bytes(&r_hash) else {
        return stream_status(StatusCode::BAD_REQUEST, 3, "bad r_hash");
    };
    let Some(first) = lnd.invoice_json(&hash).await else {
        // lnd waits for an invoice that may yet be added.
        return Response::new(Body::from_stream(futures_util::stream::pending::<
            Result<Vec<u8>, std::io::Error>,
        >()));
    };
    let updates = futures_util::stream::once(async move { line(first) })
        .chain(futures_util::stream::once(async move {
            let _ = lnd.node.wait_for_settlement(&hash, Duration::from_secs(3600)).await;
            line(lnd.invoice_json(&hash).await.unwrap())
        }))
        .chain(futures_util::stream::pending());
    Response::new(Body::from_stream(updates))
}

fn failure_reason(error: &LightningError) -> &'static str {
    let text = error.to_string();
    if text.contains("insufficient") {
        "FAILURE_REASON_INSUFFICIENT_BALANCE"
    } else if text.contains("route") || text.contains("offline") || text.contains("fee") {
        "FAILURE_REASON_NO_ROUTE"
    } else if text.contains("rejected") {
        "FAILURE_REASON_INCORRECT_PAYMENT_DETAILS"
    } else {
        "FAILURE_REASON_ERROR"
    }
}

async fn send_payment(State(lnd): State<Arc<Lnd>>, headers: HeaderMap, body: String) -> Response {
    if let Some(message) = macaroon_error(&headers, true) {
        return stream_status(StatusCode::INTERNAL_SERVER_ERROR, 2, &message);
    }
    let Ok(body) = serde_json::from_str::<Value>(&body) else {
        return stream_status(StatusCode::BAD_REQUEST, 3, "invalid JSON");
    };
    if let Some(field) = unknown_field(&body, SEND_FIELDS) {
        return stream_status(StatusCode::BAD_REQUEST, 3, &format!("unknown field \"{field}\""));
    }
    let bolt11 = body.get("payment_request").and_then(Value::as_str).unwrap_or("").to_string();
    let (Ok(fee_limit_msat), Ok(amt_msat)) =
        (int(body.get("fee_limit_msat")), int(body.get("amt_msat")))
    else {
        return stream_status(StatusCode::BAD_REQUEST, 3, "bad integer");
    };
    let Ok(invoice) = parse_invoice(&bolt11) else {
        return stream_status(StatusCode::INTERNAL_SERVER_ERROR, 2, "invalid bech32 string");
    };
    if let Some(previous) = lnd.payments.lock().unwrap().get(&invoice.payment_hash)
        && previous["status"] == "SUCCEEDED"
    {
        return stream_status(StatusCode::CONFLICT, 6, "invoice is already paid");
    }
    let result = match (invoice.amount_msat, amt_msat) {
        (Some(_), 0) => lnd.node.pay(&bolt11, fee_limit_msat as u64).await,
        (None, amt) if amt > 0 => {
            lnd.node.pay_amount(&bolt11, amt as u64, fee_limit_msat as u64).await
        }
        (None, _) => {
            return stream_status(
                StatusCode::INTERNAL_SERVER_ERROR,
                2,
                "amount must be specified when paying a zero amount invoice",
            );
        }
        (Some(_), _) => {
            return stream_status(
                StatusCode::INTERNAL_SERVER_ERROR,
                2,
                "amount must not be specified when paying a non-zero amount invoice",
            );
        }
    };
    let payment = match result {
        Ok(paid) => {
            let preimage = if lnd.faults.lie() { [0x42; 32] } else { paid.preimage };
            json!({
                "payment_hash": hex::encode(paid.payment_hash), "value": (paid.amount_msat / 1000).to_string(),
                "payment_preimage": hex::encode(preimage), "value_sat": (paid.amount_msat / 1000).to_string(),
                "value_msat": paid.amount_msat.to_string(), "payment_request": bolt11, "status": "SUCCEEDED",
                "fee_sat": (paid.fee_msat / 1000).to_string(), "fee_msat": paid.fee_msat.to_string(),
                "creation_time_ns": "0", "htlcs": [], "payment_index": "1", "failure_reason": "FAILURE_REASON_NONE",
            })
        }
        Err(LightningError::InvalidInvoice(message)) => {
            // lnd checks the invoice before registering a payment.
            return stream_status(StatusCode::INTERNAL_SERVER_ERROR, 2, &message);
        }
        Err(error) => json!({
            "payment_hash": hex::encode(invoice.payment_hash), "value": "0",
            "payment_preimage": "0".repeat(64), "value_msat": "0", "payment_request": bolt11,
            "status": "FAILED", "fee_msat": "0", "htlcs": [], "payment_index": "1",
            "failure_reason": failure_reason(&error),
        }),
    };
    lnd.payments.lock().unwrap().insert(invoice.payment_hash, payment.clone());
    let mut lines = Vec::new();
    if body.get("no_inflight_updates") != Some(&Value::Bool(true)) {
        let mut in_flight = payment.clone();
        in_flight["status"] = "IN_FLIGHT".into();
        lines.push(line(in_flight));
    }
    lines.push(line(payment));
    Response::new(Body::from_stream(futures_util::stream::iter(lines)))
}

async fn track_payment(
    State(lnd): State<Arc<Lnd>>,
    headers: HeaderMap,
    Path(payment_hash): Path<String>,
) -> Response {
    if let Some(message) = macaroon_error(&headers, true) {
        return stream_status(StatusCode::INTERNAL_SERVER_ERROR, 2, &message);
    }
    let Some(hash) = decode_path_bytes(&payment_hash) else {
        return stream_status(StatusCode::BAD_REQUEST, 3, "bad payment_hash");
    };
    let Some(payment) = lnd.payments.lock().unwrap().get(&hash).cloned() else {
        return stream_status(StatusCode::NOT_FOUND, 5, "payment isn't initiated");
    };
    Response::new(Body::from_stream(futures_util::stream::iter(vec![line(payment)])))
}

/// lnd's encoding of `bytes` fields in JSON.
fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A loopback lnd on its own dev node, serving HTTPS with its own `tls.cert`; stops when
/// dropped.
pub struct LoopbackLnd {
    lnd: Arc<Lnd>,
    tls: NodeTls,
    server: Server,
}

impl LoopbackLnd {
    /// Starts an lnd on a new dev node on `network` holding `balance_msat`.
    pub async fn start(network: &DevNetwork, balance_msat: u64) -> Self {
        let faults = Arc::new(Faults::default());
        let lnd = Arc::new(Lnd {
            node: DevNode::random(network, balance_msat),
            faults: faults.clone(),
            invoices: Mutex::default(),
            payments: Mutex::default(),
            next_index: AtomicU64::new(0),
        });
        let router = Router::new()
            .route("/v1/invoices", post(add_invoice))
            .route("/v1/invoice/{r_hash_str}", get(lookup_invoice))
            .route("/v2/invoices/subscribe/{r_hash}", get(subscribe_invoice))
            .route("/v2/router/send", post(send_payment))
            .route("/v2/router/track/{payment_hash}", get(track_payment))
            .with_state(lnd.clone())
            .layer(axum::middleware::from_fn_with_state(faults, super::apply_faults));
        let tls = lnd_tls();
        let server = serve(router, Some(&tls)).await;
        LoopbackLnd { lnd, tls, server }
    }

    /// The dev node behind it: its balance, invoices and payments.
    pub fn dev(&self) -> &DevNode {
        &self.lnd.node
    }

    /// This server's fault switches and request log.
    pub fn faults(&self) -> &Faults {
        &self.lnd.faults
    }

    /// Its certificate: `cert_pem` is what an operator pins as `tls.cert`.
    pub fn tls(&self) -> &NodeTls {
        &self.tls
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.server.addr)
    }
}
