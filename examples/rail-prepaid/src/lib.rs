//! # farebox-rail-prepaid
//!
//! A fourth payment rail, written from outside farebox the way any rail author would: this
//! crate depends on `farebox-core` (the server's [`Rail`](farebox_core::Rail) contract) and, for
//! its wallet, on `farebox-wallet` (the client's `Wallet` contract), and no other farebox crate
//! changed for it.
//!
//! A seller sells **credit codes**: a value in one asset, an expiry, signed with the seller's
//! Ed25519 key ([`code`]). A buyer's agent answers a 402 with one (`Authorization: Prepaid
//! <code>`), and the server debits the route's price from the code's balance, which it keeps in
//! a shared [`SessionStore`](farebox_core::SessionStore) so that no code is spent twice, across
//! concurrent requests, restarts and servers.
//!
//! | file | what it holds |
//! |---|---|
//! | [`code`] | the code's bytes, its signature and its reading rules |
//! | [`rail`] | [`PrepaidRail`]: the challenge, the verification and debit, the receipt and the credit-back (feature `server`) |
//! | [`wallet`] | `PrepaidWallet`: recognises the seller's challenge, pays with a code, keeps its own count (feature `client`) |
//! | `conformance` | `PrepaidProbe`: the rail's probe for `farebox-conformance`, with `checks/prepaid.json` and `schemas/` (feature `conformance`) |
//!
//! Put [`PrepaidRail`] in a `farebox_server::Paywall` next to the other rails, add a
//! `PrepaidWallet` to a `farebox_client::PaymentMiddleware`, and check the rail with the
//! contract kit (`farebox_server::testing`), as `tests/contract.rs` does; check a server that
//! sells on it with the conformance suite and `PrepaidProbe`, as `tests/conformance.rs` does.
#![forbid(unsafe_code)]

pub mod code;
#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "server")]
pub mod rail;
#[cfg(feature = "client")]
pub mod wallet;

pub use code::{CodeError, CreditCode, SCHEME};
#[cfg(feature = "server")]
pub use rail::{PREPAID_RECEIPT, PrepaidRail};
#[cfg(feature = "client")]
pub use wallet::{PrepaidWallet, WALLET_PLUGIN};
