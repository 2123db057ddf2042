//! Recorded sessions on their way to the control plane.
//!
//! Each worker VM keeps its own queue (proxy-wasm shared queues cannot be
//! bounded by size, and a VM's requests and root context share its memory
//! anyway): requests append a serialized record at `on_log`, never waiting;
//! the root context sends them in batches on its tick. The queue is bounded
//! in records and bytes; what does not fit is dropped and counted
//! (`wasmcustom.warden.audit.dropped`), so a slow or absent control plane
//! costs requests nothing.

use std::collections::VecDeque;

const MAX_RECORDS: usize = 5000;
const MAX_BYTES: usize = 8 * 1024 * 1024;
const BATCH_RECORDS: usize = 200;
const BATCH_BYTES: usize = 1024 * 1024;

#[derive(Default)]
pub struct Queue {
    records: VecDeque<Vec<u8>>,
    bytes: usize,
}

impl Queue {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn has_room_for(&self, record: &[u8]) -> bool {
        self.records.len() < MAX_RECORDS && self.bytes + record.len() <= MAX_BYTES
    }

    /// Appends a record; false (dropped) when the queue is full.
    pub fn push(&mut self, record: Vec<u8>) -> bool {
        if !self.has_room_for(&record) {
            return false;
        }
        self.bytes += record.len();
        self.records.push_back(record);
        true
    }

    /// The oldest records, up to a batch's size.
    pub fn take_batch(&mut self) -> Vec<Vec<u8>> {
        let mut batch = Vec::new();
        let mut size = 0;
        while let Some(next) = self.records.front() {
            if batch.len() >= BATCH_RECORDS || (size > 0 && size + next.len() > BATCH_BYTES) {
                break;
            }
            let Some(record) = self.records.pop_front() else {
                break;
            };
            size += record.len();
            self.bytes -= record.len();
            batch.push(record);
        }
        batch
    }

    /// Puts a failed batch back at the front, oldest first; returns how many
    /// records did not fit (dropped).
    pub fn requeue(&mut self, batch: Vec<Vec<u8>>) -> u64 {
        let mut dropped = 0;
        for record in batch.into_iter().rev() {
            if !self.has_room_for(&record) {
                dropped += 1;
                continue;
            }
            self.bytes += record.len();
            self.records.push_front(record);
        }
        dropped
    }
}
