//! # farebox-mpp
//!
//! The MPP rail: the `Payment` HTTP authentication scheme (`draft-httpauth-payment-00`, the
//! Machine Payments Protocol) with the `charge` intent over Lightning and over EVM tokens
//! (EIP-3009), and the `session` intent over an EVM payment channel (`draft-evm-session-00`,
//! cumulative EIP-712 vouchers against an on-chain deposit) and over a Lightning prepaid balance
//! (`draft-lightning-session-00`).
//!
//! ```text
//! GET /data                      ──►  402  WWW-Authenticate: Payment id="…", realm="…",
//!                                          method="lightning", intent="charge",
//!                                          request="<b64url JCS>", expires="…", opaque="…"
//! (client pays the BOLT11 invoice in `request`)
//! GET /data
//! Authorization: Payment <b64url {"challenge": {…echoed…}, "payload": {"preimage": "…"}}>
//!                                ──►  200  Payment-Receipt: <b64url {"status":"success",…}>
//! ```
//!
//! | module | for |
//! |---|---|
//! | [`accept_payment`] | the client's `Accept-Payment` preferences, and choosing offers by them |
//! | [`jcs`] | RFC 8785 canonical JSON and the one (canonical) base64url decoder |
//! | [`challenge`] | [`Challenge`]: writing and parsing `WWW-Authenticate: Payment`; [`ChallengeKey`]: the HMAC-bound id |
//! | [`credential`] | [`Credential`]: `Authorization: Payment <token>` |
//! | [`receipt`] | [`PaymentReceipt`]: the `Payment-Receipt` header |
//! | [`problem`] | MPP problem types (`https://paymentauth.org/problems/…`) as `PaymentError`s |
//! | [`digest`] | the `digest` body binding (SDK and RFC 9530 forms) |
//! | [`lightning`] | the `lightning` method, one file per intent for the wire (`charge.rs`, `session.rs`) and one for its server side (`charge/server.rs`, `session/server.rs`) |
//! | [`evm`] | the `evm` method, laid out the same way, plus session vouchers and the escrow contract's calls |
//! | [`rail`] | [`MppRail`], the farebox `Rail`: the envelope checks every method × intent shares, and the `Intent` trait each pair's server side implements |
//! | `client` | (feature `client`) `MppWallet`, the `farebox_wallet::Wallet` that pays charges and opens, tops up and closes sessions; `client::session` keeps the sessions it has open |
//!
//! Decisions where the specification and the SDKs differ (the SDKs win, for interop):
//! the credential envelope is written in the SDKs' member order rather than JCS; the body digest
//! is written `sha-256=<b64>` and both forms are accepted; the 8-slot id with `header=` (MPPX
//! PR #821) is supported; an expired challenge answers `payment-expired`; a replayed one
//! `invalid-challenge` (as the core spec's table: "used challenge id").
//!
//! Session decisions: a session credential may echo any unexpired challenge of this realm
//! (sessions are not bound to one route: each request is charged its own route's price); an
//! EVM voucher below the accepted one is refused (the Tempo rule) rather than ignored; the payee
//! closes with `closeWithCapture` so it takes `max(spent, settled)`, never an unearned
//! pre-authorization; a Lightning `bearer` may echo an expired challenge (its proof is the
//! preimage), `open` and `topUp` may not, and each of their challenges counts once.
#![forbid(unsafe_code)]

pub mod accept_payment;
pub mod challenge;
#[cfg(feature = "client")]
pub mod client;
pub mod credential;
pub mod digest;
pub mod evm;
mod fields;
pub mod jcs;
pub mod lightning;
pub mod problem;
pub mod rail;
pub mod receipt;
/// RFC 3339 timestamps (`expires`, receipt `timestamp`): the core's.
pub use farebox_core::time;

pub use challenge::{
    Challenge, ChallengeError, ChallengeKey, ChallengeParams, IdSlots, PaymentChallenges,
    parse_www_authenticate, read_www_authenticate, read_www_authenticate_from,
};
pub use credential::{Credential, CredentialError, EchoedChallenge};
pub use evm::charge::EvmChargeRequest;
pub use lightning::charge::LightningChargeRequest;
pub use problem::ProblemType;
pub use rail::{
    ConfigError, EvmChargeConfig, EvmChargeConfigBuilder, EvmSessionConfig,
    EvmSessionConfigBuilder, LightningSessionConfig, MppConfig, MppRail, MppRailBuilder,
};
pub use receipt::{PAYMENT_RECEIPT, PaymentReceipt};
