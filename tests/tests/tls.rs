//! The three daemons over HTTPS (rustls) with self-signed certificates that
//! each peer trusts through its `ca` setting; plain HTTP to them fails.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use pullback_tests::cluster::{files_hook, wait_for, PortHold};
use pullback_tests::{assert_same_tree, bin, snapshot, write, Rng};

struct Kill(Vec<Child>);
impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn self_signed(dir: &Path, name: &str) {
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-days", "2", "-subj", &format!("/CN={name}")])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        // An end-entity certificate (rustls refuses a CA certificate as one).
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(dir.join(format!("{name}.key")))
        .arg("-out")
        .arg(dir.join(format!("{name}.pem")))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(st.success(), "openssl could not make a certificate");
}

#[test]
fn the_pipeline_runs_over_https_with_pinned_self_signed_certificates() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    for n in ["pbs", "exporter", "importer"] {
        self_signed(d, n);
    }
    let mut ports: Vec<PortHold> = (0..3).map(|_| PortHold::new()).collect();
    let (pp, pe, pi) = (ports[0].port, ports[1].port, ports[2].port);
    let p = |n: &str| d.join(n).display().to_string();
    let admin = "tls-admin-token-0000000";
    fs::write(
        d.join("pbs.toml"),
        format!(
            r#"state_dir = "{sd}"
[archive]
path = "{ar}"
[server]
listen = "127.0.0.1:{pp}"
cert = "{pc}"
key = "{pk}"
tokens = [{{ peer = "exporter", token = "tls-notify-token-000000" }}, {{ peer = "clone", token = "tls-clone-token-0000000" }}, {{ peer = "admin", token = "{admin}" }}]
[[source]]
name = "files"
attempts = 2
exporter = {{ name = "exporter", url = "https://127.0.0.1:{pe}", token = "tls-pull-token-00000000", ca = "{ec}" }}
[[importer]]
name = "clone"
url = "https://127.0.0.1:{pi}"
token = "tls-push-token-00000000"
ca = "{ic}"
"#,
            sd = p("pbs"),
            ar = p("pbs/archive"),
            pc = p("pbs.pem"),
            pk = p("pbs.key"),
            ec = p("exporter.pem"),
            ic = p("importer.pem"),
        ),
    )
    .unwrap();
    fs::write(
        d.join("exporter.toml"),
        format!(
            r#"source = "files"
backup_dir = "{bd}"
state_dir = "{sd}"
schedule = "off"
[hooks]
export = "{hook}"
[server]
listen = "127.0.0.1:{pe}"
cert = "{ec}"
key = "{ek}"
tokens = [{{ peer = "pbs", token = "tls-pull-token-00000000" }}, {{ peer = "admin", token = "{admin}" }}]
[[pbs]]
name = "pbs"
url = "https://127.0.0.1:{pp}"
token = "tls-notify-token-000000"
ca = "{pc}"
"#,
            bd = p("exporter/backup"),
            sd = p("exporter"),
            hook = files_hook("export").display(),
            ec = p("exporter.pem"),
            ek = p("exporter.key"),
            pc = p("pbs.pem"),
        ),
    )
    .unwrap();
    fs::write(
        d.join("importer.toml"),
        format!(
            r#"name = "clone"
store = "{st}"
restore_dir = "{rd}"
state_dir = "{sd}"
[server]
listen = "127.0.0.1:{pi}"
cert = "{ic}"
key = "{ik}"
tokens = [{{ peer = "pbs", token = "tls-push-token-00000000" }}, {{ peer = "admin", token = "{admin}" }}]
[coordinator]
name = "pbs"
url = "https://127.0.0.1:{pp}"
token = "tls-clone-token-0000000"
ca = "{pc}"
"#,
            pc = p("pbs.pem"),
            st = p("clone/store"),
            rd = p("clone/restore"),
            sd = p("clone"),
            ic = p("importer.pem"),
            ik = p("importer.key"),
        ),
    )
    .unwrap();
    let src = d.join("src");
    let mut rng = Rng::new(3);
    write(&src.join("a/table.csv"), &rng.text(2_000_000));
    write(&src.join("b.bin"), &rng.bytes(100_000));

    let mut kids = Kill(Vec::new());
    for (i, who) in ["pbs", "importer", "exporter"].iter().enumerate() {
        ports[i].release();
        let c = Command::new(bin(who))
            .arg("--config")
            .arg(d.join(format!("{who}.toml")))
            .arg("serve")
            .env("PULLBACK_FILES_SOURCE", &src)
            .env("PULLBACK_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(fs::File::create(d.join(format!("{who}.log"))).unwrap())
            .spawn()
            .unwrap();
        kids.0.push(c);
    }
    for port in [pp, pe, pi] {
        wait_for("the daemons to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
    }
    // Plain HTTP to a TLS port gets no answer.
    let plain = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .arg(format!("http://127.0.0.1:{pp}/v1/status"))
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&plain.stdout), "200");

    let run = Command::new(bin("exporter"))
        .arg("--config")
        .arg(d.join("exporter.toml"))
        .arg("run")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "exporter run over HTTPS failed: {}\n{}",
        String::from_utf8_lossy(&run.stderr),
        fs::read_to_string(d.join("pbs.log")).unwrap_or_default()
    );
    wait_for("the clone to verify files/1", || {
        let out = Command::new(bin("importer"))
            .arg("--config")
            .arg(d.join("importer.toml"))
            .args(["status", "--json"])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["last_valid"]["generation"] == "files/1" && v["last_valid"]["verified"] == true)
            .then_some(())
    });
    assert_same_tree(
        &snapshot(&src),
        &snapshot(&d.join("clone/restore")),
        "clone over TLS",
    );
}
