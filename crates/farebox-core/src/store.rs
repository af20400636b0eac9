//! [`ReplayStore`]: where rails record single-use payment proofs, so that a proof is spent at
//! most once — across concurrent requests, restarts, and several server instances sharing one
//! store.
//!
//! A proof's life: [`reserve`](ReplayStore::reserve) when it verifies (a duplicate is refused
//! before the handler runs), then [`update`](ReplayStore::update) to `Pending` when settlement
//! is sent and `Settled` once it is final; or [`release`](ReplayStore::release) when the handler
//! failed and nothing was taken, so the client may retry with the same proof. A settlement whose
//! outcome is unknown stays `Pending` with its transaction reference until a reconciler resolves
//! it ([`pending`](ReplayStore::pending)).
//!
//! Implementations live in `farebox-store` (in-memory, SQLite, PostgreSQL). Every store error
//! is a reason to refuse the request (fail closed), never to serve it.

use async_trait::async_trait;

/// Where a recorded proof stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProofState {
    /// Verified; the request is being served; nothing settled yet.
    Reserved,
    /// Settlement sent (e.g. a transaction broadcast); outcome not yet known.
    Pending,
    /// Settled for good.
    Settled,
    /// Settlement failed for good; the proof is spent or unusable either way.
    Failed,
}

impl ProofState {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ProofState::Reserved => "reserved",
            ProofState::Pending => "pending",
            ProofState::Settled => "settled",
            ProofState::Failed => "failed",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "reserved" => ProofState::Reserved,
            "pending" => ProofState::Pending,
            "settled" => ProofState::Settled,
            "failed" => ProofState::Failed,
            _ => return None,
        })
    }
}

/// A recorded proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProofRecord {
    pub state: ProofState,
    /// The settlement reference once there is one (a transaction hash).
    pub reference: Option<String>,
    /// Unix seconds after which the proof cannot be used anyway (e.g. `validBefore`).
    pub expires_at: u64,
    /// Unix seconds of the last change.
    pub updated_at: u64,
}

/// A store that could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or did not answer: refuse the request (503).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The key is not recorded (an update or release of something never reserved).
    #[error("no such proof: {0}")]
    NotFound(String),
    /// The store answered something it should not have.
    #[error("store error: {0}")]
    Invalid(String),
}

impl From<StoreError> for crate::PaymentError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => crate::PaymentError::unavailable(
                "store_unavailable",
                "the payment store cannot be reached; try again shortly",
                std::time::Duration::from_secs(5),
            ),
            other => crate::PaymentError::internal("store_error", other.to_string()),
        }
    }
}

/// Records single-use proofs. `namespace` separates rails (`x402`, `mpp`); `key` identifies a
/// proof within it (e.g. `<chain>:<token>:<payer>:<nonce>`). Keys are at most 512 bytes.
#[async_trait]
pub trait ReplayStore: Send + Sync + 'static {
    /// Records `key` as `Reserved` until `expires_at`. `Ok(true)`: newly reserved, go ahead.
    /// `Ok(false)`: already recorded in any state — a replay or a concurrent duplicate. Atomic:
    /// of any number of concurrent calls for one key, across processes, exactly one gets `true`.
    async fn reserve(
        &self,
        namespace: &str,
        key: &str,
        expires_at: u64,
    ) -> Result<bool, StoreError>;

    /// Moves a recorded key to `state`, with the settlement `reference` when there is one.
    async fn update(
        &self,
        namespace: &str,
        key: &str,
        state: ProofState,
        reference: Option<&str>,
    ) -> Result<(), StoreError>;

    /// Forgets a key that is still `Reserved` (the request was not served, nothing was taken).
    /// A key in any other state is kept: it may have moved money. Unknown keys are fine.
    async fn release(&self, namespace: &str, key: &str) -> Result<(), StoreError>;

    /// The record of `key`, if any.
    async fn get(&self, namespace: &str, key: &str) -> Result<Option<ProofRecord>, StoreError>;

    /// Every `Pending` record of `namespace`, for reconciliation.
    async fn pending(&self, namespace: &str) -> Result<Vec<(String, ProofRecord)>, StoreError>;

    /// Deletes `Reserved` records whose `expires_at` is before `now` (their proof can no longer
    /// be used, so the record no longer protects anything; a crash left them behind). Returns how
    /// many were deleted. Pending, settled and failed records are kept.
    async fn purge_expired(&self, now: u64) -> Result<u64, StoreError>;
}
