//! MPP's RFC 9457 problem types, as farebox [`PaymentError`]s.
//!
//! Every MPP failure carries a `type` under [`PROBLEM_BASE`]
//! (`https://paymentauth.org/problems/<name>`), and the problem's `code` member is the same
//! `<name>`, so a client can switch on either. The [`ErrorKind`] decides the status the
//! farebox server answers with, as the core spec's table does:
//!
//! | problem | kind | status |
//! |---|---|---|
//! | `payment-required` | `PaymentRequired` | 402 + fresh challenge |
//! | `malformed-credential` | `InvalidCredential` | 402 + fresh challenge |
//! | `invalid-challenge` (unknown, tampered, other route) | `InvalidCredential` | 402 + fresh challenge |
//! | `invalid-challenge` (already used) | `Replayed` | 402 + fresh challenge |
//! | `payment-expired` | `InvalidCredential` | 402 + fresh challenge |
//! | `payment-insufficient` | `InvalidCredential` | 402 + fresh challenge |
//! | `verification-failed` | `InvalidCredential` | 402 + fresh challenge |
//! | `method-unsupported` | `BadRequest` | 400 |
//! | `session/invalid-signature`, `session/signer-mismatch`, `session/amount-exceeds-deposit`, `session/delta-too-small`, `session/insufficient-balance` (with `channelId`, `requiredTopUp`) | `InvalidCredential` | 402 + fresh challenge |
//! | `session/channel-not-found`, `session/channel-finalized` | `Gone` | 410 |
//! | `session/transaction-reverted` | `Conflict` | 409 |
//! | `lightning/unknown-challenge`, `lightning/invalid-preimage`, `lightning/session-not-found`, `lightning/session-closed`, `lightning/insufficient-balance`, `lightning/challenge-expired`, `lightning/invalid-return-invoice`, `lightning/malformed-credential` | `InvalidCredential` | 402 + fresh challenge |
//!
//! The `session/…` types are the EVM (and Tempo) session drafts'; the `lightning/…` types the
//! Lightning session draft's, which answers every failure with a fresh 402 (a closed session
//! too: the client opens a new one from the challenges it gets).

use farebox_core::{ErrorKind, PaymentError};

/// Base URI of the MPP problem registry.
pub const PROBLEM_BASE: &str = "https://paymentauth.org/problems/";

/// An MPP problem type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProblemType {
    PaymentRequired,
    PaymentInsufficient,
    PaymentExpired,
    VerificationFailed,
    MethodUnsupported,
    MalformedCredential,
    InvalidChallenge,
    SessionInvalidSignature,
    SessionSignerMismatch,
    SessionAmountExceedsDeposit,
    SessionDeltaTooSmall,
    SessionChannelNotFound,
    SessionChannelFinalized,
    SessionInsufficientBalance,
    SessionTransactionReverted,
    LightningMalformedCredential,
    LightningUnknownChallenge,
    LightningInvalidPreimage,
    LightningSessionNotFound,
    LightningSessionClosed,
    LightningInsufficientBalance,
    LightningChallengeExpired,
    LightningInvalidReturnInvoice,
}

const ALL: [ProblemType; 23] = [
    ProblemType::PaymentRequired,
    ProblemType::PaymentInsufficient,
    ProblemType::PaymentExpired,
    ProblemType::VerificationFailed,
    ProblemType::MethodUnsupported,
    ProblemType::MalformedCredential,
    ProblemType::InvalidChallenge,
    ProblemType::SessionInvalidSignature,
    ProblemType::SessionSignerMismatch,
    ProblemType::SessionAmountExceedsDeposit,
    ProblemType::SessionDeltaTooSmall,
    ProblemType::SessionChannelNotFound,
    ProblemType::SessionChannelFinalized,
    ProblemType::SessionInsufficientBalance,
    ProblemType::SessionTransactionReverted,
    ProblemType::LightningMalformedCredential,
    ProblemType::LightningUnknownChallenge,
    ProblemType::LightningInvalidPreimage,
    ProblemType::LightningSessionNotFound,
    ProblemType::LightningSessionClosed,
    ProblemType::LightningInsufficientBalance,
    ProblemType::LightningChallengeExpired,
    ProblemType::LightningInvalidReturnInvoice,
];

impl ProblemType {
    /// The registered name: the type URI after [`PROBLEM_BASE`] (`session/…` and
    /// `lightning/…` for the session drafts' types).
    pub fn name(self) -> &'static str {
        match self {
            ProblemType::SessionInvalidSignature => "session/invalid-signature",
            ProblemType::SessionSignerMismatch => "session/signer-mismatch",
            ProblemType::SessionAmountExceedsDeposit => "session/amount-exceeds-deposit",
            ProblemType::SessionDeltaTooSmall => "session/delta-too-small",
            ProblemType::SessionChannelNotFound => "session/channel-not-found",
            ProblemType::SessionChannelFinalized => "session/channel-finalized",
            ProblemType::SessionInsufficientBalance => "session/insufficient-balance",
            ProblemType::SessionTransactionReverted => "session/transaction-reverted",
            ProblemType::LightningMalformedCredential => "lightning/malformed-credential",
            ProblemType::LightningUnknownChallenge => "lightning/unknown-challenge",
            ProblemType::LightningInvalidPreimage => "lightning/invalid-preimage",
            ProblemType::LightningSessionNotFound => "lightning/session-not-found",
            ProblemType::LightningSessionClosed => "lightning/session-closed",
            ProblemType::LightningInsufficientBalance => "lightning/insufficient-balance",
            ProblemType::LightningChallengeExpired => "lightning/challenge-expired",
            ProblemType::LightningInvalidReturnInvoice => "lightning/invalid-return-invoice",
            ProblemType::PaymentRequired => "payment-required",
            ProblemType::PaymentInsufficient => "payment-insufficient",
            ProblemType::PaymentExpired => "payment-expired",
            ProblemType::VerificationFailed => "verification-failed",
            ProblemType::MethodUnsupported => "method-unsupported",
            ProblemType::MalformedCredential => "malformed-credential",
            ProblemType::InvalidChallenge => "invalid-challenge",
        }
    }

    /// The problem `type` URI.
    pub fn uri(self) -> String {
        format!("{PROBLEM_BASE}{}", self.name())
    }

    /// The type whose [`name`](Self::name) or [`uri`](Self::uri) is `text`.
    pub fn parse(text: &str) -> Option<Self> {
        let name = text.strip_prefix(PROBLEM_BASE).unwrap_or(text);
        ALL.into_iter().find(|p| p.name() == name)
    }

    /// The error kind (hence HTTP status) this problem answers with.
    pub fn kind(self) -> ErrorKind {
        match self {
            ProblemType::PaymentRequired => ErrorKind::PaymentRequired,
            ProblemType::MethodUnsupported => ErrorKind::BadRequest,
            ProblemType::SessionChannelNotFound | ProblemType::SessionChannelFinalized => {
                ErrorKind::Gone
            }
            ProblemType::SessionTransactionReverted => ErrorKind::Conflict,
            _ => ErrorKind::InvalidCredential,
        }
    }

    /// A [`PaymentError`] of this type with `detail`.
    pub fn error(self, detail: impl Into<String>) -> PaymentError {
        PaymentError::new(self.kind(), self.name(), detail).with_type_uri(self.uri())
    }
}

/// `payment-required`: no credential was presented.
pub fn payment_required(detail: impl Into<String>) -> PaymentError {
    ProblemType::PaymentRequired.error(detail)
}

/// `malformed-credential`: the credential is not base64url JSON of the expected shape.
pub fn malformed(detail: impl Into<String>) -> PaymentError {
    ProblemType::MalformedCredential.error(detail)
}

/// `invalid-challenge`: the echoed challenge was not issued by this server for this request.
pub fn invalid_challenge(detail: impl Into<String>) -> PaymentError {
    ProblemType::InvalidChallenge.error(detail)
}

/// `invalid-challenge` for a challenge whose credential was already accepted (kind `Replayed`).
pub fn used_challenge() -> PaymentError {
    PaymentError {
        kind: ErrorKind::Replayed,
        ..ProblemType::InvalidChallenge
            .error("this challenge has already been paid for and used; request a new one")
    }
}

/// `payment-expired`: the challenge's `expires` has passed.
pub fn expired(detail: impl Into<String>) -> PaymentError {
    ProblemType::PaymentExpired.error(detail)
}

/// `payment-insufficient`: the challenge asks for less than the route costs.
pub fn insufficient(detail: impl Into<String>) -> PaymentError {
    ProblemType::PaymentInsufficient.error(detail)
}

/// `verification-failed`: the proof does not prove payment.
pub fn verification_failed(detail: impl Into<String>) -> PaymentError {
    ProblemType::VerificationFailed.error(detail)
}

/// `method-unsupported` (400): the credential is for a method/intent this server does not take.
pub fn method_unsupported(detail: impl Into<String>) -> PaymentError {
    ProblemType::MethodUnsupported.error(detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_render_under_paymentauth_org() {
        let e = invalid_challenge("tampered");
        let p = e.to_problem();
        assert_eq!(p.type_uri, "https://paymentauth.org/problems/invalid-challenge");
        assert_eq!(p.status, 402);
        assert_eq!(p.extensions["code"], "invalid-challenge");
        assert_eq!(method_unsupported("x").to_problem().status, 400);
        assert_eq!(used_challenge().kind, ErrorKind::Replayed);
        assert_eq!(used_challenge().to_problem().type_uri, ProblemType::InvalidChallenge.uri());
        assert_eq!(
            ProblemType::parse("https://paymentauth.org/problems/payment-expired"),
            Some(ProblemType::PaymentExpired)
        );
        assert_eq!(ProblemType::parse("nope"), None);
    }

    #[test]
    fn session_problems_have_the_drafts_uris_and_statuses() {
        for p in ALL {
            assert_eq!(ProblemType::parse(&p.uri()), Some(p), "{p:?}");
            assert_eq!(p.error("x").to_problem().type_uri, p.uri());
        }
        let gone = ProblemType::SessionChannelFinalized.error("closed").to_problem();
        assert_eq!(gone.type_uri, "https://paymentauth.org/problems/session/channel-finalized");
        assert_eq!(gone.status, 410);
        assert_eq!(ProblemType::SessionTransactionReverted.error("x").to_problem().status, 409);
        let short = ProblemType::LightningInsufficientBalance.error("top up").to_problem();
        assert_eq!(short.status, 402);
        assert_eq!(short.extensions["code"], "lightning/insufficient-balance");
    }
}
