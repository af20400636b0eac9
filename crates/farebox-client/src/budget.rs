//! Spending caps and the spend ledger.
//!
//! A [`Budget`] has, per asset, [`Caps`]: a maximum per request, a total, and optionally caps
//! per rolling window (an hour, a day, any length), per host or over all hosts. Every cap is
//! enforced *before* anything is paid: the worst case (price plus the most the rail may add in
//! fees, or the deposit a session puts up) is reserved first, in one transaction of the
//! [`BudgetStore`] with the reading of what was already spent, and a request that does not fit
//! is a [`ClientError::OverBudget`], never a payment. An asset the budget names no caps for
//! cannot be spent at all (fail closed). After paying, the reservation is replaced by what was
//! actually spent and the [`Ledger`] entries of the payment are appended, in one transaction.
//!
//! The store decides how long this holds: [`MemoryStore`] (the default) for a process,
//! [`SqliteStore`](crate::SqliteStore) across processes and restarts. A reservation whose
//! payment never reported back (the process crashed) stays counted at its worst case.
//!
//! The rule that decides whether a claim fits is [`Caps::admit`], the one place caps are
//! applied; stores only supply what was spent.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use farebox_core::{Asset, Money};
use serde::Serialize;

use crate::budget_store::{
    BudgetStore, Claim, Clock, LedgerFilter, MemoryStore, SystemClock, Usage,
};
use farebox_wallet::ClientError;

/// An hour, for [`Caps::per_hour`].
pub const HOUR: Duration = Duration::from_secs(3600);
/// A day, for [`Caps::per_day`].
pub const DAY: Duration = Duration::from_secs(86_400);

/// Over which payments a cap counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every payment in the asset.
    AllHosts,
    /// The payments to the request's host (each host has its own allowance).
    PerHost,
}

/// One cap: at most `amount` spent in `scope`, within the last `window` (or ever).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cap {
    pub scope: Scope,
    /// `None`: all time.
    pub window: Option<Duration>,
    /// Base units of the asset.
    pub amount: u128,
}

impl Cap {
    fn describe(&self, asset: &Asset) -> String {
        let amount = Money::new(asset.clone(), self.amount);
        let scope = match self.scope {
            Scope::AllHosts => "",
            Scope::PerHost => " for this host",
        };
        match self.window {
            None if self.scope == Scope::AllHosts => format!("a total of {amount}"),
            None => format!("a total of {amount}{scope}"),
            Some(w) => format!("{amount}{scope} per {}", window_name(w)),
        }
    }
}

/// `1h`, `1d`, `90s`…, for people.
pub fn window_name(w: Duration) -> String {
    let s = w.as_secs();
    if s > 0 && s.is_multiple_of(86_400) {
        if s == 86_400 { "day".into() } else { format!("{} days", s / 86_400) }
    } else if s > 0 && s.is_multiple_of(3600) {
        if s == 3600 { "hour".into() } else { format!("{} hours", s / 3600) }
    } else {
        format!("{s} s")
    }
}

/// The caps on spending one asset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caps {
    asset: Asset,
    per_request: u128,
    caps: Vec<Cap>,
}

impl Caps {
    /// At most `per_request` per request and `total` in all, in their asset (both in the same).
    pub fn new(per_request: Money, total: Money) -> Result<Self, ClientError> {
        same_asset(&per_request, &total)?;
        Ok(Caps {
            asset: total.asset,
            per_request: per_request.amount,
            caps: vec![Cap { scope: Scope::AllHosts, window: None, amount: total.amount }],
        })
    }

    /// Also at most `amount` in `scope` within any `window` (`None`: ever).
    pub fn cap(
        mut self,
        scope: Scope,
        window: Option<Duration>,
        amount: Money,
    ) -> Result<Self, ClientError> {
        if amount.asset != self.asset {
            return Err(ClientError::Config(format!(
                "a cap in {} among caps in {}",
                amount.asset.symbol(),
                self.asset.symbol()
            )));
        }
        if window.is_some_and(|w| w.is_zero()) {
            return Err(ClientError::Config("a cap's window must be longer than zero".into()));
        }
        self.caps.retain(|c| !(c.scope == scope && c.window == window));
        self.caps.push(Cap { scope, window, amount: amount.amount });
        Ok(self)
    }

    /// At most `amount` in any rolling hour.
    pub fn per_hour(self, amount: Money) -> Result<Self, ClientError> {
        self.cap(Scope::AllHosts, Some(HOUR), amount)
    }

    /// At most `amount` in any rolling day (24 hours).
    pub fn per_day(self, amount: Money) -> Result<Self, ClientError> {
        self.cap(Scope::AllHosts, Some(DAY), amount)
    }

    /// At most `amount` in all to any one host.
    pub fn per_host(self, amount: Money) -> Result<Self, ClientError> {
        self.cap(Scope::PerHost, None, amount)
    }

    /// At most `amount` to any one host in any rolling day.
    pub fn per_host_per_day(self, amount: Money) -> Result<Self, ClientError> {
        self.cap(Scope::PerHost, Some(DAY), amount)
    }

    pub fn asset(&self) -> &Asset {
        &self.asset
    }

    pub fn per_request(&self) -> Money {
        Money::new(self.asset.clone(), self.per_request)
    }

    /// Every cap but the per-request one.
    pub fn caps(&self) -> &[Cap] {
        &self.caps
    }

    /// The longest window any cap looks back over (what a store must read).
    fn lookback(&self) -> Option<Duration> {
        self.caps.iter().filter_map(|c| c.window).max()
    }

    /// What `cap` has used of what `usage` shows at `now`.
    fn used(cap: &Cap, usage: &Usage, now: SystemTime) -> u128 {
        match cap.window {
            None => match cap.scope {
                Scope::AllHosts => usage.total,
                Scope::PerHost => usage.host_total,
            },
            Some(window) => {
                let since = now.checked_sub(window).unwrap_or(SystemTime::UNIX_EPOCH);
                usage
                    .recent
                    .iter()
                    .filter(|s| s.at > since && (cap.scope == Scope::AllHosts || s.same_host))
                    .fold(0u128, |sum, s| sum.saturating_add(s.amount))
            }
        }
    }

    /// Whether `claim` fits, given what `usage` says was spent (and is reserved) as of `now`:
    /// its per-request amount within the per-request cap, its outlay within what every other
    /// cap has left. The one place the caps are applied.
    pub fn admit(&self, claim: &Claim, usage: &Usage, now: SystemTime) -> Result<(), ClientError> {
        if claim.per_request > self.per_request {
            return Err(ClientError::OverBudget {
                price: Box::new(Money::new(self.asset.clone(), claim.per_request)),
                limit: format!("at most {} per request", self.per_request()),
            });
        }
        for cap in &self.caps {
            let used = Self::used(cap, usage, now);
            if used.saturating_add(claim.outlay) > cap.amount {
                let left = Money::new(self.asset.clone(), cap.amount.saturating_sub(used));
                return Err(ClientError::OverBudget {
                    price: Box::new(Money::new(self.asset.clone(), claim.outlay)),
                    limit: format!("{left} left of {}", cap.describe(&self.asset)),
                });
            }
        }
        Ok(())
    }

    /// What each cap has left, as of `now`, for `host`.
    pub fn left(&self, usage: &Usage, now: SystemTime) -> Vec<(Cap, Money)> {
        self.caps
            .iter()
            .map(|cap| {
                let left = cap.amount.saturating_sub(Self::used(cap, usage, now));
                (cap.clone(), Money::new(self.asset.clone(), left))
            })
            .collect()
    }
}

fn same_asset(a: &Money, b: &Money) -> Result<(), ClientError> {
    if a.asset != b.asset {
        return Err(ClientError::Config(
            "per-request and total limits must be in the same asset".into(),
        ));
    }
    Ok(())
}

/// Per-asset spending caps, shared by every request of a client (clones share them and the
/// store).
#[derive(Clone)]
pub struct Budget {
    caps: Arc<Mutex<Vec<Caps>>>,
    store: Arc<dyn BudgetStore>,
    clock: Arc<dyn Clock>,
}

impl Default for Budget {
    fn default() -> Self {
        Self::with_store(Arc::new(MemoryStore::default()))
    }
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget").field("caps", &self.all_caps()).finish_non_exhaustive()
    }
}

/// Money set aside for one payment; give it back or commit it. A reservation that is dropped
/// (the process stopped half-way) stays counted at its worst case: an unknown outcome is never
/// taken for money that did not leave.
#[derive(Debug)]
#[must_use = "a reservation must be committed or released"]
pub struct Reservation {
    id: u64,
    asset: Asset,
    amount: u128,
}

impl Reservation {
    /// What was set aside.
    pub fn amount(&self) -> Money {
        Money::new(self.asset.clone(), self.amount)
    }
}

impl Budget {
    /// A budget in memory that allows nothing until caps are added.
    pub fn new() -> Self {
        Self::default()
    }

    /// A budget keeping what was spent (and its ledger) in `store`.
    pub fn with_store(store: Arc<dyn BudgetStore>) -> Self {
        Budget { caps: Arc::default(), store, clock: Arc::new(SystemClock) }
    }

    /// Reads the time from `clock` (for rolling windows; tests inject one).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Allows spending `per_request` at most per request and `total` in all, in their asset.
    /// Both must be in the same asset. A second call for an asset changes its limits and keeps
    /// what was already spent or reserved against them.
    pub fn allow(self, per_request: Money, total: Money) -> Result<Self, ClientError> {
        Ok(self.limit(Caps::new(per_request, total)?))
    }

    /// Sets the caps of their asset (replacing any it had).
    pub fn limit(self, caps: Caps) -> Self {
        {
            let mut all = self.caps.lock().unwrap_or_else(|e| e.into_inner());
            all.retain(|c| c.asset != caps.asset);
            all.push(caps);
        }
        self
    }

    /// The caps of every asset.
    pub fn all_caps(&self) -> Vec<Caps> {
        self.caps.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn caps_of(&self, asset: &Asset) -> Result<Caps, ClientError> {
        let all = self.caps.lock().unwrap_or_else(|e| e.into_inner());
        all.iter().find(|c| &c.asset == asset).cloned().ok_or_else(|| ClientError::OverBudget {
            price: Box::new(Money::zero(asset.clone())),
            limit: format!("no budget for {}", asset.symbol()),
        })
    }

    /// The ledger kept in the same store.
    pub fn ledger(&self) -> Ledger {
        Ledger { store: self.store.clone() }
    }

    fn claim(host: &str, per_request: &Money, outlay: &Money) -> Result<Claim, ClientError> {
        if outlay.asset != per_request.asset {
            return Err(ClientError::OverBudget {
                price: Box::new(outlay.clone()),
                limit: format!(
                    "a deposit in another asset than the {} asked",
                    per_request.asset.symbol()
                ),
            });
        }
        Ok(Claim {
            asset: per_request.asset.clone(),
            host: host.to_string(),
            per_request: per_request.amount,
            outlay: outlay.amount,
        })
    }

    /// Whether `worst_case` fits the per-request limit and what is left of every cap.
    pub fn check(&self, worst_case: &Money) -> Result<(), ClientError> {
        self.check_at("", worst_case, worst_case)
    }

    /// Whether a payment to `host` costing `per_request` (the price and fee bound) that puts up
    /// `outlay` now would fit. Reserves nothing: another payment may take the room meanwhile.
    pub fn check_at(
        &self,
        host: &str,
        per_request: &Money,
        outlay: &Money,
    ) -> Result<(), ClientError> {
        let claim = Self::claim(host, per_request, outlay)?;
        let caps = self.caps_of(&claim.asset)?;
        let now = self.clock.now();
        let usage = self.store.usage(&claim.asset, host, since(now, caps.lookback()))?;
        caps.admit(&claim, &usage, now)
    }

    /// Sets `worst_case` aside, or refuses if it does not fit.
    pub fn reserve(&self, worst_case: &Money) -> Result<Reservation, ClientError> {
        self.reserve_at("", worst_case, worst_case)
    }

    /// Sets `outlay` aside against the total once `per_request` (what the request costs, drawn
    /// from a session deposit) fits the per-request limit: how a session payment is reserved,
    /// its outlay being the deposit or top-up it puts up now (possibly zero).
    pub fn reserve_session(
        &self,
        per_request: &Money,
        outlay: &Money,
    ) -> Result<Reservation, ClientError> {
        self.reserve_at("", per_request, outlay)
    }

    /// Sets `outlay` aside for a payment to `host` once `per_request` fits the per-request cap
    /// and `outlay` what every other cap has left: checked and recorded in one transaction of
    /// the store, so that concurrent payments (other processes too) cannot both take the last
    /// room.
    pub fn reserve_at(
        &self,
        host: &str,
        per_request: &Money,
        outlay: &Money,
    ) -> Result<Reservation, ClientError> {
        let claim = Self::claim(host, per_request, outlay)?;
        let caps = self.caps_of(&claim.asset)?;
        let now = self.clock.now();
        let mut admit = |usage: &Usage| caps.admit(&claim, usage, now);
        let id = self.store.reserve(&claim, now, since(now, caps.lookback()), &mut admit)?;
        Ok(Reservation { id, asset: claim.asset, amount: claim.outlay })
    }

    /// Money that came back (a session's unspent deposit, refunded at close): it no longer
    /// counts as spent.
    pub fn refund(&self, amount: &Money) {
        if let Err(e) = self.store.refund(&amount.asset, None, amount.amount, None) {
            tracing::warn!(error = %e, "a refund could not be credited to the budget");
        }
    }

    /// Gives a reservation back unspent (the payment did not happen).
    pub fn release(&self, reservation: Reservation) {
        self.settle(reservation, 0, None, &[]);
    }

    /// Replaces a reservation by what was actually spent. Spending more than was reserved (a
    /// wallet that overran its fee limit) is counted in full, so later requests see it.
    pub fn commit(&self, reservation: Reservation, spent: &Money) {
        self.commit_with(reservation, spent, None, &[]);
    }

    /// [`Self::commit`], appending `entries` to the ledger in the same transaction; `session`
    /// names the session a deposit went to (its refund is credited against it). Returns the
    /// entries' ids.
    pub(crate) fn commit_with(
        &self,
        reservation: Reservation,
        spent: &Money,
        session: Option<&str>,
        entries: &[LedgerEntry],
    ) -> Vec<u64> {
        let amount =
            if spent.asset == reservation.asset { spent.amount } else { reservation.amount };
        if amount > reservation.amount {
            tracing::warn!(
                reserved = reservation.amount,
                spent = amount,
                "a payment cost more than its reservation"
            );
        }
        self.settle(reservation, amount, session, entries)
    }

    fn settle(
        &self,
        reservation: Reservation,
        spent: u128,
        session: Option<&str>,
        entries: &[LedgerEntry],
    ) -> Vec<u64> {
        match self.store.settle(reservation.id, spent, session, entries) {
            Ok(ids) => ids,
            Err(e) => {
                // The reservation stays counted at its worst case: safe, if pessimistic.
                tracing::error!(error = %e, "a payment could not be settled in the budget store");
                Vec::new()
            }
        }
    }

    /// Counted so far in `asset`: what was spent, and what is reserved for payments in flight
    /// or whose outcome is unknown.
    pub fn spent(&self, asset: &Asset) -> Money {
        let amount = match self.store.usage(asset, "", SystemTime::now()) {
            Ok(usage) => usage.total,
            Err(e) => {
                tracing::warn!(error = %e, "the budget store cannot say what was spent");
                0
            }
        };
        Money::new(asset.clone(), amount)
    }

    /// What each cap on `asset` has left for a payment to `host`.
    pub fn left(&self, asset: &Asset, host: &str) -> Result<Vec<(Cap, Money)>, ClientError> {
        let caps = self.caps_of(asset)?;
        let now = self.clock.now();
        let usage = self.store.usage(asset, host, since(now, caps.lookback()))?;
        Ok(caps.left(&usage, now))
    }
}

fn since(now: SystemTime, lookback: Option<Duration>) -> SystemTime {
    lookback.and_then(|w| now.checked_sub(w)).unwrap_or(now)
}

/// What a ledger entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A request paid for by itself: `amount` left the wallet.
    Payment,
    /// Money put up for a session (opening or topping it up): `amount` left the wallet.
    Deposit,
    /// A request paid for from a session deposit: nothing more left the wallet.
    Session,
    /// A session's unspent deposit came back: `amount` returned to the wallet; the reference is
    /// the evidence (the close transaction, or the return invoice's payment hash).
    Refund,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Payment => "payment",
            EntryKind::Deposit => "deposit",
            EntryKind::Session => "session",
            EntryKind::Refund => "refund",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [EntryKind::Payment, EntryKind::Deposit, EntryKind::Session, EntryKind::Refund]
            .into_iter()
            .find(|k| k.as_str() == text)
    }
}

/// One payment the client made (or money that came back). `Debug` leaves the proof out: it is
/// a bearer secret.
#[derive(Clone, Serialize)]
pub struct LedgerEntry {
    /// Assigned by the store (0 until stored).
    pub id: u64,
    pub at: SystemTime,
    /// The host (and port) paid.
    pub host: String,
    pub url: String,
    pub rail: String,
    pub kind: EntryKind,
    /// The price paid to the server (or the deposit, or the refund).
    pub amount: Money,
    /// Fees paid on top (Lightning routing, …), in the same asset.
    pub fee: Money,
    /// The rail's reference (payment hash, channel id, transaction hash…); `unknown` when the
    /// payment's outcome is not known.
    pub reference: String,
    /// The proof sent to the server (`Header: value` lines): a bearer secret.
    #[serde(skip)]
    pub proof: Option<String>,
    /// The server's receipt header, when it sent one (`Header: value`).
    pub receipt: Option<String>,
}

impl fmt::Debug for LedgerEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LedgerEntry")
            .field("id", &self.id)
            .field("at", &self.at)
            .field("host", &self.host)
            .field("url", &self.url)
            .field("rail", &self.rail)
            .field("kind", &self.kind)
            .field("amount", &self.amount)
            .field("fee", &self.fee)
            .field("reference", &self.reference)
            .field("proof", &self.proof.as_ref().map(|_| "<redacted>"))
            .field("receipt", &self.receipt)
            .finish()
    }
}

/// Every payment made, in order, in a [`BudgetStore`]. Cheap to clone; clones share the store.
#[derive(Clone)]
pub struct Ledger {
    store: Arc<dyn BudgetStore>,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger { store: Arc::new(MemoryStore::default()) }
    }
}

impl fmt::Debug for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ledger").finish_non_exhaustive()
    }
}

impl Ledger {
    /// A ledger reading and writing `store`.
    pub fn with_store(store: Arc<dyn BudgetStore>) -> Self {
        Ledger { store }
    }

    /// Adds the server's receipt to entry `id`.
    pub(crate) fn add_receipt(&self, id: u64, receipt: &str) {
        if let Err(e) = self.store.add_receipt(id, receipt) {
            tracing::warn!(error = %e, "a receipt could not be added to the ledger");
        }
    }

    /// A copy of the entries (empty, with a warning, if the store cannot be read).
    pub fn entries(&self) -> Vec<LedgerEntry> {
        self.query(&LedgerFilter::default()).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the ledger cannot be read");
            Vec::new()
        })
    }

    /// The entries `filter` selects, oldest first.
    pub fn query(&self, filter: &LedgerFilter) -> Result<Vec<LedgerEntry>, ClientError> {
        self.store.entries(filter)
    }
}

/// A wallet's refunds (a session's deposit coming back) go to the budget, off the session's
/// deposits, and into the ledger with their evidence, in one transaction.
impl farebox_wallet::Accounts for Budget {
    fn refund_session(&self, refund: &farebox_wallet::Refund) {
        let host = reqwest::Url::parse(&refund.url)
            .map(|u| crate::middleware::host_of(&u))
            .unwrap_or_default();
        let entry = LedgerEntry {
            id: 0,
            at: SystemTime::now(),
            host,
            url: refund.url.clone(),
            rail: refund.rail.into(),
            kind: EntryKind::Refund,
            amount: refund.amount.clone(),
            fee: Money::zero(refund.amount.asset.clone()),
            reference: refund.reference.clone(),
            proof: None,
            receipt: None,
        };
        let (asset, amount) = (&entry.amount.asset, entry.amount.amount);
        if let Err(e) = self.store.refund(asset, Some(&refund.session), amount, Some(&entry)) {
            tracing::warn!(error = %e, "a session refund could not be recorded");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget_store::ManualClock;

    #[test]
    fn per_request_and_total_limits_are_enforced_before_paying() {
        let b = Budget::new().allow(Money::sats(10), Money::sats(25)).unwrap();
        assert!(matches!(b.reserve(&Money::sats(11)), Err(ClientError::OverBudget { .. })));
        let r1 = b.reserve(&Money::sats(10)).unwrap();
        let r2 = b.reserve(&Money::sats(10)).unwrap();
        assert!(b.reserve(&Money::sats(10)).is_err(), "reserved amounts count against the total");
        b.commit(r1, &Money::sats(9));
        b.release(r2);
        assert_eq!(b.spent(&Asset::Bitcoin), Money::sats(9));
        let r3 = b.reserve(&Money::sats(10)).unwrap();
        b.commit(r3, &Money::sats(10));
        assert!(b.reserve(&Money::sats(7)).is_err(), "19 of 25 spent; 7 does not fit");
        assert!(b.reserve(&Money::sats(6)).is_ok());
    }

    #[test]
    fn an_overrun_counts_in_full_and_changing_limits_keeps_the_tally() {
        let b = Budget::new().allow(Money::sats(10), Money::sats(30)).unwrap();
        let r = b.reserve(&Money::sats(10)).unwrap();
        b.commit(r, &Money::sats(12));
        assert_eq!(b.spent(&Asset::Bitcoin), Money::sats(12));
        let b = b.allow(Money::sats(20), Money::sats(30)).unwrap();
        assert_eq!(b.spent(&Asset::Bitcoin), Money::sats(12), "new limits keep what was spent");
        assert!(b.reserve(&Money::sats(19)).is_err(), "12 + 19 > 30");
    }

    #[test]
    fn an_asset_without_a_limit_cannot_be_spent() {
        let b = Budget::new();
        let err = b.reserve(&Money::msats(1)).unwrap_err();
        assert!(matches!(err, ClientError::OverBudget { .. }), "{err}");
    }

    #[test]
    fn a_session_deposit_counts_against_the_total_and_its_refund_comes_back() {
        let b = Budget::new().allow(Money::sats(10), Money::sats(100)).unwrap();
        // A deposit larger than the per-request limit is fine; the request price must fit it.
        let r = b.reserve_session(&Money::sats(10), &Money::sats(60)).unwrap();
        assert!(matches!(
            b.reserve_session(&Money::sats(11), &Money::sats(0)),
            Err(ClientError::OverBudget { .. })
        ));
        assert!(b.reserve_session(&Money::sats(10), &Money::sats(41)).is_err(), "60 reserved");
        b.commit(r, &Money::sats(60));
        // Requests drawn from the deposit reserve nothing more.
        let r = b.reserve_session(&Money::sats(10), &Money::sats(0)).unwrap();
        b.commit(r, &Money::sats(0));
        assert_eq!(b.spent(&Asset::Bitcoin), Money::sats(60));
        b.refund(&Money::sats(35));
        assert_eq!(b.spent(&Asset::Bitcoin), Money::sats(25));
        assert!(b.reserve(&Money::sats(10)).is_ok());
    }

    #[test]
    fn a_rolling_day_frees_its_budget_once_it_has_passed() {
        let clock = Arc::new(ManualClock::new(SystemTime::UNIX_EPOCH + DAY * 1000));
        let caps = Caps::new(Money::sats(10), Money::sats(1000))
            .unwrap()
            .per_day(Money::sats(20))
            .unwrap();
        let b = Budget::new().limit(caps).clock(clock.clone());
        for _ in 0..2 {
            let r = b.reserve(&Money::sats(10)).unwrap();
            b.commit(r, &Money::sats(10));
        }
        assert!(b.reserve(&Money::sats(1)).is_err(), "20 of 20 spent today");
        clock.advance(DAY - Duration::from_secs(1));
        assert!(b.reserve(&Money::sats(1)).is_err(), "still within the day of the payments");
        clock.advance(Duration::from_secs(2));
        let r = b.reserve(&Money::sats(10)).expect("a day later the window is free again");
        b.commit(r, &Money::sats(10));
        assert_eq!(b.spent(&Asset::Bitcoin), Money::sats(30), "the total still counts all");
    }

    #[test]
    fn a_per_host_cap_leaves_other_hosts_their_own_allowance() {
        let caps = Caps::new(Money::sats(10), Money::sats(100))
            .unwrap()
            .per_host(Money::sats(15))
            .unwrap();
        let b = Budget::new().limit(caps);
        let r = b.reserve_at("a.example", &Money::sats(10), &Money::sats(10)).unwrap();
        b.commit(r, &Money::sats(10));
        assert!(b.reserve_at("a.example", &Money::sats(10), &Money::sats(10)).is_err());
        let r = b.reserve_at("b.example", &Money::sats(10), &Money::sats(10)).unwrap();
        b.commit(r, &Money::sats(10));
        let left = b.left(&Asset::Bitcoin, "a.example").unwrap();
        assert!(left.contains(&(
            Cap { scope: Scope::PerHost, window: None, amount: 15_000 },
            Money::sats(5)
        )));
    }

    #[test]
    fn a_payment_and_its_ledger_entries_are_one_step() {
        let b = Budget::new().allow(Money::sats(10), Money::sats(100)).unwrap();
        let ledger = b.ledger();
        let r = b.reserve_at("h", &Money::sats(10), &Money::sats(10)).unwrap();
        let entry = LedgerEntry {
            id: 0,
            at: SystemTime::now(),
            host: "h".into(),
            url: "http://h/x".into(),
            rail: "l402".into(),
            kind: EntryKind::Payment,
            amount: Money::sats(10),
            fee: Money::sats(0),
            reference: "ab".into(),
            proof: Some("Authorization: L402 m:p".into()),
            receipt: None,
        };
        let ids = b.commit_with(r, &Money::sats(10), None, &[entry]);
        ledger.add_receipt(ids[0], "L402-Receipt: x");
        let entries = ledger.entries();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].receipt.as_deref(), Some("L402-Receipt: x"));
        assert!(!format!("{:?}", entries[0]).contains("m:p"), "Debug shows no proof");
    }
}
