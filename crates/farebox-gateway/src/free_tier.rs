//! The free tier: N requests per client per fixed window, counted in the gateway's database so
//! that every instance sharing it counts together.
//!
//! The counter lives in its own table, `farebox_gateway_free_tier`, in the same database as the
//! store (the SQLite file or the PostgreSQL database), created by the migrations below when the
//! gateway starts. One request is one atomic `INSERT … ON CONFLICT DO UPDATE … RETURNING`, so
//! concurrent requests, on one instance or many, never both get the N-th free request.
//!
//! Windows are fixed (`floor(now / window) * window`): a client can use N at the end of one
//! window and N at the start of the next. Clients are stored as the SHA-256 of their identity
//! (an IP address, or the value of the header the operator named, which may be an API key), so
//! the table holds no identities.
//!
//! When the database cannot answer, the request is not served free: it goes on to the paywall,
//! which asks for payment (and counts a backend error).

use std::str::FromStr;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// Versioned schema changes, applied once each, in order.
const MIGRATIONS: &[(u32, &str)] = &[(
    1,
    "CREATE TABLE IF NOT EXISTS farebox_gateway_free_tier (
        client       TEXT   NOT NULL,
        window_start BIGINT NOT NULL,
        used         BIGINT NOT NULL,
        PRIMARY KEY (client, window_start)
    )",
)];

const TIMEOUT: Duration = Duration::from_secs(5);

/// The database the counters are in.
#[derive(Clone)]
pub enum CounterDb {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl CounterDb {
    /// Opens the SQLite file at `path` (the store's) and runs the migrations.
    pub async fn sqlite(path: &std::path::Path) -> Result<Self, String> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .acquire_timeout(TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let db = CounterDb::Sqlite(pool);
        db.migrate().await?;
        Ok(db)
    }

    /// Connects to PostgreSQL at `url` and runs the migrations.
    pub async fn postgres(url: &str) -> Result<Self, String> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|_| "not a valid PostgreSQL URL".to_string())?
            .application_name("farebox-gateway")
            .options([("statement_timeout", "5s")]);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(TIMEOUT)
            .connect_lazy_with(options);
        let db = CounterDb::Postgres(pool);
        db.migrate().await?;
        Ok(db)
    }

    async fn migrate(&self) -> Result<(), String> {
        // The same statements on either database; only the connection types differ. Each
        // migration is claimed by inserting its version, so it runs once even when instances
        // start together (PostgreSQL also serialises them with an advisory lock).
        macro_rules! migrate {
            ($tx:expr) => {{
                sqlx::query(
                    "CREATE TABLE IF NOT EXISTS farebox_gateway_migrations (version BIGINT PRIMARY KEY)",
                )
                .execute(&mut *$tx)
                .await?;
                for (version, sql) in MIGRATIONS {
                    let claim = format!(
                        "INSERT INTO farebox_gateway_migrations (version) VALUES ({version}) \
                         ON CONFLICT DO NOTHING"
                    );
                    if sqlx::query(&claim).execute(&mut *$tx).await?.rows_affected() == 1 {
                        sqlx::query(sql).execute(&mut *$tx).await?;
                    }
                }
            }};
        }
        let run = async {
            match self {
                CounterDb::Sqlite(pool) => {
                    let mut tx = pool.begin().await?;
                    migrate!(tx);
                    tx.commit().await
                }
                CounterDb::Postgres(pool) => {
                    let mut tx = pool.begin().await?;
                    sqlx::query("SELECT pg_advisory_xact_lock(7402402)").execute(&mut *tx).await?;
                    migrate!(tx);
                    tx.commit().await
                }
            }
        };
        match tokio::time::timeout(TIMEOUT * 2, run).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("migrating the gateway tables: {e}")),
            Err(_) => Err("migrating the gateway tables timed out".into()),
        }
    }

    /// Adds one use for `client` in the window starting at `window_start`; returns the uses.
    async fn bump(&self, client: &str, window_start: i64) -> Result<i64, sqlx::Error> {
        match self {
            CounterDb::Sqlite(pool) => {
                sqlx::query_scalar(
                    "INSERT INTO farebox_gateway_free_tier (client, window_start, used) VALUES (?, ?, 1)
                     ON CONFLICT (client, window_start) DO UPDATE SET used = used + 1
                     RETURNING used",
                )
                .bind(client)
                .bind(window_start)
                .fetch_one(pool)
                .await
            }
            CounterDb::Postgres(pool) => {
                sqlx::query_scalar(
                    "INSERT INTO farebox_gateway_free_tier (client, window_start, used) VALUES ($1, $2, 1)
                     ON CONFLICT (client, window_start) DO UPDATE SET used = farebox_gateway_free_tier.used + 1
                     RETURNING used",
                )
                .bind(client)
                .bind(window_start)
                .fetch_one(pool)
                .await
            }
        }
    }

    /// Deletes the counters of windows that started before `before`.
    pub async fn purge(&self, before: i64) -> Result<u64, String> {
        let done = match self {
            CounterDb::Sqlite(pool) => {
                sqlx::query("DELETE FROM farebox_gateway_free_tier WHERE window_start < ?")
                    .bind(before)
                    .execute(pool)
                    .await
                    .map(|r| r.rows_affected())
            }
            CounterDb::Postgres(pool) => {
                sqlx::query("DELETE FROM farebox_gateway_free_tier WHERE window_start < $1")
                    .bind(before)
                    .execute(pool)
                    .await
                    .map(|r| r.rows_affected())
            }
        };
        done.map_err(|e| e.to_string())
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), String> {
        let q = async {
            match self {
                CounterDb::Sqlite(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop),
                CounterDb::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop),
            }
        };
        match tokio::time::timeout(TIMEOUT, q).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }
}

/// A configured free tier over a [`CounterDb`].
#[derive(Clone)]
pub struct FreeTier {
    db: CounterDb,
    requests: u64,
    window_secs: u64,
}

impl FreeTier {
    pub fn new(db: CounterDb, requests: u64, window_secs: u64) -> Self {
        FreeTier { db, requests, window_secs: window_secs.max(1) }
    }

    /// Counts one request of `client` at `now` (Unix seconds): `Ok(true)` when it is free.
    pub async fn take(&self, client: &str, now: u64) -> Result<bool, String> {
        let window_start =
            i64::try_from(now / self.window_secs * self.window_secs).unwrap_or(i64::MAX);
        let key = hex::encode(Sha256::digest(client.as_bytes()));
        match tokio::time::timeout(TIMEOUT, self.db.bump(&key, window_start)).await {
            Ok(Ok(used)) => Ok(u64::try_from(used).unwrap_or(u64::MAX) <= self.requests),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the free-tier counter timed out".into()),
        }
    }

    /// Forgets windows that are over.
    pub async fn purge(&self, now: u64) -> Result<u64, String> {
        let current = now / self.window_secs * self.window_secs;
        self.db.purge(i64::try_from(current).unwrap_or(i64::MAX)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn n_free_requests_per_window_then_none() {
        let dir = tempfile::tempdir().unwrap();
        let db = CounterDb::sqlite(&dir.path().join("g.sqlite")).await.unwrap();
        // Opening again runs no migration twice.
        let again = CounterDb::sqlite(&dir.path().join("g.sqlite")).await.unwrap();
        let tier = FreeTier::new(db, 2, 60);
        let other = FreeTier::new(again, 2, 60);
        assert!(tier.take("1.2.3.4", 600).await.unwrap());
        assert!(other.take("1.2.3.4", 610).await.unwrap(), "a second instance counts the same");
        assert!(!tier.take("1.2.3.4", 619).await.unwrap());
        assert!(tier.take("5.6.7.8", 619).await.unwrap(), "clients count apart");
        assert!(tier.take("1.2.3.4", 660).await.unwrap(), "a new window starts over");
        assert_eq!(tier.purge(660).await.unwrap(), 2);
    }
}
