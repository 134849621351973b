//! Wall-clock time as the agent stores it (Unix microseconds) and shows it (RFC 3339, UTC).
//!
//! A simulation that runs nodes on a paused tokio clock replaces the source once, before any
//! node starts ([`set_source`]), so that the timestamps nodes write follow simulated time and a
//! seed gives the same run twice. The daemon never does.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// Unix microseconds from somewhere else than the system clock (see [`set_source`]).
static SOURCE: OnceLock<fn() -> i64> = OnceLock::new();

/// Makes `source` this process's wall clock, in Unix microseconds. Only the first call takes
/// effect; it returns whether this one did.
pub fn set_source(source: fn() -> i64) -> bool {
    SOURCE.set(source).is_ok()
}

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Now, in Unix microseconds.
pub fn now_us() -> i64 {
    if let Some(source) = SOURCE.get() {
        return source();
    }
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    (now_us() / 1_000).max(0) as u64
}

/// `2026-11-23T09:41:07.123456Z`.
pub fn rfc3339(unix_us: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_us) * 1_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix_us.to_string())
}

/// Parses an RFC 3339 time (with offset) into Unix microseconds.
pub fn parse_rfc3339(text: &str) -> Result<i64, time::error::Parse> {
    let t = OffsetDateTime::parse(text, &Rfc3339)?;
    Ok((t.unix_timestamp_nanos() / 1_000) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let us = 1_795_000_000_123_456;
        let text = rfc3339(us);
        assert_eq!(text, "2026-11-18T11:06:40.123456Z");
        assert_eq!(parse_rfc3339(&text).unwrap(), us);
        assert_eq!(
            parse_rfc3339("2026-11-18T12:06:40.123456+01:00").unwrap(),
            us
        );
        assert!(parse_rfc3339("yesterday").is_err());
    }
}
