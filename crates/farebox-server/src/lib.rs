//! # farebox-server
//!
//! A tower [`Layer`](tower::Layer) that puts a price on routes of any HTTP service (axum,
//! hyper, tonic-web…), using the payment rails you configure.
//!
//! ```text
//!  client ──► PaywallLayer ──► your handler
//!               │ route priced?  no ──► straight through, free
//!               │ no credential       ──► 402: every rail's challenge in one response
//!               │ bad credential      ──► fresh 402 + problem+json saying why
//!               │ backend down        ──► 503 + Retry-After (never served free)
//!               │ verified            ──► handler (sees a `Paid` extension)
//!               │                        └─ status < 400 ──► settle ──► receipt headers
//! ```
//!
//! ```no_run
//! # async fn demo(rail: impl farebox_core::Rail) -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{routing::get, Router};
//! use farebox_core::{Money, Price};
//! use farebox_server::{Paywall, PaywallLayer, PricedRoute};
//!
//! let paywall = Paywall::builder()
//!     .rail(rail)
//!     .route(PricedRoute::new(Some(http::Method::GET), "/joke", Price::one(Money::sats(10)))?)
//!     .build()?;
//! let app = Router::new()
//!     .route("/joke", get(|| async { "a paid joke" }))
//!     .layer(PaywallLayer::new(paywall));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8402").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! See `examples/` for runnable programs.
//!
//! With the `testing` feature, the `testing` module is the rail contract kit: any `Rail` checked behind
//! a real paywall, in-process (challenges, garbage, the price, single use, release, settlement
//! failure, outages). Every rail runs it in its `tests/contract.rs`.
#![forbid(unsafe_code)]

mod layer;
mod paywall;
mod routes;
#[cfg(feature = "testing")]
pub mod testing;

pub use layer::{Paid, PaywallLayer, PaywallService};
pub use paywall::{
    MaintenanceError, Paywall, PaywallBuilder, PaywallError, UPKEEP_INTERVALS_PER_DEADLINE,
};
pub use routes::{PricedRoute, RouteError};
