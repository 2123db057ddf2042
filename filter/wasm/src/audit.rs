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

    /// Puts a failed batch back at the front, in its order; returns how many
    /// records did not fit (the batch's oldest are dropped first).
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn records_leave_in_order_in_bounded_batches() {
        let mut q = Queue::default();
        for i in 0..450u32 {
            assert!(q.push(i.to_be_bytes().to_vec()));
        }
        let first = q.take_batch();
        assert_eq!(first.len(), BATCH_RECORDS);
        assert_eq!(first[0], 0u32.to_be_bytes());
        assert_eq!(q.take_batch()[0], 200u32.to_be_bytes());
        assert_eq!(q.take_batch().len(), 50);
        assert!(q.is_empty() && q.take_batch().is_empty());
        // Bytes bound a batch too, but a record larger than a batch still leaves.
        q.push(vec![0; BATCH_BYTES - 10]);
        q.push(vec![1; 20]);
        assert_eq!(q.take_batch().len(), 1);
        q.push(vec![2; BATCH_BYTES + 1]);
        assert_eq!(q.take_batch().len(), 1, "the 20 bytes");
        assert_eq!(q.take_batch()[0].len(), BATCH_BYTES + 1);
    }

    #[test]
    fn a_full_queue_drops_and_a_failed_batch_goes_back_first() {
        let mut q = Queue::default();
        for _ in 0..MAX_RECORDS {
            assert!(q.push(vec![7]));
        }
        assert!(!q.push(vec![8]), "full by count");
        let batch = q.take_batch();
        q.push(vec![9]);
        // Back at the front in order; when there is room for only 199 of
        // the 205, the 6 oldest are dropped and counted.
        let mut more = batch.clone();
        more.extend(vec![vec![6]; 5]);
        assert_eq!(q.requeue(more), 6);
        assert_eq!(q.records.len(), MAX_RECORDS);
        assert_eq!(q.take_batch()[0], vec![7]);
        let mut q = Queue::default();
        assert!(q.push(vec![0; MAX_BYTES]));
        assert!(!q.push(vec![0]), "full by bytes");
    }
}
