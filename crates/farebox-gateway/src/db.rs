//! The gateway's own tables, in the same database as the store (the SQLite file or the
//! PostgreSQL database), so that every instance sharing the store shares them too:
//!
//! | table | what |
//! |---|---|
//! | `farebox_gateway_free_tier` | free-tier uses per client and window ([`crate::free_tier`]) |
//! | `farebox_gateway_payments` | the payment log: one row per payment taken (an L402 token counts once, at its first use) |
//! | `farebox_gateway_revenue` | revenue per rail, route and asset, in base units |
//! | `farebox_gateway_l402_tokens` | L402 tokens seen paid: first and last use, uses; a token's row is inserted by the claim of its first paid answer ([`GatewayDb::claim_token`]), which is what makes it a payment once on every instance |
//!
//! The migrations below run when the gateway starts, each once, even when instances start
//! together. Every query is written once, with `$n` placeholders, which both SQLite (through
//! sqlx) and PostgreSQL read. Amounts are `u128` base units, stored as decimal text (SQLite has
//! no wider integer than 64 bits); revenue is added with a compare-and-swap on a version column,
//! so concurrent instances never lose an addition.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// Versioned schema changes, applied once each, in order; one statement each (PostgreSQL
/// prepares statements one at a time).
const MIGRATIONS: &[(u32, &str)] = &[
    (
        1,
        "CREATE TABLE IF NOT EXISTS farebox_gateway_free_tier (
            client       TEXT   NOT NULL,
            window_start BIGINT NOT NULL,
            used         BIGINT NOT NULL,
            PRIMARY KEY (client, window_start)
        )",
    ),
    (
        2,
        "CREATE TABLE IF NOT EXISTS farebox_gateway_payments (
            id        TEXT   PRIMARY KEY,
            at_ms     BIGINT NOT NULL,
            rail      TEXT   NOT NULL,
            route     TEXT   NOT NULL,
            method    TEXT   NOT NULL,
            path      TEXT   NOT NULL,
            asset     TEXT   NOT NULL,
            amount    TEXT   NOT NULL,
            reference TEXT   NOT NULL,
            payer     TEXT,
            token_id  TEXT,
            instance  TEXT   NOT NULL
        )",
    ),
    (
        3,
        "CREATE INDEX IF NOT EXISTS farebox_gateway_payments_at ON farebox_gateway_payments (at_ms)",
    ),
    (
        4,
        "CREATE TABLE IF NOT EXISTS farebox_gateway_revenue (
            rail     TEXT   NOT NULL,
            route    TEXT   NOT NULL,
            asset    TEXT   NOT NULL,
            amount   TEXT   NOT NULL,
            payments BIGINT NOT NULL,
            version  BIGINT NOT NULL,
            PRIMARY KEY (rail, route, asset)
        )",
    ),
    (
        5,
        "CREATE TABLE IF NOT EXISTS farebox_gateway_l402_tokens (
            token_id     TEXT   PRIMARY KEY,
            payment_hash TEXT   NOT NULL,
            route        TEXT   NOT NULL,
            asset        TEXT   NOT NULL,
            amount       TEXT   NOT NULL,
            first_ms     BIGINT NOT NULL,
            last_ms      BIGINT NOT NULL,
            uses         BIGINT NOT NULL
        )",
    ),
    (
        6,
        "CREATE INDEX IF NOT EXISTS farebox_gateway_l402_tokens_last ON farebox_gateway_l402_tokens (last_ms)",
    ),
];

/// How long one statement (or a migration) may take.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(5);

/// Longest request path kept in the payment log.
const MAX_LOGGED_PATH: usize = 512;

/// The database the gateway's tables are in.
#[derive(Clone)]
pub enum GatewayDb {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to whichever pool `$db` holds: the queries are the same text
/// on both databases, only the connection types differ.
macro_rules! on_pool {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            GatewayDb::Sqlite($pool) => $body,
            GatewayDb::Postgres($pool) => $body,
        }
    };
}

/// Inserts the row of the L402 token `$token` for the paid answer `$row` unless it exists
/// (see [`GatewayDb::claim_token`]); `$ex` is a pool or a transaction of either database.
macro_rules! claim_token_on {
    ($ex:expr, $token:expr, $row:expr) => {{
        let row: &PaymentRow = $row;
        sqlx::query(
            "INSERT INTO farebox_gateway_l402_tokens
               (token_id, payment_hash, route, asset, amount, first_ms, last_ms, uses)
             VALUES ($1, $2, $3, $4, $5, $6, $6, 0)
             ON CONFLICT (token_id) DO NOTHING",
        )
        .bind($token)
        .bind(&row.reference)
        .bind(&row.route)
        .bind(&row.asset)
        .bind(&row.amount)
        .bind(row.at_ms)
        .execute($ex)
        .await
        .map(|r| r.rows_affected() == 1)
    }};
}

/// A database error, as text (the gateway logs it and answers 503 or refuses the free tier).
pub type DbError = String;

fn db_err(e: sqlx::Error) -> DbError {
    e.to_string()
}

async fn bounded<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, DbError> {
    match tokio::time::timeout(TIMEOUT, f).await {
        Ok(r) => r.map_err(db_err),
        Err(_) => Err(format!("{what} timed out")),
    }
}

/// One payment taken (a row of the payment log), as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PaymentRow {
    pub id: String,
    /// Unix milliseconds.
    pub at_ms: i64,
    pub rail: String,
    /// The route's label (`[host]pattern`).
    pub route: String,
    pub method: String,
    pub path: String,
    /// `msat`, or the token's CAIP-19 id (`eip155:84532/erc20:0x…`).
    pub asset: String,
    /// In base units of `asset`, as decimal text.
    pub amount: String,
    pub reference: String,
    pub payer: Option<String>,
    /// The L402 token's id (hex), for L402 payments.
    pub token_id: Option<String>,
    /// The gateway instance that took it.
    pub instance: String,
}

/// A paid answer, as the request path hands it to the payment log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub row: PaymentRow,
    pub kind: Kind,
}

/// What the request path made of a paid answer (and counted in the metrics when it answered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A payment: counted when answered, then logged and added to the revenue. For L402, the
    /// token's first paid answer, claimed with [`GatewayDb::claim_token`].
    Payment,
    /// Another paid answer for an L402 token already claimed: counted on the token only.
    TokenUse,
    /// An L402 answer whose token could not be claimed when it was answered (the database did not
    /// answer): the payment log claims it, and it is a payment if that claim is the first.
    Unclaimed,
}

/// Revenue of one rail on one route in one asset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevenueRow {
    pub rail: String,
    pub route: String,
    pub asset: String,
    pub amount: u128,
    pub payments: u64,
}

/// An L402 token seen paid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRow {
    pub token_id: String,
    pub payment_hash: String,
    pub route: String,
    pub asset: String,
    pub amount: String,
    pub first_ms: i64,
    pub last_ms: i64,
    pub uses: i64,
}

/// What [`GatewayDb::record`] made of one paid answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// A new payment: logged, and added to the revenue.
    Payment,
    /// Another use of an L402 token already paid for: counted on the token only.
    TokenUse,
    /// Already recorded (a retried batch).
    Duplicate,
}

impl GatewayDb {
    /// Opens the SQLite file at `path` (the store's) and runs the migrations.
    pub async fn sqlite(path: &std::path::Path) -> Result<Self, DbError> {
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
        let db = GatewayDb::Sqlite(pool);
        db.migrate().await?;
        Ok(db)
    }

    /// Connects to PostgreSQL at `url` and runs the migrations.
    pub async fn postgres(url: &str) -> Result<Self, DbError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|_| "not a valid PostgreSQL URL".to_string())?
            .application_name("farebox-gateway")
            .options([("statement_timeout", "5s")]);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(TIMEOUT)
            .connect_lazy_with(options);
        let db = GatewayDb::Postgres(pool);
        db.migrate().await?;
        Ok(db)
    }

    async fn migrate(&self) -> Result<(), DbError> {
        // Each migration is claimed by inserting its version, so it runs once even when
        // instances start together (PostgreSQL also serialises them with an advisory lock).
        macro_rules! migrate {
            ($tx:expr) => {{
                sqlx::query(
                    "CREATE TABLE IF NOT EXISTS farebox_gateway_migrations (version BIGINT PRIMARY KEY)",
                )
                .execute(&mut *$tx)
                .await?;
                for (version, sql) in MIGRATIONS {
                    let claim = "INSERT INTO farebox_gateway_migrations (version) VALUES ($1) \
                                 ON CONFLICT DO NOTHING";
                    let claimed =
                        sqlx::query(claim).bind(i64::from(*version)).execute(&mut *$tx).await?;
                    if claimed.rows_affected() == 1 {
                        sqlx::query(sql).execute(&mut *$tx).await?;
                    }
                }
            }};
        }
        let run = async {
            match self {
                GatewayDb::Sqlite(pool) => {
                    let mut tx = pool.begin().await?;
                    migrate!(tx);
                    tx.commit().await
                }
                GatewayDb::Postgres(pool) => {
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

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), DbError> {
        bounded("ping", async {
            on_pool!(self, |pool| sqlx::query("SELECT 1").execute(pool).await.map(drop))
        })
        .await
    }

    // ---- free tier ----

    /// Adds one use for `client` in the window starting at `window_start`; returns the uses.
    pub(crate) async fn bump_free_tier(
        &self,
        client: &str,
        window_start: i64,
    ) -> Result<i64, DbError> {
        let sql = "INSERT INTO farebox_gateway_free_tier (client, window_start, used) VALUES ($1, $2, 1)
                   ON CONFLICT (client, window_start) DO UPDATE SET used = farebox_gateway_free_tier.used + 1
                   RETURNING used";
        bounded("the free-tier counter", async {
            on_pool!(self, |pool| sqlx::query_scalar(sql)
                .bind(client)
                .bind(window_start)
                .fetch_one(pool)
                .await)
        })
        .await
    }

    /// Deletes the free-tier counters of windows that started before `before`.
    pub(crate) async fn purge_free_tier(&self, before: i64) -> Result<u64, DbError> {
        let sql = "DELETE FROM farebox_gateway_free_tier WHERE window_start < $1";
        bounded("purging the free tier", async {
            on_pool!(self, |pool| sqlx::query(sql)
                .bind(before)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()))
        })
        .await
    }

    // ---- payments ----

    /// Claims the first paid answer of the L402 token in `payment` (its `token_id`): inserts the
    /// token's row, with no use counted yet, unless one exists. `true` for the one claim, on any
    /// instance sharing the database, that created it: that answer is when the token was paid
    /// for. The payment log counts the uses later ([`GatewayDb::record`]).
    pub async fn claim_token(&self, payment: &PaymentRow) -> Result<bool, DbError> {
        let Some(token) = &payment.token_id else {
            return Ok(false);
        };
        bounded("claiming an L402 token", async {
            on_pool!(self, |pool| claim_token_on!(pool, token, payment))
        })
        .await
    }

    /// Records a batch of paid answers in one transaction: a [`Kind::Payment`] is logged and
    /// added to the revenue, and every L402 answer is counted as a use of its token. A
    /// [`Kind::Unclaimed`] answer's token is claimed here (see [`GatewayDb::claim_token`]) and
    /// is a payment when that claim is the first. Returns what each event was, in order.
    /// Retrying a batch after an error is safe: event ids make it idempotent.
    pub async fn record(&self, events: &[Logged]) -> Result<Vec<Recorded>, DbError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let run = async {
            on_pool!(self, |pool| {
                let mut tx = pool.begin().await?;
                // Each token once per batch, in key order (the same lock order in every
                // instance): how often it was used, when last, and its first unclaimed answer.
                let mut tokens: BTreeMap<&str, (i64, i64, Option<usize>)> = BTreeMap::new();
                for (i, e) in events.iter().enumerate() {
                    if let Some(token) = &e.row.token_id {
                        let slot = tokens.entry(token).or_insert((0, e.row.at_ms, None));
                        slot.0 += 1;
                        slot.1 = slot.1.max(e.row.at_ms);
                        if e.kind == Kind::Unclaimed && slot.2.is_none() {
                            slot.2 = Some(i);
                        }
                    }
                }
                // `None`: still to be logged as a payment.
                let mut out: Vec<Option<Recorded>> = events
                    .iter()
                    .map(|e| match e.kind {
                        Kind::Payment => None,
                        Kind::TokenUse | Kind::Unclaimed => Some(Recorded::TokenUse),
                    })
                    .collect();
                for (token, (uses, last, unclaimed)) in &tokens {
                    if let Some(first) = unclaimed
                        && claim_token_on!(&mut *tx, *token, &events[*first].row)?
                    {
                        out[*first] = None;
                    }
                    sqlx::query(
                        "UPDATE farebox_gateway_l402_tokens SET uses = uses + $2,
                           last_ms = CASE WHEN last_ms < $3 THEN $3 ELSE last_ms END
                         WHERE token_id = $1",
                    )
                    .bind(*token)
                    .bind(*uses)
                    .bind(*last)
                    .execute(&mut *tx)
                    .await?;
                }
                // Added revenue per key, in key order.
                let mut added: BTreeMap<(&str, &str, &str), (u128, i64)> = BTreeMap::new();
                for (Logged { row: e, .. }, slot) in events.iter().zip(out.iter_mut()) {
                    if slot.is_some() {
                        continue;
                    }
                    let path: String = e.path.chars().take(MAX_LOGGED_PATH).collect();
                    let inserted = sqlx::query(
                    "INSERT INTO farebox_gateway_payments
                       (id, at_ms, rail, route, method, path, asset, amount, reference, payer, token_id, instance)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(&e.id)
                .bind(e.at_ms)
                .bind(&e.rail)
                .bind(&e.route)
                .bind(&e.method)
                .bind(path)
                .bind(&e.asset)
                .bind(&e.amount)
                .bind(&e.reference)
                .bind(&e.payer)
                .bind(&e.token_id)
                .bind(&e.instance)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                    if inserted == 0 {
                        *slot = Some(Recorded::Duplicate);
                        continue;
                    }
                    let amount = e.amount.parse::<u128>().unwrap_or(0);
                    let sum = added.entry((&e.rail, &e.route, &e.asset)).or_insert((0, 0));
                    sum.0 = sum.0.saturating_add(amount);
                    sum.1 += 1;
                    *slot = Some(Recorded::Payment);
                }
                for ((rail, route, asset), (amount, payments)) in added {
                    sqlx::query(
                    "INSERT INTO farebox_gateway_revenue (rail, route, asset, amount, payments, version)
                     VALUES ($1, $2, $3, '0', 0, 0) ON CONFLICT DO NOTHING",
                )
                .bind(rail)
                .bind(route)
                .bind(asset)
                .execute(&mut *tx)
                .await?;
                    // Compare-and-swap: another instance may add to the same row meanwhile.
                    loop {
                        let (current, version): (String, i64) = sqlx::query_as(
                            "SELECT amount, version FROM farebox_gateway_revenue
                         WHERE rail = $1 AND route = $2 AND asset = $3",
                        )
                        .bind(rail)
                        .bind(route)
                        .bind(asset)
                        .fetch_one(&mut *tx)
                        .await?;
                        let total = current.parse::<u128>().unwrap_or(0).saturating_add(amount);
                        let swapped = sqlx::query(
                            "UPDATE farebox_gateway_revenue
                         SET amount = $4, payments = payments + $5, version = version + 1
                         WHERE rail = $1 AND route = $2 AND asset = $3 AND version = $6",
                        )
                        .bind(rail)
                        .bind(route)
                        .bind(asset)
                        .bind(total.to_string())
                        .bind(payments)
                        .bind(version)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                        if swapped == 1 {
                            break;
                        }
                    }
                }
                tx.commit().await?;
                Ok::<_, sqlx::Error>(
                    out.into_iter().map(|r| r.unwrap_or(Recorded::Duplicate)).collect(),
                )
            })
        };
        bounded("recording payments", run).await
    }

    /// The latest `limit` payments, newest first.
    pub async fn recent_payments(&self, limit: u32) -> Result<Vec<PaymentRow>, DbError> {
        type Row = (
            String,
            i64,
            String,
            String,
            String,
            String,
            String,
            String,
            String,
            Option<String>,
            Option<String>,
            String,
        );
        let sql = "SELECT id, at_ms, rail, route, method, path, asset, amount, reference, payer, token_id, instance
                   FROM farebox_gateway_payments ORDER BY at_ms DESC, id DESC LIMIT $1";
        let rows: Vec<Row> = bounded("listing payments", async {
            on_pool!(self, |pool| sqlx::query_as(sql).bind(i64::from(limit)).fetch_all(pool).await)
        })
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| PaymentRow {
                id: r.0,
                at_ms: r.1,
                rail: r.2,
                route: r.3,
                method: r.4,
                path: r.5,
                asset: r.6,
                amount: r.7,
                reference: r.8,
                payer: r.9,
                token_id: r.10,
                instance: r.11,
            })
            .collect())
    }

    /// Revenue per rail, route and asset, since the tables were created.
    pub async fn revenue(&self) -> Result<Vec<RevenueRow>, DbError> {
        let sql = "SELECT rail, route, asset, amount, payments FROM farebox_gateway_revenue
                   ORDER BY rail, route, asset";
        let rows: Vec<(String, String, String, String, i64)> = bounded("reading revenue", async {
            on_pool!(self, |pool| sqlx::query_as(sql).fetch_all(pool).await)
        })
        .await?;
        Ok(rows
            .into_iter()
            .map(|(rail, route, asset, amount, payments)| RevenueRow {
                rail,
                route,
                asset,
                amount: amount.parse().unwrap_or(0),
                payments: u64::try_from(payments).unwrap_or(0),
            })
            .collect())
    }

    /// Deletes payment log rows older than `before_ms` (revenue totals stay).
    pub async fn purge_payments(&self, before_ms: i64) -> Result<u64, DbError> {
        let sql = "DELETE FROM farebox_gateway_payments WHERE at_ms < $1";
        bounded("purging payments", async {
            on_pool!(self, |pool| sqlx::query(sql)
                .bind(before_ms)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()))
        })
        .await
    }

    // ---- L402 tokens ----

    /// The L402 tokens used most recently.
    pub async fn tokens(&self, limit: u32) -> Result<Vec<TokenRow>, DbError> {
        type Row = (String, String, String, String, String, i64, i64, i64);
        let sql = "SELECT token_id, payment_hash, route, asset, amount, first_ms, last_ms, uses
                   FROM farebox_gateway_l402_tokens
                   ORDER BY last_ms DESC, token_id LIMIT $1";
        let rows: Vec<Row> = bounded("listing tokens", async {
            on_pool!(self, |pool| sqlx::query_as(sql).bind(i64::from(limit)).fetch_all(pool).await)
        })
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| TokenRow {
                token_id: r.0,
                payment_hash: r.1,
                route: r.2,
                asset: r.3,
                amount: r.4,
                first_ms: r.5,
                last_ms: r.6,
                uses: r.7,
            })
            .collect())
    }
}
