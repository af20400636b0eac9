//! The wallet file: what `farebox pay`, `quote` and `ledger` pay with, within which caps.
//!
//! `farebox wallet init` writes an annotated one ([`TEMPLATE`]) at [`default_path`]
//! (`$FAREBOX_WALLET`, else `$XDG_CONFIG_HOME/farebox/wallet.toml`, else
//! `~/.config/farebox/wallet.toml`), readable by its owner only, and never over an existing
//! file. It names the Lightning wallet (`[lightning]`, by `kind`), the EVM key and chains
//! (`[evm]`), the tokens amounts may be written in (`[assets.<name>]`), the caps per asset
//! (`[budget.<sat|asset name>]`) and the choice policy (`[policy]`). The spends and the ledger
//! live in `wallet.db` next to it (`[store] path` to move it).
//!
//! Secrets (an NWC URI, a macaroon, a rune, an LNbits key, the EVM key, an RPC URL with an API
//! key) are never written in the file and never taken from the command line: each comes from
//! a `*_file` (which, like the wallet file, must not be readable by group or others, as ssh
//! requires of keys) or a `*_env` variable. Unknown keys are errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use farebox_client::{Caps, DAY, HOUR, Policy, RailSettings, Scope, Wallet, WalletPlugin};
use farebox_core::{Asset, Money, Token};
use farebox_evm::{Address, PrivateKeySigner};
use farebox_lightning::LightningBackend;
use serde::Deserialize;

/// Largest wallet or secret file read.
const MAX_FILE: u64 = 64 * 1024;

/// What can be wrong with a wallet file or what it points to.
#[derive(Debug, thiserror::Error)]
pub enum WalletFileError {
    #[error("no wallet file at {0} (`farebox wallet init` writes one)")]
    Missing(PathBuf),
    #[error("{0} already exists; not overwritten")]
    Exists(PathBuf),
    #[error(
        "{path} is readable by group or others (mode {mode:03o}); it holds or points to secrets: chmod 600 {path}"
    )]
    Insecure { path: PathBuf, mode: u32 },
    #[error("{path}: {why}")]
    Io { path: PathBuf, why: String },
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
    #[error("{key}: {why}")]
    Key { key: String, why: String },
}

fn key_err(key: impl Into<String>, why: impl Into<String>) -> WalletFileError {
    WalletFileError::Key { key: key.into(), why: why.into() }
}

/// Where the wallet file is: `$FAREBOX_WALLET`, `$XDG_CONFIG_HOME/farebox/wallet.toml`,
/// `~/.config/farebox/wallet.toml`.
pub fn default_path() -> Option<PathBuf> {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("FAREBOX_WALLET")
        .or_else(|| env("XDG_CONFIG_HOME").map(|d| d.join("farebox").join("wallet.toml")))
        .or_else(|| env("HOME").map(|d| d.join(".config").join("farebox").join("wallet.toml")))
}

/// Refuses a file group or others can read (unix), as ssh refuses such keys.
pub fn check_private(path: &Path) -> Result<(), WalletFileError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path)
            .map_err(|e| WalletFileError::Io { path: path.into(), why: e.to_string() })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(WalletFileError::Insecure { path: path.into(), mode });
        }
    }
    Ok(())
}

/// Reads a private file, bounded.
fn read_private(path: &Path) -> Result<String, WalletFileError> {
    check_private(path)?;
    let io = |e: std::io::Error| WalletFileError::Io { path: path.into(), why: e.to_string() };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_FILE {
        return Err(WalletFileError::Io { path: path.into(), why: "larger than 64 KiB".into() });
    }
    std::fs::read_to_string(path).map_err(io)
}

/// `farebox wallet init`: writes [`TEMPLATE`] at `path`, readable by its owner only, unless a
/// file is already there.
pub fn init(path: &Path) -> Result<(), WalletFileError> {
    let io = |e: std::io::Error| WalletFileError::Io { path: path.into(), why: e.to_string() };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => WalletFileError::Exists(path.into()),
        _ => io(e),
    })?;
    use std::io::Write;
    file.write_all(TEMPLATE.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

/// The annotated wallet file `farebox wallet init` writes.
pub const TEMPLATE: &str = r#"# farebox wallet: what `farebox pay` and `farebox quote` pay with, within which caps.
#
#   farebox quote URL        # every offer, and which one pay would choose, paying nothing
#   farebox pay URL          # pays within the caps below; the body to stdout
#   farebox ledger           # every payment, refund and session close
#
# This file must stay readable by you only (mode 600), like every *_file it names. Secrets are
# never written here and never passed on the command line: each comes from a file (*_file) or
# an environment variable (*_env). Unknown keys are errors. Relative paths are relative to
# this file's folder. What was spent and the ledger are kept in wallet.db next to this file.

# [store]
# path = "wallet.db"

# The Lightning wallet: pays L402 and MPP lightning charges and sessions.
[lightning]
# "dev": the dev wallet API of `farebox demo --serve` or `farebox serve` (no real money).
kind = "dev"
url = "http://127.0.0.1:8403"
# The other kinds name their secret by file or environment variable:
# kind = "nwc"      # Nostr Wallet Connect
# uri_file = "nwc.uri"             # nostr+walletconnect://…   (or uri_env = "FAREBOX_NWC_URI")
# kind = "lnd"      # LND REST
# url = "https://127.0.0.1:8080"
# macaroon_file = "admin.macaroon" # (or macaroon_env = "LND_MACAROON_HEX")
# tls_cert_file = "tls.cert"
# kind = "cln"      # Core Lightning CLNRest
# url = "https://127.0.0.1:3010"
# rune_file = "cln.rune"           # (or rune_env = "CLN_RUNE")
# tls_cert_file = "ca.pem"
# kind = "lnbits"
# url = "https://lnbits.example.com"
# key_file = "lnbits.key"          # an admin key (or key_env = "LNBITS_ADMIN_KEY")
# The most one payment may add in routing fees (reserved in the budget before paying).
max_fee = "10 sat"
# MPP Lightning sessions: the most one session may hold (deposit plus top-ups).
# session_max_deposit = "1000 sat"

# The EVM key: signs x402 payments and MPP evm charges and sessions.
# [evm]
# key_file = "evm.key"             # a hex private key (or key_env = "FAREBOX_EVM_KEY")
#
# Each chain the wallet opens MPP sessions on, with its node: the escrow contracts deposits
# may go to, and the most one channel may hold (in an [assets] token of that chain).
# [[evm.chains]]
# chain_id = 84532
# rpc = "http://127.0.0.1:8545"    # (or rpc_env = "BASE_SEPOLIA_RPC_URL" for one with an API key)
# escrows = ["0x5FbDB2315678afecb367f032d93F642f64180aa3"]
# max_deposit = "1 usdc"

# Rails from outside the core crates configure their wallets in their own table (the prepaid
# example rail's credit codes here); `farebox pay` knows the rails listed in its WALLET_PLUGINS.
# [rails.prepaid]
# seller = "<the seller's Ed25519 public key, 64 hex digits>"
# currency = "sat"
# codes_file = "codes.txt"         # one code per line, owner-only (or codes_env = "...")

# Tokens amounts may be written in ("0.01 usdc"), by name.
# [assets.usdc]
# network = "eip155:84532"
# address = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
# symbol = "USDC"
# decimals = 6

# Caps per asset ("sat", or an [assets] name). An asset without caps is never spent. Every cap
# is checked before paying, against the worst case (price plus the fee bound, or a session's
# deposit), across every farebox process using this wallet. Optional: per_hour, per_day
# (rolling), per_host (all time, each host), per_host_per_day.
[budget.sat]
per_request = "100 sat"
per_day = "2000 sat"
total = "10000 sat"

# [budget.usdc]
# per_request = "0.10 usdc"
# per_day = "2 usdc"
# total = "10 usdc"

[policy]
# Which offer to pay when several fit: rails in order ("mpp-session": an MPP session, which
# puts up a deposit and refunds what is unspent when it closes).
prefer = ["l402", "x402", "mpp", "mpp-session"]
# Pay any host, or only these ("host" for any port, "host:port" for one).
hosts = "any"
# hosts = ["api.example.com", "127.0.0.1:8402"]
"#;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    store: RawStore,
    lightning: Option<RawLightning>,
    evm: Option<RawEvm>,
    #[serde(default)]
    assets: BTreeMap<String, RawAsset>,
    #[serde(default)]
    budget: BTreeMap<String, RawBudget>,
    #[serde(default)]
    policy: RawPolicy,
    /// `[rails.<name>]`: a table per rail whose wallet a plugin builds ([`crate::pay::WALLET_PLUGINS`]).
    #[serde(default)]
    rails: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    path: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLightning {
    kind: String,
    url: Option<String>,
    uri_file: Option<PathBuf>,
    uri_env: Option<String>,
    macaroon_file: Option<PathBuf>,
    macaroon_env: Option<String>,
    rune_file: Option<PathBuf>,
    rune_env: Option<String>,
    key_file: Option<PathBuf>,
    key_env: Option<String>,
    tls_cert_file: Option<PathBuf>,
    max_fee: Option<String>,
    session_max_deposit: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvm {
    key_file: Option<PathBuf>,
    key_env: Option<String>,
    #[serde(default)]
    chains: Vec<RawChain>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChain {
    chain_id: u64,
    rpc: Option<String>,
    rpc_env: Option<String>,
    #[serde(default)]
    escrows: Vec<String>,
    max_deposit: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAsset {
    network: String,
    address: String,
    symbol: String,
    decimals: u8,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    per_request: String,
    total: String,
    per_hour: Option<String>,
    per_day: Option<String>,
    per_host: Option<String>,
    per_host_per_day: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    prefer: Vec<String>,
    hosts: Option<toml::Value>,
}

/// Where a secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

impl SecretSource {
    fn pick(
        key: &str,
        file: Option<PathBuf>,
        env: Option<String>,
        base: &Path,
    ) -> Result<Self, WalletFileError> {
        match (file, env) {
            (Some(f), None) => Ok(SecretSource::File(base.join(f))),
            (None, Some(e)) => Ok(SecretSource::Env(e)),
            _ => Err(key_err(key, format!("give exactly one of {key}_file or {key}_env"))),
        }
    }

    /// Reads the secret (trimmed): a private file, or a set environment variable.
    pub fn read(&self) -> Result<String, WalletFileError> {
        match self {
            SecretSource::File(path) => Ok(read_private(path)?.trim().to_string()),
            SecretSource::Env(name) => std::env::var(name)
                .map(|v| v.trim().to_string())
                .map_err(|_| key_err(name.clone(), "this environment variable is not set")),
        }
    }
}

/// The Lightning wallet, by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LightningConfig {
    /// The dev wallet HTTP API (`farebox demo --serve`, `farebox serve`).
    Dev { url: reqwest::Url },
    /// Nostr Wallet Connect: the `nostr+walletconnect://` URI is a secret.
    Nwc { uri: SecretSource },
    /// LND REST: the macaroon (hex in an env var, binary or hex in a file) and its TLS cert.
    Lnd { url: String, macaroon: SecretSource, tls_cert: Option<PathBuf> },
    /// Core Lightning CLNRest: a rune.
    Cln { url: String, rune: SecretSource, tls_cert: Option<PathBuf> },
    /// LNbits: an admin key.
    Lnbits { url: String, key: SecretSource },
}

/// The one place a Lightning wallet is built from its configuration. Secrets are read here,
/// from their private file or their environment variable, and go straight into the backend
/// (whose `Debug` and errors never show them). LND's `tls_cert_file` is pinned (it is
/// self-signed); CLNRest's is its CA (`ca.pem`); without one, the platform's roots.
pub fn lightning_backend(
    config: &LightningConfig,
) -> Result<Arc<dyn LightningBackend>, WalletFileError> {
    use farebox_lightning::rest::{Endpoint, Secret, TlsTrust};
    let node = |e: farebox_lightning::rest::ConfigError| key_err("lightning", e.to_string());
    let endpoint = |url: &str, trust: Option<TlsTrust>| -> Result<Endpoint, WalletFileError> {
        let endpoint = Endpoint::new(url).map_err(|e| key_err("lightning.url", e.to_string()))?;
        Ok(match trust {
            Some(trust) => endpoint.with_tls(trust),
            None => endpoint,
        })
    };
    let cert = |path: &Option<PathBuf>,
                pinned: bool|
     -> Result<Option<TlsTrust>, WalletFileError> {
        let Some(path) = path else { return Ok(None) };
        let trust =
            if pinned { TlsTrust::pinned_pem_file(path) } else { TlsTrust::roots_pem_file(path) };
        trust.map(Some).map_err(|e| key_err("lightning.tls_cert_file", e.to_string()))
    };
    let secret = |source: &SecretSource, key: &str| -> Result<Secret, WalletFileError> {
        Secret::new(source.read()?).map_err(|e| key_err(key, e.to_string()))
    };
    Ok(match config {
        LightningConfig::Dev { url } => {
            Arc::new(farebox_lightning::dev_wallet::RemoteDevWallet::new(url.clone()))
        }
        LightningConfig::Nwc { uri } => {
            let uri = farebox_lightning::nwc::ConnectionUri::from_str(&uri.read()?)
                .map_err(|e| key_err("lightning.uri", e.to_string()))?;
            Arc::new(farebox_lightning::nwc::NwcClient::new(&uri))
        }
        LightningConfig::Lnd { url, macaroon, tls_cert } => {
            use farebox_lightning::lnd::{LndBackend, Macaroon};
            let macaroon = match macaroon {
                // lnd writes admin.macaroon in binary; hosted nodes hand out its hex.
                SecretSource::File(path) => {
                    check_private(path)?;
                    Macaroon::from_file(path)
                }
                SecretSource::Env(_) => Macaroon::from_bytes(
                    hex::decode(macaroon.read()?)
                        .map_err(|_| key_err("lightning.macaroon", "not hex"))?,
                ),
            }
            .map_err(|e| key_err("lightning.macaroon", e.to_string()))?;
            Arc::new(
                LndBackend::new(endpoint(url, cert(tls_cert, true)?)?, macaroon).map_err(node)?,
            )
        }
        LightningConfig::Cln { url, rune, tls_cert } => Arc::new(
            farebox_lightning::cln::ClnBackend::new(
                endpoint(url, cert(tls_cert, false)?)?,
                secret(rune, "lightning.rune")?,
            )
            .map_err(node)?,
        ),
        LightningConfig::Lnbits { url, key } => Arc::new(
            farebox_lightning::lnbits::LnbitsBackend::new(
                endpoint(url, None)?,
                farebox_lightning::lnbits::LnbitsKey::Admin(secret(key, "lightning.key")?),
            )
            .map_err(node)?,
        ),
    })
}

/// An EVM chain the wallet opens sessions on.
#[derive(Debug, Clone)]
pub struct ChainConfig {
    pub chain_id: u64,
    /// The node's URL (a secret when it carries an API key).
    pub rpc: SecretSource,
    rpc_inline: Option<String>,
    pub escrows: Vec<Address>,
    /// The most one channel holds, in a token of this chain.
    pub max_deposit: Option<Money>,
}

impl ChainConfig {
    /// The node's URL.
    pub fn rpc_url(&self) -> Result<String, WalletFileError> {
        match &self.rpc_inline {
            Some(url) => Ok(url.clone()),
            None => self.rpc.read(),
        }
    }
}

/// The EVM side: the key and the chains.
#[derive(Debug, Clone)]
pub struct EvmConfig {
    pub key: SecretSource,
    pub chains: Vec<ChainConfig>,
}

impl EvmConfig {
    pub fn signer(&self) -> Result<PrivateKeySigner, WalletFileError> {
        let text = self.key.read()?;
        PrivateKeySigner::from_str(&text)
            .map_err(|_| key_err("evm.key", "not a hex EVM private key"))
    }
}

/// A wallet file, read and checked.
#[derive(Debug, Clone)]
pub struct WalletConfig {
    pub path: PathBuf,
    pub store: PathBuf,
    pub lightning: Option<LightningConfig>,
    /// The most routing fee one Lightning payment may add.
    pub max_fee: Money,
    pub session_max_deposit: Option<Money>,
    pub evm: Option<EvmConfig>,
    /// Named tokens.
    pub assets: Vec<(String, Token)>,
    pub caps: Vec<Caps>,
    pub policy: Policy,
    /// The `[rails.<name>]` tables, each for a known plugin.
    pub rails: Vec<RailTable>,
}

/// A `[rails.<name>]` table of the wallet file: a plugin's settings.
#[derive(Debug, Clone)]
pub struct RailTable {
    pub name: String,
    table: serde_json::Value,
    /// The wallet file's folder: where `<key>_file` paths start.
    base: PathBuf,
}

impl RailTable {
    /// The wallet `plugin` builds from this table; `assets` are the wallet file's tokens.
    pub fn build(
        &self,
        plugin: &WalletPlugin,
        assets: &[(String, Token)],
    ) -> Result<Box<dyn Wallet>, WalletFileError> {
        let text = |key: String| match self.table.get(&key) {
            None => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("rails.{}.{key}: expected a string", self.name)),
        };
        let secret = |key: &str| -> Result<String, String> {
            let file = text(format!("{key}_file"))?;
            let env = text(format!("{key}_env"))?;
            let name = format!("rails.{}.{key}", self.name);
            SecretSource::pick(&name, file.map(PathBuf::from), env, &self.base)
                .and_then(|source| source.read())
                .map_err(|e| e.to_string())
        };
        let asset = |unit: &str| Units { assets }.asset(unit);
        let settings = RailSettings { table: &self.table, secret: &secret, asset: &asset };
        (plugin.build)(&settings).map_err(|why| key_err(format!("rails.{}", self.name), why))
    }
}

impl WalletConfig {
    /// Reads and checks the wallet file at `path` (private, known keys, amounts exact).
    pub fn load(path: &Path) -> Result<Self, WalletFileError> {
        if !path.exists() {
            return Err(WalletFileError::Missing(path.into()));
        }
        let text = read_private(path)?;
        let raw: RawFile = toml::from_str(&text)
            .map_err(|e| WalletFileError::Invalid { path: path.into(), why: e.to_string() })?;
        Self::from_raw(path, raw)
    }

    /// The wallet `farebox pay --wallet URL` uses when there is no wallet file: the dev wallet
    /// at `url`, at most `max_sats` per request and in all, kept in memory.
    pub fn dev(url: reqwest::Url, max_sats: u64, max_fee_sats: u64) -> Self {
        let caps = Caps::new(Money::sats(max_sats), Money::sats(max_sats)).expect("both in sats");
        WalletConfig {
            path: PathBuf::new(),
            store: PathBuf::new(),
            lightning: Some(LightningConfig::Dev { url }),
            max_fee: Money::sats(max_fee_sats),
            session_max_deposit: None,
            evm: None,
            assets: Vec::new(),
            caps: vec![caps],
            policy: Policy::new(),
            rails: Vec::new(),
        }
    }

    fn from_raw(path: &Path, raw: RawFile) -> Result<Self, WalletFileError> {
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let assets: Vec<(String, Token)> = raw
            .assets
            .into_iter()
            .map(|(name, a)| {
                if !farebox_gateway_like_address(&a.address) {
                    return Err(key_err(format!("assets.{name}.address"), "not a 0x address"));
                }
                if !a.network.starts_with("eip155:") {
                    return Err(key_err(
                        format!("assets.{name}.network"),
                        "expected eip155:<chain id>",
                    ));
                }
                let token = Token {
                    network: a.network,
                    address: a.address,
                    symbol: a.symbol,
                    decimals: a.decimals,
                };
                Ok((name.to_ascii_lowercase(), token))
            })
            .collect::<Result<_, _>>()?;
        let units = Units { assets: &assets };

        let mut max_fee = Money::sats(10);
        let mut session_max_deposit = None;
        let lightning = match raw.lightning {
            None => None,
            Some(l) => {
                if let Some(fee) = &l.max_fee {
                    max_fee = units.parse_in("lightning.max_fee", fee, &Asset::Bitcoin)?;
                }
                if let Some(cap) = &l.session_max_deposit {
                    session_max_deposit = Some(units.parse_in(
                        "lightning.session_max_deposit",
                        cap,
                        &Asset::Bitcoin,
                    )?);
                }
                Some(lightning_config(l, &base)?)
            }
        };
        let evm = match raw.evm {
            None => None,
            Some(e) => {
                let key = SecretSource::pick("evm.key", e.key_file, e.key_env, &base)?;
                let chains = e
                    .chains
                    .into_iter()
                    .enumerate()
                    .map(|(i, c)| chain_config(i, c, &units, &base))
                    .collect::<Result<_, _>>()?;
                Some(EvmConfig { key, chains })
            }
        };
        let mut caps = Vec::new();
        for (name, b) in raw.budget {
            let asset = units.asset(&name).ok_or_else(|| {
                key_err(format!("budget.{name}"), "not \"sat\" nor an [assets] name")
            })?;
            let amount = |key: &str, text: &str| {
                units.parse_in(&format!("budget.{name}.{key}"), text, &asset)
            };
            let mut c =
                Caps::new(amount("per_request", &b.per_request)?, amount("total", &b.total)?)
                    .map_err(|e| key_err(format!("budget.{name}"), e.to_string()))?;
            let windows = [
                ("per_hour", &b.per_hour, Scope::AllHosts, Some(HOUR)),
                ("per_day", &b.per_day, Scope::AllHosts, Some(DAY)),
                ("per_host", &b.per_host, Scope::PerHost, None),
                ("per_host_per_day", &b.per_host_per_day, Scope::PerHost, Some(DAY)),
            ];
            for (key, text, scope, window) in windows {
                if let Some(text) = text {
                    c = c
                        .cap(scope, window, amount(key, text)?)
                        .map_err(|e| key_err(format!("budget.{name}.{key}"), e.to_string()))?;
                }
            }
            caps.push(c);
        }
        let plugins = crate::pay::WALLET_PLUGINS.iter().map(|p| p.name);
        let mut rails_known: Vec<&str> = vec!["l402", "x402", "mpp", "mpp-session"];
        rails_known.extend(plugins.clone());
        for (i, p) in raw.policy.prefer.iter().enumerate() {
            if !rails_known.contains(&p.to_ascii_lowercase().as_str()) {
                return Err(key_err(
                    format!("policy.prefer[{i}]"),
                    format!("expected one of {rails_known:?}"),
                ));
            }
        }
        let mut rails = Vec::new();
        for (name, table) in raw.rails {
            if !plugins.clone().any(|p| p == name) {
                let known: Vec<&str> = plugins.clone().collect();
                return Err(key_err(
                    format!("rails.{name}"),
                    format!("no wallet of that name; this farebox knows {known:?}"),
                ));
            }
            let table = serde_json::to_value(&table)
                .map_err(|e| key_err(format!("rails.{name}"), e.to_string()))?;
            rails.push(RailTable { name, table, base: base.clone() });
        }
        let hosts = match raw.policy.hosts {
            None => None,
            Some(toml::Value::String(s)) if s == "any" => None,
            Some(toml::Value::Array(list)) => Some(
                list.into_iter()
                    .enumerate()
                    .map(|(i, v)| match v {
                        toml::Value::String(s) if !s.is_empty() => Ok(s.to_ascii_lowercase()),
                        _ => Err(key_err(format!("policy.hosts[{i}]"), "expected a host name")),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(_) => return Err(key_err("policy.hosts", "expected \"any\" or a list of hosts")),
        };
        let mut policy = Policy::new().prefer(raw.policy.prefer);
        if let Some(hosts) = hosts {
            policy = policy.only_hosts(hosts);
        }
        let store = base.join(raw.store.path.unwrap_or_else(|| PathBuf::from("wallet.db")));
        Ok(WalletConfig {
            path: path.into(),
            store,
            lightning,
            max_fee,
            session_max_deposit,
            evm,
            assets,
            caps,
            policy,
            rails,
        })
    }

    /// How amounts are written for this wallet (`sat`, `msat`, its [assets]).
    pub fn units(&self) -> Units<'_> {
        Units { assets: &self.assets }
    }
}

fn farebox_gateway_like_address(text: &str) -> bool {
    Address::from_str(text).is_ok() && text.starts_with("0x")
}

fn lightning_config(l: RawLightning, base: &Path) -> Result<LightningConfig, WalletFileError> {
    let kind = l.kind.to_ascii_lowercase();
    // Keys of other kinds are errors, not silently ignored.
    let given: Vec<(&str, bool)> = vec![
        ("url", l.url.is_some()),
        ("uri_file", l.uri_file.is_some()),
        ("uri_env", l.uri_env.is_some()),
        ("macaroon_file", l.macaroon_file.is_some()),
        ("macaroon_env", l.macaroon_env.is_some()),
        ("rune_file", l.rune_file.is_some()),
        ("rune_env", l.rune_env.is_some()),
        ("key_file", l.key_file.is_some()),
        ("key_env", l.key_env.is_some()),
        ("tls_cert_file", l.tls_cert_file.is_some()),
    ];
    let allowed: &[&str] = match kind.as_str() {
        "dev" => &["url"],
        "nwc" => &["uri_file", "uri_env"],
        "lnd" => &["url", "macaroon_file", "macaroon_env", "tls_cert_file"],
        "cln" => &["url", "rune_file", "rune_env", "tls_cert_file"],
        "lnbits" => &["url", "key_file", "key_env"],
        _ => {
            return Err(key_err(
                "lightning.kind",
                format!("{kind:?} is not one of \"dev\", \"nwc\", \"lnd\", \"cln\", \"lnbits\""),
            ));
        }
    };
    if let Some((key, _)) = given.iter().find(|(k, set)| *set && !allowed.contains(k)) {
        return Err(key_err(format!("lightning.{key}"), format!("not a key of kind = {kind:?}")));
    }
    let url = |required: bool| -> Result<String, WalletFileError> {
        match &l.url {
            Some(u) => {
                reqwest::Url::parse(u).map_err(|e| key_err("lightning.url", e.to_string()))?;
                Ok(u.clone())
            }
            None if required => Err(key_err("lightning.url", "required")),
            None => Ok(String::new()),
        }
    };
    let cert = l.tls_cert_file.as_ref().map(|p| base.join(p));
    Ok(match kind.as_str() {
        "dev" => {
            let url = l.url.as_deref().unwrap_or("http://127.0.0.1:8403");
            LightningConfig::Dev {
                url: reqwest::Url::parse(url)
                    .map_err(|e| key_err("lightning.url", e.to_string()))?,
            }
        }
        "nwc" => LightningConfig::Nwc {
            uri: SecretSource::pick("lightning.uri", l.uri_file, l.uri_env, base)?,
        },
        "lnd" => LightningConfig::Lnd {
            url: url(true)?,
            macaroon: SecretSource::pick(
                "lightning.macaroon",
                l.macaroon_file,
                l.macaroon_env,
                base,
            )?,
            tls_cert: cert,
        },
        "cln" => LightningConfig::Cln {
            url: url(true)?,
            rune: SecretSource::pick("lightning.rune", l.rune_file, l.rune_env, base)?,
            tls_cert: cert,
        },
        _ => LightningConfig::Lnbits {
            url: url(true)?,
            key: SecretSource::pick("lightning.key", l.key_file, l.key_env, base)?,
        },
    })
}

fn chain_config(
    i: usize,
    c: RawChain,
    units: &Units<'_>,
    base: &Path,
) -> Result<ChainConfig, WalletFileError> {
    let key = |k: &str| format!("evm.chains[{i}].{k}");
    let (rpc, rpc_inline) = match (c.rpc, c.rpc_env) {
        (Some(url), None) => {
            reqwest::Url::parse(&url).map_err(|e| key_err(key("rpc"), e.to_string()))?;
            (SecretSource::Env(String::new()), Some(url))
        }
        (None, Some(env)) => (SecretSource::Env(env), None),
        _ => return Err(key_err(key("rpc"), "give exactly one of rpc or rpc_env")),
    };
    let _ = base;
    let escrows = c
        .escrows
        .iter()
        .map(|e| {
            Address::from_str(e)
                .map_err(|_| key_err(key("escrows"), format!("{e:?} is not an address")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let max_deposit = match &c.max_deposit {
        None => None,
        Some(text) => {
            let m = units.parse(text).map_err(|why| key_err(key("max_deposit"), why))?;
            match &m.asset {
                Asset::Token(t) if t.network == format!("eip155:{}", c.chain_id) => Some(m),
                _ => {
                    return Err(key_err(
                        key("max_deposit"),
                        format!("expected an amount of an [assets] token on chain {}", c.chain_id),
                    ));
                }
            }
        }
    };
    if !escrows.is_empty() && max_deposit.is_none() {
        return Err(key_err(key("max_deposit"), "required with escrows"));
    }
    Ok(ChainConfig { chain_id: c.chain_id, rpc, rpc_inline, escrows, max_deposit })
}

/// Amounts as people write them: `50sat`, `1500 msat`, `0.01 usdc` (an [assets] name or
/// symbol, case-insensitive). Exact: a fraction finer than the asset's base unit, a negative or
/// an unknown unit is refused; no floats.
pub struct Units<'a> {
    assets: &'a [(String, Token)],
}

impl Units<'_> {
    /// The asset `name` names: `sat` (or `btc`, `msat`) is Bitcoin, else an [assets] name.
    pub fn asset(&self, name: &str) -> Option<Asset> {
        let name = name.to_ascii_lowercase();
        if matches!(name.as_str(), "sat" | "sats" | "msat") {
            return Some(Asset::Bitcoin);
        }
        self.assets.iter().find(|(n, _)| *n == name).map(|(_, t)| Asset::Token(t.clone()))
    }

    /// Every asset a unit names (a symbol may name one token on several chains).
    pub fn assets_of(&self, unit: &str) -> Vec<Asset> {
        let unit = unit.to_ascii_lowercase();
        if matches!(unit.as_str(), "sat" | "sats" | "msat") {
            return vec![Asset::Bitcoin];
        }
        self.assets
            .iter()
            .filter(|(n, t)| *n == unit || t.symbol.eq_ignore_ascii_case(&unit))
            .map(|(_, t)| Asset::Token(t.clone()))
            .collect()
    }

    /// Splits `50sat` / `0.01 USDC` into number and unit.
    fn split(text: &str) -> Result<(&str, &str), String> {
        let t = text.trim();
        let at = t.find(|c: char| c.is_ascii_alphabetic()).ok_or_else(|| {
            format!("{text:?} has no unit (write e.g. \"50 sat\" or \"0.01 usdc\")")
        })?;
        let (number, unit) = (t[..at].trim(), t[at..].trim());
        if number.is_empty() {
            return Err(format!("{text:?} has no amount"));
        }
        Ok((number, unit))
    }

    /// `text` as amounts of every asset its unit names.
    pub fn parse_all(&self, text: &str) -> Result<Vec<Money>, String> {
        let (number, unit) = Self::split(text)?;
        let assets = self.assets_of(unit);
        if assets.is_empty() {
            return Err(format!(
                "unknown unit {unit:?} in {text:?}: sat, msat, or a token named in the wallet's [assets]"
            ));
        }
        assets.into_iter().map(|asset| amount_of(number, unit, asset)).collect()
    }

    /// `text` as one amount (its unit must name one asset).
    pub fn parse(&self, text: &str) -> Result<Money, String> {
        let mut all = self.parse_all(text)?;
        if all.len() > 1 {
            return Err(format!("{text:?} names tokens on several chains; use the [assets] name"));
        }
        Ok(all.remove(0))
    }

    fn parse_in(&self, key: &str, text: &str, asset: &Asset) -> Result<Money, WalletFileError> {
        let m = self.parse_all(text).map_err(|why| key_err(key, why))?;
        m.into_iter()
            .find(|m| &m.asset == asset)
            .ok_or_else(|| key_err(key, format!("{text:?} is not in {}", asset.symbol())))
    }
}

fn amount_of(number: &str, unit: &str, asset: Asset) -> Result<Money, String> {
    match asset {
        Asset::Bitcoin => Money::parse_bitcoin(&format!("{number} {}", unit.to_ascii_lowercase()))
            .map_err(|e| e.to_string()),
        Asset::Token(t) => Money::parse_token(number, t).map_err(|e| e.to_string()),
        _ => Err(format!("cannot write amounts in {unit}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units() -> Vec<(String, Token)> {
        vec![(
            "usdc".into(),
            Token {
                network: "eip155:84532".into(),
                address: "0x036CbD53842c5426634e7929541eC2318f3dCF7e".into(),
                symbol: "USDC".into(),
                decimals: 6,
            },
        )]
    }

    #[test]
    fn amounts_are_parsed_exactly_and_unknown_units_refused() {
        let assets = units();
        let u = Units { assets: &assets };
        assert_eq!(u.parse("50sat").unwrap(), Money::sats(50));
        assert_eq!(u.parse("1500 msat").unwrap(), Money::msats(1500));
        assert_eq!(u.parse("0.01USDC").unwrap().amount, 10_000);
        assert_eq!(u.parse("0.01 usdc").unwrap().amount, 10_000);
        for bad in ["50", "50 dollars", "0.0000001 USDC", "-1 sat", "1e3 sat", "sat", "0.5 msat"] {
            assert!(u.parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_template_is_a_valid_wallet_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("farebox").join("wallet.toml");
        init(&path).unwrap();
        let config = WalletConfig::load(&path).unwrap();
        assert_eq!(config.store, dir.path().join("farebox").join("wallet.db"));
        assert!(matches!(config.lightning, Some(LightningConfig::Dev { .. })));
        assert!(matches!(init(&path), Err(WalletFileError::Exists(_))), "never overwritten");
    }

    #[test]
    fn a_wallet_or_key_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wallet.toml");
        init(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(WalletConfig::load(&path), Err(WalletFileError::Insecure { .. })));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let key = dir.path().join("evm.key");
        std::fs::write(&key, "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d")
            .unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        let evm = EvmConfig { key: SecretSource::File(key.clone()), chains: vec![] };
        assert!(matches!(evm.signer(), Err(WalletFileError::Insecure { .. })));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(evm.signer().is_ok());
    }

    #[tokio::test]
    async fn every_lightning_kind_is_built_from_its_file_or_variable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wallet.toml");
        let write = |name: &str, text: &str| {
            use std::os::unix::fs::PermissionsExt;
            let file = dir.path().join(name);
            std::fs::write(&file, text).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        let load = |text: &str| {
            write("wallet.toml", text);
            WalletConfig::load(&path).unwrap().lightning.unwrap()
        };
        // An unset variable is a key error naming it, not a panic or a silent dev wallet.
        let nwc = load("[lightning]\nkind = \"nwc\"\nuri_env = \"FAREBOX_TEST_NWC_URI_UNSET\"\n");
        assert!(matches!(lightning_backend(&nwc), Err(WalletFileError::Key { .. })));
        write(
            "nwc.uri",
            "nostr+walletconnect://b889ff5b1513b641e2a139f661a661364979c5beee91842f8f0ef42ab558e9d4?relay=ws%3A%2F%2F127.0.0.1%3A1&secret=71a8c14c1407c113601079c4302dab36460f0ccd0ad506f1f2dc73b5100e4f3c",
        );
        let nwc = load("[lightning]\nkind = \"nwc\"\nuri_file = \"nwc.uri\"\n");
        lightning_backend(&nwc).unwrap();

        let macaroon = "0201036c6e6402f801030a10";
        write("admin.macaroon", macaroon);
        let lnd = load(
            "[lightning]\nkind = \"lnd\"\nurl = \"http://127.0.0.1:1\"\nmacaroon_file = \"admin.macaroon\"\n",
        );
        lightning_backend(&lnd).unwrap();
        write("cln.rune", "rune-secret-value");
        let cln = load(
            "[lightning]\nkind = \"cln\"\nurl = \"http://127.0.0.1:1\"\nrune_file = \"cln.rune\"\n",
        );
        lightning_backend(&cln).unwrap();
        write("lnbits.key", "lnbits-admin-key");
        let lnbits = load(
            "[lightning]\nkind = \"lnbits\"\nurl = \"https://lnbits.example.com\"\nkey_file = \"lnbits.key\"\n",
        );
        lightning_backend(&lnbits).unwrap();
        // A TLS certificate that is not there is an error naming the key.
        let lnd = load(
            "[lightning]\nkind = \"lnd\"\nurl = \"https://127.0.0.1:8080\"\nmacaroon_file = \"admin.macaroon\"\ntls_cert_file = \"missing.cert\"\n",
        );
        assert!(
            matches!(lightning_backend(&lnd), Err(WalletFileError::Key { key, .. }) if key == "lightning.tls_cert_file")
        );
        // A secret inline, or a key of another kind, is refused.
        write("wallet.toml", "[lightning]\nkind = \"nwc\"\nuri = \"nostr+walletconnect://x\"\n");
        assert!(WalletConfig::load(&path).is_err());
        write("wallet.toml", "[lightning]\nkind = \"dev\"\nrune_env = \"X\"\n");
        assert!(WalletConfig::load(&path).is_err());
    }
}
