//! Storage behind a small trait, so that an object store can replace the local
//! filesystem without touching callers. Keys are `/`-separated relative paths.
//! Objects are immutable: written once, atomically, never overwritten.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, IoContext, Result};

pub trait Backend: Send + Sync {
    /// Whole object.
    fn read(&self, key: &str) -> Result<Vec<u8>>;
    /// `len` bytes at `offset`; a short object is an error.
    fn read_at(&self, key: &str, offset: u64, len: usize) -> Result<Vec<u8>>;
    fn size(&self, key: &str) -> Result<u64>;
    /// Durably create `key` with `data`. Returns false (and changes nothing)
    /// when `key` already exists.
    fn create(&self, key: &str, data: &[u8]) -> Result<bool> {
        let s = self.stage(data)?;
        let r = self.publish(&s, key);
        self.discard(s);
        r
    }
    /// Write `data` to a temporary object, not yet durable nor visible, so
    /// that many writes can be flushed together by `publish`.
    fn stage(&self, data: &[u8]) -> Result<Staged>;
    /// Make a staged object durable and visible as `key` (never replacing an
    /// existing one: returns false then). The staged object stays until
    /// `discard`.
    fn publish(&self, staged: &Staged, key: &str) -> Result<bool>;
    /// [`Backend::publish`] for several staged objects (in no particular order; a backend
    /// may make them at once). Each answer as `publish`'s; the first error stops it.
    fn publish_all(&self, items: &[(&Staged, &str)]) -> Result<Vec<bool>> {
        items.iter().map(|(s, k)| self.publish(s, k)).collect()
    }
    /// Forget a staged object.
    fn discard(&self, staged: Staged);
    /// Append `data` to `key`, creating it. Not durable: for scratch objects
    /// that matter only while their writer runs (pins).
    fn append(&self, key: &str, data: &[u8]) -> Result<()>;
    /// Keys below the folder `prefix`, recursively, in no particular order.
    fn list(&self, prefix: &str) -> Result<Vec<String>>;
    /// Remove `key`; a missing key is not an error.
    fn remove(&self, key: &str) -> Result<()>;
    /// Take a named lock, shared or exclusive, held until the guard drops.
    /// `wait = false` fails with `Error::Busy` instead of waiting.
    fn lock(&self, name: &str, exclusive: bool, wait: bool) -> Result<Box<dyn LockGuard>>;
    /// Where the archive lives, for messages.
    fn location(&self) -> String;
    /// Forget a local copy of `key` that a read found damaged, so that the next read goes
    /// to the store itself. True when reading again may give other bytes: the backend
    /// keeps copies (the bytes may have come from one that another reader dropped since);
    /// a backend without copies: false.
    fn uncache(&self, _key: &str) -> bool {
        false
    }
    /// A hint: the objects about to be read, in the order of first use, each with the
    /// bytes that will be read of it. A backend may start fetching them; reads are the same
    /// with or without it.
    fn will_read(&self, _objects: &[(String, u64)]) {}
    /// A hint: `staged` is to be published as `key` (a pack, named by its content). A
    /// backend may start copying it now; only [`Backend::publish_all`] or
    /// [`Backend::publish`], under the archive's locks, makes it part of the archive.
    fn will_publish(&self, _staged: &Staged, _key: &str) {}
}

pub trait LockGuard: Send + Sync {}

/// A staged (temporary) object.
#[derive(Debug)]
pub struct Staged {
    pub tmp: PathBuf,
}

/// The local filesystem: temp file, fsync, link into place, fsync the folder.
pub struct LocalBackend {
    root: PathBuf,
    handles: Mutex<HashMap<String, Arc<File>>>,
    tmp_counter: AtomicU64,
}

impl LocalBackend {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalBackend {
            root: root.into(),
            handles: Mutex::new(HashMap::new()),
            tmp_counter: AtomicU64::new(0),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn handle(&self, key: &str) -> Result<Arc<File>> {
        let mut map = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = map.get(key) {
            return Ok(f.clone());
        }
        let path = self.path(key);
        let f = Arc::new(File::open(&path).at(&path)?);
        if map.len() >= 512 {
            map.clear();
        }
        map.insert(key.to_owned(), f.clone());
        Ok(f)
    }

    fn forget(&self, key: &str) {
        let mut map = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(key);
    }

    /// mkdir -p, fsyncing each parent of a folder it creates.
    fn ensure_dir(&self, dir: &Path) -> Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        if let Some(parent) = dir.parent() {
            self.ensure_dir(parent)?;
        }
        match fs::create_dir(dir) {
            Ok(()) => {
                if let Some(parent) = dir.parent() {
                    fsync_dir(parent)?;
                }
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e).at(dir),
        }
    }
}

pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

fn collect(dir: &Path, rel: &str, out: &mut Vec<String>) -> Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).at(dir),
    };
    for ent in rd {
        let ent = ent.at(dir)?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        let key = format!("{rel}/{name}");
        if ent.file_type().at(ent.path())?.is_dir() {
            collect(&ent.path(), &key, out)?;
        } else {
            out.push(key);
        }
    }
    Ok(())
}

struct FlockGuard(#[allow(dead_code)] File);
impl LockGuard for FlockGuard {}

impl Backend for LocalBackend {
    fn read(&self, key: &str) -> Result<Vec<u8>> {
        let path = self.path(key);
        fs::read(&path).at(path)
    }

    fn read_at(&self, key: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let f = self.handle(key)?;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset).at(self.path(key))?;
        Ok(buf)
    }

    fn size(&self, key: &str) -> Result<u64> {
        let path = self.path(key);
        Ok(fs::metadata(&path).at(&path)?.len())
    }

    fn stage(&self, data: &[u8]) -> Result<Staged> {
        let tmp_dir = self.root.join("tmp");
        self.ensure_dir(&tmp_dir)?;
        // pid, counter and clock: a leftover of a killed process whose pid
        // came back does not collide (and if it does, the next name is tried).
        let (tmp, mut f) = loop {
            let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let tmp = tmp_dir.join(format!("{}-{n}-{t:x}.tmp", std::process::id()));
            match OpenOptions::new().write(true).create_new(true).open(&tmp) {
                Ok(f) => break (tmp, f),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).at(&tmp),
            }
        };
        if let Err(e) = f.write_all(data) {
            drop(f);
            let _ = fs::remove_file(&tmp);
            return Err(e).at(&tmp);
        }
        Ok(Staged { tmp })
    }

    fn publish(&self, staged: &Staged, key: &str) -> Result<bool> {
        let path = self.path(key);
        let dir = path
            .parent()
            .ok_or_else(|| Error::Invalid(format!("bad key {key:?}")))?;
        self.ensure_dir(dir)?;
        File::open(&staged.tmp)
            .and_then(|f| f.sync_all())
            .at(&staged.tmp)?;
        // link() never replaces: the commit point that cannot clobber.
        match fs::hard_link(&staged.tmp, &path) {
            Ok(()) => {
                fsync_dir(dir)?;
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e).at(&path),
        }
    }

    fn discard(&self, staged: Staged) {
        let _ = fs::remove_file(&staged.tmp);
    }

    fn append(&self, key: &str, data: &[u8]) -> Result<()> {
        let path = self.path(key);
        if let Some(dir) = path.parent() {
            self.ensure_dir(dir)?;
        }
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .at(&path)?;
        f.write_all(data).at(&path)
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        collect(&self.path(prefix), prefix.trim_end_matches('/'), &mut out)?;
        Ok(out)
    }

    fn remove(&self, key: &str) -> Result<()> {
        self.forget(key);
        let path = self.path(key);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).at(path),
        }
    }

    fn lock(&self, name: &str, exclusive: bool, wait: bool) -> Result<Box<dyn LockGuard>> {
        let dir = self.root.join("locks");
        self.ensure_dir(&dir)?;
        let path = dir.join(name);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .at(&path)?;
        let mut op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        if !wait {
            op |= libc::LOCK_NB;
        }
        loop {
            // SAFETY: flock on a descriptor we own; no memory is passed.
            let r = unsafe { libc::flock(f.as_raw_fd(), op) };
            if r == 0 {
                return Ok(Box::new(FlockGuard(f)));
            }
            let e = std::io::Error::last_os_error();
            match e.kind() {
                ErrorKind::Interrupted => continue,
                ErrorKind::WouldBlock => {
                    return Err(Error::Busy(format!(
                        "lock {name} is held by another process"
                    )))
                }
                _ => return Err(e).at(&path),
            }
        }
    }

    fn location(&self) -> String {
        self.root.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path());
        assert!(b.create("a/b/c", b"one").unwrap());
        assert!(!b.create("a/b/c", b"two").unwrap());
        assert_eq!(b.read("a/b/c").unwrap(), b"one");
        assert_eq!(b.read_at("a/b/c", 1, 2).unwrap(), b"ne");
        assert!(b.read_at("a/b/c", 2, 5).is_err());
        assert_eq!(b.list("a").unwrap(), vec!["a/b/c".to_string()]);
        b.remove("a/b/c").unwrap();
        b.remove("a/b/c").unwrap();
        assert!(b.list("a").unwrap().is_empty());
        assert!(b.list("nothing").unwrap().is_empty());
    }

    #[test]
    fn exclusive_lock_excludes() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path());
        let s = b.lock("l", false, false).unwrap();
        let _s2 = b.lock("l", false, false).unwrap();
        assert!(matches!(b.lock("l", true, false), Err(Error::Busy(_))));
        drop(s);
        drop(_s2);
        let _x = b.lock("l", true, false).unwrap();
    }
}
