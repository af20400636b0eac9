//! The x402 rail of farebox: the protocol layer.
//!
//! x402 answers an unpaid request with HTTP 402 and a list of payment requirements; the client
//! signs a payment (for the `exact` scheme on EVM chains, a USDC EIP-3009
//! `transferWithAuthorization`) and retries with it in a header; a facilitator verifies and
//! settles the payment on chain.
//!
//! This crate holds the wire formats and the checks that need neither a chain nor a signature:
//!
//! - [`bazaar`]: the discovery extension every `PAYMENT-REQUIRED` carries.
//! - [`codec`]: the header encoding (standard base64 of compact JSON), bounded and typed.
//! - [`v1`]: protocol version 1 (`X-PAYMENT`, network names, `maxAmountRequired`).
//! - [`v2`]: protocol version 2 (`PAYMENT-REQUIRED` / `PAYMENT-SIGNATURE` / `PAYMENT-RESPONSE`,
//!   CAIP-2 networks, `amount`).
//! - [`network`]: v1 network names and their CAIP-2 ids.
//! - [`facilitator_api`]: bodies of the facilitator's `/verify`, `/settle` and `/supported`.
//! - [`exact_evm`]: the `exact` scheme's EIP-3009 payload and its off-chain checks.
//! - [`reason`]: the error reason codes facilitators and servers report.
//! - [`rail`]: [`X402Rail`], the server side; `client` (feature `client`): `X402Wallet`, the
//!   client side for `farebox-client`'s middleware.
//!
//! EIP-712 digests, signature recovery and RPC live in `farebox-evm`; the facilitator that
//! combines both is built on top of the two crates.

#![forbid(unsafe_code)]

pub mod bazaar;
#[cfg(feature = "client")]
pub mod client;
pub mod codec;
pub mod config;
pub mod exact_evm;
pub mod facilitator;
pub mod facilitator_api;
pub mod network;
pub mod rail;
pub mod reason;
pub mod v1;
pub mod v2;
mod wire;

pub use codec::{CodecError, decode_header, encode_header};
pub use config::{X402Config, X402ConfigBuilder, X402ConfigError};
pub use rail::{Reconciled, X402Rail};
pub use reason::Reason;
pub use wire::{Amount, AmountError, Payload, Version};
