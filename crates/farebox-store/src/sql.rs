//! What the SQL stores share: error mapping, time conversion, record decoding, timeouts.

use std::future::Future;

use farebox_core::store::{ProofRecord, ProofState, StoreError};

use crate::OPERATION_TIMEOUT;

/// Runs one store operation, bounded by [`OPERATION_TIMEOUT`].
pub(crate) async fn bounded<T>(
    what: &str,
    fut: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(OPERATION_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Unavailable(format!(
            "{what} did not finish within {}s",
            OPERATION_TIMEOUT.as_secs()
        ))),
    }
}

/// A time as stored: signed 64-bit, clamped.
pub(crate) fn to_db_time(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

pub(crate) fn from_db_time(what: &str, t: i64) -> Result<u64, StoreError> {
    u64::try_from(t).map_err(|_| StoreError::Invalid(format!("negative {what} in store: {t}")))
}

pub(crate) fn record(
    state: &str,
    reference: Option<String>,
    expires_at: i64,
    updated_at: i64,
) -> Result<ProofRecord, StoreError> {
    Ok(ProofRecord {
        state: ProofState::parse(state).ok_or_else(|| {
            StoreError::Invalid(format!("unknown proof state in store: {state:?}"))
        })?,
        reference,
        expires_at: from_db_time("expires_at", expires_at)?,
        updated_at: from_db_time("updated_at", updated_at)?,
    })
}

/// Which backend an error came from; decides how database error codes are read.
#[derive(Clone, Copy)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// Maps a driver error: anything that means "could not reach / could not finish now" is
/// [`StoreError::Unavailable`] (the caller answers 503), the rest is [`StoreError::Invalid`].
pub(crate) fn map_err(backend: Backend, e: sqlx::Error) -> StoreError {
    use sqlx::Error as E;
    match &e {
        E::Io(_)
        | E::Tls(_)
        | E::PoolTimedOut
        | E::PoolClosed
        | E::WorkerCrashed
        | E::Protocol(_) => StoreError::Unavailable(e.to_string()),
        E::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            if transient_db_code(backend, &code) {
                StoreError::Unavailable(e.to_string())
            } else {
                StoreError::Invalid(e.to_string())
            }
        }
        _ => StoreError::Invalid(e.to_string()),
    }
}

fn transient_db_code(backend: Backend, code: &str) -> bool {
    match backend {
        // Primary result code = extended code & 0xff.
        Backend::Sqlite => match code.parse::<i64>() {
            // BUSY, LOCKED, NOMEM, IOERR, FULL, CANTOPEN, PROTOCOL.
            Ok(c) => matches!(c & 0xff, 5 | 6 | 7 | 10 | 13 | 14 | 15),
            Err(_) => false,
        },
        Backend::Postgres => {
            // 08: connection exception; 53: insufficient resources; 57: operator intervention
            // (shutdown, statement timeout / cancel); 58: system error; 40001/40P01:
            // serialization failure / deadlock (retry later); 55P03: lock not available.
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57")
                || code.starts_with("58")
                || code == "40001"
                || code == "40P01"
                || code == "55P03"
        }
    }
}
