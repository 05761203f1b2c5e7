//! The takeover page in a real browser: Debian's headless Chromium, driven through
//! chromedriver (the W3C WebDriver HTTP/JSON protocol, spoken here with the harness's
//! small HTTP client). A person opens the clone's `/takeover` page, reads the last valid
//! backup and when its data was taken, types the password, presses "Take over" and reads
//! the result; the PBS then shows the clone as MAIN/Leader and the old main Broken.
//!
//! Needs `chromium` and `chromium-driver` (Debian packages, installed by `make deps`);
//! without them the test fails and says so. `PULLBACK_CHROMIUM` and
//! `PULLBACK_CHROMEDRIVER` override the paths; `PULLBACK_SCREENSHOT_DIR` keeps a copy of
//! the screenshots (they are always written to the test's temporary folder).

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use pullback_tests::cluster::{Cluster, Options, PortHold, Who};
use pullback_tests::write;
use serde_json::{json, Value};

use pullback_tests::ha::{node_row, password_hash as hash, PASSWORD};

/// W3C WebDriver's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One WebDriver command may take this long (a page load included).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

fn tool(env: &str, default: &str) -> PathBuf {
    let p = std::env::var_os(env).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        p.exists(),
        "{} not found: this test needs Debian's chromium and chromium-driver packages; \
         run `make deps` (or `apt-get install -y chromium chromium-driver`), \
         or set {env} to the binary",
        p.display()
    );
    p
}

// ---------------------------------------------------------------- WebDriver

/// One HTTP/1.1 exchange with chromedriver on `127.0.0.1:port`: (status, body).
/// chromedriver keeps the connection open whatever `Connection: close` says, so the body
/// is read by its Content-Length, not to the end of the stream.
fn driver_http(
    port: u16,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<(u16, Vec<u8>)> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Accept: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json; charset=utf-8\r\n");
    }
    req.push_str("\r\n");
    (&s).write_all(req.as_bytes())?;
    (&s).write_all(body)?;
    let mut r = BufReader::new(s);
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(&format!("bad status line {line:?}")))?;
    let mut len = None;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(bad("closed in the headers"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                len = v.trim().parse::<usize>().ok();
            }
            if k.trim().eq_ignore_ascii_case("transfer-encoding") {
                return Err(bad("chunked answers are not expected from chromedriver"));
            }
        }
    }
    let len = len.ok_or_else(|| bad("no Content-Length"))?;
    let mut out = vec![0; len];
    r.read_exact(&mut out)?;
    Ok((status, out))
}

/// A chromedriver process and one browser session, both ended when dropped.
struct Browser {
    driver: Child,
    port: u16,
    session: String,
    log: PathBuf,
}

impl Browser {
    /// Start chromedriver on a free loopback port and open a headless Chromium session
    /// whose profile lives in `dir`.
    fn start(dir: &Path) -> Browser {
        let chromium = tool("PULLBACK_CHROMIUM", "/usr/bin/chromium");
        let chromedriver = tool("PULLBACK_CHROMEDRIVER", "/usr/bin/chromedriver");
        let log = dir.join("chromedriver.log");
        let profile = dir.join("chromium-profile");
        fs::create_dir_all(&profile).expect("profile folder");
        for attempt in 0..3 {
            let mut hold = PortHold::new();
            let port = hold.port;
            hold.release();
            let mut c = Command::new(&chromedriver);
            c.arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // SAFETY: prctl is async-signal-safe; chromedriver dies with the test.
            unsafe {
                c.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let mut driver = c
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", chromedriver.display()));
            let end = Instant::now() + Duration::from_secs(20);
            let ready = loop {
                if driver.try_wait().expect("try_wait").is_some() {
                    break false; // the port was taken meanwhile, most likely
                }
                let r = driver_http(port, "GET", "/status", b"", Duration::from_secs(2));
                if let Ok((200, body)) = r {
                    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                    if v["value"]["ready"] == true {
                        break true;
                    }
                }
                assert!(
                    Instant::now() < end,
                    "chromedriver did not answer on port {port} (log: {})",
                    log.display()
                );
                thread::sleep(Duration::from_millis(50));
            };
            if !ready {
                eprintln!("chromedriver exited at start (attempt {attempt}); another port");
                continue;
            }
            let mut b = Browser {
                driver,
                port,
                session: String::new(),
                log: log.clone(),
            };
            let caps = json!({
                "capabilities": {
                    "alwaysMatch": {
                        "browserName": "chrome",
                        "goog:chromeOptions": {
                            "binary": chromium,
                            "args": [
                                "--headless",
                                "--no-sandbox",
                                "--disable-gpu",
                                "--disable-quic",
                                "--no-first-run",
                                "--disable-background-networking",
                                "--disable-component-update",
                                "--disable-sync",
                                "--window-size=1100,1000",
                                format!("--user-data-dir={}", profile.display()),
                            ],
                        },
                    },
                },
            });
            let v = b.call("POST", "/session", Some(caps));
            b.session = v["sessionId"]
                .as_str()
                .unwrap_or_else(|| panic!("no sessionId in {v}"))
                .to_string();
            return b;
        }
        panic!(
            "chromedriver could not start in 3 tries (log: {})",
            log.display()
        );
    }

    /// One WebDriver command; its `value`, or a panic with the driver's error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let (status, answer) =
            driver_http(self.port, method, path, body.as_bytes(), COMMAND_TIMEOUT)
                .map_err(|e| format!("{e} (chromedriver log: {})", self.log.display()))?;
        let v: Value = serde_json::from_slice(&answer).map_err(|e| {
            format!(
                "HTTP {status}: not JSON ({e}): {}",
                String::from_utf8_lossy(&answer)
            )
        })?;
        if status != 200 {
            return Err(format!(
                "HTTP {status}: {}: {}",
                v["value"]["error"], v["value"]["message"]
            ));
        }
        Ok(v["value"].clone())
    }

    fn s(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    fn goto(&self, url: &str) {
        self.call("POST", &self.s("/url"), Some(json!({ "url": url })));
    }

    /// The element found by `using` ("css selector" or "xpath"), waiting up to 10 s.
    fn find(&self, using: &str, value: &str) -> String {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let q = json!({ "using": using, "value": value });
            match self.try_call("POST", &self.s("/element"), Some(q)) {
                Ok(v) => {
                    return v[ELEMENT]
                        .as_str()
                        .unwrap_or_else(|| panic!("no element reference in {v}"))
                        .to_string()
                }
                Err(e) => assert!(
                    Instant::now() < end,
                    "no element {value:?} on the page: {e}\npage text:\n{}",
                    self.text_of("body")
                ),
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn css(&self, selector: &str) -> String {
        self.find("css selector", selector)
    }

    /// The rendered text of an element, as a person reads it.
    fn text(&self, el: &str) -> String {
        self.call("GET", &self.s(&format!("/element/{el}/text")), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn text_of(&self, selector: &str) -> String {
        let q = json!({ "using": "css selector", "value": selector });
        match self.try_call("POST", &self.s("/element"), Some(q)) {
            Ok(v) => self.text(v[ELEMENT].as_str().unwrap_or_default()),
            Err(e) => format!("({selector}: {e})"),
        }
    }

    /// The cell next to the header `th` in the page's first table of that header.
    fn row(&self, th: &str) -> String {
        let el = self.find("xpath", &format!("//tr[th[normalize-space()='{th}']]/td"));
        self.text(&el)
    }

    fn attr(&self, el: &str, name: &str) -> Value {
        self.call(
            "GET",
            &self.s(&format!("/element/{el}/attribute/{name}")),
            None,
        )
    }

    fn prop(&self, el: &str, name: &str) -> Value {
        self.call(
            "GET",
            &self.s(&format!("/element/{el}/property/{name}")),
            None,
        )
    }

    fn type_into(&self, el: &str, text: &str) {
        self.call(
            "POST",
            &self.s(&format!("/element/{el}/value")),
            Some(json!({ "text": text })),
        );
    }

    fn click(&self, el: &str) {
        self.call(
            "POST",
            &self.s(&format!("/element/{el}/click")),
            Some(json!({})),
        );
    }

    fn title(&self) -> String {
        self.call("GET", &self.s("/title"), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// A PNG of the viewport, written to `path` (and to `PULLBACK_SCREENSHOT_DIR` if set).
    fn screenshot(&self, path: &Path) {
        let b64 = self.call("GET", &self.s("/screenshot"), None);
        let png = base64_decode(b64.as_str().expect("screenshot is a string"));
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000,
            "not a PNG screenshot ({} bytes)",
            png.len()
        );
        fs::write(path, &png).expect("write the screenshot");
        if let Some(d) = std::env::var_os("PULLBACK_SCREENSHOT_DIR") {
            let d = PathBuf::from(d);
            fs::create_dir_all(&d).expect("screenshot folder");
            fs::write(d.join(path.file_name().expect("file name")), &png)
                .expect("copy the screenshot");
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            // Closes Chromium; best effort.
            let _ = driver_http(
                self.port,
                "DELETE",
                &format!("/session/{}", self.session),
                b"",
                Duration::from_secs(10),
            );
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {:?}", c as char),
        }
    };
    let clean: Vec<u8> = s
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

// ---------------------------------------------------------------- the test

/// The PBS's view of one node: (role, status, epoch).
fn node(c: &Cluster, name: &str) -> (String, String, u64) {
    let n = node_row(c, name);
    (n.role, n.status, n.epoch)
}

#[test]
fn takeover_in_a_real_browser() {
    let shots = tempfile::Builder::new()
        .prefix("pullback-chromium-")
        .tempdir()
        .expect("tmp");
    // Fail early, before any daemon starts, when the browser is missing.
    tool("PULLBACK_CHROMIUM", "/usr/bin/chromium");
    tool("PULLBACK_CHROMEDRIVER", "/usr/bin/chromedriver");

    let mut c = Cluster::new(Options {
        takeover_hash: Some(hash(PASSWORD)),
        ..Options::default()
    });
    write(&c.src().join("data.txt"), b"the data to keep\n");
    c.start_all();
    c.cycle(1);
    let st = c.importer_live(0).expect("clone0 answers");
    let taken_at = st["last_valid"]["taken_at"]
        .as_str()
        .expect("taken_at")
        .to_string();
    assert!(!taken_at.is_empty(), "{st}");
    assert_eq!(node(&c, "exporter"), ("MAIN".into(), "Leader".into(), 0));
    // The main goes down; a person takes over on clone0's page.
    c.kill(Who::Exporter);

    let b = Browser::start(shots.path());
    let page = format!("http://127.0.0.1:{}/takeover", c.port(Who::Importer(0)));
    b.goto(&page);
    assert_eq!(b.title(), "pullback takeover");
    let h1 = b.text_of("h1");
    assert_eq!(h1, "Takeover: clone clone0");
    // The status a person decides on.
    assert_eq!(b.row("Last valid backup, data taken at"), taken_at);
    assert_eq!(b.row("Generation"), "files/1");
    assert_eq!(b.row("Restore and verify passed"), "yes");
    assert_eq!(b.row("Import running"), "no");
    assert_eq!(b.row("Role"), "BACKUP");
    assert_eq!(b.row("Epoch"), "0");
    let window = b.row("Data-loss window (now − taken at)");
    assert!(
        window.ends_with(" s") && window.contains(" h "),
        "data-loss window: {window:?}"
    );
    let body = b.text_of("body");
    assert!(
        body.contains("exporter") && body.contains("Leader"),
        "the nodes table lists the main: {body}"
    );
    b.screenshot(&shots.path().join("1-status.png"));

    // Type the password (a password field, so the screen shows dots) and take over.
    let pw = b.css("form input[name=password]");
    assert_eq!(b.attr(&pw, "type"), "password");
    let force = b.css("form input[type=checkbox][name=force]");
    assert_eq!(b.prop(&force, "checked"), false, "force is off by default");
    b.type_into(&pw, PASSWORD);
    assert_eq!(b.prop(&pw, "value"), PASSWORD);
    b.screenshot(&shots.path().join("2-password.png"));
    let button = b.css("form button[type=submit]");
    assert_eq!(b.text(&button), "Take over");
    b.click(&button);

    // The result page: success, the new epoch, this node MAIN, the old main Broken.
    let result = b.css("#result");
    let msg = b.text(&result);
    assert!(
        msg.starts_with("Takeover done: this node is MAIN at epoch 1"),
        "result: {msg}\npage:\n{}",
        b.text_of("body")
    );
    assert_eq!(b.attr(&result, "class"), "ok");
    assert_eq!(b.row("Role"), "MAIN");
    assert_eq!(b.row("Epoch"), "1");
    let cells = |name: &str| {
        let el = b.find("xpath", &format!("//tr[td[1][normalize-space()='{name}']]"));
        b.text(&el)
    };
    let clone_row = cells("clone0");
    assert!(
        clone_row.contains("MAIN") && clone_row.contains("Leader"),
        "clone0 row on the result page: {clone_row}"
    );
    let old_row = cells("exporter");
    assert!(
        old_row.contains("BACKUP") && old_row.contains("Broken"),
        "exporter row on the result page: {old_row}"
    );
    b.screenshot(&shots.path().join("3-result.png"));
    drop(b);

    // The clone exits 0 (its supervisor starts the exporter there) as MAIN at epoch 1.
    assert_eq!(c.wait_exit(Who::Importer(0)).code(), Some(0));
    assert_eq!(
        c.role_file(Who::Importer(0)),
        Some(json!({"role": "MAIN", "epoch": 1}))
    );
    // The coordinator agrees: its API and `pbs status --json`.
    assert_eq!(node(&c, "clone0"), ("MAIN".into(), "Leader".into(), 1));
    assert_eq!(node(&c, "exporter"), ("BACKUP".into(), "Broken".into(), 1));
    let (_, pst) = c.pbs_status();
    assert_eq!(pst["epoch"], 1, "{pst}");
    assert_eq!(pst["main"], "clone0", "{pst}");
    let status_of = |name: &str| {
        pst["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["name"] == name)
            .map(|n| (n["role"].clone(), n["status"].clone()))
            .unwrap_or_else(|| panic!("no {name} in pbs status: {pst}"))
    };
    assert_eq!(status_of("clone0"), (json!("MAIN"), json!("Leader")));
    assert_eq!(status_of("exporter"), (json!("BACKUP"), json!("Broken")));
    for f in ["1-status.png", "2-password.png", "3-result.png"] {
        assert!(shots.path().join(f).exists(), "{f}");
    }
}

#[test]
fn base64_decodes() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGVsbG8h"), b"hello!");
    assert_eq!(base64_decode("aGk="), b"hi");
    assert_eq!(base64_decode(""), b"");
}
