//! [`Policy`]: which offer to pay when several fit, which hosts may be paid at all, and the most
//! one call may cost; and [`Quote`], what a payment would choose and why, without paying.
//!
//! The order is the policy's list of rail keys (`l402`, `x402`, `mpp`, and `<rail>-session` for
//! an offer drawn from a session deposit), then the order the wallets were added in. The first
//! offer in that order that the policy and the budget allow is the one paid.

use std::sync::Arc;

use farebox_core::Money;

use farebox_wallet::ClientError;
use farebox_wallet::{Funding, Offer};

/// How a client chooses among offers, and what it refuses before the budget is asked.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    prefer: Vec<String>,
    hosts: Option<Vec<String>>,
    max: Vec<Money>,
}

impl Policy {
    /// Any host, wallet order, no cap per call beyond the budget's.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rail keys in order of preference (`l402`, `x402`, `mpp`, `mpp-session`…). Offers of
    /// rails not named come after, in wallet order.
    pub fn prefer<S: Into<String>>(mut self, rails: impl IntoIterator<Item = S>) -> Self {
        self.prefer = rails.into_iter().map(|r| r.into().to_ascii_lowercase()).collect();
        self
    }

    /// Pays only these hosts (`host` matches any port, `host:port` that port only;
    /// case-insensitive). Without a list, any host.
    pub fn only_hosts<S: Into<String>>(mut self, hosts: impl IntoIterator<Item = S>) -> Self {
        self.hosts = Some(hosts.into_iter().map(|h| h.into().to_ascii_lowercase()).collect());
        self
    }

    /// Pays at most `max` for one call in its asset (price and fee bound, or the deposit a
    /// session puts up). Once any is set, offers in assets without one are refused.
    pub fn max_per_call(mut self, max: Money) -> Self {
        self.max.retain(|m| m.asset != max.asset);
        self.max.push(max);
        self
    }

    /// The preference key of an offer: its rail, or `<rail>-session` when it draws on a session.
    pub fn key(offer: &Offer) -> String {
        match offer.funding {
            Funding::PerRequest => offer.rail.to_string(),
            Funding::Session { .. } => format!("{}-session", offer.rail),
        }
    }

    fn position(&self, offer: &Offer) -> usize {
        let key = Self::key(offer);
        self.prefer
            .iter()
            .position(|p| *p == key)
            .or_else(|| self.prefer.iter().position(|p| p == offer.rail))
            .unwrap_or(self.prefer.len())
    }

    /// The indexes of `offers` in the order they are tried.
    pub fn rank<'a>(&self, offers: impl Iterator<Item = &'a Offer>) -> Vec<usize> {
        let mut order: Vec<(usize, usize)> =
            offers.enumerate().map(|(i, o)| (self.position(o), i)).collect();
        order.sort(); // stable on wallet order
        order.into_iter().map(|(_, i)| i).collect()
    }

    fn host_allowed(&self, host: &str) -> bool {
        let Some(hosts) = &self.hosts else { return true };
        let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
        hosts.iter().any(|h| h.eq_ignore_ascii_case(host) || h.eq_ignore_ascii_case(name))
    }

    /// Whether the policy lets a call to `host` cost `worst` per request and put up `outlay`.
    pub fn allows(&self, host: &str, worst: &Money, outlay: &Money) -> Result<(), ClientError> {
        if !self.host_allowed(host) {
            return Err(ClientError::PolicyRefused(format!(
                "{host} is not among the hosts the wallet pays"
            )));
        }
        if self.max.is_empty() {
            return Ok(());
        }
        let Some(max) = self.max.iter().find(|m| m.asset == worst.asset) else {
            return Err(ClientError::OverBudget {
                price: Box::new(worst.clone()),
                limit: format!("this call allows no spending in {}", worst.asset.symbol()),
            });
        };
        let most = if outlay.amount > worst.amount { outlay } else { worst };
        if most.amount > max.amount {
            return Err(ClientError::OverBudget {
                price: Box::new(most.clone()),
                limit: format!("at most {max} for this call"),
            });
        }
        Ok(())
    }

    /// Why `chosen` was chosen after `skipped` were refused.
    pub(crate) fn reason(&self, chosen: &Offer, skipped: &[(&Offer, ClientError)]) -> String {
        let skipped: Vec<(&Offer, String)> =
            skipped.iter().map(|(o, e)| (*o, e.to_string())).collect();
        self.reason_text(chosen, &skipped)
    }

    pub(crate) fn reason_text(&self, chosen: &Offer, skipped: &[(&Offer, String)]) -> String {
        let key = Self::key(chosen);
        let mut reason = if self.prefer.is_empty() {
            format!("{key} is the first offer the budget allows, in wallet order")
        } else {
            format!(
                "{key} comes first in the preference order [{}] among the offers the budget allows",
                self.prefer.join(", ")
            )
        };
        for (offer, why) in skipped {
            reason.push_str(&format!("; {} {} not taken: {why}", Self::key(offer), offer.price));
        }
        reason
    }
}

/// One offer of a [`Quote`].
#[derive(Debug, Clone)]
pub struct QuotedOffer {
    pub rail: &'static str,
    /// The preference key ([`Policy::key`]).
    pub key: String,
    pub price: Money,
    /// The most the rail may add in fees.
    pub max_fee: Money,
    /// What paying it puts up now, for a session (`None`: nothing beyond the price).
    pub deposit: Option<Money>,
    pub summary: String,
    pub payee: Option<String>,
    pub buys: Option<String>,
    /// Why the policy or the budget would not pay it.
    pub refused: Option<Arc<ClientError>>,
    /// Its place in the order offers are tried (0 first).
    pub rank: usize,
}

impl QuotedOffer {
    pub(crate) fn new(offer: &Offer, refused: Option<ClientError>) -> Self {
        QuotedOffer {
            rail: offer.rail,
            key: Policy::key(offer),
            price: offer.price.clone(),
            max_fee: offer.max_fee.clone(),
            deposit: match &offer.funding {
                Funding::Session { deposit } => deposit.clone(),
                Funding::PerRequest => None,
            },
            summary: offer.summary.clone(),
            payee: offer.payee.clone(),
            buys: offer.buys.clone(),
            refused: refused.map(Arc::new),
            rank: 0,
        }
    }
}

/// The offer a payment would choose.
#[derive(Debug, Clone)]
pub struct Choice {
    /// Index into [`Quote::offers`].
    pub index: usize,
    pub reason: String,
}

/// What paying for a request would take ([`PaymentMiddleware::quote`](crate::PaymentMiddleware::quote)).
#[derive(Debug, Clone, Default)]
pub struct Quote {
    pub url: String,
    /// The server's status without payment (402 when it asks for one).
    pub status: u16,
    /// The 402's challenge header lines.
    pub challenges: Vec<String>,
    /// Every offer the wallets can read, in the order the wallets made them.
    pub offers: Vec<QuotedOffer>,
    /// The one a payment would choose, if any.
    pub choice: Option<Choice>,
    /// Why nothing would be paid, when the server asks for payment and no offer is allowed.
    pub refusal: Option<Arc<ClientError>>,
}
