//! Error reason codes: why a payment was refused or a settlement failed.
//!
//! [`Reason::as_str`] gives the spec v2 §9 spelling (x402.md §3), which farebox emits;
//! [`Reason::as_str_for`] gives v1's spelling where it differs. The codes after the spec's list
//! are the ones the TS reference emits for checks the spec registry has no code for (used nonce,
//! missing EIP-712 domain, simulation and transaction failure), x402-rs's
//! `accepted_requirements_mismatch`, and farebox's `settlement_pending` (a broadcast transaction
//! whose receipt did not arrive in time: neither success nor failure).
//!
//! [`Reason::from_code`] also reads the spellings other implementations use for the same check.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// The EIP-712 signature does not recover to `authorization.from` (or a smart wallet rejects
    /// it).
    InvalidSignature,
    /// `authorization.to` is not the requirement's `payTo`.
    RecipientMismatch,
    /// `validBefore` is in the past or within the 6 s block margin.
    Expired,
    /// `validAfter` is in the future.
    NotYetValid,
    /// `authorization.value` is not exactly the required amount.
    ValueMismatch,
    /// The payer's balance is below the amount.
    InsufficientFunds,
    /// The payment's network is not the requirement's, or is not supported.
    InvalidNetwork,
    /// The scheme payload is malformed.
    InvalidPayload,
    /// The server's requirements are malformed.
    InvalidPaymentRequirements,
    /// The payment's scheme is not the requirement's.
    InvalidScheme,
    /// The scheme (or its asset transfer method) is not supported here.
    UnsupportedScheme,
    /// The `x402Version` is missing or not supported.
    InvalidX402Version,
    /// The transaction is in an unexpected state.
    InvalidTransactionState,
    /// An unexpected failure while verifying.
    UnexpectedVerifyError,
    /// An unexpected failure while settling.
    UnexpectedSettleError,
    /// The EIP-3009 nonce was already used (or cancelled) by this payer.
    NonceAlreadyUsed,
    /// The requirement's `extra` lacks the EIP-712 domain `name`/`version`.
    MissingEip712Domain,
    /// The v2 `accepted` is not one of the offered requirements.
    AcceptedRequirementsMismatch,
    /// Simulating the transfer failed.
    SimulationFailed,
    /// The transfer transaction reverted.
    TransactionFailed,
    /// The transfer was broadcast but its outcome is not known yet.
    SettlementPending,
}

impl Reason {
    /// Every reason, in declaration order.
    pub const ALL: [Reason; 21] = [
        Reason::InvalidSignature,
        Reason::RecipientMismatch,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::ValueMismatch,
        Reason::InsufficientFunds,
        Reason::InvalidNetwork,
        Reason::InvalidPayload,
        Reason::InvalidPaymentRequirements,
        Reason::InvalidScheme,
        Reason::UnsupportedScheme,
        Reason::InvalidX402Version,
        Reason::InvalidTransactionState,
        Reason::UnexpectedVerifyError,
        Reason::UnexpectedSettleError,
        Reason::NonceAlreadyUsed,
        Reason::MissingEip712Domain,
        Reason::AcceptedRequirementsMismatch,
        Reason::SimulationFailed,
        Reason::TransactionFailed,
        Reason::SettlementPending,
    ];

    /// The spec v2 §9 code.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidSignature => "invalid_exact_evm_payload_signature",
            Reason::RecipientMismatch => "invalid_exact_evm_payload_recipient_mismatch",
            Reason::Expired => "invalid_exact_evm_payload_authorization_valid_before",
            Reason::NotYetValid => "invalid_exact_evm_payload_authorization_valid_after",
            Reason::ValueMismatch => "invalid_exact_evm_payload_authorization_value_mismatch",
            Reason::InsufficientFunds => "insufficient_funds",
            Reason::InvalidNetwork => "invalid_network",
            Reason::InvalidPayload => "invalid_payload",
            Reason::InvalidPaymentRequirements => "invalid_payment_requirements",
            Reason::InvalidScheme => "invalid_scheme",
            Reason::UnsupportedScheme => "unsupported_scheme",
            Reason::InvalidX402Version => "invalid_x402_version",
            Reason::InvalidTransactionState => "invalid_transaction_state",
            Reason::UnexpectedVerifyError => "unexpected_verify_error",
            Reason::UnexpectedSettleError => "unexpected_settle_error",
            Reason::NonceAlreadyUsed => "invalid_exact_evm_nonce_already_used",
            Reason::MissingEip712Domain => "invalid_exact_evm_missing_eip712_domain",
            Reason::AcceptedRequirementsMismatch => "accepted_requirements_mismatch",
            Reason::SimulationFailed => "invalid_exact_evm_transaction_simulation_failed",
            Reason::TransactionFailed => "invalid_exact_evm_transaction_failed",
            Reason::SettlementPending => "settlement_pending",
        }
    }

    /// The code in protocol version `x402_version`'s spelling (v1 differs only for
    /// [`Reason::ValueMismatch`]: `invalid_exact_evm_payload_authorization_value`).
    pub const fn as_str_for(self, x402_version: u8) -> &'static str {
        match (self, x402_version) {
            (Reason::ValueMismatch, 1) => "invalid_exact_evm_payload_authorization_value",
            _ => self.as_str(),
        }
    }

    /// A human explanation.
    pub const fn message(self) -> &'static str {
        match self {
            Reason::InvalidSignature => "the payment signature is not valid for the payer",
            Reason::RecipientMismatch => "the authorization does not pay the required recipient",
            Reason::Expired => "the authorization has expired or expires within 6 seconds",
            Reason::NotYetValid => "the authorization is not valid yet",
            Reason::ValueMismatch => "the authorized value is not exactly the required amount",
            Reason::InsufficientFunds => "the payer's balance is below the required amount",
            Reason::InvalidNetwork => "the payment is for another or an unsupported network",
            Reason::InvalidPayload => "the payment payload is malformed",
            Reason::InvalidPaymentRequirements => "the payment requirements are malformed",
            Reason::InvalidScheme => "the payment uses another scheme than the requirement",
            Reason::UnsupportedScheme => "the payment scheme is not supported",
            Reason::InvalidX402Version => "the x402 version is missing or not supported",
            Reason::InvalidTransactionState => "the transaction is in an unexpected state",
            Reason::UnexpectedVerifyError => "an unexpected error occurred while verifying",
            Reason::UnexpectedSettleError => "an unexpected error occurred while settling",
            Reason::NonceAlreadyUsed => "the authorization nonce has already been used",
            Reason::MissingEip712Domain => {
                "the requirement's extra lacks the token's EIP-712 name and version"
            }
            Reason::AcceptedRequirementsMismatch => {
                "the accepted requirement is not one the server offered"
            }
            Reason::SimulationFailed => "simulating the transfer failed",
            Reason::TransactionFailed => "the transfer transaction reverted",
            Reason::SettlementPending => {
                "the transfer was broadcast but its outcome is not known yet"
            }
        }
    }

    /// Reads a code: either version's spelling, and the TS/Go aliases for the same checks
    /// (`invalid_exact_evm_signature`, `invalid_exact_evm_scheme`,
    /// `invalid_exact_evm_network_mismatch`, `invalid_exact_evm_authorization_value`,
    /// `invalid_exact_evm_insufficient_balance`).
    pub fn from_code(code: &str) -> Option<Reason> {
        if let Some(r) = Reason::ALL.iter().find(|r| r.as_str() == code) {
            return Some(*r);
        }
        Some(match code {
            "invalid_exact_evm_payload_authorization_value"
            | "invalid_exact_evm_authorization_value" => Reason::ValueMismatch,
            "invalid_exact_evm_signature" => Reason::InvalidSignature,
            "invalid_exact_evm_scheme" => Reason::InvalidScheme,
            "invalid_exact_evm_network_mismatch" => Reason::InvalidNetwork,
            "invalid_exact_evm_recipient_mismatch" => Reason::RecipientMismatch,
            "invalid_exact_evm_insufficient_balance" => Reason::InsufficientFunds,
            _ => return None,
        })
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for Reason {}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Reason {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Reason::from_code(&s)
            .ok_or_else(|| serde::de::Error::custom(format_args!("unknown reason code {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.as_str()), "duplicate {r}");
            assert_eq!(Reason::from_code(r.as_str()), Some(r));
            assert_eq!(Reason::from_code(r.as_str_for(1)), Some(r));
            assert!(!r.message().is_empty());
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Reason>(&json).unwrap(), r);
        }
        assert_eq!(Reason::from_code("nope"), None);
    }

    #[test]
    fn spec_spellings() {
        assert_eq!(
            Reason::ValueMismatch.as_str_for(2),
            "invalid_exact_evm_payload_authorization_value_mismatch"
        );
        assert_eq!(
            Reason::ValueMismatch.as_str_for(1),
            "invalid_exact_evm_payload_authorization_value"
        );
        assert_eq!(Reason::Expired.as_str_for(1), Reason::Expired.as_str());
        assert_eq!(Reason::InvalidSignature.as_str(), "invalid_exact_evm_payload_signature");
        assert_eq!(Reason::SettlementPending.to_string(), "settlement_pending");
    }
}
