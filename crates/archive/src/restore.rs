//! Restore a generation into a directory, byte for byte. Every chunk is
//! checked against its SHA-256 before it is written; damaged data stops the
//! restore with an error that names the chunk and the file.

use std::fs::{self, File, FileTimes, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use rayon::prelude::*;

use crate::archive::Archive;
use crate::error::{Error, IoContext, Result};
use crate::id::GenId;
use crate::manifest::{Node, NodeKind};

#[derive(Clone, Debug, Default)]
pub struct RestoreReport {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

fn time_of(ns: i64) -> std::time::SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn target_path(to: &Path, n: &Node) -> PathBuf {
    to.join(std::ffi::OsStr::from_bytes(&n.path))
}

/// Make sure `to` exists and is empty.
pub fn prepare_target(to: &Path) -> Result<()> {
    match fs::read_dir(to) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                return Err(Error::TargetNotEmpty(to.into()));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::create_dir_all(to).at(to),
        Err(e) => Err(e).at(to),
    }
}

impl Archive {
    /// Restore `gen` into `to`, which must be missing or empty.
    pub fn restore(&self, gen: &GenId, to: &Path) -> Result<RestoreReport> {
        let _shared = self.backend.lock("archive", false, true)?;
        let rec = self.record(gen)?;
        let nodes = self.manifest(&rec)?;
        prepare_target(to)?;
        self.restore_nodes(&nodes, to)
    }

    pub fn restore_nodes(&self, nodes: &[Node], to: &Path) -> Result<RestoreReport> {
        let mut report = RestoreReport::default();
        for n in nodes.iter().filter(|n| n.kind == NodeKind::Dir) {
            let p = target_path(to, n);
            fs::create_dir(&p).at(&p)?;
            report.dirs += 1;
        }
        nodes
            .par_iter()
            .filter(|n| n.kind != NodeKind::Dir)
            .try_for_each(|n| self.restore_leaf(n, to))?;
        for n in nodes {
            match n.kind {
                NodeKind::File => {
                    report.files += 1;
                    report.bytes += n.size;
                }
                NodeKind::Symlink => report.symlinks += 1,
                NodeKind::Dir => {}
            }
        }
        // Folders last, deepest first, so that writing into them does not
        // undo their times (and a read-only folder is filled before it closes).
        for n in nodes.iter().rev().filter(|n| n.kind == NodeKind::Dir) {
            let p = target_path(to, n);
            fs::set_permissions(&p, fs::Permissions::from_mode(n.mode)).at(&p)?;
            let f = File::open(&p).at(&p)?;
            f.set_times(FileTimes::new().set_modified(time_of(n.mtime_ns)))
                .at(&p)?;
        }
        Ok(report)
    }

    fn restore_leaf(&self, n: &Node, to: &Path) -> Result<()> {
        let p = target_path(to, n);
        if n.kind == NodeKind::Symlink {
            return std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&n.target), &p).at(&p);
        }
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
            .at(&p)?;
        let r = self.write_file(n, &f, &p);
        if r.is_err() {
            drop(f);
            let _ = fs::remove_file(&p);
            return r;
        }
        f.set_permissions(fs::Permissions::from_mode(n.mode))
            .at(&p)?;
        f.set_times(FileTimes::new().set_modified(time_of(n.mtime_ns)))
            .at(&p)
    }

    fn write_file(&self, n: &Node, f: &File, p: &Path) -> Result<()> {
        let chunks = n.chunk_list();
        let mut offsets = Vec::with_capacity(chunks.len());
        let mut at = 0u64;
        for c in &chunks {
            offsets.push(at);
            at += c.1 as u64;
        }
        let write_one = |i: usize| -> Result<()> {
            let c = chunks[i];
            let data = self
                .chunk(&c.0)
                .map_err(|e| Error::Invalid(format!("cannot restore {}: {e}", n.path_lossy())))?;
            f.write_all_at(&data, offsets[i]).at(p)
        };
        if chunks.len() > 2 {
            (0..chunks.len()).into_par_iter().try_for_each(write_one)
        } else {
            (0..chunks.len()).try_for_each(write_one)
        }
    }
}
