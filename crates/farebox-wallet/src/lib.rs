//! # farebox-wallet
//!
//! The client side of a payment rail, as a contract: what a rail's wallet implements so that
//! `farebox-client`'s middleware (and `farebox pay`) can pay with it, without that middleware
//! knowing any rail. The server side of the same contract is `farebox_core::Rail`.
//!
//! | item | for |
//! |---|---|
//! | [`Wallet`] | recognise the offers in a 402, pay one into a [`Proof`], hear the server's answer |
//! | [`PaymentRequired`], [`Offer`], [`Funding`], [`Proof`] | what a wallet reads and hands back |
//! | [`Accounts`], [`Refund`] | where a wallet credits money that comes back (a session's refund) |
//! | [`ClientError`] | the typed failures every wallet and the middleware report |
//! | [`WalletPlugin`], [`RailSettings`] | how a wallet file's `[rails.<name>]` table becomes a rail's wallet |
//!
//! Each rail crate implements [`Wallet`] behind its `client` feature (`farebox_l402::client`,
//! `farebox_x402::client`, `farebox_mpp::client`); choosing among offers, the budget and the
//! ledger are the middleware's.
#![forbid(unsafe_code)]

mod error;
mod plugin;
mod wallet;

pub use error::{ClientError, Overclaim};
pub use plugin::{RailSettings, WalletPlugin};
pub use wallet::{Accounts, Funding, Offer, PaymentRequired, Proof, Refund, Wallet};
