//! The wall clock, read at the edges only: handlers read it once and pass
//! the time down, so what depends on time is tested with a time of the
//! test's choosing.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (0 if the system clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}
