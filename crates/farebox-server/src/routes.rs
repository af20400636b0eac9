//! The price table: which method and path cost what.
//!
//! Patterns are exact paths (`/v1/quote`, which also matches `/v1/quote/`) or prefixes ending in
//! `/*` (`/v1/weather/*`, which also matches `/v1/weather` itself). Routes are tried in the order
//! they were added; the first match prices the request. A request no route matches is passed
//! through free. A `GET` route also prices `HEAD`, which upstreams answer like `GET`.
//!
//! Matching is literal, so a path that an upstream would read as another path must never reach
//! it: [`check_canonical`] refuses dot segments, empty segments and percent-encodings of
//! characters that need none (`/./joke`, `//joke`, `/jo%6Be` all mean `/joke` to some server).

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
        let err = |reason| RouteError { pattern: pattern.to_string(), reason };
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
        let method_matches = match &self.method {
            None => true,
            Some(m) => m == method || (*m == Method::GET && *method == Method::HEAD),
        };
        if !method_matches {
            return false;
        }
        let path = if path.len() > 1 { path.strip_suffix('/').unwrap_or(path) } else { path };
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

/// Why a request path is refused: it is not in the one form that matching can trust.
pub(crate) fn check_canonical(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("the path must start with '/'");
    }
    if path.contains('\\') {
        return Err("backslashes are read as '/' by some servers");
    }
    for segment in path[1..].split('/') {
        match segment {
            "." | ".." => return Err("dot segments ('.', '..') are not allowed"),
            _ => {}
        }
    }
    if path.len() > 1 && path[1..].split('/').rev().skip(1).any(str::is_empty) {
        return Err("empty path segments ('//') are not allowed");
    }
    let bytes = path.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b != b'%' {
            continue;
        }
        let decoded = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match decoded {
            None => return Err("a '%' must start a percent-encoded byte"),
            Some(c) if c.is_ascii_alphanumeric() || b"-._~/\\".contains(&c) => {
                return Err("characters that need no percent-encoding must not be encoded");
            }
            Some(_) => {}
        }
    }
    Ok(())
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
        assert!(exact.matches(&Method::GET, "/quote/"), "a trailing slash is the same route");
        assert!(exact.matches(&Method::HEAD, "/quote"), "HEAD is priced like GET");
    }

    #[test]
    fn only_canonical_paths_pass() {
        for ok in ["/", "/a", "/a/", "/a/b.json", "/caf%C3%A9", "/a%20b", "/..a/b.", "/%25"] {
            assert_eq!(check_canonical(ok), Ok(()), "{ok}");
        }
        for bad in [
            "a",
            "/./a",
            "/a/..",
            "//a",
            "/a//b",
            "/%2e/a",
            "/%2E%2E/a",
            "/a%2fb",
            "/%61",
            "/a%5Cb",
            "/a\\b",
            "/a%",
            "/a%zz",
        ] {
            assert!(check_canonical(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_bad_patterns() {
        let p = Price::one(Money::sats(1));
        assert!(PricedRoute::new(None, "weather", p.clone()).is_err());
        assert!(PricedRoute::new(None, "/a/*/b", p.clone()).is_err());
        assert!(PricedRoute::new(None, "/a?x=1", p).is_err());
    }
}
