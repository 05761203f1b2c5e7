//! After a takeover the PBS asks for a new clone: a configured spare is activated and
//! restored at once, or the `on_clone_needed` hook runs; every takeover is recorded (forced
//! or not, by whom). End to end with the real daemons over loopback (the `files` hooks).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use pullback_tests::cluster::{http, wait_for, write_script, Cluster, Options, Who};
use pullback_tests::write;
use serde_json::Value;

use pullback_tests::ha::{node_row, password_hash as hash, PASSWORD};

/// The PBS's node `name`: (role, status).
fn node(c: &Cluster, name: &str) -> (String, String) {
    let n = node_row(c, name);
    (n.role, n.status)
}

/// `exporter run`, then wait until importer `i` verified the new generation; returns it.
fn export_to(c: &Cluster, i: usize) -> String {
    let r = c.export_ok();
    let gen = r
        .stdout
        .split("committed as ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no generation in: {}", r.stdout))
        .to_string();
    wait_verified(c, i, &gen);
    gen
}

fn wait_verified(c: &Cluster, i: usize, gen: &str) {
    wait_for(&format!("importer {i} to verify {gen}"), || {
        let s = c.importer_live(i)?;
        let v = &s["last_valid"];
        (v["generation"] == gen && v["verified"] == true && s["importing"].is_null()).then_some(())
    });
}

/// Every file under `dir` (relative path → content).
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, d: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in fs::read_dir(d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                let rel = p.strip_prefix(base).expect("under base");
                out.insert(
                    rel.display().to_string(),
                    fs::read(&p).expect("read a file"),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn takeovers(c: &Cluster) -> Vec<Value> {
    let (_, st) = c.pbs_status();
    st["takeovers"].as_array().cloned().unwrap_or_default()
}

#[test]
fn after_the_main_is_killed_and_clone0_takes_over_the_spare_is_activated_and_restored() {
    let mut c = Cluster::new(Options {
        importers: 2,
        spares: vec![1],
        takeover_hash: Some(hash(PASSWORD)),
        ..Options::default()
    });
    write(&c.src().join("data.txt"), b"one\n");
    c.start_all();
    assert_eq!(export_to(&c, 0), "files/1");
    write(&c.src().join("data.txt"), b"one\ntwo\n");
    write(
        &c.src().join("sub/more.txt"),
        b"only in the second generation\n",
    );
    assert_eq!(export_to(&c, 0), "files/2");

    // The spare: shown as such, not eligible, and nothing was pushed to it.
    assert_eq!(node(&c, "clone1"), ("BACKUP".into(), "Spare".into()));
    let st = c.importer_live(1).expect("clone1 answers");
    assert!(
        st["last_valid"].is_null(),
        "the spare received a push: {st}"
    );
    let text = c.run(Who::Pbs, &["status"]).stdout;
    assert!(
        text.contains("node clone1 (importer): BACKUP Spare"),
        "{text}"
    );
    // Even forced, at the coordinator.
    let auth = format!("token {}", c.tokens.admin);
    let r = http(
        c.port(Who::Pbs),
        "POST",
        "/v1/ha/takeover",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        br#"{"node": "clone1", "force": true}"#,
    )
    .expect("POST /v1/ha/takeover");
    assert_eq!(r.status, 409, "a spare took over: {}", r.text());
    assert!(r.text().contains("Spare"), "{}", r.text());
    assert!(takeovers(&c).is_empty());

    // kill -9 the main; clone0 takes over (the seeds' API).
    c.kill(Who::Exporter);
    // (change=MAIN needs the takeover password now.)
    let pw = serde_json::json!({ "password": PASSWORD }).to_string();
    let r = pullback_tests::ha::request(
        c.port(Who::Importer(0)),
        "POST",
        "/rest/ha/status?change=MAIN",
        Some(&c.tokens.admin),
        pw.as_bytes(),
    );
    assert_eq!((r.status, r.text().as_str()), (200, "MAIN"));
    assert_eq!(c.wait_exit(Who::Importer(0)).code(), Some(0));

    // The spare is a Follower and restores the newest generation at once.
    wait_verified(&c, 1, "files/2");
    assert_eq!(node(&c, "clone1"), ("BACKUP".into(), "Follower".into()));
    assert_eq!(node(&c, "clone0"), ("MAIN".into(), "Leader".into()));
    let src = tree(&c.src());
    assert_eq!(src.len(), 2);
    assert_eq!(tree(&c.clone_data(1)), src);

    // Recorded: not forced, asked through the API, the spare activated, no clone needed.
    let (_, st) = c.pbs_status();
    let t = st["takeovers"].as_array().cloned().unwrap_or_default();
    assert_eq!(t.len(), 1, "{st}");
    assert_eq!(
        (
            t[0]["node"].as_str(),
            t[0]["old_main"].as_str(),
            t[0]["epoch"].as_u64(),
            t[0]["forced"].as_bool(),
            t[0]["by"].as_str(),
            t[0]["new_clone"].as_str(),
        ),
        (
            Some("clone0"),
            Some("exporter"),
            Some(1),
            Some(false),
            Some("api"),
            Some("spare clone1 activated")
        ),
        "{st}"
    );
    assert!(st["clone_needed"].is_null(), "{st}");

    // Durable: after a restart of the PBS the activated spare is still a Follower.
    c.kill(Who::Pbs);
    c.start(Who::Pbs);
    assert_eq!(node(&c, "clone1"), ("BACKUP".into(), "Follower".into()));
}

#[test]
fn a_forced_takeover_with_no_spare_runs_the_clone_needed_hook_once_and_is_recorded() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("hook-env");
    let hook = dir.path().join("clone-needed");
    write_script(
        &hook,
        &format!(
            "env | grep -E '^PULLBACK_(EPOCH|GENERATION|NEW_MAIN|OLD_MAIN)=' | sort >> {o}\necho --- >> {o}",
            o = out.display()
        ),
    );
    let mut c = Cluster::new(Options {
        takeover_hash: Some(hash(PASSWORD)),
        pbs_extra: format!("[failover]\non_clone_needed = \"{}\"\n", hook.display()),
        ..Options::default()
    });
    write(&c.src().join("data.txt"), b"one\n");
    c.start_all();
    c.cycle(1);
    write(&c.src().join("data.txt"), b"one\ntwo\n");
    c.cycle(2);

    c.kill(Who::Exporter);
    let r = pullback_tests::ha::page_post(
        c.port(Who::Importer(0)),
        "password=correct+horse+battery+staple&force=1",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(c.wait_exit(Who::Importer(0)).code(), Some(0));

    // The hook ran, and its outcome is recorded.
    let st = wait_for("the hook's outcome to be recorded", || {
        let (_, st) = c.pbs_status();
        st["clone_needed"]["ok"].as_bool().map(|_| st)
    });
    let cn = &st["clone_needed"];
    assert_eq!(cn["ok"], true, "{st}");
    assert_eq!(
        (
            cn["epoch"].as_u64(),
            cn["new_main"].as_str(),
            cn["old_main"].as_str()
        ),
        (Some(1), Some("clone0"), Some("exporter")),
        "{st}"
    );
    let env = fs::read_to_string(&out).expect("the hook wrote its environment");
    assert_eq!(
        env,
        "PULLBACK_EPOCH=1\nPULLBACK_GENERATION=files/2\nPULLBACK_NEW_MAIN=clone0\nPULLBACK_OLD_MAIN=exporter\n---\n",
        "the hook must run exactly once with these variables"
    );
    assert!(c.path().join("pbs/logs/clone-needed-1.log").exists());

    // The forced takeover is in the history: JSON, text and dashboard.
    let t = st["takeovers"].as_array().cloned().unwrap_or_default();
    assert_eq!(t.len(), 1, "{st}");
    assert_eq!(
        (
            t[0]["node"].as_str(),
            t[0]["epoch"].as_u64(),
            t[0]["forced"].as_bool(),
            t[0]["by"].as_str(),
            t[0]["new_clone"].as_str()
        ),
        (
            Some("clone0"),
            Some(1),
            Some(true),
            Some("page"),
            Some("on_clone_needed hook")
        ),
        "{st}"
    );
    let text = c.run(Who::Pbs, &["status"]).stdout;
    assert!(
        text.contains("clone0 MAIN at epoch 1 (old main exporter), FORCED, by page"),
        "{text}"
    );
    assert!(text.contains("WARNING: a new clone is needed"), "{text}");
    let page = c.admin(Who::Pbs, "GET", "/").text();
    assert!(
        page.contains("<h2>Takeovers</h2>") && page.contains("<b>forced</b>"),
        "{page}"
    );
}
