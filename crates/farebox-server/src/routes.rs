//! The price table: which method and path cost what.
//!
//! Patterns are exact paths (`/v1/quote`) or prefixes ending in `/*` (`/v1/weather/*`, which
//! also matches `/v1/weather` itself). Routes are tried in the order they were added; the first
//! match prices the request. A request no route matches is passed through free.

use std::sync::Arc;

use farebox_core::{Price, SettleTiming};
use http::Method;

/// One priced route.
#[derive(Debug, Clone)]
pub struct PricedRoute {
    pub(crate) method: Option<Method>,
    pub(crate) pattern: Arc<str>,
    pub(crate) price: Price,
    pub(crate) description: Option<Arc<str>>,
    pub(crate) settle: SettleTiming,
}

/// A route pattern that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid route pattern {pattern:?}: {reason}")]
pub struct RouteError {
    pub pattern: String,
    pub reason: &'static str,
}

impl PricedRoute {
    /// A route for `method` (`None`: any method) and `pattern`.
    pub fn new(method: Option<Method>, pattern: &str, price: Price) -> Result<Self, RouteError> {
        let err = |reason| RouteError {
            pattern: pattern.to_string(),
            reason,
        };
        if !pattern.starts_with('/') {
            return Err(err("must start with '/'"));
        }
        let body = pattern.strip_suffix("/*").unwrap_or(pattern);
        if body.contains('*') {
            return Err(err("'*' is only allowed as a final '/*'"));
        }
        if pattern.contains('?') || pattern.contains('#') {
            return Err(err("a pattern matches paths, not queries or fragments"));
        }
        Ok(PricedRoute {
            method,
            pattern: pattern.into(),
            price,
            description: None,
            settle: SettleTiming::AfterResponse,
        })
    }

    /// A description for people and for protocol fields that carry one.
    pub fn describe(mut self, description: &str) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Settle before the handler runs instead of after it succeeded.
    pub fn settle(mut self, timing: SettleTiming) -> Self {
        self.settle = timing;
        self
    }

    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    pub fn price(&self) -> &Price {
        &self.price
    }

    pub(crate) fn matches(&self, method: &Method, path: &str) -> bool {
        if self.method.as_ref().is_some_and(|m| m != method) {
            return false;
        }
        match self.pattern.strip_suffix("/*") {
            Some(prefix) => {
                path == prefix
                    || (path.starts_with(prefix)
                        && path.as_bytes().get(prefix.len()) == Some(&b'/'))
                    || prefix.is_empty()
            }
            None => path == &*self.pattern,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use farebox_core::Money;

    fn route(method: Option<Method>, p: &str) -> PricedRoute {
        PricedRoute::new(method, p, Price::one(Money::sats(1))).unwrap()
    }

    #[test]
    fn exact_and_prefix_patterns() {
        let exact = route(Some(Method::GET), "/quote");
        assert!(exact.matches(&Method::GET, "/quote"));
        assert!(!exact.matches(&Method::POST, "/quote"));
        assert!(!exact.matches(&Method::GET, "/quote/1"));

        let prefix = route(None, "/weather/*");
        assert!(prefix.matches(&Method::GET, "/weather"));
        assert!(prefix.matches(&Method::DELETE, "/weather/paris"));
        assert!(
            !prefix.matches(&Method::GET, "/weatherman"),
            "a prefix stops at a segment boundary"
        );

        assert!(route(None, "/*").matches(&Method::GET, "/anything/at/all"));
    }

    #[test]
    fn rejects_bad_patterns() {
        let p = Price::one(Money::sats(1));
        assert!(PricedRoute::new(None, "weather", p.clone()).is_err());
        assert!(PricedRoute::new(None, "/a/*/b", p.clone()).is_err());
        assert!(PricedRoute::new(None, "/a?x=1", p).is_err());
    }
}
