//! A loopback Core Lightning CLNRest: `POST /v1/<method>` with named parameters (unknown ones
//! refused, as lightningd's JSON-RPC does), the rune in a `Rune` header (missing: 403 code
//! 1501; invalid: 401 code 1502), results with HTTP 201, JSON-RPC errors `{"code", "message",
//! "data"}` with HTTP 500, result and error shapes from lightningd's
//! `doc/schemas/{invoice,listinvoices,waitinvoice,pay,listpays}.json`, HTTPS with a CA and a
//! server certificate made the way CLNRest makes them.
//!
//! Methods: `invoice`, `listinvoices`, `waitinvoice`, `pay`, `listpays`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::{Faults, NodeTls, Server, cln_tls, serve};
use crate::{
    DevNetwork, DevNode, InvoiceRequest, InvoiceState, LightningBackend, PaymentHash, parse_invoice,
};

/// The rune this node accepts (every method).
pub const RUNE: &str = "tU-RLjMiDpY2U0o3W1oFowar36RFGpWloPbW9-RuZdo9MyZpZD0wMjRiOWExZmE4ZTAw";

/// One mock CLNRest in front of a dev node.
struct Cln {
    node: DevNode,
    faults: Arc<Faults>,
    /// label -> (payment hash, bolt11, description, created_index).
    invoices: Mutex<HashMap<String, (PaymentHash, String, String, u64)>>,
    /// `listpays` entries by payment hash.
    pays: Mutex<HashMap<PaymentHash, Value>>,
    next_index: AtomicU64,
}

/// Parameters each method accepts (lightningd refuses others with -32602).
fn known_params(method: &str) -> Option<&'static [&'static str]> {
    Some(match method {
        "invoice" => &[
            "amount_msat",
            "label",
            "description",
            "expiry",
            "fallbacks",
            "preimage",
            "exposeprivatechannels",
            "cltv",
            "deschashonly",
        ],
        "listinvoices" => {
            &["label", "invstring", "payment_hash", "offer_id", "index", "start", "limit"]
        }
        "waitinvoice" => &["label"],
        "pay" => &[
            "bolt11",
            "amount_msat",
            "label",
            "riskfactor",
            "maxfeepercent",
            "retry_for",
            "maxdelay",
            "exemptfee",
            "localinvreqid",
            "exclude",
            "maxfee",
            "description",
            "partial_msat",
        ],
        "listpays" => &["bolt11", "payment_hash", "status", "index", "start", "limit"],
        _ => return None,
    })
}

fn rpc_error(http: StatusCode, code: i64, message: &str) -> Response {
    (http, axum::Json(json!({"code": code, "message": message, "data": null}))).into_response()
}

/// The `payment_hash` parameter: 32 bytes of hex.
fn hash_param(params: &Value) -> Option<PaymentHash> {
    let bytes = hex::decode(params.get("payment_hash")?.as_str()?).ok()?;
    PaymentHash::try_from(bytes.as_slice()).ok()
}

fn bad_hash() -> Response {
    let message = "payment_hash: should be a 32 byte hex value";
    rpc_error(StatusCode::INTERNAL_SERVER_ERROR, -32602, message)
}

fn created(result: Value) -> Response {
    (StatusCode::CREATED, axum::Json(result)).into_response()
}

/// An msat amount as lightningd parses it: an integer, `"<n>msat"`, `"<n>sat"`, or `"any"`.
enum Msat {
    Any,
    Amount(u64),
}

fn msat(value: &Value) -> Option<Msat> {
    match value {
        Value::Number(n) => n.as_u64().map(Msat::Amount),
        Value::String(s) if s == "any" => Some(Msat::Any),
        Value::String(s) => match s.strip_suffix("msat") {
            Some(n) => n.parse().ok().map(Msat::Amount),
            None => s
                .strip_suffix("sat")
                .unwrap_or(s)
                .parse::<u64>()
                .ok()
                .map(|sat| Msat::Amount(sat * 1000)),
        },
        _ => None,
    }
}

fn unix(time: std::time::SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Cln {
    /// The `listinvoices` entry for an invoice this node issued.
    async fn invoice_entry(&self, label: &str) -> Option<Value> {
        let (hash, bolt11, description, index) =
            self.invoices.lock().unwrap().get(label).cloned()?;
        let parsed = parse_invoice(&bolt11).unwrap();
        let mut entry = json!({
            "label": label, "bolt11": bolt11, "payment_hash": hex::encode(hash),
            "description": description, "expires_at": parsed.expires_at(), "created_index": index,
        });
        if let Some(amount) = parsed.amount_msat {
            entry["amount_msat"] = amount.into();
        }
        let state = self.node.invoice_state(&hash).await.unwrap();
        let (status, preimage, received) = match state {
            InvoiceState::Settled { preimage, amount_msat } => ("paid", preimage, amount_msat),
            InvoiceState::Expired => ("expired", [0; 32], 0),
            _ if self.faults.lie() => ("paid", [0x42; 32], parsed.amount_msat.unwrap_or(0)),
            _ => ("unpaid", [0; 32], 0),
        };
        entry["status"] = status.into();
        if status == "paid" {
            entry["pay_index"] = 1.into();
            entry["amount_received_msat"] = received.into();
            entry["paid_at"] = unix(self.node.network().now()).into();
            entry["payment_preimage"] = hex::encode(preimage).into();
        }
        Some(entry)
    }

    fn label_of(&self, hash: &PaymentHash) -> Option<String> {
        self.invoices.lock().unwrap().iter().find(|(_, v)| &v.0 == hash).map(|(k, _)| k.clone())
    }

    async fn invoice(&self, params: &Value) -> Response {
        let (Some(amount), Some(label), Some(description)) = (
            params.get("amount_msat").and_then(msat),
            params.get("label").map(|l| l.as_str().map_or(l.to_string(), str::to_string)),
            params.get("description").and_then(Value::as_str),
        ) else {
            return rpc_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                -32602,
                "missing or bad amount_msat, label or description",
            );
        };
        if self.invoices.lock().unwrap().contains_key(&label) {
            return rpc_error(StatusCode::INTERNAL_SERVER_ERROR, 900, "Duplicate label");
        }
        let expiry =
            Duration::from_secs(params.get("expiry").and_then(Value::as_u64).unwrap_or(604_800));
        let made = match amount {
            Msat::Any => self.node.create_amountless_invoice(description.into(), expiry).await,
            Msat::Amount(amount_msat) => {
                self.node
                    .create_invoice(InvoiceRequest {
                        amount_msat,
                        memo: description.into(),
                        expiry,
                    })
                    .await
            }
        };
        let made = match made {
            Ok(made) => made,
            Err(e) => return rpc_error(StatusCode::INTERNAL_SERVER_ERROR, -1, &e.to_string()),
        };
        let index = self.next_index.fetch_add(1, Ordering::SeqCst) + 1;
        self.invoices
            .lock()
            .unwrap()
            .insert(label, (made.payment_hash, made.bolt11.clone(), description.into(), index));
        let parsed = parse_invoice(&made.bolt11).unwrap();
        created(json!({
            "payment_hash": hex::encode(made.payment_hash), "expires_at": parsed.expires_at(),
            "bolt11": made.bolt11, "payment_secret": hex::encode(parsed.payment_secret),
            "created_index": index,
        }))
    }

    async fn listinvoices(&self, params: &Value) -> Response {
        let Some(hash) = hash_param(params) else { return bad_hash() };
        let mut invoices = Vec::new();
        if let Some(label) = self.label_of(&hash) {
            invoices.extend(self.invoice_entry(&label).await);
        }
        created(json!({ "invoices": invoices }))
    }

    async fn waitinvoice(&self, params: &Value) -> Response {
        let label = params.get("label").and_then(Value::as_str).unwrap_or_default();
        let Some((hash, ..)) = self.invoices.lock().unwrap().get(label).cloned() else {
            return rpc_error(StatusCode::INTERNAL_SERVER_ERROR, -1, "Unknown invoice");
        };
        match self.node.wait_for_settlement(&hash, Duration::from_secs(3600)).await {
            Ok(InvoiceState::Expired) => {
                rpc_error(StatusCode::INTERNAL_SERVER_ERROR, 903, "invoice expired during wait")
            }
            _ => created(self.invoice_entry(label).await.unwrap()),
        }
    }

    async fn pay(&self, params: &Value) -> Response {
        let bolt11 = params.get("bolt11").and_then(Value::as_str).unwrap_or_default().to_string();
        let Ok(invoice) = parse_invoice(&bolt11) else {
            return rpc_error(StatusCode::INTERNAL_SERVER_ERROR, -32602, "bolt11: Invalid bolt11");
        };
        let maxfee = params.get("maxfee").and_then(Value::as_u64).unwrap_or(u64::MAX);
        let amount = params.get("amount_msat").and_then(msat);
        if let Some(done) = self.pays.lock().unwrap().get(&invoice.payment_hash)
            && done["status"] == "complete"
        {
            // pay reports an invoice it already paid as complete again.
            return created(json!({
                "payment_preimage": done["preimage"], "payment_hash": done["payment_hash"],
                "created_at": 0.0, "parts": 1, "amount_msat": done["amount_msat"],
                "amount_sent_msat": done["amount_sent_msat"], "status": "complete",
            }));
        }
        let result = match (invoice.amount_msat, amount) {
            (Some(_), None) => self.node.pay(&bolt11, maxfee).await,
            (None, Some(Msat::Amount(amount))) => {
                self.node.pay_amount(&bolt11, amount, maxfee).await
            }
            (None, _) => {
                return rpc_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    -32602,
                    "amount_msat parameter required",
                );
            }
            (Some(_), Some(_)) => {
                return rpc_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    -32602,
                    "amount_msat parameter unnecessary",
                );
            }
        };
        let now = unix(std::time::SystemTime::now());
        let hash = hex::encode(invoice.payment_hash);
        match result {
            Ok(paid) => {
                let preimage =
                    hex::encode(if self.faults.lie() { [0x42; 32] } else { paid.preimage });
                let sent = paid.amount_msat + paid.fee_msat;
                self.pays.lock().unwrap().insert(invoice.payment_hash, json!({
                    "created_index": 1, "payment_hash": hash, "status": "complete",
                    "destination": invoice.payee.to_string(), "created_at": now, "completed_at": now,
                    "bolt11": bolt11, "amount_msat": paid.amount_msat, "amount_sent_msat": sent,
                    "preimage": preimage,
                }));
                created(json!({
                    "payment_preimage": preimage, "destination": invoice.payee.to_string(),
                    "payment_hash": hash, "created_at": now as f64, "parts": 1,
                    "amount_msat": paid.amount_msat, "amount_sent_msat": sent, "status": "complete",
                }))
            }
            Err(error) => {
                let text = error.to_string();
                let code = if text.contains("expired") {
                    207
                } else if text.contains("fee") {
                    206
                } else if text.contains("rejected") {
                    203
                } else {
                    205
                };
                self.pays.lock().unwrap().insert(
                    invoice.payment_hash,
                    json!({
                        "created_index": 1, "payment_hash": hash, "status": "failed",
                        "created_at": now, "bolt11": bolt11, "amount_sent_msat": 0,
                    }),
                );
                rpc_error(StatusCode::INTERNAL_SERVER_ERROR, code, &text)
            }
        }
    }

    async fn listpays(&self, params: &Value) -> Response {
        let Some(hash) = hash_param(params) else { return bad_hash() };
        let pays: Vec<Value> = self.pays.lock().unwrap().get(&hash).cloned().into_iter().collect();
        created(json!({ "pays": pays }))
    }
}

async fn call(
    State(cln): State<Arc<Cln>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    match headers.get("rune").map(|v| v.to_str().unwrap_or_default()) {
        None => return rpc_error(StatusCode::FORBIDDEN, 1501, "Not authorized: Missing rune"),
        // Echoes the rune, as a careless node might, to prove farebox never repeats it.
        Some(rune) if rune != RUNE => {
            return rpc_error(
                StatusCode::UNAUTHORIZED,
                1502,
                &format!("Rune is not valid: {rune}"),
            );
        }
        Some(_) => {}
    }
    let Some(known) = known_params(&method) else {
        return rpc_error(StatusCode::NOT_FOUND, -32601, &format!("Unknown command '{method}'"));
    };
    let params: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_str(&body) {
            Ok(params) => params,
            Err(_) => {
                return rpc_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    -32700,
                    "Could not parse JSON request",
                );
            }
        }
    };
    if let Some(unknown) =
        params.as_object().and_then(|o| o.keys().find(|k| !known.contains(&k.as_str())))
    {
        return rpc_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            -32602,
            &format!("unknown parameter: {unknown}"),
        );
    }
    match method.as_str() {
        "invoice" => cln.invoice(&params).await,
        "listinvoices" => cln.listinvoices(&params).await,
        "waitinvoice" => cln.waitinvoice(&params).await,
        "pay" => cln.pay(&params).await,
        _ => cln.listpays(&params).await,
    }
}

/// A loopback CLNRest on its own dev node, with its own CA and server certificate; stops when
/// dropped.
pub struct LoopbackCln {
    cln: Arc<Cln>,
    tls: NodeTls,
    server: Server,
}

impl LoopbackCln {
    /// Starts a CLNRest on a new dev node on `network` holding `balance_msat`.
    pub async fn start(network: &DevNetwork, balance_msat: u64) -> Self {
        let faults = Arc::new(Faults::default());
        let cln = Arc::new(Cln {
            node: DevNode::random(network, balance_msat),
            faults: faults.clone(),
            invoices: Mutex::default(),
            pays: Mutex::default(),
            next_index: AtomicU64::new(0),
        });
        let router = Router::new()
            .route("/v1/{method}", post(call))
            .with_state(cln.clone())
            .layer(axum::middleware::from_fn_with_state(faults, super::apply_faults));
        let tls = cln_tls();
        let server = serve(router, Some(&tls)).await;
        LoopbackCln { cln, tls, server }
    }

    /// The dev node behind it: its balance, invoices and payments.
    pub fn dev(&self) -> &DevNode {
        &self.cln.node
    }

    /// This server's fault switches and request log.
    pub fn faults(&self) -> &Faults {
        &self.cln.faults
    }

    /// Its certificates: `ca_pem` is CLNRest's `ca.pem`, `cert_pem` its `server.pem`.
    pub fn tls(&self) -> &NodeTls {
        &self.tls
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.server.addr)
    }
}
