//! The `exact` scheme on EVM chains with EIP-3009 (`transferWithAuthorization`): its payload,
//! parsed strictly, and every verification step that needs neither the chain nor the signature.
//!
//! The reference facilitator (CB `…/exact/facilitator/eip3009.ts`, x402.md §2.4) checks, in
//! order:
//!
//! 1. the payment's and the requirement's scheme are both `exact`;
//! 2. the requirement's `extra` carries the EIP-712 domain `name` and `version`;
//! 3. the payment's network is the requirement's;
//! 4. *the EIP-712 signature* (not here: `farebox-evm`);
//! 5. `authorization.to == payTo` (as addresses, not strings);
//! 6. `validBefore >= now + 6` (a 6 s margin for the block that will include the transfer);
//! 7. `validAfter <= now`;
//! 8. `value == amount`, exactly: over- and underpayment are both refused;
//!
//! and, for v2, this module adds 9. `accepted` deep-equals the server's requirement.
//! [`check_before_signature`] runs 1–3, [`check_after_signature`] runs 5–9, so a facilitator can
//! put the signature check where the reference does; [`check`] runs both.
//!
//! `validAfter == now` passes here as in the reference, although FiatToken requires
//! `now > validAfter` strictly and the transfer would revert in a block with that timestamp.

use std::fmt;

use alloy_primitives::{Address, B256, Bytes, U256, hex};
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::network;
use crate::reason::Reason;
use crate::wire::DecimalVisitor;
use crate::{v1, v2};

/// The scheme name.
pub const SCHEME: &str = "exact";
/// The only asset transfer method this module checks (`extra.assetTransferMethod`, default).
pub const EIP3009: &str = "eip3009";
/// Seconds an authorization must stay valid beyond `now` (the reference's block margin).
pub const VALID_BEFORE_MARGIN_SECS: u64 = 6;
/// The longest accepted signature, in bytes (room for EIP-6492-wrapped smart-wallet signatures).
pub const MAX_SIGNATURE_BYTES: usize = 4096;

/// The `payload` of an `exact` EVM payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExactEvmPayload {
    /// `0x`-hex signature: 65 bytes for an EOA, longer for EIP-1271/6492 wallets.
    #[serde(serialize_with = "ser_bytes", deserialize_with = "de_signature")]
    pub signature: Bytes,
    pub authorization: Authorization,
}

/// The EIP-3009 `TransferWithAuthorization` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    /// The payer. Written with EIP-55 checksum; read in any case.
    #[serde(serialize_with = "ser_address", deserialize_with = "de_address")]
    pub from: Address,
    #[serde(serialize_with = "ser_address", deserialize_with = "de_address")]
    pub to: Address,
    /// Atomic units; a decimal string (a JSON integer is accepted).
    #[serde(serialize_with = "ser_display", deserialize_with = "de_u256")]
    pub value: U256,
    /// Unix seconds; a decimal string (a JSON integer is accepted).
    #[serde(serialize_with = "ser_display", deserialize_with = "de_u64")]
    pub valid_after: u64,
    #[serde(serialize_with = "ser_display", deserialize_with = "de_u64")]
    pub valid_before: u64,
    /// `0x` + 64 hex: 32 random bytes, unique per payer.
    #[serde(serialize_with = "ser_b256", deserialize_with = "de_b256")]
    pub nonce: B256,
}

impl ExactEvmPayload {
    /// Parses a scheme payload strictly; any failure is [`Reason::InvalidPayload`].
    pub fn from_payload(payload: &crate::Payload) -> Result<Self, Reason> {
        payload.parse().map_err(|_| Reason::InvalidPayload)
    }

    /// The payer.
    pub fn payer(&self) -> Address {
        self.authorization.from
    }
}

/// What the checks need from a server's requirement, from either protocol version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequirementView {
    pub scheme: String,
    /// CAIP-2 id (a v1 name is mapped, see [`crate::network`]).
    pub network: String,
    /// The EVM chain id of `network`.
    pub chain_id: u64,
    /// The exact amount to pay, in atomic units.
    pub amount: U256,
    /// The token contract (EIP-712 `verifyingContract`).
    pub asset: Address,
    pub pay_to: Address,
    /// EIP-712 domain `name` from `extra.name` (`"USDC"` on Base Sepolia, `"USD Coin"` on Base).
    pub eip712_name: Option<String>,
    /// EIP-712 domain `version` from `extra.version`.
    pub eip712_version: Option<String>,
    /// `extra.assetTransferMethod` (absent means [`EIP3009`]).
    pub asset_transfer_method: Option<String>,
    pub max_timeout_seconds: u64,
}

impl RequirementView {
    /// From a v1 requirement. An unknown network name is [`Reason::InvalidNetwork`]; a
    /// malformed amount or address [`Reason::InvalidPaymentRequirements`].
    pub fn from_v1(req: &v1::PaymentRequirements) -> Result<Self, Reason> {
        let caip2 = network::v1_to_caip2(&req.network).ok_or(Reason::InvalidNetwork)?;
        Self::build(
            &req.scheme,
            caip2,
            req.max_amount_required.to_u256(),
            &req.asset,
            &req.pay_to,
            req.extra.as_ref(),
            req.max_timeout_seconds,
        )
    }

    /// From a v2 requirement. A network that is not `eip155:<id>` is [`Reason::InvalidNetwork`];
    /// a malformed amount or address [`Reason::InvalidPaymentRequirements`].
    pub fn from_v2(req: &v2::PaymentRequirements) -> Result<Self, Reason> {
        Self::build(
            &req.scheme,
            &req.network,
            req.amount.to_u256(),
            &req.asset,
            &req.pay_to,
            req.extra.as_ref(),
            req.max_timeout_seconds,
        )
    }

    fn build(
        scheme: &str,
        caip2: &str,
        amount: Option<U256>,
        asset: &str,
        pay_to: &str,
        extra: Option<&Map<String, Value>>,
        max_timeout_seconds: u64,
    ) -> Result<Self, Reason> {
        let chain_id = network::eip155_chain_id(caip2).ok_or(Reason::InvalidNetwork)?;
        let bad = |_| Reason::InvalidPaymentRequirements;
        let text = |key: &str| {
            extra
                .and_then(|e| e.get(key))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        Ok(RequirementView {
            scheme: scheme.to_owned(),
            network: caip2.to_owned(),
            chain_id,
            amount: amount.ok_or(Reason::InvalidPaymentRequirements)?,
            asset: parse_address(asset).map_err(bad)?,
            pay_to: parse_address(pay_to).map_err(bad)?,
            eip712_name: text("name"),
            eip712_version: text("version"),
            asset_transfer_method: extra
                .and_then(|e| e.get("assetTransferMethod"))
                .map(|v| v.as_str().unwrap_or("<not a string>").to_owned()),
            max_timeout_seconds,
        })
    }
}

/// What the checks need from the client's side of a payment, besides the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentView {
    /// The scheme the client paid with (v1 `scheme`, v2 `accepted.scheme`).
    pub scheme: String,
    /// The network the client paid on, as CAIP-2 (a known v1 name is mapped; an unknown one is
    /// kept as is and will not match).
    pub network: String,
    /// v2: whether `accepted` deep-equals the server's requirement. Always true for v1, which
    /// matches on scheme and network only.
    pub accepted_matches: bool,
}

impl PaymentView {
    /// From a v1 payment (the requirement is not needed: v1 echoes no requirement).
    pub fn from_v1(payment: &v1::PaymentPayload) -> Self {
        PaymentView {
            scheme: payment.scheme.clone(),
            network: network::v1_to_caip2(&payment.network)
                .map_or_else(|| payment.network.clone(), str::to_owned),
            accepted_matches: true,
        }
    }

    /// From a v2 payment and the server's requirement it must deep-equal.
    pub fn from_v2(payment: &v2::PaymentPayload, requirement: &v2::PaymentRequirements) -> Self {
        PaymentView {
            scheme: payment.accepted.scheme.clone(),
            network: payment.accepted.network.clone(),
            accepted_matches: payment.accepted == *requirement,
        }
    }
}

/// Steps 1–3: scheme, EIP-712 domain, network (and a supported asset transfer method).
pub fn check_before_signature(payment: &PaymentView, req: &RequirementView) -> Result<(), Reason> {
    if req.scheme != SCHEME {
        return Err(Reason::UnsupportedScheme);
    }
    if payment.scheme != SCHEME {
        return Err(Reason::InvalidScheme);
    }
    if req.asset_transfer_method.as_deref().is_some_and(|m| m != EIP3009) {
        return Err(Reason::UnsupportedScheme);
    }
    if req.eip712_name.is_none() || req.eip712_version.is_none() {
        return Err(Reason::MissingEip712Domain);
    }
    if payment.network != req.network {
        return Err(Reason::InvalidNetwork);
    }
    Ok(())
}

/// Steps 5–9: recipient, validity window at `now_unix`, exact value, v2 deep equality.
pub fn check_after_signature(
    payment: &PaymentView,
    payload: &ExactEvmPayload,
    req: &RequirementView,
    now_unix: u64,
) -> Result<(), Reason> {
    let auth = &payload.authorization;
    if auth.to != req.pay_to {
        return Err(Reason::RecipientMismatch);
    }
    if auth.valid_before < now_unix.saturating_add(VALID_BEFORE_MARGIN_SECS) {
        return Err(Reason::Expired);
    }
    if auth.valid_after > now_unix {
        return Err(Reason::NotYetValid);
    }
    if auth.value != req.amount {
        return Err(Reason::ValueMismatch);
    }
    if !payment.accepted_matches {
        return Err(Reason::AcceptedRequirementsMismatch);
    }
    Ok(())
}

/// Every off-chain, signature-free check, in the reference's order.
pub fn check(
    payment: &PaymentView,
    payload: &ExactEvmPayload,
    req: &RequirementView,
    now_unix: u64,
) -> Result<(), Reason> {
    check_before_signature(payment, req)?;
    check_after_signature(payment, payload, req, now_unix)
}

/// A payment that passed every off-chain check; what the signature and chain steps need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedPayment {
    pub payload: ExactEvmPayload,
    pub requirement: RequirementView,
}

/// Why a payment failed the off-chain checks, with the payer when the payload was readable
/// (the `/verify` answer carries it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Rejection {
    pub reason: Reason,
    pub payer: Option<Address>,
}

impl From<Reason> for Rejection {
    fn from(reason: Reason) -> Self {
        Rejection { reason, payer: None }
    }
}

/// Builds the views, parses the payload and runs [`check`] for a v1 payment.
pub fn check_v1(
    payment: &v1::PaymentPayload,
    requirement: &v1::PaymentRequirements,
    now_unix: u64,
) -> Result<CheckedPayment, Rejection> {
    let req = RequirementView::from_v1(requirement)?;
    run(&PaymentView::from_v1(payment), &payment.payload, req, now_unix)
}

/// Builds the views, parses the payload and runs [`check`] for a v2 payment.
pub fn check_v2(
    payment: &v2::PaymentPayload,
    requirement: &v2::PaymentRequirements,
    now_unix: u64,
) -> Result<CheckedPayment, Rejection> {
    let req = RequirementView::from_v2(requirement)?;
    run(&PaymentView::from_v2(payment, requirement), &payment.payload, req, now_unix)
}

/// [`check_v1`] or [`check_v2`] for a facilitator request.
pub fn check_request(
    request: &crate::facilitator_api::VersionedPayment,
    now_unix: u64,
) -> Result<CheckedPayment, Rejection> {
    use crate::facilitator_api::VersionedPayment as P;
    match request {
        P::V1 { payment_payload, payment_requirements } => {
            check_v1(payment_payload, payment_requirements, now_unix)
        }
        P::V2 { payment_payload, payment_requirements } => {
            check_v2(payment_payload, payment_requirements, now_unix)
        }
    }
}

fn run(
    view: &PaymentView,
    payload: &crate::Payload,
    req: RequirementView,
    now_unix: u64,
) -> Result<CheckedPayment, Rejection> {
    check_before_signature(view, &req)?;
    let payload = ExactEvmPayload::from_payload(payload)?;
    check_after_signature(view, &payload, &req, now_unix)
        .map_err(|reason| Rejection { reason, payer: Some(payload.payer()) })?;
    Ok(CheckedPayment { payload, requirement: req })
}

// ---- strict field formats ----

/// `0x` + 40 hex digits, any case (the checksum is not enforced, as the reference's regex).
pub fn parse_address(s: &str) -> Result<Address, FormatError> {
    let bytes = fixed_hex(s, 20, "an address (0x + 40 hex digits)")?;
    Ok(Address::from_slice(&bytes))
}

/// `0x` + 64 hex digits.
pub fn parse_b256(s: &str) -> Result<B256, FormatError> {
    let bytes = fixed_hex(s, 32, "a 32-byte value (0x + 64 hex digits)")?;
    Ok(B256::from_slice(&bytes))
}

/// A field that is not in its required format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected}, got {got:?}")]
pub struct FormatError {
    pub expected: &'static str,
    /// The offending text, truncated to 80 characters.
    pub got: String,
}

fn format_error(expected: &'static str, got: &str) -> FormatError {
    FormatError { expected, got: got.chars().take(80).collect() }
}

fn fixed_hex(s: &str, len: usize, expected: &'static str) -> Result<Vec<u8>, FormatError> {
    let digits = s.strip_prefix("0x").ok_or_else(|| format_error(expected, s))?;
    if digits.len() != len * 2 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format_error(expected, s));
    }
    hex::decode(digits).map_err(|_| format_error(expected, s))
}

fn parse_signature(s: &str) -> Result<Bytes, FormatError> {
    const EXPECTED: &str = "a signature (0x + an even number of hex digits, at most 4 KiB)";
    let digits = s.strip_prefix("0x").ok_or_else(|| format_error(EXPECTED, s))?;
    if digits.is_empty()
        || digits.len() % 2 != 0
        || digits.len() > MAX_SIGNATURE_BYTES * 2
        || !digits.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(format_error(EXPECTED, s));
    }
    hex::decode(digits).map(Bytes::from).map_err(|_| format_error(EXPECTED, s))
}

fn parse_decimal_u256(s: &str) -> Result<U256, FormatError> {
    const EXPECTED: &str = "a decimal integer below 2^256";
    if s.is_empty() || s.len() > 78 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format_error(EXPECTED, s));
    }
    U256::from_str_radix(s, 10).map_err(|_| format_error(EXPECTED, s))
}

fn parse_decimal_u64(s: &str) -> Result<u64, FormatError> {
    const EXPECTED: &str = "a decimal integer below 2^64";
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format_error(EXPECTED, s));
    }
    s.parse().map_err(|_| format_error(EXPECTED, s))
}

fn de_str<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    String::deserialize(d)
}

fn de_address<'de, D: Deserializer<'de>>(d: D) -> Result<Address, D::Error> {
    parse_address(&de_str(d)?).map_err(de::Error::custom)
}

fn de_b256<'de, D: Deserializer<'de>>(d: D) -> Result<B256, D::Error> {
    parse_b256(&de_str(d)?).map_err(de::Error::custom)
}

fn de_signature<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
    parse_signature(&de_str(d)?).map_err(de::Error::custom)
}

fn de_u256<'de, D: Deserializer<'de>>(d: D) -> Result<U256, D::Error> {
    parse_decimal_u256(&d.deserialize_any(DecimalVisitor)?).map_err(de::Error::custom)
}

fn de_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    parse_decimal_u64(&d.deserialize_any(DecimalVisitor)?).map_err(de::Error::custom)
}

fn ser_address<S: Serializer>(a: &Address, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&a.to_checksum(None))
}

fn ser_b256<S: Serializer>(b: &B256, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode_prefixed(b))
}

fn ser_bytes<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode_prefixed(b))
}

fn ser_display<T: fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}
