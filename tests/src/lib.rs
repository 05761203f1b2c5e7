//! Helpers shared by the end-to-end tests: where the built binaries are, how
//! to run `pbs archive ...`, and how to make and compare directory trees.

pub mod cluster;
pub mod db;
pub mod etcd;
pub mod evil;
pub mod garage;
pub mod group;
pub mod ha;
pub mod two_pbs;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use sha2::{Digest, Sha256};

/// Folder holding the workspace's binaries of the profile the tests run in
/// (`target/<profile>`); override with `PULLBACK_BIN_DIR`.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PULLBACK_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(|p| p.to_path_buf())
        .expect("target/<profile> folder")
}

/// Path of one workspace binary; panics with a hint when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not found: run `cargo build --workspace` (same profile) before the tests",
        p.display()
    );
    p
}

/// What one run of `pbs` did.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl From<std::process::Output> for Run {
    fn from(out: std::process::Output) -> Run {
        Run {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

/// `pbs archive CMD --archive DIR ARGS...` on one archive folder.
#[derive(Clone, Debug)]
pub struct Pbs {
    pub archive: PathBuf,
    /// A PBS config to pass (`--config`): e.g. one whose archive is in a bucket.
    pub config: Option<PathBuf>,
}

impl Pbs {
    pub fn new(archive: impl Into<PathBuf>) -> Self {
        Pbs {
            archive: archive.into(),
            config: None,
        }
    }

    /// The archive of PBS config `config` (`[archive] path` is `archive`).
    pub fn with_config(archive: impl Into<PathBuf>, config: impl Into<PathBuf>) -> Self {
        Pbs {
            archive: archive.into(),
            config: Some(config.into()),
        }
    }

    /// The command, not started: `args[0]` is the archive subcommand.
    pub fn command<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let mut c = Command::new(bin("pbs"));
        c.arg("archive");
        if let Some((cmd, rest)) = args.split_first() {
            c.arg(cmd).arg("--archive").arg(&self.archive);
            if let Some(cfg) = &self.config {
                c.arg("--config").arg(cfg);
            }
            c.args(rest);
        }
        c.env_remove("PULLBACK_LOG").stdin(Stdio::null());
        c
    }

    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Run {
        Run::from(self.command(args).output().expect("start the pbs binary"))
    }

    /// Run and require exit status 0.
    pub fn ok<S: AsRef<OsStr>>(&self, args: &[S]) -> Run {
        let r = self.run(args);
        assert!(
            r.status.success(),
            "pbs archive {} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            args.iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" "),
            r.status,
            r.stdout,
            r.stderr
        );
        r
    }

    /// Run with `--json` appended, require success, parse stdout.
    pub fn json<S: AsRef<OsStr>>(&self, args: &[S]) -> serde_json::Value {
        let mut v: Vec<&OsStr> = args.iter().map(|a| a.as_ref()).collect();
        v.push(OsStr::new("--json"));
        self.ok(&v).json()
    }

    /// `list --json`, as an array.
    pub fn list(&self) -> Vec<serde_json::Value> {
        match self.json(&["list"]) {
            serde_json::Value::Array(a) => a,
            other => panic!("list --json is not an array: {other}"),
        }
    }

    /// `list --json`, generation names only.
    pub fn generations(&self) -> Vec<String> {
        self.list()
            .iter()
            .map(|g| {
                g["generation"]
                    .as_str()
                    .expect("generation name")
                    .to_owned()
            })
            .collect()
    }
}

/// What a tree entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    File { size: u64, sha256: String },
    Dir,
    Symlink { target: Vec<u8> },
}

/// One entry of a tree: kind, permission bits and mtime (not for symlinks,
/// whose own mode and mtime are not kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    pub mode: Option<u32>,
    pub mtime_ns: Option<i64>,
}

/// A directory tree by relative path (raw bytes, `/`-separated); the root
/// itself is not part of it.
pub type Tree = BTreeMap<Vec<u8>, Meta>;

pub fn sha256_hex(data: &[u8]) -> String {
    to_hex(&Sha256::digest(data))
}

pub fn to_hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

pub fn file_sha256(p: &Path) -> String {
    let mut h = Sha256::new();
    let mut f = fs::File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    std::io::copy(&mut f, &mut h).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    to_hex(&h.finalize())
}

/// Every entry below `root`: content digests, modes, mtimes, link targets.
pub fn snapshot(root: &Path) -> Tree {
    fn walk(root: &Path, rel: &[u8], out: &mut Tree) {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(OsStr::from_bytes(rel))
        };
        let rd = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for ent in rd {
            let ent = ent.expect("read_dir entry");
            let mut r = rel.to_vec();
            if !r.is_empty() {
                r.push(b'/');
            }
            r.extend_from_slice(ent.file_name().as_bytes());
            let p = ent.path();
            let m = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let ft = m.file_type();
            let mtime = m.mtime() * 1_000_000_000 + m.mtime_nsec();
            let mode = m.permissions().mode() & 0o7777;
            if ft.is_symlink() {
                let target = fs::read_link(&p).expect("read_link");
                let meta = Meta {
                    kind: Kind::Symlink {
                        target: target.as_os_str().as_bytes().to_vec(),
                    },
                    mode: None,
                    mtime_ns: None,
                };
                out.insert(r, meta);
            } else if ft.is_dir() {
                let meta = Meta {
                    kind: Kind::Dir,
                    mode: Some(mode),
                    mtime_ns: Some(mtime),
                };
                out.insert(r.clone(), meta);
                walk(root, &r, out);
            } else if ft.is_file() {
                let meta = Meta {
                    kind: Kind::File {
                        size: m.len(),
                        sha256: file_sha256(&p),
                    },
                    mode: Some(mode),
                    mtime_ns: Some(mtime),
                };
                out.insert(r, meta);
            } else {
                panic!("{}: unexpected file type in a test tree", p.display());
            }
        }
    }
    let mut out = Tree::new();
    walk(root, b"", &mut out);
    out
}

/// Describe how two trees differ (empty when they are equal).
pub fn tree_diff(expected: &Tree, actual: &Tree) -> String {
    let mut s = String::new();
    let mut n = 0;
    for (p, e) in expected {
        let name = String::from_utf8_lossy(p);
        match actual.get(p) {
            None => {
                let _ = writeln!(s, "  missing {name:?}: expected {e:?}");
                n += 1;
            }
            Some(a) if a != e => {
                let _ = writeln!(s, "  differs {name:?}: expected {e:?}, got {a:?}");
                n += 1;
            }
            _ => {}
        }
    }
    for (p, a) in actual {
        if !expected.contains_key(p) {
            let _ = writeln!(s, "  extra {:?}: {a:?}", String::from_utf8_lossy(p));
            n += 1;
        }
    }
    if n > 0 {
        format!("{n} entries differ:\n{s}")
    } else {
        s
    }
}

#[track_caller]
pub fn assert_same_tree(expected: &Tree, actual: &Tree, what: &str) {
    let d = tree_diff(expected, actual);
    assert!(d.is_empty(), "{what}: {d}");
}

/// A small, seeded PRNG (xorshift64*): the tests need reproducible data,
/// not good randomness.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(n);
        v
    }

    /// Text-like bytes: numbered rows of words and hex numbers. Compresses
    /// about 3:1, so it is neither trivial nor incompressible.
    pub fn text(&mut self, n: usize) -> Vec<u8> {
        const WORDS: [&str; 12] = [
            "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
            "juliet", "kilo", "lima",
        ];
        let mut v = Vec::with_capacity(n + 80);
        let mut row = self.below(1 << 20);
        while v.len() < n {
            let x = self.next_u64();
            let w = WORDS[(x % 12) as usize];
            let w2 = WORDS[((x >> 8) % 12) as usize];
            let _ = writeln!(
                StrBuf(&mut v),
                "{row}\t{w} {w2}\t{:x}\t{}",
                x >> 24,
                (x >> 40) % 1000
            );
            row += 1;
        }
        v.truncate(n);
        v
    }
}

struct StrBuf<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for StrBuf<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Write `data` to `path`, creating parent folders.
pub fn write(path: &Path, data: &[u8]) {
    if let Some(d) = path.parent() {
        fs::create_dir_all(d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
    }
    fs::write(path, data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Every `.pack` file of an archive, with its size, largest first.
pub fn packs(archive: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let root = archive.join("packs");
    for sub in fs::read_dir(&root).into_iter().flatten() {
        let sub = sub.expect("packs entry").path();
        for p in fs::read_dir(&sub).into_iter().flatten() {
            let p = p.expect("pack entry").path();
            if p.extension() == Some(OsStr::new("pack")) {
                let len = fs::metadata(&p).expect("pack metadata").len();
                out.push((p, len));
            }
        }
    }
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

/// The archive key of a pack file (`packs/xx/<id>.pack`).
pub fn pack_key(archive: &Path, pack: &Path) -> String {
    pack.strip_prefix(archive)
        .expect("pack inside the archive")
        .to_str()
        .expect("UTF-8 key")
        .to_owned()
}

/// Restore `gen` into a fresh folder below `parent` and snapshot it.
pub fn restore_snapshot(pbs: &Pbs, gen: &str, parent: &Path) -> Tree {
    let to = parent.join(format!("restore-{}", gen.replace('/', "-")));
    if to.exists() {
        fs::remove_dir_all(&to).expect("clear the old restore");
    }
    pbs.ok(&[
        "restore",
        gen,
        "--to",
        to.to_str().expect("UTF-8 temp path"),
    ]);
    let t = snapshot(&to);
    fs::remove_dir_all(&to).expect("remove the restore");
    t
}
