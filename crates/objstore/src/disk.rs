//! Copies of packs on the PBS's own disk (`<local>/cache/packs/…`), so that reading what
//! was just written (the next ingest's delta references, the push of the newest generation
//! to clones, its verify) costs no request.
//!
//! A copy is the staged file the pack was PUT from, fsynced and hard-linked here after the
//! PUT succeeded: no copying, and never a half-written copy (a link appears whole or not
//! at all). Packs never change, so a copy is never stale; it is only present or absent.
//! The bucket stays the archive: a copy is dropped when gc removes its pack, when a whole
//! read from the bucket (verify --full) finds it differs, and when a blob read from it
//! fails its check (the archive then reads the bucket). Several processes (the daemon and
//! `pbs archive …`) share the folder; each keeps it within the budget by removing the
//! least recently read copies (a copy's mtime is set when a process first reads it).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Eviction leaves the folder at this share of the budget, so that it does not run again
/// at the next pack.
const AFTER_EVICTION: f64 = 0.9;

pub(crate) struct DiskCache {
    dir: PathBuf,
    budget: u64,
    /// Bytes in the folder as this process counts them (others may add: eviction counts
    /// again from the folder).
    used: AtomicU64,
    open: Mutex<HashMap<String, Arc<File>>>,
    /// Keys this process found absent: not looked for again until it writes them.
    absent: Mutex<HashSet<String>>,
    /// One eviction at a time in this process.
    evicting: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DiskCache {
    /// `budget` bytes in `dir` (created when first written); 0: no cache at all.
    pub(crate) fn new(dir: PathBuf, budget: u64) -> Option<DiskCache> {
        if budget == 0 {
            return None;
        }
        let used = files(&dir).iter().map(|f| f.1).sum();
        Some(DiskCache {
            dir,
            budget,
            used: AtomicU64::new(used),
            open: Mutex::new(HashMap::new()),
            absent: Mutex::new(HashSet::new()),
            evicting: Mutex::new(()),
        })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    pub(crate) fn budget(&self) -> u64 {
        self.budget
    }

    /// Keep `staged` (the whole object `key`, fsynced by the caller where it matters) as
    /// its copy. Best effort: a failure only means the bucket is read later.
    pub(crate) fn insert(&self, key: &str, staged: &Path) {
        if let Err(e) = self.link(key, staged) {
            tracing::warn!(key, error = %e, "pack not kept in the local cache");
        }
    }

    fn link(&self, key: &str, staged: &Path) -> std::io::Result<()> {
        let path = self.path(key);
        let len = fs::metadata(staged)?.len();
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        match fs::hard_link(staged, &path) {
            Ok(()) => {
                self.used.fetch_add(len, Ordering::Relaxed);
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        lock(&self.absent).remove(key);
        if self.used.load(Ordering::Relaxed) > self.budget {
            self.evict();
        }
        Ok(())
    }

    /// The copy of `key`, if this host has one.
    pub(crate) fn get(&self, key: &str) -> Option<Arc<File>> {
        // Held while the file is opened: a `remove` meanwhile would otherwise see no open
        // file, and the file opened just before it went would be kept open after it.
        let mut open = lock(&self.open);
        if let Some(f) = open.get(key) {
            return Some(f.clone());
        }
        if lock(&self.absent).contains(key) {
            return None;
        }
        match File::open(self.path(key)) {
            Ok(f) => {
                // Read now: the last to be evicted.
                let _ = f.set_modified(SystemTime::now());
                let f = Arc::new(f);
                if open.len() >= 1024 {
                    open.clear();
                }
                open.insert(key.to_string(), f.clone());
                Some(f)
            }
            Err(_) => {
                let mut absent = lock(&self.absent);
                if absent.len() >= 100_000 {
                    absent.clear();
                }
                absent.insert(key.to_string());
                None
            }
        }
    }

    /// `len` bytes at `offset` of the copy of `key`; None when there is no copy or it is
    /// shorter than that (it is then dropped).
    pub(crate) fn read_at(&self, key: &str, offset: u64, len: usize) -> Option<Vec<u8>> {
        let f = self.get(key)?;
        let mut buf = vec![0u8; len];
        match f.read_exact_at(&mut buf, offset) {
            Ok(()) => Some(buf),
            Err(e) => {
                tracing::warn!(key, error = %e, "local copy of a pack unreadable: dropped");
                self.remove(key);
                None
            }
        }
    }

    /// The size of the copy of `key`, if there is one.
    pub(crate) fn size(&self, key: &str) -> Option<u64> {
        self.get(key)?.metadata().ok().map(|m| m.len())
    }

    /// The whole copy of `key`, if there is one.
    pub(crate) fn read(&self, key: &str) -> Option<Vec<u8>> {
        let f = self.get(key)?;
        let len = f.metadata().ok()?.len();
        let mut buf = vec![0u8; usize::try_from(len).ok()?];
        f.read_exact_at(&mut buf, 0).ok()?;
        Some(buf)
    }

    /// Drop the copy of `key`; true if there was one.
    pub(crate) fn remove(&self, key: &str) -> bool {
        // Held until the copy is gone and marked absent (see `get`).
        let mut open = lock(&self.open);
        open.remove(key);
        let path = self.path(key);
        let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let had = fs::remove_file(&path).is_ok();
        if had {
            let _ = self
                .used
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                    Some(u.saturating_sub(len))
                });
        }
        let mut absent = lock(&self.absent);
        if absent.len() < 100_000 {
            absent.insert(key.to_string());
        }
        had
    }

    /// Remove the least recently read copies until the folder holds at most
    /// [`AFTER_EVICTION`] of the budget.
    fn evict(&self) {
        let Ok(_one) = self.evicting.try_lock() else {
            return;
        };
        let mut all = files(&self.dir);
        let mut total: u64 = all.iter().map(|f| f.1).sum();
        let keep = (self.budget as f64 * AFTER_EVICTION) as u64;
        all.sort_by_key(|f| f.2);
        let mut open = lock(&self.open);
        for (path, len, _) in all {
            if total <= keep {
                break;
            }
            if fs::remove_file(&path).is_ok() {
                total = total.saturating_sub(len);
                if let Some(key) = path.strip_prefix(&self.dir).ok().and_then(|k| k.to_str()) {
                    open.remove(key);
                }
            }
        }
        self.used.store(total, Ordering::Relaxed);
    }
}

/// Every file below `dir`: path, size, mtime.
fn files(dir: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for ent in rd.flatten() {
            let Ok(meta) = ent.metadata() else { continue };
            if meta.is_dir() {
                dirs.push(ent.path());
            } else {
                let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                out.push((ent.path(), meta.len(), mtime));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staged(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, data).unwrap();
        p
    }

    #[test]
    fn a_put_pack_is_read_back_from_its_copy() {
        let d = tempfile::tempdir().unwrap();
        let c = DiskCache::new(d.path().join("cache"), 1 << 20).unwrap();
        assert!(c.read_at("packs/aa/x.pack", 0, 1).is_none());
        let s = staged(d.path(), "s1", b"hello pack");
        c.insert("packs/aa/x.pack", &s);
        // The staged file may go: the copy is a second name.
        fs::remove_file(&s).unwrap();
        assert_eq!(c.read_at("packs/aa/x.pack", 6, 4).unwrap(), b"pack");
        assert_eq!(c.size("packs/aa/x.pack"), Some(10));
        assert_eq!(c.read("packs/aa/x.pack").unwrap(), b"hello pack");
        // Past its end: dropped, and then absent.
        assert!(c.read_at("packs/aa/x.pack", 6, 40).is_none());
        assert!(c.get("packs/aa/x.pack").is_none());
        assert!(!d.path().join("cache/packs/aa/x.pack").exists());
    }

    #[test]
    fn the_least_recently_read_copies_go_first() {
        let d = tempfile::tempdir().unwrap();
        let c = DiskCache::new(d.path().join("cache"), 3000).unwrap();
        let t0 = SystemTime::now() - std::time::Duration::from_secs(100);
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let s = staged(d.path(), name, &[0u8; 1000]);
            c.insert(&format!("packs/{name}"), &s);
            let f = File::options()
                .write(true)
                .open(d.path().join("cache/packs").join(name))
                .unwrap();
            f.set_modified(t0 + std::time::Duration::from_secs(i as u64))
                .unwrap();
        }
        // "a" read again: now the most recent (a new process, so it is touched).
        let c = DiskCache::new(d.path().join("cache"), 3000).unwrap();
        assert!(c.get("packs/a").is_some());
        let s = staged(d.path(), "d", &[0u8; 1000]);
        c.insert("packs/d", &s);
        // 4000 > 3000: down to 2700 at most, oldest read first: b, then c.
        let left: Vec<bool> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| d.path().join("cache/packs").join(n).exists())
            .collect();
        assert_eq!(left, vec![true, false, false, true]);
        assert_eq!(c.used.load(Ordering::Relaxed), 2000);
    }

    #[test]
    fn no_budget_no_cache() {
        let d = tempfile::tempdir().unwrap();
        assert!(DiskCache::new(d.path().join("cache"), 0).is_none());
    }
}
