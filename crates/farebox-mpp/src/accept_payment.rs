//! `Accept-Payment`: the client's payment preferences, and the server's choice of offers by them.
//!
//! ```text
//! Accept-Payment: lightning/session, evm/charge;q=0.5, */*;q=0
//! ```
//!
//! A comma-separated list of `method/intent` ranges (`*` for either part) with an optional weight
//! `q` (0 to 1, default 1). The server keeps the offers whose most specific matching range has
//! `q > 0`, ordered by that `q` (ties keep the server's order). As the core draft allows, a
//! header that does not parse, or that matches none of the offers, is ignored: every offer is
//! made. Bounded: at most [`MAX_HEADER_LEN`] bytes and [`MAX_RANGES`] ranges are read.

/// Longest `Accept-Payment` value read; a longer one is ignored.
pub const MAX_HEADER_LEN: usize = 1024;
/// Most ranges read; a header with more is ignored.
pub const MAX_RANGES: usize = 32;

/// One `method/intent;q=…` range.
#[derive(Debug, Clone, PartialEq)]
pub struct PaymentRange {
    /// `None` for `*`.
    pub method: Option<String>,
    pub intent: Option<String>,
    /// In thousandths (0..=1000), as HTTP quality values have three decimals.
    pub q: u16,
}

impl PaymentRange {
    /// How specific the range is for `(method, intent)`, if it matches: 2 = both named.
    fn specificity(&self, method: &str, intent: &str) -> Option<u8> {
        let m = match &self.method {
            None => 0,
            Some(x) if x.eq_ignore_ascii_case(method) => 1,
            Some(_) => return None,
        };
        let i = match &self.intent {
            None => 0,
            Some(x) if x.eq_ignore_ascii_case(intent) => 1,
            Some(_) => return None,
        };
        Some(m + i)
    }
}

/// Parses an `Accept-Payment` value; `None` when it is malformed or too large.
pub fn parse(value: &str) -> Option<Vec<PaymentRange>> {
    if value.len() > MAX_HEADER_LEN {
        return None;
    }
    let mut ranges = Vec::new();
    for item in value.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        if ranges.len() == MAX_RANGES {
            return None;
        }
        let mut parts = item.split(';');
        let (method, intent) = parts.next()?.trim().split_once('/')?;
        let name = |s: &str| -> Option<Option<String>> {
            let s = s.trim();
            if s == "*" {
                return Some(None);
            }
            let ok = !s.is_empty()
                && s.len() <= 64
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            ok.then(|| Some(s.to_ascii_lowercase()))
        };
        let mut range = PaymentRange { method: name(method)?, intent: name(intent)?, q: 1000 };
        for param in parts {
            let (k, v) = param.trim().split_once('=')?;
            if k.trim().eq_ignore_ascii_case("q") {
                range.q = quality(v.trim())?;
            }
        }
        ranges.push(range);
    }
    (!ranges.is_empty()).then_some(ranges)
}

/// An HTTP quality value (`0`, `0.5`, `1.000`) in thousandths.
fn quality(v: &str) -> Option<u16> {
    let (whole, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = format!("{frac:0<3}").parse::<u16>().ok()?;
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// The weight the client gives `(method, intent)`: the `q` of its most specific matching range,
/// `None` when no range matches.
pub fn weight(ranges: &[PaymentRange], method: &str, intent: &str) -> Option<u16> {
    ranges
        .iter()
        .filter_map(|r| r.specificity(method, intent).map(|s| (s, r.q)))
        .max_by_key(|(s, _)| *s)
        .map(|(_, q)| q)
}

/// Which of `offers` (each `(method, intent)`, in the server's order of preference) to make and
/// in what order, for the client's `Accept-Payment` `header`: indices into `offers`. Every offer,
/// in order, when the header is absent, malformed or matches none.
pub fn select(header: Option<&str>, offers: &[(&str, &str)]) -> Vec<usize> {
    let all: Vec<usize> = (0..offers.len()).collect();
    let Some(ranges) = header.and_then(parse) else { return all };
    let mut chosen: Vec<(usize, u16)> = offers
        .iter()
        .enumerate()
        .filter_map(|(i, (m, intent))| weight(&ranges, m, intent).map(|q| (i, q)))
        .filter(|(_, q)| *q > 0)
        .collect();
    if chosen.is_empty() {
        return all;
    }
    // A stable sort: equal weights keep the server's order.
    chosen.sort_by_key(|&(_, q)| std::cmp::Reverse(q));
    chosen.into_iter().map(|(i, _)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFERS: [(&str, &str); 4] =
        [("lightning", "charge"), ("evm", "charge"), ("evm", "session"), ("lightning", "session")];

    #[test]
    fn orders_and_filters_by_weight_and_specificity() {
        assert_eq!(select(None, &OFFERS), [0, 1, 2, 3]);
        assert_eq!(select(Some("evm/session"), &OFFERS), [2]);
        assert_eq!(select(Some("evm/*;q=0.5, lightning/session"), &OFFERS), [3, 1, 2]);
        // The most specific range wins: evm/charge is excluded though evm/* allows it.
        assert_eq!(select(Some("evm/*, evm/charge;q=0"), &OFFERS), [2]);
        assert_eq!(select(Some("*/*;q=0.1, */session;q=0.9"), &OFFERS), [2, 3, 0, 1]);
        // Ranges name what is acceptable: an offer no range matches is not, so "no sessions"
        // alone leaves nothing acceptable, and the header is ignored.
        assert_eq!(select(Some("*/session;q=0"), &OFFERS), [0, 1, 2, 3]);
        assert_eq!(select(Some("*/session;q=0, */*"), &OFFERS), [0, 1]);
        // The spec's example, case-insensitive.
        assert_eq!(select(Some("Tempo/charge, tempo/session;q=0, EVM/charge;q=0.8"), &OFFERS), [1]);
    }

    #[test]
    fn malformed_or_unmatched_headers_are_ignored() {
        for bad in
            ["", "evm", "evm/charge;q=2", "evm/charge;q=0.1234", "e v m/charge", "evm/charge;q"]
        {
            assert_eq!(select(Some(bad), &OFFERS), [0, 1, 2, 3], "{bad:?}");
        }
        assert_eq!(select(Some("tempo/charge"), &OFFERS), [0, 1, 2, 3], "no match: everything");
        assert_eq!(select(Some("*/*;q=0"), &OFFERS), [0, 1, 2, 3], "nothing acceptable: ignored");
        let huge = "evm/charge,".repeat(200);
        assert_eq!(select(Some(&huge), &OFFERS), [0, 1, 2, 3]);
        assert_eq!(quality("0.5"), Some(500));
        assert_eq!(quality("1.000"), Some(1000));
        assert_eq!(quality("1.5"), None);
    }
}
