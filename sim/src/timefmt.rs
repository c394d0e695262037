//! Time helpers: wall-clock milliseconds, RFC3339 stamps as the CLI prints them, humanized ages
//! (`2 minutes ago`), Go-style elapsed strings (`1m5s`) and Go duration parsing for `--since`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::Result;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Nanoseconds since the Unix epoch; log lines keep this precision for the kubectl format.
pub fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

fn datetime_from_ns(ns: i128) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(ns).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// `2026-03-18T15:37:38Z`: whole seconds, UTC.
pub fn rfc3339_seconds_ms(ms: i64) -> String {
    rfc3339_seconds_ns(ms as i128 * 1_000_000)
}

/// `2026-03-18T15:37:38Z` from nanoseconds.
pub fn rfc3339_seconds_ns(ns: i128) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    datetime_from_ns(secs * 1_000_000_000)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// `2026-03-18T15:37:38.123456789Z`: full precision, as kubectl prints log timestamps.
pub fn rfc3339_nanos(ns: i128) -> String {
    let dt = datetime_from_ns(ns);
    let base = rfc3339_seconds_ns(ns);
    let stem = base.trim_end_matches('Z');
    format!("{stem}.{:09}Z", dt.nanosecond())
}

/// "now", "1 second ago", "5 minutes ago", "2 days ago" … (relative to `now_ms`).
pub fn humanize_ago(then_ms: i64, now_ms: i64) -> String {
    let secs = ((now_ms - then_ms).max(0) / 1000) as u64;
    const MINUTE: u64 = 60;
    const HOUR: u64 = 60 * MINUTE;
    const DAY: u64 = 24 * HOUR;
    const WEEK: u64 = 7 * DAY;
    const MONTH: u64 = 30 * DAY;
    const YEAR: u64 = 365 * DAY;
    let (count, unit) = match secs {
        0 => return "now".to_string(),
        s if s < MINUTE => (s, "second"),
        s if s < HOUR => (s / MINUTE, "minute"),
        s if s < DAY => (s / HOUR, "hour"),
        s if s < WEEK => (s / DAY, "day"),
        s if s < MONTH => (s / WEEK, "week"),
        s if s < YEAR => (s / MONTH, "month"),
        s => (s / YEAR, "year"),
    };
    let plural = if count == 1 { "" } else { "s" };
    format!("{count} {unit}{plural} ago")
}

/// Go's `time.Duration.String()` truncated to whole seconds: `0s`, `45s`, `1m5s`, `2h0m3s`.
pub fn elapsed(duration: Duration) -> String {
    let total = duration.as_secs();
    let (h, m, s) = (total / 3600, (total % 3600) / 60, total % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// Parses a Go duration (`30s`, `2m`, `1h30m`, `1.5h`, `250ms`).
pub fn parse_go_duration(text: &str) -> Result<Duration> {
    let invalid = || crate::fail!("time: invalid duration \"{text}\"");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(invalid());
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| crate::fail!("time: missing unit in duration \"{text}\""))?;
        if number_len == 0 {
            return Err(invalid());
        }
        let number: f64 = rest[..number_len].parse().map_err(|_| invalid())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => bail_unknown_unit(other, text)?,
        };
        total += number * seconds_per_unit;
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_secs_f64(total))
}

fn bail_unknown_unit(unit: &str, text: &str) -> Result<f64> {
    crate::bail!("time: unknown unit \"{unit}\" in duration \"{text}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_go_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_go_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(
            parse_go_duration("1h30m").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            parse_go_duration("250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            parse_go_duration("1.5h").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(parse_go_duration("0").unwrap(), Duration::ZERO);
    }

    #[test]
    fn bad_durations_are_refused_with_go_messages() {
        assert_eq!(
            parse_go_duration("10").unwrap_err().0,
            "time: missing unit in duration \"10\""
        );
        assert_eq!(
            parse_go_duration("5x").unwrap_err().0,
            "time: unknown unit \"x\" in duration \"5x\""
        );
        assert_eq!(
            parse_go_duration("").unwrap_err().0,
            "time: invalid duration \"\""
        );
    }

    #[test]
    fn ages_are_humanized() {
        assert_eq!(humanize_ago(0, 0), "now");
        assert_eq!(humanize_ago(0, 1_000), "1 second ago");
        assert_eq!(humanize_ago(0, 150_000), "2 minutes ago");
        assert_eq!(humanize_ago(0, 2 * 86_400_000), "2 days ago");
    }

    #[test]
    fn elapsed_looks_like_go() {
        assert_eq!(elapsed(Duration::from_secs(65)), "1m5s");
        assert_eq!(elapsed(Duration::from_secs(7)), "7s");
        assert_eq!(elapsed(Duration::from_secs(3603)), "1h0m3s");
    }

    #[test]
    fn stamps_round_trip() {
        let ns: i128 = 1_773_848_258_123_456_789;
        assert_eq!(rfc3339_seconds_ns(ns), "2026-03-18T15:37:38Z");
        assert_eq!(rfc3339_nanos(ns), "2026-03-18T15:37:38.123456789Z");
        let parsed = OffsetDateTime::parse(&rfc3339_nanos(ns), &Rfc3339).unwrap();
        assert_eq!(parsed.unix_timestamp_nanos(), ns);
    }
}
