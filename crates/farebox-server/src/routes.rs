//! The price table: which method and path cost what.
//!
//! Patterns are exact paths (`/v1/quote`, which also matches `/v1/quote/`) or prefixes ending in
//! `/*` (`/v1/weather/*`, which also matches `/v1/weather` itself). Routes are tried in the order
//! they were added; the first match prices the request. A request no route matches is passed
//! through free. A `GET` route also prices `HEAD`, which upstreams answer like `GET`.
//!
//! # Every path that reaches a priced handler is priced
//!
//! An unmatched path passes free, so any spelling that some upstream reads as a priced path must
//! either be priced or never reach it. Two mechanisms, chosen per kind of spelling:
//!
//! * **Refused with 400** ([`check_canonical`]): spellings that have no business in a request
//!   and that servers resolve in incompatible ways — dot segments (`/./joke`, `/x/../joke`, also
//!   with parameters, `/x/..;/joke`, Tomcat's classic), empty segments (`//joke`), backslashes,
//!   percent-encodings of characters that need none (`/%6Aoke`, `/joke%2F`), encoded control
//!   bytes (`/joke%00`, which C-based servers truncate at), segments ending in a dot (`/joke.`,
//!   which Windows servers strip), encoded bytes that are not UTF-8 (overlong `/`), and
//!   characters that some servers fold to ASCII (the Kelvin sign lower-cases to `k`; fullwidth
//!   forms and look-alike slashes are "best-fit" mapped by IIS).
//! * **Canonicalised before matching** ([`canonical_path`]): spellings that are common and
//!   harmless, and which lenient servers read as the plain path. Matrix parameters are cut from
//!   each segment (`/joke;x=1` is priced as `/joke`, as Tomcat and Spring read it; `%3B` counts
//!   as `;`), an encoded `?` or `#` ends the path (a server that decodes before splitting would),
//!   a trailing slash is dropped, the hex digits of percent-encodings are compared
//!   case-insensitively, and — unless a route says otherwise — so are letters: `/JOKE` is priced
//!   like `/joke`.
//!
//! Canonicalising only ever prices *more* requests. That is the fail-closed side: with the default
//! [`SettleTiming::AfterResponse`], a request the upstream answers with a 404 is not charged, so
//! an honest client loses nothing when `/JOKE` is priced on a case-sensitive upstream. A route
//! whose upstream has distinct free resources that differ only in case can turn folding off with
//! [`PricedRoute::case_sensitive`].
//!
//! The request itself is forwarded unchanged: the upstream sees what the client sent, and the
//! paywall priced it by the canonical form above. Method-override headers
//! (`X-HTTP-Method-Override` and kin) are priced as the method they name. Not covered: an
//! upstream that serves `/joke.json` as `/joke` (Spring's suffix pattern matching, off by
//! default since 5.3) — turn that off, or price the resource with a `/*` route.
//!
//! # When a route settles
//!
//! A route settles after the handler answered below 400 ([`SettleTiming::AfterResponse`]), except
//! for methods that are not safe in RFC 9110's sense (`POST`, `PUT`, `PATCH`, `DELETE` and any
//! other but `GET`, `HEAD`, `OPTIONS`, `TRACE`): those settle before the handler runs
//! ([`SettleTiming::BeforeServe`]), so a side effect never happens for a payment that then fails
//! to settle. [`PricedRoute::settle`] overrides either default.

use std::borrow::Cow;
use std::sync::Arc;

use farebox_core::{Price, SettleTiming};
use http::Method;

/// One priced route.
#[derive(Debug, Clone)]
pub struct PricedRoute {
    pub(crate) method: Option<Method>,
    /// The pattern as configured: what [`farebox_core::Resource::route`] names.
    pub(crate) pattern: Arc<str>,
    /// The pattern in the canonical form requests are compared in (without its `/*`).
    matcher: Box<str>,
    prefix: bool,
    case_sensitive: bool,
    pub(crate) price: Price,
    pub(crate) description: Option<Arc<str>>,
    settle: Option<SettleTiming>,
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
        let (body, prefix) = match pattern.strip_suffix("/*") {
            Some(body) => (body, true),
            None => (pattern, false),
        };
        if body.contains('*') {
            return Err(err("'*' is only allowed as a final '/*'"));
        }
        if pattern.contains('?') || pattern.contains('#') {
            return Err(err("a pattern matches paths, not queries or fragments"));
        }
        if body.contains(';') || contains_ignore_case(body, "%3B") {
            return Err(err("requests are matched without ';' parameters, so a pattern has none"));
        }
        // The pattern goes through the same rules as a request path, so that the two compare.
        let encoded = percent_encode_non_ascii(body);
        if !encoded.is_empty() {
            check_canonical(&encoded).map_err(err)?;
        }
        let mut route = PricedRoute {
            method,
            pattern: pattern.into(),
            matcher: Box::from(""),
            prefix,
            case_sensitive: false,
            price,
            description: None,
            settle: None,
        };
        route.matcher = route.canonical(&encoded).into();
        Ok(route)
    }

    /// A description for people and for protocol fields that carry one.
    pub fn describe(mut self, description: &str) -> Self {
        self.description = Some(description.into());
        self
    }

    /// When to settle, instead of the method's default (see the module docs).
    pub fn settle(mut self, timing: SettleTiming) -> Self {
        self.settle = Some(timing);
        self
    }

    /// Compares letters case-sensitively (the default folds ASCII case: `/JOKE` is priced like
    /// `/joke`). Only for an upstream known to route case-sensitively, with free resources whose
    /// names differ from a priced one only in case.
    pub fn case_sensitive(mut self, yes: bool) -> Self {
        self.case_sensitive = yes;
        let body = self.pattern.strip_suffix("/*").filter(|_| self.prefix).unwrap_or(&self.pattern);
        self.matcher = self.canonical(&percent_encode_non_ascii(body)).into();
        self
    }

    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    pub fn price(&self) -> &Price {
        &self.price
    }

    /// When a request with `method` on this route settles.
    pub(crate) fn settle_timing(&self, method: &Method) -> SettleTiming {
        self.settle.unwrap_or_else(|| {
            let safe = [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE]
                .iter()
                .any(|m| m.as_str().eq_ignore_ascii_case(method.as_str()));
            if safe { SettleTiming::AfterResponse } else { SettleTiming::BeforeServe }
        })
    }

    fn canonical<'a>(&self, path: &'a str) -> Cow<'a, str> {
        canonical_path(path, !self.case_sensitive)
    }

    /// Whether the route prices `method` on `path`, a path [`check_canonical`] accepted.
    pub(crate) fn matches(&self, method: &Method, path: &str) -> bool {
        // Methods are case-sensitive tokens, but a lenient server may take `get` for `GET`.
        let same = |m: &Method| m.as_str().eq_ignore_ascii_case(method.as_str());
        let method_matches = match &self.method {
            None => true,
            Some(m) => same(m) || (*m == Method::GET && same(&Method::HEAD)),
        };
        if !method_matches {
            return false;
        }
        let path = self.canonical(path);
        let (path, body) = (root_as_empty(&path), root_as_empty(&self.matcher));
        if self.prefix {
            path == body
                || (path.starts_with(body) && path.as_bytes().get(body.len()) == Some(&b'/'))
        } else {
            path == body
        }
    }
}

/// `/` as the empty path, so that `/*` and `/` compare with it like any other prefix.
fn root_as_empty(path: &str) -> &str {
    if path == "/" { "" } else { path }
}

/// The form a checked request path is matched in (see the module docs): matrix parameters cut
/// from each segment, the path ended at an encoded `?` or `#`, percent-encodings' hex in upper
/// case, ASCII letters in lower case when `fold_case` (hex digits included), no trailing slash.
/// Borrowed when the path already is in that form.
pub(crate) fn canonical_path(path: &str, fold_case: bool) -> Cow<'_, str> {
    let bytes = path.as_bytes();
    let needs_work =
        bytes.iter().any(|b| matches!(b, b';' | b'%') || (fold_case && b.is_ascii_uppercase()))
            || (path.len() > 1 && path.ends_with('/'));
    if !needs_work {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    let mut in_params = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'/' {
            in_params = false;
        }
        if b == b'%' {
            let hex = path.get(i + 1..i + 3).unwrap_or("");
            if hex.eq_ignore_ascii_case("3F") || hex.eq_ignore_ascii_case("23") {
                break; // a server that decodes before splitting ends the path here
            }
            if hex.eq_ignore_ascii_case("3B") {
                in_params = true;
            }
            if !in_params {
                out.push('%');
                for h in hex.chars() {
                    out.push(if fold_case {
                        h.to_ascii_lowercase()
                    } else {
                        h.to_ascii_uppercase()
                    });
                }
            }
            i += 1 + hex.len();
            continue;
        }
        if b == b';' {
            in_params = true;
        }
        if !in_params {
            out.push(if fold_case { b.to_ascii_lowercase() } else { b } as char);
        }
        i += 1;
    }
    if out.len() > 1 && out.ends_with('/') {
        out.pop();
    }
    Cow::Owned(out)
}

/// Why a request path is refused: it is not in a form that matching can trust (see the module
/// docs for what is refused and why).
pub(crate) fn check_canonical(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("the path must start with '/'");
    }
    if path.contains('\\') {
        return Err("backslashes are read as '/' by some servers");
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    for (n, raw) in segments.iter().enumerate() {
        // What a server that drops matrix parameters sees of this segment.
        let segment = raw.split(';').next().unwrap_or("");
        let segment = match find_ignore_case(segment, "%3B") {
            Some(at) => &segment[..at],
            None => segment,
        };
        if segment == "." || segment == ".." {
            return Err("dot segments ('.', '..') are not allowed");
        }
        if segment.is_empty() && n + 1 < segments.len() {
            return Err("empty path segments ('//') are not allowed");
        }
        if segment.ends_with('.') || segment.ends_with("%20") {
            return Err("a segment must not end in '.' or ' ' (Windows servers strip those)");
        }
    }
    check_percent_encodings(path)
}

fn check_percent_encodings(path: &str) -> Result<(), &'static str> {
    let bytes = path.as_bytes();
    let mut encoded_text: Vec<u8> = Vec::new();
    let mut i = 0;
    while i <= bytes.len() {
        let decoded = match bytes.get(i) {
            Some(b'%') => Some(
                bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or("a '%' must start a percent-encoded byte")?,
            ),
            _ => None,
        };
        match decoded {
            Some(c) if c.is_ascii_alphanumeric() || b"-._~/\\".contains(&c) => {
                return Err("characters that need no percent-encoding must not be encoded");
            }
            Some(c) if c < 0x20 || c == 0x7f => {
                return Err("control characters must not be in a path, encoded or not");
            }
            Some(c) if c >= 0x80 => {
                encoded_text.push(c);
                i += 3;
                continue;
            }
            Some(_) => {}
            None => {}
        }
        // A run of encoded non-ASCII bytes ends here: it must be UTF-8 that no server folds
        // into ASCII.
        if !encoded_text.is_empty() {
            let text = std::str::from_utf8(&encoded_text)
                .map_err(|_| "percent-encoded bytes must be UTF-8")?;
            if text.chars().any(folds_to_ascii) {
                return Err("characters that servers fold into ASCII must not be encoded");
            }
            encoded_text.clear();
        }
        i += if decoded.is_some() { 3 } else { 1 };
    }
    Ok(())
}

/// Characters a lenient server may turn into ASCII: by Unicode case mapping (the Kelvin sign
/// lower-cases to `k`, the dotless ı upper-cases to `I`), by "best-fit" mapping (fullwidth
/// forms), or look-alike slashes and dots.
fn folds_to_ascii(c: char) -> bool {
    c.to_lowercase().any(|l| l.is_ascii())
        || c.to_uppercase().any(|u| u.is_ascii())
        || ('\u{FF01}'..='\u{FF5E}').contains(&c)
        || matches!(c, '\u{2215}' | '\u{2044}' | '\u{29F8}' | '\u{FE68}' | '\u{2024}')
}

fn find_ignore_case(haystack: &str, needle: &str) -> Option<usize> {
    haystack
        .as_bytes()
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    find_ignore_case(haystack, needle).is_some()
}

/// A configured pattern with its non-ASCII characters percent-encoded as UTF-8, the form they
/// arrive in on the wire.
fn percent_encode_non_ascii(pattern: &str) -> Cow<'_, str> {
    if pattern.is_ascii() {
        return Cow::Borrowed(pattern);
    }
    let mut out = String::with_capacity(pattern.len() * 3);
    for b in pattern.bytes() {
        if b.is_ascii() {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Cow::Owned(out)
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
        assert!(route(None, "/*").matches(&Method::GET, "/"));
        assert!(exact.matches(&Method::GET, "/quote/"), "a trailing slash is the same route");
        assert!(exact.matches(&Method::HEAD, "/quote"), "HEAD is priced like GET");
        assert!(route(None, "/").matches(&Method::GET, "/"));
        assert!(!route(None, "/").matches(&Method::GET, "/a"));
    }

    #[test]
    fn spellings_a_lenient_server_reads_as_the_route_are_priced() {
        let joke = route(Some(Method::GET), "/joke");
        for path in
            ["/JOKE", "/Joke/", "/joke;x=1", "/joke;", "/joke%3Bx", "/joke%3fx=1", "/joke%23a"]
        {
            assert!(joke.matches(&Method::GET, path), "{path}");
        }
        assert!(joke.matches(&"get".parse().unwrap(), "/joke"), "a lower-case method");
        let nested = route(None, "/paid/*");
        assert!(nested.matches(&Method::GET, "/paid;v=2/ok"), "a ';' in a middle segment");
        assert!(nested.matches(&Method::GET, "/PAID/x"));

        let strict = route(Some(Method::GET), "/joke").case_sensitive(true);
        assert!(!strict.matches(&Method::GET, "/JOKE"));
        assert!(strict.matches(&Method::GET, "/joke;x=1"), "parameters are still cut");

        let accented = route(None, "/café");
        assert!(accented.matches(&Method::GET, "/caf%C3%A9"));
        assert!(accented.matches(&Method::GET, "/caf%c3%a9"), "hex digits in either case");
        assert!(accented.case_sensitive(true).matches(&Method::GET, "/caf%c3%a9"));
    }

    #[test]
    fn unsafe_methods_settle_before_serving_unless_the_route_says_otherwise() {
        let any = route(None, "/x");
        for m in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            assert_eq!(any.settle_timing(&m), SettleTiming::BeforeServe, "{m}");
        }
        for m in [Method::GET, Method::HEAD, Method::OPTIONS] {
            assert_eq!(any.settle_timing(&m), SettleTiming::AfterResponse, "{m}");
        }
        let explicit = route(None, "/x").settle(SettleTiming::AfterResponse);
        assert_eq!(explicit.settle_timing(&Method::POST), SettleTiming::AfterResponse);
    }

    #[test]
    fn only_canonical_paths_pass() {
        for ok in [
            "/",
            "/a",
            "/a/",
            "/a/b.json",
            "/caf%C3%A9",
            "/a%20b",
            "/..a/b",
            "/%25",
            "/a;b=c/d",
            "/a/;x",
            "/%E2%82%AC",
        ] {
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
            "/x/..;/a",
            "/x/.;y/a",
            "/;x/a",
            "/a.",
            "/a./b",
            "/a%20",
            "/a%00",
            "/a%0A",
            "/a%7F",
            "/a%C0%AF",
            "/a%FF",
            "/jo%E2%84%AAe",
            "/%EF%BD%8Aoke",
            "/a%E2%88%95b",
        ] {
            assert!(check_canonical(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_bad_patterns() {
        let p = Price::one(Money::sats(1));
        assert!(PricedRoute::new(None, "weather", p.clone()).is_err());
        assert!(PricedRoute::new(None, "/a/*/b", p.clone()).is_err());
        assert!(PricedRoute::new(None, "/a?x=1", p.clone()).is_err());
        assert!(PricedRoute::new(None, "/a;x=1", p.clone()).is_err());
        assert!(PricedRoute::new(None, "/a/../b", p.clone()).is_err());
        assert!(PricedRoute::new(None, "//a", p).is_err());
    }
}
