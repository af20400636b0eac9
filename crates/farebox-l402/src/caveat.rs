//! L402 first-party caveats: their grammar, how farebox mints them and how it checks them.
//!
//! A caveat is the bytes `condition=value`, split at the first `=`, with no spaces. farebox mints,
//! in this order:
//!
//! | caveat | meaning |
//! |---|---|
//! | `services=<name>:<tier>[,<name>:<tier>…]` | the services the token is good for; must name ours (Aperture's) |
//! | `<service>_capabilities=<cap>[,<cap>…]` | capabilities granted (only when configured) (Aperture's) |
//! | `farebox_route=<route pattern>` | the token pays for this route only, e.g. `/v1/weather/*` |
//! | `farebox_method=<METHOD>` | … and this request method only, e.g. `GET` |
//! | `farebox_amount_msat=<msat>` | what was paid; refused where the route's Bitcoin price is higher |
//! | `<service>_valid_until=<unix seconds>` | refused from that second on (Aperture's) |
//!
//! **Fail closed.** Unlike Aperture, which skips caveats it has no satisfier for, every caveat
//! must be understood and satisfied: a caveat without `=`, a malformed value, a condition for
//! another service or an unknown condition makes the token invalid. This is what makes holder
//! attenuation meaningful: anyone holding a token can append caveats (re-chaining the signature
//! needs no key), and each appended caveat is enforced as a further conjunct. Repeated
//! conditions are all enforced: two `_valid_until` caveats mean the earlier one wins; two
//! `services` caveats must both name our service; two amounts must both cover the price (and the
//! amount reported as paid is the smallest one, so an appended caveat cannot inflate it).
//!
//! `services` and `farebox_amount_msat` are required (every farebox token has them); the others
//! are optional restrictions. farebox routes do not name capabilities, so a capabilities caveat
//! is satisfied only when it grants *every* capability the service is configured with: a token
//! narrowed below that set is refused rather than over-honoured.

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

/// Longest service name accepted in configuration.
pub const MAX_SERVICE_NAME_LEN: usize = 64;

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

/// What a request is checked against.
#[derive(Debug, Clone, Copy)]
pub struct CaveatContext<'a> {
    /// Our service name.
    pub service: &'a str,
    /// The capabilities the service is configured with.
    pub capabilities: &'a [String],
    /// The route pattern that priced the request.
    pub route: &'a str,
    /// The request method.
    pub method: &'a str,
    /// The route's Bitcoin price, msat.
    pub price_msat: u64,
    /// The current time, unix seconds.
    pub now_unix: u64,
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
    #[error("token is for method {caveat}, not {method}")]
    WrongMethod { method: String, caveat: Shown },
    #[error("token paid {paid_msat} msat but this route costs {price_msat} msat")]
    InsufficientAmount { paid_msat: u64, price_msat: u64 },
    #[error("token carries no farebox_amount_msat caveat")]
    MissingAmount,
    #[error("capabilities caveat {0} does not grant every configured capability")]
    MissingCapability(Shown),
}

impl CaveatError {
    /// The stable error code the rail reports.
    pub fn code(&self) -> &'static str {
        match self {
            CaveatError::Unknown(_) | CaveatError::Malformed(_) => "unknown_caveat",
            CaveatError::Expired { .. } => "expired",
            CaveatError::WrongService { .. } | CaveatError::MissingService => "wrong_service",
            CaveatError::WrongRoute { .. } => "wrong_route",
            CaveatError::WrongMethod { .. } => "wrong_method",
            CaveatError::InsufficientAmount { .. } | CaveatError::MissingAmount => {
                "insufficient_amount"
            }
            CaveatError::MissingCapability(_) => "missing_capability",
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

/// Parses a decimal `u64` strictly: ASCII digits only, no sign, no spaces.
fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

fn split_list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',')
}

/// Checks every caveat against `ctx` and returns the amount paid (msat): the smallest
/// `farebox_amount_msat`. Allocation-free unless it fails.
pub fn check<'a>(
    caveats: impl IntoIterator<Item = &'a [u8]>,
    ctx: &CaveatContext<'_>,
) -> Result<u64, CaveatError> {
    let service = ctx.service.as_bytes();
    let mut paid: Option<u64> = None;
    let mut saw_services = false;
    for c in caveats {
        let Some(eq) = c.iter().position(|&b| b == b'=') else {
            return Err(CaveatError::Malformed(Shown::of(c)));
        };
        let (cond, value) = (&c[..eq], &c[eq + 1..]);
        match cond {
            b"services" => {
                saw_services = true;
                let mut ours = false;
                for entry in split_list(value) {
                    let Some(colon) = entry.iter().position(|&b| b == b':') else {
                        return Err(CaveatError::Malformed(Shown::of(c)));
                    };
                    let (name, tier) = (&entry[..colon], &entry[colon + 1..]);
                    if name.is_empty() || parse_u64(tier).is_none_or(|t| t > u64::from(u8::MAX)) {
                        return Err(CaveatError::Malformed(Shown::of(c)));
                    }
                    ours |= name == service;
                }
                if !ours {
                    return Err(CaveatError::WrongService {
                        service: ctx.service.into(),
                        caveat: Shown::of(c),
                    });
                }
            }
            b"farebox_route" => {
                if value != ctx.route.as_bytes() {
                    return Err(CaveatError::WrongRoute {
                        route: ctx.route.into(),
                        caveat: Shown::of(value),
                    });
                }
            }
            b"farebox_method" => {
                if value != ctx.method.as_bytes() {
                    return Err(CaveatError::WrongMethod {
                        method: ctx.method.into(),
                        caveat: Shown::of(value),
                    });
                }
            }
            b"farebox_amount_msat" => {
                let amount =
                    parse_u64(value).ok_or_else(|| CaveatError::Malformed(Shown::of(c)))?;
                if amount < ctx.price_msat {
                    return Err(CaveatError::InsufficientAmount {
                        paid_msat: amount,
                        price_msat: ctx.price_msat,
                    });
                }
                paid = Some(paid.map_or(amount, |p| p.min(amount)));
            }
            _ => {
                let suffix = cond.strip_prefix(service).unwrap_or(&[]);
                match suffix {
                    b"_valid_until" => {
                        let until =
                            parse_u64(value).ok_or_else(|| CaveatError::Malformed(Shown::of(c)))?;
                        if ctx.now_unix >= until {
                            return Err(CaveatError::Expired { until, now: ctx.now_unix });
                        }
                    }
                    b"_capabilities" => {
                        for cap in ctx.capabilities {
                            if !split_list(value).any(|v| v == cap.as_bytes()) {
                                return Err(CaveatError::MissingCapability(Shown::of(c)));
                            }
                        }
                    }
                    _ => return Err(CaveatError::Unknown(Shown::of(c))),
                }
            }
        }
    }
    if !saw_services {
        return Err(CaveatError::MissingService);
    }
    paid.ok_or(CaveatError::MissingAmount)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> CaveatContext<'static> {
        CaveatContext {
            service: "svc",
            capabilities: &[],
            route: "/a/*",
            method: "GET",
            price_msat: 5000,
            now_unix: 100,
        }
    }

    fn run(cavs: &[&str]) -> Result<u64, CaveatError> {
        check(cavs.iter().map(|c| c.as_bytes()), &ctx())
    }

    #[test]
    fn grammar() {
        let base = ["services=svc:0", "farebox_amount_msat=5000"];
        assert_eq!(run(&base), Ok(5000));
        assert_eq!(
            run(&[
                "services=other:0,svc:1",
                "farebox_amount_msat=7000",
                "farebox_amount_msat=6000"
            ]),
            Ok(6000)
        );
        let with = |extra: &str| {
            let mut v = base.to_vec();
            v.push(extra);
            run(&v).map_err(|e| e.code())
        };
        assert_eq!(with("svc_valid_until=101"), Ok(5000));
        assert_eq!(with("svc_valid_until=100"), Err("expired"));
        assert_eq!(with("svc_valid_until=+101"), Err("unknown_caveat"));
        assert_eq!(with("other_valid_until=101"), Err("unknown_caveat"));
        assert_eq!(with("services=other:0"), Err("wrong_service"));
        assert_eq!(with("services=svc"), Err("unknown_caveat"));
        assert_eq!(with("services=svc:256"), Err("unknown_caveat"));
        assert_eq!(with("farebox_route=/b/*"), Err("wrong_route"));
        assert_eq!(with("farebox_route=/a/*"), Ok(5000));
        assert_eq!(with("farebox_method=POST"), Err("wrong_method"));
        assert_eq!(with("farebox_amount_msat=4999"), Err("insufficient_amount"));
        assert_eq!(with("foo=bar"), Err("unknown_caveat"));
        assert_eq!(with("noequals"), Err("unknown_caveat"));
        assert_eq!(with("svc_capabilities=read"), Ok(5000));
        assert_eq!(run(&["services=svc:0"]).map_err(|e| e.code()), Err("insufficient_amount"));
        assert_eq!(run(&["farebox_amount_msat=5000"]).map_err(|e| e.code()), Err("wrong_service"));
    }

    #[test]
    fn capabilities_must_cover_configuration() {
        let caps = vec!["read".to_string(), "write".to_string()];
        let c = CaveatContext { capabilities: &caps, ..ctx() };
        let ok = ["services=svc:0", "farebox_amount_msat=5000", "svc_capabilities=read,write"];
        assert!(check(ok.iter().map(|c| c.as_bytes()), &c).is_ok());
        let narrowed = ["services=svc:0", "farebox_amount_msat=5000", "svc_capabilities=read"];
        assert_eq!(
            check(narrowed.iter().map(|c| c.as_bytes()), &c).unwrap_err().code(),
            "missing_capability"
        );
    }

    #[test]
    fn shown_is_bounded() {
        let long = vec![b'\n'; 500];
        let s = Shown::of(&long).to_string();
        assert!(s.len() < 200 && !s.contains('\n'));
    }
}
