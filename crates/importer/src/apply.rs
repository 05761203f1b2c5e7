//! Putting a received generation in place on a clone, so that the previous
//! good copy survives any failure, a crash included.
//!
//! 1. restore the generation into `<restore_dir>.staging` (every chunk checked
//!    against its SHA-256 as it is written), then re-hash every file against
//!    the generation's file list;
//! 2. write the journal `swap.json` (phase "swapped"), then exchange the
//!    staging folder and the restore folder in one `renameat2(RENAME_EXCHANGE)`
//!    (a plain rename when there is no previous copy);
//! 3. the caller runs the import and verify hooks;
//! 4. success: the previous copy (now in `.staging`) is deleted and the
//!    journal removed; failure: the folders are exchanged back.
//!
//! At start-up, a journal left by a crash in step 3 means the hooks never
//! finished: the folders are exchanged back.

use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use archive::{Archive, GenId, NodeKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Journal {
    pub generation: String,
    /// The restore folder held a previous copy (now in the staging folder).
    pub had_previous: bool,
    /// Inode of the staged folder: after a crash, whether the restore folder
    /// has it tells whether the exchange happened.
    pub staged_ino: u64,
}

pub struct Applier {
    pub restore_dir: PathBuf,
    pub state_dir: PathBuf,
}

fn exchange(a: &Path, b: &Path) -> Result<()> {
    let ca = CString::new(a.as_os_str().as_bytes())?;
    let cb = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: two valid NUL-terminated paths; no memory is retained.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("exchanging {} and {}", a.display(), b.display()));
    }
    Ok(())
}

fn fsync_dir(p: &Path) -> Result<()> {
    fs::File::open(p)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("fsync {}", p.display()))
}

/// SHA-256 of the file `rel` under `root`, opened without following a symlink.
fn sha256_file(root: &archive::beneath::Beneath, rel: &[u8]) -> Result<[u8; 32]> {
    let p = root.display(rel);
    let mut f = root
        .open_file(rel)
        .with_context(|| format!("reading {}", p.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", p.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

impl Applier {
    pub fn staging(&self) -> PathBuf {
        let mut s = self.restore_dir.as_os_str().to_owned();
        s.push(".staging");
        PathBuf::from(s)
    }

    fn journal_path(&self) -> PathBuf {
        self.state_dir.join("swap.json")
    }

    pub fn journal(&self) -> Result<Option<Journal>> {
        wire::state::read_json(&self.journal_path()).map_err(|e| anyhow!(e))
    }

    /// Step 1: rebuild `gen` in the staging folder and check every file.
    /// Returns the number of files checked.
    pub fn stage(&self, ar: &Archive, gen: &GenId) -> Result<u64> {
        let staging = self.staging();
        if staging.exists() {
            fs::remove_dir_all(&staging)
                .with_context(|| format!("removing stale {}", staging.display()))?;
        }
        if let Some(parent) = staging.parent() {
            fs::create_dir_all(parent)?;
        }
        let rec = ar.record(gen)?;
        let nodes = ar.manifest(&rec)?;
        archive::restore::prepare_target(&staging)?;
        ar.restore_nodes(&nodes, &staging)
            .with_context(|| format!("rebuilding {gen} in {}", staging.display()))?;
        let root = archive::beneath::Beneath::open(&staging)
            .with_context(|| format!("opening {}", staging.display()))?;
        let mut checked = 0;
        for n in nodes.iter().filter(|n| n.kind == NodeKind::File) {
            let got = sha256_file(&root, &n.path)?;
            if Some(got) != n.digest.map(|d| d.0) {
                bail!(
                    "{}: content does not match the backup signature (SHA-256) of {gen}",
                    n.path_lossy()
                );
            }
            checked += 1;
        }
        Ok(checked)
    }

    /// Step 2: swap the staged copy in.
    pub fn swap_in(&self, gen: &GenId) -> Result<()> {
        let staging = self.staging();
        let had_previous = self.restore_dir.exists();
        let staged_ino = fs::metadata(&staging)
            .with_context(|| format!("{}", staging.display()))?
            .ino();
        wire::state::write_json_atomic(
            &self.journal_path(),
            &Journal {
                generation: gen.to_string(),
                had_previous,
                staged_ino,
            },
        )
        .map_err(|e| anyhow!(e))?;
        if had_previous {
            exchange(&staging, &self.restore_dir)?;
        } else {
            fs::rename(&staging, &self.restore_dir).with_context(|| {
                format!(
                    "renaming {} to {}",
                    staging.display(),
                    self.restore_dir.display()
                )
            })?;
        }
        if let Some(parent) = self.restore_dir.parent() {
            fsync_dir(parent)?;
        }
        Ok(())
    }

    /// Step 4, success: drop the previous copy.
    pub fn finish(&self) -> Result<()> {
        // The journal goes first: once it is gone nothing will swap back, and
        // a leftover previous copy is only a stale staging folder.
        let j = self.journal_path();
        if j.exists() {
            fs::remove_file(&j).with_context(|| format!("removing {}", j.display()))?;
            fsync_dir(&self.state_dir)?;
        }
        let staging = self.staging();
        if staging.exists() {
            fs::remove_dir_all(&staging)
                .with_context(|| format!("removing previous copy {}", staging.display()))?;
        }
        Ok(())
    }

    /// Step 4, failure (or recovery after a crash): put the previous copy
    /// back. Returns whether anything was undone.
    pub fn roll_back(&self) -> Result<bool> {
        let Some(j) = self.journal()? else {
            // No swap happened: only a stale staging folder can be left.
            let staging = self.staging();
            if staging.exists() {
                fs::remove_dir_all(&staging)?;
            }
            return Ok(false);
        };
        let staging = self.staging();
        let swapped = fs::metadata(&self.restore_dir).map(|m| m.ino()).ok() == Some(j.staged_ino);
        if swapped {
            if j.had_previous {
                exchange(&staging, &self.restore_dir)?;
            } else {
                fs::remove_dir_all(&self.restore_dir)?;
            }
        }
        if let Some(parent) = self.restore_dir.parent() {
            fsync_dir(parent)?;
        }
        if staging.exists() {
            fs::remove_dir_all(&staging)?;
        }
        fs::remove_file(self.journal_path())?;
        Ok(true)
    }
}
