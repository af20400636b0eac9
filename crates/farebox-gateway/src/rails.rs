//! The `[rails.*]` sections and the one place they become rails.
//!
//! Everything rail-specific in the gateway is in this file: the sections' types, their checks
//! ([`check`]), which assets each rail charges ([`charges`]), and [`build`], the narrow function
//! that turns the sections into `Arc<dyn Rail>`s with the constructors of `farebox-l402`,
//! `farebox-x402` and `farebox-mpp`. The rest of the gateway only sees rail names and
//! `Arc<dyn Rail>`s. When rails become plug-ins that parse their own sections, this file is what
//! they replace.
//!
//! Secrets (root keys, HMAC keys, EVM keys) come from files or the environment. With the
//! embedded dev Lightning node a rail's key may be left out: it is then random for the life of
//! the process (tokens and challenges do not survive a restart, nor does the dev node itself).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use farebox_core::{Asset, Money, Rail};
use farebox_evm::{Address, EvmRpc, PrivateKeySigner};
use farebox_lightning::LightningBackend;
use serde::Deserialize;

use crate::config::{
    Config, Issues, LightningBackendKind, SecretSource, address_problem, asset_is,
};

/// The rails the gateway can configure.
pub const KNOWN: &[&str] = &["l402", "x402", "mpp"];

/// `[rails]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RailsSection {
    pub l402: Option<L402Section>,
    pub x402: Option<X402Section>,
    pub mpp: Option<MppSection>,
}

impl RailsSection {
    /// The configured rails' names, in challenge order.
    pub fn names(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.l402.is_some() {
            out.push("l402");
        }
        if self.x402.is_some() {
            out.push("x402");
        }
        if self.mpp.is_some() {
            out.push("mpp");
        }
        out
    }
}

/// `[rails.l402]`: L402 over the `[lightning]` backend.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct L402Section {
    /// The service name written into tokens' caveats.
    #[serde(default = "default_service")]
    pub service: String,
    /// The master secret root keys derive from (hex, at least 32 bytes).
    pub root_key: Option<SecretSource>,
    #[serde(default = "default_token_lifetime")]
    pub token_lifetime_secs: u64,
    #[serde(default = "default_invoice_expiry")]
    pub invoice_expiry_secs: u64,
    #[serde(default)]
    pub capabilities: Vec<String>,
}

fn default_service() -> String {
    "api".into()
}
fn default_token_lifetime() -> u64 {
    3600
}
fn default_invoice_expiry() -> u64 {
    600
}

/// `[rails.x402]`: x402 `exact` payments in an `[assets.<name>]` token.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct X402Section {
    pub asset: String,
    /// Who is paid.
    pub pay_to: String,
    pub facilitator: FacilitatorSection,
    #[serde(default = "default_x402_timeout")]
    pub max_timeout_secs: u64,
    /// Offer protocol version 1 (`X-PAYMENT`) besides version 2.
    #[serde(default = "yes")]
    pub offer_v1: bool,
}

fn default_x402_timeout() -> u64 {
    60
}
fn yes() -> bool {
    true
}

/// Who verifies and settles x402 payments: a facilitator over HTTP, or the gateway itself with
/// a gas key on the asset's chain.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FacilitatorSection {
    pub url: Option<String>,
    pub gas_key: Option<SecretSource>,
}

/// `[rails.mpp]`: the `Payment` scheme with its methods and intents.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MppSection {
    pub realm: String,
    /// The challenge-binding HMAC key (hex, at least 32 bytes).
    pub secret: Option<SecretSource>,
    #[serde(default = "default_ttl")]
    pub challenge_ttl_secs: u64,
    /// Offer the `lightning` charge over the `[lightning]` backend.
    #[serde(default)]
    pub lightning: bool,
    pub lightning_session: Option<LightningSessionSection>,
    pub evm_charge: Option<EvmChargeSection>,
    pub evm_session: Option<EvmSessionSection>,
    /// How long an EVM session channel may sit unused before upkeep closes it.
    pub evm_idle_close_secs: Option<u64>,
}

fn default_ttl() -> u64 {
    300
}

/// `[rails.mpp.lightning_session]`: prepaid Lightning balances.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LightningSessionSection {
    pub deposit_sat: Option<u64>,
    #[serde(default = "default_deposit_units")]
    pub deposit_units: u64,
    #[serde(default = "default_idle")]
    pub idle_timeout_secs: u64,
    #[serde(default = "default_refund_fee")]
    pub max_refund_fee_msat: u64,
}

fn default_deposit_units() -> u64 {
    20
}
fn default_idle() -> u64 {
    300
}
fn default_refund_fee() -> u64 {
    10_000
}

/// `[rails.mpp.evm_charge]`: EIP-3009 charges, settled by the gateway's gas key.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvmChargeSection {
    pub asset: String,
    pub recipient: String,
    pub gas_key: SecretSource,
    #[serde(default = "default_receipt_timeout")]
    pub receipt_timeout_secs: u64,
}

fn default_receipt_timeout() -> u64 {
    20
}

/// `[rails.mpp.evm_session]`: payment channels in a `SessionEscrow`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvmSessionSection {
    pub asset: String,
    pub escrow: String,
    /// The payee's key: channels pay its address, and it signs the closing transactions.
    pub payee_key: SecretSource,
    /// The deposit challenges suggest (an amount of the asset, e.g. `"1 usdc"`).
    pub suggested_deposit: Option<String>,
}

/// Whether the rail `name` as configured can charge `asset`.
pub fn charges(config: &Config, name: &str, asset: &Asset) -> bool {
    let lightning = config.lightning.is_some();
    match name {
        "l402" => config.rails.l402.is_some() && lightning && *asset == Asset::Bitcoin,
        "x402" => config.rails.x402.as_ref().is_some_and(|x| asset_is(config, &x.asset, asset)),
        "mpp" => config.rails.mpp.as_ref().is_some_and(|m| {
            (m.lightning && lightning && *asset == Asset::Bitcoin)
                || m.evm_charge.as_ref().is_some_and(|e| asset_is(config, &e.asset, asset))
                || m.evm_session.as_ref().is_some_and(|e| asset_is(config, &e.asset, asset))
        }),
        _ => false,
    }
}

fn dev_lightning(config: &Config) -> bool {
    config.lightning.as_ref().is_some_and(|l| l.backend == LightningBackendKind::Dev)
}

/// Checks a secret that is required unless the dev Lightning node is configured.
fn check_key(config: &Config, key: &str, source: Option<&SecretSource>, issues: &mut Issues) {
    match source {
        Some(s) => {
            if let Err(e) = s.read_hex(&config.base_dir(), 32) {
                issues.push(key, e);
            }
        }
        None if dev_lightning(config) => {}
        None => issues
            .push(key, "required (from key_file or key_env) unless [lightning] backend = \"dev\""),
    }
}

fn check_evm_key(config: &Config, key: &str, source: &SecretSource, issues: &mut Issues) {
    match source.read(&config.base_dir()) {
        Ok(k) if PrivateKeySigner::from_str(k.expose()).is_ok() => {}
        Ok(_) => issues.push(key, "not an EVM private key (32 bytes of hex)"),
        Err(e) => issues.push(key, e),
    }
}

/// Checks that `[assets.<name>]` exists and, for EIP-3009 rails, has its EIP-712 domain.
fn check_asset(config: &Config, key: &str, name: &str, eip3009: bool, issues: &mut Issues) {
    match config.assets.get(name) {
        None => issues.push(key, format!("no [assets.{name}] is configured")),
        Some(a) if eip3009 && (a.eip712_name.is_none() || a.eip712_version.is_none()) => issues
            .push(
                key,
                format!(
                    "[assets.{name}] needs eip712_name and eip712_version for EIP-3009 payments"
                ),
            ),
        Some(_) => {}
    }
}

/// Checks the `[rails.*]` sections as far as can be done without the network, with the rails'
/// own constructors where they check something.
pub(crate) fn check(config: &Config, issues: &mut Issues) {
    let scratch_node = || -> Arc<dyn LightningBackend> {
        Arc::new(farebox_lightning::DevNode::random(&farebox_lightning::DevNetwork::new(), 0))
    };
    if let Some(l) = &config.rails.l402 {
        if config.lightning.is_none() {
            issues.push("rails.l402", "L402 needs a [lightning] backend");
        }
        check_key(config, "rails.l402.root_key", l.root_key.as_ref(), issues);
        match farebox_l402::DerivedRootKeys::new(&[0; 32]) {
            Ok(keys) => {
                if let Err(e) = farebox_l402::L402Rail::new(l402_config(l, keys), scratch_node()) {
                    issues.push("rails.l402", e.to_string());
                }
            }
            Err(e) => issues.push("rails.l402", e.to_string()),
        }
    }
    if let Some(x) = &config.rails.x402 {
        check_asset(config, "rails.x402.asset", &x.asset, true, issues);
        if let Some(problem) = address_problem(&x.pay_to, true) {
            issues.push("rails.x402.pay_to", problem);
        }
        match (&x.facilitator.url, &x.facilitator.gas_key) {
            (Some(url), None) => {
                if reqwest::Url::parse(url)
                    .map_or(true, |u| !matches!(u.scheme(), "http" | "https"))
                {
                    issues.push("rails.x402.facilitator.url", "must be an http:// or https:// URL");
                }
            }
            (None, Some(key)) => {
                check_evm_key(config, "rails.x402.facilitator.gas_key", key, issues)
            }
            _ => issues.push(
                "rails.x402.facilitator",
                "give url (a facilitator) or gas_key (settle here), exactly one",
            ),
        }
        if x.max_timeout_secs == 0 {
            issues.push("rails.x402.max_timeout_secs", "must be at least 1");
        }
    }
    if let Some(m) = &config.rails.mpp {
        check_key(config, "rails.mpp.secret", m.secret.as_ref(), issues);
        if m.lightning && config.lightning.is_none() {
            issues.push("rails.mpp.lightning", "needs a [lightning] backend");
        }
        if m.lightning_session.is_some() && !m.lightning {
            issues.push("rails.mpp.lightning_session", "Lightning sessions need lightning = true");
        }
        if !m.lightning && m.evm_charge.is_none() && m.evm_session.is_none() {
            issues.push(
                "rails.mpp",
                "offer at least one method: lightning, evm_charge or evm_session",
            );
        }
        if let Some(e) = &m.evm_charge {
            check_asset(config, "rails.mpp.evm_charge.asset", &e.asset, true, issues);
            if let Some(problem) = address_problem(&e.recipient, true) {
                issues.push("rails.mpp.evm_charge.recipient", problem);
            }
            check_evm_key(config, "rails.mpp.evm_charge.gas_key", &e.gas_key, issues);
        }
        if let Some(e) = &m.evm_session {
            check_asset(config, "rails.mpp.evm_session.asset", &e.asset, false, issues);
            if let Some(problem) = address_problem(&e.escrow, true) {
                issues.push("rails.mpp.evm_session.escrow", problem);
            }
            check_evm_key(config, "rails.mpp.evm_session.payee_key", &e.payee_key, issues);
            if let Some(d) = &e.suggested_deposit
                && let Err(why) = suggested_deposit(config, &e.asset, d)
            {
                issues.push("rails.mpp.evm_session.suggested_deposit", why);
            }
        }
        let store: Arc<dyn farebox_core::ReplayStore> = Arc::new(farebox_store::MemoryStore::new());
        if let Err(e) = farebox_mpp::MppRail::new(mpp_config(m, vec![0; 32]), scratch_node(), store)
        {
            issues.push("rails.mpp", e.to_string());
        }
    }
}

fn suggested_deposit(config: &Config, asset: &str, text: &str) -> Result<u128, String> {
    let money = config.parse_amount(text)?;
    if !asset_is(config, asset, &money.asset) {
        return Err(format!("{text:?} is not an amount of [assets.{asset}]"));
    }
    Ok(money.amount)
}

fn l402_config(s: &L402Section, keys: farebox_l402::DerivedRootKeys) -> farebox_l402::L402Config {
    let mut c = farebox_l402::L402Config::new(s.service.clone(), Arc::new(keys));
    c.token_lifetime = Duration::from_secs(s.token_lifetime_secs);
    c.invoice_expiry = Duration::from_secs(s.invoice_expiry_secs);
    c.capabilities = s.capabilities.clone();
    c
}

fn mpp_config(s: &MppSection, secret: Vec<u8>) -> farebox_mpp::MppConfig {
    let mut c = farebox_mpp::MppConfig::new(s.realm.clone(), secret);
    c.challenge_ttl = Duration::from_secs(s.challenge_ttl_secs);
    if let Some(idle) = s.evm_idle_close_secs {
        c.evm_idle_close = Duration::from_secs(idle);
    }
    c
}

/// What [`build`] needs from the rest of the gateway.
pub(crate) struct RailContext<'a> {
    pub lightning: Option<Arc<dyn LightningBackend>>,
    pub store: Arc<dyn farebox_store::Store>,
    /// Connected chains by `[chains.<name>]`.
    pub chains: &'a HashMap<String, EvmRpc>,
    pub public_url: String,
    /// Random keys standing in for omitted secrets (dev node only), kept across reloads.
    pub ephemeral: &'a mut HashMap<&'static str, Vec<u8>>,
}

/// A rail that could not be built: the key path and why.
pub(crate) type BuildError = (String, String);

/// A rail and its name.
pub(crate) type NamedRail = (&'static str, Arc<dyn Rail>);

/// Builds the configured rails, in challenge order, with their names.
/// What [`build`] makes: every rail, and the L402 rail again, typed, for the admin API's
/// revocations.
pub(crate) struct Rails {
    pub all: Vec<NamedRail>,
    pub l402: Option<Arc<farebox_l402::L402Rail>>,
}

pub(crate) fn build(config: &Config, ctx: RailContext<'_>) -> Result<Rails, BuildError> {
    let base = config.base_dir();
    let RailContext { lightning, store, chains, public_url, ephemeral } = ctx;
    let fail = |key: &str, e: String| (key.to_string(), e);
    let mut key_of = |name: &'static str, key: &str, source: Option<&SecretSource>| match source {
        Some(s) => s.read_hex(&base, 32).map_err(|e| fail(key, e)),
        None => Ok(ephemeral.entry(name).or_insert_with(random_key).clone()),
    };
    let chain_of = |key: &str, asset: &str| -> Result<(EvmRpc, farebox_core::Token), BuildError> {
        let section =
            config.assets.get(asset).ok_or_else(|| fail(key, format!("no [assets.{asset}]")))?;
        let rpc = chains
            .get(&section.chain)
            .cloned()
            .ok_or_else(|| fail(key, format!("[chains.{}] is not connected", section.chain)))?;
        let token = config.token(asset).ok_or_else(|| fail(key, format!("no [assets.{asset}]")))?;
        Ok((rpc, token))
    };
    let evm_key = |key: &str, s: &SecretSource| -> Result<PrivateKeySigner, BuildError> {
        let text = s.read(&base).map_err(|e| fail(key, e))?;
        PrivateKeySigner::from_str(text.expose())
            .map_err(|_| fail(key, "not an EVM private key".into()))
    };
    let address = |key: &str, text: &str| -> Result<Address, BuildError> {
        Address::from_str(text).map_err(|_| fail(key, format!("{text:?} is not an address")))
    };
    let lightning_of = |key: &str| {
        lightning.clone().ok_or_else(|| fail(key, "needs a [lightning] backend".into()))
    };

    let mut rails: Vec<NamedRail> = Vec::new();
    let mut l402 = None;
    if let Some(l) = &config.rails.l402 {
        let master = key_of("l402", "rails.l402.root_key", l.root_key.as_ref())?;
        let keys = farebox_l402::DerivedRootKeys::new(&master)
            .map_err(|e| fail("rails.l402.root_key", e.to_string()))?;
        // Revocations and request-limited tokens are shared by every instance through the store.
        let tokens: Arc<dyn farebox_core::SessionStore> = store.clone();
        let config = l402_config(l, keys).with_store(tokens);
        let rail = Arc::new(
            farebox_l402::L402Rail::new(config, lightning_of("rails.l402")?)
                .map_err(|e| fail("rails.l402", e.to_string()))?,
        );
        l402 = Some(rail.clone());
        rails.push(("l402", rail));
    }
    if let Some(x) = &config.rails.x402 {
        let (rpc, token) = chain_of("rails.x402.asset", &x.asset)?;
        let facilitator: Arc<dyn farebox_x402::facilitator::Facilitator> =
            match (&x.facilitator.url, &x.facilitator.gas_key) {
                (Some(url), _) => {
                    let url = reqwest::Url::parse(url)
                        .map_err(|e| fail("rails.x402.facilitator.url", e.to_string()))?;
                    Arc::new(
                        farebox_x402::facilitator::http_client::RemoteFacilitator::new(url)
                            .map_err(|e| fail("rails.x402.facilitator.url", e.to_string()))?,
                    )
                }
                (None, Some(gas)) => {
                    let signer = evm_key("rails.x402.facilitator.gas_key", gas)?;
                    let access =
                        farebox_x402::facilitator::local::ChainAccess { rpc: rpc.clone(), signer };
                    let replay: Arc<dyn farebox_core::ReplayStore> = store.clone();
                    Arc::new(farebox_x402::facilitator::local::LocalFacilitator::new(
                        vec![access],
                        replay,
                    ))
                }
                (None, None) => {
                    return Err(fail("rails.x402.facilitator", "give url or gas_key".into()));
                }
            };
        let x402 = farebox_x402::X402Config::builder()
            .network(token.network.clone())
            .asset(token.address.clone())
            .described_as(token_info(&config.assets[&x.asset]))
            .pay_to(x.pay_to.clone())
            .max_timeout_seconds(x.max_timeout_secs)
            .public_url(public_url.clone())
            .offer_v1(x.offer_v1)
            .build()
            .map_err(|e| fail("rails.x402", e.to_string()))?;
        let replay: Arc<dyn farebox_core::ReplayStore> = store.clone();
        // The rail reads the chain itself: payers' balances, so that a payer may have several
        // payments in flight when it can pay for them all, and authorization states when
        // reconciling (which a facilitator over HTTP cannot do for it).
        let rail = farebox_x402::X402Rail::new(x402, facilitator, replay).with_node(rpc);
        rails.push(("x402", Arc::new(rail)));
    }
    if let Some(m) = &config.rails.mpp {
        let secret = key_of("mpp", "rails.mpp.secret", m.secret.as_ref())?;
        let replay: Arc<dyn farebox_core::ReplayStore> = store.clone();
        let sessions: Arc<dyn farebox_core::SessionStore> = store.clone();
        let mut builder = farebox_mpp::MppRail::builder(mpp_config(m, secret), replay);
        if m.lightning {
            builder = builder.lightning(lightning_of("rails.mpp.lightning")?);
        }
        if let Some(s) = &m.lightning_session {
            let policy = farebox_mpp::LightningSessionConfig {
                deposit_sat: s.deposit_sat,
                deposit_units: s.deposit_units,
                idle_timeout: Duration::from_secs(s.idle_timeout_secs),
                max_refund_fee_msat: s.max_refund_fee_msat,
                ..Default::default()
            };
            builder = builder.lightning_session(policy, sessions.clone());
        }
        if let Some(e) = &m.evm_charge {
            let key = "rails.mpp.evm_charge";
            let (rpc, token) = chain_of(key, &e.asset)?;
            let charge = farebox_mpp::EvmChargeConfig::builder(
                rpc,
                evm_key("rails.mpp.evm_charge.gas_key", &e.gas_key)?,
            )
            .token(address("rails.mpp.evm_charge.asset", &token.address)?)
            .described_as(token_info(&config.assets[&e.asset]))
            .recipient(address("rails.mpp.evm_charge.recipient", &e.recipient)?)
            .receipt_timeout(Duration::from_secs(e.receipt_timeout_secs))
            .build()
            .map_err(|e| fail("rails.mpp.evm_charge", e.to_string()))?;
            builder = builder.evm_charge(charge);
        }
        if let Some(e) = &m.evm_session {
            let key = "rails.mpp.evm_session";
            let (rpc, token) = chain_of(key, &e.asset)?;
            let mut session = farebox_mpp::EvmSessionConfig::builder(
                rpc,
                evm_key("rails.mpp.evm_session.payee_key", &e.payee_key)?,
            )
            .escrow(address("rails.mpp.evm_session.escrow", &e.escrow)?)
            .token(address("rails.mpp.evm_session.asset", &token.address)?)
            .described_as(token_info(&config.assets[&e.asset]));
            if let Some(d) = &e.suggested_deposit {
                session = session.suggested_deposit(
                    suggested_deposit(config, &e.asset, d)
                        .map_err(|why| fail("rails.mpp.evm_session.suggested_deposit", why))?,
                );
            }
            let session = session.build().map_err(|e| fail(key, e.to_string()))?;
            builder = builder.evm_session(session, sessions);
        }
        let rail = builder.build().map_err(|e| fail("rails.mpp", e.to_string()))?;
        rails.push(("mpp", Arc::new(rail)));
    }
    Ok(Rails { all: rails, l402 })
}

fn random_key() -> Vec<u8> {
    use rand::RngCore;
    let mut key = vec![0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    key
}

/// The amount as the `asset` header spells it: `msat`, or CAIP-19 for tokens
/// (`eip155:84532/erc20:0x…`).
pub fn asset_label(money: &Money) -> String {
    match &money.asset {
        Asset::Bitcoin => "msat".into(),
        Asset::Token(t) => format!("{}/erc20:{}", t.network, t.address.to_ascii_lowercase()),
        _ => "unknown".into(),
    }
}

/// How the EVM rails describe an `[assets.<name>]` token.
fn token_info(asset: &crate::config::AssetSection) -> farebox_evm::token::TokenInfo {
    farebox_evm::token::TokenInfo {
        symbol: asset.symbol.clone(),
        decimals: asset.decimals,
        eip712_name: asset.eip712_name.clone().unwrap_or_default(),
        eip712_version: asset.eip712_version.clone().unwrap_or_default(),
    }
}
