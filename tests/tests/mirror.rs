//! A second PBS mirrors the first one's source with the one engine: told of each new
//! generation, and at its start for what it missed, it holds the same generations (same
//! numbers, epochs and contents), verifies clean, and still restores them all once the first PBS
//! is gone. Only the upstream may tell it; only the mirror's token may read the upstream.

use std::fs;
use std::process::Command;

use pullback_tests::cluster::{http, wait_for, Cluster, Daemon, Options, PortHold, Who};
use pullback_tests::{bin, snapshot, Pbs};

const READS: &str = "pbs2-reads-pbs1-0123456789";
const TELLS: &str = "pbs1-tells-pbs2-0123456789";
const ADMIN2: &str = "pbs2-admin-token-0123456789";

/// pbs2's folder and config in `c`'s folder: a mirror of `c`'s PBS (`extra`: more of the
/// `[[mirror]]` table).
fn mirror_config(c: &Cluster, p2: u16, extra: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let d2 = c.path().join("pbs2");
    fs::create_dir_all(&d2).expect("pbs2 folder");
    let cfg2 = d2.join("pbs.toml");
    fs::write(
        &cfg2,
        format!(
            r#"state_dir = "{d}"
[archive]
path = "{d}/archive"
[server]
listen = "127.0.0.1:{p2}"
tokens = [{{ peer = "pbs1", token = "{TELLS}" }}, {{ peer = "admin", token = "{ADMIN2}" }}]
[[mirror]]
source = "files"
from = {{ name = "pbs1", url = "http://127.0.0.1:{p1}", token = "{READS}" }}
{extra}
"#,
            d = d2.display(),
            p1 = c.port(Who::Pbs),
        ),
    )
    .expect("pbs2.toml");
    (d2, cfg2)
}

/// Start pbs2 on the port `port2` held, and wait until it answers.
fn start_mirror(port2: &mut PortHold, d2: &std::path::Path, cfg2: &std::path::Path) -> Daemon {
    port2.release();
    let p2 = port2.port;
    let d = Daemon::serve("pbs", cfg2, &d2.join("pbs.log"), &[]);
    wait_for("pbs2 to answer", || {
        let auth = format!("token {ADMIN2}");
        http(p2, "GET", "/v1/status", &[("Authorization", &auth)], b"")
            .ok()
            .filter(|r| r.status == 200)
    });
    d
}

fn list(ar: &Pbs) -> Vec<String> {
    ar.json(&["list"])
        .as_array()
        .expect("a list")
        .iter()
        .map(|g| g["generation"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn a_second_pbs_holds_the_same_history_and_restores_it_without_the_first() {
    let mut port2 = PortHold::new();
    let p2 = port2.port;
    let mut c = Cluster::new(Options {
        pbs_peers: vec![("pbs2".into(), READS.into())],
        pbs_extra: format!(
            "[[downstream]]\nname = \"pbs2\"\nurl = \"http://127.0.0.1:{p2}\"\ntoken = \"{TELLS}\"\n"
        ),
        ..Options::default()
    });
    let (d2, cfg2) = mirror_config(&c, p2, "");
    let mirror = Pbs::new(d2.join("archive"));
    let upstream = c.archive();

    // Generation 1 is made while the mirror is down: it takes it at its start.
    fs::write(c.src().join("data.txt"), "one\n").expect("data");
    c.start_all();
    c.cycle(1);
    let pbs2 = start_mirror(&mut port2, &d2, &cfg2);
    wait_for("the mirror to hold files/1", || {
        (list(&mirror) == ["files/1"]).then_some(())
    });
    // Then it is told of each new one.
    let mut snaps = vec![snapshot(&c.src())];
    for (n, text) in [(2, "two\n"), (3, "three\n")] {
        fs::write(c.src().join("data.txt"), text).expect("data");
        fs::write(c.src().join(format!("f{n}")), text.repeat(10_000)).expect("file");
        c.cycle(n);
        snaps.push(snapshot(&c.src()));
        wait_for(&format!("the mirror to hold files/{n}"), || {
            (list(&mirror).len() == n as usize).then_some(())
        });
    }
    // The same generations: numbers, epochs, times taken, contents (only the commit time
    // is the mirror's own).
    let records = |ar: &Pbs| {
        let mut v = ar.json(&["list"]);
        for g in v.as_array_mut().expect("a list") {
            g.as_object_mut().expect("a record").remove("committed_at");
        }
        v
    };
    assert_eq!(records(&mirror), records(&upstream));
    let v = mirror.run(&["verify", "--full"]);
    assert_eq!(v.code(), Some(0), "{v:?}");
    let st = Command::new(bin("pbs"))
        .arg("--config")
        .arg(&cfg2)
        .args(["status", "--json"])
        .output()
        .expect("pbs status");
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).expect("status JSON");
    assert_eq!(st["mirrors"][0]["newest"], "files/3", "{st}");
    assert_eq!(st["mirrors"][0]["from"], "pbs1", "{st}");

    // Only the upstream may tell the mirror; only the mirror's token may read the upstream.
    let body = br#"{"source":"files","seq":9,"tx":"x","epoch":0}"#;
    let admin = format!("token {ADMIN2}");
    let r = http(
        p2,
        "POST",
        "/v1/mirror/notify",
        &[
            ("Authorization", &admin),
            ("Content-Type", "application/json"),
        ],
        body,
    )
    .expect("notify");
    assert_eq!(r.status, 403, "{}", r.text());
    let exporter = format!("token {}", c.tokens.notify);
    let r = http(
        c.port(Who::Pbs),
        "GET",
        "/v1/generations/files",
        &[("Authorization", &exporter)],
        b"",
    )
    .expect("list");
    assert_eq!(r.status, 403, "{}", r.text());

    // The first PBS is lost: every generation restores from the mirror.
    c.kill(Who::Pbs);
    fs::remove_dir_all(c.path().join("pbs/archive")).expect("lose the upstream archive");
    for (i, snap) in snaps.iter().enumerate() {
        let to = c.path().join(format!("restored-{}", i + 1));
        mirror.ok(&[
            "restore",
            &format!("files/{}", i + 1),
            "--to",
            to.to_str().expect("utf-8"),
        ]);
        assert_eq!(&snapshot(&to), snap, "files/{}", i + 1);
    }
    drop(pbs2);
}

/// A mirror that is never told (the upstream's `[[downstream]]` entry for it has a URL
/// where nobody listens: every notification is lost) still follows on its `schedule`: a
/// generation made after its start reaches it at the next minute.
#[test]
fn a_mirror_follows_on_its_schedule_when_nobody_tells_it() {
    let mut port2 = PortHold::new();
    let nobody = PortHold::new();
    let mut c = Cluster::new(Options {
        pbs_peers: vec![("pbs2".into(), READS.into())],
        pbs_extra: format!(
            "[[downstream]]\nname = \"pbs2\"\nurl = \"http://127.0.0.1:{}\"\ntoken = \"{TELLS}\"\n",
            nobody.port
        ),
        ..Options::default()
    });
    let (d2, cfg2) = mirror_config(&c, port2.port, "schedule = \"* * * * *\"");
    let mirror = Pbs::new(d2.join("archive"));
    fs::write(c.src().join("data.txt"), "one\n").expect("data");
    c.start_all();
    let pbs2 = start_mirror(&mut port2, &d2, &cfg2);
    // At its start there was nothing yet; nobody tells it of files/1.
    c.cycle(1);
    let snap = snapshot(&c.src());
    let t0 = std::time::Instant::now();
    let mut held = Vec::new();
    while t0.elapsed() < std::time::Duration::from_secs(100) {
        held = list(&mirror);
        if !held.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert_eq!(
        held,
        ["files/1"],
        "the schedule did not bring files/1 in 100 s"
    );
    let to = c.path().join("restored");
    mirror.ok(&["restore", "files/1", "--to", to.to_str().expect("utf-8")]);
    assert_eq!(snapshot(&to), snap);
    drop(pbs2);
}
