//! # farebox-client
//!
//! Pays for HTTP requests that answer `402 Payment Required`, within a budget.
//!
//! [`PaymentMiddleware`] is a `reqwest_middleware` middleware: on a 402 it collects the offers
//! its [`Wallet`]s can pay, ranks them by its [`Policy`] (rail preference, allowed hosts, a cap
//! per call), keeps the first one the [`Budget`] allows ([`Caps`] per asset: per request, per
//! host, per rolling window and in total, reserved *before* paying), pays, retries once with the
//! proof, and records the payment in the [`Ledger`]. [`PaymentMiddleware::quote`] makes the same
//! choice and pays nothing. Reusable proofs (L402 tokens) are kept per origin and sent up front
//! next time, so a service is paid once per token, not once per request.
//!
//! The budget and the ledger live in a [`BudgetStore`]: [`MemoryStore`] by default, or
//! [`SqliteStore`] (feature `sqlite`, on by default) so that caps hold across processes and
//! restarts.
//!
//! Each rail's wallet is a feature, all on by default: `l402` (`L402Wallet`), `x402`
//! (`X402Wallet`) and `mpp` (`MppWallet`, charges and sessions). The middleware, the budget and
//! the ledger name no rail, so `default-features = false, features = ["l402"]` builds a
//! Lightning-only client without any EVM code.
//!
//! ```no_run
//! # async fn run(node: std::sync::Arc<dyn farebox_lightning::LightningBackend>) -> Result<(), Box<dyn std::error::Error>> {
//! use farebox_client::{Budget, L402Wallet, PaymentMiddleware};
//! use farebox_core::Money;
//!
//! let budget = Budget::new().allow(Money::sats(100), Money::sats(5_000))?;
//! let payer = PaymentMiddleware::new(budget).wallet(L402Wallet::new(node, 10_000));
//! let client = farebox_client::paying_client(reqwest::Client::new(), payer);
//! let joke = client.get("http://127.0.0.1:8402/joke").send().await?.text().await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod budget;
mod budget_store;
mod error;
mod events;
#[cfg(feature = "l402")]
mod l402;
mod middleware;
#[cfg(feature = "mpp")]
mod mpp;
#[cfg(feature = "mpp")]
pub mod mpp_session;
mod policy;
#[cfg(feature = "sqlite")]
mod sqlite_store;
mod wallet;
#[cfg(feature = "x402")]
mod x402;

pub use budget::{
    Budget, Cap, Caps, DAY, EntryKind, HOUR, Ledger, LedgerEntry, Reservation, Scope, window_name,
};
pub use budget_store::{
    BudgetStore, Claim, Clock, LedgerFilter, ManualClock, MemoryStore, Spend, SystemClock,
    Unsettled, Usage,
};
pub use error::{ClientError, Overclaim};
pub use events::{Event, Observer};
#[cfg(feature = "l402")]
pub use l402::L402Wallet;
pub use middleware::PaymentMiddleware;
#[cfg(feature = "mpp")]
pub use mpp::{MppWallet, Sessions};
#[cfg(feature = "mpp")]
pub use mpp_session::{ClosedSession, EvmSessionPolicy, LightningSessionPolicy};
pub use policy::{Choice, Policy, Quote, QuotedOffer};
pub use wallet::{Funding, Offer, PaymentRequired, Proof, Wallet};
#[cfg(feature = "x402")]
pub use x402::X402Wallet;

#[cfg(feature = "sqlite")]
pub use sqlite_store::SqliteStore;

/// A reqwest client with `payer` installed.
pub fn paying_client(
    client: reqwest::Client,
    payer: PaymentMiddleware,
) -> reqwest_middleware::ClientWithMiddleware {
    reqwest_middleware::ClientBuilder::new(client).with(payer).build()
}
