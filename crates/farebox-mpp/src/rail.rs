//! [`MppRail`]: MPP's `Payment` scheme with the Lightning `charge` intent, as a farebox
//! [`Rail`].
//!
//! **Challenge.** For a route priced in Bitcoin (whole satoshis), the backend creates an invoice
//! for the price and the rail issues one challenge `method="lightning", intent="charge"` whose
//! `request` carries amount, currency, invoice, payment hash and network, whose `expires` is
//! now + `challenge_ttl`, and whose `opaque` binds the route pattern and HTTP method
//! (`{"route": "/v1/*", "httpMethod": "GET"}`). The id is the HMAC of all of that, so the server
//! keeps no state per challenge.
//!
//! **Verify**, cheapest check first: decode the credential (`malformed-credential`); method and
//! intent are `lightning`/`charge` (`method-unsupported`, 400); the id is the HMAC of the echoed
//! fields under our key and the realm is ours (`invalid-challenge`); `expires` is present,
//! RFC 3339 and in the future (`payment-expired`); the opaque binding names this route and
//! method (`invalid-challenge`); the request's amount covers the route's current price
//! (`payment-insufficient`); `sha256(preimage) == paymentHash` in constant time
//! (`verification-failed`); finally the challenge id is reserved in the [`ReplayStore`]
//! (namespace `mpp`) until the challenge expires, so a credential is accepted once
//! (`invalid-challenge`, kind `Replayed`). A store that cannot answer refuses the request (503).
//!
//! **Settle** builds the `Payment-Receipt` (the preimage is final) and marks the record settled;
//! **release** forgets the reservation when the handler failed, so the same credential can be
//! retried.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use farebox_core::{
    Challenge as RailChallenge, Money, PaymentError, PresentedCredential, ProofState, Rail,
    Receipt, ReplayStore, Resource, Verified,
};
use farebox_lightning::{InvoiceRequest, LightningBackend, bolt11, preimage_matches};
use http::HeaderValue;

use crate::challenge::{
    ChallengeKey, ChallengeParams, SecretTooShort, decode_opaque, decode_request,
};
use crate::credential::{Credential, CredentialError, payment_token};
use crate::lightning_charge::{self, INTENT, LightningChargeRequest, METHOD};
use crate::problem;
use crate::receipt::{PAYMENT_RECEIPT, PaymentReceipt};
use crate::time;

/// The replay-store namespace.
pub const NAMESPACE: &str = "mpp";
/// Default challenge lifetime (both SDKs: 5 minutes).
pub const DEFAULT_CHALLENGE_TTL: Duration = Duration::from_secs(300);
/// How long a client should wait when the Lightning backend is down.
pub const BACKEND_RETRY_AFTER: Duration = Duration::from_secs(5);
/// The `opaque` member naming the route pattern a challenge was issued for.
pub const OPAQUE_ROUTE: &str = "route";
/// The `opaque` member naming the HTTP method a challenge was issued for.
pub const OPAQUE_HTTP_METHOD: &str = "httpMethod";

/// The configuration of an [`MppRail`].
#[derive(Clone)]
pub struct MppConfig {
    /// The protection space, e.g. the API's host name. Visible ASCII.
    pub realm: String,
    /// The challenge-binding HMAC secret, at least 32 bytes.
    pub secret_key: Vec<u8>,
    /// How long a challenge (and its invoice) may be paid and redeemed.
    pub challenge_ttl: Duration,
}

impl MppConfig {
    /// A configuration with the default 5-minute challenges.
    pub fn new(realm: impl Into<String>, secret_key: impl Into<Vec<u8>>) -> Self {
        MppConfig {
            realm: realm.into(),
            secret_key: secret_key.into(),
            challenge_ttl: DEFAULT_CHALLENGE_TTL,
        }
    }
}

impl std::fmt::Debug for MppConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MppConfig")
            .field("realm", &self.realm)
            .field("challenge_ttl", &self.challenge_ttl)
            .finish_non_exhaustive()
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Secret(#[from] SecretTooShort),
    #[error("invalid realm {0:?}: use 1-255 visible ASCII characters")]
    Realm(String),
    #[error("challenge_ttl must be between 1 s and 1 day")]
    Ttl,
}

/// What [`MppRail::verify`] hands to settle/release.
#[derive(Debug, Clone)]
struct Accepted {
    challenge_id: String,
}

/// The MPP rail (Lightning charge).
pub struct MppRail {
    realm: String,
    key: ChallengeKey,
    ttl: Duration,
    backend: Arc<dyn LightningBackend>,
    store: Arc<dyn ReplayStore>,
}

impl std::fmt::Debug for MppRail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MppRail")
            .field("realm", &self.realm)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn to_header(text: String) -> Result<HeaderValue, PaymentError> {
    HeaderValue::try_from(text)
        .map_err(|_| PaymentError::internal("mpp_header", "not a valid header value"))
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn credential_error(e: CredentialError) -> PaymentError {
    problem::malformed(format!("Payment credential: {e}"))
}

impl MppRail {
    /// A rail issuing challenges under `config`, invoices from `backend`, and recording used
    /// challenges in `store`.
    pub fn new(
        config: MppConfig,
        backend: Arc<dyn LightningBackend>,
        store: Arc<dyn ReplayStore>,
    ) -> Result<Self, ConfigError> {
        let key = ChallengeKey::new(&config.secret_key)?;
        if config.realm.is_empty()
            || config.realm.len() > 255
            || !config.realm.bytes().all(|b| (b' '..=b'~').contains(&b))
        {
            return Err(ConfigError::Realm(config.realm));
        }
        if config.challenge_ttl < Duration::from_secs(1)
            || config.challenge_ttl > Duration::from_secs(86_400)
        {
            return Err(ConfigError::Ttl);
        }
        Ok(MppRail { realm: config.realm, key, ttl: config.challenge_ttl, backend, store })
    }

    /// The challenge-binding key (to compute or check ids outside the rail).
    pub fn key(&self) -> &ChallengeKey {
        &self.key
    }

    /// Everything [`Rail::verify`] checks except the replay reservation, at `now_unix`:
    /// returns the credential and the amount it pays.
    pub fn check_credential(
        &self,
        resource: &Resource,
        authorization: &str,
        now_unix: u64,
    ) -> Result<(Credential, Money), PaymentError> {
        let token = payment_token(authorization)
            .ok_or_else(|| credential_error(CredentialError::NotPayment))?;
        let cred = Credential::decode(token).map_err(credential_error)?;
        let ch = &cred.challenge;
        if ch.method != METHOD || ch.intent != INTENT {
            return Err(problem::method_unsupported(format!(
                "this server accepts method=\"{METHOD}\" intent=\"{INTENT}\", not method={:?} intent={:?}",
                ch.method, ch.intent
            )));
        }
        if !self.key.verify_id(&ch.slots(), &ch.id) || ch.realm != self.realm {
            return Err(problem::invalid_challenge(
                "the challenge was not issued by this server or was altered",
            ));
        }
        let expires = ch.expires.as_deref().ok_or_else(|| {
            problem::invalid_challenge("the challenge has no expiry; this server always sets one")
        })?;
        let expires = time::parse(expires)
            .map_err(|e| problem::invalid_challenge(format!("challenge expires: {e}")))?;
        if now_unix > expires {
            return Err(problem::expired("the challenge has expired; pay a fresh one"));
        }
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
        let request = decode_request(&ch.request)
            .map_err(|e| problem::invalid_challenge(format!("challenge request: {e}")))?;
        let request = LightningChargeRequest::from_json(&request)
            .map_err(|e| problem::invalid_challenge(format!("challenge request: {e}")))?;
        let price_msat = resource
            .price
            .in_bitcoin()
            .and_then(Money::as_msat)
            .ok_or_else(|| problem::invalid_challenge("this route has no Lightning price"))?;
        let paid_msat = request.amount_sat.saturating_mul(1000);
        if paid_msat < price_msat {
            return Err(problem::insufficient(format!(
                "the challenge charges {} sat, this route costs {}",
                request.amount_sat,
                Money::msats(price_msat)
            )));
        }
        let preimage = lightning_charge::preimage_of(&cred.payload)
            .map_err(|e| problem::malformed(e.to_string()))?;
        if !preimage_matches(&preimage, &request.payment_hash) {
            return Err(problem::verification_failed(
                "sha256(preimage) is not the payment hash of the challenge's invoice",
            ));
        }
        Ok((cred, Money::msats(paid_msat)))
    }
}

#[async_trait]
impl Rail for MppRail {
    fn name(&self) -> &'static str {
        "mpp"
    }

    fn auth_schemes(&self) -> &'static [&'static str] {
        &["Payment"]
    }

    async fn challenge(&self, resource: &Resource) -> Result<Option<RailChallenge>, PaymentError> {
        let Some(price) = resource.price.in_bitcoin() else {
            return Ok(None);
        };
        let Some(amount_msat) = price.as_msat().filter(|&m| m > 0) else {
            return Err(PaymentError::internal(
                "mpp_price",
                format!("{price} is not a payable Lightning amount"),
            ));
        };
        if amount_msat % 1000 != 0 {
            // A Lightning charge is denominated in whole satoshis; a fractional-sat price
            // cannot be offered exactly, and rounding would overcharge.
            tracing::warn!(route = %resource.route, %price, "MPP lightning charge needs a whole-sat price; not offered");
            return Ok(None);
        }
        let memo = match &resource.description {
            Some(d) => truncate(d, 639).to_string(),
            None => format!("MPP {} {}", truncate(&self.realm, 30), truncate(&resource.route, 600)),
        };
        let invoice = self
            .backend
            .create_invoice(InvoiceRequest { amount_msat, memo, expiry: self.ttl })
            .await
            .map_err(|e| {
                PaymentError::unavailable(
                    "lightning_unavailable",
                    format!("cannot create an invoice: {e}"),
                    BACKEND_RETRY_AFTER,
                )
            })?;
        if invoice.bolt11.is_empty() || !invoice.bolt11.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(PaymentError::internal(
                "mpp_invoice",
                "the Lightning backend returned a malformed invoice",
            ));
        }
        let network = bolt11::parse_invoice(&invoice.bolt11)
            .ok()
            .map(|p| lightning_charge::network_name(&p.currency).to_string());
        let request = LightningChargeRequest {
            amount_sat: amount_msat / 1000,
            invoice: invoice.bolt11,
            payment_hash: invoice.payment_hash,
            network,
            description: resource.description.as_deref().map(str::to_owned),
        };
        let expires = time::unix_now().saturating_add(self.ttl.as_secs());
        let challenge = self
            .key
            .issue(ChallengeParams {
                realm: self.realm.clone(),
                method: METHOD.into(),
                intent: INTENT.into(),
                request: request.to_json(),
                expires: Some(time::format(expires)),
                description: resource.description.as_deref().map(str::to_owned),
                digest: None,
                opaque: Some(BTreeMap::from([
                    (OPAQUE_ROUTE.to_string(), resource.route.to_string()),
                    (OPAQUE_HTTP_METHOD.to_string(), resource.method.as_str().to_string()),
                ])),
                header: None,
            })
            .map_err(|e| PaymentError::internal("mpp_challenge", e.to_string()))?;
        let line = challenge
            .to_header_value()
            .map_err(|e| PaymentError::internal("mpp_challenge", e.to_string()))?;
        Ok(Some(RailChallenge { www_authenticate: vec![line], ..RailChallenge::default() }))
    }

    async fn verify(
        &self,
        resource: &Resource,
        credential: &PresentedCredential,
    ) -> Result<Verified, PaymentError> {
        let now = time::unix_now();
        let (cred, amount) = self.check_credential(resource, &credential.value, now)?;
        let expires_at = cred.challenge.expires.as_deref().and_then(|e| time::parse(e).ok());
        let id = cred.challenge.id;
        if !self.store.reserve(NAMESPACE, &id, expires_at.unwrap_or(now).saturating_add(1)).await? {
            return Err(problem::used_challenge());
        }
        let request = decode_request(&cred.challenge.request)
            .ok()
            .and_then(|r| LightningChargeRequest::from_json(&r).ok());
        Ok(Verified {
            amount,
            payer: cred.source,
            reference: request.map(|r| hex::encode(r.payment_hash)).unwrap_or_default(),
            state: Box::new(Accepted { challenge_id: id }),
        })
    }

    async fn settle(
        &self,
        _resource: &Resource,
        payment: Verified,
    ) -> Result<Receipt, PaymentError> {
        let id = payment
            .state
            .downcast_ref::<Accepted>()
            .map(|a| a.challenge_id.clone())
            .unwrap_or_default();
        // The preimage is final; recording the settlement is bookkeeping, and a store hiccup
        // must not withhold the receipt of a payment that has happened.
        if let Err(e) =
            self.store.update(NAMESPACE, &id, ProofState::Settled, Some(&payment.reference)).await
        {
            tracing::warn!(error = %e, "could not mark an MPP challenge settled");
        }
        let receipt = PaymentReceipt::success(
            METHOD,
            time::format(time::unix_now()),
            payment.reference.clone(),
        )
        .with("challengeId", id);
        Ok(Receipt {
            amount: payment.amount,
            reference: payment.reference,
            headers: vec![(PAYMENT_RECEIPT, to_header(receipt.encode())?)],
        })
    }

    async fn release(&self, _resource: &Resource, payment: Verified) {
        if let Some(a) = payment.state.downcast_ref::<Accepted>()
            && let Err(e) = self.store.release(NAMESPACE, &a.challenge_id).await
        {
            tracing::warn!(error = %e, "could not release an MPP reservation");
        }
    }
}
