//! A bounded cache of verified tokens, per worker VM.
//!
//! Keyed by the SHA-256 of the token, so the cache never holds a usable
//! credential. A hit still checks the token's expiry against the clock.

use std::collections::{HashMap, VecDeque};

use sha2::{Digest, Sha256};

use super::Identity;

pub struct TokenCache {
    capacity: usize,
    skew_seconds: u64,
    entries: HashMap<[u8; 32], Identity>,
    /// Insertion order, for evicting the oldest entry when full.
    order: VecDeque<[u8; 32]>,
}

impl TokenCache {
    pub fn new(capacity: usize, skew_seconds: u64) -> Self {
        Self {
            capacity,
            skew_seconds,
            entries: HashMap::with_capacity(capacity.min(1024)),
            order: VecDeque::new(),
        }
    }

    pub fn key(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    /// The identity of a token verified before, unless it has expired since.
    pub fn get(&mut self, key: &[u8; 32], now: u64) -> Option<&Identity> {
        let expired = match self.entries.get(key) {
            None => return None,
            Some(identity) => now > identity.expires_at.saturating_add(self.skew_seconds),
        };
        if expired {
            self.entries.remove(key);
            return None;
        }
        self.entries.get(key)
    }

    pub fn insert(&mut self, key: [u8; 32], identity: Identity) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.insert(key, identity).is_none() {
            self.order.push_back(key);
        }
        while self.entries.len() > self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.entries.remove(&old);
                }
                None => break,
            }
        }
        // Keys of entries removed on expiry linger in `order`; keep it bounded.
        if self.order.len() > self.capacity.saturating_mul(2) {
            self.order.retain(|k| self.entries.contains_key(k));
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets everything (e.g. when the configuration or the keys change).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }
}
