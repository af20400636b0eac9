//! Rail probes: the rail-specific half of the suite.
//!
//! The runner is rail-neutral: it sends requests, evaluates expectations, and reports. What a
//! rail's challenge looks like, how each [`Attempt`] is built from it, what its receipt is and which
//! schema each artifact is checked against is a [`Probe`]'s job. A new rail adds a check file in
//! `conformance/checks/` and a probe here; the runner does not change.

pub mod l402;
pub mod mpp;
pub mod x402;

use async_trait::async_trait;
use http::HeaderMap;
use serde_json::Value;

use crate::check::Attempt;
use crate::{Exchange, Wallets};

/// What a probe could not do for a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unable {
    /// The check does not apply (no wallet for a paid check, a send this rail has no meaning
    /// for, no offer of the kind it needs): reported as skipped with the reason.
    Skip(String),
    /// The server's answer made the check impossible where it should have been possible
    /// (no challenge to attack): reported as failed.
    Fail(String),
}

/// Headers a probe wants on a request.
pub type Credential = Vec<(http::HeaderName, http::HeaderValue)>;

/// An artifact to check against a schema: the schema's path under `specs/schemas` (without
/// `.json`) and the value.
pub type Artifact = (String, Value);

/// The rail-specific half of the suite.
#[async_trait]
pub trait Probe: Send + Sync {
    /// The rail, as the checks name it.
    fn rail(&self) -> &'static str;

    /// Whether `exchange` carries a challenge of this rail.
    fn has_challenge(&self, exchange: &Exchange) -> bool;

    /// The artifacts of `kind` (`challenge`, `request`, …) in `exchange`, decoded for schema
    /// checks. An artifact that cannot even be decoded is an error naming it.
    fn artifacts(&self, exchange: &Exchange, kind: &str) -> Result<Vec<Artifact>, String>;

    /// The receipt on `exchange`, decoded, if there is one of this rail.
    fn receipt(&self, exchange: &Exchange) -> Option<Result<Artifact, String>>;

    /// A rail-specific assertion by name, on the 402 the discovery request got.
    fn assert(&self, name: &str, exchange: &Exchange) -> Result<(), String>;

    /// The request headers that make `send`, built from the 402 the discovery request got.
    /// `paid` proofs are kept by the probe for a later `replay`.
    async fn credential(
        &self,
        send: Attempt,
        discovery: &Exchange,
        wallets: &Wallets,
    ) -> Result<Credential, Unable>;
}

/// The values of every `WWW-Authenticate` field.
pub(crate) fn www_authenticate(headers: &HeaderMap) -> Vec<&str> {
    headers.get_all(http::header::WWW_AUTHENTICATE).iter().filter_map(|v| v.to_str().ok()).collect()
}

/// `text` repeated up to 32 KiB (the oversized credential of every rail).
pub(crate) fn oversized(prefix: &str) -> String {
    let mut s = String::with_capacity(32 * 1024 + prefix.len());
    s.push_str(prefix);
    while s.len() < 32 * 1024 {
        s.push_str("AAAAAAAAAAAAAAAA");
    }
    s
}

/// A header value from text the probe made (always visible ASCII).
pub(crate) fn value(text: &str) -> Result<http::HeaderValue, Unable> {
    http::HeaderValue::from_str(text).map_err(|_| Unable::Fail("not a header value".into()))
}

/// The header `name` decoded as base64url (padded or not) JSON, as an artifact for `schema`:
/// how the receipts of L402 (farebox's) and MPP travel. `None` when the header is absent.
pub(crate) fn b64url_json_header(
    exchange: &Exchange,
    name: &str,
    schema: &str,
) -> Option<Result<Artifact, String>> {
    use base64::Engine as _;
    let header = exchange.headers.get(name)?;
    Some(
        header
            .to_str()
            .ok()
            .and_then(|v| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(v.trim_end_matches('='))
                    .ok()
            })
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .map(|v| (schema.to_string(), v))
            .ok_or_else(|| format!("{name} is not base64url JSON")),
    )
}
