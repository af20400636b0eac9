//! L402 first-party caveats: their grammar, how farebox mints them, and how it checks them.
//!
//! A caveat is the bytes `condition=value`, split at the first `=`, with no spaces (the
//! convention of Aperture and lsat-js). farebox understands these conditions:
//!
//! | caveat | meaning | minted |
//! |---|---|---|
//! | `services=<name>:<tier>[,<name>:<tier>…]` | the services the token is good for; one must be ours (Aperture's) | always, first |
//! | `<service>_capabilities=<cap>[,<cap>…]` | capabilities granted (Aperture's) | when configured |
//! | `farebox_route=<route pattern>` | the route the token bought, e.g. `/v1/weather/*` | always |
//! | `farebox_method=<METHOD>` | this request method only, e.g. `GET` | always |
//! | `farebox_amount_msat=<msat>` | what was paid; refused where the route's Bitcoin price is higher | always |
//! | `<service>_valid_until=<unix seconds>` | refused from that second on (Aperture's) | unless the lifetime is 0 |
//! | `farebox_path=<path pattern>` | only request paths the pattern matches; the pattern must lie inside the route | by a holder |
//! | `farebox_max_requests=<n>` | at most `n` requests served with this token and every token derived from it | by a holder |
//!
//! **Fail closed.** Unlike Aperture, which skips caveats it has no satisfier for, every caveat
//! must be understood and satisfied: a caveat without `=`, a malformed value, a condition for
//! another service or an unknown condition makes the token invalid. This is what makes holder
//! attenuation meaningful: anyone holding a token can append caveats (re-chaining the signature
//! needs no key; [`crate::attenuate`]), and each appended caveat is enforced as a further
//! conjunct. Nothing appended can widen anything: repeated conditions are all enforced, so the
//! narrowest wins. Two `_valid_until` caveats mean the earlier one; two `farebox_path` caveats
//! mean paths both match; two `services` caveats must both name our service; two amounts must
//! both cover the price (and the amount reported as paid is the smallest one, so an appended
//! caveat cannot inflate it); two request limits are both counted.
//!
//! `services` and `farebox_amount_msat` are required (every farebox token has them); the others
//! are optional restrictions. farebox routes do not name capabilities, so a capabilities caveat
//! is satisfied only when it grants *every* capability the service is configured with: a token
//! narrowed below that set is refused rather than over-honoured.
//!
//! # Path patterns
//!
//! `farebox_path` uses farebox-server's route pattern language: an exact path (`/v1/weather/oslo`;
//! with a trailing slash it is the same path) or a prefix ending in `/*` (`/v1/weather/eu/*`,
//! which also matches `/v1/weather/eu` itself; `/*` matches every path). The pattern must lie
//! inside the route the token bought ([`pattern_within`]): every path it matches is one the route
//! matches. Patterns are made of RFC 3986 path characters other than `;` (letters, digits,
//! `-._~%!$&'()+,=:@/`, and `*` only in a final `/*`), without dot segments or empty segments,
//! at most [`MAX_PATTERN_LEN`] bytes. They are compared with the request path byte for
//! byte, case-sensitively ([`path_matches`]): never looser than the server's route matching,
//! which may also accept other spellings of a path, so a delegate spells the path as the caveat
//! does.
//!
//! # Request limits
//!
//! `farebox_max_requests=<n>` is counted by [`crate::L402Rail`] in the server's store (see
//! [`crate::tokens`]): one counter per such caveat, keyed by the token id and the caveat's place
//! in the signature chain. So the token it was appended to and every token later derived from it
//! share one count (a delegate cannot reset it by appending more caveats), while the token it was
//! attenuated from is not counted at all. A token may carry at most [`MAX_REQUEST_LIMITS`] of them.

use std::fmt;

/// `services`
pub const COND_SERVICES: &str = "services";
/// `<service>_capabilities`
pub const SUFFIX_CAPABILITIES: &str = "_capabilities";
/// `<service>_valid_until`
pub const SUFFIX_VALID_UNTIL: &str = "_valid_until";
/// `farebox_route`
pub const COND_ROUTE: &str = "farebox_route";
/// `farebox_method`
pub const COND_METHOD: &str = "farebox_method";
/// `farebox_amount_msat`
pub const COND_AMOUNT: &str = "farebox_amount_msat";
/// `farebox_path`
pub const COND_PATH: &str = "farebox_path";
/// `farebox_max_requests`
pub const COND_MAX_REQUESTS: &str = "farebox_max_requests";

/// Longest service name accepted in configuration.
pub const MAX_SERVICE_NAME_LEN: usize = 64;
/// Longest `farebox_path` pattern.
pub const MAX_PATTERN_LEN: usize = 1024;
/// Most `farebox_max_requests` caveats in one token (each costs a counter in the store).
pub const MAX_REQUEST_LIMITS: usize = 4;

/// Whether `name` can be a service name: 1–64 of `A-Z a-z 0-9 - _ .` (no `,`, `:` or `=`, which
/// are caveat syntax).
pub fn is_valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SERVICE_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `services=<service>:<tier>`
pub fn services(service: &str, tier: u8) -> String {
    format!("{COND_SERVICES}={service}:{tier}")
}

/// `<service>_capabilities=<a>,<b>`
pub fn capabilities<S: AsRef<str>>(service: &str, caps: &[S]) -> String {
    let list: Vec<&str> = caps.iter().map(AsRef::as_ref).collect();
    format!("{service}{SUFFIX_CAPABILITIES}={}", list.join(","))
}

/// `<service>_valid_until=<unix seconds>`
pub fn valid_until(service: &str, unix_secs: u64) -> String {
    format!("{service}{SUFFIX_VALID_UNTIL}={unix_secs}")
}

/// `farebox_route=<pattern>`
pub fn route(pattern: &str) -> String {
    format!("{COND_ROUTE}={pattern}")
}

/// `farebox_method=<METHOD>`
pub fn method(method: &str) -> String {
    format!("{COND_METHOD}={method}")
}

/// `farebox_amount_msat=<msat>`
pub fn amount_msat(msat: u64) -> String {
    format!("{COND_AMOUNT}={msat}")
}

/// `farebox_path=<pattern>` (check it first with [`check_path_pattern`]).
pub fn path(pattern: &str) -> String {
    format!("{COND_PATH}={pattern}")
}

/// `farebox_max_requests=<n>`
pub fn max_requests(n: u64) -> String {
    format!("{COND_MAX_REQUESTS}={n}")
}

/// Why a path pattern cannot be used (see the module docs).
pub fn check_path_pattern(pattern: &str) -> Result<(), &'static str> {
    if !pattern.starts_with('/') {
        return Err("a path pattern starts with '/'");
    }
    if pattern.len() > MAX_PATTERN_LEN {
        return Err("a path pattern is at most 1024 bytes");
    }
    // RFC 3986 path characters, without ';' (matrix parameters, which some servers cut).
    if !pattern.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,=:@/".contains(&b)) {
        return Err("a path pattern is made of RFC 3986 path characters other than ';'");
    }
    let (body, prefix) = split_pattern(pattern);
    if body.contains('*') {
        return Err("'*' is only allowed as a final '/*'");
    }
    let Some(segments) = body.strip_prefix('/') else {
        return Ok(()); // `/*`
    };
    let mut segments = segments.split('/').peekable();
    while let Some(s) = segments.next() {
        if s == "." || s == ".." {
            return Err("dot segments ('.', '..') are not allowed");
        }
        // Only an exact pattern may end in '/' (the same path): `/a//b` and `//*` are refused.
        if s.is_empty() && (segments.peek().is_some() || prefix) {
            return Err("empty path segments ('//') are not allowed");
        }
    }
    Ok(())
}

/// `(body, is_prefix)`: `/a/*` is `("/a", true)`, `/*` is `("", true)`, `/a` is `("/a", false)`.
fn split_pattern(pattern: &str) -> (&str, bool) {
    match pattern.strip_suffix("/*") {
        Some(body) => (body, true),
        None => (pattern, false),
    }
}

/// A path without its trailing slash (`/` stays `/`).
fn trim_slash(path: &str) -> &str {
    if path.len() > 1 { path.strip_suffix('/').unwrap_or(path) } else { path }
}

/// Whether `path` is `prefix` or below it (`prefix` without its `/*`; empty: everything).
fn under(path: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || path == prefix
        || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// Whether the pattern matches the request `path`, literally (see the module docs).
pub fn path_matches(pattern: &str, path: &str) -> bool {
    let path = trim_slash(path);
    match split_pattern(pattern) {
        (prefix, true) => under(path, prefix),
        (exact, false) => path == trim_slash(exact),
    }
}

/// Whether every path `inner` matches is matched by `outer` (both patterns).
pub fn pattern_within(inner: &str, outer: &str) -> bool {
    match (split_pattern(inner), split_pattern(outer)) {
        ((inner, true), (outer, true)) => under(inner, outer),
        ((_, true), (_, false)) => false,
        ((exact, false), _) => path_matches(outer, exact),
    }
}

/// A caveat farebox understands, read from its bytes (not yet checked against a request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition<'a> {
    /// `services=`: the list, each entry checked to be `<name>:<tier>` (see [`service_names`]).
    Services(&'a str),
    /// `<service>_capabilities=`: the comma-separated list.
    Capabilities { service: &'a str, list: &'a str },
    /// `<service>_valid_until=`
    ValidUntil { service: &'a str, unix: u64 },
    /// `farebox_route=`
    Route(&'a str),
    /// `farebox_path=`: a pattern [`check_path_pattern`] accepts.
    Path(&'a str),
    /// `farebox_method=`: an RFC 9110 token.
    Method(&'a str),
    /// `farebox_amount_msat=`
    AmountMsat(u64),
    /// `farebox_max_requests=`
    MaxRequests(u64),
}

/// The service names of a [`Condition::Services`] list.
pub fn service_names(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(|entry| entry.split_once(':').map_or(entry, |(name, _)| name))
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses a decimal `u64` strictly: ASCII digits only, no sign, no spaces.
fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Reads one caveat. Unknown conditions and malformed values are errors (fail closed).
pub fn parse(caveat: &[u8]) -> Result<Condition<'_>, CaveatError> {
    let malformed = || CaveatError::Malformed(Shown::of(caveat));
    let text = std::str::from_utf8(caveat).map_err(|_| malformed())?;
    let (cond, value) = text.split_once('=').ok_or_else(malformed)?;
    let number = || parse_u64(value).ok_or_else(malformed);
    Ok(match cond {
        COND_SERVICES => {
            for entry in value.split(',') {
                let (name, tier) = entry.split_once(':').ok_or_else(malformed)?;
                if name.is_empty() || parse_u64(tier).is_none_or(|t| t > u64::from(u8::MAX)) {
                    return Err(malformed());
                }
            }
            Condition::Services(value)
        }
        COND_ROUTE => Condition::Route(value),
        COND_PATH => {
            check_path_pattern(value).map_err(|_| malformed())?;
            Condition::Path(value)
        }
        COND_METHOD => {
            if value.is_empty() || !value.bytes().all(is_tchar) {
                return Err(malformed());
            }
            Condition::Method(value)
        }
        COND_AMOUNT => Condition::AmountMsat(number()?),
        COND_MAX_REQUESTS => Condition::MaxRequests(number()?),
        _ => {
            match (cond.strip_suffix(SUFFIX_VALID_UNTIL), cond.strip_suffix(SUFFIX_CAPABILITIES)) {
                (Some(service), _) if !service.is_empty() => {
                    Condition::ValidUntil { service, unix: number()? }
                }
                (_, Some(service)) if !service.is_empty() => {
                    Condition::Capabilities { service, list: value }
                }
                _ => return Err(CaveatError::Unknown(Shown::of(caveat))),
            }
        }
    })
}

/// What a request is checked against.
#[derive(Debug, Clone, Copy)]
pub struct CaveatContext<'a> {
    /// Our service name.
    pub service: &'a str,
    /// The capabilities the service is configured with.
    pub capabilities: &'a [String],
    /// The route pattern that priced the request.
    pub route: &'a str,
    /// The request path (no query), as sent.
    pub path: &'a str,
    /// The request method.
    pub method: &'a str,
    /// The route's Bitcoin price, msat.
    pub price_msat: u64,
    /// The current time, unix seconds.
    pub now_unix: u64,
}

/// The `farebox_max_requests` values of a token, in caveat order (at most
/// [`MAX_REQUEST_LIMITS`]). Counting them is the rail's job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestLimits {
    len: usize,
    max: [u64; MAX_REQUEST_LIMITS],
}

impl RequestLimits {
    /// The limits, in caveat order.
    pub fn as_slice(&self) -> &[u64] {
        &self.max[..self.len]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn push(&mut self, n: u64) -> bool {
        let Some(slot) = self.max.get_mut(self.len) else {
            return false;
        };
        *slot = n;
        self.len += 1;
        true
    }
}

/// What the caveats grant a request that satisfies them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// What was paid: the smallest `farebox_amount_msat`.
    pub amount_msat: u64,
    /// The request limits the rail must count before serving.
    pub limits: RequestLimits,
}

/// Why the caveats do not authorise the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CaveatError {
    #[error("caveat {0} is not understood by this server")]
    Unknown(Shown),
    #[error("caveat {0} is malformed")]
    Malformed(Shown),
    #[error("token expired at unix time {until} (now {now})")]
    Expired { until: u64, now: u64 },
    #[error("token is not valid for service {service:?} (caveat {caveat})")]
    WrongService { service: String, caveat: Shown },
    #[error("token has no services caveat")]
    MissingService,
    #[error("token is for route {caveat}, not {route:?}")]
    WrongRoute { route: String, caveat: Shown },
    #[error("token is for paths matching {caveat}, not {path:?}")]
    WrongPath { path: String, caveat: Shown },
    #[error("path caveat {caveat} does not lie inside the route {route:?}")]
    PathOutsideRoute { route: String, caveat: Shown },
    #[error("token is for method {caveat}, not {method}")]
    WrongMethod { method: String, caveat: Shown },
    #[error("token paid {paid_msat} msat but this route costs {price_msat} msat")]
    InsufficientAmount { paid_msat: u64, price_msat: u64 },
    #[error("token carries no farebox_amount_msat caveat")]
    MissingAmount,
    #[error("capabilities caveat {0} does not grant every configured capability")]
    MissingCapability(Shown),
    #[error("token carries more than {MAX_REQUEST_LIMITS} farebox_max_requests caveats")]
    TooManyLimits,
}

impl CaveatError {
    /// The stable error code the rail reports.
    pub fn code(&self) -> &'static str {
        match self {
            CaveatError::Unknown(_) | CaveatError::Malformed(_) => "unknown_caveat",
            CaveatError::Expired { .. } => "expired",
            CaveatError::WrongService { .. } | CaveatError::MissingService => "wrong_service",
            CaveatError::WrongRoute { .. } => "wrong_route",
            CaveatError::WrongPath { .. } | CaveatError::PathOutsideRoute { .. } => "wrong_path",
            CaveatError::WrongMethod { .. } => "wrong_method",
            CaveatError::InsufficientAmount { .. } | CaveatError::MissingAmount => {
                "insufficient_amount"
            }
            CaveatError::MissingCapability(_) => "missing_capability",
            CaveatError::TooManyLimits => "too_many_limits",
        }
    }
}

/// A caveat as shown in an error: lossy UTF-8, control characters escaped, at most 80 chars
/// (caveats are attacker-supplied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown(String);

impl Shown {
    fn of(bytes: &[u8]) -> Self {
        let text = String::from_utf8_lossy(bytes);
        let mut out = String::new();
        for (i, c) in text.chars().enumerate() {
            if i == 80 {
                out.push('…');
                break;
            }
            out.extend(c.escape_debug());
        }
        Shown(out)
    }
}

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0)
    }
}

/// Checks every caveat against `ctx` and returns what they grant. Allocation-free unless it
/// fails.
pub fn check<'a>(
    caveats: impl IntoIterator<Item = &'a [u8]>,
    ctx: &CaveatContext<'_>,
) -> Result<Grant, CaveatError> {
    let mut paid: Option<u64> = None;
    let mut limits = RequestLimits::default();
    let mut saw_services = false;
    for c in caveats {
        match parse(c)? {
            Condition::Services(list) => {
                saw_services = true;
                if !service_names(list).any(|name| name == ctx.service) {
                    return Err(CaveatError::WrongService {
                        service: ctx.service.into(),
                        caveat: Shown::of(c),
                    });
                }
            }
            Condition::Capabilities { service, list } => {
                if service != ctx.service {
                    return Err(CaveatError::Unknown(Shown::of(c)));
                }
                if ctx.capabilities.iter().any(|cap| !list.split(',').any(|v| v == cap)) {
                    return Err(CaveatError::MissingCapability(Shown::of(c)));
                }
            }
            Condition::ValidUntil { service, unix } => {
                if service != ctx.service {
                    return Err(CaveatError::Unknown(Shown::of(c)));
                }
                if ctx.now_unix >= unix {
                    return Err(CaveatError::Expired { until: unix, now: ctx.now_unix });
                }
            }
            Condition::Route(route) => {
                if route != ctx.route {
                    return Err(CaveatError::WrongRoute {
                        route: ctx.route.into(),
                        caveat: Shown::of(route.as_bytes()),
                    });
                }
            }
            Condition::Path(pattern) => {
                if !pattern_within(pattern, ctx.route) {
                    return Err(CaveatError::PathOutsideRoute {
                        route: ctx.route.into(),
                        caveat: Shown::of(pattern.as_bytes()),
                    });
                }
                if !path_matches(pattern, ctx.path) {
                    return Err(CaveatError::WrongPath {
                        path: Shown::of(ctx.path.as_bytes()).0,
                        caveat: Shown::of(pattern.as_bytes()),
                    });
                }
            }
            Condition::Method(method) => {
                if method != ctx.method {
                    return Err(CaveatError::WrongMethod {
                        method: ctx.method.into(),
                        caveat: Shown::of(method.as_bytes()),
                    });
                }
            }
            Condition::AmountMsat(amount) => {
                if amount < ctx.price_msat {
                    return Err(CaveatError::InsufficientAmount {
                        paid_msat: amount,
                        price_msat: ctx.price_msat,
                    });
                }
                paid = Some(paid.map_or(amount, |p| p.min(amount)));
            }
            Condition::MaxRequests(n) => {
                if !limits.push(n) {
                    return Err(CaveatError::TooManyLimits);
                }
            }
        }
    }
    if !saw_services {
        return Err(CaveatError::MissingService);
    }
    let amount_msat = paid.ok_or(CaveatError::MissingAmount)?;
    Ok(Grant { amount_msat, limits })
}

/// What a caveat list allows, whatever the request: for showing a token to people
/// (`farebox token inspect`). The rules are [`check`]'s: every caveat must hold, so of each kind
/// the narrowest wins, and one caveat farebox does not understand makes the token worthless.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowed<'a> {
    /// The services every `services` caveat names (`None`: there is none, which farebox refuses).
    pub services: Option<Vec<&'a str>>,
    /// `(service, list)` of each `_capabilities` caveat.
    pub capabilities: Vec<(&'a str, &'a str)>,
    /// The route the token bought.
    pub route: Option<&'a str>,
    /// The narrowest path pattern.
    pub path: Option<&'a str>,
    /// The one method allowed.
    pub method: Option<&'a str>,
    /// The smallest amount paid, msat.
    pub amount_msat: Option<u64>,
    /// The earliest expiry per service, unix seconds.
    pub valid_until: Vec<(&'a str, u64)>,
    /// Each request limit, in caveat order (each is counted on its own).
    pub max_requests: Vec<u64>,
    /// Why caveats are not understood (each makes the token invalid).
    pub not_understood: Vec<String>,
    /// Caveats that contradict each other, so that no request satisfies them all.
    pub contradictions: Vec<String>,
}

impl<'a> Allowed<'a> {
    /// Reads every caveat.
    pub fn of(caveats: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut a = Allowed::default();
        for c in caveats {
            let condition = match parse(c) {
                Ok(condition) => condition,
                Err(e) => {
                    a.not_understood.push(e.to_string());
                    continue;
                }
            };
            match condition {
                Condition::Services(list) => {
                    let names: Vec<&str> = service_names(list).collect();
                    a.services = Some(match a.services.take() {
                        None => names,
                        Some(before) => before.into_iter().filter(|n| names.contains(n)).collect(),
                    });
                }
                Condition::Capabilities { service, list } => a.capabilities.push((service, list)),
                Condition::ValidUntil { service, unix } => {
                    match a.valid_until.iter_mut().find(|(s, _)| *s == service) {
                        Some((_, until)) => *until = (*until).min(unix),
                        None => a.valid_until.push((service, unix)),
                    }
                }
                Condition::Route(route) => match a.route {
                    Some(before) if before != route => {
                        a.contradictions.push(format!("two routes: {before} and {route}"));
                    }
                    _ => a.route = Some(route),
                },
                Condition::Path(pattern) => match a.path {
                    None => a.path = Some(pattern),
                    Some(before) if pattern_within(pattern, before) => a.path = Some(pattern),
                    Some(before) if pattern_within(before, pattern) => {}
                    Some(before) => a
                        .contradictions
                        .push(format!("no path matches both {before} and {pattern}")),
                },
                Condition::Method(method) => match a.method {
                    Some(before) if before != method => {
                        a.contradictions.push(format!("two methods: {before} and {method}"));
                    }
                    _ => a.method = Some(method),
                },
                Condition::AmountMsat(n) => {
                    a.amount_msat = Some(a.amount_msat.map_or(n, |before| before.min(n)));
                }
                Condition::MaxRequests(n) => {
                    if a.max_requests.len() == MAX_REQUEST_LIMITS {
                        a.not_understood.push(CaveatError::TooManyLimits.to_string());
                    }
                    a.max_requests.push(n);
                }
            }
        }
        if let (Some(path), Some(route)) = (a.path, a.route)
            && !pattern_within(path, route)
        {
            a.contradictions
                .push(format!("the path pattern {path} is not inside the route {route}"));
        }
        if a.services.as_ref().is_some_and(Vec::is_empty) {
            a.contradictions.push("no service is named by every services caveat".into());
        }
        if a.max_requests.contains(&0) {
            a.contradictions.push("a request limit of 0".into());
        }
        a
    }

    /// Whether no request can satisfy the caveats, whatever it is.
    pub fn allows_nothing(&self) -> bool {
        self.services.is_none()
            || self.amount_msat.is_none()
            || !self.not_understood.is_empty()
            || !self.contradictions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> CaveatContext<'static> {
        CaveatContext {
            service: "svc",
            capabilities: &[],
            route: "/a/*",
            path: "/a/x",
            method: "GET",
            price_msat: 5000,
            now_unix: 100,
        }
    }

    fn run_in(ctx: &CaveatContext<'_>, cavs: &[&str]) -> Result<u64, &'static str> {
        check(cavs.iter().map(|c| c.as_bytes()), ctx).map(|g| g.amount_msat).map_err(|e| e.code())
    }

    fn run(cavs: &[&str]) -> Result<u64, &'static str> {
        run_in(&ctx(), cavs)
    }

    const BASE: [&str; 2] = ["services=svc:0", "farebox_amount_msat=5000"];

    fn with(extra: &[&str]) -> Result<u64, &'static str> {
        let mut v = BASE.to_vec();
        v.extend_from_slice(extra);
        run(&v)
    }

    #[test]
    fn grammar() {
        assert_eq!(run(&BASE), Ok(5000));
        assert_eq!(
            run(&[
                "services=other:0,svc:1",
                "farebox_amount_msat=7000",
                "farebox_amount_msat=6000"
            ]),
            Ok(6000)
        );
        assert_eq!(with(&["svc_valid_until=101"]), Ok(5000));
        assert_eq!(with(&["svc_valid_until=100"]), Err("expired"));
        assert_eq!(with(&["svc_valid_until=+101"]), Err("unknown_caveat"));
        assert_eq!(with(&["other_valid_until=101"]), Err("unknown_caveat"));
        assert_eq!(with(&["_valid_until=101"]), Err("unknown_caveat"));
        assert_eq!(with(&["services=other:0"]), Err("wrong_service"));
        assert_eq!(with(&["services=svc"]), Err("unknown_caveat"));
        assert_eq!(with(&["services=svc:256"]), Err("unknown_caveat"));
        assert_eq!(with(&["farebox_route=/b/*"]), Err("wrong_route"));
        assert_eq!(with(&["farebox_route=/a/*"]), Ok(5000));
        assert_eq!(with(&["farebox_method=POST"]), Err("wrong_method"));
        assert_eq!(with(&["farebox_method=G ET"]), Err("unknown_caveat"));
        assert_eq!(with(&["farebox_amount_msat=4999"]), Err("insufficient_amount"));
        assert_eq!(with(&["foo=bar"]), Err("unknown_caveat"));
        assert_eq!(with(&["noequals"]), Err("unknown_caveat"));
        assert_eq!(with(&["svc_capabilities=read"]), Ok(5000));
        assert_eq!(with(&["farebox_path=/a/\u{e9}"]), Err("unknown_caveat"));
        assert_eq!(run(&["services=svc:0"]), Err("insufficient_amount"));
        assert_eq!(run(&["farebox_amount_msat=5000"]), Err("wrong_service"));
        let not_utf8 = [b"services=svc:0".as_slice(), b"farebox_amount_msat=5000", b"svc\xff=1"];
        assert_eq!(check(not_utf8, &ctx()).unwrap_err().code(), "unknown_caveat");
    }

    #[test]
    fn path_caveats_narrow_inside_the_route() {
        assert_eq!(with(&["farebox_path=/a/x"]), Ok(5000));
        assert_eq!(with(&["farebox_path=/a/x/"]), Ok(5000));
        assert_eq!(with(&["farebox_path=/a/*"]), Ok(5000));
        assert_eq!(with(&["farebox_path=/a/x/*"]), Ok(5000));
        assert_eq!(with(&["farebox_path=/a/y"]), Err("wrong_path"));
        assert_eq!(with(&["farebox_path=/a/xy"]), Err("wrong_path"));
        assert_eq!(with(&["farebox_path=/a/X"]), Err("wrong_path"));
        // Outside the route the token bought: refused even where it would match the path.
        assert_eq!(with(&["farebox_path=/*"]), Err("wrong_path"));
        // Every path caveat holds: a wider one after a narrower one widens nothing.
        assert_eq!(with(&["farebox_path=/a/y", "farebox_path=/a/*"]), Err("wrong_path"));
        assert_eq!(with(&["farebox_path=/a/x", "farebox_path=/a/*"]), Ok(5000));
        for bad in ["a/x", "/a/../x", "/a/./x", "/a//x", "//*", "/a/x?y", "/a;x", "/a*", "/a/*/b"] {
            assert_eq!(with(&[&format!("farebox_path={bad}")]), Err("unknown_caveat"), "{bad}");
        }
        let trailing = CaveatContext { path: "/a/x/", ..ctx() };
        assert_eq!(run_in(&trailing, &[BASE[0], BASE[1], "farebox_path=/a/x"]), Ok(5000));
    }

    #[test]
    fn patterns_follow_the_route_language() {
        assert!(path_matches("/*", "/anything/at/all"));
        assert!(path_matches("/a/*", "/a"));
        assert!(path_matches("/a/*", "/a/"));
        assert!(path_matches("/a/*", "/a/b/c"));
        assert!(!path_matches("/a/*", "/ab"));
        assert!(path_matches("/a", "/a/"));
        assert!(!path_matches("/a", "/a/b"));
        assert!(path_matches("/", "/"));
        assert!(pattern_within("/a/b", "/a/*"));
        assert!(pattern_within("/a", "/a/*"));
        assert!(pattern_within("/a/b/*", "/a/*"));
        assert!(pattern_within("/a/*", "/a/*"));
        assert!(pattern_within("/a/*", "/*"));
        assert!(pattern_within("/a/", "/a"));
        assert!(!pattern_within("/a/*", "/a"));
        assert!(!pattern_within("/*", "/a/*"));
        assert!(!pattern_within("/ab/*", "/a/*"));
        assert!(!pattern_within("/b", "/a/*"));
        assert_eq!(check_path_pattern("/"), Ok(()));
        assert_eq!(check_path_pattern("/*"), Ok(()));
        assert_eq!(check_path_pattern("/s%C3%A3o/*"), Ok(()));
        assert!(check_path_pattern(&format!("/{}", "a".repeat(MAX_PATTERN_LEN))).is_err());
        assert!(check_path_pattern("/a b").is_err());
    }

    #[test]
    fn request_limits_are_collected_in_order() {
        let cavs = [BASE[0], BASE[1], "farebox_max_requests=3", "farebox_max_requests=10"];
        let grant = check(cavs.iter().map(|c| c.as_bytes()), &ctx()).unwrap();
        assert_eq!(grant.limits.as_slice(), [3, 10]);
        assert_eq!(with(&["farebox_max_requests=-1"]), Err("unknown_caveat"));
        let five = ["farebox_max_requests=1"; MAX_REQUEST_LIMITS + 1];
        assert_eq!(with(&five), Err("too_many_limits"));
    }

    #[test]
    fn capabilities_must_cover_configuration() {
        let caps = vec!["read".to_string(), "write".to_string()];
        let c = CaveatContext { capabilities: &caps, ..ctx() };
        assert_eq!(run_in(&c, &[BASE[0], BASE[1], "svc_capabilities=read,write"]), Ok(5000));
        assert_eq!(
            run_in(&c, &[BASE[0], BASE[1], "svc_capabilities=read"]),
            Err("missing_capability")
        );
        assert_eq!(
            run_in(&c, &[BASE[0], BASE[1], "other_capabilities=read"]),
            Err("unknown_caveat")
        );
    }

    #[test]
    fn allowed_takes_the_narrowest_of_each_kind() {
        let cavs = [
            "services=svc:0,other:0",
            "farebox_route=/a/*",
            "farebox_method=GET",
            "farebox_amount_msat=5000",
            "svc_valid_until=200",
            "farebox_path=/a/x/*",
            "services=svc:0",
            "svc_valid_until=300",
            "farebox_path=/a/x/y",
            "farebox_max_requests=3",
        ];
        let a = Allowed::of(cavs.iter().map(|c| c.as_bytes()));
        assert_eq!(a.services, Some(vec!["svc"]));
        assert_eq!(a.route, Some("/a/*"));
        assert_eq!(a.path, Some("/a/x/y"));
        assert_eq!(a.method, Some("GET"));
        assert_eq!(a.amount_msat, Some(5000));
        assert_eq!(a.valid_until, [("svc", 200)]);
        assert_eq!(a.max_requests, [3]);
        assert!(!a.allows_nothing());
        let contradictory =
            ["services=svc:0", "farebox_amount_msat=1", "farebox_path=/a", "farebox_path=/b"];
        assert!(Allowed::of(contradictory.iter().map(|c| c.as_bytes())).allows_nothing());
        let unknown = ["services=svc:0", "farebox_amount_msat=1", "tier=gold"];
        let a = Allowed::of(unknown.iter().map(|c| c.as_bytes()));
        assert_eq!(a.not_understood.len(), 1);
        assert!(a.allows_nothing());
    }

    #[test]
    fn shown_is_bounded() {
        let long = vec![b'\n'; 500];
        let s = Shown::of(&long).to_string();
        assert!(s.len() < 200 && !s.contains('\n'));
    }
}
