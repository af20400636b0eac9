//! [`SqliteStore`]: a [`BudgetStore`] in a SQLite file, so that caps hold across processes and
//! restarts.
//!
//! The database runs in WAL mode with `synchronous=FULL` (a reservation that returned has been
//! fsynced), and every decision is one `BEGIN IMMEDIATE` transaction: it takes the database's
//! write lock *before* reading what was spent, so two processes reserving at once are put in a
//! row, and the second reads what the first reserved. Writers wait for each other up to
//! [`BUSY_TIMEOUT`]; past that the store is unavailable and nothing is paid.
//!
//! Amounts are `u128` base units, stored as decimal text (SQLite integers are 64-bit) and
//! summed in Rust; running totals per asset and host are kept in their own table so that a
//! reservation reads only the rows of its longest rolling window. A reservation is owned by the
//! process that made it: one left by a process that stopped is still counted, at its worst
//! case, and [`BudgetStore::unsettled`] lists it.
//!
//! The file is created readable by its owner only (it holds proofs of payment). Several
//! processes on one machine may share it, not over a network filesystem. Calls are synchronous
//! (a transaction takes milliseconds, or waits for another writer up to [`BUSY_TIMEOUT`]), so
//! the middleware's thread waits for them: fine for a command or an agent, and a server paying
//! many requests at once should keep its budget in one process.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use farebox_core::{Asset, Money};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use crate::budget::{EntryKind, LedgerEntry};
use crate::budget_store::{BudgetStore, Claim, LedgerFilter, Spend, Unsettled, Usage};
use farebox_wallet::ClientError;

/// How long a writer waits for another process's transaction.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The key `totals` keeps the all-hosts total under (no host is named `*`).
const ALL_HOSTS: &str = "*";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS spends (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms   INTEGER NOT NULL,
    asset   TEXT    NOT NULL,
    host    TEXT    NOT NULL,
    amount  TEXT    NOT NULL,
    state   TEXT    NOT NULL CHECK (state IN ('reserved', 'spent')),
    session TEXT,
    owner   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS spends_recent ON spends (asset, at_ms);
CREATE INDEX IF NOT EXISTS spends_by_session ON spends (session) WHERE session IS NOT NULL;
CREATE TABLE IF NOT EXISTS totals (
    asset  TEXT NOT NULL,
    host   TEXT NOT NULL,
    amount TEXT NOT NULL,
    PRIMARY KEY (asset, host)
);
CREATE TABLE IF NOT EXISTS ledger (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms     INTEGER NOT NULL,
    host      TEXT    NOT NULL,
    url       TEXT    NOT NULL,
    rail      TEXT    NOT NULL,
    kind      TEXT    NOT NULL,
    asset     TEXT    NOT NULL,
    amount    TEXT    NOT NULL,
    fee       TEXT    NOT NULL,
    reference TEXT    NOT NULL,
    proof     TEXT,
    receipt   TEXT
);
CREATE INDEX IF NOT EXISTS ledger_by_time ON ledger (at_ms);
";

fn unavailable(e: impl std::fmt::Display) -> ClientError {
    ClientError::Unavailable(format!("budget store: {e}"))
}

/// The key spends are counted under: network and address identify a token, not its symbol.
fn asset_key(asset: &Asset) -> String {
    match asset {
        Asset::Bitcoin => "bitcoin".into(),
        Asset::Token(t) => format!("{}/{}", t.network, t.address.to_ascii_lowercase()),
        other => format!("{other:?}"),
    }
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn from_millis(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn amount(text: &str) -> Result<u128, ClientError> {
    text.parse().map_err(|_| unavailable(format!("corrupt amount {text:?}")))
}

/// A budget's spends and ledger in a SQLite file.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    owner: u32,
}

impl SqliteStore {
    /// Opens (creating if missing, readable by its owner only, with the schema) the database
    /// at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        let path = path.as_ref();
        create_private(path)?;
        let conn = Connection::open(path)
            .map_err(|e| unavailable(format!("cannot open {}: {e}", path.display())))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(unavailable)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(unavailable)?;
        conn.execute_batch(SCHEMA).map_err(unavailable)?;
        Ok(SqliteStore { conn: Mutex::new(conn), owner: std::process::id() })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction, committed when it returns `Ok`.
    fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let mut conn = self.conn();
        let tx =
            conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(unavailable)?;
        let out = f(&tx)?;
        tx.commit().map_err(unavailable)?;
        Ok(out)
    }
}

/// Creates `path` (and its folder) readable by its owner only, if it does not exist.
fn create_private(path: &Path) -> Result<(), ClientError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| unavailable(format!("cannot create {}: {e}", parent.display())))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .map(drop)
        .map_err(|e| unavailable(format!("cannot create {}: {e}", path.display())))
}

fn total(tx: &Transaction<'_>, asset: &str, host: &str) -> Result<u128, ClientError> {
    let text: Option<String> = tx
        .query_row(
            "SELECT amount FROM totals WHERE asset = ?1 AND host = ?2",
            params![asset, host],
            |r| r.get(0),
        )
        .optional()
        .map_err(unavailable)?;
    text.map_or(Ok(0), |t| amount(&t))
}

/// Moves the totals of `asset` (all hosts, and `host`) from counting `from` to `to` for one row.
fn retotal(
    tx: &Transaction<'_>,
    asset: &str,
    host: &str,
    from: u128,
    to: u128,
) -> Result<(), ClientError> {
    for key in [ALL_HOSTS, host] {
        let now = total(tx, asset, key)?.saturating_sub(from).saturating_add(to);
        tx.execute(
            "INSERT INTO totals (asset, host, amount) VALUES (?1, ?2, ?3)
             ON CONFLICT (asset, host) DO UPDATE SET amount = excluded.amount",
            params![asset, key, now.to_string()],
        )
        .map_err(unavailable)?;
    }
    Ok(())
}

fn usage(
    tx: &Transaction<'_>,
    asset: &Asset,
    host: &str,
    since: SystemTime,
) -> Result<Usage, ClientError> {
    let key = asset_key(asset);
    let mut usage = Usage {
        total: total(tx, &key, ALL_HOSTS)?,
        host_total: total(tx, &key, host)?,
        recent: Vec::new(),
    };
    let mut stmt = tx
        .prepare_cached("SELECT at_ms, host, amount FROM spends WHERE asset = ?1 AND at_ms > ?2")
        .map_err(unavailable)?;
    let rows = stmt
        .query_map(params![key, millis(since)], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
        })
        .map_err(unavailable)?;
    for row in rows {
        let (at, row_host, text) = row.map_err(unavailable)?;
        usage.recent.push(Spend {
            at: from_millis(at),
            same_host: row_host.eq_ignore_ascii_case(host),
            amount: amount(&text)?,
        });
    }
    Ok(usage)
}

fn append(tx: &Transaction<'_>, e: &LedgerEntry) -> Result<u64, ClientError> {
    let asset = serde_json::to_string(&e.amount.asset).map_err(unavailable)?;
    tx.execute(
        "INSERT INTO ledger (at_ms, host, url, rail, kind, asset, amount, fee, reference, proof, receipt)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            millis(e.at),
            e.host,
            e.url,
            e.rail,
            e.kind.as_str(),
            asset,
            e.amount.amount.to_string(),
            e.fee.amount.to_string(),
            e.reference,
            e.proof,
            e.receipt,
        ],
    )
    .map_err(unavailable)?;
    u64::try_from(tx.last_insert_rowid()).map_err(unavailable)
}

impl BudgetStore for SqliteStore {
    fn reserve(
        &self,
        claim: &Claim,
        now: SystemTime,
        since: SystemTime,
        admit: &mut dyn FnMut(&Usage) -> Result<(), ClientError>,
    ) -> Result<u64, ClientError> {
        self.write(|tx| {
            admit(&usage(tx, &claim.asset, &claim.host, since)?)?;
            let key = asset_key(&claim.asset);
            tx.execute(
                "INSERT INTO spends (at_ms, asset, host, amount, state, owner)
                 VALUES (?1, ?2, ?3, ?4, 'reserved', ?5)",
                params![millis(now), key, claim.host, claim.outlay.to_string(), self.owner],
            )
            .map_err(unavailable)?;
            let id = u64::try_from(tx.last_insert_rowid()).map_err(unavailable)?;
            retotal(tx, &key, &claim.host, 0, claim.outlay)?;
            Ok(id)
        })
    }

    fn settle(
        &self,
        id: u64,
        spent: u128,
        session: Option<&str>,
        entries: &[LedgerEntry],
    ) -> Result<Vec<u64>, ClientError> {
        self.write(|tx| {
            let row: Option<(String, String, String)> = tx
                .query_row("SELECT asset, host, amount FROM spends WHERE id = ?1", params![id], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()
                .map_err(unavailable)?;
            if let Some((asset, host, reserved)) = row {
                retotal(tx, &asset, &host, amount(&reserved)?, spent)?;
                if spent == 0 {
                    tx.execute("DELETE FROM spends WHERE id = ?1", params![id]).map_err(unavailable)?;
                } else {
                    tx.execute(
                        "UPDATE spends SET amount = ?2, state = 'spent', session = ?3 WHERE id = ?1",
                        params![id, spent.to_string(), session],
                    )
                    .map_err(unavailable)?;
                }
            }
            entries.iter().map(|e| append(tx, e)).collect()
        })
    }

    fn refund(
        &self,
        asset: &Asset,
        session: Option<&str>,
        refunded: u128,
        entry: Option<&LedgerEntry>,
    ) -> Result<(), ClientError> {
        let key = asset_key(asset);
        self.write(|tx| {
            let rows: Vec<(i64, String, String)> = {
                let mut stmt = tx
                    .prepare(
                        "SELECT id, host, amount FROM spends
                         WHERE asset = ?1 AND (?2 IS NULL OR session = ?2) AND amount != '0'
                         ORDER BY id DESC",
                    )
                    .map_err(unavailable)?;
                let rows = stmt
                    .query_map(params![key, session], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .map_err(unavailable)?;
                rows.collect::<Result<_, _>>().map_err(unavailable)?
            };
            let mut left = refunded;
            for (id, host, text) in rows {
                if left == 0 {
                    break;
                }
                let counted = amount(&text)?;
                let taken = left.min(counted);
                left -= taken;
                tx.execute(
                    "UPDATE spends SET amount = ?2 WHERE id = ?1",
                    params![id, (counted - taken).to_string()],
                )
                .map_err(unavailable)?;
                retotal(tx, &key, &host, counted, counted - taken)?;
            }
            if let Some(entry) = entry {
                append(tx, entry)?;
            }
            Ok(())
        })
    }

    fn usage(&self, asset: &Asset, host: &str, since: SystemTime) -> Result<Usage, ClientError> {
        let mut conn = self.conn();
        let tx =
            conn.transaction_with_behavior(TransactionBehavior::Deferred).map_err(unavailable)?;
        usage(&tx, asset, host, since)
    }

    fn append(&self, entry: &LedgerEntry) -> Result<u64, ClientError> {
        self.write(|tx| append(tx, entry))
    }

    fn add_receipt(&self, id: u64, receipt: &str) -> Result<(), ClientError> {
        self.write(|tx| {
            tx.execute("UPDATE ledger SET receipt = ?2 WHERE id = ?1", params![id, receipt])
                .map_err(unavailable)
                .map(drop)
        })
    }

    fn entries(&self, filter: &LedgerFilter) -> Result<Vec<LedgerEntry>, ClientError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT id, at_ms, host, url, rail, kind, asset, amount, fee, reference, proof, receipt
                 FROM ledger
                 WHERE (?1 IS NULL OR host = ?1 COLLATE NOCASE)
                   AND (?2 IS NULL OR at_ms >= ?2) AND (?3 IS NULL OR at_ms < ?3)
                 ORDER BY id",
            )
            .map_err(unavailable)?;
        let rows = stmt
            .query_map(
                params![filter.host, filter.since.map(millis), filter.until.map(millis)],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, String>(6)?,
                        r.get::<_, String>(7)?,
                        r.get::<_, String>(8)?,
                        r.get::<_, String>(9)?,
                        r.get::<_, Option<String>>(10)?,
                        r.get::<_, Option<String>>(11)?,
                    ))
                },
            )
            .map_err(unavailable)?;
        let mut entries = Vec::new();
        for row in rows {
            let (id, at, host, url, rail, kind, asset, amt, fee, reference, proof, receipt) =
                row.map_err(unavailable)?;
            let asset: Asset = serde_json::from_str(&asset).map_err(unavailable)?;
            entries.push(LedgerEntry {
                id: u64::try_from(id).unwrap_or(0),
                at: from_millis(at),
                host,
                url,
                rail,
                kind: EntryKind::parse(&kind)
                    .ok_or_else(|| unavailable(format!("unknown entry kind {kind:?}")))?,
                amount: Money::new(asset.clone(), amount(&amt)?),
                fee: Money::new(asset, amount(&fee)?),
                reference,
                proof,
                receipt,
            });
        }
        Ok(entries)
    }

    fn unsettled(&self) -> Result<Vec<Unsettled>, ClientError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT id, at_ms, asset, host, amount, owner FROM spends
                 WHERE state = 'reserved' AND owner != ?1 ORDER BY id",
            )
            .map_err(unavailable)?;
        let rows = stmt
            .query_map(params![self.owner], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, u32>(5)?,
                ))
            })
            .map_err(unavailable)?;
        let mut out = Vec::new();
        for row in rows {
            let (id, at, asset, host, amt, owner) = row.map_err(unavailable)?;
            if process_alive(owner) {
                continue; // still paying
            }
            out.push(Unsettled {
                id: u64::try_from(id).unwrap_or(0),
                at: from_millis(at),
                asset: parse_asset_key(&asset),
                host,
                amount: amount(&amt)?,
                owner,
            });
        }
        Ok(out)
    }
}

/// The asset a spends key names, as far as the key tells (a token's symbol and decimals are not
/// in it).
fn parse_asset_key(key: &str) -> Asset {
    match key.split_once('/') {
        Some((network, address)) => Asset::Token(farebox_core::Token {
            network: network.into(),
            address: address.into(),
            symbol: address.into(),
            decimals: 0,
        }),
        None => Asset::Bitcoin,
    }
}

/// Whether process `pid` is running (Linux: its `/proc` entry; elsewhere, assumed so).
fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") { Path::new(&format!("/proc/{pid}")).exists() } else { true }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{Budget, Caps};
    use std::sync::Arc;

    #[test]
    fn what_was_spent_survives_a_restart_and_a_crash_mid_payment_stays_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wallet.db");
        let open = || {
            Budget::with_store(Arc::new(SqliteStore::open(&path).unwrap()))
                .allow(Money::sats(10), Money::sats(25))
                .unwrap()
        };
        let b = open();
        let r = b.reserve(&Money::sats(10)).unwrap();
        b.commit(r, &Money::sats(8));
        // A payment in flight when the process stops: never settled.
        let lost = b.reserve(&Money::sats(10)).unwrap();
        std::mem::forget(lost);
        drop(b);

        let b = open();
        assert_eq!(b.spent(&Asset::Bitcoin), Money::sats(18), "8 spent, 10 of unknown outcome");
        let refused = b.reserve(&Money::sats(10)).err();
        assert!(
            matches!(refused, Some(ClientError::OverBudget { .. })),
            "18 counted: 7 left of 25"
        );
        let r = b.reserve(&Money::sats(7)).unwrap();
        b.release(r);
        assert_eq!(b.spent(&Asset::Bitcoin), Money::sats(18));
    }

    #[test]
    fn a_reservation_left_by_a_stopped_process_is_listed_as_unsettled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wallet.db");
        let store = Arc::new(SqliteStore::open(&path).unwrap());
        let b = Budget::with_store(store.clone()).allow(Money::sats(10), Money::sats(100)).unwrap();
        std::mem::forget(b.reserve_at("api.example", &Money::sats(10), &Money::sats(10)).unwrap());
        assert!(store.unsettled().unwrap().is_empty(), "this process is still paying");
        // As if another process had reserved it and stopped (no such pid on Linux).
        Connection::open(&path).unwrap().execute("UPDATE spends SET owner = 4194304", []).unwrap();
        let left = store.unsettled().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!((left[0].host.as_str(), left[0].amount), ("api.example", 10_000));
        assert_eq!(b.spent(&Asset::Bitcoin), Money::sats(10), "and still counted");
    }

    #[test]
    fn the_file_is_private_and_amounts_past_64_bits_are_kept_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w").join("wallet.db");
        let store = Arc::new(SqliteStore::open(&path).unwrap());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{mode:o}");
        }
        let token = Asset::Token(farebox_core::Token {
            network: "eip155:1".into(),
            address: "0xAbC".into(),
            symbol: "WEI".into(),
            decimals: 18,
        });
        let huge = u128::from(u64::MAX) * 1000;
        let b = Budget::with_store(store).limit(
            Caps::new(Money::new(token.clone(), huge), Money::new(token.clone(), huge * 2))
                .unwrap(),
        );
        let r = b.reserve(&Money::new(token.clone(), huge)).unwrap();
        b.commit(r, &Money::new(token.clone(), huge - 1));
        assert_eq!(b.spent(&token).amount, huge - 1);
    }
}
