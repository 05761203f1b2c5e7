//! gc, prune and verify run while an ingest goes on (none of them waits for
//! it), and never remove what the running ingest reuses or writes.

use std::path::Path;
use std::process::Stdio;

use pullback_tests::garage::Garage;
use pullback_tests::{assert_same_tree, restore_snapshot, snapshot, write, Pbs, Rng};

#[test]
fn gc_runs_while_an_ingest_runs_and_loses_nothing() {
    let t = tempfile::tempdir().unwrap();
    let pbs = Pbs::new(t.path().join("archive"));
    gc_while_ingesting(t.path(), &pbs);
}

/// The same with the archive in a real S3 server (Garage): gc deletes pack objects (and
/// their local copies) while the ingest puts new ones.
#[test]
fn gc_runs_while_an_ingest_runs_on_object_storage_and_loses_nothing() {
    let t = tempfile::tempdir().unwrap();
    let (_garage, pbs) = Garage::with_pbs(t.path(), "gc");
    gc_while_ingesting(t.path(), &pbs);
}

fn gc_while_ingesting(dir: &Path, pbs: &Pbs) {
    let src = dir.join("src");
    let mut rng = Rng::new(7);
    write(&src.join("small.txt"), &rng.text(100_000));
    pbs.ok(&["init"]);
    pbs.ok(&["ingest", "--source", "db", src.to_str().unwrap()]);
    let v1 = snapshot(&src);
    // Make generation 1 garbage-collectable once generation 2 exists.
    write(&src.join("small.txt"), &rng.text(100_000));
    write(&src.join("big.bin"), &rng.bytes(80 << 20));
    let v2 = snapshot(&src);

    let mut ingest = pbs
        .command(&["ingest", "--source", "db", src.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // While it runs, gc --no-wait runs too (only another gc makes it busy).
    let mut during = 0;
    while ingest.try_wait().unwrap().is_none() {
        pbs.ok(&["gc", "--no-wait"]);
        if ingest.try_wait().unwrap().is_none() {
            during += 1;
        }
    }
    // A gc started while a second ingest runs does not break it either.
    write(&src.join("small.txt"), &rng.text(100_000));
    let v3 = snapshot(&src);
    let mut ingest2 = pbs
        .command(&["ingest", "--source", "db", src.to_str().unwrap()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let gc = pbs.ok(&["gc"]);
    assert!(ingest.wait().unwrap().success());
    assert!(ingest2.wait().unwrap().success());
    assert!(during >= 1, "no gc finished while the ingest ran");
    assert!(gc.stdout.contains("gc done"), "{}", gc.stdout);

    assert_eq!(pbs.generations(), ["db/1", "db/2", "db/3"]);
    pbs.ok(&["verify", "--full"]);
    for (g, want) in [("db/1", &v1), ("db/2", &v2), ("db/3", &v3)] {
        let got = restore_snapshot(pbs, g, dir);
        assert_same_tree(want, &got, g);
    }
}

/// Issue 8, test (b): `verify --full` and a prune + gc, each its own process,
/// run during a 300 MB ingest into the same archive (none waits for it). The
/// ingest commits, every remaining generation restores byte for byte, and
/// verify is clean throughout. The new generation also holds a file equal to
/// one of a generation the prune removes: its blobs are dead for gc, but the
/// ingest reuses them (pinned), or stores them again if gc was first.
#[test]
fn verify_and_prune_gc_run_during_a_300_mb_ingest_and_lose_nothing() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("db");
    let old = t.path().join("old");
    let mut rng = Rng::new(8);
    let pbs = Pbs::new(t.path().join("archive"));
    pbs.ok(&["init"]);
    let ingest = |source: &str, dir: &Path| {
        pbs.ok(&["ingest", "--source", source, dir.to_str().unwrap()]);
    };
    let reused = rng.bytes(8 << 20);
    write(&old.join("x.bin"), &reused);
    ingest("old", &old);
    write(&old.join("x.bin"), &rng.bytes(4 << 20));
    ingest("old", &old);
    let old2 = snapshot(&old);
    write(&src.join("notes.txt"), &rng.text(200_000));
    write(&src.join("base.bin"), &rng.bytes(16 << 20));
    ingest("db", &src);
    write(&src.join("base.bin"), &rng.bytes(16 << 20));
    ingest("db", &src);
    let db2 = snapshot(&src);

    // db/3: 300 MB of new data, plus a copy of old/1's file.
    write(&src.join("a-reused.bin"), &reused);
    for i in 0..3 {
        write(&src.join(format!("part-{i}.bin")), &rng.bytes(100 << 20));
    }
    let db3 = snapshot(&src);
    let mut big = pbs
        .command(&["ingest", "--source", "db", src.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Prune once (old/1 and db/1 go; db/2 is db's newest until db/3 commits),
    // then gc and verify --full over and over while the ingest runs.
    let prune = ["prune", "--keep-last", "1"];
    let prune = pbs.command(&prune).output().unwrap();
    assert!(prune.status.success(), "{prune:?}");
    let (mut gcs, mut verifies) = (0, 0);
    while big.try_wait().unwrap().is_none() {
        let gc = pbs.ok(&["gc"]);
        assert!(gc.stdout.contains("gc done"), "{}", gc.stdout);
        if big.try_wait().unwrap().is_none() {
            gcs += 1;
        }
        let v = pbs.run(&["verify", "--full"]);
        assert!(
            v.status.success(),
            "verify during the ingest: {}{}",
            v.stdout,
            v.stderr
        );
        if big.try_wait().unwrap().is_none() {
            verifies += 1;
        }
    }
    let out = big.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(gcs >= 1, "no gc finished while the ingest ran");
    assert!(verifies >= 1, "no verify finished while the ingest ran");

    let gens = pbs.generations();
    assert!(gens.contains(&"db/3".to_string()), "{gens:?}");
    assert!(gens.contains(&"old/2".to_string()), "{gens:?}");
    assert!(!gens.contains(&"old/1".to_string()), "{gens:?}");
    assert!(!gens.contains(&"db/1".to_string()), "{gens:?}");
    pbs.ok(&["gc"]);
    pbs.ok(&["verify", "--full"]);
    for g in &gens {
        let want = match g.as_str() {
            "db/2" => &db2,
            "db/3" => &db3,
            "old/2" => &old2,
            other => panic!("unexpected generation {other}"),
        };
        let got = restore_snapshot(&pbs, g, t.path());
        assert_same_tree(want, &got, g);
    }
    assert!(
        std::fs::read_dir(pbs.archive.join("pins")).map_or(true, |d| d.count() == 0),
        "pins left behind"
    );
}
