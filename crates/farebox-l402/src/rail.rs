//! [`L402Rail`]: the L402 payment rail (farebox-core's [`Rail`]).
//!
//! A challenge is a fresh invoice from the Lightning backend plus a macaroon whose identifier
//! commits to the invoice's payment hash, signed from a per-token root key and restricted by
//! caveats (see [`crate::caveat`]). A credential is that macaroon plus the invoice preimage.
//!
//! Verification ([`L402Verifier::verify_token`], synchronous and allocation-light) goes in this
//! order: parse; decode each macaroon and its identifier; `sha256(preimage) == payment_hash` in
//! constant time, before anything else; root key; HMAC chain; every caveat. [`L402Rail`] then
//! asks its [`TokenStore`], when it has one ([`L402Config::with_store`]), whether the token id is
//! revoked and counts the request against each `farebox_max_requests` caveat; without a store a
//! token carrying such a caveat is refused (it could not be counted). A preimage is final, so
//! settling only builds the receipt (the [`L402_RECEIPT`] header). Invalid credentials are
//! [`PaymentError::invalid`]: the server answers with a fresh 402 (as Aperture does), not the
//! spec's 401.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use farebox_core::money::Money;
use farebox_core::store::{SessionStore, StoreError};
use farebox_core::{
    Challenge, PaymentError, PresentedCredential, Rail, Receipt, Refusal, Resource, Settlement,
    Verdict, Verified,
};
use farebox_lightning::{InvoiceRequest, LightningBackend, NetworkPin, create_checked_invoice};
use http::HeaderValue;
use rand::RngCore as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::caveat::{self, CaveatContext};
use crate::credential::{self, CredentialError};
use crate::identifier::{Identifier, IdentifierError};
use crate::macaroon::{
    MAX_MACAROON_LEN, Macaroon, MacaroonError, OwnedMacaroon, decode_base64_into, derive_key,
};
use crate::receipt::{L402_RECEIPT, L402Receipt};
use crate::root_key::RootKeys;
use crate::tokens::{Counter, Counters, TokenStore};

/// How long minted tokens stay valid, by default.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// How long challenge invoices can be paid, by default.
pub const DEFAULT_INVOICE_EXPIRY: Duration = Duration::from_secs(600);
/// The macaroon location farebox writes (Aperture's; it is not signed and not checked).
pub const DEFAULT_LOCATION: &str = "lsat";
/// How long a client should wait before retrying when the Lightning backend is down.
pub const BACKEND_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The configuration of an [`L402Rail`].
#[derive(Clone)]
pub struct L402Config {
    /// The service name written in `services=<name>:0` and the `<name>_…` caveats.
    pub service: String,
    /// Where root keys come from.
    pub root_keys: Arc<dyn RootKeys>,
    /// Token lifetime, written as `<service>_valid_until`. Zero: no expiry caveat.
    pub token_lifetime: Duration,
    /// Expiry of the challenge invoices.
    pub invoice_expiry: Duration,
    /// Capabilities written as `<service>_capabilities` (omitted when empty).
    pub capabilities: Vec<String>,
    /// Macaroon location.
    pub location: String,
    /// Revocations and request counters; `None`: nothing can be revoked, and tokens carrying a
    /// `farebox_max_requests` caveat are refused.
    pub token_store: Option<TokenStore>,
}

impl L402Config {
    /// A configuration with the defaults: 1 h tokens, 10 min invoices, no capabilities.
    pub fn new(service: impl Into<String>, root_keys: Arc<dyn RootKeys>) -> Self {
        L402Config {
            service: service.into(),
            root_keys,
            token_lifetime: DEFAULT_TOKEN_LIFETIME,
            invoice_expiry: DEFAULT_INVOICE_EXPIRY,
            capabilities: Vec::new(),
            location: DEFAULT_LOCATION.into(),
            token_store: None,
        }
    }

    /// Keeps revocations and request counters in `store` (shared by every instance that must
    /// agree on them; see [`crate::tokens`]).
    pub fn with_store(mut self, store: Arc<dyn SessionStore>) -> Self {
        self.token_store = Some(TokenStore::new(store));
        self
    }
}

impl std::fmt::Debug for L402Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L402Config")
            .field("service", &self.service)
            .field("token_lifetime", &self.token_lifetime)
            .field("invoice_expiry", &self.invoice_expiry)
            .field("capabilities", &self.capabilities)
            .field("location", &self.location)
            .field("token_store", &self.token_store.is_some())
            .finish_non_exhaustive()
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid L402 service name {0:?}: use 1-64 of A-Z a-z 0-9 - _ .")]
    ServiceName(String),
    #[error("invalid capability {0:?}: use 1-64 of A-Z a-z 0-9 - _ .")]
    Capability(String),
    #[error("invoice expiry must be between 1 s and 1 year")]
    InvoiceExpiry,
}

/// What a verified token proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedToken {
    pub payment_hash: [u8; 32],
    pub token_id: [u8; 32],
    /// The smallest `farebox_amount_msat` caveat: what was paid.
    pub amount_msat: u64,
    /// One counter per `farebox_max_requests` caveat, for the rail to count.
    pub counters: Counters,
}

/// Mints and verifies L402 tokens, synchronously; [`L402Rail`] wraps it with the Lightning
/// backend.
#[derive(Debug, Clone)]
pub struct L402Verifier {
    config: L402Config,
}

fn invalid(code: &'static str, detail: impl Into<String>) -> PaymentError {
    PaymentError::invalid(code, detail)
}

fn macaroon_error(e: MacaroonError) -> PaymentError {
    match e {
        MacaroonError::InvalidSignature => {
            invalid("invalid_signature", "the macaroon signature does not verify")
        }
        MacaroonError::ThirdPartyCaveat(i) => invalid(
            "third_party_caveat",
            format!("caveat {i} is a third-party caveat, which farebox does not accept"),
        ),
        other => invalid("malformed_credential", format!("macaroon: {other}")),
    }
}

fn identifier_error(e: IdentifierError) -> PaymentError {
    match e {
        IdentifierError::UnknownVersion(_) => {
            invalid("unknown_version", format!("L402 identifier: {e}"))
        }
        IdentifierError::BadLength(_) => {
            invalid("malformed_credential", format!("L402 identifier: {e}"))
        }
    }
}

impl L402Verifier {
    pub fn new(config: L402Config) -> Result<Self, ConfigError> {
        if !caveat::is_valid_service_name(&config.service) {
            return Err(ConfigError::ServiceName(config.service));
        }
        if let Some(bad) = config.capabilities.iter().find(|c| !caveat::is_valid_service_name(c)) {
            return Err(ConfigError::Capability(bad.clone()));
        }
        if config.invoice_expiry.is_zero()
            || config.invoice_expiry > Duration::from_secs(365 * 86400)
        {
            return Err(ConfigError::InvoiceExpiry);
        }
        Ok(L402Verifier { config })
    }

    pub fn config(&self) -> &L402Config {
        &self.config
    }

    /// Mints a token for an invoice with `payment_hash`, paying `amount_msat` for `resource`,
    /// with a fresh random token id.
    pub fn mint_token(
        &self,
        payment_hash: [u8; 32],
        amount_msat: u64,
        resource: &Resource,
        now_unix: u64,
    ) -> Result<OwnedMacaroon, PaymentError> {
        let mut token_id = [0u8; 32];
        rand::rngs::OsRng.try_fill_bytes(&mut token_id).map_err(|e| {
            PaymentError::internal("rng", format!("no randomness for the token id: {e}"))
        })?;
        self.mint_token_with_id(
            Identifier::new(payment_hash, token_id),
            amount_msat,
            resource,
            now_unix,
        )
    }

    /// As [`L402Verifier::mint_token`] with a given identifier (tests, vectors).
    pub fn mint_token_with_id(
        &self,
        id: Identifier,
        amount_msat: u64,
        resource: &Resource,
        now_unix: u64,
    ) -> Result<OwnedMacaroon, PaymentError> {
        let c = &self.config;
        let root = c.root_keys.mint_root_key(&id).ok_or_else(|| {
            PaymentError::internal("root_key_unavailable", "no root key for a new token")
        })?;
        let mut m = OwnedMacaroon::new(&root, &id.encode(), Some(c.location.as_bytes()));
        m.add_first_party_caveat(caveat::services(&c.service, 0).as_bytes());
        if !c.capabilities.is_empty() {
            m.add_first_party_caveat(caveat::capabilities(&c.service, &c.capabilities).as_bytes());
        }
        m.add_first_party_caveat(caveat::route(&resource.route).as_bytes());
        m.add_first_party_caveat(caveat::method(resource.method.as_str()).as_bytes());
        m.add_first_party_caveat(caveat::amount_msat(amount_msat).as_bytes());
        if !c.token_lifetime.is_zero() {
            let until = now_unix.saturating_add(c.token_lifetime.as_secs().max(1));
            m.add_first_party_caveat(caveat::valid_until(&c.service, until).as_bytes());
        }
        Ok(m)
    }

    /// Verifies an `Authorization` value for `resource` at `now_unix`, from the token alone: a
    /// token carrying a `farebox_max_requests` caveat is refused, since nothing here counts
    /// requests, and revocations are not looked up ([`L402Rail`] does both).
    pub fn verify_token(
        &self,
        authorization: &str,
        resource: &Resource,
        now_unix: u64,
    ) -> Result<VerifiedToken, PaymentError> {
        let token = self.verify_uncounted(authorization, resource, now_unix)?;
        if !token.counters.is_empty() {
            return Err(no_counter());
        }
        Ok(token)
    }

    /// As [`L402Verifier::verify_token`], leaving the request limits to the caller to count.
    fn verify_uncounted(
        &self,
        authorization: &str,
        resource: &Resource,
        now_unix: u64,
    ) -> Result<VerifiedToken, PaymentError> {
        let cred = credential::parse_credential(authorization).map_err(|e| match e {
            CredentialError::BadPreimage => {
                invalid("malformed_credential", "the preimage must be 64 hex digits")
            }
            other => invalid("malformed_credential", format!("L402 credential: {other}")),
        })?;
        let price_msat = match resource.price.in_bitcoin() {
            None => {
                return Err(invalid(
                    "wrong_route",
                    "this route has no Bitcoin price, so L402 does not pay for it",
                ));
            }
            Some(m) => m.as_msat().ok_or_else(|| {
                invalid("insufficient_amount", "this route's price does not fit a Lightning amount")
            })?,
        };
        let hash: [u8; 32] = Sha256::digest(cred.preimage).into();
        let ctx = CaveatContext {
            service: &self.config.service,
            capabilities: &self.config.capabilities,
            route: &resource.route,
            path: &resource.path,
            method: resource.method.as_str(),
            price_msat,
            now_unix,
        };
        // Small tokens decode into a stack buffer; zeroing the full 8 KiB maximum would cost more
        // than a third of a verification.
        let mut stack = [0u8; 1024];
        let mut heap = Vec::new();
        for text in cred.macaroon_list() {
            let needed = (text.len() / 4 + 1) * 3;
            let buf: &mut [u8] = if needed <= stack.len() {
                &mut stack
            } else {
                heap.resize(needed.min(MAX_MACAROON_LEN), 0);
                &mut heap
            };
            if let Some(v) = self.verify_one(text, buf, &hash, &ctx)? {
                return Ok(v);
            }
        }
        Err(invalid("invalid_preimage", "sha256(preimage) is not the payment hash of the token"))
    }

    /// `Ok(None)` when this macaroon is valid but does not commit to `hash` (another one in the
    /// list may).
    fn verify_one(
        &self,
        text: &str,
        buf: &mut [u8],
        hash: &[u8; 32],
        ctx: &CaveatContext<'_>,
    ) -> Result<Option<VerifiedToken>, PaymentError> {
        let n = decode_base64_into(text, buf).map_err(macaroon_error)?;
        let mac = Macaroon::decode(&buf[..n]).map_err(macaroon_error)?;
        let id = Identifier::decode(mac.identifier()).map_err(identifier_error)?;
        if !bool::from(id.payment_hash.ct_eq(hash)) {
            return Ok(None);
        }
        let root = self.config.root_keys.root_key(&id).ok_or_else(|| {
            invalid("invalid_signature", "the token's root key is unknown or revoked")
        })?;
        // The chain signature through each request-limit caveat names its counter.
        let mut through = [[0u8; 32]; caveat::MAX_REQUEST_LIMITS];
        let mut limits_seen = 0;
        mac.verify_signature_inspecting(&derive_key(&root), |c, sig| {
            if c.strip_prefix(caveat::COND_MAX_REQUESTS.as_bytes())
                .is_some_and(|v| v.first() == Some(&b'='))
            {
                if let Some(slot) = through.get_mut(limits_seen) {
                    *slot = *sig;
                }
                limits_seen += 1;
            }
        })
        .map_err(macaroon_error)?;
        let grant = caveat::check(mac.caveats().map(|c| c.id), ctx)
            .map_err(|e| PaymentError::invalid(e.code(), e.to_string()))?;
        let mut counters = Counters::default();
        for (&max, sig) in grant.limits.as_slice().iter().zip(&through) {
            counters.push(Counter::new(max, sig));
        }
        if counters.as_slice().len() != limits_seen {
            return Err(PaymentError::internal("l402_limits", "request limits out of step"));
        }
        Ok(Some(VerifiedToken {
            payment_hash: id.payment_hash,
            token_id: id.token_id,
            amount_msat: grant.amount_msat,
            counters,
        }))
    }
}

fn no_counter() -> PaymentError {
    PaymentError::invalid(
        "unknown_caveat",
        "farebox_max_requests needs a store to count requests, and this server keeps none",
    )
}

/// Why a token id could not be revoked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevokeError {
    #[error("this L402 rail keeps no store (L402Config::with_store), so it cannot revoke tokens")]
    NoStore,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The L402 rail.
pub struct L402Rail {
    verifier: L402Verifier,
    backend: Arc<dyn LightningBackend>,
    /// The network the backend's invoices are on, pinned by the first one.
    network: NetworkPin,
}

impl std::fmt::Debug for L402Rail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L402Rail").field("verifier", &self.verifier).finish_non_exhaustive()
    }
}

impl L402Rail {
    /// A rail minting tokens from `config` and invoices from `backend`.
    pub fn new(
        config: L402Config,
        backend: Arc<dyn LightningBackend>,
    ) -> Result<Self, ConfigError> {
        Ok(L402Rail { verifier: L402Verifier::new(config)?, backend, network: NetworkPin::new() })
    }

    /// The synchronous minting/verification half.
    pub fn verifier(&self) -> &L402Verifier {
        &self.verifier
    }
}

/// Revocation: what a gateway's admin API calls.
impl L402Rail {
    /// The revocations and request counters, when the rail has a store.
    pub fn token_store(&self) -> Option<&TokenStore> {
        self.verifier.config.token_store.as_ref()
    }

    /// Revokes `token_id` (see [`TokenStore::revoke`]).
    pub async fn revoke(&self, token_id: &[u8; 32]) -> Result<(), RevokeError> {
        Ok(self.token_store().ok_or(RevokeError::NoStore)?.revoke(token_id).await?)
    }

    /// Whether `token_id` is revoked (see [`TokenStore::is_revoked`]).
    pub async fn is_revoked(&self, token_id: &[u8; 32]) -> Result<bool, RevokeError> {
        Ok(self.token_store().ok_or(RevokeError::NoStore)?.is_revoked(token_id).await?)
    }
}

fn header(text: String) -> Result<HeaderValue, PaymentError> {
    HeaderValue::try_from(text)
        .map_err(|_| PaymentError::internal("l402_header", "challenge is not a valid header value"))
}

#[async_trait]
impl Rail for L402Rail {
    fn name(&self) -> &'static str {
        "l402"
    }

    fn auth_schemes(&self) -> &'static [&'static str] {
        credential::SCHEMES
    }

    async fn challenge(
        &self,
        resource: &Resource,
        _refusal: Option<&Refusal<'_>>,
    ) -> Result<Option<Challenge>, PaymentError> {
        let Some(price) = resource.price.in_bitcoin() else {
            return Ok(None);
        };
        let amount_msat = price.as_msat().filter(|&m| m > 0).ok_or_else(|| {
            PaymentError::internal(
                "l402_price",
                format!("{price} is not a payable Lightning amount"),
            )
        })?;
        let memo = match &resource.description {
            Some(d) => farebox_lightning::bolt11::truncate_utf8(d, 639).to_string(),
            None => {
                format!(
                    "L402 {} {}",
                    self.verifier.config.service,
                    farebox_lightning::bolt11::truncate_utf8(&resource.route, 600)
                )
            }
        };
        let request =
            InvoiceRequest { amount_msat, memo, expiry: self.verifier.config.invoice_expiry };
        let invoice =
            create_checked_invoice(&*self.backend, request, &self.network).await.map_err(|e| {
                PaymentError::unavailable(
                    "lightning_unavailable",
                    format!("cannot create an invoice: {e}"),
                    BACKEND_RETRY_AFTER,
                )
            })?;
        let token = self
            .verifier
            .mint_token(
                invoice.payment_hash,
                amount_msat,
                resource,
                farebox_core::time::unix_now()?,
            )?
            .to_base64();
        // LSAT first: old loop/pool clients only look at the first WWW-Authenticate line.
        let www_authenticate = vec![
            header(credential::challenge_value("LSAT", &token, &invoice.bolt11))?,
            header(credential::challenge_value("L402", &token, &invoice.bolt11))?,
        ];
        Ok(Some(Challenge { www_authenticate, ..Challenge::default() }))
    }

    async fn verify(
        self: Arc<Self>,
        resource: &Resource,
        credential: &PresentedCredential,
    ) -> Result<Verdict, PaymentError> {
        let token = self.verifier.verify_uncounted(
            &credential.value,
            resource,
            farebox_core::time::unix_now()?,
        )?;
        // The preimage matched the token; a backend that leaks preimages must also say paid.
        let settled = farebox_lightning::confirm_settled(&*self.backend, &token.payment_hash)
            .await
            .map_err(|e| {
                PaymentError::unavailable(
                    "lightning_unavailable",
                    format!("cannot confirm the payment with the Lightning node: {e}"),
                    BACKEND_RETRY_AFTER,
                )
            })?;
        if !settled {
            return Err(invalid(
                "invalid_preimage",
                "the Lightning node does not report this token's invoice as paid",
            ));
        }
        match self.token_store() {
            None if token.counters.is_empty() => {}
            None => return Err(no_counter()),
            // Counting reads the record, revocation included.
            Some(tokens) if !token.counters.is_empty() => {
                tokens.count(&token.token_id, &token.counters).await?;
            }
            Some(tokens) => {
                if tokens.is_revoked(&token.token_id).await? {
                    return Err(crate::tokens::revoked_error());
                }
            }
        }
        let (amount, reference) =
            (Money::msats(token.amount_msat), hex::encode(token.payment_hash));
        Ok(Verdict::Payment(Verified::new(amount, None, reference, Paid { rail: self, token })))
    }
}

/// An L402 payment verified by [`L402Rail`], to be receipted or given back.
struct Paid {
    rail: Arc<L402Rail>,
    token: VerifiedToken,
}

#[async_trait]
impl Settlement for Paid {
    /// A preimage is final, so settling only writes the receipt: an [`L402_RECEIPT`] header
    /// (see [`crate::receipt`]).
    async fn settle(
        self: Box<Self>,
        _resource: &Resource,
        amount: Money,
        reference: String,
    ) -> Result<Receipt, PaymentError> {
        let receipt = L402Receipt {
            payment_hash: self.token.payment_hash,
            amount_msat: self.token.amount_msat,
            service: self.rail.verifier.config.service.clone(),
            timestamp: farebox_core::time::unix_now()?,
        };
        Ok(Receipt::new(amount, reference, vec![(L402_RECEIPT, receipt.to_header_value())]))
    }

    /// Gives back the requests counted against the token's limits: this one was not served.
    async fn release(self: Box<Self>, _resource: &Resource) {
        let (token, Some(tokens)) = (&self.token, self.rail.token_store()) else {
            return;
        };
        if token.counters.is_empty() {
            return;
        }
        // Failing to give it back only costs the holder a request (fail closed).
        if let Err(e) = tokens.uncount(&token.token_id, &token.counters).await {
            tracing::warn!(error = %e, "could not give back an L402 request count");
        }
    }
}
