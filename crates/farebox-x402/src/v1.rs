//! x402 protocol version 1 wire types (x402.md §1.2, CB `specs/x402-specification-v1.md`).
//!
//! A v1 server answers 402 with a JSON body ([`PaymentRequirementsResponse`]); the client pays in
//! the [`PAYMENT_HEADER`] (`X-PAYMENT`) and the server reports settlement in
//! [`PAYMENT_RESPONSE_HEADER`] (`X-PAYMENT-RESPONSE`). Networks are names (`base-sepolia`, see
//! [`crate::network`]); the price is `maxAmountRequired`. Fields serialise in the spec's order.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::wire::{Amount, Payload, Version};

/// The client's payment header.
pub const PAYMENT_HEADER: &str = "X-PAYMENT";
/// The server's settlement header.
pub const PAYMENT_RESPONSE_HEADER: &str = "X-PAYMENT-RESPONSE";

/// The 402 response body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequirementsResponse {
    pub x402_version: Version<1>,
    /// Why payment is required (or why the last payment failed).
    #[serde(default)]
    pub error: String,
    pub accepts: Vec<PaymentRequirements>,
}

/// One way to pay for the resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequirements {
    /// `exact`.
    pub scheme: String,
    /// v1 network name, e.g. `base-sepolia`.
    pub network: String,
    /// Atomic units of `asset`.
    pub max_amount_required: Amount,
    /// Token contract address.
    pub asset: String,
    pub pay_to: String,
    /// The resource URL.
    pub resource: String,
    #[serde(default)]
    pub description: String,
    /// Optional in the spec, required by the legacy TS schema: servers should set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    /// `null` decodes as absent; absent is not written (the legacy TS schema rejects `null`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
    pub max_timeout_seconds: u64,
    /// Scheme-specific; for EVM `exact`, the token's EIP-712 domain `{name, version}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Map<String, Value>>,
}

/// The decoded `X-PAYMENT` header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentPayload {
    pub x402_version: Version<1>,
    pub scheme: String,
    /// v1 network name.
    pub network: String,
    /// Scheme-specific, kept as sent (see [`Payload`]).
    pub payload: Payload,
}

/// The decoded `X-PAYMENT-RESPONSE` header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettlementResponse {
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<String>,
    /// Transaction hash; `""` on failure.
    #[serde(default)]
    pub transaction: String,
    /// v1 network name.
    #[serde(default)]
    pub network: String,
    /// Required in v1; decoded as `""` when missing.
    #[serde(default)]
    pub payer: String,
}
