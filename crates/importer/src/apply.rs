//! Putting a received generation in place on a clone, so that the previous
//! good copy survives any failure, a crash included.
//!
//! 1. restore the generation into `<restore_dir>.staging`, then read every
//!    file back and check it against the SHA-256 of the generation's file
//!    list. What the copy in the restore folder already has (the generation
//!    named in `restored.json`, usually the previous one) is copied from it in
//!    the kernel; only the chunks that changed are decoded from the store.
//!    That copy is not trusted: hooks and people had it after it was checked,
//!    so whatever is taken from it is proven by the digest of the file it
//!    ends up in, and a file that does not match is rebuilt from the store
//!    alone (see `archive::reuse`);
//! 2. write the journal `swap.json` (phase "swapped"), then exchange the
//!    staging folder and the restore folder in one `renameat2(RENAME_EXCHANGE)`
//!    (a plain rename when there is no previous copy);
//! 3. the caller runs the import and verify hooks;
//! 4. success: the journal is removed, `restored.json` names the generation
//!    now in place and the previous copy (now in `.staging`) is deleted;
//!    failure: the folders are exchanged back.
//!
//! At start-up, a journal left by a crash in step 3 means the hooks never
//! finished: the folders are exchanged back.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use archive::reuse::Previous;
use archive::{Archive, GenId, Node};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Journal {
    pub generation: String,
    /// The restore folder held a previous copy (now in the staging folder).
    pub had_previous: bool,
    /// Inode of the staged folder: after a crash, whether the restore folder
    /// has it tells whether the exchange happened.
    pub staged_ino: u64,
}

/// `STATE_DIR/restored.json`: the generation the restore folder was last
/// filled with, written once an import succeeded. Only a hint of where the
/// next import can take unchanged content from: a wrong or stale one costs
/// time, never correctness (everything taken is checked).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Restored {
    pub generation: String,
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

    fn restored_path(&self) -> PathBuf {
        self.state_dir.join("restored.json")
    }

    /// The file list of the generation the restore folder holds, if it is
    /// known and still in the store.
    fn restored_list(&self, ar: &Archive) -> Option<(GenId, Vec<Node>)> {
        let r: Restored = wire::state::read_json(&self.restored_path()).ok()??;
        let gen = ar.resolve(&r.generation).ok()?;
        let nodes = ar.manifest(&ar.record(&gen).ok()?).ok()?;
        Some((gen, nodes))
    }

    /// Step 1: rebuild `gen` in the staging folder and check every file
    /// (read back, against its SHA-256). Returns the number of files checked.
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
        let held = self.restored_list(ar);
        let prev = held.as_ref().map(|(_, nodes)| Previous {
            dir: &self.restore_dir,
            nodes,
        });
        archive::restore::prepare_target(&staging)?;
        let r = ar
            .restore_checked(&nodes, &staging, prev)
            .with_context(|| format!("rebuilding {gen} in {}", staging.display()))?;
        tracing::info!(
            generation = %gen,
            from = %held.as_ref().map_or(String::new(), |(g, _)| g.to_string()),
            reused_bytes = r.reused_bytes,
            decoded_bytes = r.decoded_bytes,
            rebuilt = r.rebuilt,
            "staged"
        );
        Ok(r.restore.files)
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
        let done = self.journal()?;
        if j.exists() {
            fs::remove_file(&j).with_context(|| format!("removing {}", j.display()))?;
            fsync_dir(&self.state_dir)?;
        }
        // A hint for the next import; it failing to be written only costs time.
        if let Some(done) = done {
            let r = Restored {
                generation: done.generation,
            };
            if let Err(e) = wire::state::write_json_atomic(&self.restored_path(), &r) {
                tracing::warn!("{}: {e}", self.restored_path().display());
                let _ = fs::remove_file(self.restored_path());
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use archive::{IngestOptions, SourceName};

    struct Clone {
        _t: tempfile::TempDir,
        src: PathBuf,
        ar: Archive,
        ap: Applier,
    }

    fn clone() -> Clone {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(&src).unwrap();
        let ar = Archive::init(&t.path().join("store")).unwrap();
        let ap = Applier {
            restore_dir: t.path().join("restore"),
            state_dir: t.path().join("state"),
        };
        fs::create_dir_all(&ap.state_dir).unwrap();
        Clone { _t: t, src, ar, ap }
    }

    /// Reproducible bytes that do not compress away.
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    impl Clone {
        fn ingest(&self, dump: &[u8]) -> GenId {
            fs::write(self.src.join("dump.sql"), dump).unwrap();
            let opts = IngestOptions {
                reread: true,
                ..Default::default()
            };
            let s = SourceName::new("db").unwrap();
            self.ar.ingest(&s, &self.src, &opts).unwrap().record.id()
        }

        fn import(&self, gen: &GenId) -> u64 {
            let files = self.ap.stage(&self.ar, gen).unwrap();
            self.ap.swap_in(gen).unwrap();
            self.ap.finish().unwrap();
            files
        }

        fn restored(&self) -> Option<String> {
            wire::state::read_json::<Restored>(&self.ap.restored_path())
                .unwrap()
                .map(|r| r.generation)
        }
    }

    #[test]
    fn each_import_names_what_it_left_and_a_changed_copy_is_not_trusted() {
        let c = clone();
        let v1 = noise(1, 1 << 20);
        let mut v2 = v1.clone();
        v2[600_000..600_010].copy_from_slice(b"0123456789");
        let g1 = c.ingest(&v1);
        let g2 = c.ingest(&v2);
        assert_eq!(c.import(&g1), 1);
        assert_eq!(c.restored(), Some(g1.to_string()));
        assert_eq!(fs::read(c.ap.restore_dir.join("dump.sql")).unwrap(), v1);

        // Someone edits the restored copy but keeps its size and time.
        let p = c.ap.restore_dir.join("dump.sql");
        let m = fs::metadata(&p).unwrap();
        let mut edited = v1.clone();
        edited[10] ^= 1;
        let mut perm = m.permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o644);
        fs::set_permissions(&p, perm).unwrap();
        fs::write(&p, &edited).unwrap();
        fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(m.modified().unwrap())
            .unwrap();

        assert_eq!(c.import(&g2), 1);
        assert_eq!(fs::read(c.ap.restore_dir.join("dump.sql")).unwrap(), v2);
        assert_eq!(c.restored(), Some(g2.to_string()));
        assert!(!c.ap.staging().exists());
    }

    #[test]
    fn a_rolled_back_import_leaves_the_hint_on_the_copy_in_place() {
        let c = clone();
        let v1 = noise(2, 300_000);
        let g1 = c.ingest(&v1);
        let g2 = c.ingest(&noise(3, 300_000));
        c.import(&g1);
        c.ap.stage(&c.ar, &g2).unwrap();
        c.ap.swap_in(&g2).unwrap();
        assert!(c.ap.roll_back().unwrap());
        assert_eq!(fs::read(c.ap.restore_dir.join("dump.sql")).unwrap(), v1);
        assert_eq!(c.restored(), Some(g1.to_string()));
        // A stale or bogus hint only costs time.
        wire::state::write_json_atomic(
            &c.ap.restored_path(),
            &Restored {
                generation: "db/99".into(),
            },
        )
        .unwrap();
        c.import(&g2);
        assert_eq!(c.restored(), Some(g2.to_string()));
        fs::write(c.ap.restored_path(), b"not json").unwrap();
        c.import(&g1);
        assert_eq!(fs::read(c.ap.restore_dir.join("dump.sql")).unwrap(), v1);
    }
}
