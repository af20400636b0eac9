//! The crate's error type.

use crate::eip3009::SignatureError;

/// What can go wrong talking to a chain or launching one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvmError {
    /// The node could not be reached, timed out or answered with an HTTP error. Callers fail
    /// closed (HTTP 503 with `Retry-After`); the payment was neither accepted nor refused.
    #[error("EVM RPC unavailable: {0}")]
    Unavailable(String),
    /// The call or transaction reverted; `reason` is the decoded `Error(string)` /
    /// `Panic(uint256)` when there is one, the node's message otherwise.
    #[error("execution reverted: {reason}")]
    Reverted {
        /// e.g. `FiatTokenV2: authorization is used or canceled`.
        reason: String,
    },
    /// The node answered with a JSON-RPC error that is not a revert.
    #[error("JSON-RPC error {code}: {message}")]
    Rpc {
        /// JSON-RPC error code.
        code: i64,
        /// The node's message.
        message: String,
    },
    /// The node's answer could not be decoded.
    #[error("unexpected answer from the EVM node: {0}")]
    InvalidResponse(String),
    /// The RPC URL is not a valid http(s) URL.
    #[error("invalid RPC URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given, redacted ([`crate::rpc::redact_url`]).
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// A signature could not be used.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// A transaction was mined without a contract address where a deployment was expected.
    #[error("deployment failed: {0}")]
    Deploy(String),
    /// The local anvil chain could not be started.
    #[error("anvil: {0}")]
    Anvil(String),
}

impl EvmError {
    /// Whether this error means "could not find out" rather than "no": callers answer 503.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// The crate's result type.
pub type Result<T, E = EvmError> = std::result::Result<T, E>;
