//! The coordinator on etcd, end to end: a real 3-member etcd cluster on loopback (Debian's
//! `etcd`, from `make test-deps`) and two real PBS processes sharing it
//! (`[coordinator] etcd`). The PBS that coordinated is killed (SIGKILL) and a takeover goes
//! through the other one; two PBS race to grant MAIN to two different clones, 100 times,
//! and exactly one wins each time; the etcd leader is killed and hellos, notifications and a
//! takeover still work, and with a second one gone a takeover is refused (503, etcd named);
//! the main's lease runs out while the main is silent and comes back with its hello; a
//! PBS reaches an etcd that serves over TLS only, asks for client certificates and has
//! users on, and one with a wrong password, no client certificate or the wrong CA is
//! refused at start with an error that says why.

use std::fs;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::thread;

use pullback_tests::bin;
use pullback_tests::cluster::{http, Cluster, Options, Who};
use pullback_tests::etcd::{b64, EtcdCluster, SecondPbs, Secured};
use pullback_tests::ha::{password_hash, request, takeover_api, PASSWORD};
use pullback_tests::write;
use serde_json::{json, Value};

fn token(what: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(what.as_bytes());
    format!("{what}-{:016x}{:08x}", h.finish(), std::process::id())
}

/// `POST /v1/ha/takeover` at the PBS on `port` for clone `node`, with its token and the
/// password, at the epoch it knows.
fn takeover_at(port: u16, tok: &str, node: &str, epoch: u64) -> (u16, String) {
    let body = json!({ "node": node, "epoch": epoch, "password": PASSWORD }).to_string();
    let r = request(port, "POST", "/v1/ha/takeover", Some(tok), body.as_bytes());
    (r.status, r.text())
}

/// `pbs status ARGS` with `config` (read from etcd, not from a server).
fn pbs_status(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(bin("pbs"))
        .arg("--config")
        .arg(config)
        .arg("status")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("pbs status")
}

/// [`pbs_status`]'s stdout.
fn status_out(config: &std::path::Path, args: &[&str]) -> String {
    String::from_utf8_lossy(&pbs_status(config, args).stdout).into_owned()
}

/// `pbs status --json` with `config`.
fn status_json(config: &std::path::Path) -> Value {
    let out = status_out(config, &["--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("pbs status: {e}: {out}"))
}

#[test]
fn the_coordinating_pbs_killed_a_takeover_goes_through_the_other() {
    let etcd = EtcdCluster::start(3);
    let mut c = Cluster::new(Options {
        importers: 1,
        takeover_hash: Some(password_hash(PASSWORD)),
        pbs_extra: etcd.toml("/kill", 120),
        ..Options::default()
    });
    write(&c.src().join("data.txt"), b"one\n");
    c.start_all();
    c.cycle(1);
    let key = "/kill/coord/files";
    let before = etcd.json(key);
    let epoch = before["epoch"].as_u64().expect("epoch");
    assert_eq!(before["main"], "exporter", "{before}");
    assert_eq!(
        etcd.get("/kill/main/files").map(|v| v.0).as_deref(),
        Some("exporter")
    );

    // The second PBS shares the state: it shows the exporter MAIN at the same epoch.
    let mut second = SecondPbs::start(&c, "pbs2");
    let nodes = request(
        second.port,
        "GET",
        "/v1/ha/nodes",
        Some(&c.tokens.admin),
        b"",
    )
    .json();
    let exporter = nodes
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == "exporter"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (exporter["role"].as_str(), exporter["epoch"].as_u64()),
        (Some("MAIN"), Some(epoch)),
        "{nodes}"
    );

    // The PBS the main and the clone talked to dies; the clone asks the other one.
    c.kill(Who::Pbs);
    let (status, text) = takeover_at(second.port, &c.tokens.coord[0], "clone0", epoch);
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).expect("verdict");
    assert_eq!(
        (v["role"].as_str(), v["epoch"].as_u64()),
        (Some("MAIN"), Some(epoch + 1)),
        "{v}"
    );

    // In etcd: epoch + 1, the clone the main, the old main fenced; the grant and the
    // main's key written with it.
    let after = etcd.json(key);
    assert_eq!(after["epoch"].as_u64(), Some(epoch + 1), "{after}");
    assert_eq!(after["main"], "clone0", "{after}");
    assert_eq!(after["nodes"]["exporter"]["status"], "Broken", "{after}");
    let (grant, grant_rev) = etcd.get("/kill/grant/files").expect("grant key");
    let grant: Value = serde_json::from_str(&grant).expect("grant JSON");
    assert_eq!(
        (grant["node"].as_str(), grant["epoch"].as_u64()),
        (Some("clone0"), Some(epoch + 1))
    );
    assert_eq!(
        etcd.get("/kill/main/files").map(|v| v.0).as_deref(),
        Some("clone0")
    );

    // `pbs status` of the second PBS reads etcd: the grant's revision, the main's lease.
    let st = status_json(&second.config);
    let g = &st["groups"][0];
    assert_eq!(
        (g["epoch"].as_u64(), g["main"].as_str()),
        (Some(epoch + 1), Some("clone0")),
        "{st}"
    );
    assert_eq!(
        g["etcd"]["grant"]["revision"].as_i64(),
        Some(grant_rev),
        "{st}"
    );
    assert_eq!(g["etcd"]["main_lease"]["state"], "alive", "{st}");
    assert_eq!(g["etcd"]["main_lease"]["node"], "clone0", "{st}");
    let text = status_out(&second.config, &[]);
    let want = format!(
        "last grant clone0 at epoch {} (etcd revision {grant_rev})",
        epoch + 1
    );
    assert!(text.contains(&want), "{text}");
    assert!(text.contains("main lease alive (clone0"), "{text}");
    second.kill();
}

/// A PBS config with `groups` sources `g<i>`, each with the clones `a<i>` and `b<i>`
/// (nothing listens at their URLs: the race is the coordinator's alone).
fn race_config(
    dir: &std::path::Path,
    name: &str,
    port: u16,
    admin: &str,
    tokens: &[(String, String)],
    hash: &str,
    etcd: &str,
) -> String {
    let d = dir.display();
    let mut s = format!(
        "state_dir = \"{d}/{name}\"\n[archive]\npath = \"{d}/{name}/archive\"\n[server]\nlisten = \"127.0.0.1:{port}\"\ntokens = [{{ peer = \"admin\", token = \"{admin}\" }}"
    );
    for (peer, tok) in tokens {
        s.push_str(&format!(", {{ peer = \"{peer}\", token = \"{tok}\" }}"));
    }
    s.push_str("]\n");
    let groups = tokens.len() / 2;
    for i in 0..groups {
        s.push_str(&format!(
            "[[source]]\nname = \"g{i}\"\nexporter = {{ name = \"e{i}\", url = \"http://127.0.0.1:1\", token = \"exporter-token-{i:04}\" }}\n"
        ));
    }
    for i in 0..groups {
        for side in ["a", "b"] {
            s.push_str(&format!(
                "[[importer]]\nname = \"{side}{i}\"\nurl = \"http://127.0.0.1:1\"\ntoken = \"push-token-{side}-{i:04}\"\nsource = \"g{i}\"\ntakeover_password_hash = \"{hash}\"\n"
            ));
        }
    }
    s.push_str(etcd);
    s
}

#[test]
fn two_pbs_racing_to_grant_main_grant_it_once() {
    const ROUNDS: usize = 100;
    let etcd = EtcdCluster::start(3);
    let dir = tempfile::Builder::new()
        .prefix("pullback-race-")
        .tempdir()
        .expect("tmp");
    let hash = password_hash(PASSWORD);
    let admin = token("admin");
    let tokens: Vec<(String, String)> = (0..ROUNDS)
        .flat_map(|i| ["a", "b"].map(|s| (format!("{s}{i}"), token(&format!("{s}{i}")))))
        .collect();
    fs::create_dir_all(dir.path().join("logs")).expect("logs");
    let mut pbs = Vec::new();
    for name in ["pbs1", "pbs2"] {
        let mut hold = pullback_tests::cluster::PortHold::new();
        let config = dir.path().join(format!("{name}.toml"));
        let text = race_config(
            dir.path(),
            name,
            hold.port,
            &admin,
            &tokens,
            &hash,
            &etcd.toml("/race", 60),
        );
        fs::write(&config, text).expect("config");
        hold.release();
        let log = dir.path().join("logs").join(format!("{name}.log"));
        let d = pullback_tests::cluster::Daemon::serve("pbs", &config, &log, &[]);
        let port = hold.port;
        pullback_tests::cluster::wait_for(&format!("{name} (log {})", log.display()), || {
            let auth = format!("token {admin}");
            let r = http(
                port,
                "GET",
                "/v1/ha/nodes",
                &[("Authorization", &auth)],
                b"",
            )
            .ok()?;
            (r.status == 200).then_some(())
        });
        pbs.push((port, d));
    }
    let (p1, p2) = (pbs[0].0, pbs[1].0);
    let tok = |n: &str| {
        tokens
            .iter()
            .find(|(p, _)| p == n)
            .map(|(_, t)| t.clone())
            .expect("token")
    };
    let mut wins = [0usize; 2];
    for i in 0..ROUNDS {
        let key = format!("/race/coord/g{i}");
        assert_eq!(etcd.json(&key)["epoch"].as_u64(), Some(0), "round {i}");
        let gate = Arc::new(Barrier::new(2));
        let ask = |port: u16, node: String| {
            let (gate, t) = (gate.clone(), tok(&node));
            thread::spawn(move || {
                gate.wait();
                takeover_at(port, &t, &node, 0)
            })
        };
        let (ra, rb) = (ask(p1, format!("a{i}")), ask(p2, format!("b{i}")));
        let results = [ra.join().expect("a"), rb.join().expect("b")];
        let granted: Vec<usize> = (0..2).filter(|k| results[*k].0 == 200).collect();
        assert_eq!(granted.len(), 1, "round {i}: {results:?}");
        let (winner, loser) = (granted[0], 1 - granted[0]);
        assert_eq!(results[loser].0, 409, "round {i}: {results:?}");
        assert!(
            results[loser].1.contains("epoch moved"),
            "round {i}: {results:?}"
        );
        wins[winner] += 1;
        let st = etcd.json(&key);
        let want = format!("{}{i}", ["a", "b"][winner]);
        assert_eq!(
            (st["epoch"].as_u64(), st["main"].as_str()),
            (Some(1), Some(want.as_str())),
            "round {i}: {st}"
        );
        assert_eq!(
            st["takeovers"].as_array().map(Vec::len),
            Some(1),
            "round {i}: {st}"
        );
    }
    // How often a PBS lost the compare-and-swap itself (rather than reading the winner's
    // state first): informational, the outcome is asserted above either way.
    let lost: usize = ["pbs1", "pbs2"]
        .iter()
        .map(|n| {
            fs::read_to_string(dir.path().join("logs").join(format!("{n}.log")))
                .unwrap_or_default()
                .matches("changed under this PBS")
                .count()
        })
        .sum();
    eprintln!(
        "{ROUNDS} races: the PBS 1 clone won {} times, the PBS 2 clone {}; a compare-and-swap lost {lost} times",
        wins[0], wins[1]
    );
}

#[test]
fn an_etcd_member_killed_the_coordinator_still_works_and_without_quorum_it_refuses() {
    let mut etcd = EtcdCluster::start(3);
    let mut c = Cluster::new(Options {
        importers: 2,
        takeover_hash: Some(password_hash(PASSWORD)),
        pbs_extra: etcd.toml("/member", 120),
        ..Options::default()
    });
    write(&c.src().join("data.txt"), b"one\n");
    c.start_all();
    c.cycle(1);
    let key = "/member/coord/files";
    let epoch = etcd.json(key)["epoch"].as_u64().expect("epoch");

    // The leader dies: 2 of 3 are a quorum, and elect a new leader.
    let leader = etcd.leader();
    etcd.kill(leader);
    // The exporter's hello and notification, checked against etcd, the pull and the commit.
    write(&c.src().join("data.txt"), b"two\n");
    c.cycle(2);
    let st = etcd.json(key);
    assert_eq!(
        st["nodes"]["exporter"]["last_generation"], "files/2",
        "{st}"
    );
    // A clone's hello.
    let hello = json!({ "node": "clone1", "epoch": epoch, "role": "BACKUP" }).to_string();
    let r = request(
        c.port(Who::Pbs),
        "POST",
        "/v1/ha/hello",
        Some(&c.tokens.coord[1]),
        hello.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["role"], "BACKUP");
    let seen = etcd.json(key)["nodes"]["clone1"]["last_seen"].clone();
    assert!(seen.is_string(), "{seen}");
    // A takeover by a clone, asked on its own API (it asks the PBS, the PBS asks etcd).
    let r = takeover_api(&c, 0, PASSWORD, false);
    assert_eq!(r.status, 200, "{}", r.text());
    let st = etcd.json(key);
    assert_eq!(
        (st["epoch"].as_u64(), st["main"].as_str()),
        (Some(epoch + 1), Some("clone0")),
        "{st}"
    );

    // A second member dies: no quorum. The takeover is refused, naming etcd; nothing moved.
    etcd.kill(etcd.leader());
    let (status, text) = takeover_at(c.port(Who::Pbs), &c.tokens.coord[1], "clone1", epoch + 1);
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("etcd"), "{text}");
    let (st, _) = etcd.get_local(key).expect("the state");
    let st: Value = serde_json::from_str(&st).expect("JSON");
    assert_eq!(
        (st["epoch"].as_u64(), st["main"].as_str()),
        (Some(epoch + 1), Some("clone0")),
        "{st}"
    );
}

#[test]
fn the_main_lease_expires_when_no_pbs_hears_the_main_and_a_hello_brings_it_back() {
    let etcd = EtcdCluster::start(3);
    let mut c = Cluster::new(Options {
        importers: 1,
        pbs_extra: etcd.toml("/lease", 2),
        ..Options::default()
    });
    write(&c.src().join("data.txt"), b"one\n");
    c.start_all();
    c.cycle(1);
    let key = "/lease/main/files";
    assert_eq!(etcd.get(key).map(|v| v.0).as_deref(), Some("exporter"));
    let epoch = etcd.json("/lease/coord/files")["epoch"]
        .as_u64()
        .expect("epoch");
    // The main goes silent: the lease runs out and etcd drops the key; the state is
    // untouched (the lease decides nothing).
    c.kill(Who::Exporter);
    pullback_tests::cluster::wait_for("the main's lease to expire", || {
        etcd.get(key).is_none().then_some(())
    });
    let st = status_json(&c.config(Who::Pbs));
    assert_eq!(
        st["groups"][0]["etcd"]["main_lease"]["state"], "expired",
        "{st}"
    );
    assert_eq!(st["groups"][0]["main"], "exporter", "{st}");
    // The main says hello again: the PBS puts the key back under its own lease.
    let hello = json!({ "node": "exporter", "epoch": epoch, "role": "MAIN" }).to_string();
    let r = request(
        c.port(Who::Pbs),
        "POST",
        "/v1/ha/hello",
        Some(&c.tokens.notify),
        hello.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["role"], "MAIN");
    pullback_tests::cluster::wait_for("the main's key back", || {
        (etcd.get(key)?.0 == "exporter").then_some(())
    });
    // The server's own status: the lease is held by this PBS.
    let st = c.admin(Who::Pbs, "GET", "/v1/status").json();
    let lease = &st["groups"][0]["etcd"]["main_lease"];
    assert_eq!(
        (lease["state"].as_str(), lease["held_here"].as_bool()),
        (Some("alive"), Some(true)),
        "{st}"
    );
}

/// `pbs status` with `config`: whether it succeeded, and its stdout and stderr.
fn status_run(config: &std::path::Path) -> (bool, String) {
    let out = pbs_status(config, &[]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_coordinator_reaches_etcd_over_tls_as_its_own_user() {
    // etcd's tokens last 2 s here: the takeover below, asked later, needs a new one.
    let etcd = EtcdCluster::start_secured(1, 2);
    let sec = etcd.secured();
    let prefix = format!("{}/tls", Secured::PREFIX);
    let mut c = Cluster::new(Options {
        importers: 1,
        takeover_hash: Some(password_hash(PASSWORD)),
        pbs_extra: etcd.toml(&prefix, 120),
        ..Options::default()
    });
    write(&c.src().join("data.txt"), b"one\n");
    c.start_all();
    c.cycle(1);
    let key = format!("{prefix}/coord/files");
    let st = etcd.json(&key);
    let epoch = st["epoch"].as_u64().expect("epoch");
    assert_eq!(st["main"], "exporter", "{st}");

    // Nobody without a token may write the coordinator's key (the harness's own plain
    // listener: over the members' TLS port a client without a certificate is not even
    // answered): a forged state granting a stranger MAIN is refused and nothing changes.
    let forged =
        json!({ "key": b64(key.as_bytes()), "value": b64(br#"{"epoch":99,"main":"mallory"}"#) });
    let (status, v) = etcd.gateway_as(None, "/v3/kv/put", &forged);
    assert_ne!(status, 200, "an anonymous put went through: {v}");
    assert!(
        v.to_string().contains("user name is empty") || v.to_string().contains("permission denied"),
        "{v}"
    );
    assert_eq!(etcd.json(&key)["epoch"].as_u64(), Some(epoch));

    // After the PBS's token expired, a takeover still goes through (it logs in again).
    thread::sleep(std::time::Duration::from_secs(3));
    let r = takeover_api(&c, 0, PASSWORD, false);
    assert_eq!(r.status, 200, "{}", r.text());
    let st = etcd.json(&key);
    assert_eq!(
        (st["epoch"].as_u64(), st["main"].as_str()),
        (Some(epoch + 1), Some("clone0")),
        "{st}"
    );
    let (ok, text) = status_run(&c.config(Who::Pbs));
    assert!(ok, "{text}");
    assert!(text.contains("clone0"), "{text}");

    // The same PBS config with one thing wrong: `pbs status` (which reads etcd) fails and
    // says what.
    let pbs_toml = fs::read_to_string(c.config(Who::Pbs)).expect("pbs.toml");
    let good = etcd.toml(&prefix, 120);
    assert!(pbs_toml.contains(&good), "{pbs_toml}");
    let wrong_pw = c.path().join("wrong.password");
    fs::write(&wrong_pw, "not-the-password\n").expect("write");
    let cases = [
        (
            "a wrong password",
            Secured {
                password_file: wrong_pw,
                ..sec.clone()
            },
            prefix.as_str(),
            "authentication failed",
        ),
        (
            "no client certificate",
            Secured {
                cert: None,
                ..sec.clone()
            },
            prefix.as_str(),
            "cannot connect",
        ),
        (
            "a CA that did not sign the member's certificate",
            Secured {
                ca: sec.other_ca.clone(),
                ..sec.clone()
            },
            prefix.as_str(),
            "UnknownIssuer",
        ),
        (
            "a user whose role does not cover the prefix",
            sec.clone(),
            "/elsewhere",
            "permission denied",
        ),
    ];
    for (what, keys, p, says) in cases {
        let bad = pbs_toml.replace(&good, &etcd.toml_with(p, 120, Some(&keys)));
        let config = c.path().join("bad-etcd.toml");
        fs::write(&config, bad).expect("write");
        let (ok, text) = status_run(&config);
        assert!(!ok, "{what}: pbs status succeeded: {text}");
        eprintln!("{what}: {}", text.trim());
        assert!(text.contains("etcd"), "{what}: {text}");
        assert!(text.contains(says), "{what}: want {says:?} in: {text}");
    }
}
