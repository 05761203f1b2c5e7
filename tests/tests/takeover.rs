//! Takeover and HA, end to end: the real `exporter`, `pbs` and `importer` daemons over
//! loopback. The HA API with and without tokens, a takeover after the main is killed (the
//! old main fenced as Broken), wrong passwords and the gates, and two clones racing for
//! the takeover.

use std::fs;
use std::sync::{Arc, Barrier};
use std::thread;

use pullback_tests::cluster::{
    files_hook, http, wait_for, write_script, Cluster, HeldImport, HttpResponse, Options, Who,
};
use pullback_tests::write;
use serde_json::json;

use pullback_tests::ha::{node_row, password_hash as hash, request, takeover_api, PASSWORD};

fn takeover_page(c: &Cluster, i: usize, form: &str) -> HttpResponse {
    pullback_tests::ha::page_post(c.port(Who::Importer(i)), form)
}

/// The PBS's nodes by name: (role, status, epoch).
fn nodes(c: &Cluster) -> Vec<(String, String, String, u64)> {
    let r = c.admin(Who::Pbs, "GET", "/v1/ha/nodes");
    assert_eq!(r.status, 200, "{}", r.text());
    let mut v: Vec<_> = r
        .json()
        .as_array()
        .expect("a list")
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap_or("").to_string(),
                n["role"].as_str().unwrap_or("").to_string(),
                n["status"].as_str().unwrap_or("").to_string(),
                n["epoch"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect();
    v.sort();
    v
}

fn node(c: &Cluster, name: &str) -> (String, String, u64) {
    let n = node_row(c, name);
    (n.role, n.status, n.epoch)
}

fn notify(c: &Cluster, epoch: u64, tx: &str) -> HttpResponse {
    let body = json!({"source": "files", "seq": 1, "tx": tx, "epoch": epoch});
    c.notify(&body)
}

// ---------------------------------------------------------------- a

#[test]
fn ha_api_needs_a_token_and_follows_the_coordinator() {
    let dir = tempfile::tempdir().expect("tmp");
    let marker = dir.path().join("demoted");
    let demote = dir.path().join("demote");
    write_script(
        &demote,
        &format!("echo \"epoch=$PULLBACK_EPOCH\" >> {}", marker.display()),
    );
    let mut c = Cluster::new(Options {
        demote_hook: Some(demote),
        takeover_hash: Some(hash(PASSWORD)),
        ..Options::default()
    });
    write(&c.src().join("data.txt"), b"data\n");

    // The PBS is down: the exporter starts BACKUP and shows "Leader (single node)".
    c.start(Who::Exporter);
    let ep = c.port(Who::Exporter);
    let r = request(ep, "GET", "/rest/ha/status", Some(&c.tokens.admin), b"");
    assert_eq!((r.status, r.text().as_str()), (200, "BACKUP"));
    let st = c.admin(Who::Exporter, "GET", "/v1/status").json();
    assert_eq!(st["status"], "Leader (single node)", "{st}");
    assert_eq!(st["role"], "BACKUP", "{st}");
    for (method, path) in [
        ("GET", "/rest/ha/status"),
        ("POST", "/rest/ha/status?change=MAIN"),
        ("POST", "/rest/ha/status?change=BACKUP"),
    ] {
        for tok in [None, Some("wrong-token-0123456789abcdef")] {
            let r = request(ep, method, path, tok, b"");
            assert_eq!(r.status, 401, "{method} {path} with {tok:?}: {}", r.text());
            assert!(!r.text().contains("BACKUP") && !r.text().contains("MAIN"));
        }
    }
    // change=BACKUP on a BACKUP: a no-op, the exporter keeps running.
    let admin = Some(c.tokens.admin.as_str());
    let r = request(ep, "POST", "/rest/ha/status?change=BACKUP", admin, b"");
    assert_eq!((r.status, r.text().as_str()), (200, "BACKUP"));
    let r = request(ep, "POST", "/rest/ha/status?change=SIDEWAYS", admin, b"");
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(c.admin(Who::Exporter, "GET", "/v1/status").status, 200);
    // Only the coordinator grants MAIN.
    let r = request(
        ep,
        "POST",
        "/rest/ha/status?change=MAIN",
        Some(&c.tokens.admin),
        b"",
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("coordinator"), "{}", r.text());
    // It does not export without a coordinator.
    let run = c.exporter_run();
    assert!(
        !run.status.success(),
        "exported with no coordinator: {}",
        run.stdout
    );
    assert!(run.stderr.contains("single node"), "{}", run.stderr);
    assert!(c.role_file(Who::Exporter).is_none());

    // The coordinator comes up and grants MAIN at epoch 0 (no takeover yet).
    c.start(Who::Pbs);
    c.start(Who::Importer(0));
    wait_for("the exporter to be granted MAIN", || {
        let r = request(ep, "GET", "/rest/ha/status", Some(&c.tokens.admin), b"");
        (r.text() == "MAIN").then_some(())
    });
    assert_eq!(
        c.role_file(Who::Exporter),
        Some(json!({"role": "MAIN", "epoch": 0}))
    );
    let st = c.admin(Who::Exporter, "GET", "/v1/status").json();
    assert_eq!(
        (st["role"].as_str(), st["status"].as_str()),
        (Some("MAIN"), Some("Leader"))
    );
    c.cycle(1);
    assert_eq!(node(&c, "exporter"), ("MAIN".into(), "Leader".into(), 0));
    assert_eq!(node(&c, "clone0"), ("BACKUP".into(), "Follower".into(), 0));

    // The importer's HA API: token required; BACKUP; change=BACKUP is a no-op.
    let ip = c.port(Who::Importer(0));
    for tok in [None, Some(c.tokens.notify.as_str())] {
        assert_eq!(request(ip, "GET", "/rest/ha/status", tok, b"").status, 401);
        assert_eq!(
            request(ip, "POST", "/rest/ha/status?change=MAIN", tok, b"").status,
            401
        );
        let body = json!({"password": PASSWORD}).to_string();
        assert_eq!(
            request(ip, "POST", "/v1/takeover", tok, body.as_bytes()).status,
            401
        );
    }
    // The coordinator's API too.
    let pp = c.port(Who::Pbs);
    let hello = json!({"node": "clone0", "epoch": 0, "role": "BACKUP"}).to_string();
    for tok in [None, Some("wrong-token-0123456789abcdef")] {
        assert_eq!(request(pp, "GET", "/v1/ha/nodes", tok, b"").status, 401);
        assert_eq!(request(pp, "GET", "/", tok, b"").status, 401);
        assert_eq!(
            request(pp, "POST", "/v1/ha/hello", tok, hello.as_bytes()).status,
            401
        );
        let t = json!({"node": "clone0"}).to_string();
        assert_eq!(
            request(pp, "POST", "/v1/ha/takeover", tok, t.as_bytes()).status,
            401
        );
    }
    // A node may speak only for itself: the exporter's token cannot ask for clone0.
    let t = json!({"node": "clone0", "force": true}).to_string();
    let r = request(
        pp,
        "POST",
        "/v1/ha/takeover",
        Some(&c.tokens.notify),
        t.as_bytes(),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(node(&c, "clone0"), ("BACKUP".into(), "Follower".into(), 0));
    let r = request(ip, "GET", "/rest/ha/status", Some(&c.tokens.admin), b"");
    assert_eq!((r.status, r.text().as_str()), (200, "BACKUP"));
    let r = request(
        ip,
        "POST",
        "/rest/ha/status?change=BACKUP",
        Some(&c.tokens.admin),
        b"",
    );
    assert_eq!((r.status, r.text().as_str()), (200, "BACKUP"));
    assert!(
        c.importer_live(0).is_some(),
        "change=BACKUP stopped the clone"
    );
    // The takeover page needs no token (the password protects the action).
    let page = http(ip, "GET", "/takeover", &[], b"").expect("GET /takeover");
    assert_eq!(page.status, 200);
    let html = page.text();
    assert!(
        html.contains("files/1") && html.contains("<form method=\"post\""),
        "{html}"
    );
    assert!(!html.contains("<script"), "{html}");
    // The PBS dashboard.
    let dash = c.admin(Who::Pbs, "GET", "/").text();
    assert!(
        dash.contains("<td>exporter</td>") && dash.contains(">Leader<"),
        "{dash}"
    );

    // change=BACKUP on the main: demote hook, role file BACKUP, 200, exit 0.
    let r = request(
        ep,
        "POST",
        "/rest/ha/status?change=BACKUP",
        Some(&c.tokens.admin),
        b"",
    );
    assert_eq!((r.status, r.text().as_str()), (200, "BACKUP"));
    let st = c.wait_exit(Who::Exporter);
    assert_eq!(st.code(), Some(0), "{st}");
    assert_eq!(
        c.role_file(Who::Exporter),
        Some(json!({"role": "BACKUP", "epoch": 0, "fenced": true}))
    );
    assert_eq!(fs::read_to_string(&marker).unwrap_or_default(), "epoch=0\n");
}

// ---------------------------------------------------------------- b

#[test]
fn main_killed_clone_takes_over_and_the_old_main_stays_fenced() {
    let dir = tempfile::tempdir().expect("tmp");
    let promoted = dir.path().join("promoted");
    let demoted = dir.path().join("demoted");
    let promote = dir.path().join("promote");
    let demote = dir.path().join("demote");
    write_script(
        &promote,
        &format!(
            "echo \"epoch=$PULLBACK_EPOCH restore=$PULLBACK_RESTORE_DIR\" >> {}",
            promoted.display()
        ),
    );
    write_script(
        &demote,
        &format!("echo \"epoch=$PULLBACK_EPOCH\" >> {}", demoted.display()),
    );
    let mut c = Cluster::new(Options {
        takeover_hash: Some(hash(PASSWORD)),
        promote_hook: Some(promote),
        demote_hook: Some(demote),
        ..Options::default()
    });
    write(&c.src().join("data.txt"), b"first\n");
    c.start_all();
    c.cycle(1);
    assert_eq!(node(&c, "exporter"), ("MAIN".into(), "Leader".into(), 0));

    c.kill(Who::Exporter);
    let r = takeover_api(&c, 0, PASSWORD, false);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"role": "MAIN", "epoch": 1}));
    let st = c.wait_exit(Who::Importer(0));
    assert_eq!(st.code(), Some(0), "{st}");
    assert_eq!(
        c.role_file(Who::Importer(0)),
        Some(json!({"role": "MAIN", "epoch": 1}))
    );
    assert_eq!(
        fs::read_to_string(&promoted).unwrap_or_default(),
        format!("epoch=1 restore={}\n", c.restore_dir(0).display())
    );
    assert!(
        !demoted.exists(),
        "the old main was down: nothing demoted it yet"
    );

    // The coordinator: old main Broken, clone Leader, epoch 1 (API and `pbs status`).
    assert_eq!(node(&c, "exporter"), ("BACKUP".into(), "Broken".into(), 1));
    assert_eq!(node(&c, "clone0"), ("MAIN".into(), "Leader".into(), 1));
    let (_, pst) = c.pbs_status();
    assert_eq!(pst["epoch"], 1, "{pst}");
    assert_eq!(pst["main"], "clone0", "{pst}");
    let text = c.run(Who::Pbs, &["status"]).stdout;
    assert!(
        text.contains("node exporter (exporter): BACKUP Broken  epoch 1"),
        "{text}"
    );
    assert!(
        text.contains("node clone0 (importer): MAIN Leader  epoch 1"),
        "{text}"
    );

    // The old main comes back: it stays BACKUP/Broken, runs its demote hook once.
    c.start(Who::Exporter);
    let ep = c.port(Who::Exporter);
    let r = request(ep, "GET", "/rest/ha/status", Some(&c.tokens.admin), b"");
    assert_eq!(r.text(), "BACKUP");
    let st = c.admin(Who::Exporter, "GET", "/v1/status").json();
    assert_eq!(
        (st["role"].as_str(), st["status"].as_str()),
        (Some("BACKUP"), Some("Broken")),
        "{st}"
    );
    assert_eq!(
        c.role_file(Who::Exporter),
        Some(json!({"role": "BACKUP", "epoch": 1, "fenced": true}))
    );
    assert_eq!(
        fs::read_to_string(&demoted).unwrap_or_default(),
        "epoch=1\n"
    );
    let run = c.exporter_run();
    assert!(
        !run.status.success(),
        "a Broken node exported: {}",
        run.stdout
    );
    assert!(run.stderr.contains("Broken"), "{}", run.stderr);
    // Its hook ran once only.
    assert_eq!(
        fs::read_to_string(&demoted).unwrap_or_default(),
        "epoch=1\n"
    );

    // A notify with its old epoch is refused (stale), so is one at the new epoch (Broken).
    let r = notify(&c, 0, "stale-1");
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("demote"), "{}", r.text());
    let r = notify(&c, 1, "stale-2");
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("Broken"), "{}", r.text());
    assert!(c.pbs_tx("stale-1").is_none() && c.pbs_tx("stale-2").is_none());
    assert_eq!(c.archive().generations(), ["files/1"]);
    assert_eq!(node(&c, "exporter"), ("BACKUP".into(), "Broken".into(), 1));
}

// ---------------------------------------------------------------- c

#[test]
fn wrong_passwords_are_limited_and_an_unverified_clone_needs_force() {
    let dir = tempfile::tempdir().expect("tmp");
    let fail = dir.path().join("fail-import");
    let import0 = dir.path().join("import0");
    write_script(
        &import0,
        &format!(
            "if [ -e {} ]; then echo '<script>alert(1)</script> import broken on purpose'; exit 3; fi\nexec {}",
            fail.display(),
            files_hook("import").display()
        ),
    );
    let mut c = Cluster::new(Options {
        importers: 2,
        import_hooks: vec![Some(import0), None],
        takeover_hash: Some(hash(PASSWORD)),
        ..Options::default()
    });
    write(&c.src().join("data.txt"), b"first\n");
    c.start_all();
    c.cycle(1);
    // files/2 fails on clone0 (its import hook), passes on clone1.
    fs::write(&fail, b"").expect("marker");
    write(&c.src().join("data.txt"), b"second\n");
    c.export_ok();
    wait_for("clone0 to report files/2 failed", || {
        let s = c.importer_live(0)?;
        (s["last_failure"]["generation"] == "files/2" && s["importing"].is_null()).then_some(())
    });
    wait_for("clone1 to verify files/2", || {
        let s = c.importer_live(1)?;
        (s["last_valid"]["generation"] == "files/2").then_some(())
    });

    // clone1: three wrong passwords (403), then even the right one is refused (429).
    for n in 0..3 {
        let r = takeover_api(&c, 1, "wrong password", false);
        assert_eq!(r.status, 403, "wrong password {n}: {}", r.text());
    }
    let r = takeover_api(&c, 1, PASSWORD, false);
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.text().contains("locked"), "{}", r.text());
    // (The lockout is per caller now: the API's lock does not lock the page, which in
    // turn refuses a post that does not carry a form token from the page.)
    let r = http(
        c.port(Who::Importer(1)),
        "POST",
        "/takeover",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"password=correct+horse+battery+staple",
    )
    .expect("POST /takeover");
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("reload the page"), "{}", r.text());
    assert!(c.role_file(Who::Importer(1)).is_none());
    assert!(c.importer_live(1).is_some(), "clone1 must still run");
    // Per node: clone0 is not locked.
    let r = takeover_api(&c, 0, "wrong again", false);
    assert_eq!(r.status, 403, "{}", r.text());

    // clone0's page: the last valid backup is files/1, its last restore failed, log escaped.
    let html = http(c.port(Who::Importer(0)), "GET", "/takeover", &[], b"")
        .expect("GET /takeover")
        .text();
    assert!(html.contains("<td>files/1</td>"), "{html}");
    assert!(
        html.contains("<tr><th>Restore and verify passed</th><td>no</td></tr>"),
        "{html}"
    );
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt; import broken on purpose"),
        "{html}"
    );
    assert!(!html.contains("<script>"), "{html}");
    assert!(
        html.contains("<td>clone1</td>"),
        "the other nodes are listed: {html}"
    );

    // clone0: the right password, but the last restore is not verified: refused.
    let r = takeover_api(&c, 0, PASSWORD, false);
    assert_eq!(r.status, 409, "{}", r.text());
    let why = r.json()["error"].as_str().unwrap_or("").to_string();
    assert!(
        why.contains("not verified") && why.contains("files/2"),
        "{why}"
    );
    assert!(c.role_file(Who::Importer(0)).is_none());
    assert_eq!(node(&c, "exporter"), ("MAIN".into(), "Leader".into(), 0));

    // Through the page, forced: taken over (the newer clone1 is skipped too).
    let r = takeover_page(&c, 0, "password=correct+horse+battery+staple&force=1");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("MAIN at epoch 1"), "{}", r.text());
    assert_eq!(c.wait_exit(Who::Importer(0)).code(), Some(0));
    assert_eq!(
        c.role_file(Who::Importer(0)),
        Some(json!({"role": "MAIN", "epoch": 1}))
    );
    assert_eq!(node(&c, "clone0"), ("MAIN".into(), "Leader".into(), 1));
    assert_eq!(node(&c, "exporter"), ("BACKUP".into(), "Broken".into(), 1));
    // The old main was running: the coordinator told it to step down, and it exited 0.
    assert_eq!(c.wait_exit(Who::Exporter).code(), Some(0));
    assert_eq!(
        c.role_file(Who::Exporter),
        Some(json!({"role": "BACKUP", "epoch": 0, "fenced": true}))
    );
}

// ---------------------------------------------------------------- d

#[test]
fn two_clones_race_for_the_takeover_exactly_one_wins() {
    let h = hash(PASSWORD);
    // A fresh PBS, exporter and two clones each time: 20 repetitions.
    for rep in 0..20 {
        let mut c = Cluster::new(Options {
            importers: 2,
            takeover_hash: Some(h.clone()),
            ..Options::default()
        });
        write(&c.src().join("data.txt"), format!("rep {rep}\n").as_bytes());
        c.start_all();
        c.cycle(1);
        c.kill(Who::Exporter);
        let c = Arc::new(c);
        let gate = Arc::new(Barrier::new(2));
        let threads: Vec<_> = (0..2)
            .map(|i| {
                let (c, gate) = (c.clone(), gate.clone());
                thread::spawn(move || {
                    gate.wait();
                    let r = takeover_api(&c, i, PASSWORD, false);
                    (r.status, r.text())
                })
            })
            .collect();
        let results: Vec<(u16, String)> = threads
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect();
        let mut codes: Vec<u16> = results.iter().map(|r| r.0).collect();
        codes.sort();
        assert_eq!(codes, [200, 409], "rep {rep}: {results:?}");
        let winner = results.iter().position(|r| r.0 == 200).unwrap_or(9);
        let loser = 1 - winner;
        assert_eq!(
            c.role_file(Who::Importer(winner)),
            Some(json!({"role": "MAIN", "epoch": 1})),
            "rep {rep}"
        );
        assert!(c.role_file(Who::Importer(loser)).is_none(), "rep {rep}");
        assert!(
            results[loser].1.contains("epoch moved") || results[loser].1.contains("already"),
            "rep {rep}: {}",
            results[loser].1
        );
        let leaders: Vec<_> = nodes(&c)
            .into_iter()
            .filter(|n| n.2 == "Leader")
            .map(|n| n.0)
            .collect();
        assert_eq!(leaders, [format!("clone{winner}")], "rep {rep}");
        assert!(
            c.importer_live(loser).is_some(),
            "rep {rep}: the loser must keep running"
        );
    }
}

// ---------------------------------------------------------------- c (import running)

#[test]
fn takeover_is_refused_while_an_import_runs() {
    let dir = tempfile::tempdir().expect("tmp");
    let held = HeldImport::new(dir.path(), "import");
    let (block, started, release, import) = (
        held.block.clone(),
        held.started.clone(),
        held.release.clone(),
        held.hook.clone(),
    );
    let mut c = Cluster::new(Options {
        import_hooks: vec![Some(import)],
        takeover_hash: Some(hash(PASSWORD)),
        ..Options::default()
    });
    write(&c.src().join("data.txt"), b"first\n");
    c.start_all();
    c.cycle(1);
    fs::write(&block, b"").expect("block");
    write(&c.src().join("data.txt"), b"second\n");
    c.export_ok();
    wait_for("the import hook of files/2 to start", || {
        started.exists().then_some(())
    });
    let r = takeover_api(&c, 0, PASSWORD, false);
    assert_eq!(r.status, 409, "{}", r.text());
    let why = r.json()["error"].as_str().unwrap_or("").to_string();
    assert!(why.contains("import") && why.contains("running"), "{why}");
    // The seeds' HA API asks for the same takeover, with the same gates.
    let ip = c.port(Who::Importer(0));
    let token = c.tokens.admin.clone();
    let admin = Some(token.as_str());
    // (It needs the takeover password now, as a JSON body: the token alone is refused.)
    let r = request(ip, "POST", "/rest/ha/status?change=MAIN", admin, b"");
    assert_eq!(r.status, 403, "{}", r.text());
    let pw = json!({ "password": PASSWORD }).to_string();
    let r = request(
        ip,
        "POST",
        "/rest/ha/status?change=MAIN",
        admin,
        pw.as_bytes(),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(c.role_file(Who::Importer(0)).is_none());
    fs::write(&release, b"").expect("release");
    c.wait_imported("files/2");
    // Once it is done, the same request goes through.
    c.kill(Who::Exporter);
    let r = request(
        ip,
        "POST",
        "/rest/ha/status?change=MAIN",
        admin,
        pw.as_bytes(),
    );
    assert_eq!((r.status, r.text().as_str()), (200, "MAIN"));
    assert_eq!(c.wait_exit(Who::Importer(0)).code(), Some(0));
    assert_eq!(
        c.role_file(Who::Importer(0)),
        Some(json!({"role": "MAIN", "epoch": 1}))
    );
}
