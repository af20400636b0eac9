//! The `L402-Receipt` response header: what a client learns about the payment that served it.
//!
//! L402 itself defines no receipt; a paid response would otherwise say nothing about the payment.
//! farebox adds one header to every response it serves for an L402 payment:
//!
//! ```text
//! L402-Receipt: base64url-nopad({"status":"success","rail":"l402","reference":"<payment hash hex>",
//!                                "amountMsat":<n>,"service":"<service>","timestamp":"<RFC 3339 UTC>"})
//! ```
//!
//! The JSON is compact, with the members in that order. `reference` is the invoice's payment hash
//! (64 lower-case hex digits), `amountMsat` the amount the token paid (its
//! `farebox_amount_msat` caveat), `service` the L402 service name and `timestamp` the time of
//! settlement, to the second, in UTC (`2025-01-06T12:00:00Z`). The receipt is a statement by the
//! server, not a proof: it is not signed, and the client's proof of payment stays the preimage.
//!
//! [`L402Receipt::decode`] reads a header value back: bounded to [`MAX_RECEIPT_LEN`] bytes,
//! base64url with or without padding, every member required, unknown members ignored; anything
//! else is a typed [`ReceiptError`].

use base64::Engine as _;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose::URL_SAFE_NO_PAD};
use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

/// The header name (`L402-Receipt`; HTTP header names are case-insensitive).
pub const L402_RECEIPT: HeaderName = HeaderName::from_static("l402-receipt");

/// Largest header value [`L402Receipt::decode`] reads. A receipt farebox writes is under 300
/// bytes (the service name is at most 64).
pub const MAX_RECEIPT_LEN: usize = 1024;

/// Why a header value is not an L402 receipt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiptError {
    #[error("receipt longer than {MAX_RECEIPT_LEN} bytes")]
    TooLarge,
    #[error("receipt is not base64url")]
    NotBase64,
    #[error("receipt is not the expected JSON: {0}")]
    Json(String),
    #[error("receipt status is {0:?}, not \"success\"")]
    Status(String),
    #[error("receipt is for rail {0:?}, not \"l402\"")]
    Rail(String),
    #[error("receipt reference is not a payment hash (64 hex digits)")]
    Reference,
    #[error("receipt timestamp is not an RFC 3339 UTC time (YYYY-MM-DDTHH:MM:SSZ)")]
    Timestamp,
}

/// An `L402-Receipt`: a successful L402 payment, as the server reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L402Receipt {
    /// The payment hash of the invoice that was paid.
    pub payment_hash: [u8; 32],
    /// What the token paid, msat.
    pub amount_msat: u64,
    /// The L402 service name.
    pub service: String,
    /// When the payment was settled, Unix seconds.
    pub timestamp: u64,
}

/// The JSON members, in wire order.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire<'a> {
    #[serde(borrow)]
    status: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    rail: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    reference: std::borrow::Cow<'a, str>,
    amount_msat: u64,
    #[serde(borrow)]
    service: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    timestamp: std::borrow::Cow<'a, str>,
}

/// URL-safe base64 that accepts input with or without padding.
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

impl L402Receipt {
    /// The compact JSON the header carries.
    pub fn to_json(&self) -> String {
        let wire = Wire {
            status: "success".into(),
            rail: "l402".into(),
            reference: hex::encode(self.payment_hash).into(),
            amount_msat: self.amount_msat,
            service: self.service.as_str().into(),
            timestamp: format_rfc3339(self.timestamp).into(),
        };
        // Strings and an integer always serialize.
        serde_json::to_string(&wire).unwrap_or_default()
    }

    /// The header value: base64url without padding of [`Self::to_json`].
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.to_json())
    }

    /// The header value as a [`HeaderValue`] (base64url is always a valid one).
    pub fn to_header_value(&self) -> HeaderValue {
        HeaderValue::try_from(self.encode()).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// Reads a header value.
    pub fn decode(value: &str) -> Result<Self, ReceiptError> {
        if value.len() > MAX_RECEIPT_LEN {
            return Err(ReceiptError::TooLarge);
        }
        let bytes = URL_SAFE_LENIENT
            .decode(value.trim_matches(|c| c == ' ' || c == '\t'))
            .map_err(|_| ReceiptError::NotBase64)?;
        let wire: Wire<'_> =
            serde_json::from_slice(&bytes).map_err(|e| ReceiptError::Json(e.to_string()))?;
        if wire.status != "success" {
            return Err(ReceiptError::Status(wire.status.into_owned()));
        }
        if wire.rail != "l402" {
            return Err(ReceiptError::Rail(wire.rail.into_owned()));
        }
        let mut payment_hash = [0u8; 32];
        if wire.reference.len() != 64
            || hex::decode_to_slice(wire.reference.as_bytes(), &mut payment_hash).is_err()
        {
            return Err(ReceiptError::Reference);
        }
        let timestamp = parse_rfc3339_utc(&wire.timestamp).ok_or(ReceiptError::Timestamp)?;
        Ok(L402Receipt {
            payment_hash,
            amount_msat: wire.amount_msat,
            service: wire.service.into_owned(),
            timestamp,
        })
    }
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (the core's RFC 3339 writer).
pub fn format_rfc3339(unix: u64) -> String {
    farebox_core::time::format(unix)
}

/// Parses exactly the form [`format_rfc3339`] writes (UTC, `Z`, whole seconds): the core's
/// RFC 3339 parser, then a round trip, so that offsets, fractions and leap seconds are refused.
pub fn parse_rfc3339_utc(text: &str) -> Option<u64> {
    let unix = farebox_core::time::parse(text).ok()?;
    (format_rfc3339(unix) == text).then_some(unix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_round_trips() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(1_736_164_800), "2025-01-06T12:00:00Z");
        assert_eq!(format_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        for t in [0, 59, 1_736_164_800, 951_782_400, 4_102_444_799, 253_402_300_799] {
            assert_eq!(parse_rfc3339_utc(&format_rfc3339(t)), Some(t), "{t}");
        }
        for bad in [
            "2025-01-06T12:00:00",
            "2025-01-06T12:00:00+00:00",
            "2025-01-06 12:00:00Z",
            "2025-02-29T12:00:00Z",
            "2025-13-01T12:00:00Z",
            "2025-01-06T24:00:00Z",
            "2025-01-06T12:00:60Z",
            "1969-12-31T23:59:59Z",
            "+025-01-06T12:00:00Z",
            "2025-01-06T12:00:00.5Z",
            "",
        ] {
            assert_eq!(parse_rfc3339_utc(bad), None, "{bad}");
        }
    }
}
