//! [`SqliteStore`]: the embedded default, for a single gateway instance. Survives restarts.
//!
//! The database runs in WAL mode with `synchronous=FULL`: a `reserve` that returned `Ok(true)`
//! has been fsynced to the write-ahead log, so it survives a process crash and a power loss.
//! Writers wait up to 5 s for each other (`busy_timeout`); reserve is a single
//! `INSERT … ON CONFLICT DO NOTHING`, so of concurrent reserves of one key exactly one inserts
//! the row — also across processes sharing the file. A reservation with a hold reads what the
//! account holds and inserts in one `BEGIN IMMEDIATE` transaction, which takes the database's
//! write lock first: two of them (any processes) are decided one after the other.
//!
//! Several processes may share one file on one machine, but not over a network filesystem, and
//! gateways on different machines need [`PostgresStore`](crate::PostgresStore).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use farebox_core::store::{Hold, HoldOutcome, ProofRecord, ProofState, ReplayStore, StoreError};
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::sql::{Backend, PROOF_COLUMNS, bounded, record, to_db_time};
use crate::{now_secs, validate_account, validate_key, validate_namespace, validate_reference};

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS farebox_proofs (
        namespace  TEXT    NOT NULL,
        key        TEXT    NOT NULL,
        state      TEXT    NOT NULL
                   CHECK (state IN ('reserved', 'pending', 'settled', 'failed')),
        reference  TEXT,
        expires_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, key)
    )",
    "CREATE INDEX IF NOT EXISTS farebox_proofs_by_state
        ON farebox_proofs (state, namespace, expires_at)",
];

fn err(e: sqlx::Error) -> StoreError {
    crate::sql::map_err(Backend::Sqlite, e)
}

/// A [`ReplayStore`] in a SQLite database.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing, with its parent directories and the schema) the database
    /// file at `path`. Errors: [`StoreError::Unavailable`] when the file cannot be created or
    /// opened.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(options);
        let pool = bounded("opening the SQLite store", async {
            pool.await.map_err(|e| {
                StoreError::Unavailable(format!("cannot open SQLite {}: {e}", path.display()))
            })
        })
        .await?;
        Self::with_schema(pool).await
    }

    /// A fresh in-memory database (one connection, kept open; gone when the store is dropped).
    pub async fn in_memory() -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")
            .map_err(err)?
            .busy_timeout(BUSY_TIMEOUT);
        // An in-memory database lives as long as its connection: keep exactly one, forever.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(err)?;
        Self::with_schema(pool).await
    }

    /// Creates what is missing of the schema, in one write transaction so that processes
    /// opening one file at once do not trip over each other (and a store made before holds
    /// gets their columns).
    async fn with_schema(pool: SqlitePool) -> Result<Self, StoreError> {
        bounded("creating the SQLite schema", async {
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
            for statement in SCHEMA.iter().chain(crate::sql::SESSION_SCHEMA) {
                sqlx::query(statement).execute(&mut *tx).await.map_err(err)?;
            }
            let columns: Vec<String> =
                sqlx::query_scalar("SELECT name FROM pragma_table_info('farebox_proofs')")
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(err)?;
            for (name, kind) in crate::sql::HOLD_COLUMNS {
                if !columns.iter().any(|c| c == name) {
                    let alter = format!("ALTER TABLE farebox_proofs ADD COLUMN {name} {kind}");
                    sqlx::query(&alter).execute(&mut *tx).await.map_err(err)?;
                }
            }
            for statement in crate::sql::HOLD_INDEXES {
                sqlx::query(statement).execute(&mut *tx).await.map_err(err)?;
            }
            tx.commit().await.map_err(err)
        })
        .await?;
        Ok(Self { pool })
    }

    /// Closes the pool, waiting for connections to finish (dropping the store also closes it).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[async_trait]
impl ReplayStore for SqliteStore {
    async fn reserve(
        &self,
        namespace: &str,
        key: &str,
        expires_at: u64,
    ) -> Result<bool, StoreError> {
        validate_key(namespace, key)?;
        bounded("reserve", async {
            let done = sqlx::query(
                "INSERT INTO farebox_proofs (namespace, key, state, reference, expires_at, updated_at)
                 VALUES (?, ?, 'reserved', NULL, ?, ?)
                 ON CONFLICT (namespace, key) DO NOTHING",
            )
            .bind(namespace)
            .bind(key)
            .bind(to_db_time(expires_at))
            .bind(to_db_time(now_secs()?))
            .execute(&self.pool)
            .await
            .map_err(err)?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    async fn update(
        &self,
        namespace: &str,
        key: &str,
        state: ProofState,
        reference: Option<&str>,
    ) -> Result<(), StoreError> {
        validate_key(namespace, key)?;
        validate_reference(reference)?;
        // Settlements are numbered under the write lock every SQLite write holds, so the
        // numbers only grow.
        let sql = crate::sql::update_sql(
            Backend::Sqlite,
            "(SELECT COALESCE(MAX(settled_seq), 0) + 1 FROM farebox_proofs)",
        );
        bounded("update", async {
            let done = sqlx::query(&sql)
                .bind(state.as_str())
                .bind(reference)
                .bind(to_db_time(now_secs()?))
                .bind(state.as_str())
                .bind(namespace)
                .bind(key)
                .execute(&self.pool)
                .await
                .map_err(err)?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!("{namespace}/{key}")));
            }
            Ok(())
        })
        .await
    }

    async fn release(&self, namespace: &str, key: &str) -> Result<(), StoreError> {
        validate_key(namespace, key)?;
        bounded("release", async {
            sqlx::query(
                "DELETE FROM farebox_proofs
                 WHERE namespace = ? AND key = ? AND state = 'reserved'",
            )
            .bind(namespace)
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(err)?;
            Ok(())
        })
        .await
    }

    async fn get(&self, namespace: &str, key: &str) -> Result<Option<ProofRecord>, StoreError> {
        validate_key(namespace, key)?;
        bounded("get", async {
            let sql = format!(
                "SELECT {PROOF_COLUMNS} FROM farebox_proofs WHERE namespace = ? AND key = ?"
            );
            let row = sqlx::query(&sql)
                .bind(namespace)
                .bind(key)
                .fetch_optional(&self.pool)
                .await
                .map_err(err)?;
            row.map(|row| record(&row, Backend::Sqlite)).transpose()
        })
        .await
    }

    async fn pending(&self, namespace: &str) -> Result<Vec<(String, ProofRecord)>, StoreError> {
        validate_namespace(namespace)?;
        bounded("pending", async {
            let sql = format!(
                "SELECT key, {PROOF_COLUMNS} FROM farebox_proofs
                 WHERE namespace = ? AND state = 'pending' ORDER BY key"
            );
            let rows =
                sqlx::query(&sql).bind(namespace).fetch_all(&self.pool).await.map_err(err)?;
            rows.iter()
                .map(|row| Ok((row.try_get("key").map_err(err)?, record(row, Backend::Sqlite)?)))
                .collect()
        })
        .await
    }

    async fn purge_expired(&self, now: u64) -> Result<u64, StoreError> {
        bounded("purge_expired", async {
            let done = sqlx::query(
                "DELETE FROM farebox_proofs WHERE state = 'reserved' AND expires_at < ?",
            )
            .bind(to_db_time(now))
            .execute(&self.pool)
            .await
            .map_err(err)?;
            Ok(done.rows_affected())
        })
        .await
    }

    async fn settled_mark(&self) -> Result<u64, StoreError> {
        bounded("settled_mark", async {
            let mark: i64 = sqlx::query_scalar(crate::sql::SETTLED_MARK)
                .fetch_one(&self.pool)
                .await
                .map_err(err)?;
            crate::sql::from_db_time("settled mark", mark)
        })
        .await
    }

    async fn reserve_hold(
        &self,
        namespace: &str,
        key: &str,
        expires_at: u64,
        hold: &Hold<'_>,
    ) -> Result<HoldOutcome, StoreError> {
        validate_key(namespace, key)?;
        validate_account(hold.account)?;
        bounded("reserve_hold", async {
            // The write lock, taken first, serializes every reservation (any process).
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
            let outcome = crate::sql::reserve_locked::<sqlx::Sqlite>(
                &mut tx,
                Backend::Sqlite,
                namespace,
                key,
                expires_at,
                hold,
            )
            .await?;
            if outcome == HoldOutcome::Reserved {
                tx.commit().await.map_err(err)?;
            }
            Ok(outcome)
        })
        .await
    }
}

crate::sql::sql_session_store!(SqliteStore, Backend::Sqlite);
