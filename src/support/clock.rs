//! Wall-clock time as the broker writes it: unix seconds, RFC 3339 timestamps and days, with the
//! `time` crate's calendar.

use std::time::{SystemTime, UNIX_EPOCH};
use time::OffsetDateTime;

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The calendar time of unix seconds; past year 9999 (which `time` does not go to), its last
/// second.
fn at(secs: u64) -> OffsetDateTime {
    i64::try_from(secs)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or_else(|| OffsetDateTime::new_utc(time::Date::MAX, time::Time::from_hms(23, 59, 59).expect("a time")))
}

/// `2026-11-22T22:13:06.123Z` from unix seconds and milliseconds.
pub fn rfc3339(secs: u64, millis: u32) -> String {
    let t = at(secs);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        millis.min(999)
    )
}

/// `2026-11-22` from unix seconds.
pub fn date(secs: u64) -> String {
    let t = at(secs);
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(1_795_385_586, 999), "2026-11-22T22:13:06.999Z");
        assert_eq!(rfc3339(253_402_300_799, 0), "9999-12-31T23:59:59.000Z");
        assert_eq!(rfc3339(253_402_300_800, 0), "9999-12-31T23:59:59.000Z", "past 9999: its last second");
        assert_eq!(rfc3339(u64::MAX, 1000), "9999-12-31T23:59:59.999Z");
        assert_eq!(date(1_801_353_600), "2027-01-31");
        assert_eq!(date(1_801_353_599), "2027-01-30");
    }
}
