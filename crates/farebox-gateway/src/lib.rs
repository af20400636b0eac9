//! # farebox-gateway
//!
//! A reverse proxy that sells any HTTP API on every rail farebox has (L402, x402, MPP), from one
//! TOML file: `farebox serve --config farebox.toml`.
//!
//! | module | for |
//! |---|---|
//! | [`config`] | the TOML schema, strict parsing, and every check made before start (with the file, line, column and key path of each problem) |
//! | [`rails`] | the `[rails.*]` sections and the one function that builds them into rails |
//! | [`gateway`] | the running gateway: backends, routes, the request path, reload, graceful shutdown |
//! | [`connection`] | the worker threads of the main listener, and each client connection's own upstream connections |
//! | [`proxy`] | forwarding: streaming bodies, hop-by-hop headers, `X-Forwarded-*`, WebSocket, timeouts |
//! | [`free_tier`] | N free requests per client per window, counted in the shared database |
//! | [`pricer`] | dynamic prices from an HTTP pricer the operator runs, cached, with a fallback |
//! | [`ratelimit`] | per-IP and per-token rate limits (429), in memory per instance |
//! | [`discovery`] | `/openapi.json` (MPP discovery), `/discovery/resources` (x402 Bazaar), `/llms.txt` |
//! | [`admin`] | the admin API and the status page, on their own listener, behind a bearer token |
//! | [`payments`] | the payment log the admin API and the status page read, written off the request path, 50 ms per commit |
//! | [`l402_token`] | the L402 token a request presents (rate limits and the payment log count by it), and the tokens this instance has served |
//! | [`db`] | the gateway's own tables in the store's database, and their migrations |
//! | [`metrics`] | Prometheus counters and histograms |
//!
//! ## Decisions an operator should know
//!
//! * **When a priced response is charged** is the route's `settle`: `before-first-byte` (the
//!   default) settles once the upstream's status and headers arrived with a status below 400,
//!   then streams the body — a body that breaks off later was still paid for, and SSE and
//!   WebSocket routes work this way; `after-end` holds the whole answer back (up to
//!   `max_buffered_bytes`) and settles only once it is complete, so a broken body is a 502 that
//!   costs nothing, at the price of not streaming; `before-upstream` settles before the upstream
//!   is asked at all (routes with side effects).
//! * **Ops endpoints** (`/healthz`, `/readyz`, `/metrics`) are on the main listener under the
//!   reserved prefix `[ops] prefix` (default `/_farebox`, which no route can take), or only on a
//!   listener of their own when `[ops] listen` is set (keep metrics off the public port that way).
//! * **Discovery** (`/openapi.json`, `/discovery/resources`, `/llms.txt`) is generated from the
//!   configuration and takes those three paths before any route (`[discovery] enabled = false`
//!   gives them back to the routes).
//! * **The admin API and status page** are only on `[admin] listen`, behind a bearer token.
//! * **Rate limits** are counted in memory per instance (see [`ratelimit`] for why); the free
//!   tier and the payment log are in the shared database; L402 revocations are in the store, kept
//!   by the L402 rail, which checks them on every verify.
//! * **An L402 token is one payment**: revenue and the payment log count it once, at its first
//!   paid answer on any instance; every request it pays for counts as a paid request.
//! * **The payment log is written 50 ms at a time** (one commit per batch): a crash loses the
//!   log entries of the last 50 ms, never a payment's protection against replay, which is the
//!   rails' business (see [`payments`]); a graceful shutdown writes them before it ends. The Prometheus counters count each paid answer as it
//!   is given.
//! * **Threads and connections**: `[gateway] workers` threads (one per CPU by default) serve
//!   the main listener, a connection staying on one; each client connection keeps its own
//!   connection to each upstream it uses, closed with it (an idle client is let go after 30 s).
//! * **Requests no route matches are refused (404)**, never passed through free.
//! * **`X-Forwarded-For`/`-Proto`/`-Host`** are written by the gateway and a client's own are
//!   dropped, unless the peer is in `trusted_proxies`; `Forwarded` is not written, and a
//!   client's is dropped likewise.
//! * **Secrets** come from files or environment variables only (`key_file`, `key_env`).
//! * **SIGHUP reloads** routes, prices, rails, upstreams and the free tier without dropping a
//!   connection; the listeners stay as started, and backends whose section did not change (the
//!   store, the dev Lightning network and the dev wallet `farebox serve` serves, EVM nodes) are
//!   kept, so tokens and balances survive it.
//! * **EVM rails need their chain at start**: the gateway refuses to start when a configured
//!   `[chains.<name>]` node does not answer.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod connection;
pub mod db;
pub mod discovery;
pub mod free_tier;
pub mod gateway;
pub mod l402_token;
pub mod metrics;
pub mod payments;
pub mod pricer;
pub mod proxy;
pub mod rails;
pub mod ratelimit;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::{Config, ConfigError, Issue};
pub use gateway::{Gateway, GatewayOptions};

/// Unix milliseconds now, as the database stores them.
pub(crate) fn now_ms() -> Result<i64, farebox_core::time::ClockError> {
    farebox_core::time::unix_now_ms().map(|ms| i64::try_from(ms).unwrap_or(i64::MAX))
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Reloads `gateway`'s configuration file on every SIGHUP, for as long as the process runs. A
/// configuration that is refused is logged, and the one in force keeps serving.
pub fn reload_on_sighup(gateway: std::sync::Arc<Gateway>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: reloading is off");
            return;
        };
        while hup.recv().await.is_some() {
            match gateway.reload_from_file().await {
                Ok(()) => {}
                Err(e) => {
                    tracing::error!("configuration refused; the previous one keeps serving:\n{e}")
                }
            }
        }
    });
}
