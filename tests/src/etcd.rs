//! A real etcd cluster on loopback for the tests of the coordinator on etcd
//! (tests/tests/etcd.rs): members started as processes of Debian's `etcd` (package
//! `etcd-server`, installed by `make test-deps`), on ports held until just before they
//! start, read through etcd's JSON gateway (`POST /v3/kv/range`), killed with SIGKILL.
//! Also a second PBS beside a [`Cluster`]'s, sharing its configuration.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::cluster::{http, wait_for, Cluster, Daemon, PortHold, Who};

/// The `etcd` binary; panics with what to do when it is missing (no test is skipped).
pub fn etcd_binary() -> PathBuf {
    let p = PathBuf::from("/usr/bin/etcd");
    let ok = Command::new(&p)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} not found or not working: run `make test-deps` (it installs Debian's etcd-server)",
        p.display()
    );
    p
}

struct Member {
    name: String,
    client: u16,
    child: Option<Child>,
}

/// A running etcd cluster; every member is killed when it is dropped.
pub struct EtcdCluster {
    pub dir: TempDir,
    members: Vec<Member>,
}

impl EtcdCluster {
    /// Starts `n` members (`m1`..) and waits until every one answers healthy.
    pub fn start(n: usize) -> EtcdCluster {
        let bin = etcd_binary();
        let dir = tempfile::Builder::new()
            .prefix("pullback-etcd-")
            .tempdir()
            .expect("temp dir");
        let mut holds: Vec<(PortHold, PortHold)> =
            (0..n).map(|_| (PortHold::new(), PortHold::new())).collect();
        let cluster = (0..n)
            .map(|i| format!("m{}=http://127.0.0.1:{}", i + 1, holds[i].1.port))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("pullback-{}", std::process::id());
        let mut members = Vec::new();
        for (i, (client, peer)) in holds.iter_mut().enumerate() {
            let name = format!("m{}", i + 1);
            let log = fs::File::create(dir.path().join(format!("{name}.log"))).expect("log");
            client.release();
            peer.release();
            let c = format!("http://127.0.0.1:{}", client.port);
            let p = format!("http://127.0.0.1:{}", peer.port);
            let mut cmd = Command::new(&bin);
            cmd.arg("--name")
                .arg(&name)
                .arg("--data-dir")
                .arg(dir.path().join(&name))
                .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
                .args([
                    "--listen-peer-urls",
                    &p,
                    "--initial-advertise-peer-urls",
                    &p,
                ])
                .args(["--initial-cluster", &cluster])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", &token])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log);
            // SAFETY: prctl is async-signal-safe; the member dies with the test.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let child = cmd.spawn().expect("start etcd");
            members.push(Member {
                name,
                client: client.port,
                child: Some(child),
            });
        }
        let c = EtcdCluster { dir, members };
        for m in &c.members {
            wait_for(&format!("etcd member {} to be healthy", m.name), || {
                let r = http(m.client, "GET", "/health", &[], b"").ok()?;
                (r.status == 200 && r.text().contains("true")).then_some(())
            });
        }
        c
    }

    /// The members' client URLs.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect()
    }

    /// The PBS config section for this cluster, keys under `prefix`.
    pub fn toml(&self, prefix: &str, lease_secs: u64) -> String {
        let eps = self
            .endpoints()
            .iter()
            .map(|e| format!("{e:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "[coordinator]\netcd = {{ endpoints = [{eps}], prefix = {prefix:?}, timeout_secs = 3, main_lease_secs = {lease_secs} }}\n"
        )
    }

    /// SIGKILL member `i` (0-based).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The index of the member that leads now (`POST /v3/maintenance/status`: its own id
    /// is the leader's).
    pub fn leader(&self) -> usize {
        wait_for("an etcd leader", || {
            self.members.iter().position(|m| {
                m.child.is_some()
                    && http(
                        m.client,
                        "POST",
                        "/v3/maintenance/status",
                        &[("Content-Type", "application/json")],
                        b"{}",
                    )
                    .ok()
                    .filter(|r| r.status == 200)
                    .map(|r| r.json())
                    .is_some_and(|v| {
                        v["leader"].is_string() && v["leader"] == v["header"]["member_id"]
                    })
            })
        })
    }

    /// The value and mod_revision of `key`, read (linearizable) through a live member's
    /// JSON gateway.
    pub fn get(&self, key: &str) -> Option<(String, i64)> {
        self.range(key, false)
    }

    /// [`EtcdCluster::get`] from the member's own copy (serializable: answers without a
    /// quorum).
    pub fn get_local(&self, key: &str) -> Option<(String, i64)> {
        self.range(key, true)
    }

    fn range(&self, key: &str, serializable: bool) -> Option<(String, i64)> {
        let body = json!({ "key": b64(key.as_bytes()), "serializable": serializable }).to_string();
        let m = self
            .members
            .iter()
            .find(|m| m.child.is_some())
            .expect("a live etcd member");
        let r = http(
            m.client,
            "POST",
            "/v3/kv/range",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .unwrap_or_else(|e| panic!("etcd range {key}: {e}"));
        assert_eq!(r.status, 200, "etcd range {key}: {}", r.text());
        let v = r.json();
        let kv = v["kvs"].as_array()?.first()?.clone();
        let value = unb64(kv["value"].as_str().unwrap_or(""));
        let rev = kv["mod_revision"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Some((String::from_utf8_lossy(&value).into_owned(), rev))
    }

    /// The JSON value of `key`; panics when it is absent.
    pub fn json(&self, key: &str) -> Value {
        let (v, _) = self.get(key).unwrap_or_else(|| panic!("no etcd key {key}"));
        serde_json::from_str(&v).unwrap_or_else(|e| panic!("etcd key {key}: {e}: {v}"))
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn unb64(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().take_while(|c| *c != b'=') {
        let Some(v) = B64.iter().position(|x| *x == c) else {
            continue;
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// A second PBS beside `c`'s: the same config (sources, importers, tokens, coordinator)
/// with its own state dir, archive and port.
pub struct SecondPbs {
    pub port: u16,
    pub config: PathBuf,
    pub daemon: Option<Daemon>,
}

impl SecondPbs {
    pub fn start(c: &Cluster, name: &str) -> SecondPbs {
        let d = c.path().display().to_string();
        let text = fs::read_to_string(c.config(Who::Pbs)).expect("pbs.toml");
        let mut hold = PortHold::new();
        let text = text
            .replace(
                &format!("state_dir = \"{d}/pbs\""),
                &format!("state_dir = \"{d}/{name}\""),
            )
            .replace(
                &format!("path = \"{d}/pbs/archive\""),
                &format!("path = \"{d}/{name}/archive\""),
            )
            .replace(
                &format!("listen = \"127.0.0.1:{}\"", c.port(Who::Pbs)),
                &format!("listen = \"127.0.0.1:{}\"", hold.port),
            );
        assert!(text.contains(&format!("{d}/{name}/archive")), "{text}");
        let config = c.path().join(format!("{name}.toml"));
        fs::write(&config, text).expect("second pbs.toml");
        hold.release();
        let log = c.path().join("logs").join(format!("{name}.log"));
        let daemon = Daemon::serve("pbs", &config, &log, &[]);
        let s = SecondPbs {
            port: hold.port,
            config,
            daemon: Some(daemon),
        };
        s.wait_up(c, &log);
        s
    }

    fn wait_up(&self, c: &Cluster, log: &Path) {
        let auth = format!("token {}", c.tokens.admin);
        wait_for(&format!("the second PBS (log {})", log.display()), || {
            let r = http(
                self.port,
                "GET",
                "/v1/status",
                &[("Authorization", auth.as_str())],
                b"",
            )
            .ok()?;
            (r.status == 200).then_some(())
        });
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.daemon = None;
    }
}
