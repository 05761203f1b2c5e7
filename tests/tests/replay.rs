//! Old generations cannot be passed off as new: a replayed notification of
//! an older outbox generation is refused by the PBS, and a clone refuses to
//! be fed by anyone but its PBS or to move back to an older generation.

use std::fs;

use pullback_tests::cluster::{http, wait_for, Cluster, Options, Who};
use pullback_tests::snapshot;

fn gens(c: &Cluster) -> Vec<String> {
    c.archive()
        .json(&["list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["generation"].as_str().unwrap().to_string())
        .collect()
}

fn two_generations() -> Cluster {
    let mut c = Cluster::new(Options::default());
    fs::write(c.src().join("data.txt"), "old\n").unwrap();
    c.start_all();
    c.cycle(1);
    fs::write(c.src().join("data.txt"), "new\n").unwrap();
    c.cycle(2);
    c
}

#[test]
fn a_replayed_notification_of_an_old_export_is_refused() {
    let c = two_generations();
    for i in 0..5 {
        let tx = format!("replay-{i}");
        let r = c.notify(&serde_json::json!(
            {"source": "files", "seq": 1, "tx": tx, "epoch": 0, "node": "exporter"}
        ));
        assert!(
            r.status == 202 || r.status == 409,
            "{}: {}",
            r.status,
            r.text()
        );
        if r.status == 202 {
            let st = wait_for(&format!("{tx} to end"), || {
                let t = c.pbs_tx(&tx)?;
                (t["state"] == "failed" || t["state"] == "committed").then_some(t)
            });
            assert_eq!(st["state"], "failed", "{st}");
            let err = st["error"].as_str().unwrap_or_default();
            assert!(err.contains("replayed"), "{err}");
        }
    }
    assert_eq!(gens(&c), ["files/1", "files/2"]);
    assert_eq!(
        fs::read_to_string(c.restore_dir(0).join("data.txt")).unwrap(),
        "new\n"
    );
}

#[test]
fn a_clone_is_fed_only_by_its_pbs_and_never_moves_back() {
    let c = two_generations();
    let before = snapshot(&c.restore_dir(0));
    let port = c.port(Who::Importer(0));
    let notify1 = br#"{"source":"files","seq":1,"tx":"again","epoch":0}"#;
    let json = ("Content-Type", "application/json");

    // The clone's admin token cannot feed it.
    let admin = format!("token {}", c.tokens.admin);
    let r = http(
        port,
        "POST",
        "/v1/notify",
        &[("Authorization", &admin), json],
        notify1,
    )
    .unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("only its PBS"), "{}", r.text());
    // The PBS's own token cannot move it back either.
    let push = format!("token {}", c.tokens.push[0]);
    let r = http(
        port,
        "POST",
        "/v1/notify",
        &[("Authorization", &push), json],
        notify1,
    )
    .unwrap();
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("never moves back"), "{}", r.text());
    // The push routes of before are gone: nothing can be sent to a clone, only told.
    let r = http(
        port,
        "POST",
        "/v1/receive/files/3/offer",
        &[("Authorization", &push)],
        b"x",
    )
    .unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(snapshot(&c.restore_dir(0)), before);
    let st = c.importer_status(0);
    assert_eq!(st["last_valid"]["generation"], "files/2", "{st}");
}

#[test]
fn a_clone_left_behind_by_the_pbs_is_reported_and_caught_up_after_a_restart() {
    let mut c = Cluster::new(Options {
        receive_timeout_secs: Some(2),
        ..Options::default()
    });
    fs::write(c.src().join("data.txt"), "old\n").unwrap();
    c.start_all();
    c.cycle(1);

    // A PBS that stops answering in the middle of a clone's pull (hung, cut off): the
    // clone says "importing" only until its timeout.
    fs::write(c.src().join("data.txt"), "new\n").unwrap();
    c.kill(Who::Importer(0));
    let r = c.export_ok(); // the PBS commits files/2; its push to the clone fails
    assert!(r.stdout.contains("committed as files/2"), "{}", r.stdout);
    wait_for("the PBS to give up pushing files/2", || {
        let (_, pst) = c.pbs_status();
        (pst["importers"][0]["last_failure"]["generation"] == "files/2").then_some(())
    });
    c.start(Who::Importer(0));
    let port = c.port(Who::Importer(0));
    let pbs_pid = c.pid(Who::Pbs).expect("the PBS runs").to_string();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pbs_pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pbs_pid}");
    };
    signal("-STOP");
    let push = format!("token {}", c.tokens.push[0]);
    let told = std::thread::spawn(move || {
        http(
            port,
            "POST",
            "/v1/notify",
            &[
                ("Authorization", &push),
                ("Content-Type", "application/json"),
            ],
            br#"{"source":"files","seq":2,"tx":"t2","epoch":0}"#,
        )
        .map(|r| (r.status, r.text()))
    });
    wait_for("the clone to pull files/2", || {
        (c.importer_live(0)?["importing"] == "files/2").then_some(())
    });
    let (status, said) = told.join().expect("the notify thread").expect("an answer");
    signal("-CONT");
    assert_eq!(status, 200, "{said}");
    assert!(said.contains("\"ok\":false"), "{said}");
    let st = c.importer_live(0).unwrap();
    assert!(st["importing"].is_null(), "{st}");
    let why = st["last_failure"]["reason"].as_str().unwrap_or_default();
    assert!(why.contains("pulling files/2: the PBS"), "{st}");
    assert_eq!(st["last_valid"]["generation"], "files/1", "{st}");

    // `pbs status` says the clone is behind, and exits 1 (its last push failed).
    let (code, pst) = c.pbs_status();
    assert_eq!(code, 1, "{pst}");
    assert_eq!(pst["importers"][0]["behind"], "files/2", "{pst}");

    // A restarted PBS brings it to the newest generation without a new export.
    c.kill(Who::Pbs);
    c.start(Who::Pbs);
    c.wait_imported("files/2");
    assert_eq!(
        fs::read_to_string(c.restore_dir(0).join("data.txt")).unwrap(),
        "new\n"
    );
    let (code, pst) = c.pbs_status();
    assert_eq!(code, 0, "{pst}");
    assert!(pst["importers"][0]["behind"].is_null(), "{pst}");
}
