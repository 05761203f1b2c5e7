//! Whole packs fetched into the local copies ahead of a restore (`Backend::will_read`):
//! a restore reads nearly every byte of the packs it names, so a few large GETs, started
//! in the order the restore will need them, beat many small ranged ones.
//!
//! A pack comes in pieces of [`PIECE`] bytes, [`WHOLE_AT_ONCE`] pieces in flight, in
//! order: the first pack's first bytes arrive after one piece, not after several packs
//! shared the line. Pieces are written at their offsets into a file of the fetch; a reader
//! waits only for the pieces its range lies in and reads them from that file. A reader
//! of a pack still queued moves it to the front. Once every piece is in, the file becomes
//! the pack's local copy. A piece that fails fails its pack: its readers then read ranges
//! from the bucket as if nothing had been announced.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use object_store::path::Path as ObjPath;

/// Piece GETs in flight at once.
pub(crate) const WHOLE_AT_ONCE: usize = 3;
/// One GET of a pack's fetch.
pub(crate) const PIECE: u64 = 4 << 20;

pub(crate) struct Job {
    pub(crate) key: String,
    pub(crate) path: ObjPath,
    pub(crate) size: u64,
    /// Where the pieces go (an empty staged file, opened by the first piece fetched).
    pub(crate) tmp: PathBuf,
    state: Mutex<State>,
    cv: Condvar,
}

#[derive(Default)]
struct State {
    file: Option<Arc<File>>,
    /// Pieces handed to workers so far (in order).
    handed: usize,
    have: Vec<bool>,
    failed: bool,
}

impl Job {
    fn pieces(&self) -> usize {
        self.size.div_ceil(PIECE).max(1) as usize
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The byte range of piece `i`.
    pub(crate) fn range(&self, i: usize) -> (u64, u64) {
        let start = i as u64 * PIECE;
        (start, (start + PIECE).min(self.size))
    }

    /// The file the pieces go into, opened on first use.
    pub(crate) fn file(&self) -> std::io::Result<Arc<File>> {
        let mut s = self.lock();
        if let Some(f) = &s.file {
            return Ok(f.clone());
        }
        let f = Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.tmp)?,
        );
        s.file = Some(f.clone());
        Ok(f)
    }
}

#[derive(Default)]
struct Inner {
    /// Packs with pieces not handed out yet, in the order they are wanted.
    queue: VecDeque<Arc<Job>>,
    /// Queued or being fetched.
    jobs: HashMap<String, Arc<Job>>,
    workers: usize,
}

#[derive(Default)]
pub(crate) struct Whole {
    inner: Mutex<Inner>,
}

/// What a worker learns from [`Whole::piece_done`].
pub(crate) enum Outcome {
    /// More pieces of the pack to come.
    Partial,
    /// The last piece is in: the file is the pack, whole.
    Complete,
    /// The pack failed (now or before).
    Failed,
}

impl Whole {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue `key` (unless it is queued or being fetched already: false); `tmp`, an
    /// existing empty file, is where its pieces go.
    pub(crate) fn queue(&self, key: &str, path: ObjPath, size: u64, tmp: PathBuf) -> bool {
        let mut i = self.lock();
        if i.jobs.contains_key(key) {
            return false;
        }
        let job = Arc::new(Job {
            key: key.to_string(),
            path,
            size,
            tmp,
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
        });
        job.lock().have = vec![false; job.pieces()];
        i.jobs.insert(key.to_string(), job.clone());
        i.queue.push_back(job);
        true
    }

    /// How many more workers to start (the caller starts them, each running
    /// [`Whole::next`] until it returns None).
    pub(crate) fn workers_wanted(&self) -> usize {
        let mut i = self.lock();
        let want = WHOLE_AT_ONCE.saturating_sub(i.workers);
        let want = if i.queue.is_empty() { 0 } else { want };
        i.workers += want;
        want
    }

    /// The next piece for a worker: the first pack's next piece; None: the worker stops.
    pub(crate) fn next(&self) -> Option<(Arc<Job>, usize)> {
        let mut i = self.lock();
        while let Some(job) = i.queue.front().cloned() {
            let mut s = job.lock();
            if s.failed || s.handed >= s.have.len() {
                drop(s);
                i.queue.pop_front();
                continue;
            }
            let piece = s.handed;
            s.handed += 1;
            drop(s);
            return Some((job, piece));
        }
        i.workers -= 1;
        None
    }

    /// A worker fetched piece `i` of `job` (or failed to: `ok` false).
    pub(crate) fn piece_done(&self, job: &Job, i: usize, ok: bool) -> Outcome {
        let mut s = job.lock();
        if !ok {
            s.failed = true;
        } else if let Some(h) = s.have.get_mut(i) {
            *h = true;
        }
        let outcome = if s.failed {
            Outcome::Failed
        } else if s.have.iter().all(|h| *h) {
            Outcome::Complete
        } else {
            Outcome::Partial
        };
        drop(s);
        job.cv.notify_all();
        outcome
    }

    /// The pack is a local copy now, or failed: new readers go elsewhere (a fetch of the
    /// same pack queued since stays).
    pub(crate) fn forget(&self, job: &Arc<Job>) {
        let mut i = self.lock();
        if i.jobs.get(&job.key).is_some_and(|j| Arc::ptr_eq(j, job)) {
            i.jobs.remove(&job.key);
        }
    }

    /// If `key` is being fetched, move it to the front, wait until the pieces that hold
    /// `offset..offset + len` are in and read them. None: no such fetch, or it failed.
    pub(crate) fn read_at(&self, key: &str, offset: u64, len: usize) -> Option<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let job = {
            let mut i = self.lock();
            let job = i.jobs.get(key).cloned()?;
            if let Some(at) = i.queue.iter().position(|j| j.key == key) {
                if let Some(j) = i.queue.remove(at) {
                    i.queue.push_front(j);
                }
            }
            job
        };
        let end = offset.checked_add(len as u64)?;
        if end > job.size {
            return None;
        }
        if len == 0 {
            return Some(Vec::new());
        }
        let first = (offset / PIECE) as usize;
        let last = (end.saturating_sub(1) / PIECE) as usize;
        let mut s = job.lock();
        loop {
            if s.failed {
                return None;
            }
            if s.have
                .get(first..=last)
                .is_some_and(|p| p.iter().all(|h| *h))
            {
                break;
            }
            s = job.cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        let file = s.file.clone()?;
        drop(s);
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset).ok()?;
        Some(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(w: &Whole, key: &str, size: u64, dir: &std::path::Path) {
        let tmp = dir.join(key);
        std::fs::write(&tmp, b"").unwrap();
        assert!(w.queue(key, ObjPath::from(key), size, tmp));
    }

    #[test]
    fn pieces_go_out_in_order_and_a_reader_moves_its_pack_to_the_front() {
        let dir = tempfile::tempdir().unwrap();
        let w = Whole::default();
        queued(&w, "a", 2 * PIECE + 1, dir.path());
        queued(&w, "b", PIECE, dir.path());
        queued(&w, "c", 1, dir.path());
        assert!(!w.queue("a", ObjPath::from("a"), 1, dir.path().join("a2")));
        assert_eq!(w.workers_wanted(), WHOLE_AT_ONCE);
        assert_eq!(w.workers_wanted(), 0);
        let got: Vec<_> = (0..2).map(|_| w.next().unwrap()).collect();
        assert_eq!(
            got.iter()
                .map(|(j, i)| (j.key.as_str(), *i))
                .collect::<Vec<_>>(),
            [("a", 0), ("a", 1)]
        );
        // A reader of "c" (not started yet) puts it first; it waits for its piece.
        let w = Arc::new(w);
        let reader = {
            let w = w.clone();
            std::thread::spawn(move || w.read_at("c", 0, 1))
        };
        let mut next = None;
        for _ in 0..1000 {
            if w.lock().queue.front().map(|j| j.key.as_str()) == Some("c") {
                next = w.next();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let (c, ci) = next.expect("c moved to the front");
        assert_eq!((c.key.as_str(), ci), ("c", 0));
        assert!(!reader.is_finished());
        use std::os::unix::fs::FileExt;
        c.file().unwrap().write_all_at(b"z", 0).unwrap();
        assert!(matches!(w.piece_done(&c, 0, true), Outcome::Complete));
        assert_eq!(reader.join().unwrap(), Some(b"z".to_vec()));
        // Then the rest of "a", then "b".
        let (a, ai) = w.next().unwrap();
        assert_eq!((a.key.as_str(), ai), ("a", 2));
        assert_eq!(w.next().unwrap().0.key, "b");
        for _ in 0..WHOLE_AT_ONCE {
            assert!(w.next().is_none());
        }
        assert_eq!(w.lock().workers, 0);
    }

    #[test]
    fn a_reader_waits_only_for_its_pieces_and_a_failed_piece_sends_it_elsewhere() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let w = Whole::default();
        queued(&w, "a", 3 * PIECE, dir.path());
        let pieces: Vec<_> = (0..3).map(|_| w.next().unwrap()).collect();
        let job = pieces[0].0.clone();
        job.file()
            .unwrap()
            .write_all_at(b"second", PIECE + 10)
            .unwrap();
        assert!(matches!(w.piece_done(&job, 1, true), Outcome::Partial));
        // Piece 1 is in: a read inside it needs neither piece 0 nor 2.
        assert_eq!(w.read_at("a", PIECE + 10, 6), Some(b"second".to_vec()));
        // Past the end of the pack: not this fetch's to answer.
        assert_eq!(w.read_at("a", 3 * PIECE - 1, 2), None);
        // Piece 2 fails: a read that spans it goes elsewhere, and so does one of piece 0.
        assert!(matches!(w.piece_done(&job, 2, false), Outcome::Failed));
        assert_eq!(w.read_at("a", 2 * PIECE, 1), None);
        assert_eq!(w.read_at("a", 0, 1), None);
        assert!(matches!(w.piece_done(&job, 0, true), Outcome::Failed));
        w.forget(&job);
        assert_eq!(w.read_at("a", PIECE + 10, 6), None);

        // Announced again: a late worker of the failed fetch does not forget the new one.
        queued(&w, "a", PIECE, dir.path());
        w.forget(&job);
        let (again, i) = w.next().unwrap();
        assert!(!Arc::ptr_eq(&again, &job));
        again.file().unwrap().write_all_at(b"x", 0).unwrap();
        assert!(matches!(w.piece_done(&again, i, true), Outcome::Complete));
        assert_eq!(w.read_at("a", 0, 1), Some(b"x".to_vec()));
    }
}
