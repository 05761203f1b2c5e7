//! End to end: the real `exporter`, `pbs` and `importer` daemons, each a
//! separate process, over loopback HTTP, with the `files` hooks (or small
//! hooks written here). Every test has its own folder, ports and tokens.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Stdio;

use pullback_tests::cluster::{files_hook, http, wait_for, write_script, Cluster, Options, Who};
use pullback_tests::{assert_same_tree, packs, restore_snapshot, snapshot, write, Rng, Tree};
use serde_json::Value;

/// A source with text and binary data, an empty file, an empty folder, a
/// nested folder, an executable, a private file and two symlinks (one
/// dangling).
fn sample_source(dir: &Path, rng: &mut Rng) {
    write(&dir.join("docs/readme.txt"), &rng.text(30_000));
    write(&dir.join("docs/deep/er/notes.txt"), &rng.text(5_000));
    write(&dir.join("data/table.csv"), &rng.text(1_500_000));
    write(&dir.join("data/blob.bin"), &rng.bytes(300_000));
    write(&dir.join("run.sh"), b"#!/bin/sh\necho hello\n");
    write(&dir.join("empty"), b"");
    fs::create_dir_all(dir.join("empty-dir")).unwrap();
    chmod(&dir.join("run.sh"), 0o755);
    chmod(&dir.join("docs/readme.txt"), 0o600);
    symlink("data/table.csv", dir.join("latest.csv")).unwrap();
    symlink("../nowhere/at all", dir.join("dangling")).unwrap();
}

/// Rows inserted in the middle of the table, a new file in a new folder, a
/// deleted file, a mode change, a symlink pointing elsewhere.
fn change_source(dir: &Path) {
    let p = dir.join("data/table.csv");
    let mut d = fs::read(&p).unwrap();
    let at = d.len() / 2;
    let at = at + d[at..].iter().position(|&b| b == b'\n').unwrap() + 1;
    d.splice(at..at, b"inserted\trow\t1\n".iter().copied());
    fs::write(&p, d).unwrap();
    write(&dir.join("new/dir/added.txt"), b"a new file\n");
    fs::remove_file(dir.join("data/blob.bin")).unwrap();
    chmod(&dir.join("docs/readme.txt"), 0o640);
    fs::remove_file(dir.join("latest.csv")).unwrap();
    symlink("new/dir/added.txt", dir.join("latest.csv")).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// Importer i's data (put in place by the import hook) and its verified
/// restore folder both equal `expected`.
#[track_caller]
fn assert_clone_is(c: &Cluster, i: usize, expected: &Tree, what: &str) {
    assert_same_tree(
        expected,
        &snapshot(&c.clone_data(i)),
        &format!("{what}: clone {i}'s data"),
    );
    assert_same_tree(
        expected,
        &snapshot(&c.restore_dir(i)),
        &format!("{what}: clone {i}'s restore folder"),
    );
}

fn gen_list(c: &Cluster) -> Vec<String> {
    c.archive().generations()
}

fn s(v: &Value) -> String {
    v.as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| v.to_string())
}

// ---------------------------------------------------------------- 1

#[test]
fn full_cycle_twice_the_clone_equals_the_source() {
    let mut c = Cluster::new(Options::default());
    let mut rng = Rng::new(1);
    sample_source(&c.src(), &mut rng);
    let snap1 = snapshot(&c.src());
    c.start_all();

    c.cycle(1);
    assert_clone_is(&c, 0, &snap1, "after cycle 1");

    change_source(&c.src());
    let snap2 = snapshot(&c.src());
    assert_ne!(snap1, snap2);
    c.cycle(2);
    assert_clone_is(&c, 0, &snap2, "after cycle 2");

    // The PBS keeps both generations, each restorable to its own version.
    let list = c.archive().list();
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(gen_list(&c), ["files/1", "files/2"]);
    let tmp = c.path().join("restores");
    fs::create_dir_all(&tmp).unwrap();
    assert_same_tree(
        &snap1,
        &restore_snapshot(&c.archive(), "files/1", &tmp),
        "PBS files/1",
    );
    assert_same_tree(
        &snap2,
        &restore_snapshot(&c.archive(), "files/2", &tmp),
        "PBS files/2",
    );

    let st = c.importer_status(0);
    assert_eq!(st["last_valid"]["generation"], "files/2", "{st}");
    assert_eq!(st["last_valid"]["verified"], true, "{st}");
    assert!(st["last_failure"].is_null(), "{st}");
    assert!(st["importing"].is_null(), "{st}");

    let (code, pst) = c.pbs_status();
    assert_eq!(code, 0, "{pst}");
    assert_eq!(
        pst["sources"][0]["newest"]["generation"], "files/2",
        "{pst}"
    );
    assert_eq!(pst["sources"][0]["stale"], false, "{pst}");
    assert_eq!(
        pst["importers"][0]["last_good"]["generation"], "files/2",
        "{pst}"
    );
    assert!(pst["importers"][0]["last_failure"].is_null(), "{pst}");

    let ex = c.run(Who::Exporter, &["status", "--json"]);
    assert!(ex.status.success(), "{}", ex.stderr);
    let ex = ex.json();
    assert_eq!(ex["last_success"]["committed_as"], "files/2", "{ex}");
    assert!(ex["last_failure"].is_null(), "{ex}");
}

// ---------------------------------------------------------------- 2

#[derive(Clone, Copy, Debug, Default)]
struct Bytes {
    exporter_sent: u64,
    pbs_received: u64,
    pbs_sent: u64,
    importer_received: u64,
}

fn bytes(c: &Cluster) -> Bytes {
    Bytes {
        exporter_sent: c.metric(Who::Exporter, "pullback_bytes_sent_total"),
        pbs_received: c.metric(Who::Pbs, "pullback_bytes_received_total"),
        pbs_sent: c.metric(Who::Pbs, "pullback_bytes_sent_total"),
        importer_received: c.metric(Who::Importer(0), "pullback_bytes_received_total"),
    }
}

fn minus(a: Bytes, b: Bytes) -> Bytes {
    Bytes {
        exporter_sent: a.exporter_sent - b.exporter_sent,
        pbs_received: a.pbs_received - b.pbs_received,
        pbs_sent: a.pbs_sent - b.pbs_sent,
        importer_received: a.importer_received - b.importer_received,
    }
}

/// Change the row starting after `frac` of the file: its first field gets
/// a suffix (the file's size changes, so no quick check can miss it).
fn edit_row(data: &mut Vec<u8>, frac: f64) {
    let at = (data.len() as f64 * frac) as usize;
    let at = at + data[at..].iter().position(|&b| b == b'\n').unwrap() + 1;
    let tab = at + data[at..].iter().position(|&b| b == b'\t').unwrap();
    data.splice(tab..tab, b"-edited".iter().copied());
}

#[test]
fn second_cycle_carries_only_the_change() {
    let mut c = Cluster::new(Options::default());
    let mut rng = Rng::new(2);
    let mut dump = rng.text(20 << 20);
    write(&c.src().join("dump.sql"), &dump);
    write(&c.src().join("small.txt"), b"small\n");
    c.start_all();

    let b0 = bytes(&c);
    c.cycle(1);
    let b1 = bytes(&c);
    assert_clone_is(&c, 0, &snapshot(&c.src()), "after cycle 1");

    for frac in [0.2, 0.5, 0.8] {
        edit_row(&mut dump, frac);
    }
    write(&c.src().join("dump.sql"), &dump);
    c.cycle(2);
    let b2 = bytes(&c);
    assert_clone_is(&c, 0, &snapshot(&c.src()), "after cycle 2");

    let first = minus(b1, b0);
    let second = minus(b2, b1);
    eprintln!("first cycle {first:?}\nsecond cycle {second:?}");
    // Both ends of each leg count the same bytes.
    assert_eq!(first.exporter_sent, first.pbs_received, "cycle 1");
    assert_eq!(second.exporter_sent, second.pbs_received, "cycle 2");
    assert_eq!(first.pbs_sent, first.importer_received, "cycle 1");
    assert_eq!(second.pbs_sent, second.importer_received, "cycle 2");
    // The first cycle carried the data (text compresses about 3:1).
    assert!(first.exporter_sent > 4 << 20, "{first:?}");
    assert!(first.pbs_sent > 4 << 20, "{first:?}");
    // The second only the change: under 2% on every leg.
    for (what, a, b) in [
        ("exporter sent", first.exporter_sent, second.exporter_sent),
        ("pbs received", first.pbs_received, second.pbs_received),
        ("pbs sent", first.pbs_sent, second.pbs_sent),
        (
            "importer received",
            first.importer_received,
            second.importer_received,
        ),
    ] {
        assert!(
            b > 0 && b * 50 < a,
            "{what}: second cycle {b} B, first {a} B"
        );
    }
}

// ---------------------------------------------------------------- 3

#[test]
fn export_hook_failure_is_reported_and_nothing_is_committed() {
    let mut c = Cluster::new(Options {
        export_hook: Some("hooks/export".into()),
        exporter_attempts: 2,
        ..Options::default()
    });
    let hook = c.path().join("hooks/export");
    let runs = c.path().join("hook-runs");
    write_script(
        &hook,
        &format!(
            "echo \"run $PULLBACK_TRANSACTION_ID\" >> '{}'\necho 'dump failed: disk on fire' >&2\nexit 1",
            runs.display()
        ),
    );
    c.start_all();

    let r = c.exporter_run();
    eprintln!("exporter run: {}", r.stderr);
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(r.stderr.contains("export hook failed"), "{}", r.stderr);
    assert!(r.stderr.contains("attempt 2"), "{}", r.stderr);
    assert!(r.stderr.contains("disk on fire"), "{}", r.stderr);
    let text = fs::read_to_string(&runs).unwrap();
    assert_eq!(text.lines().count(), 2, "hook runs:\n{text}");
    let txs: Vec<&str> = text.lines().collect();
    assert_eq!(txs[0], txs[1], "both attempts belong to one export");
    // The exporter's log of that export holds both runs and their output.
    let tx = txs[0].strip_prefix("run ").unwrap();
    let log = fs::read_to_string(c.path().join(format!("exporter/logs/{tx}.log"))).unwrap();
    assert_eq!(log.matches("disk on fire").count(), 2, "{log}");
    assert_eq!(log.matches("exit code 1").count(), 2, "{log}");

    assert!(gen_list(&c).is_empty());
    let (code, pst) = c.pbs_status();
    assert_eq!(code, 1, "no generation: stale\n{pst}");
    assert_eq!(pst["sources"][0]["stale"], true, "{pst}");
    assert_eq!(pst["transactions"], serde_json::json!([]), "{pst}");
    let ex = c.run(Who::Exporter, &["status", "--json"]);
    assert_eq!(ex.code(), Some(1), "{ex:?}");
    let ex = ex.json();
    assert_eq!(ex["last_failure"]["attempts"], 2, "{ex}");
    assert_eq!(ex["last_failure"]["state"], "failed", "{ex}");
    assert!(ex["last_success"].is_null(), "{ex}");

    // A working hook: the next run commits.
    write_script(
        &hook,
        &format!(
            "echo \"run $PULLBACK_TRANSACTION_ID\" >> '{}'\nmkdir -p \"$PULLBACK_BACKUP_DIR\"\nprintf 'dumped\\n' > \"$PULLBACK_BACKUP_DIR/dump.txt\"",
            runs.display()
        ),
    );
    c.cycle(1);
    assert_eq!(fs::read_to_string(&runs).unwrap().lines().count(), 3);
    assert_eq!(gen_list(&c), ["files/1"]);
    assert_eq!(
        fs::read(c.clone_data(0).join("dump.txt")).unwrap(),
        b"dumped\n"
    );
    assert_clone_is(
        &c,
        0,
        &snapshot(&c.path().join("exporter/backup")),
        "after the fix",
    );
    let ex = c.run(Who::Exporter, &["status", "--json"]);
    assert_eq!(ex.code(), Some(0), "{ex:?}");
}

// ---------------------------------------------------------------- 4

#[test]
fn import_hook_failure_keeps_the_previous_copy() {
    let mut c = Cluster::new(Options {
        import_hooks: vec![Some("hooks/import".into())],
        ..Options::default()
    });
    let marker = c.path().join("fail-imports");
    write_script(
        &c.path().join("hooks/import"),
        &format!(
            "if [ -e '{}' ]; then echo 'import refused: marker present' >&2; exit 1; fi\nexec '{}'",
            marker.display(),
            files_hook("import").display()
        ),
    );
    let mut rng = Rng::new(4);
    sample_source(&c.src(), &mut rng);
    let snap1 = snapshot(&c.src());
    c.start_all();
    c.cycle(1);
    assert_clone_is(&c, 0, &snap1, "after cycle 1");

    fs::write(&marker, b"").unwrap();
    change_source(&c.src());
    let r = c.export_ok();
    assert!(r.stdout.contains("committed as files/2"), "{}", r.stdout);
    // The PBS reports the importer's failure once it has given up.
    let pst = wait_for("the PBS to report the failed import", || {
        let v = c.admin(Who::Pbs, "GET", "/v1/status").json();
        (v["importers"][0]["last_failure"]["generation"] == "files/2").then_some(v)
    });
    let detail = s(&pst["importers"][0]["last_failure"]["detail"]);
    assert!(detail.contains("import hook failed"), "{detail}");
    assert!(detail.contains("marker present"), "{detail}");

    let st = c.importer_status(0);
    assert_eq!(st["last_valid"]["generation"], "files/1", "{st}");
    assert_eq!(st["last_valid"]["verified"], true, "{st}");
    assert_eq!(st["last_failure"]["generation"], "files/2", "{st}");
    assert!(
        s(&st["last_failure"]["reason"]).contains("import hook failed"),
        "{st}"
    );
    assert!(s(&st["last_log"]).contains("marker present"), "{st}");
    assert!(st["importing"].is_null(), "{st}");
    // The restore folder and the clone's data still hold generation 1.
    assert_clone_is(&c, 0, &snap1, "after the failed import");

    // The clone is left behind by a failed push: monitoring hears of it.
    let (code, pst) = c.pbs_status();
    assert_eq!(code, 1, "{pst}");
    assert_eq!(pst["status"], "CLONE BEHIND", "{pst}");
    assert_eq!(pst["importers"][0]["behind"], "files/2", "{pst}");
    assert_eq!(pst["importers"][0]["behind_alarm"], true, "{pst}");
    assert_eq!(
        pst["importers"][0]["last_failure"]["generation"], "files/2",
        "{pst}"
    );
    assert_eq!(
        pst["importers"][0]["last_good"]["generation"], "files/1",
        "{pst}"
    );
    assert_eq!(gen_list(&c), ["files/1", "files/2"]);

    // Once the hook works again, the next generation goes through.
    fs::remove_file(&marker).unwrap();
    c.cycle(3);
    assert_clone_is(&c, 0, &snapshot(&c.src()), "after cycle 3");
}

// ---------------------------------------------------------------- 5

#[test]
fn corrupted_transfer_is_refused_then_a_clean_one_commits() {
    let mut c = Cluster::new(Options {
        proxy: true,
        ..Options::default()
    });
    let mut rng = Rng::new(5);
    sample_source(&c.src(), &mut rng);
    c.start_all();
    let proxy = c.proxy.as_ref().unwrap();
    proxy
        .corrupt
        .store(true, std::sync::atomic::Ordering::SeqCst);

    let r = c.exporter_run();
    eprintln!("exporter run: {}", r.stderr);
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(
        r.stderr.contains("damaged") || r.stderr.contains("corrupt"),
        "{}",
        r.stderr
    );
    let proxy = c.proxy.as_ref().unwrap();
    assert!(proxy.corrupted.load(std::sync::atomic::Ordering::SeqCst) > 0);
    // Nothing was stored on the PBS.
    assert!(gen_list(&c).is_empty());
    assert_eq!(packs(&c.archive().archive), vec![]);
    let (code, pst) = c.pbs_status();
    assert_eq!(code, 1, "{pst}");
    let detail = s(&pst["sources"][0]["last_failure"]["detail"]);
    assert!(
        detail.contains("damaged") || detail.contains("corrupt"),
        "{detail}"
    );
    assert!(pst["sources"][0]["last_success"].is_null(), "{pst}");
    assert!(pst["sources"][0]["newest"].is_null(), "{pst}");
    // The importer never heard of it.
    let st = c.importer_status(0);
    assert!(
        st["last_valid"].is_null() && st["last_failure"].is_null(),
        "{st}"
    );

    proxy
        .corrupt
        .store(false, std::sync::atomic::Ordering::SeqCst);
    c.cycle(1);
    assert_eq!(gen_list(&c), ["files/1"]);
    assert_clone_is(&c, 0, &snapshot(&c.src()), "after the clean run");
    let v = c.archive().run(&["verify", "--full"]);
    assert_eq!(v.code(), Some(0), "{v:?}");
}

// ---------------------------------------------------------------- 6

#[test]
fn exporter_down_the_pbs_retries_and_reports() {
    let mut c = Cluster::new(Options {
        pull_attempts: 2,
        max_age_secs: 86_400,
        ..Options::default()
    });
    write(&c.src().join("data.txt"), b"some data\n");
    // No exporter: its port is held closed.
    c.start(Who::Pbs);
    c.start(Who::Importer(0));
    let (code, pst) = c.pbs_status();
    assert_eq!(code, 1, "no generation yet: stale\n{pst}");

    let r =
        c.notify(&serde_json::json!({"source": "files", "seq": 1, "tx": "manual-1", "epoch": 0}));
    assert_eq!(r.status, 202, "{}", r.text());
    let tx = wait_for("the PBS to give up pulling", || {
        c.pbs_tx("manual-1").filter(|t| t["state"] == "failed")
    });
    assert!(s(&tx["error"]).contains("cannot connect"), "{tx}");

    let (code, pst) = c.pbs_status();
    assert_eq!(code, 1, "{pst}");
    assert_eq!(pst["status"], "STALE", "{pst}");
    let src = &pst["sources"][0];
    assert_eq!(src["stale"], true, "{pst}");
    assert!(src["newest"].is_null(), "{pst}");
    let detail = s(&src["last_failure"]["detail"]);
    eprintln!("pbs status: last failure {detail}");
    assert!(detail.contains("cannot connect"), "{detail}");
    assert!(
        detail.contains(&format!("127.0.0.1:{}", c.port(Who::Exporter))),
        "{detail}"
    );
    // It retried: the last failure is the second of two attempts.
    assert!(detail.contains("attempt 2 of 2"), "{detail}");
    assert!(gen_list(&c).is_empty());

    // The exporter comes up: a normal cycle, and the source is fresh.
    c.start(Who::Exporter);
    c.cycle(1);
    let (code, pst) = c.pbs_status();
    assert_eq!(code, 0, "{pst}");
    assert_eq!(pst["status"], "OK", "{pst}");
    let src = &pst["sources"][0];
    assert_eq!(src["stale"], false, "{pst}");
    assert_eq!(src["newest"]["generation"], "files/1", "{pst}");
    assert_eq!(src["last_success"]["generation"], "files/1", "{pst}");
    assert_clone_is(&c, 0, &snapshot(&c.src()), "after the exporter came up");
}

// ---------------------------------------------------------------- 7

/// Every authenticated route of every daemon, with a body where it takes one.
fn routes(source: &str) -> Vec<(Who, &'static str, String, Vec<u8>)> {
    let notify = format!(r#"{{"source":"{source}","seq":1,"tx":"evil-1","epoch":0}}"#);
    vec![
        (Who::Exporter, "GET", "/v1/status".into(), vec![]),
        (Who::Exporter, "GET", "/metrics".into(), vec![]),
        (Who::Exporter, "POST", "/v1/run".into(), b"{}".to_vec()),
        (Who::Exporter, "GET", "/v1/runs/x".into(), vec![]),
        (
            Who::Exporter,
            "GET",
            format!("/v1/generations/{source}/1"),
            vec![],
        ),
        (Who::Exporter, "POST", "/v1/blobs".into(), vec![0; 32]),
        (Who::Pbs, "GET", "/v1/status".into(), vec![]),
        (Who::Pbs, "GET", "/metrics".into(), vec![]),
        (Who::Pbs, "POST", "/v1/notify".into(), notify.into_bytes()),
        (Who::Pbs, "GET", "/v1/transactions/evil-1".into(), vec![]),
        (Who::Importer(0), "GET", "/v1/status".into(), vec![]),
        (Who::Importer(0), "GET", "/metrics".into(), vec![]),
        (
            Who::Pbs,
            "GET",
            format!("/v1/generations/{source}/1"),
            vec![],
        ),
        (Who::Pbs, "POST", "/v1/blobs".into(), vec![0; 32]),
        (
            Who::Importer(0),
            "POST",
            "/v1/notify".into(),
            format!(r#"{{"source":"{source}","seq":2,"tx":"evil-2","epoch":0}}"#).into_bytes(),
        ),
    ]
}

#[test]
fn wrong_or_missing_tokens_are_refused() {
    let mut c = Cluster::new(Options::default());
    let marker = "SECRET-PAYLOAD-4f1e";
    write(&c.src().join("data.txt"), marker.as_bytes());
    c.start_all();
    c.cycle(1);
    let before = c.importer_status(0);

    let t = c.tokens.clone();
    let mut refused = 0;
    for (who, method, path, body) in routes("files") {
        // A token another daemon accepts, but not this one.
        let elsewhere = match who {
            Who::Exporter => t.notify.clone(),
            Who::Pbs => t.pull.clone(),
            Who::Importer(_) => t.notify.clone(),
        };
        let auths: Vec<Option<String>> = vec![
            None,
            Some("token wrong-token-0123456789abcdef".into()),
            Some("Bearer wrong-token-0123456789abcdef".into()),
            Some(format!("token {}x", t.admin)),
            Some(format!("token {elsewhere}")),
            Some(format!("Basic {}", t.admin)),
            Some("token".into()),
        ];
        for auth in auths {
            let mut h = vec![("Content-Type", "application/json")];
            if let Some(a) = &auth {
                h.push(("Authorization", a));
            }
            let r = http(c.port(who), method, &path, &h, &body).unwrap();
            let what = format!("{who:?} {method} {path} with {auth:?}");
            assert_eq!(r.status, 401, "{what}: {}", r.text());
            let text = r.text();
            for tok in t.all() {
                assert!(!text.contains(tok), "{what}: the answer holds a token");
            }
            for data in [marker, "files/1", "generation", "pullback_"] {
                assert!(!text.contains(data), "{what}: the answer holds {data:?}");
            }
            refused += 1;
        }
    }
    assert_eq!(refused, 15 * 7);

    // Nothing was queued, stored or changed.
    assert!(
        c.pbs_tx("evil-1").is_none(),
        "a refused notify was recorded"
    );
    assert_eq!(gen_list(&c), ["files/1"]);
    let after = c.importer_status(0);
    assert_eq!(before, after);

    // The same notify with the exporter's own token is taken (so only the
    // token made the difference); it names the outbox generation the PBS
    // already has, so the pull that follows is refused as a replay.
    let r = c.notify(&serde_json::json!({"source": "files", "seq": 1, "tx": "evil-1", "epoch": 0}));
    assert_eq!(r.status, 202, "{}", r.text());
    let tx = wait_for("the PBS to end the good notify", || {
        c.pbs_tx("evil-1")
            .filter(|t| t["state"] == "committed" || t["state"] == "failed")
    });
    assert_eq!(tx["state"], "failed", "{tx}");
    assert!(
        tx["error"].as_str().unwrap_or("").contains("replayed"),
        "{tx}"
    );
    assert_eq!(gen_list(&c), ["files/1"]);
    c.cycle(2);
    assert_eq!(gen_list(&c), ["files/1", "files/2"]);
}

// ---------------------------------------------------------------- 8

#[test]
fn pbs_killed_mid_transfer_then_the_next_run_commits() {
    use std::sync::atomic::Ordering::SeqCst;
    let mut c = Cluster::new(Options {
        proxy: true,
        ..Options::default()
    });
    let mut rng = Rng::new(8);
    write(&c.src().join("big.bin"), &rng.bytes(40 << 20));
    write(&c.src().join("notes.txt"), &rng.text(100_000));
    c.start_all();
    // Slow the pull down so that it is surely cut in the middle.
    c.proxy.as_ref().unwrap().throttle.store(8 << 20, SeqCst);

    let first = c
        .command(Who::Exporter)
        .arg("run")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the PBS to be pulling, with data flowing", || {
        let relayed = c.proxy.as_ref().unwrap().relayed.load(SeqCst);
        let st = c.admin(Who::Pbs, "GET", "/v1/status").json();
        (relayed > 4 << 20 && st["transactions"][0]["state"] == "pulling").then_some(())
    });
    c.kill(Who::Pbs);
    assert!(gen_list(&c).is_empty(), "nothing committed before the kill");
    c.proxy.as_ref().unwrap().throttle.store(0, SeqCst);
    c.start(Who::Pbs);

    // The export that was cut short fails, and says why.
    let out = first.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("first exporter run: {stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("interrupted by a restart of the PBS"),
        "{stderr}"
    );

    c.cycle(1);
    assert_eq!(gen_list(&c), ["files/1"]);
    let v = c.archive().run(&["verify", "--full", "--json"]);
    assert_eq!(v.code(), Some(0), "{v:?}");
    assert_clone_is(&c, 0, &snapshot(&c.src()), "after the restart");
}

// ---------------------------------------------------------------- 9

#[test]
fn two_importers_both_get_every_generation() {
    let mut c = Cluster::new(Options {
        importers: 2,
        ..Options::default()
    });
    let mut rng = Rng::new(9);
    sample_source(&c.src(), &mut rng);
    c.start_all();
    c.cycle(1);
    let snap1 = snapshot(&c.src());
    assert_clone_is(&c, 0, &snap1, "cycle 1");
    assert_clone_is(&c, 1, &snap1, "cycle 1");

    change_source(&c.src());
    c.cycle(2);
    let snap2 = snapshot(&c.src());
    assert_clone_is(&c, 0, &snap2, "cycle 2");
    assert_clone_is(&c, 1, &snap2, "cycle 2");

    for i in 0..2 {
        let st = c.importer_status(i);
        assert_eq!(st["name"], format!("clone{i}"), "{st}");
        assert_eq!(st["last_valid"]["generation"], "files/2", "{st}");
        assert_eq!(st["last_valid"]["verified"], true, "{st}");
        assert!(st["last_failure"].is_null(), "{st}");
    }
    let (code, pst) = c.pbs_status();
    assert_eq!(code, 0, "{pst}");
    for i in 0..2 {
        assert_eq!(pst["importers"][i]["name"], format!("clone{i}"), "{pst}");
        assert_eq!(
            pst["importers"][i]["last_good"]["generation"], "files/2",
            "{pst}"
        );
    }
}
