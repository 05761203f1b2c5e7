//! Restore a generation into a directory, byte for byte. Every chunk is
//! checked against its SHA-256 before it is written; damaged data stops the
//! restore with an error that names the chunk and the file.

use std::fs::{self, File, FileTimes};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use rayon::prelude::*;

use crate::archive::Archive;
use crate::beneath::Beneath;
use crate::error::{Error, IoContext, Result};
use crate::id::GenId;
use crate::manifest::{validate_list, Node, NodeKind};

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

/// Whether `to` exists; an error if it is there and not an empty folder.
fn empty_or_missing(to: &Path) -> Result<bool> {
    match fs::read_dir(to) {
        Ok(mut rd) => match rd.next() {
            Some(_) => Err(Error::TargetNotEmpty(to.into())),
            None => Ok(true),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).at(to),
    }
}

/// Make sure `to` exists and is empty.
pub fn prepare_target(to: &Path) -> Result<()> {
    if !empty_or_missing(to)? {
        fs::create_dir_all(to).at(to)?;
    }
    Ok(())
}

/// Fill `to` through `fill`, so that `to` is either absent or complete: the
/// work happens in a hidden sibling folder that is renamed into place only
/// once `fill` succeeded; on failure it is removed and `to` is untouched (a
/// retry then finds it as it was). `to` must be missing or an empty folder.
pub fn into_place<T>(to: &Path, fill: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let existed = empty_or_missing(to)?;
    let name = to
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("restore target {} has no name", to.display())))?;
    let parent = match to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).at(&parent)?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".partial-{}", std::process::id()));
    let tmp = parent.join(tmp_name);
    if tmp.exists() {
        fs::remove_dir_all(&tmp).at(&tmp)?;
    }
    fs::create_dir(&tmp).at(&tmp)?;
    let done = fill(&tmp).and_then(|v| {
        if existed {
            fs::remove_dir(to).at(to)?;
        }
        fs::rename(&tmp, to).at(to)?;
        File::open(&parent).and_then(|d| d.sync_all()).at(&parent)?;
        Ok(v)
    });
    if done.is_err() && tmp.exists() {
        let _ = fs::remove_dir_all(&tmp);
    }
    done
}

/// The mode a restored entry gets. Ownership is not restored (every file
/// belongs to the restoring user), so the setuid and setgid bits of files are
/// dropped: a `4755` file of `nobody` must not become a setuid file of the
/// importer's user. Folders keep theirs (setgid on a folder only passes its
/// group on).
pub fn restored_mode(n: &Node) -> u32 {
    match n.kind {
        NodeKind::File => n.mode & 0o1777,
        _ => n.mode & 0o7777,
    }
}

impl Archive {
    /// Restore `gen` into `to`, which must be missing or empty; `to` is
    /// either left as it was or complete (see [`into_place`]).
    pub fn restore(&self, gen: &GenId, to: &Path) -> Result<RestoreReport> {
        let _shared = self.backend.lock("archive", false, true)?;
        let rec = self.record(gen)?;
        let nodes = self.manifest(&rec)?;
        self.announce_reads(&nodes);
        into_place(to, |tmp| self.restore_nodes(&nodes, tmp))
    }

    /// Write `nodes` into the empty folder `to`. The list is checked first
    /// (`manifest::validate_list`), and every path is then resolved without
    /// following any symlink ([`Beneath`]): nothing is ever written outside
    /// `to`, whatever the list says.
    pub fn restore_nodes(&self, nodes: &[Node], to: &Path) -> Result<RestoreReport> {
        restore_nodes_with(nodes, to, |n, root| self.restore_leaf(n, root))
    }

    fn restore_leaf(&self, n: &Node, root: &Beneath) -> Result<()> {
        let p = root.display(&n.path);
        if n.kind == NodeKind::Symlink {
            return root.symlink(&n.path, &n.target).at(&p);
        }
        let f = root.create_file(&n.path).at(&p)?;
        // The length first: what is never written (all-zero chunks) stays a
        // hole, so a sparse file stays sparse.
        let r = f
            .set_len(n.size)
            .at(&p)
            .and_then(|_| self.write_file(n, &f, &p));
        if r.is_err() {
            drop(f);
            let _ = root.remove_file(&n.path);
            return r;
        }
        set_file_meta(n, &f, &p)
    }

    /// Write every chunk of `n` into `f` (already of the right length, holes
    /// where nothing was written yet), each checked against its id first.
    pub(crate) fn write_file(&self, n: &Node, f: &File, p: &Path) -> Result<()> {
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
            if data.iter().all(|&b| b == 0) {
                return Ok(()); // a hole: set_len made it zeros already
            }
            f.write_all_at(&data, offsets[i]).at(p)
        };
        if chunks.len() > 2 {
            (0..chunks.len()).into_par_iter().try_for_each(write_one)
        } else {
            (0..chunks.len()).try_for_each(write_one)
        }
    }
}

/// A restored file's mode and modification time, from its node.
pub(crate) fn set_file_meta(n: &Node, f: &File, p: &Path) -> Result<()> {
    f.set_permissions(fs::Permissions::from_mode(restored_mode(n)))
        .at(p)?;
    f.set_times(FileTimes::new().set_modified(time_of(n.mtime_ns)))
        .at(p)
}

/// Restore `nodes` into the empty folder `to`: the list is checked, the
/// folders made, every other entry written by `leaf` (in parallel), and the
/// folders' modes and times set last.
pub(crate) fn restore_nodes_with(
    nodes: &[Node],
    to: &Path,
    leaf: impl Fn(&Node, &Beneath) -> Result<()> + Sync,
) -> Result<RestoreReport> {
    validate_list(nodes).map_err(|why| Error::Corrupt {
        what: format!("file list to restore into {}", to.display()),
        why,
    })?;
    let root = Beneath::open(to).at(to)?;
    let mut report = RestoreReport::default();
    for n in nodes.iter().filter(|n| n.kind == NodeKind::Dir) {
        root.mkdir(&n.path, 0o700).at(root.display(&n.path))?;
        report.dirs += 1;
    }
    nodes
        .par_iter()
        .filter(|n| n.kind != NodeKind::Dir)
        .try_for_each(|n| leaf(n, &root))?;
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
        let p = root.display(&n.path);
        let f = root.open_dir(&n.path).at(&p)?;
        f.set_permissions(fs::Permissions::from_mode(restored_mode(n)))
            .at(&p)?;
        f.set_times(FileTimes::new().set_modified(time_of(n.mtime_ns)))
            .at(&p)?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::SourceName;
    use crate::ingest::IngestOptions;
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;

    fn archive_of(src: &Path, at: &Path) -> (Archive, GenId) {
        let ar = Archive::init(at).unwrap();
        let rep = ar
            .ingest(
                &SourceName::new("t").unwrap(),
                src,
                &IngestOptions::default(),
            )
            .unwrap();
        (ar, rep.record.id())
    }

    #[test]
    fn holes_stay_holes_and_setuid_is_dropped() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir(&src).unwrap();
        // 64 MiB, of which only the last few bytes are data.
        let mut f = File::create(src.join("sparse")).unwrap();
        f.seek(SeekFrom::Start(64 << 20)).unwrap();
        f.write_all(b"tail").unwrap();
        drop(f);
        fs::write(src.join("suid"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(src.join("suid"), fs::Permissions::from_mode(0o6755)).unwrap();
        let (ar, gen) = archive_of(&src, &t.path().join("ar"));
        let out = t.path().join("out");
        ar.restore(&gen, &out).unwrap();

        let m = fs::metadata(out.join("sparse")).unwrap();
        assert_eq!(m.len(), (64 << 20) + 4);
        assert!(
            m.blocks() * 512 < 8 << 20,
            "{} blocks allocated",
            m.blocks()
        );
        let data = fs::read(out.join("sparse")).unwrap();
        assert_eq!(&data[data.len() - 4..], b"tail");
        assert!(data[..data.len() - 4].iter().all(|&b| b == 0));
        let mode = fs::metadata(out.join("suid")).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o755);
    }

    #[test]
    fn a_list_that_leads_outside_is_refused_and_writes_nothing() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("x"), b"planted").unwrap();
        let (ar, gen) = archive_of(&src, &t.path().join("ar"));
        let mut nodes = ar.manifest(&ar.record(&gen).unwrap()).unwrap();
        let outside = t.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let mut link = nodes[0].clone();
        link.path = b"a".to_vec();
        link.kind = NodeKind::Symlink;
        link.digest = None;
        link.chunks.clear();
        link.size = 0;
        link.target = outside.as_os_str().as_encoded_bytes().to_vec();
        let mut through = nodes[0].clone();
        through.path = b"a/x".to_vec();
        nodes = vec![link, through];
        let out = t.path().join("out");
        prepare_target(&out).unwrap();
        let e = ar.restore_nodes(&nodes, &out).unwrap_err();
        assert!(e.to_string().contains("is a symlink"), "{e}");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        assert_eq!(fs::read_dir(&out).unwrap().count(), 0);
    }
}
