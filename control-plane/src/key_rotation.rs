//! The SAML issuer's signing keys: kept in the database in generations
//! (`issuer_keys`), so every replica signs with and publishes the same
//! keys, and rotated without a failed request ([`crate::issuer::KeyRing`]:
//! a new generation is published an hour before it signs, the one it
//! replaces stays published while its tokens live).
//!
//! - At start ([`load_ring`]) and then every [`CHECK_EVERY`] ([`keep_current`])
//!   a replica reads the newest generations, so it follows another
//!   replica's rotation, and adds a generation when there is none or the
//!   newest is [`crate::issuer::ROTATE_AFTER_MS`] old. Two replicas racing
//!   to add one: the database keeps the first (primary key), the other
//!   reads it.
//! - An admin can rotate at once (`POST /v1/issuer/keys/rotate`, [`rotate_now`]),
//!   for example when a key may have leaked: the new generation signs after
//!   the same hour, and the leaked one leaves the JWKS an hour after that
//!   (when the tokens it signed have expired): about two hours, and no
//!   request fails.
//! - A replica whose reads keep failing keeps the keys it has and logs it;
//!   a token naming a key it does not know makes it read them again at
//!   once ([`OwnIssuerKeys`], at most every few seconds).
//!
//! **The private keys are stored in clear** in `issuer_keys`: whoever can
//! read that table (a backup, a read replica) can sign tokens every gateway
//! accepts. Treat the database and its backups as secrets; encrypting the
//! rows with a key held outside the database is not built yet. Never logged.

use std::sync::Arc;
use std::time::Duration;

use std::time::Instant;

use warden_engine::auth::jwks::KeySet;

use crate::clock::Clock;
use crate::issuer::{Generation, Issuer, KeyPems, KeyRing, Keys, LOADED_GENERATIONS};
use crate::store::{IssuerKeyRow, Store};
use crate::user_auth::{LocalIssuer, MIN_REFETCH};

/// The SAML issuer's name in `issuer_keys`.
pub const SAML_ISSUER: &str = "saml";

/// How often a replica reads the generations (and rotates when due).
pub const CHECK_EVERY: Duration = Duration::from_secs(60);

/// The issuer's ring from the database, after adding a generation when
/// there is none, the newest is due for rotation at `now_ms`, or `force`.
pub async fn load_ring(
    store: &Store,
    issuer: &str,
    now_ms: i64,
    force: bool,
) -> Result<KeyRing, String> {
    let limit = i64::try_from(LOADED_GENERATIONS).unwrap_or(i64::MAX);
    let mut rows = store
        .issuer_keys(issuer, limit)
        .await
        .map_err(|e| format!("cannot read the issuer's keys: {e}"))?;
    let due = match rows.first() {
        None => true,
        Some(newest) => {
            force
                || newest
                    .created_ms
                    .saturating_add(crate::issuer::ROTATE_AFTER_MS)
                    <= now_ms
        }
    };
    if due {
        let generation = rows.first().map_or(1, |newest| newest.generation + 1);
        let pems = tokio::task::spawn_blocking(|| Keys::generate().map(|(_, pems)| pems))
            .await
            .map_err(|e| format!("cannot generate keys: {e}"))?
            .map_err(|e| format!("cannot generate keys: {e}"))?;
        let added = store
            .add_issuer_keys(
                issuer,
                IssuerKeyRow {
                    generation,
                    rs256_pem: pems.rs256,
                    es256_pem: pems.es256,
                    ed25519_pem: pems.ed25519,
                    created_ms: now_ms,
                },
            )
            .await
            .map_err(|e| format!("cannot store the issuer's new keys: {e}"))?;
        if added {
            tracing::info!(
                issuer,
                generation,
                "issuer keys: a new generation is published; it signs in an hour"
            );
        }
        rows = store
            .issuer_keys(issuer, limit)
            .await
            .map_err(|e| format!("cannot read the issuer's keys: {e}"))?;
    }
    ring_of(rows, now_ms)
}

/// The ring of stored generations.
fn ring_of(rows: Vec<IssuerKeyRow>, now_ms: i64) -> Result<KeyRing, String> {
    let mut generations = Vec::with_capacity(rows.len());
    for row in rows {
        let keys = Keys::from_pems(&KeyPems {
            rs256: row.rs256_pem,
            es256: row.es256_pem,
            ed25519: row.ed25519_pem,
        })
        .map_err(|e| format!("generation {} of the issuer's keys: {e}", row.generation))?;
        generations.push(Generation {
            number: row.generation,
            created_ms: row.created_ms,
            keys,
        });
    }
    KeyRing::new(generations, now_ms)
}

/// Reads the generations again (rotating when due) and gives them to `issuer`.
pub async fn refresh(store: &Store, issuer: &Issuer, clock: &Clock) -> Result<(), String> {
    let ring = load_ring(store, SAML_ISSUER, clock.now_ms(), false).await?;
    issuer.set_ring(ring);
    Ok(())
}

/// Adds a generation now, whatever the newest one's age, and gives the
/// ring to `issuer`. Returns the new generation's number.
pub async fn rotate_now(store: &Store, issuer: &Issuer, clock: &Clock) -> Result<i64, String> {
    let ring = load_ring(store, SAML_ISSUER, clock.now_ms(), true).await?;
    let newest = ring.newest().number;
    issuer.set_ring(ring);
    Ok(newest)
}

/// Keeps `issuer`'s keys current until the task is dropped: every
/// [`CHECK_EVERY`], [`refresh`]. A failure keeps the keys it has (they stay
/// valid) and is logged.
pub async fn keep_current(store: Store, issuer: Arc<Issuer>, clock: Clock) {
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        if let Err(error) = refresh(&store, &issuer, &clock).await {
            tracing::warn!(
                error,
                "issuer keys: cannot refresh; the current keys stay in use"
            );
        }
    }
}

/// One of the control plane's own issuers as people's tokens are checked
/// against it ([`LocalIssuer`]): the dev issuer's keys never change; the
/// SAML issuer's are read again from the database when a token names a key
/// this replica does not know yet.
pub struct OwnIssuerKeys {
    issuer: Arc<Issuer>,
    /// Where the SAML issuer's generations are read (none: the dev issuer).
    source: Option<(Store, Clock)>,
    last_reload: std::sync::Mutex<Option<Instant>>,
}

impl OwnIssuerKeys {
    /// The dev issuer's fixed keys.
    pub fn fixed(issuer: Arc<Issuer>) -> Self {
        OwnIssuerKeys {
            issuer,
            source: None,
            last_reload: std::sync::Mutex::new(None),
        }
    }

    /// The SAML issuer's keys, read again from `store` when needed.
    pub fn stored(issuer: Arc<Issuer>, store: Store, clock: Clock) -> Self {
        OwnIssuerKeys {
            issuer,
            source: Some((store, clock)),
            last_reload: std::sync::Mutex::new(None),
        }
    }
}

impl LocalIssuer for OwnIssuerKeys {
    fn keys(&self) -> Arc<KeySet> {
        self.issuer.key_set()
    }

    fn reload(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
        Box::pin(async move {
            let Some((store, clock)) = &self.source else {
                return false;
            };
            {
                let mut last = self
                    .last_reload
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let now = clock.instant();
                if last.is_some_and(|at| now.saturating_duration_since(at) < MIN_REFETCH) {
                    return false;
                }
                *last = Some(now);
            }
            match refresh(store, &self.issuer, clock).await {
                Ok(()) => true,
                Err(error) => {
                    tracing::warn!(error, "issuer keys: cannot read them again");
                    false
                }
            }
        })
    }
}
