//! The gateway's TOML configuration: its types, how it is read, and every check that can be made
//! without touching the network.
//!
//! [`Config::load`] reads a file, deserializes it strictly (`deny_unknown_fields` everywhere, so a
//! misspelt key is an error, not a silently ignored default) and then checks what serde cannot:
//! secrets that must be readable, names that must refer to something, prices that some offered
//! rail must be able to charge, and routes that must be reachable. Every problem is reported with
//! the file, the line and column, and the key path (`routes[2].price`), all at once.
//!
//! The annotated example `farebox.example.toml` (next to this crate's `Cargo.toml`) documents
//! every key; `tests/config.rs` loads it so that it cannot rot.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use farebox_core::{Asset, Money, Price, Token};
use farebox_server::PricedRoute;
use http::{HeaderName, Method};
use serde::Deserialize;

use crate::rails::RailsSection;

/// Longest configuration file read.
const MAX_CONFIG_LEN: usize = 1024 * 1024;

/// A configuration that was read and checked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub gateway: GatewaySection,
    #[serde(default)]
    pub ops: OpsSection,
    #[serde(default)]
    pub store: StoreSection,
    pub lightning: Option<LightningSection>,
    #[serde(default)]
    pub chains: BTreeMap<String, ChainSection>,
    #[serde(default)]
    pub assets: BTreeMap<String, AssetSection>,
    #[serde(default)]
    pub rails: RailsSection,
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamSection>,
    pub free_tier: Option<FreeTierSection>,
    pub rate_limit: Option<RateLimitSection>,
    pub admin: Option<AdminSection>,
    #[serde(default)]
    pub discovery: DiscoverySection,
    #[serde(default)]
    pub upstream_headers: UpstreamHeaders,
    #[serde(default)]
    pub routes: Vec<RouteSection>,
    /// The file this was read from (for messages), and the directory relative paths start in.
    #[serde(skip)]
    pub file: PathBuf,
}

/// `[gateway]`: the listener and process-wide settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The base URL clients reach the gateway at (x402 writes it into `resource.url`).
    pub public_url: Option<String>,
    /// Where the gateway keeps its state (the default SQLite store).
    pub state_dir: Option<PathBuf>,
    /// Peers whose `X-Forwarded-*` headers are believed (CIDR blocks or addresses).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// How long a shutdown waits for in-flight requests before it exits anyway.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_secs: u64,
    /// How often rail upkeep runs (x402 reconciliation, idle MPP sessions).
    #[serde(default = "default_maintenance")]
    pub maintenance_interval_secs: u64,
    /// The name this instance writes into the payment log (default: its listen address).
    pub instance: Option<String>,
    /// How long the payment log keeps a payment (revenue totals are kept for good).
    #[serde(default = "default_payment_log_days")]
    pub payment_log_days: u64,
    /// Threads serving the main listener (default: one per CPU). Read at start only.
    pub workers: Option<usize>,
}

impl GatewaySection {
    /// How many worker threads serve the main listener.
    pub fn worker_count(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map(std::num::NonZeroUsize::get).unwrap_or(1)
        })
    }
}

impl Default for GatewaySection {
    fn default() -> Self {
        GatewaySection {
            listen: default_listen(),
            public_url: None,
            state_dir: None,
            trusted_proxies: Vec::new(),
            shutdown_grace_secs: default_shutdown_grace(),
            maintenance_interval_secs: default_maintenance(),
            instance: None,
            payment_log_days: default_payment_log_days(),
            workers: None,
        }
    }
}

/// More worker threads than this is a typo, not a machine.
const MAX_WORKERS: usize = 1024;

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8402))
}
fn default_shutdown_grace() -> u64 {
    30
}
fn default_maintenance() -> u64 {
    10
}
fn default_payment_log_days() -> u64 {
    90
}

/// `[ops]`: health, readiness and metrics.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OpsSection {
    /// The reserved path prefix of the ops endpoints on the main listener.
    #[serde(default = "default_ops_prefix")]
    pub prefix: String,
    /// A listener of their own; when set, the main listener does not serve them.
    pub listen: Option<SocketAddr>,
}

impl Default for OpsSection {
    fn default() -> Self {
        OpsSection { prefix: default_ops_prefix(), listen: None }
    }
}

fn default_ops_prefix() -> String {
    "/_farebox".into()
}

/// `[admin]`: the admin API and status page, on a listener of their own.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    pub listen: SocketAddr,
    /// The bearer token every admin request but the status page's shell must carry.
    pub token: SecretSource,
}

/// Shortest admin token accepted.
pub const MIN_ADMIN_TOKEN: usize = 16;

/// `[discovery]`: `/openapi.json`, `/llms.txt` and `/discovery/resources` on the main listener.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DiscoverySection {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The service's name (default: the public URL's host).
    pub title: Option<String>,
    /// The API's version, as OpenAPI's `info.version` (default "1.0.0").
    pub version: Option<String>,
    pub description: Option<String>,
    /// At most 5, lower case (`data`, `compute`, `developer-tools`…).
    #[serde(default)]
    pub categories: Vec<String>,
    pub homepage: Option<String>,
    pub api_reference: Option<String>,
}

impl Default for DiscoverySection {
    fn default() -> Self {
        DiscoverySection {
            enabled: true,
            title: None,
            version: None,
            description: None,
            categories: Vec::new(),
            homepage: None,
            api_reference: None,
        }
    }
}

fn yes() -> bool {
    true
}

/// `requests` per `window_secs`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateSection {
    pub requests: u64,
    pub window_secs: u64,
}

impl RateSection {
    pub fn limit(&self) -> crate::ratelimit::Limit {
        crate::ratelimit::Limit {
            requests: self.requests,
            window: std::time::Duration::from_secs(self.window_secs),
        }
    }
}

/// `[rate_limit]` (every route), or a route's own `rate_limit`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    pub per_ip: Option<RateSection>,
    pub per_token: Option<RateSection>,
}

/// A route's `pricer`: where its price comes from (see [`crate::pricer`]).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PricerSection {
    /// `http://host:port/path`, answering POSTed request facts with a price.
    pub url: String,
    #[serde(default = "default_pricer_timeout")]
    pub timeout_ms: u64,
    /// How long an answer is kept per request facts (0: not kept).
    #[serde(default)]
    pub cache_ttl_secs: u64,
    /// Request headers the pricer is told (lower case names).
    #[serde(default)]
    pub headers: Vec<String>,
    /// The price when the pricer fails (with `on_pricer_error = "fallback"`).
    pub fallback: Option<PriceSpec>,
}

fn default_pricer_timeout() -> u64 {
    500
}

/// What a dynamically priced route does when its pricer fails.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OnPricerError {
    /// Charge the pricer's `fallback` price.
    Fallback,
    /// Answer 503 with `Retry-After`.
    Refuse,
    /// Serve without payment.
    Free,
}

/// A checked dynamic price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicPrice {
    pub pricer: PricerSection,
    pub fallback: Option<Price>,
    pub on_error: OnPricerError,
}

/// A secret's source: a file or an environment variable, never the configuration itself.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    pub key_file: Option<PathBuf>,
    pub key_env: Option<String>,
}

/// A secret as read. Its `Debug` output is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl SecretSource {
    /// Reads the secret (trimmed of surrounding whitespace). Relative files are read from
    /// `base`, the configuration file's directory.
    pub fn read(&self, base: &Path) -> Result<Secret, String> {
        let text = match (&self.key_file, &self.key_env) {
            (Some(file), None) => {
                let path = base.join(file);
                let meta = std::fs::metadata(&path)
                    .map_err(|e| format!("cannot read key file {}: {e}", path.display()))?;
                if meta.len() > 64 * 1024 {
                    return Err(format!("key file {} is larger than 64 KiB", path.display()));
                }
                std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read key file {}: {e}", path.display()))?
            }
            (None, Some(var)) => std::env::var(var)
                .map_err(|_| format!("environment variable {var} is not set (or not UTF-8)"))?,
            _ => return Err("give exactly one of key_file or key_env".into()),
        };
        let text = text.trim();
        if text.is_empty() {
            return Err("the secret is empty".into());
        }
        Ok(Secret(text.to_string()))
    }

    /// Reads a secret written as hex (an optional `0x`), of at least `min_len` bytes.
    pub fn read_hex(&self, base: &Path, min_len: usize) -> Result<Vec<u8>, String> {
        let secret = self.read(base)?;
        let text = secret.expose();
        let text = text.strip_prefix("0x").unwrap_or(text);
        let bytes = hex::decode(text).map_err(|_| "the secret is not hex".to_string())?;
        if bytes.len() < min_len {
            return Err(format!(
                "the secret must be at least {min_len} bytes ({} hex digits)",
                2 * min_len
            ));
        }
        Ok(bytes)
    }
}

/// `[store]`: where replay records, sessions and free-tier counters live.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// A SQLite file (relative paths are in the state directory).
    pub sqlite: Option<PathBuf>,
    /// A PostgreSQL URL (`postgres://…`), read from a file or the environment.
    pub postgres: Option<SecretSource>,
}

/// `[lightning]`: the node that makes and checks invoices. `backend` picks one; its own table
/// (`[lightning.nwc]`, `[lightning.lnd]`…) says where it is, its credential always from a file
/// or the environment.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LightningSection {
    pub backend: LightningBackendKind,
    #[serde(default)]
    pub dev: DevLightning,
    pub nwc: Option<NwcLightning>,
    pub lnd: Option<LndLightning>,
    pub cln: Option<ClnLightning>,
    pub lnbits: Option<LnbitsLightning>,
}

/// Which Lightning backend.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LightningBackendKind {
    /// The embedded dev node: real BOLT11 invoices, simulated network, no real money.
    Dev,
    /// A wallet over Nostr Wallet Connect (it must offer `make_invoice` and `lookup_invoice`).
    Nwc,
    /// LND's REST API.
    Lnd,
    /// Core Lightning's CLNRest.
    Cln,
    /// One LNbits wallet.
    Lnbits,
}

/// `[lightning.nwc]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NwcLightning {
    /// The `nostr+walletconnect://` URI.
    pub uri: SecretSource,
}

/// `[lightning.lnd]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LndLightning {
    pub url: String,
    /// `invoice.macaroon` (binary or hex in `key_file`, hex in `key_env`).
    pub macaroon: SecretSource,
    /// LND's `tls.cert`, pinned; without it, publicly trusted roots.
    pub tls_cert_file: Option<PathBuf>,
}

/// `[lightning.cln]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClnLightning {
    pub url: String,
    pub rune: SecretSource,
    /// CLNRest's `ca.pem`; without it, publicly trusted roots.
    pub ca_cert_file: Option<PathBuf>,
}

/// `[lightning.lnbits]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LnbitsLightning {
    pub url: String,
    /// The wallet's invoice (read) key: enough to issue and check invoices.
    pub key: SecretSource,
}

/// Why the `[lightning]` backend could not be built: the key at fault and what is wrong.
pub type BackendError = (String, String);

impl LightningSection {
    /// The configured backend, when it is not the dev node, built from its table (nothing
    /// connects yet). The one place both the load-time check and the gateway build it.
    pub fn remote_backend(
        &self,
        base: &Path,
    ) -> Result<Option<std::sync::Arc<dyn farebox_lightning::LightningBackend>>, BackendError> {
        let missing = |name: &str| {
            (format!("lightning.{name}"), format!("required with backend = \"{name}\""))
        };
        match self.backend {
            LightningBackendKind::Dev => Ok(None),
            LightningBackendKind::Nwc => {
                let nwc = self.nwc.as_ref().ok_or_else(|| missing("nwc"))?;
                remote::nwc(nwc, base).map(Some)
            }
            LightningBackendKind::Lnd => {
                let lnd = self.lnd.as_ref().ok_or_else(|| missing("lnd"))?;
                remote::lnd(lnd, base).map(Some)
            }
            LightningBackendKind::Cln => {
                let cln = self.cln.as_ref().ok_or_else(|| missing("cln"))?;
                remote::cln(cln, base).map(Some)
            }
            LightningBackendKind::Lnbits => {
                let lnbits = self.lnbits.as_ref().ok_or_else(|| missing("lnbits"))?;
                remote::lnbits(lnbits, base).map(Some)
            }
        }
    }
}

/// Each real backend, compiled in by the gateway feature of the same name.
mod remote {
    // What a build without some backend features leaves unused.
    #![allow(dead_code, unused_imports, unused_variables)]
    use std::path::Path;
    use std::sync::Arc;

    use farebox_lightning::LightningBackend;

    use super::{BackendError, ClnLightning, LnbitsLightning, LndLightning, NwcLightning};

    type Built = Result<Arc<dyn LightningBackend>, BackendError>;

    fn not_built(kind: &str) -> BackendError {
        (
            "lightning.backend".into(),
            format!("\"{kind}\" is not built into this gateway (cargo feature `{kind}`)"),
        )
    }

    #[cfg(feature = "rest")]
    fn endpoint(
        key: &str,
        url: &str,
        cert: Option<(&Path, bool)>,
        base: &Path,
    ) -> Result<farebox_lightning::rest::Endpoint, BackendError> {
        let endpoint = farebox_lightning::rest::Endpoint::new(url)
            .map_err(|e| (format!("{key}.url"), e.to_string()))?;
        match cert {
            None => Ok(endpoint),
            #[cfg(feature = "tls")]
            Some((path, pinned)) => {
                use farebox_lightning::rest::TlsTrust;
                let path = base.join(path);
                let trust = if pinned {
                    TlsTrust::pinned_pem_file(path)
                } else {
                    TlsTrust::roots_pem_file(path)
                };
                let key =
                    format!("{key}.{}", if pinned { "tls_cert_file" } else { "ca_cert_file" });
                Ok(endpoint.with_tls(trust.map_err(|e| (key, e.to_string()))?))
            }
            #[cfg(not(feature = "tls"))]
            Some(_) => Err((format!("{key}.url"), "certificates need the `tls` feature".into())),
        }
    }

    #[cfg(feature = "rest")]
    fn secret(
        key: &str,
        source: &super::SecretSource,
        base: &Path,
    ) -> Result<farebox_lightning::rest::Secret, BackendError> {
        let text = source.read(base).map_err(|e| (key.to_string(), e))?;
        farebox_lightning::rest::Secret::new(text.expose())
            .map_err(|e| (key.to_string(), e.to_string()))
    }

    pub fn nwc(nwc: &NwcLightning, base: &Path) -> Built {
        #[cfg(feature = "nwc")]
        {
            let key = "lightning.nwc.uri";
            let uri = nwc.uri.read(base).map_err(|e| (key.to_string(), e))?;
            let uri: farebox_lightning::nwc::ConnectionUri = uri
                .expose()
                .parse()
                .map_err(|e: farebox_lightning::nwc::UriError| (key.to_string(), e.to_string()))?;
            Ok(Arc::new(farebox_lightning::nwc::NwcClient::new(&uri)))
        }
        #[cfg(not(feature = "nwc"))]
        Err(not_built("nwc"))
    }

    pub fn lnd(lnd: &LndLightning, base: &Path) -> Built {
        #[cfg(feature = "lnd")]
        {
            use farebox_lightning::lnd::{LndBackend, Macaroon};
            let key = "lightning.lnd.macaroon";
            let macaroon = match (&lnd.macaroon.key_file, &lnd.macaroon.key_env) {
                // lnd writes invoice.macaroon in binary; hosted nodes hand out its hex.
                (Some(file), None) => Macaroon::from_file(base.join(file)),
                _ => {
                    let hex_text = lnd.macaroon.read(base).map_err(|e| (key.to_string(), e))?;
                    let bytes = hex::decode(hex_text.expose())
                        .map_err(|_| (key.to_string(), "not hex".to_string()))?;
                    Macaroon::from_bytes(bytes)
                }
            }
            .map_err(|e| (key.to_string(), e.to_string()))?;
            let cert = lnd.tls_cert_file.as_deref().map(|p| (p, true));
            let endpoint = endpoint("lightning.lnd", &lnd.url, cert, base)?;
            Ok(Arc::new(
                LndBackend::new(endpoint, macaroon)
                    .map_err(|e| (key.to_string(), e.to_string()))?,
            ))
        }
        #[cfg(not(feature = "lnd"))]
        Err(not_built("lnd"))
    }

    pub fn cln(cln: &ClnLightning, base: &Path) -> Built {
        #[cfg(feature = "cln")]
        {
            let rune = secret("lightning.cln.rune", &cln.rune, base)?;
            let cert = cln.ca_cert_file.as_deref().map(|p| (p, false));
            let endpoint = endpoint("lightning.cln", &cln.url, cert, base)?;
            Ok(Arc::new(
                farebox_lightning::cln::ClnBackend::new(endpoint, rune)
                    .map_err(|e| ("lightning.cln".to_string(), e.to_string()))?,
            ))
        }
        #[cfg(not(feature = "cln"))]
        Err(not_built("cln"))
    }

    pub fn lnbits(lnbits: &LnbitsLightning, base: &Path) -> Built {
        #[cfg(feature = "lnbits")]
        {
            use farebox_lightning::lnbits::{LnbitsBackend, LnbitsKey};
            let key = secret("lightning.lnbits.key", &lnbits.key, base)?;
            let endpoint = endpoint("lightning.lnbits", &lnbits.url, None, base)?;
            Ok(Arc::new(
                LnbitsBackend::new(endpoint, LnbitsKey::Invoice(key))
                    .map_err(|e| ("lightning.lnbits".to_string(), e.to_string()))?,
            ))
        }
        #[cfg(not(feature = "lnbits"))]
        Err(not_built("lnbits"))
    }
}

/// `[lightning.dev]`: the embedded dev network.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DevLightning {
    /// What the dev wallet on the same network starts with, in sats.
    #[serde(default = "default_wallet_sats")]
    pub wallet_sats: u64,
    /// Where `farebox serve` serves the dev wallet's API (for `farebox pay`); none when unset.
    pub wallet_listen: Option<SocketAddr>,
}

impl Default for DevLightning {
    fn default() -> Self {
        DevLightning { wallet_sats: default_wallet_sats(), wallet_listen: None }
    }
}

fn default_wallet_sats() -> u64 {
    100_000
}

/// `[chains.<name>]`: an EVM node.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct ChainSection {
    /// The chain id the node must report.
    pub chain_id: u64,
    /// The RPC URL, when it carries no credential.
    pub rpc: Option<String>,
    /// The RPC URL from a file or the environment (URLs with API keys are secrets).
    pub rpc_url: Option<SecretSource>,
}

/// `[assets.<name>]`: a token routes can be priced in.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct AssetSection {
    /// The `[chains.<name>]` it lives on.
    pub chain: String,
    /// Its contract address.
    pub address: String,
    pub symbol: String,
    pub decimals: u8,
    /// Its EIP-712 domain name and version (EIP-3009 rails need them).
    pub eip712_name: Option<String>,
    pub eip712_version: Option<String>,
}

/// `[upstreams.<name>]`: an HTTP service behind the gateway.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// `http://host:port[/base/path]`.
    pub url: String,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// How long the upstream may take to send its status and headers.
    #[serde(default = "default_response_timeout")]
    pub response_timeout_ms: u64,
    /// Largest request body forwarded (413 beyond).
    #[serde(default = "default_max_request")]
    pub max_request_bytes: u64,
    /// Largest response body relayed; a longer one is cut off (and, on `after-end` routes, is a
    /// 502 and not charged).
    #[serde(default = "default_max_response")]
    pub max_response_bytes: u64,
    /// Largest response held back on `settle = "after-end"` routes.
    #[serde(default = "default_max_buffered")]
    pub max_buffered_bytes: u64,
    /// Send the client's `Host` rather than the upstream's.
    #[serde(default)]
    pub preserve_host: bool,
    /// A path `/readyz` asks (any answer below 500 is ready); unset: a TCP connect.
    pub health_path: Option<String>,
}

fn default_connect_timeout() -> u64 {
    2_000
}
fn default_response_timeout() -> u64 {
    30_000
}
fn default_max_request() -> u64 {
    16 * 1024 * 1024
}
fn default_max_response() -> u64 {
    1024 * 1024 * 1024
}
fn default_max_buffered() -> u64 {
    16 * 1024 * 1024
}

/// The name routes use for the embedded demo upstream when the configuration names none.
pub const DEMO_UPSTREAM: &str = "demo";

/// `[free_tier]`: N requests per client per window on priced routes, before payment is asked.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FreeTierSection {
    pub requests: u64,
    pub window_secs: u64,
    /// Identify clients by this request header instead of their IP address.
    pub client_header: Option<String>,
}

/// `[upstream_headers]`: the headers the gateway adds to requests it forwards (an empty name
/// turns one off). Whatever a client sent under these names is removed first.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamHeaders {
    #[serde(default = "h_rail")]
    pub rail: String,
    #[serde(default = "h_amount")]
    pub amount: String,
    #[serde(default = "h_asset")]
    pub asset: String,
    #[serde(default = "h_payer")]
    pub payer: String,
    #[serde(default = "h_reference")]
    pub reference: String,
    #[serde(default = "h_free")]
    pub free_tier: String,
}

fn h_rail() -> String {
    "x-farebox-rail".into()
}
fn h_amount() -> String {
    "x-farebox-amount".into()
}
fn h_asset() -> String {
    "x-farebox-asset".into()
}
fn h_payer() -> String {
    "x-farebox-payer".into()
}
fn h_reference() -> String {
    "x-farebox-reference".into()
}
fn h_free() -> String {
    "x-farebox-free-tier".into()
}

impl Default for UpstreamHeaders {
    fn default() -> Self {
        UpstreamHeaders {
            rail: h_rail(),
            amount: h_amount(),
            asset: h_asset(),
            payer: h_payer(),
            reference: h_reference(),
            free_tier: h_free(),
        }
    }
}

impl UpstreamHeaders {
    /// The configured names (empty ones are off), in a fixed order.
    pub fn names(&self) -> [(&'static str, &str); 6] {
        [
            ("rail", &self.rail),
            ("amount", &self.amount),
            ("asset", &self.asset),
            ("payer", &self.payer),
            ("reference", &self.reference),
            ("free_tier", &self.free_tier),
        ]
    }
}

/// One or several amounts (`"10 sat"`, `["10 sat", "0.01 usdc"]`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum PriceSpec {
    One(String),
    AnyOf(Vec<String>),
}

impl PriceSpec {
    fn amounts(&self) -> &[String] {
        match self {
            PriceSpec::One(s) => std::slice::from_ref(s),
            PriceSpec::AnyOf(v) => v,
        }
    }
}

/// When a priced response is settled.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Settle {
    /// Once the upstream's status and headers arrived (below 400), before its body streams.
    #[default]
    BeforeFirstByte,
    /// Once the upstream's whole body arrived; it is held back until then (bounded).
    AfterEnd,
    /// Before the upstream is asked at all (for routes with side effects).
    BeforeUpstream,
}

/// `[[routes]]`: which requests go where, at what price.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// The `Host` it applies to (any host when unset).
    pub host: Option<String>,
    /// The methods it applies to (any when unset; `GET` also covers `HEAD`).
    pub methods: Option<Vec<String>>,
    /// `/exact/path` or `/prefix/*`.
    pub path: String,
    /// The `[upstreams.<name>]` it goes to (the only one when unset).
    pub upstream: Option<String>,
    /// Served without payment.
    #[serde(default)]
    pub free: bool,
    /// One price for every method.
    pub price: Option<PriceSpec>,
    /// A price per method (`{ GET = "10 sat", POST = "50 sat" }`).
    pub prices: Option<BTreeMap<String, PriceSpec>>,
    /// The rails offered (all configured rails when unset).
    pub rails: Option<Vec<String>>,
    #[serde(default)]
    pub settle: Settle,
    pub description: Option<String>,
    /// Whether `[free_tier]` applies here (off unless asked for).
    #[serde(default)]
    pub free_tier: bool,
    /// A price from an HTTP pricer instead of `price`/`prices`.
    pub pricer: Option<PricerSection>,
    /// When the pricer fails: `fallback`, `refuse` or `free`.
    pub on_pricer_error: Option<OnPricerError>,
    /// This route's own rate limits (replacing `[rate_limit]`'s).
    pub rate_limit: Option<RateLimitSection>,
}

/// A checked route, ready for the runtime.
#[derive(Debug, Clone)]
pub struct Route {
    /// Index in `routes`, for messages and metrics.
    pub index: usize,
    pub host: Option<String>,
    /// `None`: every method.
    pub methods: Option<Vec<Method>>,
    pub pattern: String,
    pub upstream: String,
    /// What it costs per method; empty for a free route. The one place a route's price comes
    /// from ([`Route::priced_routes`]); a dynamic pricer plugs in here.
    pub prices: Vec<(Option<Method>, Price)>,
    pub rails: Vec<String>,
    pub settle: Settle,
    pub description: Option<String>,
    pub free_tier: bool,
    /// A price from a pricer (then `prices` is empty).
    pub dynamic: Option<DynamicPrice>,
    /// The route's own rate limits.
    pub rate_limit: RateLimitSection,
}

impl Route {
    pub fn is_free(&self) -> bool {
        self.prices.is_empty() && self.dynamic.is_none()
    }

    /// A label for logs and metrics: `[host]` `pattern`.
    pub fn label(&self) -> String {
        match &self.host {
            Some(h) => format!("{h}{}", self.pattern),
            None => self.pattern.clone(),
        }
    }

    /// The price table the paywall gets for this route (empty for a dynamic price).
    pub fn priced_routes(&self) -> Vec<PricedRoute> {
        self.prices
            .iter()
            .filter_map(|(method, price)| self.priced_route(method.clone(), price.clone()))
            .collect()
    }

    /// This route at `price` for `method` (`None`: every method), as the paywall prices it.
    pub fn priced_route(&self, method: Option<Method>, price: Price) -> Option<PricedRoute> {
        let timing = match self.settle {
            Settle::BeforeUpstream => farebox_core::SettleTiming::BeforeServe,
            Settle::BeforeFirstByte | Settle::AfterEnd => farebox_core::SettleTiming::AfterResponse,
        };
        let route = PricedRoute::new(method, &self.pattern, price).ok()?;
        let route = match &self.description {
            Some(d) => route.describe(d),
            None => route,
        };
        Some(route.settle(timing))
    }

    /// Whether this route takes `method` for `host` on `path` (canonical, as the layer checked).
    pub fn matches(&self, host: Option<&str>, method: &Method, path: &str) -> bool {
        if let Some(want) = &self.host
            && !host.is_some_and(|h| h.eq_ignore_ascii_case(want))
        {
            return false;
        }
        if let Some(methods) = &self.methods
            && !methods
                .iter()
                .any(|m| m == method || (*m == Method::GET && *method == Method::HEAD))
        {
            return false;
        }
        pattern_matches(&self.pattern, path)
    }
}

/// The route pattern language of `farebox-server` (exact paths, `/prefix/*`), for the gateway's
/// own routing: the same rule as the paywall's, so that a routed request is always priced (the
/// proxy refuses one that is not, rather than serve it free).
fn pattern_matches(pattern: &str, path: &str) -> bool {
    let path = if path.len() > 1 { path.strip_suffix('/').unwrap_or(path) } else { path };
    match pattern.strip_suffix("/*") {
        Some(prefix) => {
            path == prefix
                || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
                || prefix.is_empty()
        }
        None => path == pattern,
    }
}

/// Whether every path `inner` matches is matched by `outer`.
fn pattern_covers(outer: &str, inner: &str) -> bool {
    match (outer.strip_suffix("/*"), inner.strip_suffix("/*")) {
        (Some(o), Some(i)) => o.is_empty() || (!i.is_empty() && pattern_matches(outer, i)),
        (Some(_), None) | (None, None) => pattern_matches(outer, inner),
        (None, Some(_)) => false,
    }
}

/// A checked trusted-proxy block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: bad prefix length"))?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// One problem in a configuration, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// The key path, e.g. `routes[2].price`.
    pub key: String,
    pub message: String,
    /// 1-based line and column, when the key is in the file.
    pub line_col: Option<(usize, usize)>,
}

/// A configuration that was refused: the file and every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub issues: Vec<Issue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file.display())?;
            if let Some((line, col)) = issue.line_col {
                write!(f, ":{line}:{col}")?;
            }
            if issue.key.is_empty() {
                write!(f, ": {}", issue.message)?;
            } else {
                write!(f, ": {}: {}", issue.key, issue.message)?;
            }
        }
        Ok(())
    }
}

impl ConfigError {
    /// Whether some issue is at `key`.
    pub fn has(&self, key: &str) -> bool {
        self.issues.iter().any(|i| i.key == key)
    }
}

/// Problems found while checking, with their key paths (located in the file at the end).
#[derive(Default)]
pub(crate) struct Issues(Vec<(String, String)>);

impl Issues {
    pub(crate) fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push((key.into(), message.into()));
    }
}

impl Config {
    /// Reads, parses and checks the configuration at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let refuse = |message: String| ConfigError {
            file: path.to_path_buf(),
            issues: vec![Issue { key: String::new(), message, line_col: None }],
        };
        let meta = std::fs::metadata(path).map_err(|e| refuse(format!("cannot read: {e}")))?;
        if meta.len() > MAX_CONFIG_LEN as u64 {
            return Err(refuse(format!("larger than {MAX_CONFIG_LEN} bytes")));
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| refuse(format!("cannot read: {e}")))?;
        Self::parse(&text, path)
    }

    /// Parses and checks `text` as if read from `file` (relative paths start in its directory).
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = match toml::from_str(text) {
            Ok(c) => c,
            Err(e) => {
                let span = e.span();
                let key = span.clone().map(|s| key_at(text, s)).unwrap_or_default();
                return Err(ConfigError {
                    file: file.to_path_buf(),
                    issues: vec![Issue {
                        key,
                        message: e.message().trim().to_string(),
                        line_col: span.map(|s| line_col(text, s.start)),
                    }],
                });
            }
        };
        config.file = file.to_path_buf();
        let mut issues = Issues::default();
        config.check(&mut issues);
        if issues.0.is_empty() {
            return Ok(config);
        }
        Err(ConfigError {
            file: file.to_path_buf(),
            issues: issues
                .0
                .into_iter()
                .map(|(key, message)| {
                    let line_col = span_of(text, &key).map(|s| line_col(text, s.start));
                    Issue { key, message, line_col }
                })
                .collect(),
        })
    }

    /// The directory relative paths in the file start from.
    pub fn base_dir(&self) -> PathBuf {
        self.file.parent().map(Path::to_path_buf).unwrap_or_default()
    }

    /// The upstream routes go to when they name none: the only configured one, or the demo.
    pub fn default_upstream(&self) -> Option<&str> {
        match self.upstreams.len() {
            0 => Some(DEMO_UPSTREAM),
            1 => self.upstreams.keys().next().map(String::as_str),
            _ => None,
        }
    }

    /// The token an `[assets.<name>]` section describes (its chain must exist).
    pub fn token(&self, name: &str) -> Option<Token> {
        let asset = self.assets.get(name)?;
        let chain = self.chains.get(&asset.chain)?;
        Some(Token {
            network: farebox_evm::network::caip2(chain.chain_id),
            address: asset.address.clone(),
            symbol: asset.symbol.clone(),
            decimals: asset.decimals,
        })
    }

    /// Parses one amount: `10 sat`, `1500 msat`, or `<decimal> <asset name>`.
    pub fn parse_amount(&self, text: &str) -> Result<Money, String> {
        let t = text.trim();
        let Some((number, unit)) = t.rsplit_once(' ') else {
            return Err(format!("{text:?}: write an amount and a unit (`10 sat`, `0.01 usdc`)"));
        };
        match unit {
            "sat" | "sats" | "msat" => Money::parse_bitcoin(t).map_err(|e| e.to_string()),
            name => {
                let token = self.token(name).ok_or_else(|| {
                    format!(
                        "{text:?}: unknown unit {name:?} (sat, msat, or an [assets.<name>] name)"
                    )
                })?;
                Money::parse_token(number, token).map_err(|e| e.to_string())
            }
        }
    }

    /// The checked routes, in order.
    pub fn checked_routes(&self) -> Vec<Route> {
        let mut ignored = Issues::default();
        self.routes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| self.check_route(i, r, &mut ignored))
            .collect()
    }

    /// The trusted-proxy blocks (unparseable ones were refused at load).
    pub fn trusted_proxies(&self) -> Vec<Cidr> {
        self.gateway.trusted_proxies.iter().filter_map(|t| Cidr::parse(t).ok()).collect()
    }

    fn check(&self, issues: &mut Issues) {
        let base = self.base_dir();
        for (i, t) in self.gateway.trusted_proxies.iter().enumerate() {
            if let Err(e) = Cidr::parse(t) {
                issues.push(format!("gateway.trusted_proxies[{i}]"), e);
            }
        }
        if let Some(url) = &self.gateway.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            issues.push("gateway.public_url", "must be an http:// or https:// URL");
        }
        if self.gateway.maintenance_interval_secs == 0 {
            issues.push("gateway.maintenance_interval_secs", "must be at least 1");
        }
        let prefix = &self.ops.prefix;
        if !prefix.starts_with('/')
            || prefix.len() < 2
            || prefix.ends_with('/')
            || prefix.contains('*')
        {
            issues.push("ops.prefix", "must be a path such as \"/_farebox\" (no trailing '/')");
        }
        if self.ops.listen.is_some_and(|a| a == self.gateway.listen) {
            issues.push("ops.listen", "must differ from gateway.listen");
        }
        match (&self.store.sqlite, &self.store.postgres) {
            (Some(_), Some(_)) => issues.push("store", "give sqlite or postgres, not both"),
            (_, Some(pg)) => match pg.read(&base) {
                Ok(url)
                    if url.expose().starts_with("postgres://")
                        || url.expose().starts_with("postgresql://") => {}
                Ok(_) => issues.push("store.postgres", "the secret is not a postgres:// URL"),
                Err(e) => issues.push("store.postgres", e),
            },
            _ => {}
        }
        if let Some(lightning) = &self.lightning
            && let Err((key, why)) = lightning.remote_backend(&base)
        {
            issues.push(key, why);
        }
        for (name, chain) in &self.chains {
            let key = format!("chains.{name}");
            match (&chain.rpc, &chain.rpc_url) {
                (Some(url), None) => {
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        issues.push(format!("{key}.rpc"), "must be an http:// or https:// URL");
                    }
                }
                (None, Some(secret)) => {
                    if let Err(e) = secret.read(&base) {
                        issues.push(format!("{key}.rpc_url"), e);
                    }
                }
                _ => issues
                    .push(key, "give rpc or rpc_url (from a file or the environment), exactly one"),
            }
        }
        for (name, asset) in &self.assets {
            let key = format!("assets.{name}");
            if !self.chains.contains_key(&asset.chain) {
                issues.push(
                    format!("{key}.chain"),
                    format!("no [chains.{}] is configured", asset.chain),
                );
            }
            if let Some(problem) = address_problem(&asset.address, false) {
                issues.push(format!("{key}.address"), problem);
            }
            if asset.decimals > 30 {
                issues.push(format!("{key}.decimals"), "must be at most 30");
            }
            if matches!(name.as_str(), "sat" | "sats" | "msat") {
                issues
                    .push(key, "sat, sats and msat are Bitcoin's units; name the asset otherwise");
            }
        }
        for (name, up) in &self.upstreams {
            let key = format!("upstreams.{name}");
            if let Err(e) = crate::proxy::UpstreamTarget::parse(&up.url) {
                issues.push(format!("{key}.url"), e);
            }
            if up.connect_timeout_ms == 0 || up.response_timeout_ms == 0 {
                issues.push(key.clone(), "timeouts must be at least 1 ms");
            }
            if let Some(p) = &up.health_path
                && !p.starts_with('/')
            {
                issues.push(format!("{key}.health_path"), "must start with '/'");
            }
        }
        if let Some(ft) = &self.free_tier {
            if ft.requests == 0 {
                issues
                    .push("free_tier.requests", "must be at least 1 (remove [free_tier] for none)");
            }
            if ft.window_secs == 0 {
                issues.push("free_tier.window_secs", "must be at least 1");
            }
            if let Some(h) = &ft.client_header
                && HeaderName::try_from(h.as_str()).is_err()
            {
                issues.push("free_tier.client_header", "not a valid header name");
            }
        }
        if let Some(rl) = &self.rate_limit {
            for (what, rate) in [("per_ip", rl.per_ip), ("per_token", rl.per_token)] {
                if let Some(rate) = rate {
                    check_rate(&rate, &format!("rate_limit.{what}"), issues);
                }
            }
        }
        if let Some(admin) = &self.admin {
            if admin.listen == self.gateway.listen || Some(admin.listen) == self.ops.listen {
                issues.push("admin.listen", "must differ from gateway.listen and ops.listen");
            }
            match admin.token.read(&base) {
                Ok(t) if t.expose().len() >= MIN_ADMIN_TOKEN => {}
                Ok(_) => issues.push(
                    "admin.token",
                    format!("the token must be at least {MIN_ADMIN_TOKEN} characters"),
                ),
                Err(e) => issues.push("admin.token", e),
            }
        }
        let d = &self.discovery;
        if d.categories.len() > 5 {
            issues.push("discovery.categories", "at most 5");
        }
        for (i, c) in d.categories.iter().enumerate() {
            if c.is_empty()
                || !c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                issues.push(
                    format!("discovery.categories[{i}]"),
                    "lower case letters, digits and '-'",
                );
            }
        }
        for (what, url) in [("homepage", &d.homepage), ("api_reference", &d.api_reference)] {
            if let Some(url) = url
                && reqwest::Url::parse(url)
                    .map_or(true, |u| !matches!(u.scheme(), "http" | "https"))
            {
                issues.push(format!("discovery.{what}"), "must be an http:// or https:// URL");
            }
        }
        if let Some(n) = self.gateway.workers
            && !(1..=MAX_WORKERS).contains(&n)
        {
            issues.push("gateway.workers", format!("must be between 1 and {MAX_WORKERS}"));
        }
        if self.gateway.payment_log_days == 0 {
            issues.push("gateway.payment_log_days", "must be at least 1");
        }
        for (what, name) in self.upstream_headers.names() {
            if !name.is_empty() {
                match HeaderName::try_from(name) {
                    Ok(h) if crate::proxy::is_hop_by_hop(&h) || h == http::header::HOST => issues
                        .push(
                            format!("upstream_headers.{what}"),
                            "a hop-by-hop or Host header cannot carry it",
                        ),
                    Ok(_) => {}
                    Err(_) => {
                        issues.push(format!("upstream_headers.{what}"), "not a valid header name")
                    }
                }
            }
        }
        crate::rails::check(self, issues);
        if self.rails.names().is_empty() {
            issues.push(
                "rails",
                "configure at least one rail ([rails.l402], [rails.x402] or [rails.mpp])",
            );
        }
        if self.routes.is_empty() {
            issues.push("routes", "configure at least one [[routes]]");
        }
        let mut checked: Vec<Route> = Vec::new();
        let ops_area = format!("{}/*", self.ops.prefix);
        for (i, section) in self.routes.iter().enumerate() {
            let Some(route) = self.check_route(i, section, issues) else { continue };
            if self.ops.listen.is_none() && pattern_covers(&ops_area, &route.pattern) {
                issues.push(
                    format!("routes[{i}].path"),
                    format!(
                        "can never match: {} is reserved for the ops endpoints",
                        self.ops.prefix
                    ),
                );
            }
            if let Some(earlier) = checked.iter().find(|e| shadows(e, &route)) {
                let what = if earlier.is_free() { "the free route" } else { "the route" };
                issues.push(
                    format!("routes[{i}].path"),
                    format!(
                        "can never match: {what} routes[{}] ({}) comes first and takes every request this one would",
                        earlier.index,
                        earlier.label()
                    ),
                );
            }
            checked.push(route);
        }
    }

    /// Checks one route; `None` when it is unusable (the reasons are in `issues`).
    fn check_route(&self, i: usize, r: &RouteSection, issues: &mut Issues) -> Option<Route> {
        let key = format!("routes[{i}]");
        let before = issues.0.len();
        if let Err(e) = PricedRoute::new(None, &r.path, Price::one(Money::sats(1))) {
            issues.push(format!("{key}.path"), e.reason);
        } else if r.path.len() > 1 && r.path.ends_with('/') {
            // The paywall's matching ignores a request's trailing '/', never a pattern's.
            issues
                .push(format!("{key}.path"), "drop the trailing '/' (\"/a\" also matches \"/a/\")");
        }
        if let Some(host) = &r.host
            && (host.is_empty() || host.contains('/') || host.contains(':') || host.contains(' '))
        {
            issues.push(format!("{key}.host"), "a host name without scheme, port or path");
        }
        let parse_method = |m: &str| -> Result<Method, String> {
            let m = m.trim();
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(format!("{m:?} is not an upper-case HTTP method"));
            }
            Method::from_bytes(m.as_bytes()).map_err(|_| format!("{m:?} is not an HTTP method"))
        };
        let mut methods = None;
        if let Some(list) = &r.methods {
            let mut parsed = Vec::new();
            for (j, m) in list.iter().enumerate() {
                match parse_method(m) {
                    Ok(m) => parsed.push(m),
                    Err(e) => issues.push(format!("{key}.methods[{j}]"), e),
                }
            }
            if list.is_empty() {
                issues.push(
                    format!("{key}.methods"),
                    "list at least one method (or leave it out for all)",
                );
            }
            methods = Some(parsed);
        }
        let upstream = match r.upstream.as_deref().or(self.default_upstream()) {
            Some(u)
                if self.upstreams.contains_key(u)
                    || (self.upstreams.is_empty() && u == DEMO_UPSTREAM) =>
            {
                u.to_string()
            }
            Some(u) => {
                issues.push(format!("{key}.upstream"), format!("no [upstreams.{u}] is configured"));
                String::new()
            }
            None => {
                issues
                    .push(format!("{key}.upstream"), "several upstreams are configured: name one");
                String::new()
            }
        };
        let configured = self.rails.names();
        let mut prices: Vec<(Option<Method>, Price, String)> = Vec::new();
        let mut dynamic = None;
        match (r.free, &r.price, &r.prices) {
            (false, None, None) if r.pricer.is_some() => {}
            (_, _, _) if r.pricer.is_some() => {
                issues.push(
                    format!("{key}.pricer"),
                    "give a pricer, a price, per-method prices or free = true, one of them",
                );
            }
            (true, None, None) => {
                if r.rails.is_some() {
                    issues.push(format!("{key}.rails"), "a free route offers no rails");
                }
                if r.settle != Settle::default() {
                    issues.push(format!("{key}.settle"), "a free route settles nothing");
                }
            }
            (false, Some(p), None) => {
                let price = self.check_price(p, &format!("{key}.price"), issues);
                match (&methods, price) {
                    (None, Some(price)) => prices.push((None, price, format!("{key}.price"))),
                    (Some(ms), Some(price)) => {
                        for m in ms {
                            prices.push((Some(m.clone()), price.clone(), format!("{key}.price")));
                        }
                    }
                    _ => {}
                }
            }
            (false, None, Some(per_method)) => {
                if methods.is_some() {
                    issues.push(
                        format!("{key}.methods"),
                        "with per-method prices, the methods are the keys of `prices`",
                    );
                }
                let mut ms = Vec::new();
                for (m, p) in per_method {
                    let pkey = format!("{key}.prices.{m}");
                    match parse_method(m) {
                        Ok(method) => {
                            if let Some(price) = self.check_price(p, &pkey, issues) {
                                ms.push(method.clone());
                                prices.push((Some(method), price, pkey));
                            }
                        }
                        Err(e) => issues.push(pkey, e),
                    }
                }
                if per_method.is_empty() {
                    issues.push(format!("{key}.prices"), "name at least one method");
                }
                methods = Some(ms);
            }
            (false, None, None) => {
                issues.push(key.clone(), "give a price, per-method prices, or free = true");
            }
            _ => issues.push(key.clone(), "give exactly one of price, prices or free = true"),
        }
        if r.on_pricer_error.is_some() && r.pricer.is_none() {
            issues.push(
                format!("{key}.on_pricer_error"),
                "only a route with a pricer has pricer errors",
            );
        }
        let rails: Vec<String> = if r.free {
            Vec::new()
        } else {
            match &r.rails {
                None => configured.iter().map(|s| s.to_string()).collect(),
                Some(list) => {
                    if list.is_empty() {
                        issues.push(format!("{key}.rails"), "offer at least one rail");
                    }
                    for (j, name) in list.iter().enumerate() {
                        if !configured.contains(&name.as_str()) {
                            let known = crate::rails::KNOWN.join(", ");
                            let msg = if crate::rails::KNOWN.contains(&name.as_str()) {
                                format!("rail {name:?} is not configured (add [rails.{name}])")
                            } else {
                                format!("unknown rail {name:?} (known: {known})")
                            };
                            issues.push(format!("{key}.rails[{j}]"), msg);
                        }
                    }
                    list.clone()
                }
            }
        };
        if let Some(p) = &r.pricer {
            let pkey = format!("{key}.pricer");
            match reqwest::Url::parse(&p.url) {
                Ok(u) if u.scheme() == "http" && u.host_str().is_some() => {}
                _ => issues.push(
                    format!("{pkey}.url"),
                    "an http:// URL (the pricer runs beside the gateway)",
                ),
            }
            if p.timeout_ms == 0 || p.timeout_ms > 60_000 {
                issues.push(format!("{pkey}.timeout_ms"), "between 1 and 60000");
            }
            for (j, h) in p.headers.iter().enumerate() {
                if HeaderName::try_from(h.as_str()).is_err() {
                    issues.push(format!("{pkey}.headers[{j}]"), "not a valid header name");
                }
            }
            let fallback = p
                .fallback
                .as_ref()
                .and_then(|f| self.check_price(f, &format!("{pkey}.fallback"), issues));
            let on_error = match (r.on_pricer_error, &p.fallback) {
                (Some(OnPricerError::Fallback), None) => {
                    issues.push(
                        format!("{key}.on_pricer_error"),
                        "\"fallback\" needs pricer.fallback",
                    );
                    OnPricerError::Refuse
                }
                (Some(e), _) => e,
                (None, Some(_)) => OnPricerError::Fallback,
                (None, None) => OnPricerError::Refuse,
            };
            if let Some(f) = &fallback {
                prices.push((None, f.clone(), format!("{pkey}.fallback")));
            }
            dynamic = Some(DynamicPrice { pricer: p.clone(), fallback, on_error });
        }
        // Every amount of every price must be chargeable by some rail the route offers.
        for (_, price, pkey) in &prices {
            for offer in price.offers() {
                let chargeable =
                    rails.iter().any(|name| crate::rails::charges(self, name, &offer.asset));
                if !chargeable {
                    issues.push(
                        pkey.clone(),
                        format!(
                            "{offer} is in an asset none of the offered rails ({}) can charge",
                            rails.join(", ")
                        ),
                    );
                }
            }
        }
        if dynamic.is_some() {
            // The fallback was only checked above; a dynamic route has no static prices.
            prices.clear();
        }
        for (what, rate) in [
            ("per_ip", r.rate_limit.and_then(|l| l.per_ip)),
            ("per_token", r.rate_limit.and_then(|l| l.per_token)),
        ] {
            if let Some(rate) = rate {
                check_rate(&rate, &format!("{key}.rate_limit.{what}"), issues);
            }
        }
        if r.free_tier && (r.free || self.free_tier.is_none()) {
            let why = if r.free {
                "a free route needs no free tier"
            } else {
                "no [free_tier] is configured"
            };
            issues.push(format!("{key}.free_tier"), why);
        }
        if issues.0.len() > before {
            return None;
        }
        Some(Route {
            index: i,
            host: r.host.as_ref().map(|h| h.to_ascii_lowercase()),
            methods,
            pattern: r.path.clone(),
            upstream,
            prices: prices.into_iter().map(|(m, p, _)| (m, p)).collect(),
            rails,
            settle: r.settle,
            description: r.description.clone(),
            free_tier: r.free_tier && !r.free,
            dynamic,
            rate_limit: r.rate_limit.unwrap_or_default(),
        })
    }

    fn check_price(&self, spec: &PriceSpec, key: &str, issues: &mut Issues) -> Option<Price> {
        let mut offers = Vec::new();
        for text in spec.amounts() {
            match self.parse_amount(text) {
                Ok(m) if m.amount == 0 => {
                    issues.push(key, format!("{text:?} is zero: use free = true for a free route"))
                }
                Ok(m) => offers.push(m),
                Err(e) => issues.push(key, e),
            }
        }
        if offers.len() != spec.amounts().len() {
            return None;
        }
        match Price::any_of(offers) {
            Ok(p) => Some(p),
            Err(e) => {
                issues.push(key, e);
                None
            }
        }
    }
}

fn check_rate(rate: &RateSection, key: &str, issues: &mut Issues) {
    if rate.requests == 0 {
        issues.push(format!("{key}.requests"), "must be at least 1");
    }
    if rate.window_secs == 0 || rate.window_secs > 86_400 {
        issues.push(format!("{key}.window_secs"), "between 1 and 86400");
    }
}

/// Whether `earlier` takes every request `later` would match.
fn shadows(earlier: &Route, later: &Route) -> bool {
    let host_covers = match (&earlier.host, &later.host) {
        (None, _) => true,
        (Some(a), Some(b)) => a == b,
        (Some(_), None) => false,
    };
    let methods_cover = match (&earlier.methods, &later.methods) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(outer), Some(inner)) => inner
            .iter()
            .all(|m| outer.iter().any(|o| o == m || (*o == Method::GET && *m == Method::HEAD))),
    };
    host_covers && methods_cover && pattern_covers(&earlier.pattern, &later.pattern)
}

/// What is wrong with an address (as [`farebox_evm::address`] reads them), if anything; one
/// that `receives` money must not be the zero address either.
pub(crate) fn address_problem(text: &str, receives: bool) -> Option<String> {
    match farebox_evm::address::parse_address(text) {
        Err(e) => Some(e.to_string()),
        Ok(a) if receives && a.is_zero() => {
            Some("is the zero address: what is paid to it is burnt".into())
        }
        Ok(_) => None,
    }
}

/// Whether `asset` is a token of the configured `[assets.<name>]`.
pub(crate) fn asset_is(config: &Config, name: &str, asset: &Asset) -> bool {
    match (config.token(name), asset) {
        (Some(t), Asset::Token(a)) => &t == a,
        _ => false,
    }
}

/// The 1-based line and column of `key` (a key path) in `text`, when it is there.
pub(crate) fn locate(text: &str, key: &str) -> Option<(usize, usize)> {
    span_of(text, key).map(|s| line_col(text, s.start))
}

/// 1-based line and column of byte `offset`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// A key path with the spans of its key and its value.
type Entry = (String, Option<Range<usize>>, Range<usize>);

/// Every key and array element of `text`, with its key path and the spans of its key (none
/// for array elements) and value.
fn entries(text: &str) -> Vec<Entry> {
    use toml::de::{DeTable, DeValue};
    fn walk(v: &DeValue<'_>, path: &str, out: &mut Vec<Entry>) {
        match v {
            DeValue::Table(t) => {
                for (k, val) in t.iter() {
                    let p = if path.is_empty() {
                        k.get_ref().to_string()
                    } else {
                        format!("{path}.{}", k.get_ref())
                    };
                    out.push((p.clone(), Some(k.span()), val.span()));
                    walk(val.get_ref(), &p, out);
                }
            }
            DeValue::Array(a) => {
                for (i, val) in a.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    out.push((p.clone(), None, val.span()));
                    walk(val.get_ref(), &p, out);
                }
            }
            _ => {}
        }
    }
    let Ok(doc) = DeTable::parse(text) else { return Vec::new() };
    let mut out = Vec::new();
    walk(&DeValue::Table(doc.into_inner()), "", &mut out);
    out
}

/// Where `key` is in `text`: its key (or, for an array element, its value), or failing that
/// the nearest enclosing key that is there.
fn span_of(text: &str, key: &str) -> Option<Range<usize>> {
    let all = entries(text);
    let mut key = key.to_string();
    loop {
        if let Some((_, k, v)) = all.iter().find(|(p, _, _)| *p == key) {
            return Some(k.clone().unwrap_or_else(|| v.clone()));
        }
        let cut = key.rfind(['.', '['])?;
        key.truncate(cut);
    }
}

/// The key path of the innermost key or value whose span contains `span` (for serde errors).
fn key_at(text: &str, span: Range<usize>) -> String {
    let inside = |s: &Range<usize>| s.start <= span.start && span.start < s.end.max(s.start + 1);
    entries(text)
        .into_iter()
        .filter(|(_, k, v)| k.as_ref().is_some_and(inside) || inside(v))
        .max_by_key(|(p, _, _)| p.len())
        .map(|(p, _, _)| p)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_cover_what_they_match() {
        assert!(pattern_covers("/*", "/a"));
        assert!(pattern_covers("/*", "/a/*"));
        assert!(pattern_covers("/a/*", "/a"));
        assert!(pattern_covers("/a/*", "/a/b/*"));
        assert!(pattern_covers("/a/*", "/a/*"));
        assert!(!pattern_covers("/a/*", "/ab"));
        assert!(!pattern_covers("/a", "/a/*"));
        assert!(!pattern_covers("/a/b/*", "/a/*"));
        assert!(!pattern_covers("/a/*", "/*"));
    }

    #[test]
    fn cidrs_contain_their_addresses() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("1.2.3.4".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("example.com").is_err());
    }

    #[test]
    fn key_paths_are_located() {
        let text = "[gateway]\nlisten = \"127.0.0.1:1\"\n\n[[routes]]\npath = \"/a\"\n\n[[routes]]\npath = \"/b\"\nprice = \"1 sat\"\n";
        assert_eq!(locate(text, "routes[1].price"), Some((9, 1)));
        assert_eq!(locate(text, "routes[1].rails"), locate(text, "routes[1]"));
        assert!(locate(text, "routes[1]").is_some());
        let at = text.find("\"/b\"").unwrap();
        assert_eq!(key_at(text, at..at + 4), "routes[1].path");
    }
}
