//! One history across any number of takeovers: three nodes A, B, C of one source, each
//! with an exporter and an importer config of the same name and one role file, each run
//! by the real `pullback-node` launcher under a restarting supervisor, and one PBS.
//!
//! cycle on A → kill A → take over on B → B exports twice into the same source (epoch 1)
//! → C (a spare) receives and verifies → rejoin A as a clone → switchover to A → A
//! exports into the same source (epoch 2), B and C receive. At every step every clone's
//! data equals the main's, a fenced node's notification is refused, and the archive holds
//! one source with one increasing sequence. Once with the `files` hooks, once with the
//! postgres hooks on the real server (three databases standing for the three nodes).

use std::fs;
use std::sync::Arc;

use pullback_tests::cluster::wait_for;
use pullback_tests::db::{hooks_dir, unique, Kind};
use pullback_tests::group::{Group, NodeEnv};
use pullback_tests::ha::{password_hash, PASSWORD};
use pullback_tests::snapshot;

/// Writes the `n`th change on a node (the main).
type WriteFn = Box<dyn Fn(&Group, &str, u32)>;
/// A node's data, comparable between nodes.
type DataFn = Box<dyn Fn(&Group, &str) -> String>;

/// How one variant writes the service's data on its main and compares two nodes' data.
struct Service {
    write: WriteFn,
    data: DataFn,
}

/// Every clone in `clones` holds exactly the main's data.
#[track_caller]
fn same_data(svc: &Service, g: &Group, main: &str, clones: &[&str]) {
    let want = (svc.data)(g, main);
    for c in clones {
        assert_eq!((svc.data)(g, c), want, "{c}'s data differs from {main}'s");
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

/// The whole chain on group `g` (nodes A, B, C; C a spare), nothing started yet.
fn chain(mut g: Group, svc: &Service) {
    (svc.write)(&g, "A", 1);
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
    same_data(svc, &g, "A", &["B"]);
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
    same_data(svc, &g, "B", &["C"]);
    // The fenced old main cannot publish any more, at its epoch or at the new one.
    for epoch in [0, 1] {
        let r = g.notify_as("A", 2, epoch);
        assert_eq!(r.status, 409, "A notified at epoch {epoch}: {}", r.text());
    }

    // B exports into the same source: the sequence goes on at epoch 1; C follows.
    for (n, gen) in [(2, "files/2"), (3, "files/3")] {
        (svc.write)(&g, "B", n);
        export_ok(&g, "B", gen);
        g.wait_verified("C", gen);
        same_data(svc, &g, "B", &["C"]);
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
    g.wait_status("A", "Follower");
    same_data(svc, &g, "B", &["A", "C"]);

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
    (svc.write)(&g, "A", 5);
    export_ok(&g, "A", "files/5");
    g.wait_verified("B", "files/5");
    g.wait_verified("C", "files/5");
    same_data(svc, &g, "A", &["B", "C"]);
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

#[test]
fn one_history_across_a_takeover_a_rejoin_and_a_switchover_back() {
    let hash = password_hash(PASSWORD);
    let g = Group::new(&["A", "B", "C"], &["C"], &hash);
    let svc = Service {
        write: Box::new(|g, node, n| {
            let d = g.data(node);
            fs::write(
                d.join("data.txt"),
                format!("change {n}, written on {node}\n"),
            )
            .expect("data.txt");
            fs::create_dir_all(d.join("sub")).expect("sub");
            fs::write(
                d.join("sub/table.csv"),
                format!("{n},{node}\n").repeat(2000),
            )
            .expect("table.csv");
        }),
        data: Box::new(|g, node| format!("{:?}", snapshot(&g.data(node)))),
    };
    chain(g, &svc);
}

/// Drops the test's databases, also when the test fails.
struct Databases(Vec<String>);

impl Drop for Databases {
    fn drop(&mut self) {
        for d in &self.0 {
            Kind::Postgres.drop_db(d);
        }
    }
}

#[test]
fn the_same_chain_with_the_postgres_hooks_on_the_real_server() {
    let pg = Kind::Postgres;
    pg.ensure_running();
    let db_of = |node: &str| unique(&format!("pb_history_{}", node.to_lowercase()));
    let dbs = Databases(["A", "B", "C"].iter().map(|n| db_of(n)).collect());
    for d in &dbs.0 {
        pg.drop_db(d);
    }
    pg.create_db(&db_of("A"));
    pg.sql(
        &db_of("A"),
        "CREATE TABLE orders (id int PRIMARY KEY, item text NOT NULL, node text NOT NULL);
         CREATE SEQUENCE receipts;
         CREATE VIEW per_node AS SELECT node, count(*) FROM orders GROUP BY node;",
    );
    let env: NodeEnv = Arc::new(move |node, _| {
        let mut v = Kind::Postgres.env();
        let db = db_of(node);
        v.push(("PULLBACK_PG_DATABASE".into(), db.clone()));
        v.push(("PULLBACK_PG_CLONE_DATABASE".into(), db));
        v
    });
    let hash = password_hash(PASSWORD);
    let g = Group::with_hooks(&["A", "B", "C"], &["C"], &hash, hooks_dir("postgres"), env);
    let svc = Service {
        // The main's database takes writes (a clone's is read-only until promoted).
        write: Box::new(move |_, node, n| {
            let rows: Vec<String> = (0..200)
                .map(|i| format!("({}, 'item {i} of change {n}', '{node}')", n * 1000 + i))
                .collect();
            pg.sql(
                &db_of(node),
                &format!(
                    "INSERT INTO orders VALUES {}; SELECT nextval('receipts');",
                    rows.join(", ")
                ),
            );
        }),
        data: Box::new(move |_, node| {
            let db = db_of(node);
            format!(
                "{:?} per_node={} receipts={}",
                pg.tables(&db),
                pg.value(
                    &db,
                    "SELECT string_agg(node || ':' || count, ',' ORDER BY node) FROM per_node"
                ),
                pg.value(&db, "SELECT last_value FROM receipts")
            )
        }),
    };
    chain(g, &svc);
    drop(dbs);
}
