//! The `Payment-Receipt` response header: `base64url_nopad(JSON)`.
//!
//! Core members, in the order the SDKs write them: `status` (always `"success"`), `method`,
//! `timestamp` (RFC 3339), `reference` (payment hash, transaction hash, …). Methods add members
//! (e.g. `challengeId`), kept in [`PaymentReceipt::extensions`] and written after the core ones.
//! The JSON is written as serialized, not JCS. A receipt never goes on an error response, and the
//! farebox server marks responses that carry one `Cache-Control: private`.

use http::HeaderName;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::jcs;

/// The header name.
pub const PAYMENT_RECEIPT: HeaderName = HeaderName::from_static("payment-receipt");

/// Largest receipt [`PaymentReceipt::decode`] reads.
pub const MAX_RECEIPT_LEN: usize = 8 * 1024;

/// A receipt that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    #[error("receipt longer than {MAX_RECEIPT_LEN} bytes")]
    TooLarge,
    #[error("receipt is not base64url")]
    NotBase64,
    #[error("receipt is not the expected JSON: {0}")]
    Json(String),
    #[error("receipt status is {0:?}, not \"success\"")]
    Status(String),
}

/// A decoded `Payment-Receipt`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentReceipt {
    pub status: String,
    pub method: String,
    pub timestamp: String,
    pub reference: String,
    #[serde(flatten)]
    pub extensions: Map<String, Value>,
}

impl PaymentReceipt {
    /// A `success` receipt.
    pub fn success(method: &str, timestamp: String, reference: String) -> Self {
        PaymentReceipt {
            status: "success".into(),
            method: method.into(),
            timestamp,
            reference,
            extensions: Map::new(),
        }
    }

    /// Adds a method-specific member.
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.extensions.insert(name.into(), value.into());
        self
    }

    /// The header value.
    pub fn encode(&self) -> String {
        // A struct of strings and JSON values always serializes.
        jcs::b64url_encode(&serde_json::to_vec(self).unwrap_or_default())
    }

    /// Reads a header value; a status other than `success` is an error.
    pub fn decode(value: &str) -> Result<Self, ReceiptError> {
        if value.len() > MAX_RECEIPT_LEN {
            return Err(ReceiptError::TooLarge);
        }
        let bytes = jcs::b64url_decode(value.trim()).map_err(|_| ReceiptError::NotBase64)?;
        let r: PaymentReceipt =
            serde_json::from_slice(&bytes).map_err(|e| ReceiptError::Json(e.to_string()))?;
        if r.status != "success" {
            return Err(ReceiptError::Status(r.status));
        }
        Ok(r)
    }
}
