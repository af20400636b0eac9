//! [`BudgetStore`]: where a [`Budget`](crate::Budget) keeps what was spent and its ledger.
//!
//! A store keeps two things: the *spends* the caps count (one row per payment, reserved at its
//! worst case before paying and replaced by what was spent after, or released), and the
//! *ledger* people read. It does not decide anything: [`BudgetStore::reserve`] reads what the
//! caps need ([`Usage`]) and writes the reservation in one transaction, asking the caller's rule
//! in between, so that two payments (two processes, with a shared store) never both take the
//! last room under a cap.
//!
//! - [`MemoryStore`]: a process's memory (the default; for tests and libraries).
//! - [`SqliteStore`](crate::SqliteStore) (feature `sqlite`): a file, shared by processes, kept
//!   across restarts.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use farebox_core::Asset;

use crate::budget::LedgerEntry;
use farebox_wallet::ClientError;

/// What a payment asks of the caps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub asset: Asset,
    /// The host paid (`""` when not known).
    pub host: String,
    /// What the request costs at most: checked against the per-request cap.
    pub per_request: u128,
    /// What leaves the wallet now, at most (the price and fee bound, or a session deposit):
    /// counted against every other cap.
    pub outlay: u128,
}

/// What was spent in an asset, as a store read it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Counted ever: spent, and reserved for payments in flight or of unknown outcome.
    pub total: u128,
    /// The same, for the claim's host only.
    pub host_total: u128,
    /// The counted payments since the time asked for, for rolling windows.
    pub recent: Vec<Spend>,
}

/// One counted payment, for rolling windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spend {
    pub at: SystemTime,
    pub same_host: bool,
    pub amount: u128,
}

/// Which ledger entries to read.
#[derive(Debug, Clone, Default)]
pub struct LedgerFilter {
    /// Only entries for this host.
    pub host: Option<String>,
    /// Only entries at or after this time.
    pub since: Option<SystemTime>,
    /// Only entries before this time.
    pub until: Option<SystemTime>,
}

impl LedgerFilter {
    pub fn matches(&self, entry: &LedgerEntry) -> bool {
        self.host.as_ref().is_none_or(|h| h.eq_ignore_ascii_case(&entry.host))
            && self.since.is_none_or(|s| entry.at >= s)
            && self.until.is_none_or(|u| entry.at < u)
    }
}

/// A reservation that was never settled: its payment's outcome is unknown (the process that
/// made it stopped half-way), so it stays counted at its worst case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsettled {
    pub id: u64,
    pub at: SystemTime,
    pub asset: Asset,
    pub host: String,
    pub amount: u128,
    /// The process that reserved it.
    pub owner: u32,
}

/// Where a budget's spends and ledger live.
pub trait BudgetStore: Send + Sync + 'static {
    /// In one transaction: reads the [`Usage`] of `claim.asset` (and of `claim.host`), with
    /// every payment since `since` in `recent`, asks `admit`, and if it agrees records a
    /// reservation of `claim.outlay` at `now`. Returns the reservation's id, or `admit`'s
    /// refusal.
    fn reserve(
        &self,
        claim: &Claim,
        now: SystemTime,
        since: SystemTime,
        admit: &mut dyn FnMut(&Usage) -> Result<(), ClientError>,
    ) -> Result<u64, ClientError>;

    /// In one transaction: replaces reservation `id` by `spent` (0: released; the row goes),
    /// naming the `session` it went to, and appends `entries` to the ledger. Returns their ids.
    fn settle(
        &self,
        id: u64,
        spent: u128,
        session: Option<&str>,
        entries: &[LedgerEntry],
    ) -> Result<Vec<u64>, ClientError>;

    /// In one transaction: `amount` of `asset` came back; it stops counting, taken off the
    /// payments of `session` (newest first; with no session, off any payment in the asset), but
    /// never below zero; and `entry` (the evidence) is appended to the ledger.
    fn refund(
        &self,
        asset: &Asset,
        session: Option<&str>,
        amount: u128,
        entry: Option<&LedgerEntry>,
    ) -> Result<(), ClientError>;

    /// What is counted in `asset` (for `host`), with the payments since `since`.
    fn usage(&self, asset: &Asset, host: &str, since: SystemTime) -> Result<Usage, ClientError>;

    /// Appends one entry to the ledger; returns its id.
    fn append(&self, entry: &LedgerEntry) -> Result<u64, ClientError>;

    /// Adds the server's receipt to entry `id`.
    fn add_receipt(&self, id: u64, receipt: &str) -> Result<(), ClientError>;

    /// The entries `filter` selects, oldest first.
    fn entries(&self, filter: &LedgerFilter) -> Result<Vec<LedgerEntry>, ClientError>;

    /// Reservations of other processes that were never settled (see [`Unsettled`]).
    fn unsettled(&self) -> Result<Vec<Unsettled>, ClientError>;
}

/// The time, for rolling windows.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> SystemTime;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to (for tests of rolling windows).
#[derive(Debug)]
pub struct ManualClock(Mutex<SystemTime>);

impl ManualClock {
    pub fn new(start: SystemTime) -> Self {
        ManualClock(Mutex::new(start))
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug, Clone)]
struct Row {
    id: u64,
    at: SystemTime,
    asset: Asset,
    host: String,
    amount: u128,
    settled: bool,
    session: Option<String>,
}

#[derive(Default)]
struct Memory {
    next: u64,
    rows: Vec<Row>,
    ledger: Vec<LedgerEntry>,
}

impl Memory {
    fn next_id(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn append(&mut self, entry: &LedgerEntry) -> u64 {
        let id = self.next_id();
        self.ledger.push(LedgerEntry { id, ..entry.clone() });
        id
    }

    fn usage(&self, asset: &Asset, host: &str, since: SystemTime) -> Usage {
        let mut usage = Usage::default();
        for row in self.rows.iter().filter(|r| &r.asset == asset) {
            let same_host = row.host.eq_ignore_ascii_case(host);
            usage.total = usage.total.saturating_add(row.amount);
            if same_host {
                usage.host_total = usage.host_total.saturating_add(row.amount);
            }
            if row.at > since {
                usage.recent.push(Spend { at: row.at, same_host, amount: row.amount });
            }
        }
        usage
    }
}

/// Spends and ledger in this process's memory: what a budget uses unless given a store.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Memory>,
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl BudgetStore for MemoryStore {
    fn reserve(
        &self,
        claim: &Claim,
        now: SystemTime,
        since: SystemTime,
        admit: &mut dyn FnMut(&Usage) -> Result<(), ClientError>,
    ) -> Result<u64, ClientError> {
        let mut m = self.lock();
        admit(&m.usage(&claim.asset, &claim.host, since))?;
        let id = m.next_id();
        m.rows.push(Row {
            id,
            at: now,
            asset: claim.asset.clone(),
            host: claim.host.clone(),
            amount: claim.outlay,
            settled: false,
            session: None,
        });
        Ok(id)
    }

    fn settle(
        &self,
        id: u64,
        spent: u128,
        session: Option<&str>,
        entries: &[LedgerEntry],
    ) -> Result<Vec<u64>, ClientError> {
        let mut m = self.lock();
        if spent == 0 {
            m.rows.retain(|r| r.id != id);
        } else if let Some(row) = m.rows.iter_mut().find(|r| r.id == id) {
            row.amount = spent;
            row.settled = true;
            row.session = session.map(str::to_string);
        }
        Ok(entries.iter().map(|e| m.append(e)).collect())
    }

    fn refund(
        &self,
        asset: &Asset,
        session: Option<&str>,
        amount: u128,
        entry: Option<&LedgerEntry>,
    ) -> Result<(), ClientError> {
        let mut m = self.lock();
        let mut left = amount;
        for row in m.rows.iter_mut().rev().filter(|r| {
            &r.asset == asset && session.is_none_or(|s| r.session.as_deref() == Some(s))
        }) {
            let taken = left.min(row.amount);
            row.amount -= taken;
            left -= taken;
        }
        if let Some(entry) = entry {
            m.append(entry);
        }
        Ok(())
    }

    fn usage(&self, asset: &Asset, host: &str, since: SystemTime) -> Result<Usage, ClientError> {
        Ok(self.lock().usage(asset, host, since))
    }

    fn append(&self, entry: &LedgerEntry) -> Result<u64, ClientError> {
        Ok(self.lock().append(entry))
    }

    fn add_receipt(&self, id: u64, receipt: &str) -> Result<(), ClientError> {
        if let Some(e) = self.lock().ledger.iter_mut().find(|e| e.id == id) {
            e.receipt = Some(receipt.to_string());
        }
        Ok(())
    }

    fn entries(&self, filter: &LedgerFilter) -> Result<Vec<LedgerEntry>, ClientError> {
        Ok(self.lock().ledger.iter().filter(|e| filter.matches(e)).cloned().collect())
    }

    fn unsettled(&self) -> Result<Vec<Unsettled>, ClientError> {
        // One process: its reservations are its own payments in flight.
        Ok(Vec::new())
    }
}
