//! Peer boundaries of the coordinator and the takeover, end to end with the real daemons:
//! a malicious peer (a raw HTTP client holding a stolen token) can do nothing beyond its
//! role. Epochs from the wire must equal the coordinator's; a promote needs the
//! coordinator's grant at its epoch; a takeover at the coordinator needs the password;
//! the takeover page refuses cross-site posts and a burst of wrong passwords cannot lock
//! the operator out or balloon the clone.

use std::fs;
use std::process::Stdio;
use std::sync::{Arc, Barrier};
use std::thread;

use pullback_tests::cluster::{http, wait_for, write_script, Cluster, HttpResponse, Options, Who};
use pullback_tests::ha::{
    form_token, node_row, page_post, password_hash as hash, request, takeover_api, PASSWORD,
};
use pullback_tests::write;
use serde_json::json;

fn notify(c: &Cluster, seq: u64, epoch: u64, tx: &str) -> (u16, String) {
    let body = json!({"source": "files", "seq": seq, "tx": tx, "epoch": epoch});
    let r = c.notify(&body);
    (r.status, r.text())
}

// ---------------------------------------------------------------- epochs (issue 10)

/// clone0 is MAIN at epoch 1 in its role file, and the coordinator holds no pending
/// promotion (it was confirmed). Returns `pbs status`.
fn assert_promoted_at_1(c: &Cluster) -> serde_json::Value {
    let rf = c.role_file(Who::Importer(0)).expect("role file");
    assert_eq!(
        (rf["role"].as_str(), rf["epoch"].as_u64()),
        (Some("MAIN"), Some(1))
    );
    let (_, st) = c.pbs_status();
    assert!(st["pending_promotion"].is_null(), "{st}");
    st
}

#[test]
fn an_epoch_from_the_wire_other_than_the_coordinators_is_refused_and_changes_nothing() {
    let mut c = Cluster::new(Options::default());
    write(&c.src().join("data.txt"), b"row 1\n");
    c.start_all();
    c.cycle(1);

    // The exporter's token, epochs above the coordinator's: refused, nothing changes.
    for (epoch, tx) in [(u64::MAX, "evil-max"), (1, "evil-next")] {
        let (status, text) = notify(&c, 1, epoch, tx);
        assert_eq!(status, 409, "epoch {epoch}: {text}");
        assert!(text.contains("ahead"), "{text}");
        assert!(c.pbs_tx(tx).is_none(), "{tx} was queued");
    }
    let n = node_row(&c, "exporter");
    assert_eq!(
        (n.role.as_str(), n.status.as_str(), n.epoch),
        ("MAIN", "Leader", 0)
    );

    // The legitimate main is not fenced: its next export is committed at epoch 0.
    write(&c.src().join("data.txt"), b"row 1\nrow 2\n");
    c.cycle(2);
    assert_eq!(
        c.role_file(Who::Exporter).expect("role file")["role"],
        "MAIN"
    );
    assert_eq!(node_row(&c, "exporter").status, "Leader");

    // The PBS push token telling a clone of a generation from an epoch the coordinator
    // never reached: refused before anything is pulled; the clone keeps its epoch.
    let before = c.importer_live(0).expect("the clone answers");
    let r = request(
        c.port(Who::Importer(0)),
        "POST",
        "/v1/notify",
        Some(&c.tokens.push[0]),
        format!(
            r#"{{"source":"files","seq":3,"tx":"x","epoch":{}}}"#,
            u64::MAX
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(
        r.text().contains("ahead of the coordinator"),
        "{}",
        r.text()
    );
    let st = c.importer_live(0).expect("the clone answers");
    assert_eq!(st["epoch"], 0, "{st}");
    assert!(st["importing"].is_null(), "{st}");
    assert_eq!(st["last_valid"], before["last_valid"], "{st}");
    assert_eq!(st["last_failure"], before["last_failure"], "{st}");

    // And the pipeline still works for the real next generation.
    write(&c.src().join("data.txt"), b"row 1\nrow 2\nrow 3\n");
    c.cycle(3);
    assert_eq!(
        fs::read(c.restore_dir(0).join("data.txt")).expect("restored"),
        b"row 1\nrow 2\nrow 3\n"
    );
    assert!(!c.restore_dir(0).join("evil.txt").exists());
}

// ---------------------------------------------------------------- promote (issue 12 item 3)

#[test]
fn a_promote_needs_the_coordinators_grant_at_exactly_its_epoch() {
    let mut c = Cluster::new(Options {
        pbs_extra: "[failover]\nswitchover_timeout_secs = 120\n".into(),
        ..Options::default()
    });
    write(&c.src().join("data.txt"), b"row 1\n");
    c.start_all();
    c.cycle(1);

    // The PBS push token, while the coordinator holds the old main: the stale epoch, the
    // next one guessed, a huge one. All refused; the clone stays a clone.
    for epoch in [0, 1, u64::MAX] {
        let body = json!({ "epoch": epoch }).to_string();
        let r = request(
            c.port(Who::Importer(0)),
            "POST",
            "/v1/ha/promote",
            Some(&c.tokens.push[0]),
            body.as_bytes(),
        );
        assert_eq!(r.status, 409, "promote at {epoch}: {}", r.text());
        assert!(
            r.text().contains("did not grant this clone MAIN"),
            "{}",
            r.text()
        );
    }
    assert!(c.importer_live(0).is_some(), "the clone exited");
    assert!(c.role_file(Who::Importer(0)).is_none());
    assert_eq!(node_row(&c, "exporter").status, "Leader");
    assert_eq!(node_row(&c, "clone0").role, "BACKUP");

    // The coordinator's own promotion (a switchover) is checked the same way and passes.
    let r = c.run(Who::Pbs, &["switchover", "--to", "clone0"]);
    assert!(r.status.success(), "switchover: {}{}", r.stdout, r.stderr);
    assert_eq!(c.wait_exit(Who::Importer(0)).code(), Some(0));
    // The promotion was confirmed: nothing pending at the coordinator.
    assert_promoted_at_1(&c);
}

// ---------------------------------------------------------------- takeover at the coordinator (issue 12 item 2)

fn pw_options() -> Options {
    Options {
        takeover_hash: Some(hash(PASSWORD)),
        ..Options::default()
    }
}

#[test]
fn a_takeover_at_the_coordinator_needs_the_password_not_only_the_clone_token() {
    let mut c = Cluster::new(pw_options());
    write(&c.src().join("data.txt"), b"row 1\n");
    c.start_all();
    c.cycle(1);

    // The clone's coordinator token (from importer.toml), forced, without the password or
    // with a guessed one: refused; the main keeps running as MAIN.
    for body in [
        json!({"node": "clone0", "force": true}),
        json!({"node": "clone0", "force": true, "password": "a guess"}),
    ] {
        let r = request(
            c.port(Who::Pbs),
            "POST",
            "/v1/ha/takeover",
            Some(&c.tokens.coord[0]),
            body.to_string().as_bytes(),
        );
        assert_eq!(r.status, 403, "{body}: {}", r.text());
        assert!(r.text().contains("password"), "{}", r.text());
    }
    let n = node_row(&c, "exporter");
    assert_eq!(
        (n.role.as_str(), n.status.as_str(), n.epoch),
        ("MAIN", "Leader", 0)
    );
    assert_eq!(node_row(&c, "clone0").role, "BACKUP");
    assert!(c.is_running(Who::Exporter));
    // The seeds' change=MAIN with the clone's admin token alone: refused as well.
    let r = request(
        c.port(Who::Importer(0)),
        "POST",
        "/rest/ha/status?change=MAIN",
        Some(&c.tokens.admin),
        b"",
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(c.role_file(Who::Importer(0)).is_none());

    // The clone's own, password-checked request: granted, promoted and confirmed.
    let r = takeover_api(&c, 0, PASSWORD, true);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(c.wait_exit(Who::Importer(0)).code(), Some(0));
    let st = assert_promoted_at_1(&c);
    assert_eq!(st["main"], "clone0", "{st}");
}

#[test]
fn a_grant_whose_promotion_did_not_happen_stays_pending_and_the_clone_promotes_on_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let (started, block, marker) = (
        dir.path().join("started"),
        dir.path().join("block"),
        dir.path().join("promoted"),
    );
    let hook = dir.path().join("promote");
    write_script(
        &hook,
        &format!(
            "touch {s}\nwhile [ -e {b} ]; do sleep 0.1; done\necho \"epoch=$PULLBACK_EPOCH\" >> {m}",
            s = started.display(),
            b = block.display(),
            m = marker.display()
        ),
    );
    let mut c = Cluster::new(Options {
        promote_hook: Some(hook),
        // Only the restart promotes here: the PBS's own retry waits an hour.
        pbs_extra: "[failover]\npromote_retry_secs = 3600\n".into(),
        ..pw_options()
    });
    write(&c.src().join("data.txt"), b"row 1\n");
    c.start_all();
    c.cycle(1);

    // The clone is granted MAIN, then dies in its promote hook.
    fs::write(&block, b"").expect("block");
    let (port, token) = (c.port(Who::Importer(0)), c.tokens.admin.clone());
    let asking = thread::spawn(move || {
        let body = json!({ "password": PASSWORD, "force": true }).to_string();
        let auth = format!("token {token}");
        let _ = http(
            port,
            "POST",
            "/v1/takeover",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        );
    });
    wait_for("the promote hook to start", || {
        started.exists().then_some(())
    });
    c.kill(Who::Importer(0));
    let _ = asking.join();
    assert!(c.role_file(Who::Importer(0)).is_none());

    // The PBS shows the grant as pending: not undone, not forgotten.
    let (_, st) = c.pbs_status();
    let p = &st["pending_promotion"];
    assert_eq!(
        (p["node"].as_str(), p["epoch"].as_u64()),
        (Some("clone0"), Some(1)),
        "{st}"
    );
    assert_eq!(st["main"], "clone0", "{st}");
    let text = c.run(Who::Pbs, &["status"]).stdout;
    assert!(text.contains("promotion pending: clone0"), "{text}");

    // The clone restarts: the coordinator says it is MAIN, so it promotes and exits 0.
    fs::remove_file(&block).expect("unblock");
    let status = c
        .command(Who::Importer(0))
        .arg("serve")
        .env("PULLBACK_FILES_TARGET", c.clone_data(0))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("importer serve");
    assert_eq!(status.code(), Some(0));
    let m = fs::read_to_string(&marker).expect("the promote hook ran");
    assert!(m.contains("epoch=1"), "{m}");
    assert_promoted_at_1(&c);
}

#[test]
fn a_takeover_granted_with_the_pbs_admin_token_is_promoted_by_the_pbs() {
    let mut c = Cluster::new(Options::default());
    write(&c.src().join("data.txt"), b"row 1\n");
    c.start_all();
    c.cycle(1);
    // The PBS operator's token needs no password; the clone did not ask, so the PBS
    // promotes it (the clone checks that promote with the coordinator and accepts it).
    let r = request(
        c.port(Who::Pbs),
        "POST",
        "/v1/ha/takeover",
        Some(&c.tokens.admin),
        json!({"node": "clone0", "force": true})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(c.wait_exit(Who::Importer(0)).code(), Some(0));
    assert_promoted_at_1(&c);
}

// ---------------------------------------------------------------- password guessing (issue 12 item 6)

fn vm_hwm_kb(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("/proc/PID/status")
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[test]
fn a_burst_of_wrong_passwords_is_bounded_and_cannot_lock_the_operator_out() {
    let mut c = Cluster::new(pw_options());
    write(&c.src().join("data.txt"), b"row 1\n");
    c.start_all();
    c.cycle(1);
    let port = c.port(Who::Importer(0));
    let pid = c.pid(Who::Importer(0)).expect("importer pid");
    let before = vm_hwm_kb(pid);

    // 40 parallel wrong guesses at the page, each with a valid form token.
    let tokens: Vec<String> = (0..40).map(|_| form_token(port)).collect();
    let go = Arc::new(Barrier::new(tokens.len()));
    let answers: Vec<(u16, String)> = tokens
        .into_iter()
        .enumerate()
        .map(|(n, t)| {
            let go = go.clone();
            thread::spawn(move || {
                let body = format!("password=wrong+{n}&form_token={t}");
                go.wait();
                let r = http(
                    port,
                    "POST",
                    "/takeover",
                    &[("Content-Type", "application/x-www-form-urlencoded")],
                    body.as_bytes(),
                )
                .expect("POST /takeover");
                (r.status, r.text())
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().expect("guess"))
        .collect();
    let checked = answers
        .iter()
        .filter(|(s, t)| *s == 403 && t.contains("wrong password"))
        .count();
    let refused = answers.iter().filter(|(s, _)| *s == 429).count();
    let after = vm_hwm_kb(pid);
    eprintln!(
        "40 parallel wrong guesses: {checked} checked, {refused} refused at once; importer VmHWM {before} kB -> {after} kB"
    );
    assert!((1..=3).contains(&checked), "{checked} checked: {answers:?}");
    assert_eq!(checked + refused, 40, "{answers:?}");
    // One argon2 check (19 MiB) at a time, not 40.
    assert!(
        after < before + 100 * 1024,
        "VmHWM {before} kB -> {after} kB"
    );

    // More wrong guesses, one after the other: at most 3 in all are checked, then this
    // address is locked out of the page, even with the right password ...
    let mut total = checked;
    loop {
        let r = page_post(port, "password=wrong+again");
        if r.status == 429 {
            assert!(r.text().contains("locked"), "{}", r.text());
            break;
        }
        assert_eq!(r.status, 403, "{}", r.text());
        total += 1;
        assert!(total <= 3, "{total} wrong passwords checked");
    }
    let r = page_post(port, "password=correct+horse+battery+staple");
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(c.role_file(Who::Importer(0)).is_none());
    // ... but the operator's token-authenticated API with the password is not.
    let r = takeover_api(&c, 0, PASSWORD, false);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(c.wait_exit(Who::Importer(0)).code(), Some(0));
    assert_eq!(node_row(&c, "clone0").role, "MAIN");
}

// ---------------------------------------------------------------- cross-site form posts (issue 10)

fn post_form(port: u16, headers: &[(&str, &str)], form: &str) -> HttpResponse {
    let mut h = vec![("Content-Type", "application/x-www-form-urlencoded")];
    h.extend_from_slice(headers);
    http(port, "POST", "/takeover", &h, form.as_bytes()).expect("POST /takeover")
}

#[test]
fn the_takeover_page_refuses_cross_site_posts_and_posts_without_its_form_token() {
    let mut c = Cluster::new(pw_options());
    write(&c.src().join("data.txt"), b"row 1\n");
    c.start_all();
    c.cycle(1);
    let port = c.port(Who::Importer(0));
    let right = "password=correct+horse+battery+staple";

    // A page elsewhere submitting the form from the operator's browser: refused, named.
    for headers in [
        vec![("Sec-Fetch-Site", "cross-site")],
        vec![("Origin", "http://evil.example")],
        vec![("Origin", "null")],
    ] {
        let form = format!("{right}&form_token={}", form_token(port));
        let r = post_form(port, &headers, &form);
        assert_eq!(r.status, 403, "{headers:?}: {}", r.text());
        assert!(
            r.text().contains("cross-site form post refused"),
            "{}",
            r.text()
        );
    }
    // No form token, a made-up one, a used one: refused.
    let used = form_token(port);
    let r = post_form(port, &[], &format!("password=wrong&form_token={used}"));
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("wrong password"), "{}", r.text());
    for form in [
        right.to_string(),
        format!("{right}&form_token=0123456789abcdef0123456789abcdef"),
        format!("{right}&form_token={used}"),
    ] {
        let r = post_form(port, &[], &form);
        assert_eq!(r.status, 403, "{form}: {}", r.text());
        assert!(r.text().contains("reload the page"), "{}", r.text());
    }
    // The password is POST-only: in a URL it does nothing.
    let r = http(port, "GET", &format!("/takeover?{right}"), &[], b"").expect("GET");
    assert_eq!(r.status, 200);
    assert!(c.role_file(Who::Importer(0)).is_none());
    assert_eq!(node_row(&c, "exporter").status, "Leader");

    // The page itself (same origin, a fresh token): taken over.
    let origin = format!("http://127.0.0.1:{port}");
    let form = format!("{right}&form_token={}", form_token(port));
    let r = post_form(
        port,
        &[("Origin", &origin), ("Sec-Fetch-Site", "same-origin")],
        &form,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(c.wait_exit(Who::Importer(0)).code(), Some(0));
}
