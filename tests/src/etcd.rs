//! A real etcd cluster on loopback for the tests of the coordinator on etcd
//! (tests/tests/etcd.rs): members started as processes of Debian's `etcd` (package
//! `etcd-server`, installed by `make test-deps`), on ports held until just before they
//! start, read through etcd's JSON gateway (`POST /v3/kv/range`), killed with SIGKILL.
//! [`EtcdCluster::start_secured`] starts members that serve their clients over TLS only,
//! with certificates of a CA the test makes (rcgen), ask each client for a certificate of
//! that CA, and have users and roles on (`auth enable`); the harness itself reads them
//! through a plain-HTTP listener of its own on loopback, as `root`.
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
    /// The port the PBS reaches (https:// when secured).
    client: u16,
    /// The port the harness reads through: plain HTTP (the same as `client` unless secured).
    side: u16,
    child: Option<Child>,
}

/// A running etcd cluster; every member is killed when it is dropped.
pub struct EtcdCluster {
    pub dir: TempDir,
    members: Vec<Member>,
    secured: Option<Secured>,
    /// `root`'s password once auth is on, for the harness's reads (each logs in: tokens
    /// expire).
    root_password: Option<String>,
}

/// The files and credentials of a [`EtcdCluster::start_secured`] cluster, all in its dir.
#[derive(Clone)]
pub struct Secured {
    /// The CA that signed the members' and the client's certificates.
    pub ca: PathBuf,
    /// A client certificate of that CA and its key (what the PBS presents).
    pub cert: Option<(PathBuf, PathBuf)>,
    /// The etcd user that may read and write the keys under [`Secured::PREFIX`] only.
    pub user: String,
    pub password_file: PathBuf,
    /// A CA that signed nothing here.
    pub other_ca: PathBuf,
}

impl Secured {
    /// The prefix the user's role may read and write.
    pub const PREFIX: &'static str = "/sec";

    /// These files and the user as keys of `[coordinator] etcd` (`, ca = ..., ...`).
    pub fn keys(&self) -> String {
        let cert = self.cert.as_ref().map_or(String::new(), |(c, k)| {
            format!(", cert = {c:?}, key = {k:?}")
        });
        format!(
            ", ca = {:?}{cert}, user = {:?}, password_file = {:?}",
            self.ca, self.user, self.password_file
        )
    }
}

/// The PEM files [`make_certs`] writes.
struct Certs {
    ca: PathBuf,
    member: PathBuf,
    member_key: PathBuf,
    client: PathBuf,
    client_key: PathBuf,
    other_ca: PathBuf,
}

/// Writes a test CA, a certificate for the members (127.0.0.1; server and client use, as
/// etcd's own gateway presents it to the member), a client certificate, and a second CA.
fn make_certs(dir: &Path) -> Certs {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let ca = |name: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key")).expect("CA")
    };
    let issuer = ca("pullback test etcd CA");
    let other = ca("a CA that signed nothing here");
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        fs::write(&p, text).expect("write a PEM file");
        p
    };
    let leaf = |sans: Vec<String>, cn: &str, usages: Vec<ExtendedKeyUsagePurpose>| {
        let mut p = CertificateParams::new(sans).expect("params");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = usages;
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    };
    let (member, member_key) = leaf(
        vec!["127.0.0.1".into(), "localhost".into()],
        "etcd member",
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    );
    let (client, client_key) = leaf(
        Vec::new(),
        "pullback-pbs",
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    );
    Certs {
        ca: write("ca.pem", issuer.pem()),
        member: write("member.pem", member),
        member_key: write("member-key.pem", member_key),
        client: write("client.pem", client),
        client_key: write("client-key.pem", client_key),
        other_ca: write("other-ca.pem", other.pem()),
    }
}

impl EtcdCluster {
    /// Starts `n` members (`m1`..) and waits until every one answers healthy.
    pub fn start(n: usize) -> EtcdCluster {
        Self::start_with(n, None)
    }

    /// Starts `n` members whose clients must come over TLS with a certificate of the test
    /// CA and log in as an etcd user (tokens valid `token_ttl_secs`): a user `pbs` whose
    /// role may read and write under [`Secured::PREFIX`] only; `root` for the harness.
    pub fn start_secured(n: usize, token_ttl_secs: u64) -> EtcdCluster {
        let mut c = Self::start_with(n, Some(token_ttl_secs));
        c.enable_auth();
        c
    }

    fn start_with(n: usize, secured: Option<u64>) -> EtcdCluster {
        let bin = etcd_binary();
        let dir = tempfile::Builder::new()
            .prefix("pullback-etcd-")
            .tempdir()
            .expect("temp dir");
        let certs = secured.map(|_| make_certs(dir.path()));
        let mut holds: Vec<(PortHold, PortHold, Option<PortHold>)> = (0..n)
            .map(|_| {
                (
                    PortHold::new(),
                    PortHold::new(),
                    secured.map(|_| PortHold::new()),
                )
            })
            .collect();
        let cluster = (0..n)
            .map(|i| format!("m{}=http://127.0.0.1:{}", i + 1, holds[i].1.port))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("pullback-{}", std::process::id());
        let mut members = Vec::new();
        for (i, (client, peer, side)) in holds.iter_mut().enumerate() {
            let name = format!("m{}", i + 1);
            let log = fs::File::create(dir.path().join(format!("{name}.log"))).expect("log");
            client.release();
            peer.release();
            let scheme = if secured.is_some() { "https" } else { "http" };
            let c = format!("{scheme}://127.0.0.1:{}", client.port);
            let p = format!("http://127.0.0.1:{}", peer.port);
            let mut listen = c.clone();
            if let Some(side) = side {
                side.release();
                listen.push_str(&format!(",http://127.0.0.1:{}", side.port));
            }
            let mut cmd = Command::new(&bin);
            cmd.arg("--name")
                .arg(&name)
                .arg("--data-dir")
                .arg(dir.path().join(&name))
                .args([
                    "--listen-client-urls",
                    &listen,
                    "--advertise-client-urls",
                    &c,
                ])
                .args([
                    "--listen-peer-urls",
                    &p,
                    "--initial-advertise-peer-urls",
                    &p,
                ])
                .args(["--initial-cluster", &cluster])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", &token]);
            if let (Some(ttl), Some(certs)) = (secured, &certs) {
                cmd.arg("--cert-file")
                    .arg(&certs.member)
                    .arg("--key-file")
                    .arg(&certs.member_key)
                    .arg("--trusted-ca-file")
                    .arg(&certs.ca)
                    .arg("--client-cert-auth")
                    .arg(format!("--auth-token-ttl={ttl}"));
            }
            cmd.stdin(Stdio::null())
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
                side: side.as_ref().map_or(client.port, |s| s.port),
                child: Some(child),
            });
        }
        let secured = certs.map(|c| Secured {
            ca: c.ca,
            cert: Some((c.client, c.client_key)),
            user: "pbs".into(),
            password_file: dir.path().join("pbs.password"),
            other_ca: c.other_ca,
        });
        let c = EtcdCluster {
            dir,
            members,
            secured,
            root_password: None,
        };
        for m in &c.members {
            wait_for(&format!("etcd member {} to be healthy", m.name), || {
                let r = http(m.side, "GET", "/health", &[], b"").ok()?;
                (r.status == 200 && r.text().contains("true")).then_some(())
            });
        }
        c
    }

    /// One call of etcd's JSON gateway at a live member's plain-HTTP port, as `root` once
    /// auth is on: the answer's status and JSON.
    pub fn gateway(&self, path: &str, body: &Value) -> (u16, Value) {
        let token = self.root_password.as_ref().map(|pw| {
            let login = json!({ "name": "root", "password": pw });
            let (status, v) = self.gateway_as(None, "/v3/auth/authenticate", &login);
            assert_eq!(status, 200, "authenticate root: {v}");
            v["token"].as_str().expect("root's token").to_owned()
        });
        self.gateway_as(token.as_deref(), path, body)
    }

    /// [`EtcdCluster::gateway`] with `token` (none: as nobody).
    pub fn gateway_as(&self, token: Option<&str>, path: &str, body: &Value) -> (u16, Value) {
        let m = self
            .members
            .iter()
            .find(|m| m.child.is_some())
            .expect("a live etcd member");
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(t) = token.filter(|t| !t.is_empty()) {
            headers.push(("Authorization", t));
        }
        let r = http(m.side, "POST", path, &headers, body.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("etcd {path}: {e}"));
        let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        (r.status, v)
    }

    /// `root` (role root), a role that may read and write under [`Secured::PREFIX`] only and
    /// the user `pbs` with it, then `auth enable`.
    fn enable_auth(&mut self) {
        let root_pw = format!("root-{}", std::process::id());
        let pbs_pw = format!("pbs-{}-secret", std::process::id());
        let end = format!("{}0", Secured::PREFIX);
        let steps = [
            (
                "/v3/auth/user/add",
                json!({ "name": "root", "password": root_pw }),
            ),
            ("/v3/auth/role/add", json!({ "name": "root" })),
            (
                "/v3/auth/user/grant",
                json!({ "user": "root", "role": "root" }),
            ),
            ("/v3/auth/role/add", json!({ "name": "pullback" })),
            (
                "/v3/auth/role/grant",
                json!({ "name": "pullback", "perm": {
                    "permType": "READWRITE",
                    "key": b64(format!("{}/", Secured::PREFIX).as_bytes()),
                    "range_end": b64(end.as_bytes()),
                } }),
            ),
            (
                "/v3/auth/user/add",
                json!({ "name": "pbs", "password": pbs_pw }),
            ),
            (
                "/v3/auth/user/grant",
                json!({ "user": "pbs", "role": "pullback" }),
            ),
            ("/v3/auth/enable", json!({})),
        ];
        for (path, body) in steps {
            let (status, v) = self.gateway_as(None, path, &body);
            // etcd 3.4 has a role `root` already on some versions: adding it again is fine.
            let exists = v.to_string().contains("already exists");
            assert!(status == 200 || exists, "etcd {path}: {status} {v}");
        }
        let s = self.secured.as_ref().expect("secured");
        fs::write(&s.password_file, format!("{pbs_pw}\n")).expect("password file");
        self.root_password = Some(root_pw);
    }

    /// The secured cluster's files and credentials; panics on a plain cluster.
    pub fn secured(&self) -> &Secured {
        self.secured.as_ref().expect("a secured etcd cluster")
    }

    /// The members' client URLs.
    pub fn endpoints(&self) -> Vec<String> {
        let scheme = if self.secured.is_some() {
            "https"
        } else {
            "http"
        };
        self.members
            .iter()
            .map(|m| format!("{scheme}://127.0.0.1:{}", m.client))
            .collect()
    }

    /// The PBS config section for this cluster, keys under `prefix`; with the CA, the client
    /// certificate and the user of a secured cluster.
    pub fn toml(&self, prefix: &str, lease_secs: u64) -> String {
        self.toml_with(prefix, lease_secs, self.secured.as_ref())
    }

    /// [`EtcdCluster::toml`] with the security keys of `secured` (none: plain).
    pub fn toml_with(&self, prefix: &str, lease_secs: u64, secured: Option<&Secured>) -> String {
        let extra = secured.map_or(String::new(), Secured::keys);
        let eps = self
            .endpoints()
            .iter()
            .map(|e| format!("{e:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "[coordinator]\netcd = {{ endpoints = [{eps}], prefix = {prefix:?}, timeout_secs = 3, main_lease_secs = {lease_secs}{extra} }}\n"
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
                        m.side,
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
        let body = json!({ "key": b64(key.as_bytes()), "serializable": serializable });
        let (status, v) = self.gateway("/v3/kv/range", &body);
        assert_eq!(status, 200, "etcd range {key}: {v}");
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

pub fn b64(data: &[u8]) -> String {
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
