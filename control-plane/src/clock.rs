//! The time as the server sees it: a [`Clock`], carried in the server's
//! settings and read wherever a rule depends on time (approvals' expiry and
//! the long-poll's timeout, people's tokens, the issuers' cached keys, the
//! policy checks' rate, the dev issuer's tokens and codes), so each rule is
//! tested at times of the test's choosing instead of racing the real clock.
//! `warden serve` runs on the system's clock; a test that builds the server
//! in-process hands it a [`ManualClock`] and moves that. Also how a stored
//! time is written in answers. A leaf.
//!
//! Waiting is not a rule: the long-poll's pause between two looks at the
//! database, retries' backoff and I/O timeouts use tokio's timers, since
//! real time passes while a request waits whatever the clock says.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where the server reads the time: the system's clock, or a
/// [`ManualClock`]'s. Cheap to clone; clones read the same time.
#[derive(Clone, Debug, Default)]
pub struct Clock(Source);

#[derive(Clone, Debug, Default)]
enum Source {
    #[default]
    System,
    Manual(Arc<Mutex<Reading>>),
}

/// A manual clock's time, both ways of telling it, moved together.
#[derive(Clone, Copy, Debug)]
struct Reading {
    unix_ms: i64,
    instant: Instant,
}

impl Clock {
    /// The system's clock: what `warden serve` runs on.
    pub fn system() -> Self {
        Clock(Source::System)
    }

    /// Milliseconds since the Unix epoch, as the store keeps times (0 if
    /// the system clock is before it).
    pub fn now_ms(&self) -> i64 {
        match &self.0 {
            Source::System => {
                let since_epoch = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
            }
            Source::Manual(reading) => read(reading).unix_ms,
        }
    }

    /// Seconds since the Unix epoch, as tokens count time: [`Clock::now_ms`]
    /// in whole seconds.
    pub fn now_s(&self) -> u64 {
        u64::try_from(self.now_ms() / 1000).unwrap_or(0)
    }

    /// Monotonic time, for how long something has lasted (a wait, cached
    /// keys' age, a rate's refill): it never steps back when someone sets
    /// the system's clock.
    pub fn instant(&self) -> Instant {
        match &self.0 {
            Source::System => Instant::now(),
            Source::Manual(reading) => read(reading).instant,
        }
    }
}

// Nothing panics while holding the lock, so a poisoned one still holds a
// whole reading.
fn read(reading: &Mutex<Reading>) -> Reading {
    *reading.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A clock that stands still until it is moved: for tests, which give its
/// [`ManualClock::clock`] to a server they build in-process
/// (`ServerConfig::clock`) and then move time forward instead of sleeping.
/// `warden serve` never makes one; no request or flag reaches it.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<Mutex<Reading>>);

impl ManualClock {
    /// A clock standing at `unix_ms` milliseconds since the Unix epoch.
    pub fn at(unix_ms: i64) -> Self {
        ManualClock(Arc::new(Mutex::new(Reading {
            unix_ms,
            instant: Instant::now(),
        })))
    }

    /// The [`Clock`] that reads this one's time.
    pub fn clock(&self) -> Clock {
        Clock(Source::Manual(self.0.clone()))
    }

    /// Moves the time forward by `by` (a step past what the clock can tell
    /// leaves it where it is).
    pub fn advance(&self, by: Duration) {
        let mut reading = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let unix_ms = i64::try_from(by.as_millis())
            .ok()
            .and_then(|ms| reading.unix_ms.checked_add(ms));
        if let (Some(unix_ms), Some(instant)) = (unix_ms, reading.instant.checked_add(by)) {
            *reading = Reading { unix_ms, instant };
        }
    }

    /// Milliseconds since the Unix epoch, as the server reads them.
    pub fn now_ms(&self) -> i64 {
        read(&self.0).unix_ms
    }
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
    fn a_manual_clock_moves_only_when_moved_and_every_reading_with_it() {
        let time = ManualClock::at(1_709_210_096_789);
        let clock = time.clock();
        let copy = clock.clone();
        let started = clock.instant();
        assert_eq!(clock.now_ms(), 1_709_210_096_789);
        assert_eq!(clock.now_s(), 1_709_210_096);
        assert_eq!(clock.instant(), started);

        time.advance(Duration::from_millis(211));
        assert_eq!(copy.now_ms(), 1_709_210_097_000);
        assert_eq!(copy.now_s(), 1_709_210_097);
        assert_eq!(time.now_ms(), 1_709_210_097_000);
        assert_eq!(copy.instant() - started, Duration::from_millis(211));

        // Too far to tell: it stays.
        time.advance(Duration::MAX);
        assert_eq!(clock.now_ms(), 1_709_210_097_000);
        assert_eq!(clock.instant() - started, Duration::from_millis(211));
    }

    #[test]
    fn seconds_are_the_milliseconds_whole() {
        assert_eq!(ManualClock::at(999).clock().now_s(), 0);
        assert_eq!(ManualClock::at(-1).clock().now_s(), 0);
        let system = Clock::system();
        assert!(system.now_ms() > 1_700_000_000_000);
    }
}
