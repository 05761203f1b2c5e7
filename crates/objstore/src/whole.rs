//! Whole packs fetched into the local copies ahead of a restore (`Backend::will_read`):
//! a restore reads nearly every byte of the packs it names, so a few large GETs, started
//! in the order the restore will need them, beat many ranged ones. [`WHOLE_AT_ONCE`]
//! packs come at a time; a reader that needs a pack still queued moves it to the front
//! and waits for it (no second request). A fetch that fails only means the reader falls
//! back to ranged reads.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};

use object_store::path::Path as ObjPath;

/// Whole-pack GETs in flight at once.
pub(crate) const WHOLE_AT_ONCE: usize = 3;

pub(crate) struct Job {
    pub(crate) key: String,
    pub(crate) path: ObjPath,
    pub(crate) size: u64,
    done: Mutex<bool>,
    cv: Condvar,
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<Arc<Job>>,
    /// Queued or being fetched.
    jobs: HashMap<String, Arc<Job>>,
    workers: usize,
}

#[derive(Default)]
pub(crate) struct Whole {
    inner: Mutex<Inner>,
}

impl Whole {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue `key` (unless it is queued or being fetched already).
    pub(crate) fn queue(&self, key: &str, path: ObjPath, size: u64) {
        let mut i = self.lock();
        if i.jobs.contains_key(key) {
            return;
        }
        let job = Arc::new(Job {
            key: key.to_string(),
            path,
            size,
            done: Mutex::new(false),
            cv: Condvar::new(),
        });
        i.jobs.insert(key.to_string(), job.clone());
        i.queue.push_back(job);
    }

    /// How many more workers to start (the caller starts them, each running
    /// [`Whole::next`] until it returns None).
    pub(crate) fn workers_wanted(&self) -> usize {
        let mut i = self.lock();
        let want = WHOLE_AT_ONCE.min(i.queue.len()).saturating_sub(i.workers);
        i.workers += want;
        want
    }

    /// The next pack for a worker; None: the worker stops.
    pub(crate) fn next(&self) -> Option<Arc<Job>> {
        let mut i = self.lock();
        let job = i.queue.pop_front();
        if job.is_none() {
            i.workers -= 1;
        }
        job
    }

    /// A worker finished `job` (fetched or failed): its readers go on.
    pub(crate) fn finish(&self, job: &Job) {
        self.lock().jobs.remove(&job.key);
        *job.done.lock().unwrap_or_else(|p| p.into_inner()) = true;
        job.cv.notify_all();
    }

    /// If `key` is queued or being fetched, move it to the front and wait until it is
    /// done; true if there was such a fetch.
    pub(crate) fn wait(&self, key: &str) -> bool {
        let job = {
            let mut i = self.lock();
            let Some(job) = i.jobs.get(key).cloned() else {
                return false;
            };
            if let Some(at) = i.queue.iter().position(|j| j.key == key) {
                if let Some(j) = i.queue.remove(at) {
                    i.queue.push_front(j);
                }
            }
            job
        };
        let mut done = job.done.lock().unwrap_or_else(|p| p.into_inner());
        while !*done {
            done = job.cv.wait(done).unwrap_or_else(|p| p.into_inner());
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_moves_its_pack_to_the_front_and_waits_for_it() {
        let w = Arc::new(Whole::default());
        for k in ["a", "b", "c", "d"] {
            w.queue(k, ObjPath::from(k), 1);
        }
        w.queue("a", ObjPath::from("a"), 1);
        assert_eq!(w.workers_wanted(), WHOLE_AT_ONCE);
        assert_eq!(w.workers_wanted(), 0);
        let first = w.next().unwrap();
        assert_eq!(first.key, "a");
        assert!(!w.wait("nothing"));
        let reader = {
            let w = w.clone();
            std::thread::spawn(move || w.wait("d"))
        };
        // The reader of "d" put it first.
        let mut next = None;
        for _ in 0..1000 {
            if w.lock().queue.front().map(|j| j.key.as_str()) == Some("d") {
                next = w.next();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let next = next.expect("d moved to the front");
        assert_eq!(next.key, "d");
        assert!(!reader.is_finished());
        w.finish(&next);
        assert!(reader.join().unwrap());
        w.finish(&first);
        assert_eq!(w.next().unwrap().key, "b");
        assert_eq!(w.next().unwrap().key, "c");
        for _ in 0..WHOLE_AT_ONCE {
            assert!(w.next().is_none());
        }
        assert_eq!(w.lock().workers, 0);
    }
}
