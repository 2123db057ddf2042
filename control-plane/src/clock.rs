//! The wall clock, read at the edges only: handlers read it once and pass
//! the time down, so what depends on time is tested with a time of the
//! test's choosing. Also how a stored time is written in answers. A leaf.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time since the Unix epoch (zero if the system clock is before it).
fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Seconds since the Unix epoch, as tokens count time (0 if the system
/// clock is before it).
pub fn unix_now() -> u64 {
    since_epoch().as_secs()
}

/// Milliseconds since the Unix epoch, as the store keeps times (0 if the
/// system clock is before it).
pub fn unix_now_ms() -> i64 {
    i64::try_from(since_epoch().as_millis()).unwrap_or(i64::MAX)
}

/// Milliseconds since the epoch, as stored, in RFC 3339 UTC with
/// milliseconds: the engine's [`warden_engine::protocol::rfc3339_millis`]
/// (a time before the epoch is written as the epoch).
pub fn rfc3339(ms: i64) -> String {
    warden_engine::protocol::rfc3339_millis(u64::try_from(ms).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_times_are_written_in_rfc3339_with_milliseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_709_210_096_789), "2024-02-29T12:34:56.789Z");
    }

    #[test]
    fn both_clocks_read_the_same_time() {
        let ms = unix_now_ms();
        let s = unix_now();
        assert!(u64::try_from(ms / 1000).is_ok_and(|ms_s| ms_s.abs_diff(s) <= 1));
    }
}
