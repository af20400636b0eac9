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
//! The middleware, the budget and the ledger name no rail, and this crate depends on none: each
//! rail's wallet lives in its rail crate behind its `client` feature, implementing the
//! [`Wallet`] contract of `farebox-wallet` (`farebox_l402::client::L402Wallet`,
//! `farebox_x402::client::X402Wallet`, `farebox_mpp::client::MppWallet` for charges and
//! sessions). A Lightning-only agent depends on this crate and `farebox-l402` with `client`,
//! and compiles no EVM code. For one dependency instead, this crate's `l402`, `x402` and `mpp`
//! features re-export each rail's wallet in [`rails`] (`--features l402` compiles no alloy).
//!
//! ```no_run
//! # async fn run(node: std::sync::Arc<dyn farebox_lightning::LightningBackend>) -> Result<(), Box<dyn std::error::Error>> {
//! use farebox_client::{Budget, PaymentMiddleware};
//! use farebox_l402::client::L402Wallet;
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
mod events;
mod middleware;
mod policy;
#[cfg(feature = "sqlite")]
mod sqlite_store;

/// The rails' wallets, each behind the feature of its name (the rail crate's `client` half).
pub mod rails {
    #[cfg(feature = "l402")]
    pub use farebox_l402::client::L402Wallet;
    #[cfg(feature = "mpp")]
    pub use farebox_mpp::client::{
        MppWallet, Sessions, session::EvmSessionPolicy, session::LightningSessionPolicy,
    };
    #[cfg(feature = "x402")]
    pub use farebox_x402::client::X402Wallet;
}

pub use budget::{
    Budget, Cap, Caps, DAY, EntryKind, HOUR, Ledger, LedgerEntry, Reservation, Scope, window_name,
};
pub use budget_store::{
    BudgetStore, Claim, Clock, LedgerFilter, ManualClock, MemoryStore, Spend, SystemClock,
    Unsettled, Usage,
};
pub use events::{Event, Observer};
pub use farebox_wallet::{
    Accounts, Funding, Offer, PaymentRequired, Proof, RailSettings, Refund, Wallet, WalletPlugin,
};
pub use farebox_wallet::{ClientError, Overclaim};
pub use middleware::PaymentMiddleware;
pub use policy::{Choice, Policy, Quote, QuotedOffer};

#[cfg(feature = "sqlite")]
pub use sqlite_store::SqliteStore;

/// A reqwest client with `payer` installed.
pub fn paying_client(
    client: reqwest::Client,
    payer: PaymentMiddleware,
) -> reqwest_middleware::ClientWithMiddleware {
    reqwest_middleware::ClientBuilder::new(client).with(payer).build()
}
