//! What every method × intent shares: the realm and the HMAC key that bind a challenge, its
//! lifetime, the replay store, and the rules every paid credential's challenge must meet.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use farebox_core::{PaymentError, ReplayStore, Resource};
use http::HeaderValue;

use super::locks::SessionLocks;
use super::{OPAQUE_HTTP_METHOD, OPAQUE_ROUTE, OPAQUE_SALT};
use crate::challenge::{ChallengeKey, ChallengeParams, decode_opaque};
use crate::credential::EchoedChallenge;
use crate::problem;
use crate::receipt::{PAYMENT_RECEIPT, PaymentReceipt};
use crate::time;

/// The rail's side of every challenge and credential, handed to each intent.
pub(crate) struct Envelope {
    pub realm: String,
    pub key: ChallengeKey,
    /// How long a challenge (and its invoice) may be paid and redeemed.
    pub ttl: Duration,
    pub store: Arc<dyn ReplayStore>,
    /// Orders the requests of one session within this process.
    pub locks: SessionLocks,
    /// Seeds [`OPAQUE_SALT`]: the rail's start time in nanoseconds, then a counter.
    salt: AtomicU64,
}

impl Envelope {
    pub fn new(
        realm: String,
        key: ChallengeKey,
        ttl: Duration,
        store: Arc<dyn ReplayStore>,
    ) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Envelope {
            realm,
            key,
            ttl,
            store,
            locks: SessionLocks::default(),
            salt: AtomicU64::new(seed),
        }
    }

    /// The `WWW-Authenticate` line of a challenge for `resource`: bound to its route and HTTP
    /// method, expiring after the TTL, its id the HMAC of all of it. `salted`: made unique with
    /// [`OPAQUE_SALT`] (when the id seeds a nonce the payer signs).
    pub fn issue(
        &self,
        resource: &Resource,
        (method, intent): (&str, &str),
        request: serde_json::Value,
        salted: bool,
    ) -> Result<HeaderValue, PaymentError> {
        let mut opaque = BTreeMap::from([
            (OPAQUE_ROUTE.to_string(), resource.route.to_string()),
            (OPAQUE_HTTP_METHOD.to_string(), resource.method.as_str().to_string()),
        ]);
        if salted {
            let salt = self.salt.fetch_add(1, Ordering::Relaxed);
            opaque.insert(OPAQUE_SALT.to_string(), format!("{salt:016x}"));
        }
        let expires = time::unix_now()?.saturating_add(self.ttl.as_secs());
        let challenge = self
            .key
            .issue(ChallengeParams {
                realm: self.realm.clone(),
                method: method.into(),
                intent: intent.into(),
                request,
                expires: Some(time::format(expires)),
                description: resource.description.as_deref().map(str::to_owned),
                digest: None,
                opaque: Some(opaque),
                header: None,
            })
            .map_err(|e| PaymentError::internal("mpp_challenge", e.to_string()))?;
        challenge
            .to_header_value()
            .map_err(|e| PaymentError::internal("mpp_challenge", e.to_string()))
    }
}

/// The challenge's `expires` (Unix seconds), which must be present and not past `now_unix`.
pub(crate) fn unexpired(ch: &EchoedChallenge, now_unix: u64) -> Result<u64, PaymentError> {
    let expires = ch.expires.as_deref().ok_or_else(|| {
        problem::invalid_challenge("the challenge has no expiry; this server always sets one")
    })?;
    let expires = time::parse(expires)
        .map_err(|e| problem::invalid_challenge(format!("challenge expires: {e}")))?;
    if now_unix > expires {
        return Err(problem::expired("the challenge has expired; pay a fresh one"));
    }
    Ok(expires)
}

/// Until when a charge's challenge id stays reserved: a second past the challenge's expiry
/// (already checked to be present), after which nobody can present it again.
pub(crate) fn reserved_until(ch: &EchoedChallenge, now_unix: u64) -> u64 {
    let expires = ch.expires.as_deref().and_then(|e| time::parse(e).ok());
    expires.unwrap_or(now_unix).saturating_add(1)
}

/// What every paid credential's challenge must be, whatever the method and intent, and whether
/// it is presented after a 402 or up front on a session's later request: unexpired
/// (`payment-expired`) and issued for this route and HTTP method (`invalid-challenge`). The id
/// and realm are checked when the credential is decoded; the price by each intent, against its
/// request.
pub(crate) fn live_for(
    ch: &EchoedChallenge,
    resource: &Resource,
    now_unix: u64,
) -> Result<u64, PaymentError> {
    let expires = unexpired(ch, now_unix)?;
    let opaque = ch
        .opaque
        .as_deref()
        .map(decode_opaque)
        .transpose()
        .map_err(|e| problem::invalid_challenge(format!("challenge opaque: {e}")))?
        .unwrap_or_default();
    if opaque.get(OPAQUE_ROUTE).map(String::as_str) != Some(&resource.route)
        || opaque.get(OPAQUE_HTTP_METHOD).map(String::as_str) != Some(resource.method.as_str())
    {
        return Err(problem::invalid_challenge(format!(
            "the challenge was issued for another route, not {} {}",
            resource.method, resource.route
        )));
    }
    Ok(expires)
}

/// The `Payment-Receipt` header carrying `receipt`.
pub(crate) fn receipt_header(
    receipt: &PaymentReceipt,
) -> Result<(http::HeaderName, HeaderValue), PaymentError> {
    let value = HeaderValue::try_from(receipt.encode())
        .map_err(|_| PaymentError::internal("mpp_header", "not a valid header value"))?;
    Ok((PAYMENT_RECEIPT, value))
}
