//! [`PostgresStore`]: one store shared by several gateway instances.
//!
//! Reserve is a single `INSERT … ON CONFLICT DO NOTHING` on the primary key, so of any number of
//! concurrent reserves of one key — from any instance — exactly one inserts the row. A
//! reservation with a hold runs in a transaction that first takes a transaction-scoped advisory
//! lock on its account (`pg_advisory_xact_lock(HOLD_LOCKS, hashtext(account))`), so holds of one
//! account are decided one after the other on every instance, each seeing the ones before.
//! Settlements are numbered from a sequence (`farebox_settled_seq`). The schema
//! is created idempotently on [`connect`](PostgresStore::connect) (`CREATE … IF NOT EXISTS`
//! inside a transaction holding `pg_advisory_xact_lock`, so instances starting at once do not
//! trip over each other).
//!
//! Failure is bounded and typed: connections are acquired with a 3 s timeout, statements are
//! cancelled by the server after 5 s (`statement_timeout`, `lock_timeout`), and every operation
//! is capped by [`OPERATION_TIMEOUT`](crate::OPERATION_TIMEOUT). A database that is down,
//! unreachable or shutting down yields [`StoreError::Unavailable`] (503, fail closed).
//! Durability is the server's: keep `synchronous_commit = on` (the default).

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use farebox_core::store::{Hold, HoldOutcome, ProofRecord, ProofState, ReplayStore, StoreError};
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::sql::{Backend, PROOF_COLUMNS, bounded, record, to_db_time};
use crate::{now_secs, validate_account, validate_key, validate_namespace, validate_reference};

/// How long a request waits for a pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// Server-side statement and lock timeouts.
const STATEMENT_TIMEOUT: &str = "5s";
const MAX_CONNECTIONS: u32 = 8;
/// `pg_advisory_xact_lock` key guarding schema creation ("farebox1").
const SCHEMA_LOCK: i64 = 0x6661_7265_626f_7831;
/// The first key of the two-key advisory locks taken per hold account ("fbhl"; two-key locks
/// never collide with the one-key [`SCHEMA_LOCK`]).
const HOLD_LOCKS: i32 = 0x6662_686c;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS farebox_proofs (
        namespace  TEXT   NOT NULL,
        key        TEXT   NOT NULL,
        state      TEXT   NOT NULL
                   CHECK (state IN ('reserved', 'pending', 'settled', 'failed')),
        reference  TEXT,
        expires_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (namespace, key)
    )",
    "CREATE INDEX IF NOT EXISTS farebox_proofs_by_state
        ON farebox_proofs (state, namespace, expires_at)",
];

fn err(e: sqlx::Error) -> StoreError {
    crate::sql::map_err(Backend::Postgres, e)
}

/// A [`ReplayStore`] in a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:pass@host:port/db`, libpq-style parameters such as
    /// `sslmode` apply) with a small pool and creates the schema if missing.
    ///
    /// Errors: [`StoreError::Invalid`] for a malformed URL, [`StoreError::Unavailable`] when the
    /// database cannot be reached within a few seconds.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Invalid(format!("bad PostgreSQL URL: {e}")))?
            .application_name("farebox")
            .options([
                ("statement_timeout", STATEMENT_TIMEOUT),
                ("lock_timeout", STATEMENT_TIMEOUT),
                ("idle_in_transaction_session_timeout", "30s"),
            ]);
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .idle_timeout(Some(Duration::from_secs(300)))
            .test_before_acquire(true)
            .connect_lazy_with(options);
        let store = Self { pool };
        bounded("creating the PostgreSQL schema", store.create_schema()).await?;
        Ok(store)
    }

    /// Wraps an existing pool (its timeouts are the caller's), creating the schema if missing.
    pub async fn from_pool(pool: PgPool) -> Result<Self, StoreError> {
        let store = Self { pool };
        bounded("creating the PostgreSQL schema", store.create_schema()).await?;
        Ok(store)
    }

    async fn create_schema(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(err)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SCHEMA_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        for statement in SCHEMA.iter().chain(crate::sql::SESSION_SCHEMA) {
            sqlx::query(statement).execute(&mut *tx).await.map_err(err)?;
        }
        for (name, kind) in crate::sql::HOLD_COLUMNS {
            let alter =
                format!("ALTER TABLE farebox_proofs ADD COLUMN IF NOT EXISTS {name} {kind}");
            sqlx::query(&alter).execute(&mut *tx).await.map_err(err)?;
        }
        let sequence = "CREATE SEQUENCE IF NOT EXISTS farebox_settled_seq";
        for statement in std::iter::once(&sequence).chain(crate::sql::HOLD_INDEXES) {
            sqlx::query(statement).execute(&mut *tx).await.map_err(err)?;
        }
        tx.commit().await.map_err(err)
    }

    /// Closes the pool (dropping the store also closes it).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[async_trait]
impl ReplayStore for PostgresStore {
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
                 VALUES ($1, $2, 'reserved', NULL, $3, $4)
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
        // A sequence number is handed out once and in order, even to transactions that commit
        // out of order: what `settled_mark` relies on.
        let sql = crate::sql::update_sql(Backend::Postgres, "nextval('farebox_settled_seq')");
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
                 WHERE namespace = $1 AND key = $2 AND state = 'reserved'",
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
                "SELECT {PROOF_COLUMNS} FROM farebox_proofs WHERE namespace = $1 AND key = $2"
            );
            let row = sqlx::query(&sql)
                .bind(namespace)
                .bind(key)
                .fetch_optional(&self.pool)
                .await
                .map_err(err)?;
            row.map(|row| record(&row, Backend::Postgres)).transpose()
        })
        .await
    }

    async fn pending(&self, namespace: &str) -> Result<Vec<(String, ProofRecord)>, StoreError> {
        validate_namespace(namespace)?;
        bounded("pending", async {
            let sql = format!(
                "SELECT key, {PROOF_COLUMNS} FROM farebox_proofs
                 WHERE namespace = $1 AND state = 'pending' ORDER BY key"
            );
            let rows =
                sqlx::query(&sql).bind(namespace).fetch_all(&self.pool).await.map_err(err)?;
            rows.iter()
                .map(|row| Ok((row.try_get("key").map_err(err)?, record(row, Backend::Postgres)?)))
                .collect()
        })
        .await
    }

    async fn purge_expired(&self, now: u64) -> Result<u64, StoreError> {
        bounded("purge_expired", async {
            let done = sqlx::query(
                "DELETE FROM farebox_proofs WHERE state = 'reserved' AND expires_at < $1",
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
            let mut tx = self.pool.begin().await.map_err(err)?;
            sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
                .bind(HOLD_LOCKS)
                .bind(hold.account)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            let outcome = crate::sql::reserve_locked::<sqlx::Postgres>(
                &mut tx,
                Backend::Postgres,
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

crate::sql::sql_session_store!(PostgresStore, Backend::Postgres);
