//! The dev wallet over HTTP, so that `farebox pay` in one process can pay invoices of the dev
//! node that `farebox demo --serve` runs in another.
//!
//! Only the network is simulated: the serving process owns a real dev node that signed the
//! invoice and holds the preimage; the wallet node that pays lives there too, and this API lets
//! a remote process ask it to pay (as an LNbits or NWC wallet would be asked). Bound to loopback.

use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use farebox_lightning::{
    CreatedInvoice, InvoiceRequest, InvoiceState, LightningBackend, LightningError, PaymentHash,
    PaymentOutcome,
};
use http::StatusCode;
use serde_json::{Value, json};

/// The routes of the dev wallet API, paying from `wallet`.
pub fn router(wallet: Arc<farebox_lightning::DevNode>) -> Router {
    Router::new().route("/v1/pay", post(pay)).route("/v1/balance", get(balance)).with_state(wallet)
}

async fn pay(
    State(wallet): State<Arc<farebox_lightning::DevNode>>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let Some(invoice) = body.get("invoice").and_then(Value::as_str) else {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "missing \"invoice\""})));
    };
    let max_fee = body.get("max_fee_msat").and_then(Value::as_u64).unwrap_or(0);
    match wallet.pay(invoice, max_fee).await {
        Ok(p) => (
            StatusCode::OK,
            Json(json!({
                "preimage": hex::encode(p.preimage),
                "payment_hash": hex::encode(p.payment_hash),
                "amount_msat": p.amount_msat,
                "fee_msat": p.fee_msat,
            })),
        ),
        Err(e) => (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({"error": e.to_string()}))),
    }
}

async fn balance(State(wallet): State<Arc<farebox_lightning::DevNode>>) -> Json<Value> {
    Json(json!({ "balance_msat": wallet.balance_msat() }))
}

/// A [`LightningBackend`] that pays through a remote dev wallet API. It only pays.
pub struct RemoteDevWallet {
    base: reqwest::Url,
    http: reqwest::Client,
}

/// Largest answer read from the dev wallet.
const MAX_WALLET_REPLY: usize = 16 * 1024;

impl RemoteDevWallet {
    pub fn new(base: reqwest::Url) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .unwrap_or_default();
        RemoteDevWallet { base, http }
    }
}

fn hash32(v: &Value, key: &str) -> Result<[u8; 32], LightningError> {
    let text = v.get(key).and_then(Value::as_str).unwrap_or_default();
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out)
        .map_err(|_| LightningError::OutcomeUnknown(format!("dev wallet sent a bad {key}")))?;
    Ok(out)
}

#[async_trait]
impl LightningBackend for RemoteDevWallet {
    async fn create_invoice(&self, _: InvoiceRequest) -> Result<CreatedInvoice, LightningError> {
        Err(LightningError::Unsupported("the remote dev wallet only pays"))
    }

    async fn invoice_state(&self, _: &PaymentHash) -> Result<InvoiceState, LightningError> {
        Err(LightningError::Unsupported("the remote dev wallet only pays"))
    }

    async fn pay(&self, bolt11: &str, max_fee_msat: u64) -> Result<PaymentOutcome, LightningError> {
        let url =
            self.base.join("v1/pay").map_err(|e| LightningError::Unavailable(e.to_string()))?;
        let sent = self
            .http
            .post(url)
            .json(&json!({ "invoice": bolt11, "max_fee_msat": max_fee_msat }))
            .send()
            .await;
        let mut reply = match sent {
            Ok(reply) => reply,
            // Never connected: nothing was asked of the wallet, so nothing was paid.
            Err(e) if e.is_connect() => {
                return Err(LightningError::Unavailable(format!(
                    "dev wallet at {}: {e}",
                    self.base
                )));
            }
            // Sent, but the answer was lost: the wallet may have paid.
            Err(e) => {
                return Err(LightningError::OutcomeUnknown(format!(
                    "dev wallet at {}: {e}",
                    self.base
                )));
            }
        };
        let ok = reply.status().is_success();
        let mut bytes = Vec::new();
        loop {
            match reply.chunk().await {
                Ok(Some(chunk)) if bytes.len() + chunk.len() <= MAX_WALLET_REPLY => {
                    bytes.extend_from_slice(&chunk)
                }
                Ok(Some(_)) => {
                    return Err(LightningError::OutcomeUnknown(
                        "dev wallet reply too large".into(),
                    ));
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(LightningError::OutcomeUnknown(format!("dev wallet reply: {e}")));
                }
            }
        }
        let body: Value = serde_json::from_slice(&bytes).map_err(|e| {
            LightningError::OutcomeUnknown(format!("dev wallet reply is not JSON: {e}"))
        })?;
        if !ok {
            let why = body.get("error").and_then(Value::as_str).unwrap_or("unknown error");
            return Err(LightningError::PaymentFailed(why.to_string()));
        }
        let preimage = hash32(&body, "preimage")?;
        let payment_hash = hash32(&body, "payment_hash")?;
        Ok(PaymentOutcome {
            preimage,
            payment_hash,
            amount_msat: body.get("amount_msat").and_then(Value::as_u64).unwrap_or(0),
            fee_msat: body.get("fee_msat").and_then(Value::as_u64).unwrap_or(0),
        })
    }
}
