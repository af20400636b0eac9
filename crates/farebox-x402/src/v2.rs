//! x402 protocol version 2 wire types (x402.md §1.3, CB `specs/x402-specification-v2.md`).
//!
//! A v2 server answers 402 with [`PaymentRequired`] in the [`PAYMENT_REQUIRED_HEADER`]; the client
//! pays with [`PaymentPayload`] in [`PAYMENT_SIGNATURE_HEADER`], echoing the chosen requirement
//! verbatim as `accepted`; the server reports settlement with [`SettleResponse`] in
//! [`PAYMENT_RESPONSE_HEADER`]. Networks are CAIP-2 ids; the price is `amount`.
//!
//! Fields serialise in the spec's order, so encoding the spec's examples reproduces their bytes.
//! Members this crate does not know are kept (`extra`, `extensions`, the `other` maps, the
//! scheme [`Payload`]), so a requirement decoded and re-encoded by a client still deep-equals
//! the server's offer.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::reason::Reason;
use crate::wire::{Amount, Payload, Version};

/// The server's 402 header.
pub const PAYMENT_REQUIRED_HEADER: &str = "PAYMENT-REQUIRED";
/// The client's payment header.
pub const PAYMENT_SIGNATURE_HEADER: &str = "PAYMENT-SIGNATURE";
/// The server's settlement header.
pub const PAYMENT_RESPONSE_HEADER: &str = "PAYMENT-RESPONSE";

/// The decoded `PAYMENT-REQUIRED` header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequired {
    pub x402_version: Version<2>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub resource: ResourceInfo,
    pub accepts: Vec<PaymentRequirements>,
    /// Extension key → `{info, schema}`; clients echo these in their payment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Map<String, Value>>,
}

/// What is being paid for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceInfo {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    /// Newer optional members (`serviceName`, `tags`, `iconUrl`, …), kept as sent.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// One way to pay for the resource. Compared for deep equality against the client's `accepted`
/// (derived `PartialEq`: strings compare exactly, `extra` and `other` as JSON values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequirements {
    /// `exact`, `upto`, …
    pub scheme: String,
    /// CAIP-2 id, e.g. `eip155:84532`.
    pub network: String,
    /// Atomic units of `asset`.
    pub amount: Amount,
    /// Token contract address (or an ISO-4217 code for fiat schemes).
    pub asset: String,
    pub pay_to: String,
    pub max_timeout_seconds: u64,
    /// Scheme-specific; for EVM `exact`, the token's EIP-712 domain `{name, version}` and
    /// optionally `assetTransferMethod`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Map<String, Value>>,
    /// Members this crate does not know, kept so that an echo stays lossless.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// The decoded `PAYMENT-SIGNATURE` header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentPayload {
    pub x402_version: Version<2>,
    /// Clients echo `PaymentRequired.resource`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceInfo>,
    /// The chosen requirement, echoed verbatim.
    pub accepted: PaymentRequirements,
    /// Scheme-specific, kept as sent (see [`Payload`]).
    pub payload: Payload,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Map<String, Value>>,
}

/// The decoded `PAYMENT-RESPONSE` header, and the facilitator's `/settle` answer.
///
/// `transaction` and `network` are always written (`""` when unknown or on failure, as the TS
/// client requires them); when decoding they default to `""` (the spec's own failure example
/// omits `transaction`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettleResponse {
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<String>,
    /// Human detail (TS types; not in the spec table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// Transaction hash; `""` on failure.
    #[serde(default)]
    pub transaction: String,
    /// CAIP-2 id (a v1 name when answering a v1 request).
    #[serde(default)]
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
    /// The amount actually settled (required for `upto`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Map<String, Value>>,
}

impl SettleResponse {
    /// A successful settlement.
    pub fn success(transaction: String, network: String, payer: Option<String>) -> Self {
        SettleResponse {
            success: true,
            error_reason: None,
            error_message: None,
            transaction,
            network,
            payer,
            amount: None,
            extensions: None,
        }
    }

    /// A failed settlement with the spec v2 spelling of `reason`.
    pub fn failure(reason: Reason, network: String, payer: Option<String>) -> Self {
        SettleResponse {
            success: false,
            error_reason: Some(reason.as_str().to_owned()),
            error_message: Some(reason.message().to_owned()),
            transaction: String::new(),
            network,
            payer,
            amount: None,
            extensions: None,
        }
    }

    /// The error reason, when it is one this crate knows (either spelling).
    pub fn reason(&self) -> Option<Reason> {
        self.error_reason.as_deref().and_then(Reason::from_code)
    }
}
