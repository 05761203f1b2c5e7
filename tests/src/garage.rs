//! A real S3 server for the tests: Garage (single node, sqlite metadata, fsync on),
//! started on loopback in a temporary folder, with one bucket and one key.
//! `make test-deps` installs the binary (`cargo install garage --locked`) when missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::db::free_port;

/// The access key the tests import into every Garage (Garage's key ids are `GK` + 24 hex).
pub const KEY_ID: &str = "GK0123456789abcdef01234567";
pub const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
pub const BUCKET: &str = "pullback";
pub const REGION: &str = "garage";

/// The garage binary: on PATH, or where `cargo install` puts it.
pub fn garage_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("garage"))
            .find(|p| p.is_file())
    }) {
        return p;
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let p = home.join(".cargo/bin/garage");
    assert!(
        p.is_file(),
        "garage not found on PATH nor in ~/.cargo/bin: run `make test-deps` (it runs `cargo install garage --locked`)"
    );
    p
}

pub struct Garage {
    child: Child,
    conf: PathBuf,
    pub s3_port: u16,
    pub dir: PathBuf,
}

impl Garage {
    /// Start Garage in `dir` (created), lay out its one node, create the bucket and key.
    /// Ports are picked free, then bound by Garage: a port taken meanwhile by another test
    /// makes it exit, and it is started again on others (three attempts).
    pub fn start(dir: &Path) -> Garage {
        let mut why = String::new();
        for attempt in 0..3 {
            let at = dir.join(format!("try-{attempt}"));
            match Garage::try_start(&at) {
                Ok(g) => return g,
                Err(e) => why = format!("{why}\nattempt {}: {e}", attempt + 1),
            }
        }
        panic!("garage did not start:{why}");
    }

    fn try_start(dir: &Path) -> Result<Garage, String> {
        std::fs::create_dir_all(dir).expect("garage dir");
        let (rpc, s3, admin) = (free_port(), free_port(), free_port());
        let conf = dir.join("garage.toml");
        let text = format!(
            r#"metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "sqlite"
metadata_fsync = true
data_fsync = true
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{SECRET}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
"#,
            d = dir.display()
        );
        std::fs::write(&conf, text).expect("garage config");
        let log = std::fs::File::create(dir.join("garage.log")).expect("garage log");
        let child = Command::new(garage_bin())
            .arg("-c")
            .arg(&conf)
            .arg("server")
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start garage");
        let mut g = Garage {
            child,
            conf,
            s3_port: s3,
            dir: dir.to_path_buf(),
        };
        g.setup()?;
        Ok(g)
    }

    /// `garage -c CONF ARGS`: its stdout, or why it failed.
    fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(garage_bin())
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run garage");
        if !out.status.success() {
            return Err(format!(
                "garage {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `try_cli` again until it succeeds (a layout just applied may not be in force yet),
    /// for up to 60 s or until the server exits.
    fn cli_until(&mut self, args: &[&str]) -> Result<String, String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = self.child.try_wait().expect("garage status") {
                return Err(format!(
                    "garage exited ({st}): {}",
                    std::fs::read_to_string(self.dir.join("garage.log")).unwrap_or_default()
                ));
            }
            match self.try_cli(args) {
                Ok(out) => return Ok(out),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    fn setup(&mut self) -> Result<(), String> {
        // The node id, once the server answers (another Garage on the port would answer
        // with its own id: the layout step then fails and the attempt is over).
        let id = self.cli_until(&["node", "id", "-q"])?;
        let id = id.trim().split('@').next().unwrap_or_default().to_string();
        self.cli_until(&["layout", "assign", "-z", "dc1", "-c", "1G", &id])?;
        self.cli_until(&["layout", "apply", "--version", "1"])?;
        self.cli_until(&["bucket", "create", BUCKET])?;
        self.cli_until(&[
            "key",
            "import",
            "--yes",
            "-n",
            "pullback-tests",
            KEY_ID,
            SECRET,
        ])?;
        self.cli_until(&[
            "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", KEY_ID,
        ])?;
        Ok(())
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// In `dir`: a Garage (`dir/garage`) and `pbs archive` on its bucket under `prefix`
    /// (config `dir/pbs.toml`, local folder `dir/archive`).
    pub fn with_pbs(dir: &Path, prefix: &str) -> (Garage, crate::Pbs) {
        let garage = Garage::start(&dir.join("garage"));
        let local = dir.join("archive");
        let cfg = garage.pbs_config(&dir.join("pbs.toml"), &local, prefix);
        (garage, crate::Pbs::with_config(&local, cfg))
    }

    /// `[archive.s3]` for a PBS config: this Garage's bucket under `prefix`.
    pub fn archive_s3_toml(&self, prefix: &str) -> String {
        format!(
            "[archive.s3]\nendpoint = \"{}\"\nbucket = \"{BUCKET}\"\nprefix = \"{prefix}\"\nregion = \"{REGION}\"\naccess_key_id = \"{KEY_ID}\"\nsecret_access_key = \"{SECRET}\"\n",
            self.endpoint()
        )
    }

    /// A PBS config file at `at` whose archive is in this Garage under `prefix`, with
    /// `scratch` as the local folder.
    pub fn pbs_config(&self, at: &Path, scratch: &Path, prefix: &str) -> PathBuf {
        let text = format!(
            "[archive]\npath = \"{}\"\n{}",
            scratch.display(),
            self.archive_s3_toml(prefix)
        );
        std::fs::write(at, text).expect("pbs config");
        at.to_path_buf()
    }

    /// Every object key under `prefix` in the bucket, as `garage` lists them through S3.
    pub fn objects(&self, prefix: &str) -> Vec<String> {
        let list = String::from_utf8_lossy(&s3_request(
            self,
            "GET",
            &format!("/{BUCKET}?list-type=2&max-keys=100000&prefix={prefix}%2F"),
            &[],
        ))
        .into_owned();
        let mut out = Vec::new();
        let mut rest = list.as_str();
        while let Some(i) = rest.find("<Key>") {
            rest = &rest[i + 5..];
            if let Some(j) = rest.find("</Key>") {
                out.push(rest[..j].to_string());
                rest = &rest[j..];
            }
        }
        out
    }
}

/// One signed S3 request with curl's AWS SigV4 support (the tests read and write the
/// archive through the pbs binary; this is for looking at and damaging objects).
fn s3_request(g: &Garage, method: &str, path: &str, extra: &[&str]) -> Vec<u8> {
    let out = Command::new("curl")
        .args(["-sS", "-f", "-X", method])
        .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
        .arg("--aws-sigv4")
        .arg(format!("aws:amz:{REGION}:s3"))
        .arg("--user")
        .arg(format!("{KEY_ID}:{SECRET}"))
        .args(extra)
        .arg(format!("{}{path}", g.endpoint()))
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {method} {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// GET one object's bytes.
pub fn get_object(g: &Garage, key: &str) -> Vec<u8> {
    s3_request(g, "GET", &format!("/{BUCKET}/{key}"), &[])
}

/// PUT one object (replacing it): what a bit flip in the store, or a hostile writer with
/// the bucket's key, looks like to the archive.
pub fn put_object(g: &Garage, key: &str, data: &[u8]) {
    let f = g.dir.join("put.tmp");
    std::fs::write(&f, data).expect("write put body");
    s3_request(
        g,
        "PUT",
        &format!("/{BUCKET}/{key}"),
        &["--data-binary", &format!("@{}", f.display())],
    );
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
