//! The facilitator: verifies x402 payments and settles them on chain.
//!
//! One trait, [`Facilitator`], with three faces:
//!
//! - [`local`]: in-process, against an EVM node (what `farebox facilitator` serves and what a
//!   server that holds its own gas key embeds);
//! - [`http_client::RemoteFacilitator`]: a client of any facilitator's HTTP API (farebox's, the
//!   reference TypeScript one, x402-rs…);
//! - [`http_server::router`]: the HTTP API (`POST /verify`, `POST /settle`, `GET /supported`)
//!   over any facilitator.
//!
//! A facilitator answers "invalid" or "failed" in its response bodies. [`FacilitatorError`] is
//! for not answering at all: the rail then refuses the request with 503 (fail closed). Of its
//! kinds, only [`FacilitatorError::Unavailable`] means "nothing happened"; a settlement that
//! ends in [`FacilitatorError::OutcomeUnknown`] (or [`FacilitatorError::Protocol`]) may have moved
//! money, so its authorization stays reserved as pending until it is reconciled.

pub mod chain;
pub mod http_client;
pub mod http_server;
pub mod local;

use alloy_primitives::{Address, B256};
use async_trait::async_trait;

use crate::facilitator_api::{SettleResponse, SupportedResponse, VerifyResponse, VersionedPayment};

/// The facilitator could not give an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FacilitatorError {
    /// It cannot be reached, or its chain cannot (fail closed). Nothing was sent: for a
    /// settlement, no transfer can have been made.
    #[error("facilitator unavailable: {0}")]
    Unavailable(String),
    /// A settlement was (or may have been) sent but its outcome is unknown: the answer was lost,
    /// the facilitator answered a 5xx, or it could not record what it broadcast. The money may
    /// have moved: record it as pending, never as failed or released.
    #[error("settlement outcome unknown: {detail}")]
    OutcomeUnknown {
        /// What happened.
        detail: String,
        /// The transaction hash, when one is known.
        transaction: Option<String>,
    },
    /// It answered something that is not a facilitator response.
    #[error("facilitator protocol error: {0}")]
    Protocol(String),
}

/// A clock before 1970 decides nothing: no settlement is judged failed by it.
impl From<farebox_core::time::ClockError> for FacilitatorError {
    fn from(e: farebox_core::time::ClockError) -> Self {
        FacilitatorError::Unavailable(e.to_string())
    }
}

impl FacilitatorError {
    /// [`FacilitatorError::OutcomeUnknown`] without a known transaction.
    pub fn outcome_unknown(detail: impl Into<String>) -> Self {
        FacilitatorError::OutcomeUnknown { detail: detail.into(), transaction: None }
    }
}

/// Verifies and settles x402 payments.
#[async_trait]
pub trait Facilitator: Send + Sync + 'static {
    /// Checks a payment without moving money.
    async fn verify(&self, request: &VersionedPayment) -> Result<VerifyResponse, FacilitatorError>;

    /// Settles a payment: re-checks it, sends the transfer, waits for the receipt. A receipt that
    /// does not arrive in time is `success: false` with reason `settlement_pending` and the
    /// transaction hash, so the caller can tell "not paid" from "not yet known".
    async fn settle(&self, request: &VersionedPayment) -> Result<SettleResponse, FacilitatorError>;

    /// What this facilitator can verify and settle.
    async fn supported(&self) -> Result<SupportedResponse, FacilitatorError>;

    /// Whether the EIP-3009 authorization `nonce` of `from` on `token` is used (or cancelled)
    /// on `network` (CAIP-2), as of the latest mined block: the chain's ground truth that
    /// reconciliation of a pending settlement rests on.
    ///
    /// `Ok(None)` when this facilitator cannot read that chain. That is the default, and what a
    /// facilitator reached over HTTP answers (the facilitator API has no such call); a rail in
    /// front of one reads the chain itself ([`chain::ChainReader`]).
    async fn authorization_used(
        &self,
        network: &str,
        token: Address,
        from: Address,
        nonce: B256,
    ) -> Result<Option<bool>, FacilitatorError> {
        let _ = (network, token, from, nonce);
        Ok(None)
    }
}
