//! The `session` intent with the `lightning` method (`draft-lightning-session-00`): a prepaid
//! balance. The payer pays a deposit invoice once; the deposit's preimage is then a bearer
//! secret for the whole session, each request drawing its price from the balance; the payer tops
//! up with fresh invoices and, on close, gets what is left back on its own (amountless) return
//! invoice.
//!
//! Request (the challenge's `request` JSON):
//!
//! ```json
//! {"amount": "10", "currency": "sat", "unitType": "request",
//!  "depositInvoice": "lnbcrt2u1…", "paymentHash": "<64 hex>", "depositAmount": "200",
//!  "idleTimeout": "300"}
//! ```
//!
//! `amount` is the price of one unit in satoshis; `depositInvoice` (for `open` and `topUp`) pays
//! `depositAmount` satoshis; `paymentHash` is its hash. Every 402 carries a fresh invoice.
//!
//! Payloads, by `action` (preimages and hashes are 64 lowercase hex digits):
//!
//! ```json
//! {"action": "open", "preimage": "…", "returnInvoice": "lnbcrt1…"}
//! {"action": "bearer", "sessionId": "<deposit payment hash>", "preimage": "…"}
//! {"action": "topUp", "sessionId": "…", "topUpPreimage": "…"}
//! {"action": "close", "sessionId": "…", "preimage": "…"}
//! ```
//!
//! A successful `topUp` is answered `200 {"status":"ok"}`, a `close` `200 {"status":"closed",
//! "refundSats":N,"refundStatus":"succeeded"|"failed"|"skipped"}` (farebox adds `"pending"` while
//! another close of the session is paying the refund and `"unknown"` when its outcome is not
//! known); neither runs the handler.

#[cfg(feature = "client")]
pub(crate) mod client;
pub mod server;

use farebox_lightning::{PaymentHash, Preimage};
use serde_json::{Map, Value, json};

use crate::fields::{parse_hash, str_field};

/// The method id.
pub const METHOD: &str = "lightning";
/// The intent id.
pub const INTENT: &str = "session";
/// The `currency` of a Lightning session.
pub const CURRENCY: &str = "sat";
/// Longest return invoice accepted, in bytes.
pub const MAX_INVOICE_LEN: usize = 2048;

/// A Lightning session request or payload that does not have the expected shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LightningSessionError {
    #[error("{0} is missing or not a string")]
    Missing(&'static str),
    #[error("{0} is not a decimal number of satoshis")]
    Amount(&'static str),
    #[error("request.currency is {0:?}, expected \"sat\"")]
    Currency(String),
    #[error("{0} is not 64 hex digits")]
    Hash(&'static str),
    #[error("payload.returnInvoice is longer than {MAX_INVOICE_LEN} bytes or not BOLT11 text")]
    ReturnInvoice,
    #[error("unknown action {0:?} (expected open, bearer, topUp or close)")]
    Action(String),
}

/// A Lightning session request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LightningSessionRequest {
    /// Satoshis per unit.
    pub amount_sat: u64,
    pub unit_type: Option<String>,
    /// The invoice to pay for an `open` or a `topUp`.
    pub deposit_invoice: Option<String>,
    pub payment_hash: PaymentHash,
    /// What the deposit invoice pays, in satoshis.
    pub deposit_sat: Option<u64>,
    /// Seconds of inactivity after which the server closes the session and refunds.
    pub idle_timeout_secs: Option<u64>,
    pub description: Option<String>,
}

impl LightningSessionRequest {
    /// The request JSON.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "amount": self.amount_sat.to_string(),
            "currency": CURRENCY,
            "paymentHash": hex::encode(self.payment_hash),
        });
        let obj = v.as_object_mut().expect("an object literal");
        let mut put = |k: &str, value: Option<String>| {
            if let Some(value) = value {
                obj.insert(k.into(), Value::String(value));
            }
        };
        put("unitType", self.unit_type.clone());
        put("depositInvoice", self.deposit_invoice.clone());
        put("depositAmount", self.deposit_sat.map(|d| d.to_string()));
        put("idleTimeout", self.idle_timeout_secs.map(|d| d.to_string()));
        put("description", self.description.clone());
        v
    }

    /// Reads a request JSON.
    pub fn from_json(v: &Value) -> Result<Self, LightningSessionError> {
        use LightningSessionError as E;
        let obj = v.as_object().ok_or(E::Missing("request"))?;
        let currency = str_field(obj, "currency").ok_or(E::Missing("currency"))?;
        if currency != CURRENCY {
            return Err(E::Currency(currency.chars().take(16).collect()));
        }
        let optional_sats = |name: &'static str| match obj.get(name) {
            None => Ok(None),
            Some(_) => sats(obj, name).map(Some),
        };
        Ok(LightningSessionRequest {
            amount_sat: sats(obj, "amount")?,
            unit_type: str_field(obj, "unitType").map(str::to_owned),
            deposit_invoice: str_field(obj, "depositInvoice").map(str::to_owned),
            payment_hash: hash(obj, "paymentHash")?,
            deposit_sat: optional_sats("depositAmount")?,
            idle_timeout_secs: optional_sats("idleTimeout")?,
            description: str_field(obj, "description").map(str::to_owned),
        })
    }
}

/// A Lightning session payload.
#[derive(Clone, PartialEq, Eq)]
pub enum SessionPayload {
    /// Opens the session paid by the challenge's deposit invoice.
    Open { preimage: Preimage, return_invoice: String },
    /// Draws this request's price from the balance.
    Bearer { session_id: PaymentHash, preimage: Preimage },
    /// Adds the challenge's deposit to the balance.
    TopUp { session_id: PaymentHash, top_up_preimage: Preimage },
    /// Ends the session and refunds the rest to the return invoice.
    Close { session_id: PaymentHash, preimage: Preimage },
}

impl std::fmt::Debug for SessionPayload {
    // Preimages are bearer secrets: only the action and the session are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("SessionPayload");
        d.field("action", &self.action());
        if let Some(id) = self.session_id() {
            d.field("session_id", &hex::encode(id));
        }
        d.finish_non_exhaustive()
    }
}

impl SessionPayload {
    /// The action name.
    pub fn action(&self) -> &'static str {
        match self {
            SessionPayload::Open { .. } => "open",
            SessionPayload::Bearer { .. } => "bearer",
            SessionPayload::TopUp { .. } => "topUp",
            SessionPayload::Close { .. } => "close",
        }
    }

    /// The session it names (`None` for `open`, whose session is the challenge's payment hash).
    pub fn session_id(&self) -> Option<PaymentHash> {
        match self {
            SessionPayload::Open { .. } => None,
            SessionPayload::Bearer { session_id, .. }
            | SessionPayload::TopUp { session_id, .. }
            | SessionPayload::Close { session_id, .. } => Some(*session_id),
        }
    }

    /// The payload JSON.
    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("action".into(), Value::String(self.action().into()));
        let mut put = |k: &str, v: String| {
            m.insert(k.into(), Value::String(v));
        };
        match self {
            SessionPayload::Open { preimage, return_invoice } => {
                put("preimage", hex::encode(preimage));
                put("returnInvoice", return_invoice.clone());
            }
            SessionPayload::Bearer { session_id, preimage }
            | SessionPayload::Close { session_id, preimage } => {
                put("sessionId", hex::encode(session_id));
                put("preimage", hex::encode(preimage));
            }
            SessionPayload::TopUp { session_id, top_up_preimage } => {
                put("sessionId", hex::encode(session_id));
                put("topUpPreimage", hex::encode(top_up_preimage));
            }
        }
        m
    }

    /// Reads a payload JSON.
    pub fn from_json(p: &Map<String, Value>) -> Result<Self, LightningSessionError> {
        use LightningSessionError as E;
        let action = str_field(p, "action").ok_or(E::Missing("payload.action"))?;
        Ok(match action {
            "open" => {
                let invoice =
                    str_field(p, "returnInvoice").ok_or(E::Missing("payload.returnInvoice"))?;
                if invoice.is_empty()
                    || invoice.len() > MAX_INVOICE_LEN
                    || !invoice.bytes().all(|b| b.is_ascii_alphanumeric())
                {
                    return Err(E::ReturnInvoice);
                }
                SessionPayload::Open {
                    preimage: hash(p, "preimage")?,
                    return_invoice: invoice.to_owned(),
                }
            }
            "bearer" => SessionPayload::Bearer {
                session_id: hash(p, "sessionId")?,
                preimage: hash(p, "preimage")?,
            },
            "topUp" => SessionPayload::TopUp {
                session_id: hash(p, "sessionId")?,
                top_up_preimage: hash(p, "topUpPreimage")?,
            },
            "close" => SessionPayload::Close {
                session_id: hash(p, "sessionId")?,
                preimage: hash(p, "preimage")?,
            },
            other => return Err(E::Action(other.chars().take(32).collect())),
        })
    }
}

/// What the server did with the balance left at close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundStatus {
    Succeeded,
    /// Not paid (no route, refused); the server keeps the balance.
    Failed,
    /// Nothing was left to refund.
    Skipped,
    /// Being paid by another close of the same session (farebox's value beside the draft's).
    Pending,
    /// Attempted, outcome unknown (the node's answer was lost, or the server stopped while
    /// paying); never paid again automatically (farebox's value beside the draft's).
    Unknown,
}

impl RefundStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Succeeded => "succeeded",
            RefundStatus::Failed => "failed",
            RefundStatus::Skipped => "skipped",
            RefundStatus::Pending => "pending",
            RefundStatus::Unknown => "unknown",
        }
    }

    /// Reads [`Self::as_str`]'s spelling.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Succeeded, Self::Failed, Self::Skipped, Self::Pending, Self::Unknown]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// The body of a `close` answer.
pub fn closed_body(refund_sat: u64, status: RefundStatus) -> Value {
    json!({"status": "closed", "refundSats": refund_sat, "refundStatus": status.as_str()})
}

fn sats(obj: &Map<String, Value>, name: &'static str) -> Result<u64, LightningSessionError> {
    let text = str_field(obj, name).ok_or(LightningSessionError::Missing(name))?;
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(LightningSessionError::Amount(name));
    }
    text.parse().map_err(|_| LightningSessionError::Amount(name))
}

fn hash(obj: &Map<String, Value>, name: &'static str) -> Result<[u8; 32], LightningSessionError> {
    let text = str_field(obj, name).ok_or(LightningSessionError::Missing(name))?;
    parse_hash(text).ok_or(LightningSessionError::Hash(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_with_the_drafts_names() {
        let r = LightningSessionRequest {
            amount_sat: 2,
            unit_type: Some("request".into()),
            deposit_invoice: Some("lnbcrt3u1xyz".into()),
            payment_hash: [7; 32],
            deposit_sat: Some(300),
            idle_timeout_secs: Some(300),
            description: None,
        };
        let v = r.to_json();
        assert_eq!(v["amount"], "2");
        assert_eq!(v["currency"], "sat");
        assert_eq!(v["depositAmount"], "300");
        assert_eq!(v["idleTimeout"], "300");
        assert_eq!(v["paymentHash"], "07".repeat(32));
        assert_eq!(LightningSessionRequest::from_json(&v).unwrap(), r);
        let mut bad = v.clone();
        bad["currency"] = json!("BTC");
        assert_eq!(
            LightningSessionRequest::from_json(&bad).unwrap_err(),
            LightningSessionError::Currency("BTC".into())
        );
    }

    #[test]
    fn payloads_round_trip_and_hide_preimages() {
        for p in [
            SessionPayload::Open { preimage: [1; 32], return_invoice: "lnbcrt1abc".into() },
            SessionPayload::Bearer { session_id: [2; 32], preimage: [1; 32] },
            SessionPayload::TopUp { session_id: [2; 32], top_up_preimage: [3; 32] },
            SessionPayload::Close { session_id: [2; 32], preimage: [1; 32] },
        ] {
            assert_eq!(SessionPayload::from_json(&p.to_json()).unwrap(), p);
            assert!(!format!("{p:?}").contains(&"01".repeat(32)));
        }
        let mut p = SessionPayload::Bearer { session_id: [2; 32], preimage: [1; 32] }.to_json();
        p.insert("action".into(), json!("refund"));
        assert_eq!(
            SessionPayload::from_json(&p).unwrap_err(),
            LightningSessionError::Action("refund".into())
        );
        let mut p =
            SessionPayload::Open { preimage: [1; 32], return_invoice: "x".into() }.to_json();
        p.insert("returnInvoice".into(), json!("ln bad"));
        assert_eq!(
            SessionPayload::from_json(&p).unwrap_err(),
            LightningSessionError::ReturnInvoice
        );
    }
}
