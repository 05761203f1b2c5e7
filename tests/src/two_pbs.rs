//! One exporter, two PBS and clones that list both PBS (`[[coordinator]]`), each a process
//! of the real binary on loopback, killed when the [`TwoPbs`] is dropped.
//!
//! The second PBS either pulls the same `[[source]]` from the exporter, which notifies both
//! ([`Second::Source`]), or mirrors the first (`[[mirror]]`, [`Second::Mirror`]). Both list
//! every clone as an `[[importer]]`; each clone's import hook appends the generation to
//! `clone{i}/hook-runs` before the `files` import hook, so a test can count the imports.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use tempfile::TempDir;

use crate::cluster::{files_hook, http, wait_for, write_script, Daemon, HttpResponse, PortHold};
use crate::{bin, Pbs, Run};

/// How the second PBS gets the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Second {
    /// The same `[[source]]`: the exporter notifies both PBS.
    Source,
    /// `[[mirror]]` of the first PBS (which has it as a `[[downstream]]`).
    Mirror,
}

/// One daemon of the set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    /// PBS 1 or 2 (`pbs1`, `pbs2`).
    Pbs(usize),
    Exporter,
    /// A clone (`clone{i}`).
    Clone(usize),
}

impl Node {
    pub fn name(self) -> String {
        match self {
            Node::Pbs(k) => format!("pbs{k}"),
            Node::Exporter => "exporter".into(),
            Node::Clone(i) => format!("clone{i}"),
        }
    }
}

/// What to build.
#[derive(Clone, Debug)]
pub struct Setup {
    pub second: Second,
    pub clones: usize,
    /// Per clone, the order of its `[[coordinator]]`s (PBS numbers), default `[1, 2]`.
    pub order: Vec<Vec<usize>>,
    /// `[takeover] password_hash` of every clone.
    pub clone_hash: Option<String>,
    /// `takeover_password_hash` of the clones at PBS 1 and PBS 2.
    pub pbs_hash: [Option<String>; 2],
    /// The URL port PBS 1 pushes to clone i at (a proxy in front of it), if not its own.
    pub pbs1_push_port: Vec<Option<u16>>,
}

impl Setup {
    pub fn new(second: Second, clones: usize) -> Setup {
        Setup {
            second,
            clones,
            order: vec![vec![1, 2]; clones],
            clone_hash: None,
            pbs_hash: [None, None],
            pbs1_push_port: vec![None; clones],
        }
    }
}

/// The running set.
pub struct TwoPbs {
    pub dir: TempDir,
    pub setup: Setup,
    /// Peer `admin` on every daemon.
    pub admin: String,
    /// The token PBS k (1, 2) pushes to clone i with: `push[k-1][i]`.
    pub push: [Vec<String>; 2],
    /// A token clone i accepts for peer `pbs3`, a PBS it does not list.
    pub stranger: String,
    holds: Vec<PortHold>,
    ports: Vec<u16>,
    daemons: Vec<Option<Daemon>>,
}

fn token(what: &str, n: usize) -> String {
    format!("{what}-{n}-{:08x}-0123456789abcdef", std::process::id())
}

impl TwoPbs {
    /// Folders, configs and ports; nothing started. `src()` exists, empty.
    pub fn new(setup: Setup) -> TwoPbs {
        let dir = tempfile::Builder::new()
            .prefix("pullback-two-pbs-")
            .tempdir()
            .expect("temp dir");
        let n = setup.clones;
        let holds: Vec<PortHold> = (0..3 + n).map(|_| PortHold::new()).collect();
        let ports = holds.iter().map(|h| h.port).collect();
        let t = TwoPbs {
            admin: token("admin", 0),
            push: [
                (0..n).map(|i| token("pbs1-push", i)).collect(),
                (0..n).map(|i| token("pbs2-push", i)).collect(),
            ],
            stranger: token("pbs3-push", 0),
            dir,
            setup,
            holds,
            ports,
            daemons: (0..3 + n).map(|_| None).collect(),
        };
        fs::create_dir_all(t.src()).expect("src");
        fs::create_dir_all(t.path().join("logs")).expect("logs");
        t.write_configs();
        t
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// What the export hook copies.
    pub fn src(&self) -> PathBuf {
        self.path().join("src")
    }

    /// Clone i's data, put in place by the import hook.
    pub fn clone_data(&self, i: usize) -> PathBuf {
        self.path().join(format!("clone{i}/data"))
    }

    /// PBS k's archive.
    pub fn archive(&self, k: usize) -> Pbs {
        Pbs::new(self.path().join(format!("pbs{k}/archive")))
    }

    pub fn config(&self, n: Node) -> PathBuf {
        self.path().join(format!("{}.toml", n.name()))
    }

    fn slot(n: Node) -> usize {
        match n {
            Node::Pbs(k) => k - 1,
            Node::Exporter => 2,
            Node::Clone(i) => 3 + i,
        }
    }

    pub fn port(&self, n: Node) -> u16 {
        self.ports[Self::slot(n)]
    }

    /// The generations clone i's import hook ran for, in order.
    pub fn hook_runs(&self, i: usize) -> Vec<String> {
        fs::read_to_string(self.path().join(format!("clone{i}/hook-runs")))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// PBS 1 pushes to clone i at `port` (e.g. a proxy's) from now on (configs rewritten;
    /// before the start).
    pub fn push_through(&mut self, i: usize, port: u16) {
        self.setup.pbs1_push_port[i] = Some(port);
        self.write_configs();
    }

    fn write_configs(&self) {
        let d = self.path().display().to_string();
        let s = &self.setup;
        let (pull, notify, reads, tells) = (
            token("pull", 0),
            token("notify", 0),
            token("pbs2-reads-pbs1", 0),
            token("pbs1-tells-pbs2", 0),
        );
        for k in [1, 2] {
            let mut peers = format!(
                "{{ peer = \"exporter\", token = \"{notify}{k}\" }}, {{ peer = \"admin\", token = \"{}\" }}",
                self.admin
            );
            for i in 0..s.clones {
                peers.push_str(&format!(
                    ", {{ peer = \"clone{i}\", token = \"{}\" }}",
                    token(&format!("clone{i}-speaks-to-pbs{k}"), i)
                ));
            }
            let mut extra = String::new();
            if k == 1 || s.second == Second::Source {
                extra.push_str(&format!(
                    "[[source]]\nname = \"files\"\nattempts = 2\nexporter = {{ name = \"exporter\", url = \"http://127.0.0.1:{}\", token = \"{pull}\" }}\n",
                    self.port(Node::Exporter)
                ));
            }
            match (k, s.second) {
                (1, Second::Mirror) => {
                    peers.push_str(&format!(", {{ peer = \"pbs2\", token = \"{reads}\" }}"));
                    extra.push_str(&format!(
                        "[[downstream]]\nname = \"pbs2\"\nurl = \"http://127.0.0.1:{}\"\ntoken = \"{tells}\"\n",
                        self.port(Node::Pbs(2))
                    ));
                }
                (2, Second::Mirror) => {
                    peers.push_str(&format!(", {{ peer = \"pbs1\", token = \"{tells}\" }}"));
                    extra.push_str(&format!(
                        "[[mirror]]\nsource = \"files\"\nfrom = {{ name = \"pbs1\", url = \"http://127.0.0.1:{}\", token = \"{reads}\" }}\n",
                        self.port(Node::Pbs(1))
                    ));
                }
                _ => {}
            }
            for i in 0..s.clones {
                let port = match k {
                    1 => s.pbs1_push_port[i].unwrap_or(self.port(Node::Clone(i))),
                    _ => self.port(Node::Clone(i)),
                };
                extra.push_str(&format!(
                    "[[importer]]\nname = \"clone{i}\"\nurl = \"http://127.0.0.1:{port}\"\ntoken = \"{}\"\n",
                    self.push[k - 1][i]
                ));
                if let Some(h) = &s.pbs_hash[k - 1] {
                    extra.push_str(&format!("takeover_password_hash = \"{h}\"\n"));
                }
            }
            let cfg = format!(
                "state_dir = \"{d}/pbs{k}\"\n[archive]\npath = \"{d}/pbs{k}/archive\"\n[server]\nlisten = \"127.0.0.1:{}\"\ntokens = [{peers}]\n{extra}",
                self.port(Node::Pbs(k))
            );
            fs::write(self.config(Node::Pbs(k)), cfg).expect("pbs config");
        }
        let mut exporter = format!(
            r#"source = "files"
backup_dir = "{d}/exporter/backup"
state_dir = "{d}/exporter"
schedule = "off"
attempts = 2
commit_timeout_secs = 120
[hooks]
export = "{hook}"
timeout_secs = 120
[server]
listen = "127.0.0.1:{ep}"
tokens = [{{ peer = "pbs", token = "{pull}" }}, {{ peer = "admin", token = "{admin}" }}]
"#,
            hook = files_hook("export").display(),
            ep = self.port(Node::Exporter),
            admin = self.admin,
        );
        let notified: &[usize] = match s.second {
            Second::Source => &[1, 2],
            Second::Mirror => &[1],
        };
        for k in notified {
            exporter.push_str(&format!(
                "[[pbs]]\nname = \"pbs{k}\"\nurl = \"http://127.0.0.1:{}\"\ntoken = \"{notify}{k}\"\n",
                self.port(Node::Pbs(*k))
            ));
        }
        fs::write(self.config(Node::Exporter), exporter).expect("exporter config");
        for i in 0..s.clones {
            let hook = self.path().join(format!("clone{i}/import-hook"));
            write_script(
                &hook,
                &format!(
                    "echo \"$PULLBACK_GENERATION\" >> {d}/clone{i}/hook-runs\nexec {}",
                    files_hook("import").display()
                ),
            );
            let mut c = format!(
                r#"name = "clone{i}"
store = "{d}/clone{i}/store"
restore_dir = "{d}/clone{i}/restore"
state_dir = "{d}/clone{i}"
[hooks]
import = "{hook}"
verify = "{verify}"
timeout_secs = 120
[server]
listen = "127.0.0.1:{port}"
tokens = [{{ peer = "pbs1", token = "{p1}" }}, {{ peer = "pbs2", token = "{p2}" }}, {{ peer = "pbs3", token = "{p3}" }}, {{ peer = "admin", token = "{admin}" }}]
"#,
                hook = hook.display(),
                verify = files_hook("verify").display(),
                port = self.port(Node::Clone(i)),
                p1 = self.push[0][i],
                p2 = self.push[1][i],
                p3 = self.stranger,
                admin = self.admin,
            );
            for k in &s.order[i] {
                c.push_str(&format!(
                    "[[coordinator]]\nname = \"pbs{k}\"\nurl = \"http://127.0.0.1:{}\"\ntoken = \"{}\"\n",
                    self.port(Node::Pbs(*k)),
                    token(&format!("clone{i}-speaks-to-pbs{k}"), i)
                ));
            }
            if let Some(h) = &s.clone_hash {
                c.push_str(&format!("[takeover]\npassword_hash = \"{h}\"\n"));
            }
            fs::write(self.config(Node::Clone(i)), c).expect("importer config");
        }
    }

    fn binary(n: Node) -> &'static str {
        match n {
            Node::Pbs(_) => "pbs",
            Node::Exporter => "exporter",
            Node::Clone(_) => "importer",
        }
    }

    /// Start one daemon and wait until it answers `GET /v1/status`.
    pub fn start(&mut self, n: Node) {
        let slot = Self::slot(n);
        self.holds[slot].release();
        let log = self.path().join("logs").join(format!("{}.log", n.name()));
        let envs = match n {
            Node::Exporter => vec![(
                "PULLBACK_FILES_SOURCE".to_string(),
                self.src().display().to_string(),
            )],
            Node::Clone(i) => vec![(
                "PULLBACK_FILES_TARGET".to_string(),
                self.clone_data(i).display().to_string(),
            )],
            Node::Pbs(_) => vec![],
        };
        let d = Daemon::serve(Self::binary(n), &self.config(n), &log, &envs);
        self.daemons[slot] = Some(d);
        let port = self.port(n);
        let auth = format!("token {}", self.admin);
        wait_for(&format!("{} to answer", n.name()), || {
            http(port, "GET", "/v1/status", &[("Authorization", &auth)], b"")
                .ok()
                .filter(|r| r.status == 200)
        });
    }

    pub fn start_all(&mut self) {
        self.start(Node::Pbs(1));
        self.start(Node::Pbs(2));
        for i in 0..self.setup.clones {
            self.start(Node::Clone(i));
        }
        self.start(Node::Exporter);
    }

    /// SIGKILL one daemon and reap it.
    pub fn kill(&mut self, n: Node) {
        self.daemons[Self::slot(n)] = None;
    }

    /// Wait until a daemon exits by itself; its exit status.
    pub fn wait_exit(&mut self, n: Node) -> std::process::ExitStatus {
        let d = self.daemons[Self::slot(n)]
            .as_mut()
            .expect("the daemon was started");
        let st = wait_for(&format!("{} to exit", n.name()), || {
            d.child.try_wait().expect("try_wait")
        });
        self.daemons[Self::slot(n)] = None;
        st
    }

    /// `BIN --config CONFIG ARGS...` of daemon `n`'s config, run to completion.
    pub fn run(&self, n: Node, args: &[&str]) -> Run {
        let out = Command::new(bin(Self::binary(n)))
            .arg("--config")
            .arg(self.config(n))
            .args(args)
            .env("PULLBACK_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {args:?}: {e}"));
        Run::from(out)
    }

    /// `exporter run`, required to succeed; its output.
    #[track_caller]
    pub fn export_ok(&self) -> String {
        let r = self.run(Node::Exporter, &["run"]);
        assert!(
            r.status.success(),
            "exporter run: {}\n{}",
            r.stdout,
            r.stderr
        );
        r.stdout
    }

    /// A request to daemon `n` with `token` (JSON body).
    pub fn request(
        &self,
        n: Node,
        method: &str,
        path: &str,
        token: &str,
        body: &[u8],
    ) -> HttpResponse {
        let auth = format!("token {token}");
        http(
            self.port(n),
            method,
            path,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body,
        )
        .unwrap_or_else(|e| panic!("{method} {path} on {}: {e}", n.name()))
    }

    /// `GET /v1/status` of daemon `n` (admin), or None when it does not answer.
    pub fn live(&self, n: Node) -> Option<Value> {
        let auth = format!("token {}", self.admin);
        let r = http(
            self.port(n),
            "GET",
            "/v1/status",
            &[("Authorization", &auth)],
            b"",
        )
        .ok()?;
        (r.status == 200).then(|| r.json())
    }

    /// Wait until clone i holds `gen` restored and verified, no import running; its status.
    pub fn wait_clone(&self, i: usize, gen: &str) -> Value {
        wait_for(&format!("clone{i} to hold {gen} verified"), || {
            let s = self.live(Node::Clone(i))?;
            let v = &s["last_valid"];
            (v["generation"] == gen && v["verified"] == true && s["importing"].is_null())
                .then_some(s)
        })
    }

    /// `pbs status --json` of PBS k (whatever its exit code).
    pub fn pbs_status(&self, k: usize) -> Value {
        self.run(Node::Pbs(k), &["status", "--json"]).json()
    }

    /// Wait until PBS k's status shows clone i's last good push as `gen`.
    pub fn wait_pushed(&self, k: usize, i: usize, gen: &str) {
        wait_for(&format!("pbs{k} to have pushed {gen} to clone{i}"), || {
            let st = self.pbs_status(k);
            st["importers"]
                .as_array()?
                .iter()
                .any(|c| c["name"] == format!("clone{i}") && c["last_good"]["generation"] == gen)
                .then_some(())
        });
    }

    /// The generations of PBS k's archive: name, epoch, time taken, label (the export's
    /// transaction), files and bytes (not what each PBS stored or when).
    pub fn records(&self, k: usize) -> Value {
        let mut v = self.archive(k).json(&["list"]);
        for g in v.as_array_mut().expect("a list") {
            g.as_object_mut().expect("a record").retain(|k, _| {
                ["generation", "epoch", "taken_at", "label", "files", "bytes"].contains(&k.as_str())
            });
        }
        v
    }

    /// The names of PBS k's generations.
    pub fn generations(&self, k: usize) -> Vec<String> {
        self.archive(k).generations()
    }
}

impl Drop for TwoPbs {
    fn drop(&mut self) {
        // The exporter first: it may be waiting on the others.
        self.daemons[2] = None;
        for d in &mut self.daemons {
            *d = None;
        }
        if std::thread::panicking() {
            for n in fs::read_dir(self.path().join("logs"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let text = fs::read_to_string(n.path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let from = lines.len().saturating_sub(40);
                eprintln!(
                    "---- {} ----\n{}",
                    n.path().display(),
                    lines[from..].join("\n")
                );
            }
        }
    }
}
