//! The `charge` intent with the `lightning` method (`draft-lightning-charge-00`).
//!
//! Request (the challenge's `request` JSON):
//!
//! ```json
//! {"amount": "21", "currency": "sat", "description": "…",
//!  "methodDetails": {"invoice": "lnbcrt210n1…", "paymentHash": "<64 hex>", "network": "regtest"}}
//! ```
//!
//! `amount` is a decimal string of whole satoshis (the charge intent's base unit for `sat`);
//! `methodDetails.invoice` is the BOLT11 invoice to pay and is authoritative; `paymentHash` and
//! `network` are optional hints that farebox always writes. Payload: `{"preimage": "<64 hex>"}`;
//! the proof is `sha256(preimage) == paymentHash`, the same primitive as L402. `source` is not
//! required.
//!
//! farebox reads the payment hash from `paymentHash` when present: the request is bound by the
//! challenge id, so a request that passed [`ChallengeKey::verify_id`](crate::ChallengeKey) is the
//! one this server wrote, and skipping the BOLT11 parse (≈ 56 µs, signature recovery) keeps a
//! verification in the microsecond range. Without `paymentHash` the invoice is parsed.

#[cfg(feature = "client")]
pub(crate) mod client;
pub mod server;

use farebox_lightning::{Currency, PaymentHash, Preimage, bolt11};
use serde_json::{Map, Value, json};

use crate::fields::{parse_hash, str_field};

/// The method id.
pub const METHOD: &str = "lightning";
/// The intent id.
pub const INTENT: &str = "charge";
/// The `currency` of a Lightning charge.
pub const CURRENCY: &str = "sat";

/// A Lightning charge request or payload that does not have the expected shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LightningChargeError {
    #[error("request.{0} is missing or not a string")]
    Missing(&'static str),
    #[error("request.amount is not a decimal number of satoshis")]
    Amount,
    #[error("request.currency is {0:?}, expected \"sat\"")]
    Currency(String),
    #[error("request.methodDetails.paymentHash is not 64 hex digits")]
    PaymentHash,
    #[error("request.methodDetails.invoice: {0}")]
    Invoice(String),
    #[error("payload.preimage is missing or not 64 hex digits")]
    Preimage,
}

/// A Lightning charge request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LightningChargeRequest {
    /// Whole satoshis.
    pub amount_sat: u64,
    /// BOLT11.
    pub invoice: String,
    pub payment_hash: PaymentHash,
    /// `mainnet`, `testnet`, `signet` or `regtest`.
    pub network: Option<String>,
    pub description: Option<String>,
}

/// The `network` name of a BOLT11 currency.
pub fn network_name(currency: &Currency) -> &'static str {
    match currency {
        Currency::Bitcoin => "mainnet",
        Currency::BitcoinTestnet => "testnet",
        Currency::Signet => "signet",
        Currency::Regtest | Currency::Simnet => "regtest",
    }
}

impl LightningChargeRequest {
    /// The request JSON.
    pub fn to_json(&self) -> Value {
        let mut details = Map::new();
        details.insert("invoice".into(), Value::String(self.invoice.clone()));
        details.insert("paymentHash".into(), Value::String(hex::encode(self.payment_hash)));
        if let Some(n) = &self.network {
            details.insert("network".into(), Value::String(n.clone()));
        }
        let mut v = json!({
            "amount": self.amount_sat.to_string(),
            "currency": CURRENCY,
            "methodDetails": details,
        });
        if let (Some(d), Some(obj)) = (&self.description, v.as_object_mut()) {
            obj.insert("description".into(), Value::String(d.clone()));
        }
        v
    }

    /// Reads a request JSON. Without `paymentHash` the invoice is parsed (signature checked) for
    /// its hash; with it, the two are trusted to agree (see the module docs).
    pub fn from_json(v: &Value) -> Result<Self, LightningChargeError> {
        let obj = v.as_object().ok_or(LightningChargeError::Missing("amount"))?;
        let amount = str_field(obj, "amount").ok_or(LightningChargeError::Missing("amount"))?;
        if amount.is_empty() || amount.len() > 20 || !amount.bytes().all(|b| b.is_ascii_digit()) {
            return Err(LightningChargeError::Amount);
        }
        let amount_sat: u64 = amount.parse().map_err(|_| LightningChargeError::Amount)?;
        let currency =
            str_field(obj, "currency").ok_or(LightningChargeError::Missing("currency"))?;
        if currency != CURRENCY {
            return Err(LightningChargeError::Currency(currency.into()));
        }
        let details = obj
            .get("methodDetails")
            .and_then(Value::as_object)
            .ok_or(LightningChargeError::Missing("methodDetails"))?;
        let invoice = str_field(details, "invoice")
            .ok_or(LightningChargeError::Missing("methodDetails.invoice"))?;
        let payment_hash = match str_field(details, "paymentHash") {
            Some(h) => parse_hash(h).ok_or(LightningChargeError::PaymentHash)?,
            None => {
                bolt11::parse_invoice(invoice)
                    .map_err(|e| LightningChargeError::Invoice(e.to_string()))?
                    .payment_hash
            }
        };
        Ok(LightningChargeRequest {
            amount_sat,
            invoice: invoice.into(),
            payment_hash,
            network: str_field(details, "network").map(str::to_owned),
            description: str_field(obj, "description").map(str::to_owned),
        })
    }
}

/// The payload JSON for `preimage`.
pub fn payload(preimage: &Preimage) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("preimage".into(), Value::String(hex::encode(preimage)));
    m
}

/// The preimage in a payload. Hex digits of either case are accepted (the spec writes
/// lowercase).
pub fn preimage_of(payload: &Map<String, Value>) -> Result<Preimage, LightningChargeError> {
    payload
        .get("preimage")
        .and_then(Value::as_str)
        .and_then(parse_hash)
        .ok_or(LightningChargeError::Preimage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips() {
        let r = LightningChargeRequest {
            amount_sat: 21,
            invoice: "lnbcrt210n1xyz".into(),
            payment_hash: [7; 32],
            network: Some("regtest".into()),
            description: Some("weather".into()),
        };
        let v = r.to_json();
        assert_eq!(v["amount"], "21");
        assert_eq!(v["currency"], "sat");
        assert_eq!(v["methodDetails"]["paymentHash"], "07".repeat(32));
        assert_eq!(LightningChargeRequest::from_json(&v).unwrap(), r);
    }

    #[test]
    fn refuses_bad_requests_and_payloads() {
        let bad = |v: Value| LightningChargeRequest::from_json(&v).unwrap_err();
        let details = json!({"invoice": "x", "paymentHash": "00".repeat(32)});
        assert_eq!(
            bad(json!({"amount": 21, "currency": "sat"})),
            LightningChargeError::Missing("amount")
        );
        assert_eq!(
            bad(json!({"amount": "-1", "currency": "sat", "methodDetails": details})),
            LightningChargeError::Amount
        );
        assert_eq!(
            bad(
                json!({"amount": "99999999999999999999", "currency": "sat", "methodDetails": details})
            ),
            LightningChargeError::Amount
        );
        assert_eq!(
            bad(json!({"amount": "1", "currency": "usd", "methodDetails": details})),
            LightningChargeError::Currency("usd".into())
        );
        assert!(matches!(
            bad(json!({"amount": "1", "currency": "sat", "methodDetails": {"invoice": "x"}})),
            LightningChargeError::Invoice(_)
        ));
        assert_eq!(preimage_of(&payload(&[9; 32])).unwrap(), [9; 32]);
        let mut p = Map::new();
        p.insert("preimage".into(), json!("zz".repeat(32)));
        assert_eq!(preimage_of(&p), Err(LightningChargeError::Preimage));
        assert_eq!(preimage_of(&Map::new()), Err(LightningChargeError::Preimage));
    }
}
