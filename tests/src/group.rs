//! A source served by a group of nodes, each of which can be main or clone: every node has
//! one exporter config and one importer config with the same name and one role file, and
//! runs under the real `pullback-node` launcher, restarted whenever it exits (as systemd's
//! `Restart=always` does). A takeover or a switchover is then a restart into the other
//! daemon, as in production. One PBS coordinates the group.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::cluster::{files_hook, http, wait_for, Daemon, HttpResponse, PortHold};
use crate::ha::request;
use crate::{bin, bin_dir, Pbs, Run};

/// The source every node exports.
pub const SOURCE: &str = "files";

/// One node: its ports, its folder and the supervisor running its launcher.
pub struct Node {
    pub name: String,
    pub exporter_port: u16,
    pub importer_port: u16,
    dir: PathBuf,
    holds: Vec<PortHold>,
    supervisor: Option<Supervisor>,
    /// Runs its exporter when it has no role file yet (the first main of its source).
    first_main: bool,
    /// The source whose group it belongs to.
    pub source: String,
}

/// Restarts the launcher whenever the daemon it became exits.
struct Supervisor {
    stop: Arc<AtomicBool>,
    pid: Arc<AtomicU32>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Supervisor {
    fn start(mut launch: impl FnMut() -> Command + Send + 'static) -> Supervisor {
        let stop = Arc::new(AtomicBool::new(false));
        let pid = Arc::new(AtomicU32::new(0));
        let (s, p) = (stop.clone(), pid.clone());
        let thread = thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let Ok(mut child) = launch().spawn() else {
                    thread::sleep(Duration::from_millis(200));
                    continue;
                };
                p.store(child.id(), Ordering::SeqCst);
                let _ = child.wait();
                p.store(0, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(100));
            }
        });
        Supervisor {
            stop,
            pid,
            thread: Some(thread),
        }
    }

    /// Stops restarting and kills the daemon with SIGKILL (a crash, a power cut).
    fn kill(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let pid = self.pid.load(Ordering::SeqCst);
        if pid != 0 {
            // SAFETY: a plain kill(2) of our own child.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Tokens: one per node for speaking to the PBS (exporter and importer alike), one per
/// node for the PBS pulling from its exporter and for telling its importer, one admin.
fn token(what: &str, node: &str) -> String {
    format!("group-{what}-{node}-0123456789abcdef")
}

/// Each node's own environment for its daemons and hooks (by node name).
pub type NodeEnv = Arc<dyn Fn(&str, &Path) -> Vec<(String, String)> + Send + Sync>;

/// The PBS and the nodes of one source.
pub struct Group {
    dir: TempDir,
    /// The reference hooks used (`deploy/hooks/<kind>`).
    hooks: PathBuf,
    env: NodeEnv,
    pub pbs_port: u16,
    pbs_hold: PortHold,
    pbs: Option<Daemon>,
    pub nodes: Vec<Node>,
    pub admin: String,
}

impl Group {
    /// Nodes `names` with the `files` hooks (each node's service data is its `data/`
    /// folder); the first is the first main, `spares` are `spare = true` at the PBS.
    /// Every node has the takeover password `password_hash`.
    pub fn new(names: &[&str], spares: &[&str], password_hash: &str) -> Group {
        let (hooks, env) = Group::files_hooks();
        Group::with_hooks(names, spares, password_hash, hooks, env)
    }

    /// The `files` hooks, each node's service data its `data/` folder.
    pub fn files_hooks() -> (PathBuf, NodeEnv) {
        let hooks = files_hook("export")
            .parent()
            .expect("the files hooks' folder")
            .to_path_buf();
        let env: NodeEnv = Arc::new(|_, dir| {
            let data = dir.join("data").display().to_string();
            vec![
                ("PULLBACK_FILES_SOURCE".into(), data.clone()),
                ("PULLBACK_FILES_TARGET".into(), data),
            ]
        });
        (hooks, env)
    }

    /// The same with the hooks of `hooks` (`deploy/hooks/<kind>`) and each node's
    /// environment from `env(name, node folder)`.
    pub fn with_hooks(
        names: &[&str],
        spares: &[&str],
        password_hash: &str,
        hooks: PathBuf,
        env: NodeEnv,
    ) -> Group {
        Group::sources(&[(SOURCE, names)], spares, password_hash, hooks, env)
    }

    /// Several sources on one PBS, each with its own group of nodes (the first of each is
    /// its first main): `groups` is (source, node names).
    pub fn sources(
        groups: &[(&str, &[&str])],
        spares: &[&str],
        password_hash: &str,
        hooks: PathBuf,
        env: NodeEnv,
    ) -> Group {
        let dir = tempfile::Builder::new()
            .prefix("pullback-group-")
            .tempdir()
            .expect("temp dir");
        let pbs_hold = PortHold::new();
        let nodes: Vec<Node> = groups
            .iter()
            .flat_map(|(source, names)| {
                names.iter().enumerate().map(|(i, n)| {
                    let (e, m) = (PortHold::new(), PortHold::new());
                    Node {
                        name: n.to_string(),
                        exporter_port: e.port,
                        importer_port: m.port,
                        dir: dir.path().join(n),
                        holds: vec![e, m],
                        supervisor: None,
                        first_main: i == 0,
                        source: source.to_string(),
                    }
                })
            })
            .collect();
        let g = Group {
            hooks,
            env,
            pbs_port: pbs_hold.port,
            pbs_hold,
            pbs: None,
            nodes,
            admin: "group-admin-token-0123456789abcdef".into(),
            dir,
        };
        g.write_configs(spares, password_hash);
        g
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write_configs(&self, spares: &[&str], hash: &str) {
        let d = self.path().display().to_string();
        let pp = self.pbs_port;
        let admin = &self.admin;
        let mut tokens: Vec<String> = self
            .nodes
            .iter()
            .map(|n| {
                format!(
                    "{{ peer = \"{}\", token = \"{}\" }}",
                    n.name,
                    token("speaks", &n.name)
                )
            })
            .collect();
        tokens.push(format!("{{ peer = \"admin\", token = \"{admin}\" }}"));
        let mut pbs = format!(
            "state_dir = \"{d}/pbs\"\n[archive]\npath = \"{d}/pbs/archive\"\n[server]\nlisten = \"127.0.0.1:{pp}\"\ntokens = [{}]\n",
            tokens.join(", "),
        );
        for first in self.nodes.iter().filter(|n| n.first_main) {
            pbs.push_str(&format!(
                "[[source]]\nname = \"{}\"\nattempts = 2\nexporter = {{ name = \"{}\", url = \"http://127.0.0.1:{}\", token = \"{}\" }}\n",
                first.source,
                first.name,
                first.exporter_port,
                token("pulls", &first.name),
            ));
        }
        for n in &self.nodes {
            pbs.push_str(&format!(
                "[[importer]]\nname = \"{}\"\nsource = \"{}\"\nurl = \"http://127.0.0.1:{}\"\ntoken = \"{}\"\ntakeover_password_hash = \"{hash}\"\n",
                n.name,
                n.source,
                n.importer_port,
                token("tells", &n.name)
            ));
            if !n.first_main {
                pbs.push_str(&format!(
                    "exporter = {{ url = \"http://127.0.0.1:{}\", token = \"{}\" }}\n",
                    n.exporter_port,
                    token("pulls", &n.name)
                ));
            }
            if spares.contains(&n.name.as_str()) {
                pbs.push_str("spare = true\n");
            }
        }
        fs::create_dir_all(self.path().join("pbs")).expect("pbs folder");
        fs::write(self.path().join("pbs.toml"), pbs).expect("pbs.toml");
        for n in &self.nodes {
            let nd = n.dir.display().to_string();
            fs::create_dir_all(n.dir.join("data")).expect("node data");
            let exporter = format!(
                r#"name = "{name}"
source = "{source}"
backup_dir = "{nd}/backup"
state_dir = "{nd}/exporter"
role_file = "{nd}/role.json"
schedule = "off"
attempts = 2
commit_timeout_secs = 120
[hooks]
export = "{export}"
demote = "{demote}"
timeout_secs = 120
[server]
listen = "127.0.0.1:{ep}"
tokens = [{{ peer = "pbs", token = "{pulls}" }}, {{ peer = "admin", token = "{admin}" }}]
[[pbs]]
name = "pbs"
url = "http://127.0.0.1:{pp}"
token = "{speaks}"
"#,
                name = n.name,
                source = n.source,
                export = self.hooks.join("export").display(),
                demote = self.hooks.join("demote").display(),
                ep = n.exporter_port,
                pulls = token("pulls", &n.name),
                speaks = token("speaks", &n.name),
            );
            let importer = format!(
                r#"name = "{name}"
store = "{nd}/store"
restore_dir = "{nd}/restore"
state_dir = "{nd}/importer"
role_file = "{nd}/role.json"
[hooks]
import = "{import}"
verify = "{verify}"
promote = "{promote}"
timeout_secs = 120
[server]
listen = "127.0.0.1:{ip}"
tokens = [{{ peer = "pbs", token = "{tells}" }}, {{ peer = "admin", token = "{admin}" }}]
[coordinator]
name = "pbs"
url = "http://127.0.0.1:{pp}"
token = "{speaks}"
[takeover]
password_hash = "{hash}"
"#,
                name = n.name,
                import = self.hooks.join("import").display(),
                verify = self.hooks.join("verify").display(),
                promote = self.hooks.join("promote").display(),
                ip = n.importer_port,
                tells = token("tells", &n.name),
                speaks = token("speaks", &n.name),
            );
            fs::write(n.dir.join("exporter.toml"), exporter).expect("exporter.toml");
            fs::write(n.dir.join("importer.toml"), importer).expect("importer.toml");
        }
    }

    fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    fn node_mut(&mut self, name: &str) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    pub fn start_pbs(&mut self) {
        self.pbs_hold.release();
        let child = Daemon::serve(
            "pbs",
            &self.path().join("pbs.toml"),
            &self.path().join("pbs.log"),
            &[],
        );
        self.pbs = Some(child);
        let port = self.pbs_port;
        let admin = self.admin.clone();
        wait_for("the PBS to answer", || {
            let auth = format!("token {admin}");
            http(port, "GET", "/v1/status", &[("Authorization", &auth)], b"")
                .ok()
                .filter(|r| r.status == 200)
                .map(|_| ())
        });
    }

    /// Start node `name` under its supervisor: the launcher picks exporter or importer by
    /// the node's role file.
    pub fn start(&mut self, name: &str) {
        let node_env = self.env.clone();
        let n = self.node_mut(name);
        for h in &mut n.holds {
            h.release();
        }
        let dir = n.dir.clone();
        let default = if n.first_main { "exporter" } else { "importer" };
        let env = node_env(name, &dir);
        let launcher =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/pullback-node");
        n.supervisor = Some(Supervisor::start(move || {
            let log = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("node.log"))
                .expect("node log");
            let mut c = Command::new("sh");
            c.arg(&launcher)
                .env("PULLBACK_BIN", bin_dir())
                .env("PULLBACK_EXPORTER_CONF", dir.join("exporter.toml"))
                .env("PULLBACK_IMPORTER_CONF", dir.join("importer.toml"))
                .env("PULLBACK_ROLE", dir.join("role.json"))
                .env("PULLBACK_NODE_DEFAULT", default)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .env("PULLBACK_LOG", "info")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log);
            c
        }));
    }

    /// SIGKILL node `name` and do not restart it.
    pub fn kill(&mut self, name: &str) {
        if let Some(mut s) = self.node_mut(name).supervisor.take() {
            s.kill();
        }
    }

    /// The node's service data (what its export hook reads and its import hook writes).
    pub fn data(&self, name: &str) -> PathBuf {
        self.node(name).dir.join("data")
    }

    pub fn role_file(&self, name: &str) -> Option<Value> {
        let bytes = fs::read(self.node(name).dir.join("role.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn get(&self, port: u16, path: &str) -> Option<Value> {
        let auth = format!("token {}", self.admin);
        let r = http(port, "GET", path, &[("Authorization", &auth)], b"").ok()?;
        (r.status == 200).then(|| serde_json::from_slice(&r.body).ok())?
    }

    /// The status of node `name`'s importer, if it is the one running.
    pub fn importer_status(&self, name: &str) -> Option<Value> {
        self.get(self.node(name).importer_port, "/v1/status")
    }

    /// The status of node `name`'s exporter, if it is the one running.
    pub fn exporter_status(&self, name: &str) -> Option<Value> {
        self.get(self.node(name).exporter_port, "/v1/status")
    }

    /// Wait until node `name` runs its exporter as the coordinator's MAIN at `epoch`.
    pub fn wait_main(&self, name: &str, epoch: u64) {
        wait_for(
            &format!("{name} to export as MAIN at epoch {epoch}"),
            || {
                let s = self.exporter_status(name)?;
                (s["role"] == "MAIN" && s["epoch"] == epoch && s["status"] == "Leader")
                    .then_some(())
            },
        );
    }

    /// Wait until the coordinator lists node `name` with `status` (`GET /v1/ha/nodes`).
    pub fn wait_status(&self, name: &str, status: &str) {
        wait_for(&format!("the PBS to list {name} as {status}"), || {
            let nodes = self.get(self.pbs_port, "/v1/ha/nodes")?;
            nodes
                .as_array()?
                .iter()
                .any(|n| n["name"] == name && n["status"] == status)
                .then_some(())
        });
    }

    /// Wait until node `name`'s importer has verified `gen`.
    pub fn wait_verified(&self, name: &str, gen: &str) {
        wait_for(&format!("{name} to verify {gen}"), || {
            let s = self.importer_status(name)?;
            (s["last_valid"]["generation"] == gen && s["last_valid"]["verified"] == true)
                .then_some(())
        });
    }

    /// `exporter run` on node `name` (its running exporter exports now).
    pub fn export(&self, name: &str) -> Run {
        let out = Command::new(bin("exporter"))
            .arg("--config")
            .arg(self.node(name).dir.join("exporter.toml"))
            .arg("run")
            .stdin(Stdio::null())
            .output()
            .expect("exporter run");
        Run::from(out)
    }

    /// `pbs CMD...` against the running PBS (its config).
    pub fn pbs(&self, args: &[&str]) -> Run {
        let out = Command::new(bin("pbs"))
            .arg("--config")
            .arg(self.path().join("pbs.toml"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("pbs");
        Run::from(out)
    }

    /// The PBS archive, for `pbs archive ...`.
    pub fn archive(&self) -> Pbs {
        Pbs::new(self.path().join("pbs/archive"))
    }

    /// The generations of the archive, in order, with their epochs.
    pub fn generations(&self) -> Vec<(String, u64)> {
        let list = self.archive().json(&["list"]);
        list.as_array()
            .expect("a list")
            .iter()
            .map(|g| {
                (
                    g["generation"].as_str().unwrap_or_default().to_string(),
                    g["epoch"].as_u64().unwrap_or(u64::MAX),
                )
            })
            .collect()
    }

    /// `POST /v1/takeover` on node `name`'s importer with the admin token.
    pub fn takeover(&self, name: &str, password: &str) -> HttpResponse {
        let body = serde_json::json!({ "password": password }).to_string();
        request(
            self.node(name).importer_port,
            "POST",
            "/v1/takeover",
            Some(&self.admin),
            body.as_bytes(),
        )
    }

    /// A notification sent with node `name`'s token (what its exporter would send).
    pub fn notify_as(&self, name: &str, seq: u64, epoch: u64) -> HttpResponse {
        let body = serde_json::json!({
            "source": self.node(name).source, "seq": seq, "tx": format!("{name}-replay-{seq}-{epoch}"),
            "epoch": epoch, "node": name,
        })
        .to_string();
        let t = token("speaks", name);
        request(
            self.pbs_port,
            "POST",
            "/v1/notify",
            Some(&t),
            body.as_bytes(),
        )
    }

    /// `importer rejoin --yes` on node `name` (stopped): wipes it to come back as a clone.
    pub fn wipe_for_rejoin(&self, name: &str) -> Run {
        let n = self.node(name);
        let out = Command::new(bin("importer"))
            .arg("--config")
            .arg(n.dir.join("importer.toml"))
            .arg("rejoin")
            .arg("--exporter-state")
            .arg(n.dir.join("exporter"))
            .arg("--yes")
            .stdin(Stdio::null())
            .output()
            .expect("importer rejoin");
        Run::from(out)
    }
}

impl Drop for Group {
    /// A failing test shows the end of every log (the folder goes with it).
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut s) = n.supervisor.take() {
                s.kill();
            }
        }
        if !thread::panicking() {
            return;
        }
        let mut logs = vec![self.path().join("pbs.log")];
        logs.extend(self.nodes.iter().map(|n| n.dir.join("node.log")));
        for l in logs {
            let text = fs::read_to_string(&l).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("==== {} (end) ====", l.display());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}
