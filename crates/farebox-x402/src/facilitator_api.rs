//! Wire types of the facilitator HTTP API (x402.md §3), for both protocol versions.
//!
//! - `POST /verify` and `POST /settle` take `{x402Version, paymentPayload, paymentRequirements}`
//!   ([`VerifyRequest`] / [`SettleRequest`], both a [`VersionedPayment`]): the version is read
//!   first and decides the types of the other two members.
//! - `/verify` answers [`VerifyResponse`]; `/settle` answers [`SettleResponse`] (the v2 shape,
//!   used for both versions: `transaction` and `network` always present, `""` on failure).
//! - `GET /supported` answers [`SupportedResponse`]; signers are keyed by CAIP family pattern
//!   (`eip155:*`), as the TS reference does.
//!
//! [`AnyPaymentPayload`] is the same version dispatch for a payment header a server receives.

use std::collections::BTreeMap;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::codec::{self, CodecError};
use crate::reason::Reason;
use crate::wire::version_number;
use crate::{v1, v2};

pub use crate::v2::SettleResponse;

/// The `POST /verify` body.
pub type VerifyRequest = VersionedPayment;
/// The `POST /settle` body.
pub type SettleRequest = VersionedPayment;

/// A payment and the requirement it claims to satisfy, in either protocol version.
#[derive(Debug, Clone, PartialEq)]
pub enum VersionedPayment {
    V1 { payment_payload: v1::PaymentPayload, payment_requirements: v1::PaymentRequirements },
    V2 { payment_payload: v2::PaymentPayload, payment_requirements: v2::PaymentRequirements },
}

/// Why a `/verify` or `/settle` body was refused; [`RequestError::reason`] is the code to answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not a JSON object with `paymentPayload` and `paymentRequirements`.
    #[error("malformed request body: {0}")]
    Malformed(CodecError),
    /// `x402Version` missing, or not 1 or 2.
    #[error("{}", version_text(*.0))]
    UnsupportedVersion(Option<u64>),
    /// `paymentPayload` does not decode as that version's payload.
    #[error("invalid paymentPayload: {0}")]
    InvalidPayload(CodecError),
    /// `paymentRequirements` does not decode as that version's requirements.
    #[error("invalid paymentRequirements: {0}")]
    InvalidRequirements(CodecError),
}

/// What an unsupported `x402Version` was, in words (never Rust's `Some(99)`).
fn version_text(version: Option<u64>) -> String {
    match version {
        Some(v) => format!("unsupported x402Version {v} (1 and 2 are supported)"),
        None => "x402Version is missing".to_owned(),
    }
}

impl RequestError {
    /// Whether the body is a payment at all (an object with `paymentPayload` and
    /// `paymentRequirements`): a payment that is merely invalid is answered in the protocol's
    /// own terms (`isValid: false` with this reason), a body that is no payment is not.
    pub fn is_invalid_payment(&self) -> bool {
        !matches!(self, RequestError::Malformed(_))
    }

    /// The reason code a facilitator answers with.
    pub fn reason(&self) -> Reason {
        match self {
            RequestError::Malformed(_) | RequestError::InvalidPayload(_) => Reason::InvalidPayload,
            RequestError::UnsupportedVersion(_) => Reason::InvalidX402Version,
            RequestError::InvalidRequirements(_) => Reason::InvalidPaymentRequirements,
        }
    }
}

#[derive(Deserialize)]
struct VersionProbe {
    #[serde(rename = "x402Version", default, deserialize_with = "opt_version")]
    x402_version: Option<u64>,
}

fn opt_version<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    version_number(d).map(Some)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRequest {
    payment_payload: Box<RawValue>,
    payment_requirements: Box<RawValue>,
}

/// Reads the `x402Version` of a JSON object, `Ok(None)` when absent.
fn probe_version(json: &[u8]) -> Result<Option<u64>, CodecError> {
    codec::from_json::<VersionProbe>(json).map(|p| p.x402_version)
}

impl VersionedPayment {
    /// Decodes a request body: `x402Version` first, then the matching types.
    pub fn from_json(json: &[u8]) -> Result<Self, RequestError> {
        let version = probe_version(json).map_err(RequestError::Malformed)?;
        let raw: RawRequest = codec::from_json(json).map_err(RequestError::Malformed)?;
        let payload = raw.payment_payload.get().as_bytes();
        let requirements = raw.payment_requirements.get().as_bytes();
        match version {
            Some(1) => Ok(VersionedPayment::V1 {
                payment_payload: codec::from_json(payload).map_err(RequestError::InvalidPayload)?,
                payment_requirements: codec::from_json(requirements)
                    .map_err(RequestError::InvalidRequirements)?,
            }),
            Some(2) => Ok(VersionedPayment::V2 {
                payment_payload: codec::from_json(payload).map_err(RequestError::InvalidPayload)?,
                payment_requirements: codec::from_json(requirements)
                    .map_err(RequestError::InvalidRequirements)?,
            }),
            other => Err(RequestError::UnsupportedVersion(other)),
        }
    }

    /// The protocol version.
    pub fn x402_version(&self) -> u8 {
        match self {
            VersionedPayment::V1 { .. } => 1,
            VersionedPayment::V2 { .. } => 2,
        }
    }

    /// The requirement's scheme.
    pub fn scheme(&self) -> &str {
        match self {
            VersionedPayment::V1 { payment_requirements, .. } => &payment_requirements.scheme,
            VersionedPayment::V2 { payment_requirements, .. } => &payment_requirements.scheme,
        }
    }

    /// The requirement's network as written (a v1 name or a CAIP-2 id).
    pub fn network(&self) -> &str {
        match self {
            VersionedPayment::V1 { payment_requirements, .. } => &payment_requirements.network,
            VersionedPayment::V2 { payment_requirements, .. } => &payment_requirements.network,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RequestRef<'a, P, R> {
    x402_version: u8,
    payment_payload: &'a P,
    payment_requirements: &'a R,
}

impl Serialize for VersionedPayment {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            VersionedPayment::V1 { payment_payload, payment_requirements } => {
                RequestRef { x402_version: 1, payment_payload, payment_requirements }.serialize(s)
            }
            VersionedPayment::V2 { payment_payload, payment_requirements } => {
                RequestRef { x402_version: 2, payment_payload, payment_requirements }.serialize(s)
            }
        }
    }
}

impl<'de> Deserialize<'de> for VersionedPayment {
    /// Only from serde_json (the body is buffered as raw JSON, then dispatched on the version).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        VersionedPayment::from_json(raw.get().as_bytes()).map_err(de::Error::custom)
    }
}

/// A payment header of either version (`X-PAYMENT` or `PAYMENT-SIGNATURE`), dispatched on its
/// `x402Version`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum AnyPaymentPayload {
    V1(v1::PaymentPayload),
    /// Boxed: a v2 payload carries its accepted requirement and is much larger.
    V2(Box<v2::PaymentPayload>),
}

impl AnyPaymentPayload {
    /// Decodes a header value. A value that is not base64 or not JSON is
    /// [`RequestError::Malformed`]; a missing or unknown `x402Version` is
    /// [`RequestError::UnsupportedVersion`] (reason `invalid_x402_version`, so a client can tell
    /// "speak another version" from "your payload is broken"); a payload that does not fit its
    /// version is [`RequestError::InvalidPayload`].
    pub fn from_header(value: &str) -> Result<Self, RequestError> {
        let json = codec::decode_header_bytes(value).map_err(RequestError::Malformed)?;
        Self::from_json(&json)
    }

    /// Decodes JSON bytes, with the errors of [`AnyPaymentPayload::from_header`].
    pub fn from_json(json: &[u8]) -> Result<Self, RequestError> {
        match probe_version(json).map_err(RequestError::Malformed)? {
            Some(1) => codec::from_json(json)
                .map(AnyPaymentPayload::V1)
                .map_err(RequestError::InvalidPayload),
            Some(2) => codec::from_json(json)
                .map(|p| AnyPaymentPayload::V2(Box::new(p)))
                .map_err(RequestError::InvalidPayload),
            other => Err(RequestError::UnsupportedVersion(other)),
        }
    }

    /// The protocol version.
    pub fn x402_version(&self) -> u8 {
        match self {
            AnyPaymentPayload::V1(_) => 1,
            AnyPaymentPayload::V2(_) => 2,
        }
    }
}

/// The `/verify` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyResponse {
    pub is_valid: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Map<String, Value>>,
}

impl VerifyResponse {
    /// A valid payment by `payer`.
    pub fn valid(payer: String) -> Self {
        VerifyResponse {
            is_valid: true,
            invalid_reason: None,
            invalid_message: None,
            payer: Some(payer),
            extensions: None,
        }
    }

    /// An invalid payment, with `reason` spelled for protocol version `x402_version`.
    pub fn invalid(reason: Reason, x402_version: u8, payer: Option<String>) -> Self {
        VerifyResponse {
            is_valid: false,
            invalid_reason: Some(reason.as_str_for(x402_version).to_owned()),
            invalid_message: Some(reason.message().to_owned()),
            payer,
            extensions: None,
        }
    }

    /// The invalid reason, when it is one this crate knows (any spelling).
    pub fn reason(&self) -> Option<Reason> {
        self.invalid_reason.as_deref().and_then(Reason::from_code)
    }
}

/// The `GET /supported` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SupportedResponse {
    pub kinds: Vec<SupportedKind>,
    /// Extension keys the facilitator handles, e.g. `bazaar`.
    #[serde(default)]
    pub extensions: Vec<String>,
    /// CAIP family pattern (`eip155:*`) → signer addresses.
    #[serde(default)]
    pub signers: BTreeMap<String, Vec<String>>,
}

/// One (version, scheme, network) the facilitator can verify and settle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SupportedKind {
    #[serde(deserialize_with = "version_number")]
    pub x402_version: u64,
    pub scheme: String,
    /// A v1 name for `x402Version: 1`, a CAIP-2 id for 2.
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Map<String, Value>>,
}
