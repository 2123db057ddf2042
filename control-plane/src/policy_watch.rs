//! Gateways watching the active policy: `GET /v1/policy/active` with
//! `Prefer: wait=N` (RFC 7240) and the ETag they hold is answered when the
//! active version changes, or with 304 after N seconds, so a published
//! policy is live in every gateway as soon as it is activated, with fewer
//! requests than polling every few seconds.
//!
//! [`PolicyWatch`] is what wakes the waiting requests: a counter bumped when
//! a version is activated on this replica, and, with PostgreSQL, on any
//! replica ([`listen_postgres`]: the activating transaction sends
//! `NOTIFY` on [`NOTIFY_CHANNEL`], delivered on commit). A woken request
//! reads the active version again; nothing trusts the notification's payload.
//! At shutdown every waiting request is answered at once (304), so a
//! graceful stop does not wait for the watches to run out.

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use tokio::sync::watch;
use tokio::time::Instant;

/// The PostgreSQL channel on which an activation is announced.
pub const NOTIFY_CHANNEL: &str = "warden_policy_active";

/// Longest wait a gateway may ask for; a longer one is cut to this (and the
/// answer's `Preference-Applied` says what was applied).
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// Wakes the requests waiting for another active version.
#[derive(Debug)]
pub struct PolicyWatch {
    changes: watch::Sender<u64>,
    closing: watch::Sender<bool>,
}

impl Default for PolicyWatch {
    fn default() -> Self {
        Self {
            changes: watch::Sender::new(0),
            closing: watch::Sender::new(false),
        }
    }
}

impl PolicyWatch {
    /// The active version may have changed: every waiting request looks.
    pub fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Answers every waiting request now, and every later one without waiting.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// How many requests wait (or are about to) right now.
    pub fn watchers(&self) -> usize {
        self.changes.receiver_count()
    }

    /// Subscribes before the active version is read, so that a change
    /// between the read and the wait is not missed.
    pub fn subscribe(&self) -> Watcher {
        let mut changes = self.changes.subscribe();
        changes.mark_unchanged();
        Watcher {
            changes,
            closing: self.closing.subscribe(),
        }
    }
}

/// One request's subscription.
pub struct Watcher {
    changes: watch::Receiver<u64>,
    closing: watch::Receiver<bool>,
}

impl Watcher {
    /// Waits for a change until `deadline`: `true` if the active version may
    /// have changed, `false` at the deadline or at shutdown.
    pub async fn next_change(&mut self, deadline: Instant) -> bool {
        if *self.closing.borrow() {
            return false;
        }
        tokio::select! {
            changed = self.changes.changed() => changed.is_ok(),
            _ = self.closing.changed() => false,
            () = tokio::time::sleep_until(deadline) => false,
        }
    }
}

/// The wait a request asks for: `Prefer: wait=N` (seconds; several
/// preferences may share the header, or come in several), cut to
/// [`MAX_WAIT`]. `None`: no wait asked (or an unreadable one), answer at once.
pub fn requested_wait(headers: &axum::http::HeaderMap) -> Option<Duration> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|preference| {
            let (name, value) = preference.split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("wait") {
                return None;
            }
            value.trim().trim_matches('"').parse::<u64>().ok()
        })
        .find(|seconds| *seconds > 0)
        .map(|seconds| Duration::from_secs(seconds).min(MAX_WAIT))
}

/// Wakes this replica's watchers when any replica activates a version
/// (PostgreSQL's LISTEN). Runs until the process ends. A lost connection is
/// reconnected by sqlx; notifications sent meanwhile are lost, so every
/// watcher looks again after a reconnection.
pub async fn listen_postgres(pool: PgPool, watch: std::sync::Arc<PolicyWatch>) {
    const RETRY: Duration = Duration::from_secs(2);
    // A connection of its own, outside the store's pool: a listener keeps
    // its connection for good, which would take one of the store's.
    let own = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with((*pool.connect_options()).clone());
    loop {
        let mut listener = match PgListener::connect_with(&own).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for policy activations; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        if let Err(error) = listener.listen(NOTIFY_CHANNEL).await {
            tracing::warn!(%error, "cannot listen for policy activations; retrying");
            tokio::time::sleep(RETRY).await;
            continue;
        }
        // Anything activated before the LISTEN took effect: look again.
        watch.changed();
        loop {
            match listener.try_recv().await {
                Ok(Some(_)) => watch.changed(),
                // The connection was lost and is being re-established.
                Ok(None) => watch.changed(),
                Err(error) => {
                    tracing::warn!(%error, "lost the policy activation listener; reconnecting");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    fn prefer(values: &[&str]) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("prefer", HeaderValue::from_str(v).unwrap());
        }
        requested_wait(&headers)
    }

    #[test]
    fn the_wait_is_read_from_any_prefer_header_and_bounded() {
        assert_eq!(prefer(&[]), None);
        assert_eq!(prefer(&["wait=25"]), Some(Duration::from_secs(25)));
        assert_eq!(
            prefer(&["respond-async, Wait = 10"]),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            prefer(&["return=minimal", "wait=\"7\""]),
            Some(Duration::from_secs(7))
        );
        assert_eq!(prefer(&["wait=86400"]), Some(MAX_WAIT));
        for unreadable in ["wait=0", "wait=-1", "wait=soon", "waiting=5"] {
            assert_eq!(prefer(&[unreadable]), None, "{unreadable}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_watcher_wakes_on_a_change_and_not_before_its_deadline() {
        let watch = PolicyWatch::default();
        let mut watcher = watch.subscribe();
        let deadline = Instant::now() + Duration::from_secs(25);
        // Nothing changes: the deadline ends the wait (paused time advances).
        assert!(!watcher.next_change(deadline).await);
        assert!(Instant::now() >= deadline);

        // A change made after subscribing, before waiting, is not missed.
        let mut watcher = watch.subscribe();
        watch.changed();
        assert!(
            watcher
                .next_change(Instant::now() + Duration::from_secs(25))
                .await
        );
    }

    #[tokio::test(start_paused = true)]
    async fn closing_answers_every_watcher_at_once() {
        let watch = std::sync::Arc::new(PolicyWatch::default());
        let mut watcher = watch.subscribe();
        let started = Instant::now();
        let closer = {
            let watch = watch.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                watch.close();
            })
        };
        assert!(!watcher.next_change(started + Duration::from_secs(60)).await);
        assert!(Instant::now() < started + Duration::from_secs(60));
        closer.await.unwrap();
        // And a watch that starts after the close does not wait at all.
        let mut late = watch.subscribe();
        assert!(
            !late
                .next_change(Instant::now() + Duration::from_secs(60))
                .await
        );
    }
}
