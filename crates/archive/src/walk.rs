//! The walk of an ingest: every entry below a folder, in order (each folder's names
//! sorted, a folder before what it holds), excludes left out, what is neither a file,
//! a folder nor a symlink left out with a warning.

use std::fs::{self, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

fn ns(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}
pub(crate) fn mtime_ns(m: &Metadata) -> i64 {
    ns(m.mtime(), m.mtime_nsec())
}
pub(crate) fn ctime_ns(m: &Metadata) -> i64 {
    ns(m.ctime(), m.ctime_nsec())
}

/// One entry of the walk.
pub(crate) struct Item {
    /// Its path below the folder, `/`-separated.
    pub rel: Vec<u8>,
    pub abs: PathBuf,
    /// As `lstat` saw it.
    pub meta: Metadata,
}

pub(crate) fn walk(
    root: &Path,
    rel: &[u8],
    ex: &globset::GlobSet,
    out: &mut Vec<Item>,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(std::ffi::OsStr::from_bytes(rel))
    };
    let mut names: Vec<std::ffi::OsString> = fs::read_dir(&dir)
        .at(&dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .at(&dir)?;
    names.sort();
    for name in names {
        let mut r = rel.to_vec();
        if !r.is_empty() {
            r.push(b'/');
        }
        r.extend_from_slice(name.as_bytes());
        if !ex.is_empty() && ex.is_match(std::ffi::OsStr::from_bytes(&r)) {
            continue;
        }
        let abs = dir.join(&name);
        let meta = fs::symlink_metadata(&abs).at(&abs)?;
        let ft = meta.file_type();
        if ft.is_dir() {
            out.push(Item {
                rel: r.clone(),
                abs,
                meta,
            });
            walk(root, &r, ex, out, warnings)?;
        } else if ft.is_file() || ft.is_symlink() {
            out.push(Item { rel: r, abs, meta });
        } else {
            warnings.push(format!(
                "{}: not a file, directory or symlink; left out",
                abs.display()
            ));
        }
    }
    Ok(())
}
