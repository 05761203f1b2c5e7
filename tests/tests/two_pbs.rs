//! Clones fed by either of two PBS (`[[coordinator]]` twice): losing one PBS loses no
//! generation and no takeover.
//!
//! 1. Both PBS pull the exporter's `[[source]]`: each generation reaches the clones once
//!    (the second PBS's push is answered as already done; the import hook ran once);
//!    PBS 1 killed with SIGKILL, the next generation comes through PBS 2; PBS 1 back, the
//!    exporter tells it first what it missed, so both PBS hold the same history; a refusal
//!    of a takeover by the first PBS is final; with PBS 1 dead, PBS 2 grants it.
//! 2. PBS 2 mirrors PBS 1 (`[[mirror]]`, no `[[source]]`) and pushes what it mirrors to the
//!    clone: with PBS 1 unable to reach the clone, the clone gets the generation from PBS 2;
//!    with PBS 1 dead, the restarted mirror brings a clone that was down up to date.
//! 3. Edge rows: a notification or a promotion from a token peer the clone does not list
//!    is 403; a config that names a coordinator twice is refused, naming it; a generation
//!    told by a PBS under the name of another one the clone holds (the PBS numbered the
//!    source differently) is refused and the clone keeps its data.

use std::fs;
use std::sync::atomic::Ordering::SeqCst;

use pullback_tests::cluster::{wait_for, PortHold, Proxy};
use pullback_tests::ha::{password_hash, PASSWORD};
use pullback_tests::two_pbs::{Node, Second, Setup, TwoPbs};
use pullback_tests::{assert_same_tree, snapshot};

fn write_data(t: &TwoPbs, text: &str) {
    fs::write(t.src().join("data.txt"), text).expect("data");
    fs::write(
        t.src().join(format!("{}.bin", text.trim())),
        text.repeat(5000),
    )
    .expect("data");
}

#[track_caller]
fn assert_clone_is_src(t: &TwoPbs, i: usize, what: &str) {
    assert_same_tree(&snapshot(&t.src()), &snapshot(&t.clone_data(i)), what);
}

#[test]
fn either_pbs_feeds_the_clones_and_grants_a_takeover_when_the_other_is_dead() {
    let hash = password_hash(PASSWORD);
    let mut setup = Setup::new(Second::Source, 2);
    // clone1 prefers PBS 2.
    setup.order[1] = vec![2, 1];
    setup.clone_hash = Some(hash.clone());
    // PBS 1 holds another password for the clones: it refuses their takeovers.
    setup.pbs_hash = [Some(password_hash("not the clone's password")), Some(hash)];
    let mut t = TwoPbs::new(setup);
    write_data(&t, "one\n");
    t.start_all();

    // 1. Both PBS pull and commit it, both push it; each clone imports it once.
    let out = t.export_ok();
    assert!(out.contains("committed as files/1"), "{out}");
    for i in 0..2 {
        let st = t.wait_clone(i, "files/1");
        let from = st["last_valid"]["from"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(from == "pbs1" || from == "pbs2", "{st}");
        assert_clone_is_src(&t, i, "files/1");
    }
    for k in [1, 2] {
        wait_for(&format!("pbs{k} to hold files/1"), || {
            (t.generations(k) == ["files/1"]).then_some(())
        });
        for i in 0..2 {
            // The second push was answered as done (not an error).
            t.wait_pushed(k, i, "files/1");
        }
    }
    for i in 0..2 {
        assert_eq!(
            t.hook_runs(i),
            ["files/1"],
            "clone{i}: the import hook ran once"
        );
    }

    // 2. PBS 1 dies; the next generation reaches the clones through PBS 2.
    t.kill(Node::Pbs(1));
    write_data(&t, "two\n");
    let out = t.export_ok();
    assert!(out.contains("committed as files/2 by pbs2"), "{out}");
    for i in 0..2 {
        let st = t.wait_clone(i, "files/2");
        assert_eq!(st["last_valid"]["from"], "pbs2", "{st}");
        assert_clone_is_src(&t, i, "files/2 through pbs2");
        assert_eq!(t.hook_runs(i), ["files/1", "files/2"], "clone{i}");
    }
    let st = t.live(Node::Exporter).expect("exporter status");
    assert_eq!(st["missed"]["pbs1"][0]["seq"], 2, "{st}");
    let text = t.run(Node::Exporter, &["status"]).stdout;
    assert!(
        text.contains("pbs1 missed outbox generation(s) 2"),
        "{text}"
    );
    let text = t.run(Node::Clone(0), &["status"]).stdout;
    assert!(
        text.contains("last valid: files/2") && text.contains("from pbs2"),
        "{text}"
    );

    // 3. PBS 1 comes back: before the next generation the exporter tells it of the one it
    // missed, so both PBS hold the same history (same names, same data).
    t.start(Node::Pbs(1));
    write_data(&t, "three\n");
    t.export_ok();
    for i in 0..2 {
        t.wait_clone(i, "files/3");
        assert_clone_is_src(&t, i, "files/3");
    }
    for k in [1, 2] {
        wait_for(&format!("pbs{k} to hold files/1..3"), || {
            (t.generations(k) == ["files/1", "files/2", "files/3"]).then_some(())
        });
        for i in 0..2 {
            t.wait_pushed(k, i, "files/3");
        }
    }
    assert_eq!(t.records(1), t.records(2));
    let st = t.live(Node::Exporter).expect("exporter status");
    assert!(st["missed"].is_null(), "{st}");
    for i in 0..2 {
        assert_eq!(
            t.hook_runs(i),
            ["files/1", "files/2", "files/3"],
            "clone{i}"
        );
    }

    // 4. A takeover goes to the first PBS that answers, and its refusal is final: PBS 1
    // (which has another password for clone0) refuses, PBS 2 is not asked.
    let body = format!(r#"{{"password":"{PASSWORD}"}}"#);
    let r = t.request(
        Node::Clone(0),
        "POST",
        "/v1/takeover",
        &t.admin,
        body.as_bytes(),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("pbs1 refused"), "{}", r.text());
    let nodes = t.request(Node::Pbs(2), "GET", "/v1/ha/nodes", &t.admin, b"");
    assert!(
        nodes
            .json()
            .as_array()
            .expect("nodes")
            .iter()
            .all(|n| n["epoch"] == 0),
        "{}",
        nodes.text()
    );
    assert_eq!(t.live(Node::Clone(0)).expect("clone0")["role"], "BACKUP");

    // 5. PBS 1 dead: the takeover is asked of PBS 2, which grants it.
    t.kill(Node::Pbs(1));
    let r = t.request(
        Node::Clone(0),
        "POST",
        "/v1/takeover",
        &t.admin,
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["epoch"], 1, "{}", r.text());
    assert!(t.wait_exit(Node::Clone(0)).success());
    let role: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(t.path().join("clone0/role.json")).expect("role.json"),
    )
    .expect("role JSON");
    assert_eq!(
        (role["role"].as_str(), role["epoch"].as_u64()),
        (Some("MAIN"), Some(1))
    );
    let nodes = t
        .request(Node::Pbs(2), "GET", "/v1/ha/nodes", &t.admin, b"")
        .json();
    let clone0 = nodes
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == "clone0"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (&clone0["role"], &clone0["epoch"]),
        (&"MAIN".into(), &1.into()),
        "{nodes}"
    );
}

#[test]
fn a_mirror_pbs_pushes_what_it_mirrors_to_the_clone() {
    // PBS 1 reaches the clone through a proxy that the test can cut.
    let dead = PortHold::new();
    let mut t = TwoPbs::new(Setup::new(Second::Mirror, 1));
    let proxy = Proxy::start(t.port(Node::Clone(0)));
    t.push_through(0, proxy.port);
    write_data(&t, "one\n");
    t.start_all();

    // Both PBS tell the clone of files/1 (PBS 2 once it mirrored it): imported once.
    let out = t.export_ok();
    assert!(out.contains("committed as files/1 by pbs1"), "{out}");
    t.wait_clone(0, "files/1");
    wait_for("pbs2 to mirror files/1", || {
        (t.generations(2) == ["files/1"]).then_some(())
    });
    t.wait_pushed(1, 0, "files/1");
    t.wait_pushed(2, 0, "files/1");
    assert_eq!(t.hook_runs(0), ["files/1"]);
    assert_clone_is_src(&t, 0, "files/1");

    // PBS 1 can no longer reach the clone: the mirror feeds it.
    proxy.target.store(dead.port, SeqCst);
    write_data(&t, "two\n");
    let out = t.export_ok();
    assert!(out.contains("committed as files/2 by pbs1"), "{out}");
    let st = t.wait_clone(0, "files/2");
    assert_eq!(st["last_valid"]["from"], "pbs2", "{st}");
    assert_clone_is_src(&t, 0, "files/2 through the mirror");
    assert_eq!(t.hook_runs(0), ["files/1", "files/2"]);
    t.wait_pushed(2, 0, "files/2");
    assert_eq!(t.records(1), t.records(2));

    // The clone is down while files/3 comes; then PBS 1 dies (SIGKILL). The mirror, when
    // it starts again, tells the clone of its newest generation (a mirrored source too).
    t.kill(Node::Clone(0));
    write_data(&t, "three\n");
    let out = t.export_ok();
    assert!(out.contains("committed as files/3 by pbs1"), "{out}");
    wait_for("pbs2 to fail to push files/3", || {
        let st = t.pbs_status(2);
        (st["importers"][0]["last_failure"]["generation"] == "files/3").then_some(())
    });
    t.kill(Node::Pbs(1));
    t.start(Node::Clone(0));
    t.kill(Node::Pbs(2));
    t.start(Node::Pbs(2));
    let st = t.wait_clone(0, "files/3");
    assert_eq!(st["last_valid"]["from"], "pbs2", "{st}");
    assert_clone_is_src(&t, 0, "files/3 from the restarted mirror");
    assert_eq!(t.hook_runs(0), ["files/1", "files/2", "files/3"]);
}

#[test]
fn only_listed_pbs_may_feed_or_promote_and_a_name_twice_is_refused() {
    let mut t = TwoPbs::new(Setup::new(Second::Source, 1));
    t.start(Node::Clone(0));
    let notify = br#"{"source":"files","seq":1,"tx":"x","epoch":0}"#;
    for (tok, who) in [(t.stranger.clone(), "pbs3"), (t.admin.clone(), "admin")] {
        let r = t.request(Node::Clone(0), "POST", "/v1/notify", &tok, notify);
        assert_eq!(r.status, 403, "{who}: {}", r.text());
        assert!(
            r.text().contains(&format!("peer {who} may not")) && r.text().contains("pbs1, pbs2"),
            "{}",
            r.text()
        );
        let r = t.request(
            Node::Clone(0),
            "POST",
            "/v1/ha/promote",
            &tok,
            br#"{"epoch":0}"#,
        );
        assert_eq!(r.status, 403, "{who}: {}", r.text());
    }
    assert!(t.hook_runs(0).is_empty());

    // A listed PBS that is down cannot confirm a newer epoch: 503, naming both.
    let r = t.request(
        Node::Clone(0),
        "POST",
        "/v1/notify",
        &t.push[1][0].clone(),
        br#"{"source":"files","seq":1,"tx":"x","epoch":3}"#,
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.text().contains("pbs1: ") && r.text().contains("pbs2: "),
        "{}",
        r.text()
    );

    let cfg = fs::read_to_string(t.config(Node::Clone(0))).expect("config");
    let bad = t.path().join("twice.toml");
    fs::write(&bad, cfg.replace("name = \"pbs2\"", "name = \"pbs1\"")).expect("config");
    let r = pullback_tests::Run::from(
        std::process::Command::new(pullback_tests::bin("importer"))
            .arg("--config")
            .arg(&bad)
            .arg("status")
            .output()
            .expect("importer status"),
    );
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(
        r.stderr.contains("two coordinators are named \"pbs1\"") && r.stderr.contains("twice.toml"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_pbs_whose_generation_of_that_name_is_another_one_is_refused() {
    let mut t = TwoPbs::new(Setup::new(Second::Source, 1));
    write_data(&t, "one\n");
    t.start(Node::Pbs(1));
    t.start(Node::Clone(0));
    t.start(Node::Exporter);
    let out = t.export_ok();
    assert!(out.contains("committed as files/1 by pbs1"), "{out}");
    t.wait_clone(0, "files/1");
    // PBS 2, down meanwhile, gets another files/1 of its own.
    let other = t.path().join("other");
    fs::create_dir_all(&other).expect("other");
    fs::write(other.join("data.txt"), "not the main's data\n").expect("other data");
    t.archive(2).ok(&[
        "ingest",
        "--source",
        "files",
        other.to_str().expect("utf-8"),
    ]);
    // At its start it tells the clone of its newest generation: refused, not taken.
    t.start(Node::Pbs(2));
    wait_for("pbs2 to record the refusal", || {
        let st = t.pbs_status(2);
        let why = st["importers"][0]["last_failure"]["detail"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        why.contains("number this source's generations differently")
            .then_some(why)
    });
    assert_eq!(t.hook_runs(0), ["files/1"]);
    assert_clone_is_src(&t, 0, "files/1 kept");
    let st = t.live(Node::Clone(0)).expect("clone0");
    assert_eq!(st["last_valid"]["from"], "pbs1", "{st}");
}
