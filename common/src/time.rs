//! Timestamps: Unix milliseconds inside, ISO-8601 UTC with milliseconds on
//! the wire (CONTRACT §8.5).

use time::format_description::well_known::Iso8601;
use time::OffsetDateTime;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// `2026-01-01T00:00:00.000Z`.
pub fn iso8601(ms: i64) -> String {
    let dt =
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.millisecond()
    )
}

/// Parses an ISO-8601 timestamp back to milliseconds.
pub fn parse_iso8601(s: &str) -> Option<i64> {
    let dt = OffsetDateTime::parse(s, &Iso8601::DEFAULT).ok()?;
    Some((dt.unix_timestamp_nanos() / 1_000_000) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_millis_and_z() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_767_225_600_123), "2026-01-01T00:00:00.123Z");
        assert_eq!(parse_iso8601("2026-01-01T00:00:00.123Z"), Some(1_767_225_600_123));
    }
}
