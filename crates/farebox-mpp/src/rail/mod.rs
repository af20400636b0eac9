//! [`MppRail`]: MPP's `Payment` scheme as a farebox [`Rail`]. The rail offers the method × intent
//! pairs its builder was given, each an `Intent` (`rail/intent.rs`) in its method's folder:
//!
//! | pair | server side | given by |
//! |---|---|---|
//! | `lightning` / `charge` | [`crate::lightning::charge::server`] | [`MppRailBuilder::lightning`] |
//! | `evm` / `charge` | [`crate::evm::charge::server`] | [`MppRailBuilder::evm_charge`] |
//! | `evm` / `session` | [`crate::evm::session::server`] | [`MppRailBuilder::evm_session`] |
//! | `lightning` / `session` | [`crate::lightning::session::server`] | [`MppRailBuilder::lightning_session`] |
//!
//! What is the same for every pair is here and in `rail/envelope.rs`, once:
//!
//! **Challenge.** One challenge per pair whose intent can charge the route's price, in the order
//! above or as the client's `Accept-Payment` asks ([`crate::accept_payment`]); no invoice is
//! created for an offer the client does not want. Each challenge's `expires` is now +
//! `challenge_ttl`, its `opaque` binds the route pattern and HTTP method (`{"route": "/v1/*",
//! "httpMethod": "GET"}`), and its id is the HMAC of all of that, so the server keeps no state
//! per challenge.
//!
//! **Verify**, cheapest check first: decode the credential (`malformed-credential`); its method
//! and intent are a pair this rail offers (`method-unsupported`, 400); the id is the HMAC of the
//! echoed fields under our key and the realm is ours (`invalid-challenge`). Then the pair's
//! intent checks the rest and hands back a verdict whose settlement only that intent can run.
//! Charges and EVM session vouchers start with `envelope::live_for` (unexpired:
//! `payment-expired`; issued for this route and method: `invalid-challenge`); a Lightning
//! session's proof is its deposit preimage, not bound to a route (see its file).
//!
//! **Upkeep** ([`Rail::maintain`]) runs every intent's: `evm` charges whose settlement outcome
//! was unknown are resolved from the chain, EVM channels are watched for forced closes, idle
//! sessions are closed and refunded, channels past their threshold settled.

pub(crate) mod envelope;
pub(crate) mod intent;
mod locks;

pub use crate::evm::charge::server::{
    DEFAULT_RECEIPT_TIMEOUT, EvmChargeConfig, EvmChargeConfigBuilder,
};
/// The server side of EVM sessions (also at [`crate::evm::session::server`]).
pub use crate::evm::session::server as evm_session;
pub use crate::evm::session::server::{
    EvmSessionConfig, EvmSessionConfigBuilder, MIN_GRACE_PERIOD, NAMESPACE as EVM_SESSION_NAMESPACE,
};
pub use crate::lightning::session::server::{
    LightningSessionConfig, NAMESPACE as LIGHTNING_SESSION_NAMESPACE,
};

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use farebox_core::{Asset, SessionStore, Token};
use farebox_core::{
    Challenge as RailChallenge, Money, PaymentError, PresentedCredential, Rail, Refusal,
    ReplayStore, Resource, Verdict,
};
use farebox_evm::Address;
use farebox_evm::token::TokenInfo;
use farebox_lightning::LightningBackend;

use crate::challenge::{ChallengeKey, SecretTooShort};
use crate::credential::{Credential, CredentialError, payment_token};
use crate::evm::charge::server::EvmCharge;
use crate::evm::session::server::EvmSession;
use crate::lightning::charge::server::LightningCharge;
use crate::lightning::node::LightningNode;
use crate::lightning::session::server::LightningSession;
use crate::problem;
use crate::time;
use envelope::Envelope;
use intent::Intent;

/// The replay-store namespace of charges.
pub const NAMESPACE: &str = "mpp";
/// How long an unused EVM channel stays open by default: 30 days.
pub const DEFAULT_EVM_IDLE_CLOSE: Duration = Duration::from_secs(30 * 86_400);
/// Default challenge lifetime (both SDKs: 5 minutes).
pub const DEFAULT_CHALLENGE_TTL: Duration = Duration::from_secs(300);
/// How long a client should wait when a backend is down.
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

/// The MPP rail: the method × intent pairs it was built with, behind one envelope.
pub struct MppRail {
    env: Arc<Envelope>,
    /// In offer order: Lightning charge, EVM charge, EVM session, Lightning session.
    intents: Vec<Arc<dyn Intent>>,
}

impl std::fmt::Debug for MppRail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let offered: Vec<_> = self.intents.iter().map(|i| i.names()).collect();
        f.debug_struct("MppRail")
            .field("realm", &self.env.realm)
            .field("ttl", &self.env.ttl)
            .field("offered", &offered)
            .finish_non_exhaustive()
    }
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
        let MppRailBuilder { config, store, backend, evm_charge, evm_session, lightning_session } =
            b;
        if backend.is_none() && evm_charge.is_none() && evm_session.is_none() {
            return Err(ConfigError::NoMethod);
        }
        if let Some((config, _)) = &lightning_session {
            if let Some((field, problem)) = config.problem() {
                return Err(ConfigError::field("lightning session", field, problem));
            }
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
        let evm_idle_close = config.evm_idle_close;
        let env = Arc::new(Envelope::new(config.realm, key, config.challenge_ttl, store));
        let node = backend.map(|b| Arc::new(LightningNode::new(b)));
        let mut intents: Vec<Arc<dyn Intent>> = Vec::new();
        if let Some(node) = &node {
            intents.push(Arc::new(LightningCharge { env: env.clone(), node: node.clone() }));
        }
        if let Some(config) = evm_charge {
            intents.push(Arc::new(EvmCharge::new(env.clone(), config)));
        }
        if let Some((config, sessions)) = evm_session {
            intents.push(Arc::new(EvmSession::new(env.clone(), evm_idle_close, config, sessions)));
        }
        if let (Some((config, sessions)), Some(node)) = (lightning_session, node) {
            intents.push(Arc::new(LightningSession { env: env.clone(), node, config, sessions }));
        }
        Ok(MppRail { env, intents })
    }

    /// Closes sessions nobody has used for a while, capturing what was spent and refunding
    /// the rest: EVM channels idle for `evm_idle` (the drafts suggest closing channels idle
    /// for 30 days), Lightning sessions idle past their `idle_timeout`. Also finishes closes a
    /// crash or an unreachable chain left half done. Call it periodically (e.g. every minute);
    /// returns how many sessions were closed.
    /// Each intent's sessions are closed even when another's could not be; the first error is
    /// reported.
    pub async fn close_idle_sessions(&self, evm_idle: Duration) -> Result<usize, PaymentError> {
        let (mut closed, mut failed) = (0, None);
        for intent in &self.intents {
            match intent.close_idle(evm_idle).await {
                Ok(n) => closed += n,
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        failed.map_or(Ok(closed), Err)
    }

    /// The challenge-binding key (to compute or check ids outside the rail).
    pub fn key(&self) -> &ChallengeKey {
        &self.env.key
    }

    /// Everything [`Rail::verify`] checks of a charge except the replay reservation and (for
    /// `evm`) the on-chain simulation, at `now_unix`: returns the credential and the amount it
    /// pays.
    pub fn check_credential(
        &self,
        resource: &Resource,
        authorization: &str,
        now_unix: u64,
    ) -> Result<(Credential, Money), PaymentError> {
        let (cred, intent) = self.decode(authorization)?;
        let amount = intent.check(resource, &cred, now_unix)?;
        Ok((cred, amount))
    }

    /// Decodes the credential in `authorization` and checks what every intent needs: a method
    /// and intent this rail offers, an id that is the HMAC of the echoed fields under our key,
    /// and our realm. Returns the credential and the intent it is for.
    fn decode(&self, authorization: &str) -> Result<(Credential, &Arc<dyn Intent>), PaymentError> {
        let token = payment_token(authorization)
            .ok_or_else(|| credential_error(CredentialError::NotPayment))?;
        let cred = Credential::decode(token).map_err(credential_error)?;
        let ch = &cred.challenge;
        let named = (ch.method.as_str(), ch.intent.as_str());
        let Some(intent) = self.intents.iter().find(|i| i.names() == named) else {
            let offered: Vec<String> = self
                .intents
                .iter()
                .map(|i| format!("method=\"{}\" intent=\"{}\"", i.names().0, i.names().1))
                .collect();
            return Err(problem::method_unsupported(format!(
                "this server accepts {}, not method={:?} intent={:?}",
                offered.join(" or "),
                ch.method,
                ch.intent
            )));
        };
        if !self.env.key.verify_id(&ch.slots(), &ch.id) || ch.realm != self.env.realm {
            return Err(problem::invalid_challenge(
                "the challenge was not issued by this server or was altered",
            ));
        }
        Ok((cred, intent))
    }
}

fn credential_error(e: CredentialError) -> PaymentError {
    problem::malformed(format!("Payment credential: {e}"))
}

#[async_trait]
impl Rail for MppRail {
    fn name(&self) -> &'static str {
        "mpp"
    }

    fn auth_schemes(&self) -> &'static [&'static str] {
        &["Payment"]
    }

    /// One challenge per offered pair the route's price allows, in this server's order or as
    /// the client's `Accept-Payment` asks ([`crate::accept_payment`]); only the offers made are
    /// issued (no invoice is created for an offer the client does not want).
    async fn challenge(
        &self,
        resource: &Resource,
        _refusal: Option<&Refusal<'_>>,
    ) -> Result<Option<RailChallenge>, PaymentError> {
        let names: Vec<(&str, &str)> = self.intents.iter().map(|i| i.names()).collect();
        let mut lines = Vec::new();
        for i in crate::accept_payment::select(resource.accept_payment.as_deref(), &names) {
            lines.extend(self.intents[i].challenge(resource).await?);
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
        let now = time::unix_now()?;
        let (cred, intent) = self.decode(&credential.value)?;
        intent.clone().approve(resource, &cred, now).await
    }

    /// Every intent's upkeep (see the module docs). Each runs even when an earlier one failed;
    /// the first error is reported.
    async fn maintain(&self) -> Result<(), PaymentError> {
        let mut outcome = Ok(());
        for intent in &self.intents {
            outcome = outcome.and(intent.maintain().await);
        }
        outcome
    }

    /// The shortest deadline an intent states (the escrow's grace period with EVM sessions: a
    /// payer who asked the chain for a forced close may withdraw once it has passed).
    async fn upkeep_deadline(&self) -> Result<Option<Duration>, PaymentError> {
        let mut deadline: Option<Duration> = None;
        for intent in &self.intents {
            if let Some(d) = intent.upkeep_deadline().await? {
                deadline = Some(deadline.map_or(d, |known| known.min(d)));
            }
        }
        Ok(deadline)
    }
}
