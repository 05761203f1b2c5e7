//! Crash-safe state files (role, epoch, last generation...) as JSON.
//!
//! [`write_json_atomic`] writes a temporary file in the same folder, fsyncs it, renames it
//! over the target and fsyncs the folder: after a crash at any instant the file holds
//! either the old or the new content, never a mix. [`read_json`] reads it back; a missing
//! file is `None`, a bad one an error naming it.
//!
//! These are blocking calls (small files); from async code wrap them in
//! `tokio::task::spawn_blocking` if the state is large or the disk slow.
//!
//! [`Durable`] is a daemon's status: a value in memory behind a lock, written through to
//! its file after every change.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// An error reading or writing a state file; always names the file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// An I/O operation failed.
    #[error("state file {}: {action}: {source}", path.display())]
    Io {
        /// The file (or folder) concerned.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The file exists but is not valid JSON of the expected shape.
    #[error("state file {}: invalid content: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error (with line and column).
        source: serde_json::Error,
    },
}

fn io_err<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        path: path.to_owned(),
        action,
        source,
    }
}

/// Writes `value` as pretty JSON (with a final newline) to `path`, atomically and durably.
pub fn write_json_atomic<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<(), StateError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|source| StateError::Json {
        path: path.to_owned(),
        source,
    })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` atomically and durably: temporary file in the same folder,
/// fsync, rename, fsync of the folder. The temporary file is removed on failure.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| StateError::Io {
        path: path.to_owned(),
        action: "choosing a temporary name",
        source: io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"),
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".tmp.{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = dir.join(tmp_name);

    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_err(&tmp, "creating temporary file"))?;
        file.write_all(bytes)
            .map_err(io_err(&tmp, "writing temporary file"))?;
        file.sync_all()
            .map_err(io_err(&tmp, "syncing temporary file"))?;
        drop(file);
        fs::rename(&tmp, path).map_err(io_err(path, "renaming temporary file into place"))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(&dir, "syncing folder"))
}

/// Reads `path` as JSON: `Ok(None)` if the file does not exist, an error naming the file
/// if it cannot be read or parsed.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path, "reading")(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| StateError::Json {
            path: path.to_owned(),
            source,
        })
}

/// A value shared by a daemon's tasks and kept in a JSON file: each [`update`](Self::update)
/// changes it under the lock and writes it with [`write_json_atomic`] before the lock is
/// released, so the file never holds an older value than one that was already read.
///
/// A write that fails is logged (`cannot save NAME: ...`) and the value in memory keeps the
/// change: the daemon goes on, the file catches up with the next update.
pub struct Durable<T> {
    name: &'static str,
    path: PathBuf,
    value: Mutex<T>,
}

impl<T: Serialize + Clone> Durable<T> {
    /// `value`, kept in `path`; `name` says what it is in the log (`status`). Nothing is
    /// written until the first [`update`](Self::update) or [`save`](Self::save).
    pub fn new(name: &'static str, path: PathBuf, value: T) -> Self {
        Durable {
            name,
            path,
            value: Mutex::new(value),
        }
    }

    fn lock(&self) -> MutexGuard<'_, T> {
        self.value.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `f` to the value and writes the result to the file; returns what `f` returns.
    pub fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let mut v = self.lock();
        let r = f(&mut v);
        if let Err(e) = write_json_atomic(&self.path, &*v) {
            tracing::error!("cannot save {}: {e}", self.name);
        }
        r
    }

    /// Writes the value as it is, returning the error (a daemon's start: its folder must be
    /// writable).
    pub fn save(&self) -> Result<(), StateError> {
        write_json_atomic(&self.path, &*self.lock())
    }

    /// A copy of the value.
    pub fn get(&self) -> T {
        self.lock().clone()
    }

    /// What `f` reads from the value (without copying all of it).
    pub fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.lock())
    }

    /// The file it is kept in.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_update_is_written_through_and_reads_see_it() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("status.json");
        let d = Durable::new("status", path.clone(), vec![1u32]);
        assert_eq!(
            read_json::<Vec<u32>>(&path)?,
            None,
            "nothing written before a change"
        );
        let len = d.update(|v| {
            v.push(2);
            v.len()
        });
        assert_eq!(len, 2);
        assert_eq!(read_json::<Vec<u32>>(&path)?, Some(vec![1, 2]));
        assert_eq!(d.get(), [1, 2]);
        assert_eq!(d.read(|v| v[1]), 2);
        d.update(|v| v.clear());
        assert_eq!(read_json::<Vec<u32>>(&path)?, Some(vec![]));
        assert_eq!(d.path(), path);
        Ok(())
    }

    #[test]
    fn a_failed_write_keeps_the_change_in_memory_and_save_reports_it() {
        let d = Durable::new(
            "status",
            PathBuf::from("/nonexistent/folder/status.json"),
            0u8,
        );
        d.update(|v| *v = 5);
        assert_eq!(d.get(), 5);
        let e = d.save().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("/nonexistent/folder"), "{e}");
    }
}
