//! Helpers for the database end-to-end tests (`tests/tests/databases.rs`):
//! the local PostgreSQL and MariaDB servers and their command-line clients,
//! table digests computed independently of the hooks, and a [`Trio`] of real
//! `pbs`, `importer` and `exporter` daemons on loopback, wired like
//! `deploy/demo.sh`, with the hooks of `deploy/hooks/<kind>/`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::{bin, sha256_hex};

/// How long anything may take before a test gives up (the machine may be busy).
pub const DEADLINE: Duration = Duration::from_secs(120);

/// The repository's `deploy/hooks/<kind>` folder.
pub fn hooks_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/hooks")
        .join(kind)
        .canonicalize()
        .unwrap_or_else(|e| panic!("deploy/hooks/{kind}: {e}"))
}

/// A name unique to this test process: `<prefix>_<pid>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", std::process::id())
}

fn output_text(o: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The last `n` bytes of `s` (or a little more, to start on a character).
pub fn tail(s: &str, n: usize) -> &str {
    let mut i = s.len().saturating_sub(n);
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    &s[i..]
}

/// Poll `f` until it returns `Some`, or panic naming `what` after [`DEADLINE`].
#[track_caller]
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "gave up after {DEADLINE:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// The first `name` found in PATH.
pub fn which(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("{name} not found in PATH (see the Makefile's APT_PACKAGES)"))
}

// ---------------------------------------------------------------- servers

/// Which database server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Postgres,
    Mariadb,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Postgres => "postgres",
            Kind::Mariadb => "mariadb",
        }
    }

    /// The hooks' connection variables for the local test server.
    pub fn env(self) -> Vec<(String, String)> {
        let v: &[(&str, &str)] = match self {
            Kind::Postgres => &[
                ("PULLBACK_PG_HOST", "127.0.0.1"),
                ("PULLBACK_PG_PORT", "5432"),
                ("PULLBACK_PG_USER", "postgres"),
            ],
            Kind::Mariadb => &[
                ("PULLBACK_MARIADB_HOST", "127.0.0.1"),
                ("PULLBACK_MARIADB_PORT", "3306"),
                ("PULLBACK_MARIADB_USER", "root"),
                ("PULLBACK_MARIADB_PASSWORD", ""),
            ],
        };
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Run one SQL text (several statements allowed) in `db`; stdout, or the error.
    pub fn try_sql(self, db: &str, sql: &str) -> Result<String, String> {
        let mut c = match self {
            Kind::Postgres => {
                let mut c = Command::new("psql");
                c.args(["-X", "-q", "-A", "-t", "-w", "-v", "ON_ERROR_STOP=1"])
                    .args(["-h", "127.0.0.1", "-p", "5432", "-U", "postgres", "-d", db])
                    .env("PGOPTIONS", "-c client_min_messages=warning");
                c
            }
            Kind::Mariadb => {
                let mut c = Command::new("mariadb");
                c.args(["-h", "127.0.0.1", "-P", "3306", "-u", "root", "--batch"])
                    .args(["--skip-column-names", "--default-character-set=utf8mb4"]);
                if !db.is_empty() {
                    c.arg(format!("--database={db}"));
                }
                c
            }
        };
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the {} client: {e}", self.name()))?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let text = sql.to_owned();
        let feeder = thread::spawn(move || {
            let _ = stdin.write_all(text.as_bytes());
        });
        let out = child
            .wait_with_output()
            .map_err(|e| format!("waiting for the {} client: {e}", self.name()))?;
        let _ = feeder.join();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(output_text(&out))
        }
    }

    /// [`Kind::try_sql`] that panics on an error.
    #[track_caller]
    pub fn sql(self, db: &str, sql: &str) -> String {
        self.try_sql(db, sql)
            .unwrap_or_else(|e| panic!("{} in {db:?} failed: {e}\nSQL: {sql}", self.name()))
    }

    /// One value.
    #[track_caller]
    pub fn value(self, db: &str, sql: &str) -> String {
        self.sql(db, sql).trim().to_owned()
    }

    /// The server answers, or is started with the machine's usual command.
    pub fn ensure_running(self) {
        let up = || self.try_sql(self.admin_db(), "SELECT 1").is_ok();
        if up() {
            return;
        }
        let mut c = match self {
            Kind::Postgres => {
                let ver = fs::read_dir("/etc/postgresql")
                    .ok()
                    .and_then(|d| d.flatten().map(|e| e.file_name()).max())
                    .expect("PostgreSQL is not installed (no /etc/postgresql)");
                let mut c = Command::new("pg_ctlcluster");
                c.arg("--skip-systemctl-redirect")
                    .arg(ver)
                    .args(["main", "start"]);
                c
            }
            Kind::Mariadb => {
                let mut c = Command::new("start-stop-daemon");
                c.args(["--start", "--oknodo", "--background", "--exec"])
                    .arg("/usr/sbin/mariadbd");
                c
            }
        };
        let out = c
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.name()));
        eprintln!("started {}: {}", self.name(), output_text(&out));
        wait_for(&format!("{} to answer on loopback", self.name()), || {
            up().then_some(())
        });
    }

    fn admin_db(self) -> &'static str {
        match self {
            Kind::Postgres => "postgres",
            Kind::Mariadb => "",
        }
    }

    /// Drop `db` (and the hooks' leftovers `db__pb_new`, `db__pb_old`).
    pub fn drop_db(self, db: &str) {
        for d in [
            db.to_owned(),
            format!("{db}__pb_new"),
            format!("{db}__pb_old"),
        ] {
            let sql = match self {
                Kind::Postgres => format!("DROP DATABASE IF EXISTS \"{d}\" WITH (FORCE)"),
                Kind::Mariadb => format!("DROP DATABASE IF EXISTS `{d}`"),
            };
            if let Err(e) = self.try_sql(self.admin_db(), &sql) {
                eprintln!("cleanup: {e}");
            }
        }
    }

    /// Drop (if left over) and create an empty database.
    pub fn create_db(self, db: &str) {
        self.drop_db(db);
        let sql = match self {
            Kind::Postgres => format!("CREATE DATABASE \"{db}\""),
            Kind::Mariadb => format!("CREATE DATABASE `{db}` CHARACTER SET utf8mb4"),
        };
        self.sql(self.admin_db(), &sql);
    }

    pub fn exists(self, db: &str) -> bool {
        let sql = match self {
            Kind::Postgres => format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'"),
            Kind::Mariadb => format!(
                "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{db}'"
            ),
        };
        self.value(self.admin_db(), &sql) == "1"
    }

    /// Every ordinary table of `db`: row count and the SHA-256 of its rows'
    /// text, sorted (order-independent). Computed by the test's own queries,
    /// not the hooks' checksums.
    pub fn tables(self, db: &str) -> BTreeMap<String, TableDigest> {
        let list = match self {
            Kind::Postgres => self.sql(
                db,
                "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                   AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1",
            ),
            Kind::Mariadb => self.sql(
                db,
                "SELECT TABLE_NAME FROM information_schema.TABLES
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_TYPE = 'BASE TABLE' ORDER BY 1",
            ),
        };
        let mut out = BTreeMap::new();
        for t in list.lines().filter(|l| !l.is_empty()) {
            let sql = match self {
                Kind::Postgres => format!("COPY (SELECT * FROM ONLY {t}) TO STDOUT"),
                Kind::Mariadb => format!("SELECT * FROM `{t}`"),
            };
            let text = self.sql(db, &sql);
            let mut rows: Vec<&str> = text.lines().collect();
            rows.sort_unstable();
            let digest = sha256_hex(rows.join("\n").as_bytes());
            out.insert(
                t.to_owned(),
                TableDigest {
                    rows: rows.len() as u64,
                    sha256: digest,
                },
            );
        }
        out
    }
}

/// What [`Kind::tables`] reports for one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableDigest {
    pub rows: u64,
    pub sha256: String,
}

/// Total rows of a digest map.
pub fn total_rows(t: &BTreeMap<String, TableDigest>) -> u64 {
    t.values().map(|d| d.rows).sum()
}

/// Kills, until dropped, every server session connected to `db` (the import
/// hooks' `CLONE__pb_new`): an import that fails half-way.
pub struct SessionKiller {
    stop: Arc<AtomicBool>,
    kills: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl SessionKiller {
    pub fn start(kind: Kind, db: &str) -> SessionKiller {
        let stop = Arc::new(AtomicBool::new(false));
        let kills = Arc::new(AtomicU64::new(0));
        let (s, k, db) = (stop.clone(), kills.clone(), db.to_owned());
        let handle = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let n = match kind {
                    Kind::Postgres => kind
                        .try_sql(
                            "postgres",
                            &format!(
                                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                                 WHERE datname = '{db}'"
                            ),
                        )
                        .ok()
                        .and_then(|o| o.trim().parse::<u64>().ok())
                        .unwrap_or(0),
                    Kind::Mariadb => {
                        let ids = kind
                            .try_sql(
                                "",
                                &format!(
                                    "SELECT ID FROM information_schema.PROCESSLIST
                                     WHERE DB = '{db}' AND ID <> CONNECTION_ID()"
                                ),
                            )
                            .unwrap_or_default();
                        let kill: String = ids
                            .lines()
                            .filter(|l| !l.trim().is_empty())
                            .map(|id| format!("KILL CONNECTION {id};"))
                            .collect();
                        if kill.is_empty() || kind.try_sql("", &kill).is_err() {
                            0
                        } else {
                            ids.lines().filter(|l| !l.trim().is_empty()).count() as u64
                        }
                    }
                };
                k.fetch_add(n, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(20));
            }
        });
        SessionKiller {
            stop,
            kills,
            handle: Some(handle),
        }
    }

    /// Sessions killed so far.
    pub fn kills(&self) -> u64 {
        self.kills.load(Ordering::Relaxed)
    }

    pub fn stop(mut self) -> u64 {
        self.halt();
        self.kills()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for SessionKiller {
    fn drop(&mut self) {
        self.halt();
    }
}

/// A folder of client programs for the hooks' `PULLBACK_*_BINDIR`: `passthrough`
/// are links to the real ones; `killed` runs the real program but, while the
/// file `<dir>/KILL` exists, SIGKILLs it once its `--file=`/`--result-file=`
/// output passes 1 MiB (a dump that dies half-way), noting the size in
/// `<dir>/killed-at`.
pub fn client_dir(dir: &Path, passthrough: &[&str], killed: &str) -> PathBuf {
    fs::create_dir_all(dir).expect("client dir");
    for p in passthrough {
        std::os::unix::fs::symlink(which(p), dir.join(p)).expect("symlink a client");
    }
    let real = which(killed);
    let script = format!(
        r#"#!/bin/sh
# test wrapper: {killed} killed half-way while {dir}/KILL exists
[ -e '{dir}/KILL' ] || exec '{real}' "$@"
out=
for a in "$@"; do
  case $a in --file=*) out=${{a#--file=}} ;; --result-file=*) out=${{a#--result-file=}} ;; esac
done
[ -n "$out" ] || exec '{real}' "$@"
'{real}' "$@" &
pid=$!
while kill -0 $pid 2>/dev/null; do
  size=$(stat -c %s "$out" 2>/dev/null || echo 0)
  if [ "$size" -gt 1048576 ]; then
    kill -9 $pid
    echo "test wrapper: killed {killed} at $size bytes" >&2
    echo "$size" > '{dir}/killed-at'
    break
  fi
  sleep 0.01
done
wait $pid
"#,
        dir = dir.display(),
        real = real.display(),
    );
    let p = dir.join(killed);
    fs::write(&p, script).expect("write the wrapper");
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod the wrapper");
    dir.to_path_buf()
}

// ---------------------------------------------------------------- daemons

const T_NOTIFY: &str = "db-test-exporter-notifies-pbs";
const T_PULL: &str = "db-test-pbs-reads-the-exporter";
const T_PUSH: &str = "db-test-pbs-pushes-to-the-clone";
const T_CLONE: &str = "db-test-clone-pulls-from-the-pbs";
pub const T_ADMIN: &str = "db-test-admin-token-0123";

/// A free loopback port (bound to port 0, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// `GET path` with the admin token: (status code, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(DEADLINE))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: token {T_ADMIN}\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

/// Sum of every series of a metric in Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            (series.split('{').next()? == name).then(|| value.trim().parse::<f64>().ok())?
        })
        .map(|v| v as u64)
        .sum()
}

/// What `exporter run --json` said.
#[derive(Debug)]
pub struct ExportRun {
    pub ok: bool,
    pub run: Value,
    pub stderr: String,
}

impl ExportRun {
    /// The generation the PBS committed.
    #[track_caller]
    pub fn generation(&self) -> String {
        assert!(self.ok, "export failed: {:#}\n{}", self.run, self.stderr);
        self.run["committed_as"]
            .as_str()
            .expect("committed_as")
            .to_owned()
    }
}

/// `pbs`, `importer` and `exporter` daemons on free loopback ports, in a
/// temporary folder, configured as in `deploy/demo.sh` with one kind of hook.
/// Killed when dropped (and their logs printed if the test is failing).
pub struct Trio {
    pub dir: TempDir,
    pub source: String,
    pub pbs_port: u16,
    pub exporter_port: u16,
    pub importer_port: u16,
    children: Vec<(&'static str, Child)>,
}

impl Trio {
    /// Start the three daemons with `hooks` (a `deploy/hooks/<kind>` folder)
    /// and `env` added to their environment (the hooks inherit it).
    pub fn start(source: &str, hooks: &Path, env: &[(String, String)]) -> Trio {
        let dir = tempfile::Builder::new()
            .prefix("pullback-db-")
            .tempdir()
            .expect("temp dir");
        let w = dir.path();
        let (pp, pe, pi) = (free_port(), free_port(), free_port());
        let h = |n: &str| hooks.join(n).display().to_string();
        let files = [
            (
                "pbs.toml",
                format!(
                    r#"state_dir = "{w}/pbs"
[archive]
path = "{w}/pbs/archive"
[retention]
keep_last = 10
[server]
listen = "127.0.0.1:{pp}"
tokens = [{{ peer = "exporter", token = "{T_NOTIFY}" }}, {{ peer = "clone1", token = "{T_CLONE}" }}, {{ peer = "admin", token = "{T_ADMIN}" }}]
[[source]]
name = "{source}"
exporter = {{ name = "exporter", url = "http://127.0.0.1:{pe}", token = "{T_PULL}" }}
[[importer]]
name = "clone1"
url = "http://127.0.0.1:{pi}"
token = "{T_PUSH}"
"#,
                    w = w.display()
                ),
            ),
            (
                "exporter.toml",
                format!(
                    r#"source = "{source}"
backup_dir = "{w}/exporter/backup"
state_dir = "{w}/exporter"
schedule = "off"
attempts = 1
commit_timeout_secs = 120
[hooks]
export = "{export}"
timeout_secs = 120
[server]
listen = "127.0.0.1:{pe}"
tokens = [{{ peer = "pbs", token = "{T_PULL}" }}, {{ peer = "admin", token = "{T_ADMIN}" }}]
[[pbs]]
name = "pbs"
url = "http://127.0.0.1:{pp}"
token = "{T_NOTIFY}"
"#,
                    w = w.display(),
                    export = h("export"),
                ),
            ),
            (
                "importer.toml",
                format!(
                    r#"name = "clone1"
store = "{w}/clone/store"
restore_dir = "{w}/clone/restore"
state_dir = "{w}/clone"
[hooks]
import = "{import}"
verify = "{verify}"
timeout_secs = 120
[server]
listen = "127.0.0.1:{pi}"
tokens = [{{ peer = "pbs", token = "{T_PUSH}" }}, {{ peer = "admin", token = "{T_ADMIN}" }}]
[coordinator]
name = "pbs"
url = "http://127.0.0.1:{pp}"
token = "{T_CLONE}"
"#,
                    w = w.display(),
                    import = h("import"),
                    verify = h("verify"),
                ),
            ),
        ];
        for (name, text) in &files {
            fs::write(w.join(name), text).expect("write a config");
        }
        let mut trio = Trio {
            source: source.to_owned(),
            pbs_port: pp,
            exporter_port: pe,
            importer_port: pi,
            children: Vec::new(),
            dir,
        };
        for (name, port) in [("pbs", pp), ("importer", pi), ("exporter", pe)] {
            let w = trio.dir.path();
            let log = fs::File::create(w.join(format!("{name}.log"))).expect("daemon log");
            let child = Command::new(bin(name))
                .arg("--config")
                .arg(w.join(format!("{name}.toml")))
                .arg("serve")
                .envs(env.iter().map(|(k, v)| (k, v)))
                .env("PULLBACK_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {name}: {e}"));
            trio.children.push((name, child));
            let what = format!("{name} listening on 127.0.0.1:{port}");
            wait_for(&what, || {
                if let Some((_, c)) = trio.children.last_mut() {
                    if let Ok(Some(st)) = c.try_wait() {
                        panic!("{name} exited at start-up ({st}):\n{}", trio.log(name));
                    }
                }
                TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
            });
        }
        trio
    }

    pub fn config(&self, daemon: &str) -> PathBuf {
        self.dir.path().join(format!("{daemon}.toml"))
    }

    /// The exporter's backup folder (PULLBACK_BACKUP_DIR).
    pub fn backup_dir(&self) -> PathBuf {
        self.dir.path().join("exporter/backup")
    }

    /// A daemon's own log.
    pub fn log(&self, daemon: &str) -> String {
        fs::read_to_string(self.dir.path().join(format!("{daemon}.log"))).unwrap_or_default()
    }

    /// Every hook log, concatenated.
    pub fn hook_logs(&self) -> String {
        let mut s = String::new();
        for d in ["exporter/logs", "clone/logs"] {
            let mut files: Vec<_> = fs::read_dir(self.dir.path().join(d))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .collect();
            files.sort();
            for f in files {
                s += &format!("--- {}\n", f.display());
                s += &fs::read_to_string(&f).unwrap_or_default();
            }
        }
        s
    }

    /// `exporter run --json`: one export, returns once a PBS committed it (or not).
    pub fn export(&self) -> ExportRun {
        let out = Command::new(bin("exporter"))
            .arg("--config")
            .arg(self.config("exporter"))
            .args(["run", "--json"])
            .env_remove("PULLBACK_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("run exporter run");
        let stdout = String::from_utf8_lossy(&out.stdout);
        ExportRun {
            ok: out.status.success(),
            run: serde_json::from_str(&stdout).unwrap_or(Value::Null),
            stderr: format!("{}\n{}", output_text(&out), self.hook_logs()),
        }
    }

    /// `importer status` (`--json` parsed, or the text).
    pub fn importer_status(&self) -> Value {
        let out = self.importer_cli(true);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("importer status --json: {e}\n{}", output_text(&out)))
    }

    pub fn importer_status_text(&self) -> String {
        String::from_utf8_lossy(&self.importer_cli(false).stdout).into_owned()
    }

    fn importer_cli(&self, json: bool) -> Output {
        let mut c = Command::new(bin("importer"));
        c.arg("--config")
            .arg(self.config("importer"))
            .arg("status")
            .env_remove("PULLBACK_LOG");
        if json {
            c.arg("--json");
        }
        c.output().expect("run importer status")
    }

    /// The PBS's `GET /v1/status`.
    pub fn pbs_status(&self) -> Value {
        let (code, body) = http_get(self.pbs_port, "/v1/status").expect("pbs /v1/status");
        assert_eq!(code, 200, "pbs /v1/status: {body}");
        serde_json::from_str(&body).expect("pbs status JSON")
    }

    /// The newest generation the PBS holds for the source.
    pub fn pbs_newest(&self) -> Option<String> {
        self.pbs_status()["sources"][0]["newest"]["generation"]
            .as_str()
            .map(str::to_owned)
    }

    /// Wait until the clone reports `gen` imported and verified; panic if
    /// it reports a failure for it instead.
    #[track_caller]
    pub fn wait_imported(&self, gen: &str) -> Value {
        wait_for(&format!("the clone to import {gen}"), || {
            let st = self.importer_status();
            if st["last_valid"]["generation"] == gen && st["importing"].is_null() {
                return Some(st);
            }
            if st["last_failure"]["generation"] == gen && st["importing"].is_null() {
                panic!(
                    "the clone failed to import {gen}: {st:#}\n{}",
                    self.hook_logs()
                );
            }
            None
        })
    }

    /// Sum of a metric on a daemon's `/metrics` (admin token).
    pub fn metric(&self, port: u16, name: &str) -> u64 {
        let (code, body) = http_get(port, "/metrics").expect("GET /metrics");
        assert_eq!(code, 200, "/metrics: {body}");
        metric_sum(&body, name)
    }

    /// Bytes the exporter served to the PBS, and the PBS to the clone.
    pub fn bytes_sent(&self) -> (u64, u64) {
        (
            self.metric(self.exporter_port, "pullback_bytes_sent_total"),
            self.metric(self.pbs_port, "pullback_bytes_sent_total"),
        )
    }
}

impl Drop for Trio {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if thread::panicking() {
            for d in ["pbs", "exporter", "importer"] {
                eprintln!("===== {d} log (end)\n{}", tail(&self.log(d), 6000));
            }
            eprintln!("===== hook logs (end)\n{}", tail(&self.hook_logs(), 12000));
        }
    }
}

/// Run one of the `deploy/hooks/<kind>` hooks; its output.
#[track_caller]
pub fn run_hook(kind: Kind, hook: &str, env: &[(String, String)]) -> String {
    let out = std::process::Command::new(hooks_dir(kind.name()).join(hook))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{hook} hook failed: {text}");
    text
}
