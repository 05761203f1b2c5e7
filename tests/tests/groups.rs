//! Several sources on one PBS, each served by its own group of nodes with its own epoch and
//! main: both mains export at the same time, each group's clones receive only their
//! source, and a takeover in one group leaves the other's epoch, main and exports alone.

use std::fs;
use std::thread;

use pullback_tests::cluster::wait_for;
use pullback_tests::group::Group;
use pullback_tests::ha::{password_hash, PASSWORD};
use pullback_tests::snapshot;

fn write(g: &Group, node: &str, text: &str) {
    fs::write(g.data(node).join("data.txt"), format!("{text}\n")).expect("data.txt");
}

/// `exporter run` on two nodes at the same time; each must commit its generation.
fn export_both(g: &Group, runs: [(&str, &str); 2]) {
    thread::scope(|s| {
        let handles = runs.map(|(n, gen)| (n, gen, s.spawn(move || g.export(n))));
        for (n, gen, h) in handles {
            let r = h.join().expect("export thread");
            assert!(
                r.status.success() && r.stdout.contains(&format!("committed as {gen}")),
                "{n}: {}{}",
                r.stdout,
                r.stderr
            );
        }
    });
}

#[test]
fn each_source_has_its_own_group_epoch_and_main() {
    let hash = password_hash(PASSWORD);
    let (hooks, env) = Group::files_hooks();
    let mut g = Group::sources(
        &[("files", &["A", "B"]), ("books", &["X", "Y"])],
        &[],
        &hash,
        hooks,
        env,
    );
    write(&g, "A", "files 1 on A");
    write(&g, "X", "books 1 on X");
    g.start_pbs();
    for n in ["A", "B", "X", "Y"] {
        g.start(n);
    }
    // Two mains at once, one per group, both at epoch 0.
    g.wait_main("A", 0);
    g.wait_main("X", 0);
    for n in ["B", "Y"] {
        wait_for(&format!("{n}'s importer"), || g.importer_status(n));
    }

    // Both export at the same time; each group's clone gets its own source only.
    export_both(&g, [("A", "files/1"), ("X", "books/1")]);
    g.wait_verified("B", "files/1");
    g.wait_verified("Y", "books/1");
    assert_eq!(snapshot(&g.data("B")), snapshot(&g.data("A")));
    assert_eq!(snapshot(&g.data("Y")), snapshot(&g.data("X")));

    // A takeover in the files group: its epoch moves, the books group's does not.
    g.kill("A");
    let r = g.takeover("B", PASSWORD);
    assert_eq!(r.status, 200, "{}", r.text());
    g.wait_main("B", 1);
    let x = g.exporter_status("X").expect("X answers");
    assert_eq!(
        (x["role"].as_str(), x["epoch"].as_u64()),
        (Some("MAIN"), Some(0)),
        "{x}"
    );

    // Both groups go on, concurrently: B at epoch 1, X at epoch 0.
    write(&g, "B", "files 2 on B");
    write(&g, "X", "books 2 on X");
    export_both(&g, [("B", "files/2"), ("X", "books/2")]);
    g.wait_verified("Y", "books/2");
    assert_eq!(snapshot(&g.data("Y")), snapshot(&g.data("X")));
    let mut gens = g.generations();
    gens.sort();
    assert_eq!(
        gens,
        [
            ("books/1", 0),
            ("books/2", 0),
            ("files/1", 0),
            ("files/2", 1)
        ]
        .map(|(n, e)| (n.to_string(), e))
    );
    let st = g.pbs(&["status", "--json"]).json();
    let groups: Vec<_> = st["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|x| (x["source"].clone(), x["epoch"].clone(), x["main"].clone()))
        .collect();
    assert_eq!(
        groups,
        [
            (
                serde_json::json!("files"),
                serde_json::json!(1),
                serde_json::json!("B")
            ),
            (
                serde_json::json!("books"),
                serde_json::json!(0),
                serde_json::json!("X")
            ),
        ],
        "{st}"
    );
}
