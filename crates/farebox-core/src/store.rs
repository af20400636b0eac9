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
//! # Holds: no more in flight than the payer can pay
//!
//! A signed authorization (EIP-3009) proves that its payer *meant* to pay, not that the payer
//! *can* pay every authorization it signed: a payer funded for one price can sign twenty, and
//! each of them passes a simulation run before any of them settles. So a proof that draws on a
//! payer's balance is reserved with a [`Hold`] ([`ReplayStore::reserve_hold`]): the amount it
//! will take, held against what the payer's account has, in the store, so that every request,
//! process and instance sharing the store sees what is already in flight. The reservation is
//! refused ([`HoldOutcome::Insufficient`]) when the account's holds plus this amount exceed the
//! balance read at verify — or, when no balance could be read (`balance: None`), when anything
//! at all is held for the account: then at most one payment per payer and asset is in flight.
//! [`reserve_funded`] is the one way rails use it: the balance is read only when that
//! one-in-flight rule refuses, so an uncontended payment costs no extra chain read.
//!
//! What an account holds, the rule every store applies: the amounts of its records whose hold
//! has not lapsed (`until` not past), and that are `Reserved` or `Pending` (in flight), or
//! `Settled` after the caller's [`mark`](ReplayStore::settled_mark) (their transfer may be
//! missing from the balance the caller read). `Failed` and released records hold nothing. Holds
//! lapse after at most [`MAX_HOLD`], so a crash never strands one.
//!
//! Implementations live in `farebox-store` (in-memory, SQLite, PostgreSQL). Every store error
//! is a reason to refuse the request (fail closed), never to serve it.

use std::future::Future;
use std::time::Duration;

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
    /// The account whose funds the proof holds, when it was reserved with a [`Hold`] (what a
    /// reconciler reads to find the payer).
    pub account: Option<String>,
}

/// The longest a [`Hold`] lasts: a hold whose payment was neither settled nor released by then
/// (a crash between verify and settle) stops counting against its account.
pub const MAX_HOLD: Duration = Duration::from_secs(10 * 60);

/// A proof's claim on its payer's funds while its payment is in flight. See the [module
/// docs](self#holds-no-more-in-flight-than-the-payer-can-pay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold<'a> {
    /// Whose funds: one payer of one asset, e.g. `eip155:8453:0x<token>:0x<payer>` (lowercase).
    /// Not namespaced: every rail charging that asset holds against the same account.
    pub account: &'a str,
    /// What the payment takes, in base units.
    pub amount: u128,
    /// The account's balance, read after [`Hold::mark`]; `None` when it could not be read (the
    /// payment's own check, such as a simulation, only showed that `amount` was there).
    pub balance: Option<u128>,
    /// [`ReplayStore::settled_mark`] as read before the balance (or the simulation) was.
    pub mark: u64,
    /// Unix seconds after which the hold lapses (see [`Hold::until`]).
    pub until: u64,
}

impl Hold<'_> {
    /// When a hold taken `now` for a proof usable until `expires_at` lapses: at `expires_at`
    /// (the payment can no longer happen) or after [`MAX_HOLD`], whichever comes first.
    pub fn until(expires_at: u64, now: u64) -> u64 {
        expires_at.min(now.saturating_add(MAX_HOLD.as_secs()))
    }
}

/// What [`ReplayStore::reserve_hold`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldOutcome {
    /// The key is recorded `Reserved` and the amount held.
    Reserved,
    /// The key is already recorded (a replay or a concurrent duplicate); nothing changed.
    Duplicate,
    /// The account's funds are taken by payments in flight (`held` in all); nothing changed.
    Insufficient {
        /// What the account's other holds add up to.
        held: u128,
    },
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

    /// Where the store's history of settlements stands: every `Settled` transition is numbered
    /// in order, and the mark is the highest number given. A caller reads it *before* it reads a
    /// payer's balance and passes it in [`Hold::mark`]: a settlement numbered at or below the
    /// mark was final (mined) before the balance was read, so the balance shows it; one above
    /// may not, so it still counts as held.
    async fn settled_mark(&self) -> Result<u64, StoreError>;

    /// Like [`reserve`](Self::reserve), and holds `hold.amount` of `hold.account`'s funds until
    /// the record is released, fails, or is settled (see the [module
    /// docs](self#holds-no-more-in-flight-than-the-payer-can-pay) for what counts as held).
    /// Reserves only if the key is new and either `held + amount <= balance`, or, with no
    /// balance, nothing is held. Atomic across processes: two reservations for one account are
    /// decided one after the other, each seeing the other's hold.
    async fn reserve_hold(
        &self,
        namespace: &str,
        key: &str,
        expires_at: u64,
        hold: &Hold<'_>,
    ) -> Result<HoldOutcome, StoreError>;
}

/// Reserves `key` with `hold`, reading the account's balance only when needed: first as if the
/// balance were unknown (at most one payment of the account in flight, no chain read), and when
/// that is refused, with the balance `read_balance` returns (`Ok(None)`: it cannot be read, and
/// the one-in-flight refusal stands). `hold.balance` is ignored. Read `hold.mark` before the
/// payment's own check (its simulation), which is what makes the first step sound.
pub async fn reserve_funded<S, F, Fut, E>(
    store: &S,
    namespace: &str,
    key: &str,
    expires_at: u64,
    hold: Hold<'_>,
    read_balance: F,
) -> Result<HoldOutcome, E>
where
    S: ReplayStore + ?Sized,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Option<u128>, E>>,
    E: From<StoreError>,
{
    let unknown = Hold { balance: None, ..hold };
    let first = store.reserve_hold(namespace, key, expires_at, &unknown).await?;
    if !matches!(first, HoldOutcome::Insufficient { .. }) {
        return Ok(first);
    }
    let Some(balance) = read_balance().await? else { return Ok(first) };
    let known = Hold { balance: Some(balance), ..unknown };
    Ok(store.reserve_hold(namespace, key, expires_at, &known).await?)
}

/// Where a payment session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionStatus {
    /// Paid requests may draw on it.
    Open,
    /// Being closed (a close is being settled); no more paid service.
    Closing,
    /// Ended for good; kept so that its credentials cannot be replayed.
    Closed,
}

impl SessionStatus {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Open => "open",
            SessionStatus::Closing => "closing",
            SessionStatus::Closed => "closed",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "open" => SessionStatus::Open,
            "closing" => SessionStatus::Closing,
            "closed" => SessionStatus::Closed,
            _ => return None,
        })
    }
}

/// The accounting of one payment session (an EVM payment channel, a Lightning prepaid balance),
/// in base units of the session's asset. Invariant kept by the rails: `spent <= accepted <=
/// deposit` and `settled <= deposit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub status: SessionStatus,
    /// What the payer has put up: the channel's on-chain deposit, or the prepaid balance.
    pub deposit: u128,
    /// What the payer has authorized the payee to take: the highest accepted cumulative voucher
    /// (channels), or the deposit itself (prepaid balances).
    pub accepted: u128,
    /// What served requests have consumed.
    pub spent: u128,
    /// What has been paid out to the payee for good (on chain, or refunded and closed).
    pub settled: u128,
    /// Rail-private state as JSON text (the highest voucher's signature, the refund invoice, …),
    /// at most [`MAX_SESSION_DATA_LEN`] bytes.
    pub data: String,
    /// Unix seconds of the last change: what idle sweeps look at.
    pub updated_at: u64,
}

/// Longest [`SessionRecord::data`], in bytes.
pub const MAX_SESSION_DATA_LEN: usize = 16 * 1024;

impl SessionRecord {
    /// What is left to spend: `accepted − spent`.
    pub fn available(&self) -> u128 {
        self.accepted.saturating_sub(self.spent)
    }
}

/// A stored value and the version it was read at (for compare-and-swap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    pub version: u64,
    pub value: T,
}

/// Stores session records. Every change is a compare-and-swap on the record's version, which
/// makes updates of one session linearizable across concurrent requests, processes and (with a
/// shared database) machines. Rails change records through [`update_session`], never by blind
/// writes. `namespace` separates rails; `id` is the session's id (a channel id, a payment hash).
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Inserts `record` at version 1 unless `id` exists. `Ok(false)`: it already exists.
    async fn create_session(
        &self,
        namespace: &str,
        id: &str,
        record: &SessionRecord,
    ) -> Result<bool, StoreError>;

    /// The record of `id` and its version, if any.
    async fn load_session(
        &self,
        namespace: &str,
        id: &str,
    ) -> Result<Option<Versioned<SessionRecord>>, StoreError>;

    /// Replaces the record of `id` with `record` (and bumps the version) if it is still at
    /// `version`. `Ok(false)`: it changed since it was read (or is gone); read it again.
    async fn replace_session(
        &self,
        namespace: &str,
        id: &str,
        version: u64,
        record: &SessionRecord,
    ) -> Result<bool, StoreError>;

    /// Up to `limit` sessions of `namespace` in `status` last changed before `before` (Unix
    /// seconds), oldest first: for closing idle sessions.
    async fn idle_sessions(
        &self,
        namespace: &str,
        status: SessionStatus,
        before: u64,
        limit: usize,
    ) -> Result<Vec<(String, Versioned<SessionRecord>)>, StoreError>;
}

/// What an [`update_session`] step decided.
pub enum Update<T> {
    /// Store this record (compare-and-swap) and return `T`.
    Write(SessionRecord, T),
    /// Change nothing and return `T`.
    Keep(T),
}

/// How many times [`update_session`] re-reads a record that others keep changing.
pub const MAX_UPDATE_ATTEMPTS: usize = 64;

/// Reads the session `id`, lets `step` decide on the current record, and writes its decision
/// with a compare-and-swap, starting over when another writer got there first. `step` may run
/// several times, so it must be a pure function of the record: do expensive work (signature
/// checks) before. `Ok(None)`: no such session. A session that stays contended for
/// [`MAX_UPDATE_ATTEMPTS`] reads is a [`StoreError::Unavailable`] (the request is refused, 503).
pub async fn update_session<S: SessionStore + ?Sized, T, E: From<StoreError>>(
    store: &S,
    namespace: &str,
    id: &str,
    mut step: impl FnMut(&SessionRecord) -> Result<Update<T>, E>,
) -> Result<Option<T>, E> {
    for _ in 0..MAX_UPDATE_ATTEMPTS {
        let Some(current) = store.load_session(namespace, id).await? else {
            return Ok(None);
        };
        match step(&current.value)? {
            Update::Keep(out) => return Ok(Some(out)),
            Update::Write(next, out) => {
                if store.replace_session(namespace, id, current.version, &next).await? {
                    return Ok(Some(out));
                }
            }
        }
    }
    Err(StoreError::Unavailable(format!("session {id} is contended; try again")).into())
}
