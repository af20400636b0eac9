//! [`MppRail`]: MPP's `Payment` scheme as a farebox [`Rail`], with both intents: one-off
//! `charge` payments over Lightning and over EVM tokens (EIP-3009), and `session` payments on an
//! EVM payment channel (cumulative signed vouchers, [`evm_session`]) or a Lightning prepaid
//! balance. The rail offers the method × intent pairs its builder was given: `lightning`/`charge`
//! with a Lightning backend, `evm`/`charge` with an [`EvmChargeConfig`], `evm`/`session` with an
//! [`EvmSessionConfig`], `lightning`/`session` with a [`LightningSessionConfig`].
//!
//! What every paid credential's challenge must be, whatever the pair, is checked in one place
//! (`MppRail::live_for`: unexpired, issued for this route and HTTP method; the id and realm by
//! the credential's decoding). This page details the charges; each session file details its own.
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
//!
//! **EVM charge.** For a route priced in the configured token, the challenge is
//! `method="evm", intent="charge"` (see [`crate::evm::charge`]). Verify runs the same envelope
//! checks (id, realm, expiry, route binding), then: amount covers the price, the authorization's
//! nonce is bound to the challenge (`keccak256(id ‖ realm)`, or the JSON-array form other SDKs
//! sign), `to == recipient`, `value == amount`, `validAfter <= now < validBefore`, the EIP-712
//! signer is `from` (who the payment's payer is, whatever the credential's `source` says), the
//! challenge is unused, and one `eth_call` simulates the transfer from the gas key (a node that
//! cannot answer: 503). Then the challenge id is reserved with a hold on the payer's funds
//! ([`farebox_core::store::Hold`]): a second payment of one payer while one is in flight is
//! accepted only if the payer's balance (one more `balanceOf`, only then) covers both. Settle
//! sends `transferWithAuthorization` with the gas key and waits for its receipt: success answers
//! a `Payment-Receipt` whose `reference` is the transaction hash; a receipt that does not arrive
//! in time leaves the record `Pending` with the hash and refuses the request (503) naming it.
//! [`Rail::maintain`] resolves pending records later ([`MppRail::reconcile_evm_charges`]).

pub mod evm_session;
mod lightning_session;
mod locks;

pub use evm_session::{
    EvmSessionConfig, EvmSessionConfigBuilder, MIN_GRACE_PERIOD, NAMESPACE as EVM_SESSION_NAMESPACE,
};
pub use lightning_session::{LightningSessionConfig, NAMESPACE as LIGHTNING_SESSION_NAMESPACE};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use farebox_core::store::{Hold, HoldOutcome, reserve_funded};
use farebox_core::{Asset, SessionStore, Token};
use farebox_core::{
    Challenge as RailChallenge, Money, PaymentError, PresentedCredential, ProofState, Rail,
    Receipt, Refusal, ReplayStore, Resource, Settlement, Verdict, Verified,
};
use farebox_evm::eip3009::{self, TokenDomain, TransferWithAuthorization};
use farebox_evm::token::TokenInfo;
use farebox_evm::{Address, EvmError, EvmRpc, PrivateKeySigner, ReceiptOutcome, TxHash, U256};
use farebox_lightning::{InvoiceRequest, LightningBackend, bolt11, create_checked_invoice};
use http::HeaderValue;

use crate::challenge::{
    ChallengeKey, ChallengeParams, SecretTooShort, decode_opaque, decode_request,
};
use crate::credential::{Credential, CredentialError, EchoedChallenge, payment_token};
use crate::evm::charge::{self as evm_charge, EvmChargeRequest};
use crate::lightning::charge::{self as lightning_charge, INTENT, LightningChargeRequest, METHOD};
use crate::problem;
use crate::receipt::{PAYMENT_RECEIPT, PaymentReceipt};
use crate::time;
use crate::{evm::session as evm_session_wire, lightning::session as lightning_session_wire};

/// The replay-store namespace.
pub const NAMESPACE: &str = "mpp";
/// How long an unused EVM channel stays open by default: 30 days.
pub const DEFAULT_EVM_IDLE_CLOSE: Duration = Duration::from_secs(30 * 86_400);
/// Default challenge lifetime (both SDKs: 5 minutes).
pub const DEFAULT_CHALLENGE_TTL: Duration = Duration::from_secs(300);
/// How long a client should wait when the Lightning backend is down.
pub const BACKEND_RETRY_AFTER: Duration = Duration::from_secs(5);
/// The `opaque` member naming the route pattern a challenge was issued for.
pub const OPAQUE_ROUTE: &str = "route";
/// The `opaque` member naming the HTTP method a challenge was issued for.
pub const OPAQUE_HTTP_METHOD: &str = "httpMethod";
/// The `opaque` member that makes each `evm` challenge unique. Its id is the EIP-3009 nonce's
/// seed, and two challenges for the same route in the same second would otherwise be identical,
/// so a payer paying twice would sign the same nonce twice.
pub const OPAQUE_SALT: &str = "salt";

/// The configuration of an [`MppRail`].
#[derive(Clone)]
pub struct MppConfig {
    /// The protection space, e.g. the API's host name. Visible ASCII.
    pub realm: String,
    /// The challenge-binding HMAC secret, at least 32 bytes.
    pub secret_key: Vec<u8>,
    /// How long a challenge (and its invoice) may be paid and redeemed.
    pub challenge_ttl: Duration,
    /// How long an EVM session channel may sit unused before upkeep closes it, capturing what
    /// was spent and refunding the rest (the drafts suggest 30 days).
    pub evm_idle_close: Duration,
}

impl MppConfig {
    /// A configuration with the default 5-minute challenges.
    pub fn new(realm: impl Into<String>, secret_key: impl Into<Vec<u8>>) -> Self {
        MppConfig {
            realm: realm.into(),
            secret_key: secret_key.into(),
            challenge_ttl: DEFAULT_CHALLENGE_TTL,
            evm_idle_close: DEFAULT_EVM_IDLE_CLOSE,
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

/// The `evm` charge method: the token a route may be priced in, who is paid, and the node and
/// gas key that settle. Built and checked by [`EvmChargeConfig::builder`].
#[derive(Clone)]
pub struct EvmChargeConfig {
    rpc: EvmRpc,
    signer: PrivateKeySigner,
    token: Address,
    info: TokenInfo,
    recipient: Address,
    receipt_timeout: Duration,
}

impl EvmChargeConfig {
    /// A builder over the chain's node (its chain id is the challenge's `chainId`) and the key
    /// that sends `transferWithAuthorization` and pays its gas; `token`, `described_as` and
    /// `recipient` are required.
    pub fn builder(rpc: EvmRpc, signer: PrivateKeySigner) -> EvmChargeConfigBuilder {
        EvmChargeConfigBuilder {
            rpc,
            signer,
            token: None,
            info: None,
            recipient: None,
            receipt_timeout: DEFAULT_RECEIPT_TIMEOUT,
        }
    }

    /// Who is paid.
    pub fn recipient(&self) -> Address {
        self.recipient
    }

    /// The farebox asset routes are priced in for this method.
    pub fn asset(&self) -> Asset {
        token_asset(self.rpc.chain_id(), self.token, &self.info.symbol, self.info.decimals)
    }
}

/// How long settlement waits for a transfer's receipt unless told otherwise.
pub const DEFAULT_RECEIPT_TIMEOUT: Duration = Duration::from_secs(20);

/// Builds an [`EvmChargeConfig`]; [`EvmChargeConfigBuilder::build`] names what is missing or
/// wrong.
#[must_use]
pub struct EvmChargeConfigBuilder {
    rpc: EvmRpc,
    signer: PrivateKeySigner,
    token: Option<Address>,
    info: Option<TokenInfo>,
    recipient: Option<Address>,
    receipt_timeout: Duration,
}

impl EvmChargeConfigBuilder {
    /// The EIP-3009 token contract.
    pub fn token(mut self, token: Address) -> Self {
        self.token = Some(token);
        self
    }

    /// The token's symbol, decimals and EIP-712 domain (which payers sign under):
    /// `&usdc::BASE_SEPOLIA`, or a [`TokenInfo`].
    pub fn described_as(mut self, info: impl Into<TokenInfo>) -> Self {
        self.info = Some(info.into());
        self
    }

    /// Who is paid: not the zero address.
    pub fn recipient(mut self, recipient: Address) -> Self {
        self.recipient = Some(recipient);
        self
    }

    /// How long settlement waits for the transfer's receipt before answering pending.
    pub fn receipt_timeout(mut self, timeout: Duration) -> Self {
        self.receipt_timeout = timeout;
        self
    }

    pub fn build(self) -> Result<EvmChargeConfig, ConfigError> {
        let wrong = |field, problem: &str| ConfigError::field("evm charge", field, problem);
        let token = self.token.ok_or_else(|| wrong("token", "is required"))?;
        let info = self.info.ok_or_else(|| wrong("described_as", "is required"))?;
        let recipient = self.recipient.ok_or_else(|| wrong("recipient", "is required"))?;
        check_token("evm charge", token, &info, true)?;
        if recipient.is_zero() {
            return Err(wrong("recipient", "is the zero address: what is paid to it is burnt"));
        }
        if self.receipt_timeout.is_zero() {
            return Err(wrong("receipt_timeout", "must be longer than zero"));
        }
        Ok(EvmChargeConfig {
            rpc: self.rpc,
            signer: self.signer,
            token,
            info,
            recipient,
            receipt_timeout: self.receipt_timeout,
        })
    }
}

/// The farebox asset of `token` on chain `chain_id`, as every EVM method (and its wallet)
/// names it.
pub(crate) fn token_asset(chain_id: u64, token: Address, symbol: &str, decimals: u8) -> Asset {
    Asset::Token(Token {
        network: farebox_evm::network::caip2(chain_id),
        address: format!("{token:#x}"),
        symbol: symbol.to_string(),
        decimals,
    })
}

/// The checks every EVM method makes of its token; `signed`: payers sign under its EIP-712
/// domain.
pub(crate) fn check_token(
    config: &'static str,
    token: Address,
    info: &TokenInfo,
    signed: bool,
) -> Result<(), ConfigError> {
    if token.is_zero() {
        return Err(ConfigError::field(config, "token", "is the zero address"));
    }
    match info.problem(signed) {
        Some((field, problem)) => Err(ConfigError::field(config, field, problem)),
        None => Ok(()),
    }
}

impl std::fmt::Debug for EvmChargeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvmChargeConfig")
            .field("chain_id", &self.rpc.chain_id())
            .field("token", &self.token)
            .field("recipient", &self.recipient)
            .finish_non_exhaustive()
    }
}

struct EvmMethod {
    config: EvmChargeConfig,
    asset: Asset,
    domain: TokenDomain,
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
    #[error("enable at least one payment method")]
    NoMethod,
    #[error("Lightning sessions need a Lightning backend")]
    SessionWithoutBackend,
    /// A Lightning session's deposit preimage is its bearer secret; a backend that hands out
    /// preimages of invoices (LNbits, to anyone who asks about the payment hash, which is the
    /// session id) would let others spend or close the session.
    #[error("Lightning sessions need a backend that keeps preimages secret; this one reveals them")]
    SessionBackendRevealsPreimages,
    /// A method's configuration is missing or wrong in `field` (the builder method's name).
    #[error("{config} configuration, `{field}`: {problem}")]
    Field { config: &'static str, field: &'static str, problem: String },
}

impl ConfigError {
    pub(crate) fn field(config: &'static str, field: &'static str, problem: &str) -> Self {
        ConfigError::Field { config, field, problem: problem.into() }
    }
}

/// Builds an [`MppRail`] method by method (see [`MppRail::builder`]).
pub struct MppRailBuilder {
    config: MppConfig,
    store: Arc<dyn ReplayStore>,
    backend: Option<Arc<dyn LightningBackend>>,
    evm_charge: Option<EvmChargeConfig>,
    evm_session: Option<(EvmSessionConfig, Arc<dyn SessionStore>)>,
    lightning_session: Option<(LightningSessionConfig, Arc<dyn SessionStore>)>,
}

impl MppRailBuilder {
    /// Offers the `lightning` charge, with invoices from `backend` (also what Lightning
    /// sessions use).
    pub fn lightning(mut self, backend: Arc<dyn LightningBackend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Offers the `evm` charge (EIP-3009).
    pub fn evm_charge(mut self, config: EvmChargeConfig) -> Self {
        self.evm_charge = Some(config);
        self
    }

    /// Offers `evm` sessions: payment channels in `config.escrow`, their accounting in
    /// `sessions` (every instance of a deployment must share it).
    pub fn evm_session(
        mut self,
        config: EvmSessionConfig,
        sessions: Arc<dyn SessionStore>,
    ) -> Self {
        self.evm_session = Some((config, sessions));
        self
    }

    /// Offers `lightning` sessions (prepaid balances; needs [`Self::lightning`]), their
    /// accounting in `sessions`.
    pub fn lightning_session(
        mut self,
        config: LightningSessionConfig,
        sessions: Arc<dyn SessionStore>,
    ) -> Self {
        self.lightning_session = Some((config, sessions));
        self
    }

    /// Checks the configuration and builds the rail.
    pub fn build(self) -> Result<MppRail, ConfigError> {
        MppRail::from_builder(self)
    }
}

/// Which method and intent a credential is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offered {
    LightningCharge,
    EvmCharge,
    EvmSession,
    LightningSession,
}

/// What [`MppRail::verify`] hands to settle/release.
#[derive(Debug)]
enum Held {
    Charge(Accepted),
    EvmSession(evm_session::Held),
    LightningSession(lightning_session::Held),
}

/// A credential this rail accepted, before it is handed to the server as a [`Verdict`] whose
/// settlement holds the rail.
pub(crate) struct Approved {
    amount: Money,
    payer: Option<String>,
    reference: String,
    held: Held,
    /// [`Verdict::Payment`] or [`Verdict::Control`].
    verdict: fn(Verified) -> Verdict,
}

impl Approved {
    /// Payment for the request.
    fn payment(amount: Money, payer: Option<String>, reference: String, held: Held) -> Self {
        Approved { amount, payer, reference, held, verdict: Verdict::Payment }
    }

    /// A payment-control message (a session top-up or close).
    fn control(amount: Money, payer: Option<String>, reference: String, held: Held) -> Self {
        Approved { amount, payer, reference, held, verdict: Verdict::Control }
    }

    fn into_verdict(self, rail: Arc<MppRail>) -> Verdict {
        let settling = Settling { rail, held: self.held };
        (self.verdict)(Verified::new(self.amount, self.payer, self.reference, settling))
    }
}

/// A verified charge.
#[derive(Debug, Clone)]
struct Accepted {
    challenge_id: String,
    /// For an `evm` charge: the authorization to send and its signature.
    evm: Option<(TransferWithAuthorization, Vec<u8>)>,
}

/// What a credential pays, once checked.
enum Checked {
    Lightning {
        preimage: farebox_lightning::Preimage,
        payment_hash: farebox_lightning::PaymentHash,
    },
    Evm(TransferWithAuthorization, Vec<u8>),
}

/// The MPP rail (Lightning and EVM charge).
pub struct MppRail {
    realm: String,
    key: ChallengeKey,
    ttl: Duration,
    evm_idle_close: Duration,
    backend: Option<Arc<dyn LightningBackend>>,
    /// The network the backend's invoices are on, pinned by the first one.
    invoice_network: farebox_lightning::NetworkPin,
    evm: Option<EvmMethod>,
    store: Arc<dyn ReplayStore>,
    evm_session: Option<evm_session::Method>,
    lightning_session: Option<lightning_session::Method>,
    /// Orders the requests of one session within this process.
    session_locks: locks::SessionLocks,
    /// Seeds [`OPAQUE_SALT`]: the rail's start time in nanoseconds, then a counter.
    salt: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for MppRail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MppRail")
            .field("realm", &self.realm)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// The `Payment-Receipt` header carrying `receipt`.
fn receipt_header(
    receipt: &PaymentReceipt,
) -> Result<(http::HeaderName, HeaderValue), PaymentError> {
    Ok((PAYMENT_RECEIPT, to_header(receipt.encode())?))
}

fn to_header(text: String) -> Result<HeaderValue, PaymentError> {
    HeaderValue::try_from(text)
        .map_err(|_| PaymentError::internal("mpp_header", "not a valid header value"))
}

impl MppRail {
    /// Whether `preimage` proves the invoice `payment_hash` of this rail's backend was paid
    /// (farebox_lightning's one rule: with a backend that leaks preimages, the node must also
    /// report it settled). `Ok(false)`: refuse; a node that cannot say is a 503.
    async fn lightning_paid(
        &self,
        preimage: &farebox_lightning::Preimage,
        payment_hash: &farebox_lightning::PaymentHash,
    ) -> Result<bool, PaymentError> {
        let Some(backend) = &self.backend else {
            return Err(problem::method_unsupported("the lightning method is not enabled"));
        };
        let proof = farebox_lightning::confirm_paid(&**backend, preimage, payment_hash)
            .await
            .map_err(|e| {
                PaymentError::unavailable(
                    "lightning_unavailable",
                    format!("cannot confirm the payment with the Lightning node: {e}"),
                    BACKEND_RETRY_AFTER,
                )
            })?;
        Ok(proof == farebox_lightning::PaymentProof::Proven)
    }
}

/// A chain that cannot answer (fail closed: 503).
fn chain_unavailable(e: EvmError) -> PaymentError {
    PaymentError::unavailable(
        "evm_unavailable",
        format!("cannot reach the chain to check the payment: {e}"),
        BACKEND_RETRY_AFTER,
    )
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
        Self::with_methods(config, Some(backend), None, store)
    }

    /// A rail offering the `lightning` method when `backend` is given and the `evm` method when
    /// `evm` is given (at least one).
    pub fn with_methods(
        config: MppConfig,
        backend: Option<Arc<dyn LightningBackend>>,
        evm: Option<EvmChargeConfig>,
        store: Arc<dyn ReplayStore>,
    ) -> Result<Self, ConfigError> {
        let mut builder = Self::builder(config, store);
        builder.backend = backend;
        builder.evm_charge = evm;
        builder.build()
    }

    /// A rail built method by method: Lightning and EVM charges, EVM and Lightning sessions.
    pub fn builder(config: MppConfig, store: Arc<dyn ReplayStore>) -> MppRailBuilder {
        MppRailBuilder {
            config,
            store,
            backend: None,
            evm_charge: None,
            evm_session: None,
            lightning_session: None,
        }
    }

    fn from_builder(b: MppRailBuilder) -> Result<Self, ConfigError> {
        let MppRailBuilder {
            config,
            store,
            backend,
            evm_charge: evm,
            evm_session,
            lightning_session,
        } = b;
        if backend.is_none() && evm.is_none() && evm_session.is_none() {
            return Err(ConfigError::NoMethod);
        }
        if lightning_session.is_some() {
            match &backend {
                None => return Err(ConfigError::SessionWithoutBackend),
                Some(b) if !b.preimage_proves_payment() => {
                    return Err(ConfigError::SessionBackendRevealsPreimages);
                }
                Some(_) => {}
            }
        }
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
        let evm = evm.map(|config| EvmMethod {
            asset: config.asset(),
            domain: TokenDomain::new(
                config.info.eip712_name.clone(),
                config.info.eip712_version.clone(),
                config.rpc.chain_id(),
                config.token,
            ),
            config,
        });
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Ok(MppRail {
            realm: config.realm,
            key,
            ttl: config.challenge_ttl,
            evm_idle_close: config.evm_idle_close,
            backend,
            invoice_network: farebox_lightning::NetworkPin::new(),
            evm,
            store,
            evm_session: evm_session.map(|(c, s)| evm_session::Method::new(c, s)),
            lightning_session: lightning_session
                .map(|(config, sessions)| lightning_session::Method { config, sessions }),
            session_locks: locks::SessionLocks::default(),
            salt: std::sync::atomic::AtomicU64::new(seed),
        })
    }

    /// Adds the `evm` charge method.
    pub fn with_evm(mut self, evm: EvmChargeConfig) -> Self {
        self.evm = Some(EvmMethod {
            asset: evm.asset(),
            domain: TokenDomain::new(
                evm.info.eip712_name.clone(),
                evm.info.eip712_version.clone(),
                evm.rpc.chain_id(),
                evm.token,
            ),
            config: evm,
        });
        self
    }

    /// Closes sessions nobody has used for a while, capturing what was spent and refunding
    /// the rest: EVM channels idle for `evm_idle` (the drafts suggest closing channels idle
    /// for 30 days), Lightning sessions idle past their `idle_timeout`. Also finishes closes a
    /// crash or an unreachable chain left half done. Call it periodically (e.g. every minute);
    /// returns how many sessions were closed.
    pub async fn close_idle_sessions(&self, evm_idle: Duration) -> Result<usize, PaymentError> {
        let now = time::unix_now()?;
        // Idle for at least `evm_idle`: last changed at or before `now - evm_idle`.
        let idle_before = now.saturating_sub(evm_idle.as_secs()).saturating_add(1);
        let evm = self.close_idle_evm_sessions(idle_before).await?;
        let lightning = self.close_idle_lightning_sessions(now).await?;
        Ok(evm + lightning)
    }

    /// The challenge-binding key (to compute or check ids outside the rail).
    pub fn key(&self) -> &ChallengeKey {
        &self.key
    }

    /// Everything [`Rail::verify`] checks except the replay reservation and (for `evm`) the
    /// on-chain simulation, at `now_unix`: returns the credential and the amount it pays.
    pub fn check_credential(
        &self,
        resource: &Resource,
        authorization: &str,
        now_unix: u64,
    ) -> Result<(Credential, Money), PaymentError> {
        self.check(resource, authorization, now_unix).map(|(cred, amount, _)| (cred, amount))
    }

    fn offered_methods(&self) -> String {
        let mut m = Vec::new();
        if self.backend.is_some() {
            m.push(format!("method=\"{METHOD}\" intent=\"{INTENT}\""));
        }
        if self.evm.is_some() {
            m.push(format!("method=\"{}\" intent=\"{}\"", evm_charge::METHOD, evm_charge::INTENT));
        }
        if self.evm_session.is_some() {
            m.push(format!(
                "method=\"{}\" intent=\"{}\"",
                evm_session_wire::METHOD,
                evm_session_wire::INTENT
            ));
        }
        if self.lightning_session.is_some() {
            m.push(format!(
                "method=\"{}\" intent=\"{}\"",
                lightning_session_wire::METHOD,
                lightning_session_wire::INTENT
            ));
        }
        m.join(" or ")
    }

    /// Decodes the credential in `authorization` and checks what every intent needs: a method
    /// and intent this rail offers, an id that is the HMAC of the echoed fields under our key,
    /// and our realm.
    fn decode(&self, authorization: &str) -> Result<(Credential, Offered), PaymentError> {
        let token = payment_token(authorization)
            .ok_or_else(|| credential_error(CredentialError::NotPayment))?;
        let cred = Credential::decode(token).map_err(credential_error)?;
        let ch = &cred.challenge;
        let offered = match (ch.method.as_str(), ch.intent.as_str()) {
            (METHOD, INTENT) if self.backend.is_some() => Offered::LightningCharge,
            (evm_charge::METHOD, evm_charge::INTENT) if self.evm.is_some() => Offered::EvmCharge,
            (evm_session_wire::METHOD, evm_session_wire::INTENT) if self.evm_session.is_some() => {
                Offered::EvmSession
            }
            (lightning_session_wire::METHOD, lightning_session_wire::INTENT)
                if self.lightning_session.is_some() =>
            {
                Offered::LightningSession
            }
            _ => {
                return Err(problem::method_unsupported(format!(
                    "this server accepts {}, not method={:?} intent={:?}",
                    self.offered_methods(),
                    ch.method,
                    ch.intent
                )));
            }
        };
        if !self.key.verify_id(&ch.slots(), &ch.id) || ch.realm != self.realm {
            return Err(problem::invalid_challenge(
                "the challenge was not issued by this server or was altered",
            ));
        }
        Ok((cred, offered))
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

    /// What every paid credential's challenge must be, whatever the method and intent, and
    /// whether it is presented after a 402 or up front on a session's later request: unexpired
    /// (`payment-expired`) and issued for this route and HTTP method (`invalid-challenge`).
    /// The id and realm are checked by [`Self::decode`]; the price by each intent, against its
    /// request.
    pub(crate) fn live_for(
        ch: &EchoedChallenge,
        resource: &Resource,
        now_unix: u64,
    ) -> Result<u64, PaymentError> {
        let expires = Self::unexpired(ch, now_unix)?;
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

    fn check(
        &self,
        resource: &Resource,
        authorization: &str,
        now_unix: u64,
    ) -> Result<(Credential, Money, Checked), PaymentError> {
        let (cred, offered) = self.decode(authorization)?;
        let (amount, checked) = self.check_charge(resource, &cred, offered, now_unix)?;
        Ok((cred, amount, checked))
    }

    /// The charge checks after [`Self::decode`]: unexpired, issued for this route, and the
    /// method's proof.
    fn check_charge(
        &self,
        resource: &Resource,
        cred: &Credential,
        offered: Offered,
        now_unix: u64,
    ) -> Result<(Money, Checked), PaymentError> {
        let evm = match offered {
            Offered::EvmCharge => true,
            Offered::LightningCharge => false,
            Offered::EvmSession | Offered::LightningSession => {
                return Err(problem::method_unsupported("a session credential is not a charge"));
            }
        };
        let ch = &cred.challenge;
        Self::live_for(ch, resource, now_unix)?;
        let request = decode_request(&ch.request)
            .map_err(|e| problem::invalid_challenge(format!("challenge request: {e}")))?;
        if evm {
            let (amount, auth, signature) = self.check_evm(resource, cred, &request, now_unix)?;
            return Ok((amount, Checked::Evm(auth, signature)));
        }
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
        // Whether the preimage proves payment is checked after, with the node when need be.
        let checked = Checked::Lightning { preimage, payment_hash: request.payment_hash };
        Ok((Money::msats(paid_msat), checked))
    }

    /// The `evm` charge checks after the envelope: the request is ours, covers the price, and
    /// the authorization pays exactly it, bound to this challenge, signed by its `from`.
    fn check_evm(
        &self,
        resource: &Resource,
        cred: &Credential,
        request: &serde_json::Value,
        now_unix: u64,
    ) -> Result<(Money, TransferWithAuthorization, Vec<u8>), PaymentError> {
        let Some(evm) = &self.evm else {
            return Err(problem::method_unsupported("the evm method is not enabled"));
        };
        let request = EvmChargeRequest::from_json(request)
            .map_err(|e| problem::invalid_challenge(format!("challenge request: {e}")))?;
        let cfg = &evm.config;
        if request.currency != cfg.token
            || request.recipient != cfg.recipient
            || request.chain_id != cfg.rpc.chain_id()
        {
            return Err(problem::invalid_challenge(
                "the challenge names another token, recipient or chain than this server's",
            ));
        }
        let price = resource
            .price
            .in_asset(&evm.asset)
            .ok_or_else(|| problem::invalid_challenge("this route has no price in this token"))?;
        if request.amount < U256::from(price.amount) {
            return Err(problem::insufficient(format!(
                "the challenge charges {} base units, this route costs {price}",
                request.amount
            )));
        }
        let (auth, signature) = evm_charge::authorization_of(&cred.payload)
            .map_err(|e| problem::malformed(e.to_string()))?;
        let ch = &cred.challenge;
        if !evm_charge::challenge_nonces(&ch.id, &ch.realm).contains(&auth.nonce) {
            return Err(problem::verification_failed(
                "the authorization's nonce is not bound to this challenge: expected \
                 keccak256(challenge.id ‖ challenge.realm)",
            ));
        }
        if auth.to != cfg.recipient {
            return Err(problem::verification_failed("the authorization pays another recipient"));
        }
        if auth.value != request.amount {
            return Err(problem::verification_failed(format!(
                "the authorization transfers {}, the challenge charges {}",
                auth.value, request.amount
            )));
        }
        let now = U256::from(now_unix);
        if auth.validBefore <= now {
            return Err(problem::expired("the authorization has expired"));
        }
        if auth.validAfter > now {
            return Err(problem::verification_failed("the authorization is not valid yet"));
        }
        let digest = eip3009::signing_hash(&evm.domain.separator(), &auth);
        match eip3009::recover(&digest, &signature) {
            Ok(signer) if signer == auth.from => {}
            _ => {
                return Err(problem::verification_failed(
                    "the authorization is not signed by its `from`",
                ));
            }
        }
        let amount: u128 = request
            .amount
            .try_into()
            .map_err(|_| problem::invalid_challenge("challenge amount out of range"))?;
        Ok((Money::new(evm.asset.clone(), amount), auth, signature))
    }

    /// The `evm` challenge line for `resource`, if it is priced in the configured token.
    fn evm_challenge(&self, resource: &Resource) -> Result<Option<HeaderValue>, PaymentError> {
        let Some(evm) = &self.evm else { return Ok(None) };
        let Some(price) = resource.price.in_asset(&evm.asset).filter(|p| p.amount > 0) else {
            return Ok(None);
        };
        let cfg = &evm.config;
        let request = EvmChargeRequest {
            amount: U256::from(price.amount),
            currency: cfg.token,
            recipient: cfg.recipient,
            chain_id: cfg.rpc.chain_id(),
            decimals: cfg.info.decimals,
            credential_types: vec![evm_charge::CREDENTIAL_AUTHORIZATION.to_string()],
            authorization: Some(evm_charge::TokenName {
                name: cfg.info.eip712_name.clone(),
                version: cfg.info.eip712_version.clone(),
            }),
            description: resource.description.as_deref().map(str::to_owned),
        };
        let salt = self.salt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.issue(
            resource,
            evm_charge::METHOD,
            evm_charge::INTENT,
            request.to_json(),
            Some(format!("{salt:016x}")),
        )
        .map(Some)
    }

    fn issue(
        &self,
        resource: &Resource,
        method: &str,
        intent: &str,
        request: serde_json::Value,
        salt: Option<String>,
    ) -> Result<HeaderValue, PaymentError> {
        let mut opaque = BTreeMap::from([
            (OPAQUE_ROUTE.to_string(), resource.route.to_string()),
            (OPAQUE_HTTP_METHOD.to_string(), resource.method.as_str().to_string()),
        ]);
        if let Some(salt) = salt {
            opaque.insert(OPAQUE_SALT.to_string(), salt);
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

    /// Reserves an `evm` charge's challenge id, after the chain has shown that the transfer
    /// would go through, with a hold on the payer's funds: refused when the challenge was used,
    /// or when the payer's payments in flight would take more than its balance.
    async fn reserve_evm_charge(
        &self,
        id: &str,
        auth: &TransferWithAuthorization,
        signature: &[u8],
        amount: &Money,
        challenge_expires_at: u64,
        now: u64,
    ) -> Result<(), PaymentError> {
        let Some(evm) = &self.evm else {
            return Err(PaymentError::internal("mpp_state", "evm method not enabled"));
        };
        let cfg = &evm.config;
        // A used challenge is refused without asking the chain.
        if self.store.get(NAMESPACE, id).await?.is_some() {
            return Err(problem::used_challenge());
        }
        // Read before the simulation reads the payer's balance: see `Hold`.
        let mark = self.store.settled_mark().await?;
        self.simulate(evm, auth, signature).await?;
        // Kept while the challenge or the authorization can be used: reconciliation fails a
        // pending settlement only once its authorization has expired.
        let valid_before = u64::try_from(auth.validBefore).unwrap_or(u64::MAX);
        let expires_at = challenge_expires_at.max(valid_before);
        let account = eip3009::payer_account(cfg.rpc.chain_id(), cfg.token, auth.from);
        let hold = Hold {
            account: &account,
            amount: amount.amount,
            balance: None,
            mark,
            until: Hold::until(expires_at, now),
        };
        let balance = || async {
            let balance =
                cfg.rpc.balance_of(cfg.token, auth.from).await.map_err(chain_unavailable)?;
            Ok::<_, PaymentError>(Some(u128::try_from(balance).unwrap_or(u128::MAX)))
        };
        match reserve_funded(&*self.store, NAMESPACE, id, expires_at, hold, balance).await? {
            HoldOutcome::Reserved => Ok(()),
            HoldOutcome::Duplicate => Err(problem::used_challenge()),
            HoldOutcome::Insufficient { held } => Err(problem::verification_failed(format!(
                "the payer's other payments in flight hold {held} base units of its balance; \
                 pay again once they have settled"
            ))),
        }
    }

    /// Resolves `evm` charges whose settlement outcome was unknown (`Pending`: a receipt that
    /// did not arrive in time, a node that failed while taking the transaction) from the chain:
    /// the transaction's receipt when its hash is known (success: settled; reverted: failed);
    /// otherwise the authorization's state as of the latest mined block (used, under either
    /// nonce form of the challenge: settled; still unused once the authorization has expired:
    /// failed). Anything else stays pending. Returns how many were resolved; a chain that cannot
    /// be reached stops the run (records resolved so far stay resolved). [`Rail::maintain`]
    /// runs it.
    pub async fn reconcile_evm_charges(&self) -> Result<usize, PaymentError> {
        let Some(evm) = &self.evm else { return Ok(0) };
        let cfg = &evm.config;
        let mut resolved = 0;
        for (id, record) in self.store.pending(NAMESPACE).await? {
            let Some((chain_id, token, payer)) =
                record.account.as_deref().and_then(eip3009::parse_payer_account)
            else {
                continue; // not an evm charge with a hold
            };
            if chain_id != cfg.rpc.chain_id() || token != cfg.token {
                continue;
            }
            let mined = match record.reference.as_deref().and_then(|r| r.parse::<TxHash>().ok()) {
                Some(tx) => cfg.rpc.wait_for_receipt(tx, Duration::ZERO).await,
                None => Ok(ReceiptOutcome::Unknown),
            };
            let state = match mined {
                Ok(ReceiptOutcome::Success { .. }) => ProofState::Settled,
                Ok(ReceiptOutcome::Reverted { .. }) => ProofState::Failed,
                _ => {
                    let mut used = false;
                    for nonce in evm_charge::challenge_nonces(&id, &self.realm) {
                        match cfg.rpc.mined_authorization_state(token, payer, nonce).await {
                            Ok(u) => used |= u,
                            Err(e) if e.is_unavailable() => return Err(chain_unavailable(e)),
                            Err(e) => {
                                tracing::warn!(challenge = %id, error = %e, "cannot read an authorization's state");
                            }
                        }
                    }
                    if used {
                        ProofState::Settled
                    } else if time::unix_now()? > record.expires_at {
                        ProofState::Failed
                    } else {
                        continue;
                    }
                }
            };
            self.store.update(NAMESPACE, &id, state, None).await?;
            let tx = record.reference.as_deref().unwrap_or("");
            tracing::info!(challenge = %id, state = state.as_str(), tx, "MPP evm charge reconciled");
            resolved += 1;
        }
        Ok(resolved)
    }

    /// One `eth_call` simulating the transfer from the gas key: nonce unused, balance, the
    /// token's own signature and time checks.
    async fn simulate(
        &self,
        evm: &EvmMethod,
        auth: &TransferWithAuthorization,
        signature: &[u8],
    ) -> Result<(), PaymentError> {
        let cfg = &evm.config;
        let simulated = cfg
            .rpc
            .simulate_transfer_with_authorization(cfg.token, auth, signature, cfg.signer.address())
            .await;
        match simulated {
            Ok(()) => Ok(()),
            Err(e) if e.is_unavailable() => Err(chain_unavailable(e)),
            Err(EvmError::Reverted { reason }) => {
                Err(problem::verification_failed(format!("the transfer would fail: {reason}")))
            }
            Err(e) => {
                Err(problem::verification_failed(format!("the transfer cannot be simulated: {e}")))
            }
        }
    }

    /// Sends an accepted `evm` authorization and waits for its receipt: the transaction hash.
    async fn settle_evm(
        &self,
        id: &str,
        auth: &TransferWithAuthorization,
        signature: &[u8],
    ) -> Result<String, PaymentError> {
        let Some(evm) = &self.evm else {
            return Err(PaymentError::internal("mpp_state", "evm method not enabled"));
        };
        let cfg = &evm.config;
        let sent =
            cfg.rpc.send_transfer_with_authorization(&cfg.signer, cfg.token, auth, signature).await;
        let tx = match sent {
            Ok(tx) => tx,
            Err(EvmError::Reverted { reason }) => {
                // Refused at gas estimation: nothing was broadcast, so nothing is spent either;
                // the challenge is given back (the same credential may be retried once its
                // cause, say a balance too low, is gone).
                self.store.release(NAMESPACE, id).await?;
                return Err(problem::verification_failed(format!(
                    "the transfer would revert: {reason}"
                )));
            }
            Err(e) => {
                // The node may have taken the transaction before failing to answer.
                self.store.update(NAMESPACE, id, ProofState::Pending, None).await?;
                return Err(PaymentError::unavailable(
                    "mpp_settlement_outcome_unknown",
                    format!("{e}; the payment is recorded as pending and will not be taken twice"),
                    BACKEND_RETRY_AFTER,
                ));
            }
        };
        let tx_hex = format!("{tx:#x}");
        self.store.update(NAMESPACE, id, ProofState::Pending, Some(&tx_hex)).await?;
        match cfg.rpc.wait_for_receipt(tx, cfg.receipt_timeout).await {
            Ok(ReceiptOutcome::Success { .. }) => {
                if let Err(e) =
                    self.store.update(NAMESPACE, id, ProofState::Settled, Some(&tx_hex)).await
                {
                    tracing::warn!(error = %e, "could not mark an MPP challenge settled");
                }
                Ok(tx_hex)
            }
            Ok(ReceiptOutcome::Reverted { .. }) => {
                self.store.update(NAMESPACE, id, ProofState::Failed, Some(&tx_hex)).await?;
                Err(problem::verification_failed(format!("the transfer {tx_hex} reverted")))
            }
            Ok(_) | Err(_) => Err(PaymentError::unavailable(
                "mpp_settlement_pending",
                format!(
                    "settlement sent as {tx_hex} but not yet confirmed; the payment is recorded as pending"
                ),
                BACKEND_RETRY_AFTER,
            )),
        }
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

    /// One challenge per enabled method and intent the route's price allows, in this server's
    /// order (Lightning charge, EVM charge, EVM session, Lightning session) or as the client's
    /// `Accept-Payment` asks ([`crate::accept_payment`]); only the offers made are issued (no
    /// invoice is created for an offer the client does not want).
    async fn challenge(
        &self,
        resource: &Resource,
        _refusal: Option<&Refusal<'_>>,
    ) -> Result<Option<RailChallenge>, PaymentError> {
        let mut offered: Vec<(Offered, (&str, &str))> = Vec::new();
        if self.backend.is_some() {
            offered.push((Offered::LightningCharge, (METHOD, INTENT)));
        }
        if self.evm.is_some() {
            offered.push((Offered::EvmCharge, (evm_charge::METHOD, evm_charge::INTENT)));
        }
        if self.evm_session.is_some() {
            offered
                .push((Offered::EvmSession, (evm_session_wire::METHOD, evm_session_wire::INTENT)));
        }
        if self.lightning_session.is_some() {
            offered.push((
                Offered::LightningSession,
                (lightning_session_wire::METHOD, lightning_session_wire::INTENT),
            ));
        }
        let names: Vec<(&str, &str)> = offered.iter().map(|(_, n)| *n).collect();
        let mut lines = Vec::new();
        for i in crate::accept_payment::select(resource.accept_payment.as_deref(), &names) {
            let line = match offered[i].0 {
                Offered::LightningCharge => self.lightning_challenge(resource).await?,
                Offered::EvmCharge => self.evm_challenge(resource)?,
                Offered::EvmSession => self.evm_session_challenge(resource)?,
                Offered::LightningSession => self.lightning_session_challenge(resource).await?,
            };
            lines.extend(line);
        }
        if lines.is_empty() {
            return Ok(None);
        }
        Ok(Some(RailChallenge { www_authenticate: lines, ..RailChallenge::default() }))
    }

    async fn verify(
        self: Arc<Self>,
        resource: &Resource,
        credential: &PresentedCredential,
    ) -> Result<Verdict, PaymentError> {
        let approved = self.approve(resource, &credential.value).await?;
        Ok(approved.into_verdict(self))
    }

    /// Resolves `evm` charges whose settlement outcome was unknown
    /// ([`MppRail::reconcile_evm_charges`]), watches EVM channels for forced closes, closes
    /// those and idle sessions (EVM channels after [`MppConfig::evm_idle_close`], Lightning
    /// sessions after their idle timeout), finishes interrupted closes, and settles EVM channels
    /// past their threshold (see [`evm_session`]). Each step runs even when an earlier one
    /// failed; the first error is reported.
    async fn maintain(&self) -> Result<(), PaymentError> {
        let reconciled = self.reconcile_evm_charges().await;
        // Watch before closing: a forced close seen now is closed in this same tick.
        let watched = self.watch_evm_sessions().await;
        let closed = self.close_idle_sessions(self.evm_idle_close).await.map(|_| ());
        let settled = self.settle_evm_sessions().await;
        reconciled.and(watched).and(closed).and(settled)
    }

    /// The escrow's grace period when EVM sessions are enabled: a payer who asked the chain
    /// for a forced close may withdraw once it has passed.
    async fn upkeep_deadline(&self) -> Result<Option<Duration>, PaymentError> {
        self.evm_session_upkeep_deadline().await
    }
}

impl MppRail {
    /// Everything [`Rail::verify`] does but tie the outcome to the rail.
    async fn approve(&self, resource: &Resource, value: &str) -> Result<Approved, PaymentError> {
        let now = time::unix_now()?;
        let (cred, offered) = self.decode(value)?;
        match offered {
            Offered::EvmSession => return self.verify_evm_session(resource, &cred, now).await,
            Offered::LightningSession => {
                return self.verify_lightning_session(resource, &cred, now).await;
            }
            Offered::EvmCharge | Offered::LightningCharge => {}
        }
        let (amount, checked) = self.check_charge(resource, &cred, offered, now)?;
        if let Checked::Lightning { preimage, payment_hash } = &checked
            && !self.lightning_paid(preimage, payment_hash).await?
        {
            return Err(problem::verification_failed(
                "sha256(preimage) is not the challenge's payment hash, or the node does not report it paid",
            ));
        }
        let expires_at = cred.challenge.expires.as_deref().and_then(|e| time::parse(e).ok());
        let expires_at = expires_at.unwrap_or(now).saturating_add(1);
        let id = cred.challenge.id.clone();
        let (auth, signature) = match checked {
            Checked::Evm(auth, signature) => (auth, signature),
            Checked::Lightning { payment_hash, .. } => {
                if !self.store.reserve(NAMESPACE, &id, expires_at).await? {
                    return Err(problem::used_challenge());
                }
                let reference = hex::encode(payment_hash);
                // A preimage proves that the invoice was paid, not by whom; `source` is only
                // the client's word.
                let accepted = Held::Charge(Accepted { challenge_id: id, evm: None });
                return Ok(Approved::payment(amount, None, reference, accepted));
            }
        };
        self.reserve_evm_charge(&id, &auth, &signature, &amount, expires_at, now).await?;
        // The payer is who signed the authorization, whatever `source` says.
        let (payer, reference) = (format!("{:#x}", auth.from), format!("{:#x}", auth.nonce));
        let accepted = Held::Charge(Accepted { challenge_id: id, evm: Some((auth, signature)) });
        Ok(Approved::payment(amount, Some(payer), reference, accepted))
    }
}

/// An MPP payment verified by [`MppRail`]: a charge to send or receipt, or a session's debit,
/// top-up or close.
struct Settling {
    rail: Arc<MppRail>,
    held: Held,
}

#[async_trait]
impl Settlement for Settling {
    async fn settle(
        self: Box<Self>,
        _resource: &Resource,
        amount: Money,
        reference: String,
    ) -> Result<Receipt, PaymentError> {
        let Settling { rail, held } = *self;
        let accepted = match &held {
            Held::Charge(accepted) => accepted,
            Held::EvmSession(h) => return rail.settle_evm_session(h, amount).await,
            Held::LightningSession(h) => {
                return rail.settle_lightning_session(h, amount).await;
            }
        };
        let id = accepted.challenge_id.clone();
        if let Some((auth, signature)) = &accepted.evm {
            let tx = rail.settle_evm(&id, auth, signature).await?;
            let receipt = PaymentReceipt::success(
                evm_charge::METHOD,
                time::format(time::unix_now()?),
                tx.clone(),
            )
            .with("challengeId", id);
            let headers = vec![(PAYMENT_RECEIPT, to_header(receipt.encode())?)];
            return Ok(Receipt::new(amount, tx, headers));
        }
        // The preimage is final; recording the settlement is bookkeeping, and a store hiccup
        // must not withhold the receipt of a payment that has happened.
        if let Err(e) =
            rail.store.update(NAMESPACE, &id, ProofState::Settled, Some(&reference)).await
        {
            tracing::warn!(error = %e, "could not mark an MPP challenge settled");
        }
        let receipt =
            PaymentReceipt::success(METHOD, time::format(time::unix_now()?), reference.clone())
                .with("challengeId", id);
        let headers = vec![(PAYMENT_RECEIPT, to_header(receipt.encode())?)];
        Ok(Receipt::new(amount, reference, headers))
    }

    async fn release(self: Box<Self>, _resource: &Resource) {
        let Settling { rail, held } = *self;
        match &held {
            Held::Charge(a) => {
                if let Err(e) = rail.store.release(NAMESPACE, &a.challenge_id).await {
                    tracing::warn!(error = %e, "could not release an MPP reservation");
                }
            }
            Held::EvmSession(h) => rail.release_evm_session(h).await,
            Held::LightningSession(h) => rail.release_lightning_session(h).await,
        }
    }
}

impl MppRail {
    /// The `lightning` challenge line for `resource`, if it is priced in whole satoshis.
    async fn lightning_challenge(
        &self,
        resource: &Resource,
    ) -> Result<Option<HeaderValue>, PaymentError> {
        let Some(backend) = &self.backend else { return Ok(None) };
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
            Some(d) => farebox_lightning::bolt11::truncate_utf8(d, 639).to_string(),
            None => format!(
                "MPP {} {}",
                farebox_lightning::bolt11::truncate_utf8(&self.realm, 30),
                farebox_lightning::bolt11::truncate_utf8(&resource.route, 600)
            ),
        };
        let request = InvoiceRequest { amount_msat, memo, expiry: self.ttl };
        let invoice = create_checked_invoice(&**backend, request, &self.invoice_network)
            .await
            .map_err(|e| {
                PaymentError::unavailable(
                    "lightning_unavailable",
                    format!("cannot create an invoice: {e}"),
                    BACKEND_RETRY_AFTER,
                )
            })?;
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
        self.issue(resource, METHOD, INTENT, request.to_json(), None).map(Some)
    }
}
