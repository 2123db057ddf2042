//! Stand-ins for the unit tests: Envoy's shared data in memory, and a way
//! to run another VM's step in the middle of one VM's read-then-write.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use proxy_wasm::types::Status;

use crate::host::{HostResult, SharedData};

/// Envoy's shared data (proxy-wasm-cpp-host `SharedData`), in memory: the
/// store every VM of a test shares. CAS tokens come from one counter for
/// all keys, as in Envoy, and 0 is never one.
#[derive(Default)]
pub struct FakeShared {
    values: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    last_cas: Cell<u32>,
    reads: RefCell<Vec<String>>,
}

impl FakeShared {
    /// The keys read since the last call, in order.
    pub fn take_reads(&self) -> Vec<String> {
        self.reads.take()
    }
}

impl SharedData for FakeShared {
    fn get(&self, key: &str) -> HostResult<(Option<Vec<u8>>, Option<u32>)> {
        self.reads.borrow_mut().push(key.to_owned());
        Ok(match self.values.borrow().get(key) {
            Some((value, cas)) => (Some(value.clone()), Some(*cas)),
            None => (None, None),
        })
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> HostResult<()> {
        let mut values = self.values.borrow_mut();
        // A CAS of 0 (or none) is no condition; nor is any for a key never
        // written.
        if let (Some((_, current)), Some(cas)) = (values.get(key), cas.filter(|c| *c != 0)) {
            if cas != *current {
                return Err(Status::CasMismatch);
            }
        }
        let next = self.last_cas.get().wrapping_add(1).max(1);
        self.last_cas.set(next);
        values.insert(key.to_owned(), (value.to_vec(), next));
        Ok(())
    }
}

/// One VM's access to `store` in which `meanwhile` (another VM's step) runs
/// just before each of this VM's writes: what a worker on another thread
/// can do between this VM's read and the write that depends on it.
pub struct Interleaved<'a, F> {
    store: &'a FakeShared,
    meanwhile: RefCell<F>,
}

impl<'a, F: FnMut(&str)> Interleaved<'a, F> {
    /// `meanwhile` gets the key about to be written.
    pub fn new(store: &'a FakeShared, meanwhile: F) -> Self {
        Self {
            store,
            meanwhile: RefCell::new(meanwhile),
        }
    }
}

impl<F: FnMut(&str)> SharedData for Interleaved<'_, F> {
    fn get(&self, key: &str) -> HostResult<(Option<Vec<u8>>, Option<u32>)> {
        self.store.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> HostResult<()> {
        (self.meanwhile.borrow_mut())(key);
        self.store.set(key, value, cas)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The rules of Envoy's store the protocols rely on (and the fake keeps).
    #[test]
    fn the_fake_keeps_envoys_cas_rules() {
        let store = FakeShared::default();
        assert_eq!(store.get("k").unwrap(), (None, None), "never written");
        // A key never written takes any CAS.
        store.set("k", b"a", Some(77)).unwrap();
        let (value, cas) = store.get("k").unwrap();
        assert_eq!(value.as_deref(), Some(&b"a"[..]));
        let cas = cas.unwrap();
        assert_ne!(cas, 0);
        // A stale CAS fails and changes nothing; the current one succeeds
        // and gives a new token.
        assert_eq!(
            store.set("k", b"b", Some(cas + 1)),
            Err(Status::CasMismatch)
        );
        assert_eq!(store.get("k").unwrap().0.as_deref(), Some(&b"a"[..]));
        store.set("k", b"b", Some(cas)).unwrap();
        let (_, after) = store.get("k").unwrap();
        assert_ne!(after, Some(cas));
        assert_eq!(store.set("k", b"c", Some(cas)), Err(Status::CasMismatch));
        // No CAS (or 0) always succeeds, and still changes the token.
        store.set("k", b"c", None).unwrap();
        store.set("k", b"d", Some(0)).unwrap();
        let (value, last) = store.get("k").unwrap();
        assert_eq!(value.as_deref(), Some(&b"d"[..]));
        assert_ne!(last, after);
        // One counter for all keys: a token never repeats across keys.
        store.set("other", b"x", None).unwrap();
        assert_ne!(store.get("other").unwrap().1, last);
    }

    #[test]
    fn another_vm_acts_between_a_read_and_the_write() {
        let store = FakeShared::default();
        store.set("k", b"old", None).unwrap();
        let vm = Interleaved::new(&store, |_| store.set("k", b"theirs", None).unwrap());
        let (_, cas) = vm.get("k").unwrap();
        assert_eq!(vm.set("k", b"mine", cas), Err(Status::CasMismatch));
        assert_eq!(store.get("k").unwrap().0.as_deref(), Some(&b"theirs"[..]));
    }
}
