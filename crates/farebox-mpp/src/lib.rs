//! # farebox-mpp
//!
//! The MPP rail: the `Payment` HTTP authentication scheme (`draft-httpauth-payment-00`, the
//! Machine Payments Protocol) with the `charge` intent over Lightning and over EVM tokens (EIP-3009).
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
//! | [`jcs`] | RFC 8785 canonical JSON (integers only) and base64url without padding |
//! | [`challenge`] | [`Challenge`]: writing and parsing `WWW-Authenticate: Payment`; [`ChallengeKey`]: the HMAC-bound id |
//! | [`credential`] | [`Credential`]: `Authorization: Payment <token>` |
//! | [`receipt`] | [`PaymentReceipt`]: the `Payment-Receipt` header |
//! | [`problem`] | MPP problem types (`https://paymentauth.org/problems/…`) as `PaymentError`s |
//! | [`digest`] | the `digest` body binding (SDK and RFC 9530 forms) |
//! | [`lightning_charge`] | the `lightning` method's `charge` request and payload |
//! | [`evm_charge`] | the `evm` method's `charge` request and EIP-3009 `authorization` payload |
//! | [`rail`] | [`MppRail`], the farebox `Rail` |
//! | [`time`] | RFC 3339 for `expires` and receipt timestamps |
//!
//! Decisions where the specification and the SDKs differ (the SDKs win, for interop):
//! the credential envelope is written in the SDKs' member order rather than JCS; the body digest
//! is written `sha-256=<b64>` and both forms are accepted; the 8-slot id with `header=` (MPPX
//! PR #821) is supported; an expired challenge answers `payment-expired`; a replayed one
//! `invalid-challenge` (as the core spec's table: "used challenge id").
#![forbid(unsafe_code)]

pub mod challenge;
pub mod credential;
pub mod digest;
pub mod evm_charge;
pub mod jcs;
pub mod lightning_charge;
pub mod problem;
pub mod rail;
pub mod receipt;
pub mod time;

pub use challenge::{
    Challenge, ChallengeError, ChallengeKey, ChallengeParams, IdSlots, parse_www_authenticate,
};
pub use credential::{Credential, CredentialError, EchoedChallenge};
pub use evm_charge::EvmChargeRequest;
pub use lightning_charge::LightningChargeRequest;
pub use problem::ProblemType;
pub use rail::{ConfigError, EvmChargeConfig, MppConfig, MppRail};
pub use receipt::{PAYMENT_RECEIPT, PaymentReceipt};
