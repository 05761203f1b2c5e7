//! A whole pipeline on loopback for the end-to-end tests: one `pbs`, one
//! `exporter` and N `importer` daemons, each a separate process of the real
//! binary, configured in a temporary folder with their own ports and tokens
//! (so tests run in parallel), killed when the [`Cluster`] is dropped.
//!
//! Also here: a tiny blocking HTTP/1.1 client ([`http`]), Prometheus text
//! parsing ([`metric_sum`]), a condition poller ([`wait_for`]) and a TCP
//! [`Proxy`] that can corrupt or slow down the responses it relays.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::{bin, Pbs, Run};

/// How long a condition may take before a test gives up: generous, as the
/// machine may be busy; tests never assert on how long something took.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// Poll `f` until it returns `Some`, or panic naming `what` after `DEADLINE`.
#[track_caller]
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + DEADLINE;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "gave up after {DEADLINE:?} waiting for {what}"
        );
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------- ports

/// A loopback port held by a bound, not listening, socket: nobody else can
/// take it, and connecting to it is refused at once. Released by
/// [`PortHold::release`] just before a daemon binds it.
#[derive(Debug)]
pub struct PortHold {
    pub port: u16,
    fd: Option<OwnedFd>,
}

impl PortHold {
    pub fn new() -> PortHold {
        // SAFETY: plain socket calls on a fresh descriptor that OwnedFd then owns.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
            let fd = OwnedFd::from_raw_fd(fd);
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            sa.sin_port = 0;
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let r = libc::bind(
                fd.as_raw_fd(),
                &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                len,
            );
            assert_eq!(r, 0, "bind: {}", io::Error::last_os_error());
            let mut got: libc::sockaddr_in = std::mem::zeroed();
            let mut glen = len;
            let r = libc::getsockname(
                fd.as_raw_fd(),
                &mut got as *mut libc::sockaddr_in as *mut libc::sockaddr,
                &mut glen,
            );
            assert_eq!(r, 0, "getsockname: {}", io::Error::last_os_error());
            PortHold {
                port: u16::from_be(got.sin_port),
                fd: Some(fd),
            }
        }
    }

    pub fn release(&mut self) {
        self.fd = None;
    }
}

impl Default for PortHold {
    fn default() -> Self {
        Self::new()
    }
}

// ---------------------------------------------------------------- HTTP

/// One HTTP answer.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// One HTTP/1.1 request to `127.0.0.1:port` (`Connection: close`).
/// `headers` are sent as given (e.g. `("Authorization", "token ...")`).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<HttpResponse> {
    http_timeout(port, method, path, headers, body, DEADLINE)
}

/// [`http`] with a time limit for each read and write.
pub fn http_timeout(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<HttpResponse> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_response(raw: &[u8]) -> io::Result<HttpResponse> {
    let end = find(raw, b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let nl = find(&rest[at..], b"\r\n").ok_or_else(|| bad("bad chunk"))?;
            let size_txt = String::from_utf8_lossy(&rest[at..at + nl]).into_owned();
            let size = usize::from_str_radix(size_txt.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
            at += nl + 2;
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(at..at + size).ok_or_else(|| bad("short chunk"))?);
            at += size + 2;
        }
        out
    } else {
        match headers.iter().find(|(k, _)| k == "content-length") {
            Some((_, v)) => {
                let n: usize = v.parse().map_err(|_| bad("bad content-length"))?;
                rest.get(..n).ok_or_else(|| bad("short body"))?.to_vec()
            }
            None => rest.to_vec(),
        }
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// Sum of every series of metric `name` in a Prometheus text exposition.
pub fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let base = series.split('{').next()?;
            (base == name).then(|| value.trim().parse::<f64>().ok())?
        })
        .map(|v| v as u64)
        .sum()
}

// ---------------------------------------------------------------- proxy

/// A TCP proxy on loopback that relays HTTP/1.1 exchanges to a target port
/// and can damage (`corrupt`) or slow down (`throttle`, bytes per second)
/// the responses it relays. Requests pass unchanged.
pub struct Proxy {
    pub port: u16,
    pub target: Arc<AtomicU16>,
    /// Flip one byte in the middle of every response body over 4 KiB.
    pub corrupt: Arc<AtomicBool>,
    /// Responses damaged so far.
    pub corrupted: Arc<AtomicU64>,
    /// Response body bytes relayed so far.
    pub relayed: Arc<AtomicU64>,
    /// At most this many response body bytes per second (0: no limit).
    pub throttle: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

#[derive(Clone)]
struct ProxyShared {
    target: Arc<AtomicU16>,
    corrupt: Arc<AtomicBool>,
    corrupted: Arc<AtomicU64>,
    relayed: Arc<AtomicU64>,
    throttle: Arc<AtomicU64>,
}

impl Proxy {
    pub fn start(target: u16) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = l.local_addr().expect("proxy address").port();
        let sh = ProxyShared {
            target: Arc::new(AtomicU16::new(target)),
            corrupt: Arc::new(AtomicBool::new(false)),
            corrupted: Arc::new(AtomicU64::new(0)),
            relayed: Arc::new(AtomicU64::new(0)),
            throttle: Arc::new(AtomicU64::new(0)),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (sh2, stop2) = (sh.clone(), stop.clone());
        thread::spawn(move || {
            for c in l.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = c else { continue };
                let sh = sh2.clone();
                thread::spawn(move || {
                    let _ = relay(client, &sh);
                });
            }
        });
        Proxy {
            port,
            target: sh.target,
            corrupt: sh.corrupt,
            corrupted: sh.corrupted,
            relayed: sh.relayed,
            throttle: sh.throttle,
            stop,
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn relay(client: TcpStream, sh: &ProxyShared) -> io::Result<()> {
    let server = TcpStream::connect(("127.0.0.1", sh.target.load(Ordering::SeqCst)))?;
    let (mut c_in, mut s_out) = (client.try_clone()?, server.try_clone()?);
    thread::spawn(move || {
        let _ = io::copy(&mut c_in, &mut s_out);
        let _ = s_out.shutdown(Shutdown::Write);
    });
    let mut from = BufReader::with_capacity(1 << 16, server);
    let mut to = client;
    let r = relay_responses(&mut from, &mut to, sh);
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.get_ref().shutdown(Shutdown::Both);
    r
}

fn relay_responses(
    from: &mut BufReader<TcpStream>,
    to: &mut TcpStream,
    sh: &ProxyShared,
) -> io::Result<()> {
    loop {
        // Headers, line by line.
        let mut head = Vec::new();
        let mut len: Option<usize> = None;
        loop {
            let mut line = Vec::new();
            if from.read_until(b'\n', &mut line)? == 0 {
                return Ok(()); // closed between responses
            }
            let text = String::from_utf8_lossy(&line).to_ascii_lowercase();
            if let Some(v) = text.strip_prefix("content-length:") {
                len = v.trim().parse().ok();
            }
            head.extend_from_slice(&line);
            if line == b"\r\n" || line == b"\n" {
                break;
            }
        }
        to.write_all(&head)?;
        let Some(len) = len else {
            // Not a length-delimited body: relay the rest as it comes.
            io::copy(from, to)?;
            return Ok(());
        };
        let mut body = vec![0u8; len];
        from.read_exact(&mut body)?;
        if len > 4096 && sh.corrupt.load(Ordering::SeqCst) {
            body[len / 2] ^= 0x55;
            sh.corrupted.fetch_add(1, Ordering::SeqCst);
        }
        for piece in body.chunks(64 << 10) {
            let rate = sh.throttle.load(Ordering::SeqCst);
            if rate > 0 {
                thread::sleep(Duration::from_secs_f64(piece.len() as f64 / rate as f64));
            }
            to.write_all(piece)?;
            sh.relayed.fetch_add(piece.len() as u64, Ordering::SeqCst);
        }
    }
}

// ---------------------------------------------------------------- daemons

/// Which daemon of a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Who {
    Pbs,
    Exporter,
    Importer(usize),
}

impl Who {
    fn name(self) -> String {
        match self {
            Who::Pbs => "pbs".into(),
            Who::Exporter => "exporter".into(),
            Who::Importer(i) => format!("importer{i}"),
        }
    }
}

/// A running daemon process, killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Daemon {
    pub child: Child,
}

impl Daemon {
    /// `BIN --config CONFIG serve`, its output appended to `log`, dying with the test.
    pub fn serve(binary: &str, config: &Path, log: &Path, envs: &[(String, String)]) -> Daemon {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("daemon log");
        let mut c = Command::new(bin(binary));
        c.arg("--config")
            .arg(config)
            .arg("serve")
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .env("PULLBACK_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out);
        // SAFETY: prctl is async-signal-safe; the child dies with the test.
        unsafe {
            c.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        Daemon {
            child: c.spawn().unwrap_or_else(|e| panic!("{binary} serve: {e}")),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What to build; [`Default`] is one importer, the `files` hooks, two
/// attempts everywhere and a max age of a day.
#[derive(Clone, Debug)]
pub struct Options {
    pub source: String,
    pub importers: usize,
    /// Export hook (default: deploy/hooks/files/export).
    pub export_hook: Option<PathBuf>,
    /// Import hook per importer (default: deploy/hooks/files/import).
    pub import_hooks: Vec<Option<PathBuf>>,
    pub exporter_attempts: u32,
    pub pull_attempts: u32,
    pub max_age_secs: u64,
    /// Put a [`Proxy`] between the PBS and the exporter.
    pub proxy: bool,
    /// Put a [`Proxy`] between the clones and the PBS (what they pull from and say hello
    /// to): `Cluster::pbs_proxy`.
    pub pbs_proxy: bool,
    /// `[takeover] password_hash` of every importer (an argon2 PHC string).
    pub takeover_hash: Option<String>,
    /// The exporter's `hooks.demote`.
    pub demote_hook: Option<PathBuf>,
    /// Every importer's `hooks.promote`.
    pub promote_hook: Option<PathBuf>,
    /// TOML appended to the PBS config (e.g. a `[failover]` section, more `[[importer]]`s).
    pub pbs_extra: String,
    /// The importers configured `spare = true` at the PBS.
    pub spares: Vec<usize>,
    /// Every importer's `receive_timeout_secs` (its default when None).
    pub receive_timeout_secs: Option<u64>,
    /// More (peer, token) pairs the PBS accepts (e.g. a mirroring PBS).
    pub pbs_peers: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            source: "files".into(),
            importers: 1,
            export_hook: None,
            import_hooks: Vec::new(),
            exporter_attempts: 2,
            pull_attempts: 2,
            max_age_secs: 86_400,
            proxy: false,
            pbs_proxy: false,
            takeover_hash: None,
            demote_hook: None,
            promote_hook: None,
            pbs_extra: String::new(),
            spares: Vec::new(),
            receive_timeout_secs: None,
            pbs_peers: Vec::new(),
        }
    }
}

/// The reference `files` hooks (deploy/hooks/files).
pub fn files_hook(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/hooks/files")
        .join(name)
}

/// Write an executable shell script (atomically: a hook may be running).
pub fn write_script(path: &Path, body: &str) {
    let tmp = path.with_extension("tmp-script");
    if let Some(d) = path.parent() {
        fs::create_dir_all(d).expect("script folder");
    }
    fs::write(&tmp, format!("#!/bin/sh\n{body}\n")).expect("write script");
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).expect("chmod script");
    fs::rename(&tmp, path).expect("put the script in place");
}

/// An import hook that, while the file `block` exists, touches `started` and
/// holds until `release` appears (at most 2 minutes), then runs the files
/// import hook: an import that is "running" for as long as a test needs.
pub struct HeldImport {
    pub hook: PathBuf,
    pub block: PathBuf,
    pub started: PathBuf,
    pub release: PathBuf,
}

impl HeldImport {
    pub fn new(dir: &Path, name: &str) -> HeldImport {
        let h = HeldImport {
            hook: dir.join(name),
            block: dir.join("block"),
            started: dir.join("started"),
            release: dir.join("release"),
        };
        write_script(
            &h.hook,
            &format!(
                "if [ -e {b} ]; then touch {s}; n=0; while [ ! -e {r} ] && [ $n -lt 2400 ]; do sleep 0.05; n=$((n+1)); done; fi\nexec {i}",
                b = h.block.display(),
                s = h.started.display(),
                r = h.release.display(),
                i = files_hook("import").display()
            ),
        );
        h
    }
}

fn unique_token(what: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    let a = h.finish();
    h.write_u64(a);
    format!("{what}-{a:016x}{:016x}", h.finish())
}

/// The tokens of a cluster (each at least 16 characters, all different).
#[derive(Clone, Debug)]
pub struct Tokens {
    /// The exporter notifies the PBS with it.
    pub notify: String,
    /// The PBS reads the exporter with it.
    pub pull: String,
    /// The PBS pushes to importer i with `push[i]`.
    pub push: Vec<String>,
    /// Peer "admin" on every daemon (status, metrics, `exporter run`).
    pub admin: String,
    /// Importer i speaks to the coordinator (the PBS, peer `clone{i}`) with `coord[i]`.
    pub coord: Vec<String>,
}

impl Tokens {
    pub fn all(&self) -> Vec<&str> {
        let mut v = vec![
            self.notify.as_str(),
            self.pull.as_str(),
            self.admin.as_str(),
        ];
        v.extend(self.push.iter().map(String::as_str));
        v.extend(self.coord.iter().map(String::as_str));
        v
    }
}

/// One pipeline: folders, configs, ports, tokens and the daemons.
pub struct Cluster {
    pub dir: TempDir,
    pub opts: Options,
    pub tokens: Tokens,
    pbs_port: PortHold,
    exporter_port: PortHold,
    importer_ports: Vec<PortHold>,
    pbs: Option<Daemon>,
    exporter: Option<Daemon>,
    importers: Vec<Option<Daemon>>,
    pub proxy: Option<Proxy>,
    /// Between the clones and the PBS, when `Options::pbs_proxy`.
    pub pbs_proxy: Option<Proxy>,
}

impl Cluster {
    /// Folders and configs; nothing started. The source folder (`src()`)
    /// exists, empty.
    pub fn new(opts: Options) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("pullback-e2e-")
            .tempdir()
            .expect("temp dir");
        fs::create_dir_all(dir.path().join("src")).expect("src");
        fs::create_dir_all(dir.path().join("logs")).expect("logs");
        let n = opts.importers;
        let tokens = Tokens {
            notify: unique_token("notify"),
            pull: unique_token("pull"),
            push: (0..n).map(|i| unique_token(&format!("push{i}"))).collect(),
            admin: unique_token("admin"),
            coord: (0..n).map(|i| unique_token(&format!("coord{i}"))).collect(),
        };
        let exporter_port = PortHold::new();
        let proxy = opts.proxy.then(|| Proxy::start(exporter_port.port));
        let pbs_port = PortHold::new();
        let pbs_proxy = opts.pbs_proxy.then(|| Proxy::start(pbs_port.port));
        let c = Cluster {
            dir,
            tokens,
            pbs_port,
            exporter_port,
            importer_ports: (0..n).map(|_| PortHold::new()).collect(),
            pbs: None,
            exporter: None,
            importers: (0..n).map(|_| None).collect(),
            proxy,
            pbs_proxy,
            opts,
        };
        c.write_configs();
        c
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The folder the export hook copies (PULLBACK_FILES_SOURCE).
    pub fn src(&self) -> PathBuf {
        self.path().join("src")
    }

    /// Importer i's data, put in place by the import hook (PULLBACK_FILES_TARGET).
    pub fn clone_data(&self, i: usize) -> PathBuf {
        self.path().join(format!("clone{i}/data"))
    }

    /// Importer i's verified restore folder.
    pub fn restore_dir(&self, i: usize) -> PathBuf {
        self.path().join(format!("clone{i}/restore"))
    }

    pub fn archive(&self) -> Pbs {
        Pbs::new(self.path().join("pbs/archive"))
    }

    pub fn config(&self, who: Who) -> PathBuf {
        self.path().join(format!("{}.toml", who.name()))
    }

    pub fn log(&self, who: Who) -> PathBuf {
        self.path().join("logs").join(format!("{}.log", who.name()))
    }

    pub fn port(&self, who: Who) -> u16 {
        match who {
            Who::Pbs => self.pbs_port.port,
            Who::Exporter => self.exporter_port.port,
            Who::Importer(i) => self.importer_ports[i].port,
        }
    }

    fn hold(&mut self, who: Who) -> &mut PortHold {
        match who {
            Who::Pbs => &mut self.pbs_port,
            Who::Exporter => &mut self.exporter_port,
            Who::Importer(i) => &mut self.importer_ports[i],
        }
    }

    fn slot(&mut self, who: Who) -> &mut Option<Daemon> {
        match who {
            Who::Pbs => &mut self.pbs,
            Who::Exporter => &mut self.exporter,
            Who::Importer(i) => &mut self.importers[i],
        }
    }

    fn all(&self) -> Vec<Who> {
        let mut v = vec![Who::Pbs];
        v.extend((0..self.opts.importers).map(Who::Importer));
        v.push(Who::Exporter);
        v
    }

    /// The exporter URL the PBS pulls from (through the proxy if any).
    fn pull_port(&self) -> u16 {
        self.proxy
            .as_ref()
            .map_or(self.exporter_port.port, |p| p.port)
    }

    /// The PBS URL the clones use (through the PBS proxy if any).
    fn clone_pbs_port(&self) -> u16 {
        self.pbs_proxy
            .as_ref()
            .map_or(self.pbs_port.port, |p| p.port)
    }

    fn write_configs(&self) {
        let d = self.path().display().to_string();
        let t = &self.tokens;
        let o = &self.opts;
        let mut pbs = format!(
            r#"state_dir = "{d}/pbs"
[archive]
path = "{d}/pbs/archive"
[retention]
keep_last = 10
[server]
listen = "127.0.0.1:{pp}"
tokens = [{{ peer = "exporter", token = "{notify}" }}, {{ peer = "admin", token = "{admin}" }}{coord_tokens}]
[[source]]
name = "{src}"
max_age_secs = {max_age}
attempts = {pull_attempts}
exporter = {{ name = "exporter", url = "http://127.0.0.1:{ep}", token = "{pull}" }}
"#,
            pp = self.pbs_port.port,
            notify = t.notify,
            admin = t.admin,
            src = o.source,
            max_age = o.max_age_secs,
            pull_attempts = o.pull_attempts,
            ep = self.pull_port(),
            pull = t.pull,
            coord_tokens = (0..o.importers)
                .map(|i| format!(", {{ peer = \"clone{i}\", token = \"{}\" }}", t.coord[i]))
                .chain(
                    o.pbs_peers
                        .iter()
                        .map(|(p, tok)| format!(", {{ peer = \"{p}\", token = \"{tok}\" }}")),
                )
                .collect::<String>(),
        );
        for i in 0..o.importers {
            pbs.push_str(&format!(
                "[[importer]]\nname = \"clone{i}\"\nurl = \"http://127.0.0.1:{}\"\ntoken = \"{}\"\n",
                self.importer_ports[i].port, t.push[i]
            ));
            if o.spares.contains(&i) {
                pbs.push_str("spare = true\n");
            }
            // The PBS checks a clone's takeover password too (the token is not enough).
            if let Some(h) = &o.takeover_hash {
                pbs.push_str(&format!("takeover_password_hash = \"{h}\"\n"));
            }
        }
        pbs.push_str(&o.pbs_extra);
        fs::write(self.config(Who::Pbs), pbs).expect("pbs.toml");
        let export_hook = o
            .export_hook
            .clone()
            .unwrap_or_else(|| files_hook("export"));
        let exporter = format!(
            r#"source = "{src}"
backup_dir = "{d}/exporter/backup"
state_dir = "{d}/exporter"
schedule = "off"
attempts = {attempts}
commit_timeout_secs = 120
[hooks]
export = "{hook}"
{demote}timeout_secs = 120
[server]
listen = "127.0.0.1:{ep}"
tokens = [{{ peer = "pbs", token = "{pull}" }}, {{ peer = "admin", token = "{admin}" }}]
[[pbs]]
name = "pbs"
url = "http://127.0.0.1:{pp}"
token = "{notify}"
"#,
            src = o.source,
            attempts = o.exporter_attempts,
            hook = export_hook.display(),
            demote = o
                .demote_hook
                .as_ref()
                .map(|h| format!("demote = \"{}\"\n", h.display()))
                .unwrap_or_default(),
            ep = self.exporter_port.port,
            pull = t.pull,
            admin = t.admin,
            pp = self.pbs_port.port,
            notify = t.notify,
        );
        fs::write(self.config(Who::Exporter), exporter).expect("exporter.toml");
        for i in 0..o.importers {
            let import = o
                .import_hooks
                .get(i)
                .cloned()
                .flatten()
                .unwrap_or_else(|| files_hook("import"));
            let mut imp = format!(
                r#"name = "clone{i}"
store = "{d}/clone{i}/store"
restore_dir = "{d}/clone{i}/restore"
state_dir = "{d}/clone{i}"
{receive_timeout}[hooks]
import = "{import}"
verify = "{verify}"
{promote}timeout_secs = 120
[server]
listen = "127.0.0.1:{ip}"
tokens = [{{ peer = "pbs", token = "{push}" }}, {{ peer = "admin", token = "{admin}" }}]
"#,
                import = import.display(),
                verify = files_hook("verify").display(),
                promote = o
                    .promote_hook
                    .as_ref()
                    .map(|h| format!("promote = \"{}\"\n", h.display()))
                    .unwrap_or_default(),
                ip = self.importer_ports[i].port,
                receive_timeout = o
                    .receive_timeout_secs
                    .map(|t| format!("receive_timeout_secs = {t}\n"))
                    .unwrap_or_default(),
                push = t.push[i],
                admin = t.admin,
            );
            imp.push_str(&format!(
                "[coordinator]\nname = \"pbs\"\nurl = \"http://127.0.0.1:{}\"\ntoken = \"{}\"\n",
                self.clone_pbs_port(),
                t.coord[i]
            ));
            if let Some(h) = &o.takeover_hash {
                imp.push_str(&format!("[takeover]\npassword_hash = \"{h}\"\n"));
            }
            fs::write(self.config(Who::Importer(i)), imp).expect("importer.toml");
        }
    }

    /// Start every daemon: PBS, importers, exporter.
    pub fn start_all(&mut self) {
        for w in self.all() {
            self.start(w);
        }
    }

    /// Start one daemon and wait until it answers `GET /v1/status`. If its
    /// port was taken meanwhile, every port is picked again, the configs
    /// rewritten and the running daemons restarted.
    pub fn start(&mut self, who: Who) {
        for _ in 0..5 {
            match self.try_start(who) {
                Ok(d) => {
                    *self.slot(who) = Some(d);
                    return;
                }
                Err(log) => {
                    eprintln!("{}: port taken, picking new ports ({log})", who.name());
                    self.repick_ports(who);
                }
            }
        }
        panic!("{}: could not find a free port in 5 tries", who.name());
    }

    fn repick_ports(&mut self, also: Who) {
        let mut running: Vec<Who> = self
            .all()
            .into_iter()
            .filter(|w| w != &also && self.is_running(*w))
            .collect();
        for w in &running {
            self.kill(*w);
        }
        self.pbs_port = PortHold::new();
        self.exporter_port = PortHold::new();
        for i in 0..self.opts.importers {
            self.importer_ports[i] = PortHold::new();
        }
        if let Some(p) = &self.proxy {
            p.target.store(self.exporter_port.port, Ordering::SeqCst);
        }
        if let Some(p) = &self.pbs_proxy {
            p.target.store(self.pbs_port.port, Ordering::SeqCst);
        }
        self.write_configs();
        running.retain(|w| *w != also);
        for w in running {
            let d = self
                .try_start(w)
                .unwrap_or_else(|e| panic!("restarting {} on new ports: {e}", w.name()));
            *self.slot(w) = Some(d);
        }
    }

    pub fn is_running(&self, who: Who) -> bool {
        match who {
            Who::Pbs => self.pbs.is_some(),
            Who::Exporter => self.exporter.is_some(),
            Who::Importer(i) => self.importers[i].is_some(),
        }
    }

    /// The command line of a binary with this cluster's config for `who`.
    pub fn command(&self, who: Who) -> Command {
        let b = match who {
            Who::Pbs => "pbs",
            Who::Exporter => "exporter",
            Who::Importer(_) => "importer",
        };
        let mut c = Command::new(bin(b));
        c.arg("--config").arg(self.config(who));
        c.env("PULLBACK_LOG", "warn").stdin(Stdio::null());
        // SAFETY: prctl is async-signal-safe; the child dies with the test.
        unsafe {
            c.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        c
    }

    fn try_start(&mut self, who: Who) -> Result<Daemon, String> {
        let log_path = self.log(who);
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("daemon log");
        let _ = writeln!(log, "==== test: starting {} ====", who.name());
        let mut c = self.command(who);
        c.arg("serve")
            .env("PULLBACK_LOG", "info")
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        match who {
            Who::Exporter => {
                c.env("PULLBACK_FILES_SOURCE", self.src());
            }
            Who::Importer(i) => {
                c.env("PULLBACK_FILES_TARGET", self.clone_data(i));
            }
            Who::Pbs => {}
        }
        let port = self.port(who);
        self.hold(who).release();
        let child = c
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", who.name()));
        let mut d = Daemon { child };
        let auth = format!("token {}", self.tokens.admin);
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(st) = d.child.try_wait().expect("try_wait") {
                let text = fs::read_to_string(&log_path).unwrap_or_default();
                let last = text.lines().last().unwrap_or_default().to_string();
                if last.contains("cannot listen") || last.contains("Address already in use") {
                    return Err(last);
                }
                panic!("{} exited at start-up ({st}):\n{text}", who.name());
            }
            // A short limit: whatever else may hold the port need not answer.
            let probe = Duration::from_secs(2);
            if let Ok(r) = http_timeout(
                port,
                "GET",
                "/v1/status",
                &[("Authorization", &auth)],
                b"",
                probe,
            ) {
                if r.status == 200 {
                    return Ok(d);
                }
            }
            assert!(
                Instant::now() < end,
                "{} did not answer on port {port}",
                who.name()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The role file (`state_dir/role.json`) of the exporter or an importer, if any.
    pub fn role_file(&self, who: Who) -> Option<Value> {
        let dir = match who {
            Who::Exporter => self.path().join("exporter"),
            Who::Importer(i) => self.path().join(format!("clone{i}")),
            Who::Pbs => self.path().join("pbs"),
        };
        let text = fs::read_to_string(dir.join("role.json")).ok()?;
        Some(serde_json::from_str(&text).expect("role.json is JSON"))
    }

    /// Wait until a daemon exits by itself; its exit status (the slot is emptied).
    pub fn wait_exit(&mut self, who: Who) -> std::process::ExitStatus {
        let name = who.name();
        let d = self.slot(who).as_mut().expect("the daemon was started");
        let st = wait_for(&format!("{name} to exit"), || {
            d.child.try_wait().expect("try_wait")
        });
        *self.slot(who) = None;
        st
    }

    /// The process id of a running daemon.
    pub fn pid(&mut self, who: Who) -> Option<u32> {
        self.slot(who).as_ref().map(|d| d.child.id())
    }

    /// SIGKILL one daemon and reap it (no-op if it is not running).
    pub fn kill(&mut self, who: Who) {
        drop(self.slot(who).take());
    }

    /// Run a command to completion.
    pub fn run(&self, who: Who, args: &[&str]) -> Run {
        let out = self
            .command(who)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {args:?}: {e}"));
        Run {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `exporter run` (through the running daemon).
    pub fn exporter_run(&self) -> Run {
        self.run(Who::Exporter, &["run"])
    }

    /// `exporter run`, required to succeed.
    #[track_caller]
    pub fn export_ok(&self) -> Run {
        let r = self.exporter_run();
        assert!(
            r.status.success(),
            "exporter run failed ({}):\nstdout: {}\nstderr: {}",
            r.status,
            r.stdout,
            r.stderr
        );
        r
    }

    /// `pbs status --json`: exit code and the report.
    pub fn pbs_status(&self) -> (i32, Value) {
        let r = self.run(Who::Pbs, &["status", "--json"]);
        (r.code().unwrap_or(-1), r.json())
    }

    /// `importer status --json` of importer i.
    pub fn importer_status(&self, i: usize) -> Value {
        let r = self.run(Who::Importer(i), &["status", "--json"]);
        assert!(r.status.success(), "importer status: {}", r.stderr);
        r.json()
    }

    /// `POST /v1/notify` to the PBS with the exporter's notify token (as the exporter,
    /// or a peer that stole its token, would send it).
    pub fn notify(&self, body: &Value) -> HttpResponse {
        let auth = format!("token {}", self.tokens.notify);
        http(
            self.port(Who::Pbs),
            "POST",
            "/v1/notify",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body.to_string().as_bytes(),
        )
        .unwrap_or_else(|e| panic!("POST /v1/notify: {e}"))
    }

    /// An authenticated (admin) request to a daemon.
    pub fn admin(&self, who: Who, method: &str, path: &str) -> HttpResponse {
        let auth = format!("token {}", self.tokens.admin);
        http(
            self.port(who),
            method,
            path,
            &[("Authorization", &auth)],
            b"",
        )
        .unwrap_or_else(|e| panic!("{method} {path} on {}: {e}", who.name()))
    }

    /// Sum of a metric's series on a daemon (0 when it has none yet).
    pub fn metric(&self, who: Who, name: &str) -> u64 {
        let r = self.admin(who, "GET", "/metrics");
        assert_eq!(r.status, 200, "/metrics on {}: {}", who.name(), r.text());
        metric_sum(&r.text(), name)
    }

    /// Importer i's live status (`GET /v1/status`), or None when it does not answer.
    pub fn importer_live(&self, i: usize) -> Option<Value> {
        let auth = format!("token {}", self.tokens.admin);
        let r = http(
            self.port(Who::Importer(i)),
            "GET",
            "/v1/status",
            &[("Authorization", &auth)],
            b"",
        )
        .ok()?;
        (r.status == 200).then(|| r.json())
    }

    /// Wait until every importer reports `gen` restored and verified.
    pub fn wait_imported(&self, gen: &str) {
        for i in 0..self.opts.importers {
            wait_for(&format!("importer {i} to report {gen} verified"), || {
                let s = self.importer_live(i)?;
                let v = &s["last_valid"];
                (v["generation"] == gen && v["verified"] == true && s["importing"].is_null())
                    .then_some(())
            });
        }
    }

    /// `exporter run`, then wait for every importer to hold `SOURCE/seq`.
    pub fn cycle(&self, seq: u64) -> Run {
        let r = self.export_ok();
        let gen = format!("{}/{seq}", self.opts.source);
        assert!(
            r.stdout.contains(&format!("committed as {gen}")),
            "exporter run: {}",
            r.stdout
        );
        self.wait_imported(&gen);
        r
    }

    /// The state of a PBS transaction (`GET /v1/transactions/{tx}`), or
    /// None when the PBS does not know it.
    pub fn pbs_tx(&self, tx: &str) -> Option<Value> {
        let r = self.admin(Who::Pbs, "GET", &format!("/v1/transactions/{tx}"));
        match r.status {
            200 => Some(r.json()),
            404 => None,
            s => panic!("GET /v1/transactions/{tx}: HTTP {s}: {}", r.text()),
        }
    }

    fn dump_logs(&self) {
        for w in self.all() {
            let text = fs::read_to_string(self.log(w)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(60);
            eprintln!(
                "---- {} log (last {} lines) ----\n{}",
                w.name(),
                lines.len() - from,
                lines[from..].join("\n")
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The exporter first: it may be waiting on the others.
        self.exporter = None;
        self.pbs = None;
        for d in &mut self.importers {
            *d = None;
        }
        if thread::panicking() {
            self.dump_logs();
            if std::env::var_os("PULLBACK_KEEP_TEST_DIR").is_some() {
                self.dir.disable_cleanup(true);
                eprintln!("(test folder kept: {})", self.path().display());
            }
        }
    }
}
