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
}

impl ProblemType {
    /// The registered name, the last segment of the type URI.
    pub fn name(self) -> &'static str {
        match self {
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
        [
            ProblemType::PaymentRequired,
            ProblemType::PaymentInsufficient,
            ProblemType::PaymentExpired,
            ProblemType::VerificationFailed,
            ProblemType::MethodUnsupported,
            ProblemType::MalformedCredential,
            ProblemType::InvalidChallenge,
        ]
        .into_iter()
        .find(|p| p.name() == name)
    }

    /// The error kind (hence HTTP status) this problem answers with.
    pub fn kind(self) -> ErrorKind {
        match self {
            ProblemType::PaymentRequired => ErrorKind::PaymentRequired,
            ProblemType::MethodUnsupported => ErrorKind::BadRequest,
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
}
