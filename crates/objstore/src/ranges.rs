//! Read-ahead for ranges of immutable objects: a miss fetches a window from the requested
//! offset and starts fetching the next one, so that a reader going through a pack (a
//! restore, an ingest reading delta bases) finds it ready; readers of a window being
//! fetched wait for it instead of asking again. Within a byte budget, least recently used
//! windows go first (one being fetched is never dropped).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;

/// Windows fetched ahead of a miss. (Two ahead measured no faster on the pgtext restore
/// against a Garage on the same 2 cores: the readers wait for the store's CPU, not for
/// round trips.)
pub(crate) const AHEAD: usize = 1;

/// One window of one object: its bytes once they are here.
pub(crate) struct Slot {
    key: String,
    start: u64,
    len: u64,
    data: Mutex<Option<Result<Bytes, String>>>,
    ready: Condvar,
}

impl Slot {
    fn covers(&self, key: &str, off: u64, len: u64) -> bool {
        self.key == key && self.start <= off && off + len <= self.start + self.len
    }

    pub(crate) fn range(&self) -> (u64, u64) {
        (self.start, self.start + self.len)
    }

    /// The fetch's outcome: bytes, or why not (the slot is then forgotten by its owner).
    pub(crate) fn fill(&self, r: Result<Bytes, String>) {
        *self.data.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        self.ready.notify_all();
    }

    /// `len` bytes at `off` (inside this slot), once fetched.
    pub(crate) fn wait(&self, off: u64, len: usize) -> Result<Vec<u8>, String> {
        let mut d = self.data.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match &*d {
                Some(Ok(b)) => {
                    let from = (off - self.start) as usize;
                    return b
                        .get(from..from + len)
                        .map(<[u8]>::to_vec)
                        .ok_or_else(|| format!("the store sent {} bytes", b.len()));
                }
                Some(Err(e)) => return Err(e.clone()),
                None => d = self.ready.wait(d).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }

    fn is_filled(&self) -> bool {
        self.data
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

pub(crate) struct Ranges {
    budget: u64,
    slots: Mutex<VecDeque<Arc<Slot>>>,
}

/// What a reader must do: read from a slot (perhaps still being fetched), or fetch these
/// new slots (the first covers the request) and then read.
pub(crate) enum Plan {
    Wait(Arc<Slot>),
    Fetch(Vec<Arc<Slot>>),
}

impl Ranges {
    pub(crate) fn new(budget: u64) -> Ranges {
        Ranges {
            budget,
            slots: Mutex::new(VecDeque::new()),
        }
    }

    /// For `len` bytes at `off` of `key` (an object of `size` bytes): an existing slot
    /// covering them, or new slots `[from, from + window)` and the next window, where
    /// `from` is `off` rounded down to a multiple of `window` (or the object's tail when the
    /// read ends at its end), registered
    /// at once so that no other reader fetches them again.
    pub(crate) fn plan(
        &self,
        key: &str,
        off: u64,
        len: u64,
        size: u64,
        window: u64,
        tail: u64,
    ) -> Plan {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = slots.iter().position(|s| s.covers(key, off, len)) {
            if let Some(s) = slots.remove(i) {
                slots.push_front(s.clone());
                return Plan::Wait(s);
            }
        }
        // Windows are aligned, so that readers starting anywhere in one share it. A read
        // that begins in a window we hold but runs past its end (a blob across a boundary)
        // gets a window from its own offset (to the next boundary, or just itself when the
        // next window is held): fetching the held window again from its start would read
        // it twice.
        let end = off + len;
        let (start, stop) = if end == size {
            (off.min(size.saturating_sub(tail)), size)
        } else if slots.iter().any(|s| s.covers(key, off, 1)) {
            // Just the blob when the window after it is held too, else up to the boundary.
            let next_held = slots.iter().any(|s| s.covers(key, end, 1));
            let stop = if next_held {
                end
            } else {
                end.div_ceil(window).saturating_mul(window).min(size)
            };
            (off, stop)
        } else {
            let start = off - off % window;
            (start, end.max(start + window).min(size))
        };
        let mut new = vec![new_slot(key, start, stop)];
        let mut at = stop;
        for _ in 0..AHEAD {
            if at >= size || slots.iter().any(|s| s.covers(key, at, 1)) {
                break;
            }
            let next = (at + window).min(size);
            new.push(new_slot(key, at, next));
            at = next;
        }
        for s in new.iter().rev() {
            slots.push_front(s.clone());
        }
        let mut used: u64 = slots.iter().map(|s| s.len).sum();
        while used > self.budget {
            // The least recently used slot that is not being fetched.
            let Some(i) = slots.iter().rposition(|s| s.is_filled()) else {
                break;
            };
            if let Some(s) = slots.remove(i) {
                used -= s.len;
            }
        }
        Plan::Fetch(new)
    }

    /// Read from `slot`.
    pub(crate) fn read(&self, slot: &Slot, off: u64, len: usize) -> Result<Vec<u8>, String> {
        slot.wait(off, len)
    }

    /// Forget a slot (its fetch failed) or every slot of `key` (removed).
    pub(crate) fn forget(&self, key: &str, only: Option<&Arc<Slot>>) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|s| match only {
            Some(o) => !Arc::ptr_eq(s, o),
            None => s.key != key,
        });
    }

    #[cfg(test)]
    pub(crate) fn used(&self) -> u64 {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.iter().map(|s| s.len).sum()
    }
}

fn new_slot(key: &str, start: u64, stop: u64) -> Arc<Slot> {
    Arc::new(Slot {
        key: key.to_string(),
        start,
        len: stop - start,
        data: Mutex::new(None),
        ready: Condvar::new(),
    })
}
