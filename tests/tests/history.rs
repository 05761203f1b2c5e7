//! One history across any number of takeovers: three nodes A, B, C of one source, each
//! with an exporter and an importer config of the same name and one role file, each run
//! by the real `pullback-node` launcher under a restarting supervisor, and one PBS.
//!
//! cycle on A → kill A → take over on B → B exports twice into the same source (epoch 1)
//! → C (a spare) receives and verifies → rejoin A as a clone → switchover to A → A
//! exports into the same source (epoch 2), B and C receive. At every step every clone's
//! data equals the main's, a fenced node's notification is refused, and the archive holds
//! one source with one increasing sequence.

use std::fs;

use pullback_tests::cluster::wait_for;
use pullback_tests::group::Group;
use pullback_tests::ha::{password_hash, PASSWORD};
use pullback_tests::snapshot;

fn write_data(g: &Group, node: &str, what: &str) {
    let d = g.data(node);
    fs::write(d.join("data.txt"), format!("{what}\n")).expect("data.txt");
    fs::create_dir_all(d.join("sub")).expect("sub");
    fs::write(d.join("sub/table.csv"), what.repeat(2000)).expect("table.csv");
}

/// Every clone in `clones` holds exactly the main's data.
#[track_caller]
fn same_data(g: &Group, main: &str, clones: &[&str]) {
    let want = snapshot(&g.data(main));
    for c in clones {
        assert_eq!(
            snapshot(&g.data(c)),
            want,
            "{c}'s data differs from {main}'s"
        );
    }
}

#[track_caller]
fn export_ok(g: &Group, node: &str, gen: &str) {
    let r = g.export(node);
    assert!(
        r.status.success() && r.stdout.contains(&format!("committed as {gen}")),
        "exporter run on {node}: {}{}",
        r.stdout,
        r.stderr
    );
}

fn gens(list: &[(&str, u64)]) -> Vec<(String, u64)> {
    list.iter().map(|(g, e)| (g.to_string(), *e)).collect()
}

#[test]
fn one_history_across_a_takeover_a_rejoin_and_a_switchover_back() {
    let hash = password_hash(PASSWORD);
    let mut g = Group::new(&["A", "B", "C"], &["C"], &hash);
    write_data(&g, "A", "generation 1, written on A");
    g.start_pbs();
    for n in ["A", "B", "C"] {
        g.start(n);
    }
    g.wait_main("A", 0);
    for n in ["B", "C"] {
        wait_for(&format!("{n}'s importer"), || g.importer_status(n));
    }

    // A cycle on A; B receives it, C is a spare (nothing yet).
    export_ok(&g, "A", "files/1");
    g.wait_verified("B", "files/1");
    same_data(&g, "A", &["B"]);
    let c = g.importer_status("C").expect("C answers");
    assert!(
        c["last_valid"].is_null(),
        "the spare received something: {c}"
    );

    // A dies; B takes over (its importer promotes and exits, its launcher starts its
    // exporter, which the coordinator confirms as MAIN at epoch 1).
    g.kill("A");
    let r = g.takeover("B", PASSWORD);
    assert_eq!(r.status, 200, "takeover on B: {}", r.text());
    g.wait_main("B", 1);
    assert_eq!(g.role_file("B").expect("B's role file")["role"], "MAIN");
    // The spare is activated and receives the newest generation.
    g.wait_verified("C", "files/1");
    same_data(&g, "B", &["C"]);
    // The fenced old main cannot publish any more, at its epoch or at the new one.
    for epoch in [0, 1] {
        let r = g.notify_as("A", 2, epoch);
        assert_eq!(r.status, 409, "A notified at epoch {epoch}: {}", r.text());
    }

    // B exports into the same source: the sequence goes on at epoch 1; C follows.
    for (n, gen) in [(2, "files/2"), (3, "files/3")] {
        write_data(&g, "B", &format!("generation {n}, written on B"));
        export_ok(&g, "B", gen);
        g.wait_verified("C", gen);
        same_data(&g, "B", &["C"]);
    }
    assert_eq!(
        g.generations(),
        gens(&[("files/1", 0), ("files/2", 1), ("files/3", 1)])
    );

    // A comes back as a clone of the same group.
    let r = g.wipe_for_rejoin("A");
    assert!(
        r.status.success(),
        "importer rejoin: {}{}",
        r.stdout,
        r.stderr
    );
    g.start("A");
    wait_for("A's importer", || g.importer_status("A"));
    let r = g.pbs(&["rejoin", "A"]);
    assert!(r.status.success(), "pbs rejoin A: {}{}", r.stdout, r.stderr);
    g.wait_verified("A", "files/3");
    same_data(&g, "B", &["A", "C"]);

    // Switch over back to A: B's final export, then A is MAIN at epoch 2 and B a clone.
    let r = g.pbs(&["switchover", "--to", "A"]);
    assert!(r.status.success(), "switchover: {}{}", r.stdout, r.stderr);
    let v = r.json();
    assert_eq!(
        (
            v["main"].as_str(),
            v["old_main"].as_str(),
            v["epoch"].as_u64()
        ),
        (Some("A"), Some("B"), Some(2)),
        "{v}"
    );
    assert_eq!(v["generation"], "files/4", "{v}");
    g.wait_main("A", 2);
    wait_for("B's importer (B stepped down to a clone)", || {
        g.importer_status("B")
    });
    assert_eq!(
        g.role_file("B").expect("B's role file"),
        serde_json::json!({"role": "BACKUP", "epoch": 1})
    );
    g.wait_verified("C", "files/4");

    // A exports into the same source at epoch 2; B and C receive.
    write_data(&g, "A", "generation 5, written on A again");
    export_ok(&g, "A", "files/5");
    g.wait_verified("B", "files/5");
    g.wait_verified("C", "files/5");
    same_data(&g, "A", &["B", "C"]);
    assert_eq!(
        g.generations(),
        gens(&[
            ("files/1", 0),
            ("files/2", 1),
            ("files/3", 1),
            ("files/4", 1),
            ("files/5", 2)
        ])
    );
    // B is no main any more, and nobody may claim an epoch the coordinator never granted.
    let r = g.notify_as("B", 9, 1);
    assert_eq!(r.status, 409, "{}", r.text());
    let r = g.notify_as("A", 9, 3);
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(g.generations().len(), 5);
}
