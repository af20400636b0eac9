//! Spending limits and the spend ledger.
//!
//! A [`Budget`] has, per asset, a maximum per request and a total. Both are enforced *before*
//! anything is paid: the worst case (price plus the most the rail may add in fees) is reserved
//! first, and a request that does not fit is a [`ClientError::OverBudget`], never a payment. An
//! asset the budget names no limit for cannot be spent at all (fail closed). After paying, the
//! reservation is replaced by what was actually spent, and the [`Ledger`] records it.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use farebox_core::{Asset, Money};
use serde::Serialize;

use crate::error::ClientError;

#[derive(Debug, Clone)]
struct Limit {
    per_request: Money,
    total: Money,
    committed: u128,
    reserved: u128,
}

/// Per-asset spending limits, shared by every request of a client.
#[derive(Debug, Clone, Default)]
pub struct Budget {
    limits: Arc<Mutex<Vec<Limit>>>,
}

/// Money set aside for one payment; give it back or commit it.
#[derive(Debug)]
#[must_use = "a reservation must be committed or released"]
pub struct Reservation {
    asset: Asset,
    amount: u128,
}

impl Budget {
    /// A budget that allows nothing until limits are added.
    pub fn new() -> Self {
        Self::default()
    }

    /// Allows spending `per_request` at most per request and `total` in all, in their asset.
    /// Both must be in the same asset. A second call for an asset changes its limits and keeps
    /// what was already spent or reserved against them.
    pub fn allow(self, per_request: Money, total: Money) -> Result<Self, ClientError> {
        if per_request.asset != total.asset {
            return Err(ClientError::Config(
                "per-request and total limits must be in the same asset".into(),
            ));
        }
        {
            let mut limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
            match limits.iter_mut().find(|l| l.total.asset == total.asset) {
                Some(l) => {
                    l.per_request = per_request;
                    l.total = total;
                }
                None => limits.push(Limit { per_request, total, committed: 0, reserved: 0 }),
            }
        }
        Ok(self)
    }

    /// Whether `worst_case` fits the per-request limit and what is left of the total.
    pub fn check(&self, worst_case: &Money) -> Result<(), ClientError> {
        let limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        Self::fits(&limits, worst_case).map(|_| ())
    }

    fn fits(limits: &[Limit], worst_case: &Money) -> Result<usize, ClientError> {
        Self::fits_split(limits, worst_case, worst_case)
    }

    /// `per_request` must fit the per-request limit and `outlay` what is left of the total.
    fn fits_split(
        limits: &[Limit],
        per_request: &Money,
        outlay: &Money,
    ) -> Result<usize, ClientError> {
        let Some(i) = limits.iter().position(|l| l.total.asset == per_request.asset) else {
            return Err(ClientError::OverBudget {
                price: per_request.clone(),
                limit: format!("no budget for {}", per_request.asset.symbol()),
            });
        };
        let l = &limits[i];
        if per_request.amount > l.per_request.amount {
            return Err(ClientError::OverBudget {
                price: per_request.clone(),
                limit: format!("at most {} per request", l.per_request),
            });
        }
        let spent = l.committed.saturating_add(l.reserved);
        if outlay.asset != per_request.asset || spent.saturating_add(outlay.amount) > l.total.amount
        {
            let left = Money::new(l.total.asset.clone(), l.total.amount.saturating_sub(spent));
            return Err(ClientError::OverBudget {
                price: outlay.clone(),
                limit: format!("{left} left of a total of {}", l.total),
            });
        }
        Ok(i)
    }

    /// Sets `worst_case` aside, or refuses if it does not fit.
    pub fn reserve(&self, worst_case: &Money) -> Result<Reservation, ClientError> {
        let mut limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        let i = Self::fits(&limits, worst_case)?;
        limits[i].reserved += worst_case.amount;
        Ok(Reservation { asset: worst_case.asset.clone(), amount: worst_case.amount })
    }

    /// Sets `outlay` aside against the total once `per_request` (what the request costs, drawn
    /// from a session deposit) fits the per-request limit: how a session payment is reserved,
    /// its outlay being the deposit or top-up it puts up now (possibly zero).
    pub fn reserve_session(
        &self,
        per_request: &Money,
        outlay: &Money,
    ) -> Result<Reservation, ClientError> {
        let mut limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        let i = Self::fits_split(&limits, per_request, outlay)?;
        limits[i].reserved += outlay.amount;
        Ok(Reservation { asset: outlay.asset.clone(), amount: outlay.amount })
    }

    /// Money that came back (a session's unspent deposit, refunded at close): it no longer
    /// counts as spent.
    pub fn refund(&self, amount: &Money) {
        let mut limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = limits.iter_mut().find(|l| l.total.asset == amount.asset) {
            l.committed = l.committed.saturating_sub(amount.amount);
        }
    }

    /// Gives a reservation back unspent (the payment did not happen).
    pub fn release(&self, reservation: Reservation) {
        self.settle(reservation, 0);
    }

    /// Replaces a reservation by what was actually spent. Spending more than was reserved (a
    /// wallet that overran its fee limit) is counted in full, so later requests see it.
    pub fn commit(&self, reservation: Reservation, spent: &Money) {
        let amount =
            if spent.asset == reservation.asset { spent.amount } else { reservation.amount };
        if amount > reservation.amount {
            tracing::warn!(
                reserved = reservation.amount,
                spent = amount,
                "a payment cost more than its reservation"
            );
        }
        self.settle(reservation, amount);
    }

    fn settle(&self, reservation: Reservation, spent: u128) {
        let mut limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = limits.iter_mut().find(|l| l.total.asset == reservation.asset) {
            l.reserved = l.reserved.saturating_sub(reservation.amount);
            l.committed = l.committed.saturating_add(spent);
        }
    }

    /// Spent so far in `asset`.
    pub fn spent(&self, asset: &Asset) -> Money {
        let limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        let amount = limits.iter().find(|l| &l.total.asset == asset).map_or(0, |l| l.committed);
        Money::new(asset.clone(), amount)
    }
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
    /// A session's unspent deposit came back: `amount` returned to the wallet.
    Refund,
}

/// One payment the client made.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerEntry {
    pub at: SystemTime,
    pub url: String,
    pub rail: &'static str,
    pub kind: EntryKind,
    /// The price paid to the server (or the deposit, or the refund).
    pub amount: Money,
    /// Fees paid on top (Lightning routing, …), in the same asset.
    pub fee: Money,
    /// The rail's reference (payment hash, transaction hash…).
    pub reference: String,
}

/// Every payment made, in order. Cheap to clone; clones share the entries.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    entries: Arc<Mutex<Vec<LedgerEntry>>>,
}

impl Ledger {
    pub(crate) fn record(&self, entry: LedgerEntry) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
    }

    /// A copy of the entries.
    pub fn entries(&self) -> Vec<LedgerEntry> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(err.to_string().contains("no budget"), "{err}");
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
}
