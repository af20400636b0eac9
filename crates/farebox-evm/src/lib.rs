//! EVM support for farebox: what the x402 rail (EIP-3009 USDC payments) and the MPP EVM
//! methods need from a chain.
//!
//! | module | concern |
//! |---|---|
//! | [`network`] | CAIP-2 `eip155:<id>` ids, x402 v1 network names, the known networks |
//! | [`token`] | [`token::TokenInfo`]: a token's symbol, decimals and EIP-712 domain, checked once for every method |
//! | [`usdc`] | known USDC deployments (address, EIP-712 name / version, decimals), as defaults |
//! | [`eip3009`] | `TransferWithAuthorization`: EIP-712 domain, digest, signing, recovery |
//! | [`contracts`] | bindings for the project's Solidity contracts, from `artifacts/*.json` |
//! | [`rpc`] | [`EvmRpc`], a JSON-RPC client: reads, one-call simulation, settlement, receipts |
//! | [`anvil`] | a launcher for a local anvil chain, for tests and the demo |
//!
//! Verification is local and cheap: [`eip3009::signing_hash`] with a cached domain separator
//! and [`eip3009::recover`] (libsecp256k1 through alloy-primitives' `secp256k1` feature) cost
//! about 60 µs together. Everything that needs the chain goes through [`EvmRpc`], whose errors
//! tell "the node could not be reached" ([`EvmError::Unavailable`]: fail closed, 503) apart
//! from "the chain said no" ([`EvmError::Reverted`]).
//!
//! ```
//! use farebox_evm::eip3009::{self, TokenDomain, TransferWithAuthorization};
//! use farebox_evm::usdc;
//!
//! let domain = usdc::BASE_SEPOLIA.domain();
//! let auth = TransferWithAuthorization::default();
//! let digest = eip3009::signing_hash(&domain.separator(), &auth);
//! assert!(eip3009::recover(&digest, &[0u8; 65]).is_err());
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod address;
pub mod anvil;
pub mod contracts;
pub mod eip3009;
mod error;
pub mod network;
pub mod rpc;
pub mod token;
pub mod usdc;

pub use alloy::primitives::{Address, B256, Bytes, TxHash, U256};
pub use alloy::signers::local::PrivateKeySigner;
pub use error::EvmError;
pub use rpc::{EvmRpc, ReceiptOutcome};
