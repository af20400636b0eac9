//! RFC 3339 timestamps as the rails write them (MPP `expires` and receipt `timestamp`, the
//! `L402-Receipt` timestamp), without a date library.
//!
//! [`format()`] always writes UTC with second precision (`2025-01-06T12:00:00Z`), the form both
//! SDKs emit. [`parse`] accepts RFC 3339 `date-time`: `T`/`t` separator (a space is refused),
//! optional fractional seconds (truncated to the second; a deadline is never extended past the
//! written second), and `Z`/`z` or a numeric offset. Leap seconds (`:60`) are read as `:59`.
//! Anything else is an error: callers fail closed on an unparseable `expires`.
//!
//! [`unix_now`] is the one clock of the workspace, with one failure rule: a system clock that
//! reads before 1970 is a [`ClockError`], never a zero. A zero "now" would make every expiry
//! lie in the future (an expired token, challenge or invoice accepted), so whoever asks fails
//! closed: a rail answers an internal error (`PaymentError: From<ClockError>`), a store
//! refuses the write, a wallet does not pay.

use std::time::{SystemTime, UNIX_EPOCH};

/// A timestamp that is not RFC 3339.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an RFC 3339 date-time: {0}")]
pub struct TimeError(pub &'static str);

/// The system clock reads before 1970: nothing that depends on time can be decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the system clock reads before 1970")]
pub struct ClockError;

/// Current Unix time in seconds.
pub fn unix_now() -> Result<u64, ClockError> {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).map_err(|_| ClockError)
}

/// Current Unix time in milliseconds.
pub fn unix_now_ms() -> Result<u64, ClockError> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .map_err(|_| ClockError)
}

impl From<ClockError> for crate::PaymentError {
    fn from(e: ClockError) -> Self {
        crate::PaymentError::internal("clock", e.to_string())
    }
}

impl From<ClockError> for crate::StoreError {
    fn from(e: ClockError) -> Self {
        crate::StoreError::Invalid(e.to_string())
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

/// `unix` seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, (secs / 60) % 60, secs % 60)
}

fn digits(b: &[u8], at: usize, n: usize) -> Result<u32, TimeError> {
    let s = b.get(at..at + n).ok_or(TimeError("too short"))?;
    s.iter().try_fold(0u32, |acc, &c| {
        if c.is_ascii_digit() {
            Ok(acc * 10 + u32::from(c - b'0'))
        } else {
            Err(TimeError("expected a digit"))
        }
    })
}

fn expect(b: &[u8], at: usize, c: u8) -> Result<(), TimeError> {
    (b.get(at) == Some(&c)).then_some(()).ok_or(TimeError("unexpected separator"))
}

/// Parses an RFC 3339 `date-time` into Unix seconds. Times before 1970 are errors.
pub fn parse(text: &str) -> Result<u64, TimeError> {
    let b = text.as_bytes();
    if b.len() > 64 {
        return Err(TimeError("too long"));
    }
    let year = digits(b, 0, 4)?;
    expect(b, 4, b'-')?;
    let month = digits(b, 5, 2)?;
    expect(b, 7, b'-')?;
    let day = digits(b, 8, 2)?;
    if !matches!(b.get(10), Some(b'T' | b't')) {
        return Err(TimeError("expected T between date and time"));
    }
    let hour = digits(b, 11, 2)?;
    expect(b, 13, b':')?;
    let minute = digits(b, 14, 2)?;
    expect(b, 16, b':')?;
    let second = digits(b, 17, 2)?;
    let mut at = 19;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        if at == start {
            return Err(TimeError("empty fraction"));
        }
    }
    let offset: i64 = match b.get(at) {
        Some(b'Z' | b'z') => {
            at += 1;
            0
        }
        Some(&sign @ (b'+' | b'-')) => {
            let oh = digits(b, at + 1, 2)?;
            expect(b, at + 3, b':')?;
            let om = digits(b, at + 4, 2)?;
            if oh > 23 || om > 59 {
                return Err(TimeError("offset out of range"));
            }
            at += 6;
            let o = i64::from(oh * 3600 + om * 60);
            if sign == b'+' { o } else { -o }
        }
        _ => return Err(TimeError("expected Z or an offset")),
    };
    if at != b.len() {
        return Err(TimeError("trailing characters"));
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&month)
        || day == 0
        || day > month_days[(month - 1) as usize]
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(TimeError("field out of range"));
    }
    let second = second.min(59);
    let days = days_from_civil(i64::from(year), month, day);
    let t = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset;
    u64::try_from(t).map_err(|_| TimeError("before 1970"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses() {
        assert_eq!(format(0), "1970-01-01T00:00:00Z");
        assert_eq!(format(1_736_164_800), "2025-01-06T12:00:00Z");
        assert_eq!(format(951_782_400), "2000-02-29T00:00:00Z");
        for t in [0, 1_736_164_800, 951_782_400, 4_102_444_799, 1_769_688_000] {
            assert_eq!(parse(&format(t)).unwrap(), t);
        }
        assert_eq!(parse("2025-01-06T13:00:00.999+01:00").unwrap(), 1_736_164_800);
        assert_eq!(parse("2025-01-06t11:30:00-00:30").unwrap(), 1_736_164_800);
        assert_eq!(parse("2025-01-06T12:00:00z").unwrap(), 1_736_164_800);
    }

    #[test]
    fn refuses_what_is_not_rfc3339() {
        for bad in [
            "",
            "2025-01-06",
            "2025-01-06 12:00:00Z",
            "2025-01-06T12:00:00",
            "2025-02-29T00:00:00Z",
            "2025-13-01T00:00:00Z",
            "2025-01-06T24:00:00Z",
            "2025-01-06T12:00:00.Z",
            "2025-01-06T12:00:00Z ",
            "1969-12-31T23:59:59Z",
            "2025-01-06T12:00:00+1:00",
            "２025-01-06T12:00:00Z",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
