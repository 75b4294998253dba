//! Times as operators type them: RFC 3339, `now`, or relative (`+2h`, `-30m`), and durations
//! (`8h`, `90d`). Stored as Unix seconds.

use chrono::{DateTime, Utc};

pub fn now() -> i64 {
    Utc::now().timestamp()
}

/// The longest duration anything in Postern accepts (ten years): every window, validity and
/// offset is far shorter, and the bound keeps all time arithmetic clear of overflow.
pub const MAX_DURATION: i64 = 10 * 366 * 86_400;

/// Times before 1970 or after 9999 are typing mistakes or attacks, never real windows.
const LATEST: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z

/// Why a time or duration typed by an operator was refused; each names what was typed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("'{0}' is out of range (1970 to 9999)")]
    OutOfRange(String),
    #[error(
        "'{0}' is not a time: use RFC 3339 (2026-11-25T14:00:00Z), a date (2026-12-31), 'now' or '+2h'"
    )]
    NotATime(String),
    #[error("'{0}' is not a duration: use e.g. 30m, 8h, 90d")]
    NotADuration(String),
    #[error("'{0}' is too long: at most ten years")]
    TooLong(String),
}

/// Parses `now`, `+DURATION`, `-DURATION` or an RFC 3339 time, relative to `now`.
pub fn parse_time(s: &str, now: i64) -> Result<i64, TimeError> {
    let s = s.trim();
    if s == "now" {
        return Ok(now);
    }
    let out_of_range = || TimeError::OutOfRange(s.to_owned());
    let t = if let Some(rest) = s.strip_prefix('+') {
        now.checked_add(parse_duration(rest)?)
            .ok_or_else(out_of_range)?
    } else if let Some(rest) = s.strip_prefix('-') {
        now.checked_sub(parse_duration(rest)?)
            .ok_or_else(out_of_range)?
    } else {
        parse_absolute(s)?
    };
    if !(0..=LATEST).contains(&t) {
        return Err(out_of_range());
    }
    Ok(t)
}

fn parse_absolute(s: &str) -> Result<i64, TimeError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp())
        .or_else(|_| {
            // A bare date means the start of that day in UTC (contract ends are given as dates).
            chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").map(|d| {
                d.and_hms_opt(0, 0, 0)
                    .map(|t| t.and_utc().timestamp())
                    .unwrap_or(0)
            })
        })
        .map_err(|_| TimeError::NotATime(s.to_owned()))
}

/// Parses a duration such as `90s`, `15m`, `8h`, `90d`, `1h30m`, in seconds; at most
/// [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<i64, TimeError> {
    let bad = || TimeError::NotADuration(s.to_owned());
    let mut total: i64 = 0;
    let mut num = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: i64 = num.parse().map_err(|_| bad())?;
        num.clear();
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(bad()),
        };
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    if !num.is_empty() || total <= 0 {
        return Err(bad());
    }
    if total > MAX_DURATION {
        return Err(TimeError::TooLong(s.to_owned()));
    }
    Ok(total)
}

/// RFC 3339 in UTC, second precision.
pub fn fmt_time(t: i64) -> String {
    DateTime::<Utc>::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_operator_times() {
        assert_eq!(parse_time("now", 100), Ok(100));
        assert_eq!(parse_time("+2h", 100), Ok(7300));
        assert_eq!(parse_time("-1m", 100), Ok(40));
        assert_eq!(parse_time("2026-11-25T14:00:00Z", 0), Ok(1_795_615_200));
        assert_eq!(parse_time("2026-11-25", 0), Ok(1_795_564_800));
        assert_eq!(
            parse_time("tomorrow", 0).unwrap_err().to_string(),
            "'tomorrow' is not a time: use RFC 3339 (2026-11-25T14:00:00Z), a date (2026-12-31), 'now' or '+2h'"
        );
        assert_eq!(parse_duration("1h30m"), Ok(5400));
        assert_eq!(parse_duration("90d"), Ok(90 * 86_400));
        assert_eq!(
            parse_duration("8").unwrap_err().to_string(),
            "'8' is not a duration: use e.g. 30m, 8h, 90d"
        );
        assert!(parse_duration("0h").is_err());
        assert!(parse_duration("h").is_err());
        assert_eq!(fmt_time(1_795_615_200), "2026-11-25T14:00:00Z");
    }

    #[test]
    fn refuses_overflowing_and_absurd_times() {
        let t = 1_795_615_200;
        for bad in [
            "-9223372036854775807s",
            "+9223372036854775807s",
            "-99999999999999999999s",
            "+999999999d",
            "-106751991167300d",
            "+3700d",
            "1960-01-01T00:00:00Z",
        ] {
            assert!(parse_time(bad, t).is_err(), "{bad} should be refused");
        }
        assert_eq!(
            parse_duration("3700d").unwrap_err().to_string(),
            "'3700d' is too long: at most ten years"
        );
        assert_eq!(
            parse_time("+3700d", t),
            Err(TimeError::TooLong("3700d".into()))
        );
        assert_eq!(
            parse_time("1960-01-01T00:00:00Z", t)
                .unwrap_err()
                .to_string(),
            "'1960-01-01T00:00:00Z' is out of range (1970 to 9999)"
        );
        assert!(parse_duration("999999999d").is_err());
        assert!(parse_duration("9223372036854775807s").is_err());
        assert!(parse_duration("99999999999999999999999s").is_err());
        assert_eq!(parse_duration("3650d"), Ok(3650 * 86_400));
        assert!(parse_time(&format!("-{}s", t + 1), t).is_err());
    }
}
