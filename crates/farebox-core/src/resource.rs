//! What is being sold: a priced resource, as the server layer hands it to a rail.

use std::sync::Arc;

use http::Method;

use crate::money::{Asset, Money};

/// The price of a resource: one or more alternative amounts, one per asset the provider accepts
/// (e.g. 10 sat *or* 0.01 USDC). Each rail charges in the assets it can settle and ignores the
/// rest, so one 402 can offer every rail at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    offers: Vec<Money>,
}

impl Price {
    /// A price payable in exactly one asset.
    pub fn one(money: Money) -> Self {
        Price { offers: vec![money] }
    }

    /// A price with alternatives. Two offers in the same asset are refused (ambiguous).
    pub fn any_of(offers: impl IntoIterator<Item = Money>) -> Result<Self, &'static str> {
        let offers: Vec<Money> = offers.into_iter().collect();
        if offers.is_empty() {
            return Err("a price needs at least one amount");
        }
        for (i, a) in offers.iter().enumerate() {
            if offers[..i].iter().any(|b| b.asset == a.asset) {
                return Err("two amounts in the same asset");
            }
        }
        Ok(Price { offers })
    }

    /// All alternatives.
    pub fn offers(&self) -> &[Money] {
        &self.offers
    }

    /// The amount in `asset`, if this price accepts it.
    pub fn in_asset(&self, asset: &Asset) -> Option<&Money> {
        self.offers.iter().find(|m| &m.asset == asset)
    }

    /// The amount in Bitcoin, if accepted.
    pub fn in_bitcoin(&self) -> Option<&Money> {
        self.in_asset(&Asset::Bitcoin)
    }
}

/// A request for a priced resource, as a rail sees it when it issues a challenge or verifies a
/// credential.
#[derive(Debug, Clone)]
pub struct Resource {
    /// The request method.
    pub method: Method,
    /// The request path (no query).
    pub path: String,
    /// The route pattern that priced it (e.g. `/v1/weather/*`): credentials are scoped to it.
    pub route: Arc<str>,
    /// What the route costs.
    pub price: Price,
    /// A short description for people and for protocol fields that carry one.
    pub description: Option<Arc<str>>,
    /// The request's `Accept-Payment` header (the client's preferred methods and intents, as the
    /// MPP core draft defines it), for rails that offer several to order and filter them by.
    /// Only set when it is visible ASCII of at most [`MAX_ACCEPT_PAYMENT_LEN`] bytes.
    pub accept_payment: Option<Arc<str>>,
}

/// Longest `Accept-Payment` header the server hands to rails; a longer one is ignored.
pub const MAX_ACCEPT_PAYMENT_LEN: usize = 1024;
