//! The error taxonomy every rail reports in, and its RFC 9457 problem+json rendering.
//!
//! A rail never picks an HTTP status itself: it says *what kind* of failure happened
//! ([`ErrorKind`]) and *why* (a stable machine `code` plus a human `detail`). The kind decides the
//! status and whether a fresh challenge is attached, so every rail behaves the same way at the
//! HTTP level: a credential that does not pay gets a new 402 (as Aperture does), a request the
//! server cannot judge because a backend is down gets 503 with `Retry-After` (fail closed).

use std::time::Duration;

use http::StatusCode;
use serde::Serialize;
use serde_json::{Map, Value};

/// Base URI of farebox's own problem types; a problem's `type` is this plus its `code`.
pub const PROBLEM_BASE: &str = "https://farebox.dev/problems/";

/// The media type of an RFC 9457 body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// What went wrong, in terms that decide the HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// No credential was presented: answer 402 with challenges.
    PaymentRequired,
    /// A credential was presented but does not prove payment for this resource (bad syntax,
    /// tampered, expired, wrong preimage, wrong service, too little): a fresh 402.
    InvalidCredential,
    /// The request itself is unusable, e.g. two credentials for different rails: 400.
    BadRequest,
    /// A credential proved payment once but may not be used again (replay): a fresh 402.
    Replayed,
    /// The credential names something that no longer exists or has ended for good (a closed or
    /// unknown payment channel): 410. The client must start over (open a new session).
    Gone,
    /// The credential's on-chain step failed for good (a transaction that reverted): 409.
    Conflict,
    /// A backend (Lightning node, chain, facilitator, store) could not answer: 503 with
    /// `Retry-After`. Never serve the request.
    Unavailable,
    /// A bug or misconfiguration on our side: 500.
    Internal,
}

impl ErrorKind {
    /// The HTTP status this kind answers with.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::PaymentRequired | ErrorKind::InvalidCredential | ErrorKind::Replayed => {
                StatusCode::PAYMENT_REQUIRED
            }
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Gone => StatusCode::GONE,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether the answer carries fresh payment challenges.
    pub fn carries_challenges(self) -> bool {
        self.status() == StatusCode::PAYMENT_REQUIRED
    }
}

/// A typed payment failure: kind (decides the status), stable code, human detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct PaymentError {
    pub kind: ErrorKind,
    /// Stable, machine-readable reason, e.g. `invalid_preimage`, `expired`, `lightning_unavailable`.
    pub code: &'static str,
    /// What a person needs to know to fix it. Never contains secrets.
    pub detail: String,
    /// For [`ErrorKind::Unavailable`]: when to try again.
    pub retry_after: Option<Duration>,
    /// Overrides the problem `type` URI (e.g. a protocol's own problem registry).
    pub type_uri: Option<String>,
    /// Headers the answer must carry whatever its status, e.g. x402's `PAYMENT-RESPONSE` with
    /// the transaction hash of a settlement whose outcome is not yet known.
    pub headers: Box<[(http::HeaderName, http::HeaderValue)]>,
    /// Extension members of the problem body a client acts on (e.g. a session's `channelId`
    /// and the `requiredTopUp` it lacks). Boxed: errors travel in `Result`s and stay small.
    pub members: Box<[(String, Value)]>,
}

impl PaymentError {
    pub fn new(kind: ErrorKind, code: &'static str, detail: impl Into<String>) -> Self {
        PaymentError {
            kind,
            code,
            detail: detail.into(),
            retry_after: None,
            type_uri: None,
            headers: Box::default(),
            members: Box::default(),
        }
    }

    /// A credential that does not prove payment.
    pub fn invalid(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidCredential, code, detail)
    }

    /// A backend that cannot answer; the request is refused, not served.
    pub fn unavailable(
        code: &'static str,
        detail: impl Into<String>,
        retry_after: Duration,
    ) -> Self {
        PaymentError {
            retry_after: Some(retry_after),
            ..Self::new(ErrorKind::Unavailable, code, detail)
        }
    }

    pub fn internal(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, code, detail)
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, code, detail)
    }

    /// Adds a header to the answer.
    pub fn with_header(mut self, name: http::HeaderName, value: http::HeaderValue) -> Self {
        let mut headers = std::mem::take(&mut self.headers).into_vec();
        headers.push((name, value));
        self.headers = headers.into_boxed_slice();
        self
    }

    /// Adds an extension member to the problem body (standard members cannot be shadowed).
    pub fn with_member(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        let mut members = std::mem::take(&mut self.members).into_vec();
        members.push((name.into(), value.into()));
        self.members = members.into_boxed_slice();
        self
    }

    pub fn with_type_uri(mut self, uri: impl Into<String>) -> Self {
        self.type_uri = Some(uri.into());
        self
    }

    /// The problem+json body for this error.
    pub fn to_problem(&self) -> Problem {
        let title = match self.kind {
            ErrorKind::PaymentRequired => "Payment required",
            ErrorKind::InvalidCredential => "Payment credential rejected",
            ErrorKind::BadRequest => "Bad request",
            ErrorKind::Replayed => "Payment credential already used",
            ErrorKind::Gone => "Payment session gone",
            ErrorKind::Conflict => "Payment transaction failed",
            ErrorKind::Unavailable => "Payment backend unavailable",
            ErrorKind::Internal => "Internal error",
        };
        let mut problem = Problem::new(self.kind.status(), title)
            .with_type(
                self.type_uri.clone().unwrap_or_else(|| format!("{PROBLEM_BASE}{}", self.code)),
            )
            .with_detail(self.detail.clone());
        problem.extend(self.members.iter().cloned());
        problem.extensions.insert("code".into(), Value::String(self.code.into()));
        problem
    }
}

/// An RFC 9457 problem details object. Rails add extension members (e.g. x402's `accepts`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(flatten)]
    pub extensions: Map<String, Value>,
}

impl Problem {
    pub fn new(status: StatusCode, title: impl Into<String>) -> Self {
        Problem {
            type_uri: "about:blank".into(),
            title: title.into(),
            status: status.as_u16(),
            detail: None,
            instance: None,
            extensions: Map::new(),
        }
    }

    pub fn with_type(mut self, uri: impl Into<String>) -> Self {
        self.type_uri = uri.into();
        self
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
    }

    /// Adds extension members; a member that would shadow a standard one is ignored.
    pub fn extend(&mut self, members: impl IntoIterator<Item = (String, Value)>) {
        for (k, v) in members {
            if !matches!(k.as_str(), "type" | "title" | "status" | "detail" | "instance") {
                self.extensions.insert(k, v);
            }
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serialising a struct of strings and JSON values cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_statuses() {
        assert_eq!(ErrorKind::InvalidCredential.status(), 402);
        assert_eq!(ErrorKind::Replayed.status(), 402);
        assert_eq!(ErrorKind::BadRequest.status(), 400);
        assert_eq!(ErrorKind::Unavailable.status(), 503);
        assert!(!ErrorKind::Unavailable.carries_challenges());
        assert_eq!(ErrorKind::Gone.status(), 410);
        assert!(!ErrorKind::Gone.carries_challenges());
        assert_eq!(ErrorKind::Conflict.status(), 409);
    }

    #[test]
    fn members_reach_the_body_but_cannot_shadow() {
        let e = PaymentError::invalid("insufficient-balance", "top up")
            .with_member("requiredTopUp", "250")
            .with_member("status", 200)
            .with_member("code", "forged");
        let v: Value = serde_json::from_slice(&e.to_problem().to_json()).unwrap();
        assert_eq!(v["requiredTopUp"], "250");
        assert_eq!(v["status"], 402);
        assert_eq!(v["code"], "insufficient-balance");
    }

    #[test]
    fn problem_body_names_the_reason() {
        let e = PaymentError::invalid("invalid_preimage", "sha256(preimage) does not match");
        let v: Value = serde_json::from_slice(&e.to_problem().to_json()).unwrap();
        assert_eq!(v["type"], "https://farebox.dev/problems/invalid_preimage");
        assert_eq!(v["status"], 402);
        assert_eq!(v["code"], "invalid_preimage");
        assert_eq!(v["detail"], "sha256(preimage) does not match");
    }

    #[test]
    fn extensions_cannot_shadow_standard_members() {
        let mut p = Problem::new(StatusCode::PAYMENT_REQUIRED, "x");
        p.extend([
            ("status".to_string(), Value::from(200)),
            ("accepts".to_string(), Value::Array(vec![])),
        ]);
        let v: Value = serde_json::from_slice(&p.to_json()).unwrap();
        assert_eq!(v["status"], 402);
        assert!(v["accepts"].is_array());
    }
}
