//! Paths resolved under one folder without following any symlink.
//!
//! A restore writes only what a generation's file list names, and a file list
//! comes from a peer that may be hostile: `a -> /etc` followed by `a/x` must
//! never write `/etc/x`. The list is checked before a restore starts
//! (`manifest::validate_list`), and every path is then resolved here one
//! component at a time with `openat(O_NOFOLLOW)` from a handle on the target
//! folder, so that no component is ever followed even if the folder changed
//! under us (a symlink planted by another process between two steps).

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

/// A handle on a folder; every path given to it is relative to that folder.
pub struct Beneath {
    root: OwnedFd,
    path: PathBuf,
}

fn refuse(rel: &[u8], why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{}: {why}", String::from_utf8_lossy(rel)),
    )
}

/// Split `rel` into its parent components and its last one, refusing the
/// components that could climb out (`..`, `.`, empty, absolute).
fn split(rel: &[u8]) -> io::Result<(Vec<&[u8]>, &[u8])> {
    let mut parts: Vec<&[u8]> = rel.split(|&b| b == b'/').collect();
    if parts
        .iter()
        .any(|c| c.is_empty() || *c == b"." || *c == b".." || c.contains(&0))
    {
        return Err(refuse(rel, "not a plain relative path"));
    }
    let last = parts.pop().unwrap_or_default();
    Ok((parts, last))
}

const DIR_FLAGS: OFlags = OFlags::PATH
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

impl Beneath {
    /// Open `root` (which the caller chose, so it may itself be reached
    /// through a symlink).
    pub fn open(root: &Path) -> io::Result<Beneath> {
        let fd = rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Beneath {
            root: fd,
            path: root.to_path_buf(),
        })
    }

    /// Where `rel` is, for messages.
    pub fn display(&self, rel: &[u8]) -> PathBuf {
        self.path.join(OsStr::from_bytes(rel))
    }

    /// Run `f` on the folder holding `rel`'s last component, reached without
    /// following a symlink, and that last component.
    fn in_parent<T>(
        &self,
        rel: &[u8],
        f: impl FnOnce(BorrowedFd<'_>, &OsStr) -> io::Result<T>,
    ) -> io::Result<T> {
        let (parents, last) = split(rel)?;
        let mut held: Option<OwnedFd> = None;
        for c in parents {
            let at = held.as_ref().map_or(self.root.as_fd(), |d| d.as_fd());
            let next = rustix::fs::openat(at, OsStr::from_bytes(c), DIR_FLAGS, Mode::empty())
                .map_err(|e| {
                    if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::NOTDIR {
                        refuse(
                            rel,
                            "a parent is not a folder (a symlink is never followed)",
                        )
                    } else {
                        io::Error::from(e)
                    }
                })?;
            held = Some(next);
        }
        let at = held.as_ref().map_or(self.root.as_fd(), |d| d.as_fd());
        f(at, OsStr::from_bytes(last))
    }

    pub fn mkdir(&self, rel: &[u8], mode: u32) -> io::Result<()> {
        self.in_parent(rel, |at, name| {
            rustix::fs::mkdirat(at, name, Mode::from_raw_mode(mode)).map_err(Into::into)
        })
    }

    pub fn symlink(&self, rel: &[u8], target: &[u8]) -> io::Result<()> {
        self.in_parent(rel, |at, name| {
            rustix::fs::symlinkat(OsStr::from_bytes(target), at, name).map_err(Into::into)
        })
    }

    pub fn remove_file(&self, rel: &[u8]) -> io::Result<()> {
        self.in_parent(rel, |at, name| {
            rustix::fs::unlinkat(at, name, rustix::fs::AtFlags::empty()).map_err(Into::into)
        })
    }

    /// Create a new file (never an existing one, never through a symlink),
    /// open for writing and for reading back what was written.
    pub fn create_file(&self, rel: &[u8]) -> io::Result<File> {
        self.open_at(
            rel,
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            0o600,
        )
    }

    /// Open an existing regular file for reading: a symlink is refused, and
    /// so is anything else that is not a regular file (opened without
    /// blocking, so that a FIFO put in its place cannot stall the caller).
    pub fn open_regular(&self, rel: &[u8]) -> io::Result<File> {
        let f = self.open_at(
            rel,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            0,
        )?;
        if !f.metadata()?.is_file() {
            return Err(refuse(rel, "not a regular file"));
        }
        Ok(f)
    }

    /// Open an existing file for reading; a symlink is refused.
    pub fn open_file(&self, rel: &[u8]) -> io::Result<File> {
        self.open_at(rel, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, 0)
    }

    /// Open an existing folder (to set its mode and times); a symlink is refused.
    pub fn open_dir(&self, rel: &[u8]) -> io::Result<File> {
        self.open_at(
            rel,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            0,
        )
    }

    fn open_at(&self, rel: &[u8], flags: OFlags, mode: u32) -> io::Result<File> {
        self.in_parent(rel, |at, name| {
            let fd = rustix::fs::openat(at, name, flags, Mode::from_raw_mode(mode))?;
            Ok(File::from(fd))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn never_follows_a_symlink_anywhere_in_a_path() {
        let t = tempfile::tempdir().unwrap();
        let (root, outside) = (t.path().join("root"), t.path().join("outside"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let b = Beneath::open(&root).unwrap();
        b.mkdir(b"d", 0o755).unwrap();
        b.create_file(b"d/f").unwrap().write_all(b"ok").unwrap();
        b.symlink(b"link", outside.as_os_str().as_bytes()).unwrap();
        b.symlink(b"d/up", b"../..").unwrap();

        for rel in [&b"link/x"[..], b"d/up/outside/x", b"link/a/b"] {
            let e = b.create_file(rel).unwrap_err();
            assert!(e.to_string().contains("never followed"), "{rel:?}: {e}");
            assert!(b.mkdir(rel, 0o755).is_err(), "{rel:?}");
            assert!(b.symlink(rel, b"/").is_err(), "{rel:?}");
        }
        // The last component is not followed either.
        assert!(b.create_file(b"link").is_err());
        assert!(b.open_file(b"link").is_err());
        assert!(b.open_dir(b"link").is_err());
        for rel in [&b"../x"[..], b"/etc/x", b"a//b", b"./a", b""] {
            assert!(b.create_file(rel).is_err(), "{rel:?}");
        }
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        assert_eq!(std::fs::read(root.join("d/f")).unwrap(), b"ok");
        let mut s = String::new();
        std::io::Read::read_to_string(&mut b.open_file(b"d/f").unwrap(), &mut s).unwrap();
        assert_eq!(s, "ok");
    }
}
