//! What the SQL stores share: error mapping, time conversion, record decoding, timeouts.

use std::future::Future;

use farebox_core::store::{
    Hold, HoldOutcome, ProofRecord, ProofState, SessionRecord, SessionStatus, StoreError, Versioned,
};

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

/// The columns of a proof row, as [`record`] reads them.
pub(crate) const PROOF_COLUMNS: &str = "state, reference, expires_at, updated_at, hold_account";

/// A proof row (selected with [`PROOF_COLUMNS`]).
pub(crate) fn record<'r, R: sqlx::Row>(
    row: &'r R,
    backend: Backend,
) -> Result<ProofRecord, StoreError>
where
    &'r str: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let e = |e| map_err(backend, e);
    let state: String = row.try_get("state").map_err(e)?;
    Ok(ProofRecord {
        state: ProofState::parse(&state).ok_or_else(|| {
            StoreError::Invalid(format!("unknown proof state in store: {state:?}"))
        })?,
        reference: row.try_get("reference").map_err(e)?,
        expires_at: from_db_time("expires_at", row.try_get("expires_at").map_err(e)?)?,
        updated_at: from_db_time("updated_at", row.try_get("updated_at").map_err(e)?)?,
        account: row.try_get("hold_account").map_err(e)?,
    })
}

/// The columns holds add to `farebox_proofs` (stores made before holds get them by `ALTER
/// TABLE`): whose funds, how much (decimal text: `u128`), until when, and the record's number
/// in the order of settlements once settled (see `ReplayStore::settled_mark`).
pub(crate) const HOLD_COLUMNS: &[(&str, &str)] = &[
    ("hold_account", "TEXT"),
    ("hold_amount", "TEXT"),
    ("hold_until", "BIGINT"),
    ("settled_seq", "BIGINT"),
];

/// Indexes for [`HELD`] and [`SETTLED_MARK`].
pub(crate) const HOLD_INDEXES: &[&str] = &[
    "CREATE INDEX IF NOT EXISTS farebox_proofs_holds
        ON farebox_proofs (hold_account, hold_until) WHERE hold_account IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS farebox_proofs_settled_seq
        ON farebox_proofs (settled_seq) WHERE settled_seq IS NOT NULL",
];

/// The amounts an account holds, for a caller that read its balance after a mark (binds:
/// account, now, mark): the rule of `ReplayStore::reserve_hold`.
pub(crate) const HELD: &str = "SELECT hold_amount FROM farebox_proofs
     WHERE hold_account = ? AND hold_until >= ?
       AND (state IN ('reserved', 'pending')
            OR (state = 'settled' AND (settled_seq IS NULL OR settled_seq > ?)))";

/// The highest settlement number given.
pub(crate) const SETTLED_MARK: &str =
    "SELECT COALESCE(MAX(settled_seq), 0) AS mark FROM farebox_proofs";

/// A held reservation (binds: namespace, key, expires_at, now, account, amount, until); a row
/// comes back when it was inserted.
pub(crate) const INSERT_HELD: &str = "INSERT INTO farebox_proofs
     (namespace, key, state, reference, expires_at, updated_at, hold_account, hold_amount, hold_until)
     VALUES (?, ?, 'reserved', NULL, ?, ?, ?, ?, ?)
     ON CONFLICT (namespace, key) DO NOTHING
     RETURNING 1 AS one";

/// Whether a proof is recorded (binds: namespace, key).
pub(crate) const EXISTS: &str =
    "SELECT 1 AS one FROM farebox_proofs WHERE namespace = ? AND key = ?";

/// `UPDATE` of a proof's state that numbers its settlement (binds: state, reference, now,
/// state again, namespace, key); `next` is the backend's expression for the next number.
pub(crate) fn update_sql(backend: Backend, next: &str) -> String {
    let sql = format!(
        "UPDATE farebox_proofs
         SET state = ?, reference = COALESCE(?, reference), updated_at = ?,
             settled_seq = CASE
                 WHEN ? = 'settled' AND hold_account IS NOT NULL AND settled_seq IS NULL
                 THEN {next} ELSE settled_seq END
         WHERE namespace = ? AND key = ?"
    );
    placeholders(backend, &sql).into_owned()
}

/// The steps of `ReplayStore::reserve_hold` once the caller's transaction serializes the
/// reservations of `hold.account` (SQLite's write lock, PostgreSQL's advisory lock): a recorded
/// key is a duplicate; a hold the account cannot take is refused; otherwise the key is inserted
/// with its hold. Nothing is written unless the outcome is `Reserved`; the caller commits then.
pub(crate) async fn reserve_locked<DB>(
    conn: &mut DB::Connection,
    backend: Backend,
    namespace: &str,
    key: &str,
    expires_at: u64,
    hold: &Hold<'_>,
) -> Result<HoldOutcome, StoreError>
where
    DB: sqlx::Database,
    for<'e> &'e mut DB::Connection: sqlx::Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    (String,): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    let err = |e| map_err(backend, e);
    let exists = sqlx::query::<DB>(&placeholders(backend, EXISTS))
        .bind(namespace)
        .bind(key)
        .fetch_optional(&mut *conn)
        .await
        .map_err(err)?;
    if exists.is_some() {
        return Ok(HoldOutcome::Duplicate);
    }
    let now = to_db_time(crate::now_secs()?);
    let amounts: Vec<String> = sqlx::query_scalar::<DB, String>(&placeholders(backend, HELD))
        .bind(hold.account)
        .bind(now)
        .bind(to_db_time(hold.mark))
        .fetch_all(&mut *conn)
        .await
        .map_err(err)?;
    if let Some(refused) = crate::refusal(total_held(&amounts)?, hold) {
        return Ok(refused);
    }
    let inserted = sqlx::query::<DB>(&placeholders(backend, INSERT_HELD))
        .bind(namespace)
        .bind(key)
        .bind(to_db_time(expires_at))
        .bind(now)
        .bind(hold.account)
        .bind(hold.amount.to_string())
        .bind(to_db_time(hold.until))
        .fetch_optional(&mut *conn)
        .await
        .map_err(err)?;
    // In PostgreSQL, another account's reservation of the same key can win between the check
    // and the insert (its lock is not ours).
    Ok(if inserted.is_some() { HoldOutcome::Reserved } else { HoldOutcome::Duplicate })
}

/// What the rows of [`HELD`] add up to (`None`: no rows, nothing held).
pub(crate) fn total_held(amounts: &[String]) -> Result<Option<u128>, StoreError> {
    let mut total = None::<u128>;
    for text in amounts {
        let amount = text
            .parse::<u128>()
            .map_err(|_| StoreError::Invalid(format!("bad hold amount in store: {text:?}")))?;
        total = Some(total.unwrap_or(0).saturating_add(amount));
    }
    Ok(total)
}

/// Which backend an error came from; decides how database error codes are read.
#[derive(Clone, Copy)]
pub(crate) enum Backend {
    #[cfg(feature = "sqlite")]
    Sqlite,
    #[cfg(feature = "postgres")]
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
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => match code.parse::<i64>() {
            // BUSY, LOCKED, NOMEM, IOERR, FULL, CANTOPEN, PROTOCOL.
            Ok(c) => matches!(c & 0xff, 5 | 6 | 7 | 10 | 13 | 14 | 15),
            Err(_) => false,
        },
        #[cfg(feature = "postgres")]
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

/// The columns of a session row, as read.
pub(crate) struct SessionRow {
    pub version: i64,
    pub status: String,
    pub deposit: String,
    pub accepted: String,
    pub spent: String,
    pub settled: String,
    pub data: String,
    pub updated_at: i64,
}

impl SessionRow {
    pub(crate) fn read<'r, R: sqlx::Row>(row: &'r R, backend: Backend) -> Result<Self, StoreError>
    where
        &'r str: sqlx::ColumnIndex<R>,
        i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        let e = |e| map_err(backend, e);
        Ok(SessionRow {
            version: row.try_get("version").map_err(e)?,
            status: row.try_get("status").map_err(e)?,
            deposit: row.try_get("deposit").map_err(e)?,
            accepted: row.try_get("accepted").map_err(e)?,
            spent: row.try_get("spent").map_err(e)?,
            settled: row.try_get("settled").map_err(e)?,
            data: row.try_get("data").map_err(e)?,
            updated_at: row.try_get("updated_at").map_err(e)?,
        })
    }

    pub(crate) fn decode(self) -> Result<Versioned<SessionRecord>, StoreError> {
        let amount = |what: &str, text: &str| {
            text.parse::<u128>()
                .map_err(|_| StoreError::Invalid(format!("bad session {what} in store: {text:?}")))
        };
        Ok(Versioned {
            version: u64::try_from(self.version).map_err(|_| {
                StoreError::Invalid(format!("negative session version: {}", self.version))
            })?,
            value: SessionRecord {
                status: SessionStatus::parse(&self.status).ok_or_else(|| {
                    StoreError::Invalid(format!("unknown session status: {:?}", self.status))
                })?,
                deposit: amount("deposit", &self.deposit)?,
                accepted: amount("accepted", &self.accepted)?,
                spent: amount("spent", &self.spent)?,
                settled: amount("settled", &self.settled)?,
                data: self.data,
                updated_at: from_db_time("updated_at", self.updated_at)?,
            },
        })
    }
}

/// A version as stored.
pub(crate) fn to_db_version(version: u64) -> Result<i64, StoreError> {
    i64::try_from(version).map_err(|_| StoreError::Invalid(format!("version {version} too large")))
}

/// `sql` with its `?` placeholders numbered for `backend` (`$1`, `$2`, … for PostgreSQL).
pub(crate) fn placeholders(backend: Backend, sql: &str) -> std::borrow::Cow<'_, str> {
    match backend {
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => std::borrow::Cow::Borrowed(sql),
        #[cfg(feature = "postgres")]
        Backend::Postgres => {
            let mut out = String::with_capacity(sql.len() + 16);
            let mut n = 0;
            for c in sql.chars() {
                if c == '?' {
                    n += 1;
                    out.push('$');
                    out.push_str(&n.to_string());
                } else {
                    out.push(c);
                }
            }
            std::borrow::Cow::Owned(out)
        }
    }
}

/// The session table, for both SQL backends (amounts are decimal text: they are `u128`).
pub(crate) const SESSION_SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS farebox_sessions (
        namespace  TEXT   NOT NULL,
        id         TEXT   NOT NULL,
        version    BIGINT NOT NULL,
        status     TEXT   NOT NULL CHECK (status IN ('open', 'closing', 'closed')),
        deposit    TEXT   NOT NULL,
        accepted   TEXT   NOT NULL,
        spent      TEXT   NOT NULL,
        settled    TEXT   NOT NULL,
        data       TEXT   NOT NULL,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (namespace, id)
    )",
    "CREATE INDEX IF NOT EXISTS farebox_sessions_idle
        ON farebox_sessions (namespace, status, updated_at)",
];

/// Implements `SessionStore` for a SQL store type with a `pool` field and an `err` mapping.
macro_rules! sql_session_store {
    ($store:ty, $backend:expr) => {
        #[async_trait::async_trait]
        impl farebox_core::store::SessionStore for $store {
            async fn create_session(
                &self,
                namespace: &str,
                id: &str,
                record: &farebox_core::store::SessionRecord,
            ) -> Result<bool, farebox_core::store::StoreError> {
                crate::validate_session(namespace, id, Some(record))?;
                let sql = crate::sql::placeholders(
                    $backend,
                    "INSERT INTO farebox_sessions
                     (namespace, id, version, status, deposit, accepted, spent, settled, data, updated_at)
                     VALUES (?, ?, 1, ?, ?, ?, ?, ?, ?, ?)
                     ON CONFLICT (namespace, id) DO NOTHING",
                );
                crate::sql::bounded("create_session", async {
                    let done = sqlx::query(&sql)
                        .bind(namespace)
                        .bind(id)
                        .bind(record.status.as_str())
                        .bind(record.deposit.to_string())
                        .bind(record.accepted.to_string())
                        .bind(record.spent.to_string())
                        .bind(record.settled.to_string())
                        .bind(&record.data)
                        .bind(crate::sql::to_db_time(record.updated_at))
                        .execute(&self.pool)
                        .await
                        .map_err(err)?;
                    Ok(done.rows_affected() == 1)
                })
                .await
            }

            async fn load_session(
                &self,
                namespace: &str,
                id: &str,
            ) -> Result<
                Option<farebox_core::store::Versioned<farebox_core::store::SessionRecord>>,
                farebox_core::store::StoreError,
            > {
                crate::validate_session(namespace, id, None)?;
                let sql = crate::sql::placeholders(
                    $backend,
                    "SELECT version, status, deposit, accepted, spent, settled, data, updated_at
                     FROM farebox_sessions WHERE namespace = ? AND id = ?",
                );
                crate::sql::bounded("load_session", async {
                    let row = sqlx::query(&sql)
                        .bind(namespace)
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(err)?;
                    row.map(|row| crate::sql::SessionRow::read(&row, $backend)?.decode())
                        .transpose()
                })
                .await
            }

            async fn replace_session(
                &self,
                namespace: &str,
                id: &str,
                version: u64,
                record: &farebox_core::store::SessionRecord,
            ) -> Result<bool, farebox_core::store::StoreError> {
                crate::validate_session(namespace, id, Some(record))?;
                let expected = crate::sql::to_db_version(version)?;
                let sql = crate::sql::placeholders(
                    $backend,
                    "UPDATE farebox_sessions
                     SET version = version + 1, status = ?, deposit = ?, accepted = ?, spent = ?,
                         settled = ?, data = ?, updated_at = ?
                     WHERE namespace = ? AND id = ? AND version = ?",
                );
                crate::sql::bounded("replace_session", async {
                    let done = sqlx::query(&sql)
                        .bind(record.status.as_str())
                        .bind(record.deposit.to_string())
                        .bind(record.accepted.to_string())
                        .bind(record.spent.to_string())
                        .bind(record.settled.to_string())
                        .bind(&record.data)
                        .bind(crate::sql::to_db_time(record.updated_at))
                        .bind(namespace)
                        .bind(id)
                        .bind(expected)
                        .execute(&self.pool)
                        .await
                        .map_err(err)?;
                    Ok(done.rows_affected() == 1)
                })
                .await
            }

            async fn idle_sessions(
                &self,
                namespace: &str,
                status: farebox_core::store::SessionStatus,
                before: u64,
                limit: usize,
            ) -> Result<
                Vec<(String, farebox_core::store::Versioned<farebox_core::store::SessionRecord>)>,
                farebox_core::store::StoreError,
            > {
                crate::validate_namespace(namespace)?;
                let sql = crate::sql::placeholders(
                    $backend,
                    "SELECT id, version, status, deposit, accepted, spent, settled, data, updated_at
                     FROM farebox_sessions
                     WHERE namespace = ? AND status = ? AND updated_at < ?
                     ORDER BY updated_at, id LIMIT ?",
                );
                crate::sql::bounded("idle_sessions", async {
                    let rows = sqlx::query(&sql)
                        .bind(namespace)
                        .bind(status.as_str())
                        .bind(crate::sql::to_db_time(before))
                        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                        .fetch_all(&self.pool)
                        .await
                        .map_err(err)?;
                    rows.iter()
                        .map(|row| {
                            use sqlx::Row;
                            let id: String = row.try_get("id").map_err(err)?;
                            Ok((id, crate::sql::SessionRow::read(row, $backend)?.decode()?))
                        })
                        .collect()
                })
                .await
            }
        }
    };
}
pub(crate) use sql_session_store;
