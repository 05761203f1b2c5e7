//! Peer boundaries of the coordinator and the takeover, end to end with the real daemons:
//! a malicious peer (a raw HTTP client holding a stolen token) can do nothing beyond its
//! role. Epochs from the wire must equal the coordinator's; a promote needs the
//! coordinator's grant at its epoch; a takeover at the coordinator needs the password;
//! the takeover page refuses cross-site posts and a burst of wrong passwords cannot lock
//! the operator out or balloon the clone.

use std::fs;

use pullback_tests::cluster::{Cluster, Options, Who};
use pullback_tests::ha::{node_row, request};
use pullback_tests::{write, Pbs};
use serde_json::json;

fn notify(c: &Cluster, seq: u64, epoch: u64, tx: &str) -> (u16, String) {
    let body = json!({"source": "files", "seq": seq, "tx": tx, "epoch": epoch}).to_string();
    let r = request(
        c.port(Who::Pbs),
        "POST",
        "/v1/notify",
        Some(&c.tokens.notify),
        body.as_bytes(),
    );
    (r.status, r.text())
}

/// The record bytes of `files/seq` made at `epoch` in a scratch archive (what a hostile
/// PBS-side peer could send).
fn record_at_epoch(dir: &std::path::Path, seq: u64, epoch: u64) -> Vec<u8> {
    let src = dir.join("evil-src");
    let pbs = Pbs::new(dir.join("evil-archive"));
    for n in 1..=seq {
        write(&src.join("evil.txt"), format!("planted {n}\n").as_bytes());
        pbs.ok(&[
            "ingest",
            "--source",
            "files",
            "--epoch",
            &epoch.to_string(),
            src.to_str().expect("utf-8 path"),
        ]);
    }
    fs::read(
        dir.join("evil-archive/gens/files")
            .join(format!("{seq:020}.gen")),
    )
    .expect("the scratch record")
}

// ---------------------------------------------------------------- epochs (issue 10)

#[test]
fn an_epoch_from_the_wire_other_than_the_coordinators_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
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
    assert_eq!((n.role.as_str(), n.status.as_str(), n.epoch), ("MAIN", "Leader", 0));

    // The legitimate main is not fenced: its next export is committed at epoch 0.
    write(&c.src().join("data.txt"), b"row 1\nrow 2\n");
    c.cycle(2);
    assert_eq!(
        c.role_file(Who::Exporter).expect("role file")["role"],
        "MAIN"
    );
    assert_eq!(node_row(&c, "exporter").status, "Leader");

    // The PBS push token offering a clone a record from an epoch the coordinator never
    // reached: refused before anything is received; the clone keeps its epoch.
    let rec = record_at_epoch(dir.path(), 3, u64::MAX);
    let r = request(
        c.port(Who::Importer(0)),
        "POST",
        "/v1/receive/files/3/offer",
        Some(&c.tokens.push[0]),
        &rec,
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("ahead of the coordinator"), "{}", r.text());
    let st = c.importer_live(0).expect("the clone answers");
    assert_eq!(st["epoch"], 0, "{st}");
    assert!(st["importing"].is_null(), "{st}");
    let r = request(
        c.port(Who::Importer(0)),
        "POST",
        "/v1/receive/files/3/commit",
        Some(&c.tokens.push[0]),
        b"",
    );
    assert_eq!(r.status, 404, "a session was opened: {}", r.text());

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
    let rf = c.role_file(Who::Importer(0)).expect("role file");
    assert_eq!((rf["role"].as_str(), rf["epoch"].as_u64()), (Some("MAIN"), Some(1)));
    // The promotion was confirmed: nothing pending at the coordinator.
    let (_, st) = c.pbs_status();
    assert!(st["pending_promotion"].is_null(), "{st}");
}
