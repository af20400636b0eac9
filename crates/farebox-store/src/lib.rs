//! farebox's stores: where rails record single-use payment proofs (for example an EIP-3009
//! authorization nonce) so that each proof is spent at most once, and the balances of payment
//! sessions (an MPP payment channel's accepted vouchers and spent amount) so that no deposit is
//! spent twice and no accepted voucher is lost.
//!
//! Every store implements both [`ReplayStore`] and [`SessionStore`] (together: [`Store`]);
//! [`open`] picks one from a URL. Session records change only by compare-and-swap on a version
//! (`UPDATE … WHERE version = ?`), which makes the updates of one session linearizable across
//! requests, processes and, with PostgreSQL, machines; amounts are stored as decimal text
//! because they are `u128`.
//!
//! # Which store, when
//!
//! | store | URL | use it for |
//! | --- | --- | --- |
//! | [`MemoryStore`] | `memory:` | tests and single-process development. Forgets everything on restart, so a proof spent before a restart can be spent again: never in production. |
//! | [`SqliteStore`] | `sqlite://<path>`, `sqlite::memory:` | one gateway instance (the embedded default). Survives process restarts and crashes. |
//! | [`PostgresStore`] | `postgres://…`, `postgresql://…` | several gateway instances that must share replay protection. |
//!
//! [`SqliteStore`] and [`PostgresStore`] are the cargo features `sqlite` and `postgres`, both on
//! by default: a build with one off does not compile its driver, and [`open`] refuses its URLs
//! with [`StoreError::Invalid`].
//!
//! Two instances with separate SQLite files (or memory stores) do **not** protect each other: a
//! proof refused by one can be spent at the other. Deploy PostgreSQL as soon as there is more
//! than one instance.
//!
//! # URLs
//!
//! * `memory:` — a fresh [`MemoryStore`].
//! * `sqlite://<path>` — a SQLite file, created with its schema if missing: `sqlite://farebox.db`
//!   (relative to the working directory), `sqlite:///var/lib/farebox/replay.db` (absolute).
//!   Anything after `?` is ignored.
//! * `sqlite::memory:` — an in-memory SQLite database (one connection; gone when dropped).
//! * `postgres://user:pass@host:5432/db` or `postgresql://…` — passed to the PostgreSQL driver
//!   as is (`sslmode` and the other libpq-style parameters apply).
//!
//! # Durability and failure
//!
//! * SQLite runs in WAL mode with `synchronous=FULL`: every acknowledged write (a `reserve`
//!   that returned `Ok(true)`) has been fsynced to the WAL before the call returns, so it
//!   survives a process crash *and* an OS crash or power loss. (`synchronous=NORMAL` with WAL
//!   would survive only a process crash, and could lose the last reservations on power loss —
//!   which would let their proofs be replayed.) `busy_timeout` is 5 s.
//! * PostgreSQL uses the server's durability (`synchronous_commit` as configured on the
//!   server; keep it `on`). Pools acquire with a 3 s timeout, statements time out after 5 s,
//!   and every operation is bounded by [`OPERATION_TIMEOUT`]: a dead or unreachable database
//!   yields [`StoreError::Unavailable`] within a few seconds instead of hanging the request.
//! * Callers fail closed: every [`StoreError`] refuses the request
//!   (`Unavailable` → 503 via `PaymentError::from`).
//!
//! # Keys
//!
//! `namespace` and `key` must be non-empty, at most [`MAX_KEY_LEN`] (512) bytes and free of NUL
//! characters; settlement references at most [`MAX_REFERENCE_LEN`] bytes. Anything else is
//! [`StoreError::Invalid`], identically in every backend.
//!
//! Times are Unix seconds. Stored as signed 64-bit integers, values above `i64::MAX` (e.g.
//! `u64::MAX` meaning "never") are clamped to `i64::MAX` in every backend.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

pub use farebox_core::store::{
    Hold, HoldOutcome, MAX_SESSION_DATA_LEN, ProofRecord, ProofState, ReplayStore, SessionRecord,
    SessionStatus, SessionStore, StoreError, Versioned,
};

/// A store that keeps both single-use proofs and session balances: what [`open`] returns, so
/// one database serves every rail. Every store of this crate is one.
pub trait Store: ReplayStore + SessionStore {}

impl<T: ReplayStore + SessionStore> Store for T {}

pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;

#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;

pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

/// Longest namespace or key, in bytes.
pub const MAX_KEY_LEN: usize = 512;

/// Longest settlement reference, in bytes.
pub const MAX_REFERENCE_LEN: usize = 1024;

/// Upper bound on any single SQL store operation (connection acquisition included).
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(8);

/// Opens the store named by `url` (see the [crate docs](crate#urls)).
///
/// Errors: [`StoreError::Invalid`] for an unknown scheme, [`StoreError::Unavailable`] when the
/// database cannot be opened or reached.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    let url = url.trim();
    if url == "memory:" || url == "memory://" {
        return Ok(Arc::new(MemoryStore::new()));
    }
    if url.starts_with("sqlite:") {
        return open_sqlite(url).await;
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return open_postgres(url).await;
    }
    let scheme = url.split(':').next().unwrap_or_default();
    Err(StoreError::Invalid(format!(
        "unknown store URL scheme {scheme:?}: expected memory:, sqlite://<path>, sqlite::memory: \
         or postgres://…"
    )))
}

/// A `sqlite:` URL's store.
#[cfg(feature = "sqlite")]
async fn open_sqlite(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if url == "sqlite::memory:" || url == "sqlite://:memory:" {
        return Ok(Arc::new(SqliteStore::in_memory().await?));
    }
    let Some(rest) = url.strip_prefix("sqlite://") else {
        return Err(StoreError::Invalid(
            "sqlite URL not understood (use sqlite://<path> or sqlite::memory:)".into(),
        ));
    };
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() {
        return Err(StoreError::Invalid(
            "sqlite URL without a path (use sqlite://<path> or sqlite::memory:)".into(),
        ));
    }
    Ok(Arc::new(SqliteStore::open(path).await?))
}

#[cfg(not(feature = "sqlite"))]
async fn open_sqlite(_: &str) -> Result<Arc<dyn Store>, StoreError> {
    Err(StoreError::Invalid("this build has no SQLite store (cargo feature `sqlite`)".into()))
}

/// A `postgres://` URL's store.
#[cfg(feature = "postgres")]
async fn open_postgres(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(PostgresStore::connect(url).await?))
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(_: &str) -> Result<Arc<dyn Store>, StoreError> {
    Err(StoreError::Invalid("this build has no PostgreSQL store (cargo feature `postgres`)".into()))
}

/// Checks a namespace and key against the rules every backend applies.
pub(crate) fn validate_key(namespace: &str, key: &str) -> Result<(), StoreError> {
    validate_part("namespace", namespace, MAX_KEY_LEN)?;
    validate_part("key", key, MAX_KEY_LEN)
}

pub(crate) fn validate_namespace(namespace: &str) -> Result<(), StoreError> {
    validate_part("namespace", namespace, MAX_KEY_LEN)
}

pub(crate) fn validate_account(account: &str) -> Result<(), StoreError> {
    validate_part("account", account, MAX_KEY_LEN)
}

/// Whether `hold` must be refused, given what its account already holds (`None`: nothing):
/// the rule of [`ReplayStore::reserve_hold`], the same in every backend.
pub(crate) fn refusal(held: Option<u128>, hold: &Hold<'_>) -> Option<HoldOutcome> {
    let total = held.unwrap_or(0);
    let fits = match hold.balance {
        None => held.is_none(),
        Some(balance) => total.checked_add(hold.amount).is_some_and(|t| t <= balance),
    };
    (!fits).then_some(HoldOutcome::Insufficient { held: total })
}

/// Checks a session id and record against the rules every backend applies.
pub(crate) fn validate_session(
    namespace: &str,
    id: &str,
    record: Option<&SessionRecord>,
) -> Result<(), StoreError> {
    validate_key(namespace, id)?;
    let Some(record) = record else { return Ok(()) };
    if record.data.len() > MAX_SESSION_DATA_LEN {
        return Err(StoreError::Invalid(format!(
            "session data is {} bytes, more than {MAX_SESSION_DATA_LEN}",
            record.data.len()
        )));
    }
    if record.data.contains('\0') {
        return Err(StoreError::Invalid("session data contains a NUL character".into()));
    }
    Ok(())
}

pub(crate) fn validate_reference(reference: Option<&str>) -> Result<(), StoreError> {
    match reference {
        Some(r) => validate_part("reference", r, MAX_REFERENCE_LEN),
        None => Ok(()),
    }
}

fn validate_part(what: &str, value: &str, max: usize) -> Result<(), StoreError> {
    if value.is_empty() {
        return Err(StoreError::Invalid(format!("empty {what}")));
    }
    if value.len() > max {
        return Err(StoreError::Invalid(format!(
            "{what} is {} bytes, more than {max}",
            value.len()
        )));
    }
    if value.contains('\0') {
        return Err(StoreError::Invalid(format!("{what} contains a NUL character")));
    }
    Ok(())
}

/// Unix seconds now; a clock before 1970 refuses the write (see [`farebox_core::time`]).
pub(crate) fn now_secs() -> Result<u64, StoreError> {
    Ok(farebox_core::time::unix_now()?)
}

/// Unix seconds as stored (clamped to `i64::MAX`).
pub(crate) fn clamp_time(t: u64) -> u64 {
    t.min(i64::MAX as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated() {
        assert!(validate_key("x402", "k").is_ok());
        assert!(validate_key("x402", &"k".repeat(512)).is_ok());
        assert!(matches!(validate_key("x402", &"k".repeat(513)), Err(StoreError::Invalid(_))));
        assert!(matches!(validate_key("", "k"), Err(StoreError::Invalid(_))));
        assert!(matches!(validate_key("x402", ""), Err(StoreError::Invalid(_))));
        assert!(matches!(validate_key("x402", "a\0b"), Err(StoreError::Invalid(_))));
        assert!(validate_reference(None).is_ok());
        assert!(validate_reference(Some(&"r".repeat(1025))).is_err());
    }

    #[tokio::test]
    async fn open_rejects_unknown_schemes() {
        assert!(matches!(open("redis://x").await, Err(StoreError::Invalid(_))));
        assert!(matches!(open("sqlite://").await, Err(StoreError::Invalid(_))));
        assert!(open("memory:").await.is_ok());
        assert!(open("sqlite::memory:").await.is_ok());
    }
}
