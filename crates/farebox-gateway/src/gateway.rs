//! The running gateway: the backends it opened, the routes and rails of the current
//! configuration, and how a request goes through them.
//!
//! ```text
//!  request ──► PaywallLayer (every rail, no route): non-canonical paths refused (400)
//!                └─► ops prefix? ──► /healthz, /readyz, /metrics
//!                └─► first route matching host, method, path? none ──► 404
//!                      free route ──────────────────────────────► proxy
//!                      priced: no credential and free tier left ─► proxy (free-tier header)
//!                      priced: the route's PaywallLayer (its rails, its prices) ──► proxy
//! ```
//!
//! Each priced route has a paywall of its own, holding only the rails it offers, so that a route
//! can offer L402 and not MPP while both charge sats. The rails themselves are shared.
//!
//! A reload ([`Gateway::reload`]) builds a whole new set of routes and rails and swaps it in;
//! requests in flight finish on the set they started with, connections stay open. Backends whose
//! section did not change (the store, the dev Lightning network, EVM nodes, the demo upstream,
//! random dev keys) are kept, so tokens and balances survive a reload. A configuration that fails
//! to load or build is refused and the old one keeps serving.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::serve::ListenerExt as _;
use farebox_core::Receipt;
use farebox_core::time::unix_now;
use farebox_evm::EvmRpc;
use farebox_lightning::{DevNetwork, DevNode, LightningBackend};
use farebox_server::{Paid, Paywall, PaywallLayer};
use http::{HeaderName, HeaderValue, Response, StatusCode};
use sha2::{Digest, Sha256};
use tower::{Layer, ServiceExt};

use crate::admin::AdminToken;
use crate::config::RateLimitSection;
use crate::config::{
    ChainSection, Cidr, Config, ConfigError, DEMO_UPSTREAM, Issue, LightningSection, Route, Settle,
    UpstreamSection,
};
use crate::db::{GatewayDb, Kind, Logged, PaymentRow};
use crate::discovery::Discovery;
use crate::free_tier::FreeTier;
use crate::l402_token::SeenTokens;
use crate::metrics::Metrics;
use crate::payments::PaymentLog;
use crate::pricer::{Priced, Pricer};
use crate::proxy::{self, Forward, Upstream, UpstreamLatency, problem};
use crate::ratelimit::{Key, RateLimiter, Scope};

/// What the embedding program lends the gateway.
#[derive(Default)]
pub struct GatewayOptions {
    /// Served on loopback as the upstream named `demo` when the configuration names none.
    pub demo_upstream: Option<axum::Router>,
    /// The state directory when the configuration names none (before the environment).
    pub state_dir: Option<PathBuf>,
}

/// The gateway. See the module docs.
pub struct Gateway {
    live: RwLock<Arc<Live>>,
    backends: tokio::sync::Mutex<Backends>,
    metrics: Arc<Metrics>,
}

/// The Lightning backend the gateway runs: the configured node, or the dev network.
struct DevLightning {
    section: LightningSection,
    backend: Arc<dyn LightningBackend>,
    /// With `backend = "dev"`: the node invoices are paid to and the dev wallet.
    dev: Option<(Arc<DevNode>, Arc<DevNode>)>,
}

/// What survives a reload when its configuration did not change.
struct Backends {
    store: Option<(StoreKey, Arc<dyn farebox_store::Store>, GatewayDb)>,
    lightning: Option<DevLightning>,
    chains: HashMap<String, (ChainSection, EvmRpc)>,
    ephemeral: HashMap<&'static str, Vec<u8>>,
    demo_router: Option<axum::Router>,
    demo_addr: Option<SocketAddr>,
    state_dir: Option<PathBuf>,
    /// The payment log writers of this configuration and of those a reload replaced that are
    /// still writing: a shutdown drains them all.
    writers: Vec<crate::payments::Writer>,
}

#[derive(PartialEq, Eq)]
enum StoreKey {
    Sqlite(PathBuf),
    Postgres(String),
}

/// The current configuration, built.
pub(crate) struct Live {
    pub(crate) config: Arc<Config>,
    routes: Vec<LiveRoute>,
    /// Every rail and no route: canonical paths, credential recognition, upkeep.
    pub(crate) guard: Arc<Paywall>,
    free_tier: Option<(FreeTier, Option<HeaderName>)>,
    trusted: Vec<Cidr>,
    /// The names the gateway writes upstream (a client's values under them are dropped).
    reserved: Vec<HeaderName>,
    headers: PaidHeaderNames,
    pub(crate) store: Arc<dyn farebox_store::Store>,
    /// The gateway's own tables (free tier, payment log).
    pub(crate) db: GatewayDb,
    pub(crate) payments: PaymentLog,
    /// The L402 credentials served and the tokens whose first paid answer is claimed.
    seen: SeenTokens,
    /// The L402 rail, which keeps revocations in the store (the admin API revokes through it).
    pub(crate) l402: Option<Arc<farebox_l402::L402Rail>>,
    limiter: Arc<RateLimiter>,
    limits: RateLimitSection,
    pub(crate) admin_token: Option<AdminToken>,
    discovery: Option<Discovery>,
    /// This instance's name in the payment log.
    pub(crate) instance: String,
    lightning: Option<Arc<dyn LightningBackend>>,
    chains: Vec<(String, EvmRpc)>,
    upstreams: Vec<Arc<Upstream>>,
    _upkeep: Vec<AbortOnDrop>,
}

struct LiveRoute {
    route: Route,
    label: Arc<str>,
    upstream: Arc<Upstream>,
    pricing: Pricing,
}

/// How a route is charged.
enum Pricing {
    Free,
    /// Its paywall: its rails at its configured prices.
    Static(Arc<Paywall>),
    /// A paywall per price its pricer names.
    Dynamic(Arc<Pricer>),
}

#[derive(Default)]
struct PaidHeaderNames {
    rail: Option<HeaderName>,
    amount: Option<HeaderName>,
    asset: Option<HeaderName>,
    payer: Option<HeaderName>,
    reference: Option<HeaderName>,
    free_tier: Option<HeaderName>,
}

/// A task that ends with the configuration that started it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The route a response answered (a response extension, for metrics).
#[derive(Clone)]
struct RouteLabel(Arc<str>);

/// What a paid response was paid with (a response extension, for metrics and the payment log).
#[derive(Clone)]
struct PaidWith(Paid);

fn fail(config: &Config, key: &str, message: impl Into<String>) -> ConfigError {
    let message = message.into();
    let line_col = std::fs::read_to_string(&config.file)
        .ok()
        .and_then(|text| crate::config::locate(&text, key));
    ConfigError {
        file: config.file.clone(),
        issues: vec![Issue { key: key.into(), message, line_col }],
    }
}

impl Gateway {
    /// Opens the backends and builds the configuration. Refused with the key path when a backend
    /// cannot be opened (an EVM node that does not answer, a store that cannot be opened).
    pub async fn start(
        config: Config,
        options: GatewayOptions,
    ) -> Result<Arc<Gateway>, ConfigError> {
        let mut backends = Backends {
            store: None,
            lightning: None,
            chains: HashMap::new(),
            ephemeral: HashMap::new(),
            demo_router: options.demo_upstream,
            demo_addr: None,
            state_dir: options.state_dir,
            writers: Vec::new(),
        };
        let metrics = Arc::new(Metrics::new());
        let live = build(Arc::new(config), &mut backends, &metrics).await?;
        Ok(Arc::new(Gateway {
            live: RwLock::new(Arc::new(live)),
            backends: tokio::sync::Mutex::new(backends),
            metrics,
        }))
    }

    pub(crate) fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Swaps in `config`. On error nothing changes and the old configuration keeps serving.
    pub async fn reload(&self, config: Config) -> Result<(), ConfigError> {
        let mut backends = self.backends.lock().await;
        let live = build(Arc::new(config), &mut backends, &self.metrics).await?;
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(live);
        tracing::info!("configuration reloaded");
        Ok(())
    }

    /// Reads the configuration file again (the one the gateway runs) and swaps it in.
    ///
    /// The listeners stay as they are: `[gateway] listen` (as started, `--listen` included) and
    /// `[ops] listen` are kept from the running configuration.
    pub async fn reload_from_file(&self) -> Result<(), ConfigError> {
        let running = self.live().config.clone();
        let mut config = Config::load(&running.file)?;
        config.gateway.listen = running.gateway.listen;
        config.ops.listen = running.ops.listen;
        if let (Some(new), Some(old)) = (&mut config.admin, &running.admin) {
            new.listen = old.listen;
        }
        self.reload(config).await
    }

    /// The configuration being served.
    pub fn config(&self) -> Arc<Config> {
        self.live().config.clone()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The dev network's wallet node (what `farebox pay` pays from), with `[lightning] backend =
    /// "dev"`.
    pub async fn dev_wallet(&self) -> Option<Arc<DevNode>> {
        self.dev_nodes().await.map(|(_, wallet)| wallet)
    }

    /// The dev network's node that the gateway's invoices are paid to.
    pub async fn dev_node(&self) -> Option<Arc<DevNode>> {
        self.dev_nodes().await.map(|(node, _)| node)
    }

    async fn dev_nodes(&self) -> Option<(Arc<DevNode>, Arc<DevNode>)> {
        self.backends.lock().await.lightning.as_ref().and_then(|l| l.dev.clone())
    }

    /// Waits until the payments answered so far are in the payment log (or `within` passed).
    pub async fn flush_payments(&self, within: Duration) -> bool {
        self.live().payments.flush(within).await
    }

    /// The OpenAPI document `/openapi.json` serves (`None` with discovery off).
    pub fn openapi(&self) -> Option<serde_json::Value> {
        let live = self.live();
        serde_json::from_slice(live.discovery.as_ref()?.openapi_json()).ok()
    }

    /// The admin listener's service (`[admin] listen`).
    pub fn admin_router(self: &Arc<Self>) -> axum::Router {
        axum::Router::new().fallback(crate::admin::handle).with_state(self.clone())
    }

    /// The ops endpoints alone (for `[ops] listen`).
    pub fn ops_router(self: &Arc<Self>) -> axum::Router {
        axum::Router::new().fallback(handle_ops).with_state(self.clone())
    }

    /// Serves on `listener` (and on `[ops] listen` when set) until `shutdown` resolves; then
    /// stops accepting, lets requests in flight (and their settlements) finish for up to
    /// `shutdown_grace_secs`, writes the payment log (for up to [`LOG_DRAIN`] more), and
    /// returns.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let config = self.config();
        let grace = Duration::from_secs(config.gateway.shutdown_grace_secs);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        if let Some(admin) = &config.admin {
            let listener = tokio::net::TcpListener::bind(admin.listen).await?;
            tracing::info!(addr = %admin.listen, "admin API and status page listening");
            let app = self.admin_router().into_make_service_with_connect_info::<SocketAddr>();
            tokio::spawn(
                axum::serve(listener.tap_io(no_delay), app)
                    .with_graceful_shutdown(wait(stopped.clone()))
                    .into_future(),
            );
        }
        if let Some(addr) = config.ops.listen {
            let ops = tokio::net::TcpListener::bind(addr).await?;
            tracing::info!(%addr, "ops endpoints listening");
            let app = self.ops_router().into_make_service_with_connect_info::<SocketAddr>();
            tokio::spawn(
                axum::serve(ops.tap_io(no_delay), app)
                    .with_graceful_shutdown(wait(stopped.clone()))
                    .into_future(),
            );
        }
        let workers = crate::connection::Workers::start(config.gateway.worker_count())?;
        let main = workers.serve(listener, MainListener(self.clone()), stopped.clone());
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections; finishing requests in flight");
            let _ = stop.send(true);
        });
        let deadline = async move {
            wait(stopped).await;
            tokio::time::sleep(grace).await;
        };
        let served = tokio::select! {
            done = main => done,
            () = deadline => {
                tracing::warn!("shutdown grace period over; exiting with requests still in flight");
                Ok(())
            }
        };
        self.drain_payment_logs().await;
        // The workers' runtimes hold connections the backends opened from requests: they end
        // only once the payment log is written.
        drop(workers);
        served
    }

    /// Writes what every payment log holds before the process ends: a writer commits what it
    /// gathered every 50 ms, and what it holds when the process exits would be lost.
    async fn drain_payment_logs(&self) {
        let backends = self.backends.lock().await;
        let deadline = tokio::time::Instant::now() + LOG_DRAIN;
        for writer in &backends.writers {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !writer.drain(left).await {
                tracing::warn!("payment log: payments not written before exit");
            }
        }
    }
}

/// How long a shutdown waits for the payment log to write what it holds.
pub const LOG_DRAIN: Duration = Duration::from_secs(5);

/// Answers go out as soon as they are written: with Nagle's algorithm a response written in two
/// parts (headers, then a streamed body) can wait for the client's delayed ACK.
pub(crate) fn no_delay(stream: &mut tokio::net::TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY not set");
    }
}

/// Where the gateway keeps its state.
fn state_dir(config: &Config, fallback: Option<&Path>) -> PathBuf {
    if let Some(dir) = &config.gateway.state_dir {
        return config.base_dir().join(dir);
    }
    if let Some(dir) = fallback {
        return dir.to_path_buf();
    }
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("FAREBOX_STATE_DIR")
        .or_else(|| env("STATE_DIRECTORY"))
        .or_else(|| env("XDG_STATE_HOME").map(|d| d.join("farebox")))
        .or_else(|| env("HOME").map(|d| d.join(".local/state/farebox")))
        .unwrap_or_else(|| std::env::temp_dir().join("farebox"))
}

/// Builds a configuration, opening (or reusing) its backends.
async fn build(
    config: Arc<Config>,
    b: &mut Backends,
    metrics: &Arc<Metrics>,
) -> Result<Live, ConfigError> {
    let base = config.base_dir();
    // The store, and the free-tier counters in the same database.
    let key = match (&config.store.sqlite, &config.store.postgres) {
        (_, Some(pg)) => StoreKey::Postgres(
            pg.read(&base).map_err(|e| fail(&config, "store.postgres", e))?.expose().to_string(),
        ),
        (Some(file), None) => {
            StoreKey::Sqlite(state_dir(&config, b.state_dir.as_deref()).join(file))
        }
        (None, None) => StoreKey::Sqlite(
            state_dir(&config, b.state_dir.as_deref()).join("farebox-gateway.sqlite"),
        ),
    };
    if b.store.as_ref().is_none_or(|(k, _, _)| *k != key) {
        let opened = match &key {
            StoreKey::Sqlite(path) => {
                let store = farebox_store::SqliteStore::open(path)
                    .await
                    .map_err(|e| fail(&config, "store", e.to_string()))?;
                let counters =
                    GatewayDb::sqlite(path).await.map_err(|e| fail(&config, "store", e))?;
                tracing::info!(path = %path.display(), "store: SQLite");
                (Arc::new(store) as Arc<dyn farebox_store::Store>, counters)
            }
            StoreKey::Postgres(url) => {
                let store = farebox_store::PostgresStore::connect(url)
                    .await
                    .map_err(|e| fail(&config, "store.postgres", e.to_string()))?;
                let counters = GatewayDb::postgres(url)
                    .await
                    .map_err(|e| fail(&config, "store.postgres", e))?;
                tracing::info!("store: PostgreSQL");
                (Arc::new(store) as Arc<dyn farebox_store::Store>, counters)
            }
        };
        b.store = Some((key, opened.0, opened.1));
    }
    let (_, store, db) = b
        .store
        .as_ref()
        .map(|(k, s, c)| (k, s.clone(), c.clone()))
        .ok_or_else(|| fail(&config, "store", "not opened"))?;

    // Lightning: the dev network, kept while its section is unchanged.
    match &config.lightning {
        None => b.lightning = None,
        Some(section) => {
            if b.lightning.as_ref().is_none_or(|l| l.section != *section) {
                let remote = section
                    .remote_backend(&config.base_dir())
                    .map_err(|(key, why)| fail(&config, &key, why))?;
                b.lightning = Some(match remote {
                    Some(backend) => {
                        tracing::info!(backend = ?section.backend, "lightning: a real node");
                        DevLightning { section: section.clone(), backend, dev: None }
                    }
                    None => {
                        let network = DevNetwork::new();
                        let server = Arc::new(DevNode::random(&network, 0));
                        let wallet = Arc::new(DevNode::random(
                            &network,
                            section.dev.wallet_sats.saturating_mul(1000),
                        ));
                        tracing::info!("lightning: the embedded dev node (no real money)");
                        let backend = server.clone() as Arc<dyn LightningBackend>;
                        DevLightning {
                            section: section.clone(),
                            backend,
                            dev: Some((server, wallet)),
                        }
                    }
                });
            }
        }
    }
    let lightning_node = b.lightning.as_ref().map(|l| l.backend.clone());

    // EVM nodes.
    b.chains.retain(|name, (section, _)| config.chains.get(name) == Some(section));
    for (name, section) in &config.chains {
        if b.chains.contains_key(name) {
            continue;
        }
        let (url, shown) = match (&section.rpc, &section.rpc_url) {
            (Some(url), _) => (url.clone(), true),
            (None, Some(secret)) => (
                secret
                    .read(&base)
                    .map_err(|e| fail(&config, &format!("chains.{name}.rpc_url"), e))?
                    .expose()
                    .to_string(),
                false,
            ),
            (None, None) => return Err(fail(&config, &format!("chains.{name}"), "no rpc")),
        };
        let rpc =
            EvmRpc::connect_with_timeout(&url, Duration::from_secs(10)).await.map_err(|e| {
                // A URL from a secret may carry an API key: say what failed, not where.
                let why =
                    if shown { e.to_string() } else { "the node does not answer".to_string() };
                fail(
                    &config,
                    &format!("chains.{name}"),
                    format!("cannot reach the chain's RPC node: {why}"),
                )
            })?;
        if rpc.chain_id() != section.chain_id {
            return Err(fail(
                &config,
                &format!("chains.{name}.chain_id"),
                format!("the node is on chain {}, not {}", rpc.chain_id(), section.chain_id),
            ));
        }
        b.chains.insert(name.clone(), (section.clone(), rpc));
    }
    let chains: HashMap<String, EvmRpc> =
        b.chains.iter().map(|(k, (_, rpc))| (k.clone(), rpc.clone())).collect();

    // Rails.
    let public_url = config
        .gateway
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", config.gateway.listen));
    let ctx = crate::rails::RailContext {
        lightning: lightning_node.clone(),
        store: store.clone(),
        chains: &chains,
        public_url: public_url.clone(),
        ephemeral: &mut b.ephemeral,
    };
    let crate::rails::Rails { all: rails, l402 } =
        crate::rails::build(&config, ctx).map_err(|(key, e)| fail(&config, &key, e))?;
    let mut guard = Paywall::builder();
    for (_, rail) in &rails {
        guard = guard.shared_rail(rail.clone());
    }
    let guard = Arc::new(guard.build().map_err(|e| fail(&config, "rails", e.to_string()))?);

    // Upstreams: the configured ones, or the embedded demo.
    let mut upstreams: HashMap<String, Arc<Upstream>> = HashMap::new();
    if config.upstreams.is_empty() {
        let addr = match (b.demo_addr, b.demo_router.clone()) {
            (Some(addr), _) => addr,
            (None, Some(router)) => {
                let listener =
                    tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.map_err(|e| {
                        fail(&config, "upstreams", format!("starting the demo upstream: {e}"))
                    })?;
                let addr =
                    listener.local_addr().map_err(|e| fail(&config, "upstreams", e.to_string()))?;
                tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, router).await {
                        tracing::error!(error = %e, "demo upstream stopped");
                    }
                });
                tracing::info!(%addr, "no [upstreams] configured: serving the demo API as upstream \"demo\"");
                b.demo_addr = Some(addr);
                addr
            }
            (None, None) => {
                return Err(fail(
                    &config,
                    "upstreams",
                    "configure at least one [upstreams.<name>] (no demo upstream is built in here)",
                ));
            }
        };
        let section = demo_section(addr);
        let up =
            Upstream::new(DEMO_UPSTREAM, &section).map_err(|e| fail(&config, "upstreams", e))?;
        upstreams.insert(DEMO_UPSTREAM.into(), Arc::new(up));
    }
    for (name, section) in &config.upstreams {
        let up = Upstream::new(name, section)
            .map_err(|e| fail(&config, &format!("upstreams.{name}.url"), e))?;
        upstreams.insert(name.clone(), Arc::new(up));
    }

    // Routes, each priced one with a paywall of its own rails (or a pricer that builds them).
    let mut routes = Vec::new();
    for route in config.checked_routes() {
        let upstream = upstreams.get(&route.upstream).cloned().ok_or_else(|| {
            fail(&config, &format!("routes[{}].upstream", route.index), "unknown upstream")
        })?;
        let key = format!("routes[{}]", route.index);
        let route_rails: Vec<Arc<dyn farebox_core::Rail>> = rails
            .iter()
            .filter(|(name, _)| route.rails.iter().any(|r| r == name))
            .map(|(_, rail)| rail.clone())
            .collect();
        let pricing = if route.is_free() {
            Pricing::Free
        } else if route.dynamic.is_some() {
            let pricer = Pricer::new(config.clone(), &route, route_rails)
                .map_err(|e| fail(&config, &format!("{key}.pricer"), e))?;
            Pricing::Dynamic(Arc::new(pricer))
        } else {
            let mut builder = Paywall::builder();
            for rail in route_rails {
                builder = builder.shared_rail(rail);
            }
            for priced in route.priced_routes() {
                builder = builder.route(priced);
            }
            Pricing::Static(Arc::new(
                builder.build().map_err(|e| fail(&config, &key, e.to_string()))?,
            ))
        };
        routes.push(LiveRoute { label: route.label().into(), route, upstream, pricing });
    }

    let free_tier = config.free_tier.as_ref().map(|ft| {
        let header = ft.client_header.as_deref().and_then(|h| HeaderName::try_from(h).ok());
        (FreeTier::new(db.clone(), ft.requests, ft.window_secs), header)
    });
    let name = |s: &str| (!s.is_empty()).then(|| HeaderName::try_from(s).ok()).flatten();
    let h = &config.upstream_headers;
    let headers = PaidHeaderNames {
        rail: name(&h.rail),
        amount: name(&h.amount),
        asset: name(&h.asset),
        payer: name(&h.payer),
        reference: name(&h.reference),
        free_tier: name(&h.free_tier),
    };
    let reserved = [
        &headers.rail,
        &headers.amount,
        &headers.asset,
        &headers.payer,
        &headers.reference,
        &headers.free_tier,
    ]
    .into_iter()
    .flatten()
    .cloned()
    .collect();

    // Operations: the payment log, the admin token, discovery.
    let payments = PaymentLog::start(db.clone(), metrics.clone());
    b.writers.retain(|w| !w.has_ended());
    b.writers.push(payments.writer());
    let admin_token = match &config.admin {
        Some(admin) => Some(AdminToken::new(
            admin.token.read(&base).map_err(|e| fail(&config, "admin.token", e))?.expose(),
        )),
        None => None,
    };
    let discovery = if config.discovery.enabled {
        let checked: Vec<Route> = routes.iter().map(|r| r.route.clone()).collect();
        let x402 = rails.iter().find(|(n, _)| *n == "x402").map(|(_, r)| r);
        Some(
            Discovery::build(crate::discovery::Input {
                config: &config,
                routes: &checked,
                public_url: &public_url,
                x402,
                loaded_at: unix_now().map_err(|e| fail(&config, "gateway", e.to_string()))?,
            })
            .await,
        )
    } else {
        None
    };

    let every = Duration::from_secs(config.gateway.maintenance_interval_secs);
    // Refused at start when a rail cannot live with this interval (an MPP EVM escrow's grace
    // period): its upkeep would answer a forced close too late.
    let maintenance = guard
        .spawn_maintenance(every)
        .await
        .map_err(|e| fail(&config, "gateway.maintenance_interval_secs", e.to_string()))?;
    let mut upkeep = vec![AbortOnDrop(maintenance)];
    let limiter = Arc::new(RateLimiter::new());
    {
        let (db, limiter) = (db.clone(), limiter.clone());
        let keep_ms = i64::try_from(config.gateway.payment_log_days.saturating_mul(86_400_000))
            .unwrap_or(i64::MAX);
        let tier = free_tier.as_ref().map(|(t, _)| t.clone());
        upkeep.push(AbortOnDrop(tokio::spawn(async move {
            let mut sweep = tokio::time::interval(every);
            sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                sweep.tick().await;
                limiter.purge();
                if let Some(tier) = &tier
                    && let Ok(now) = unix_now()
                    && let Err(e) = tier.purge(now).await
                {
                    tracing::warn!(error = %e, "free-tier counters not purged");
                }
                let Ok(now_ms) = crate::now_ms() else { continue };
                if let Err(e) = db.purge_payments(now_ms.saturating_sub(keep_ms)).await {
                    tracing::warn!(error = %e, "old payment log rows not purged");
                }
            }
        })));
    }
    let instance =
        config.gateway.instance.clone().unwrap_or_else(|| config.gateway.listen.to_string());
    Ok(Live {
        trusted: config.trusted_proxies(),
        chains: chains.into_iter().collect(),
        limits: config.rate_limit.unwrap_or_default(),
        config,
        routes,
        guard,
        free_tier,
        reserved,
        headers,
        store,
        db,
        payments,
        seen: SeenTokens::new(),
        l402,
        limiter,
        admin_token,
        discovery,
        instance,
        lightning: lightning_node,
        upstreams: upstreams.into_values().collect(),
        _upkeep: upkeep,
    })
}

fn demo_section(addr: SocketAddr) -> UpstreamSection {
    let text = format!("url = \"http://{addr}\"");
    // The defaults of an [upstreams.<name>] section, with the demo's address.
    toml::from_str(&text).unwrap_or_else(|_| UpstreamSection {
        url: format!("http://{addr}"),
        connect_timeout_ms: 2_000,
        response_timeout_ms: 30_000,
        max_request_bytes: 16 << 20,
        max_response_bytes: 1 << 30,
        max_buffered_bytes: 16 << 20,
        preserve_host: false,
        health_path: None,
    })
}

/// The main listener's requests.
#[derive(Clone)]
struct MainListener(Arc<Gateway>);

impl crate::connection::Handler for MainListener {
    fn handle(
        &self,
        peer: SocketAddr,
        request: Request,
    ) -> impl Future<Output = Response<Body>> + Send {
        handle(self.0.clone(), peer, request)
    }
}

/// Every request on the main listener.
async fn handle(gw: Arc<Gateway>, peer: SocketAddr, request: Request) -> Response<Body> {
    let live = gw.live();
    let started = Instant::now();
    let inner = {
        let (gw, live) = (gw.clone(), live.clone());
        tower::service_fn(move |request: Request| {
            let (gw, live) = (gw.clone(), live.clone());
            async move { Ok::<_, Infallible>(dispatch(&gw, &live, peer, started, request).await) }
        })
    };
    let response =
        match PaywallLayer::shared(live.guard.clone()).layer(inner).oneshot(request).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
    // Requests no route took (refused paths, 404s) count under "-".
    let route = response.extensions().get::<RouteLabel>().map_or("-", |r| &r.0);
    gw.metrics.request(route, response.status().as_u16());
    response
}

/// The ops endpoints on their own listener.
async fn handle_ops(State(gw): State<Arc<Gateway>>, request: Request) -> Response<Body> {
    let live = gw.live();
    ops(&gw, &live, request.uri().path()).await
}

async fn ops(gw: &Gateway, live: &Live, path: &str) -> Response<Body> {
    match path.trim_end_matches('/') {
        "/healthz" => text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
        "/readyz" => ready(live).await,
        "/metrics" => {
            text(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", gw.metrics.render())
        }
        _ => problem(
            StatusCode::NOT_FOUND,
            "no_such_endpoint",
            "ops endpoints: /healthz, /readyz, /metrics",
        ),
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Ready only when every backend answers: the store, the Lightning node, each EVM node and each
/// upstream. The answer names each check and whether it passed (never a URL).
async fn ready(live: &Live) -> Response<Body> {
    const WITHIN: Duration = Duration::from_secs(3);
    let mut checks: Vec<(String, Result<(), String>)> = Vec::new();
    let store = async {
        let replay =
            tokio::time::timeout(WITHIN, live.store.get("farebox-gateway", "readyz")).await;
        match replay {
            Ok(Ok(_)) => live.db.ping().await,
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    };
    checks.push(("store".into(), store.await));
    if let Some(node) = &live.lightning {
        // A lookup of a hash no one issued: any answer (Unknown) means the node is there.
        let up = match tokio::time::timeout(WITHIN, node.invoice_state(&[0; 32])).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err("the Lightning node is unavailable".into()),
            Err(_) => Err("timed out".into()),
        };
        checks.push(("lightning".into(), up));
    }
    for (name, rpc) in &live.chains {
        let r = match tokio::time::timeout(WITHIN, rpc.block_number()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err("the node does not answer".into()),
            Err(_) => Err("timed out".into()),
        };
        checks.push((format!("chain:{name}"), r));
    }
    for up in &live.upstreams {
        checks.push((format!("upstream:{}", up.name), up.ready(WITHIN).await));
    }
    let ready = checks.iter().all(|(_, r)| r.is_ok());
    let body = serde_json::json!({
        "ready": ready,
        "checks": checks.iter().map(|(name, r)| serde_json::json!({
            "name": name,
            "ok": r.is_ok(),
            "error": r.as_ref().err(),
        })).collect::<Vec<_>>(),
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    text(status, "application/json", body.to_string())
}

/// Routes a canonical request: ops, discovery, a route, or 404.
async fn dispatch(
    gw: &Gateway,
    live: &Arc<Live>,
    peer: SocketAddr,
    started: Instant,
    request: Request,
) -> Response<Body> {
    let path = request.uri().path();
    let prefix = &live.config.ops.prefix;
    if live.config.ops.listen.is_none()
        && let Some(rest) = path.strip_prefix(prefix.as_str())
        && (rest.is_empty() || rest.starts_with('/'))
    {
        let rest = rest.to_string();
        let mut response = ops(gw, live, &rest).await;
        response.extensions_mut().insert(RouteLabel("ops".into()));
        return response;
    }
    if let Some(discovery) = &live.discovery
        && let Some(mut response) = discovery.serve(request.method(), path, request.uri().query())
    {
        response.extensions_mut().insert(RouteLabel("discovery".into()));
        return response;
    }
    let host = proxy::request_host(&request);
    let Some(index) =
        live.routes.iter().position(|r| r.route.matches(host.as_deref(), request.method(), path))
    else {
        return problem(
            StatusCode::NOT_FOUND,
            "no_route",
            "no route of this gateway serves this request",
        );
    };
    let route = &live.routes[index];
    let l402 = crate::l402_token::l402_credential(request.headers()).map(|(value, key)| match live
        .seen
        .served(&key)
    {
        Some(id) => Presented { key, id: Some(id), value: None },
        None => Presented { key, id: None, value: Some(value.clone()) },
    });
    let mut response = match rate_limit(gw, live, index, peer, l402.as_ref(), &request) {
        Some(refused) => refused,
        None => match &route.pricing {
            Pricing::Free => forward(&gw.metrics, live, index, peer, Vec::new(), request).await,
            _ => priced(gw, live, index, peer, started, l402, host, request).await,
        },
    };
    response.extensions_mut().insert(RouteLabel(route.label.clone()));
    response
}

/// The L402 credential a request presents.
struct Presented {
    /// The SHA-256 of its `Authorization` value.
    key: [u8; 32],
    /// Its identifier, when the gateway served a paid answer for this value before.
    id: Option<farebox_l402::Identifier>,
    /// The value, when it was not served before (its identifier is read once it is).
    value: Option<HeaderValue>,
}

impl Presented {
    /// The identifier it claims (not verified unless served before).
    fn claimed_id(&self) -> Option<farebox_l402::Identifier> {
        self.id.or_else(|| crate::l402_token::token_in(self.value.as_ref()?))
    }
}

/// Counts the request against its route's rate limits; the 429 when one is exceeded.
fn rate_limit(
    gw: &Gateway,
    live: &Live,
    index: usize,
    peer: SocketAddr,
    l402: Option<&Presented>,
    request: &Request,
) -> Option<Response<Body>> {
    let route = &live.routes[index];
    let own = route.route.rate_limit;
    let pick = |own: Option<crate::config::RateSection>,
                global: Option<crate::config::RateSection>| {
        match (own, global) {
            (Some(l), _) => Some((Scope::Route(index), l.limit())),
            (None, Some(l)) => Some((Scope::Global, l.limit())),
            (None, None) => None,
        }
    };
    let mut checks = Vec::with_capacity(2);
    if let Some((scope, limit)) = pick(own.per_ip, live.limits.per_ip) {
        let ip = proxy::client_ip(request.headers(), peer, &live.trusted);
        checks.push(("per_ip", scope, Key::Ip(ip), limit));
    }
    if let Some((scope, limit)) = pick(own.per_token, live.limits.per_token) {
        let key = match l402.and_then(Presented::claimed_id) {
            Some(id) => Some(id.token_id),
            None => request
                .headers()
                .iter()
                .find(|(n, v)| live.guard.is_payment_credential(n, v))
                .map(|(_, v)| Sha256::digest(v.as_bytes()).into()),
        };
        if let Some(key) = key {
            checks.push(("per_token", scope, Key::Token(key), limit));
        }
    }
    for (what, scope, key, limit) in checks {
        if let Err(limited) = live.limiter.check(scope, key, limit) {
            gw.metrics.rate_limited(&route.label, what);
            let mut r = problem(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many requests ({what} limit of this route); retry later"),
            );
            r.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(limited.retry_after_secs()));
            return Some(r);
        }
    }
    None
}

/// A priced route: the free tier, or its paywall in front of the proxy.
#[allow(clippy::too_many_arguments)]
async fn priced(
    gw: &Gateway,
    live: &Arc<Live>,
    index: usize,
    peer: SocketAddr,
    started: Instant,
    l402: Option<Presented>,
    host: Option<String>,
    request: Request,
) -> Response<Body> {
    let route = &live.routes[index];
    let label = route.label.clone();
    let carries_credential =
        request.headers().iter().any(|(n, v)| live.guard.is_payment_credential(n, v));
    if let (Some((tier, header)), true, false) =
        (&live.free_tier, route.route.free_tier, carries_credential)
    {
        let client = match header {
            Some(h) => request
                .headers()
                .get(h)
                .map(|v| format!("h:{}", String::from_utf8_lossy(v.as_bytes()))),
            None => {
                Some(format!("ip:{}", proxy::client_ip(request.headers(), peer, &live.trusted)))
            }
        };
        if let Some(client) = client {
            // A clock before 1970 cannot count a window: payment is asked for.
            let taken = match unix_now() {
                Ok(now) => tier.take(&client, now).await,
                Err(e) => Err(e.to_string()),
            };
            match taken {
                Ok(true) => {
                    gw.metrics.free_tier(&label);
                    let add = live
                        .headers
                        .free_tier
                        .iter()
                        .map(|n| (n.clone(), HeaderValue::from_static("1")))
                        .collect();
                    return forward(&gw.metrics, live, index, peer, add, request).await;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "free-tier counter unavailable: asking for payment");
                    gw.metrics.backend_error("store");
                }
            }
        }
    }
    let paywall = match &route.pricing {
        Pricing::Static(paywall) => paywall.clone(),
        Pricing::Dynamic(pricer) => {
            let facts =
                pricer.facts(request.method(), request.uri(), host.as_deref(), request.headers());
            let (priced, outcome) = pricer.price(request.method(), &facts).await;
            match outcome {
                Ok(true) => gw.metrics.pricer(&label, "cached"),
                Ok(false) => gw.metrics.pricer(&label, "priced"),
                Err(e) => {
                    tracing::warn!(route = %label, error = %e, "the pricer gave no price");
                    gw.metrics.pricer(&label, "failed");
                    gw.metrics.backend_error("pricer");
                }
            }
            match priced {
                Priced::At(paywall) => paywall,
                Priced::Free => {
                    return forward(&gw.metrics, live, index, peer, Vec::new(), request).await;
                }
                Priced::Refused => {
                    let mut r = problem(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "pricer_unavailable",
                        "this route's price cannot be determined right now; try again shortly",
                    );
                    r.headers_mut().insert(
                        http::header::RETRY_AFTER,
                        HeaderValue::from(crate::pricer::RETRY_AFTER.as_secs()),
                    );
                    return r;
                }
            }
        }
        Pricing::Free => {
            return problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "unpriced_route",
                "this route has no paywall",
            );
        }
    };
    // The gateway routed this request as priced: a paywall that does not price it would serve
    // it free. Never.
    if paywall.resource_for(request.method(), request.uri().path()).is_none() {
        tracing::error!(route = %label, "a priced route's paywall does not price the request; refused");
        return problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "unpriced_route",
            "the route's price does not cover this request",
        );
    }
    let method = request.method().as_str().to_string();
    let path = request.uri().path().to_string();
    let inner = {
        let live = live.clone();
        let metrics = gw.metrics.clone();
        let label = label.clone();
        tower::service_fn(move |request: Request| {
            let (live, metrics, label) = (live.clone(), metrics.clone(), label.clone());
            async move {
                let paid = request.extensions().get::<Paid>().cloned();
                let mut add = Vec::new();
                if let Some(paid) = &paid {
                    metrics.verification(paid.rail, started.elapsed());
                    metrics.paid_request(paid.rail, &label);
                    add = paid_headers(&live.headers, paid);
                }
                let mut response = forward(&metrics, &live, index, peer, add, request).await;
                if let Some(paid) = paid {
                    response.extensions_mut().insert(PaidWith(paid));
                }
                Ok::<_, Infallible>(response)
            }
        })
    };
    let response = match PaywallLayer::shared(paywall).layer(inner).oneshot(request).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    match response.status() {
        StatusCode::PAYMENT_REQUIRED => gw.metrics.payment_required(&label),
        StatusCode::SERVICE_UNAVAILABLE
            if response.extensions().get::<UpstreamLatency>().is_none() =>
        {
            gw.metrics.backend_error("payment")
        }
        _ => {}
    }
    if let (Some(receipt), Some(PaidWith(paid))) =
        (response.extensions().get::<Receipt>(), response.extensions().get::<PaidWith>())
        && receipt.amount.amount > 0
    {
        // The rail verified this credential: its identifier is read once per value.
        let token = l402.filter(|_| paid.rail == "l402").and_then(|p| match p.id {
            Some(id) => Some(id),
            None => live.seen.serve(p.key, p.value.as_ref()?),
        });
        let row = PaymentRow {
            id: random_id(),
            // The rail has read the clock to verify this payment already.
            at_ms: crate::now_ms().unwrap_or_default(),
            rail: paid.rail.to_string(),
            route: label.to_string(),
            method,
            path,
            asset: crate::rails::asset_label(&receipt.amount),
            amount: receipt.amount.amount.to_string(),
            reference: receipt.reference.clone(),
            payer: paid.payer.clone(),
            token_id: token.map(|id| hex::encode(id.token_id)),
            instance: live.instance.clone(),
        };
        let kind = payment_kind(gw, live, token, &row).await;
        if kind == Kind::Payment {
            gw.metrics.payment(&row.rail, &row.route, &row.asset, receipt.amount.amount);
        }
        live.payments.record(Logged { row, kind });
    }
    response
}

/// Whether a paid answer is a payment: always, except for an L402 token, which is a payment at
/// its first paid answer on any instance (claimed in the token table, once per token here).
async fn payment_kind(
    gw: &Gateway,
    live: &Live,
    token: Option<farebox_l402::Identifier>,
    row: &PaymentRow,
) -> Kind {
    let Some(id) = token else {
        return Kind::Payment;
    };
    if live.seen.is_claimed(&id.token_id) {
        return Kind::TokenUse;
    }
    match live.db.claim_token(row).await {
        Ok(first) => {
            live.seen.claimed(id.token_id);
            if first { Kind::Payment } else { Kind::TokenUse }
        }
        Err(e) => {
            // Served all the same (the rail verified the payment); the payment log claims it.
            tracing::warn!(error = %e, "L402 token claim unavailable: left to the payment log");
            gw.metrics.backend_error("store");
            Kind::Unclaimed
        }
    }
}

/// A payment log id: a random prefix per process and a counter (unique across instances
/// without a random draw per request), in hex.
fn random_id() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static PREFIX: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        use rand::RngCore;
        let mut bytes = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        hex::encode(bytes)
    });
    format!("{prefix}{:016x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn paid_headers(names: &PaidHeaderNames, paid: &Paid) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    let mut add = |name: &Option<HeaderName>, value: String| {
        if let (Some(name), Ok(value)) = (name, HeaderValue::try_from(value)) {
            out.push((name.clone(), value));
        }
    };
    add(&names.rail, paid.rail.to_string());
    add(&names.amount, paid.amount.amount.to_string());
    add(&names.asset, crate::rails::asset_label(&paid.amount));
    add(&names.reference, paid.reference.clone());
    if let Some(payer) = &paid.payer {
        add(&names.payer, payer.clone());
    }
    out
}

/// Forwards to the route's upstream.
async fn forward(
    metrics: &Metrics,
    live: &Live,
    index: usize,
    peer: SocketAddr,
    add: Vec<(HeaderName, HeaderValue)>,
    request: Request,
) -> Response<Body> {
    let route = &live.routes[index];
    let guard = live.guard.clone();
    let withhold = move |n: &HeaderName, v: &HeaderValue| guard.is_payment_credential(n, v);
    let f = Forward {
        upstream: &route.upstream,
        peer,
        trusted: &live.trusted,
        hold_until_end: route.route.settle == Settle::AfterEnd,
        withhold: &withhold,
        reserved: &live.reserved,
        add,
    };
    let response = proxy::forward(f, request).await;
    match response.extensions().get::<UpstreamLatency>() {
        Some(UpstreamLatency(took)) => metrics.upstream(&route.upstream.name, *took),
        None if matches!(
            response.status(),
            StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT
        ) =>
        {
            metrics.backend_error("upstream")
        }
        None => {}
    }
    response
}
