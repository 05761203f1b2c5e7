//! gc is safe while an ingest runs: it waits for it (or, with --no-wait,
//! refuses at once), and never removes what the running ingest writes.

use std::process::Stdio;

use pullback_tests::{assert_same_tree, restore_snapshot, snapshot, write, Pbs, Rng};

#[test]
fn gc_waits_for_a_running_ingest_and_loses_nothing() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let mut rng = Rng::new(7);
    write(&src.join("small.txt"), &rng.text(100_000));
    let pbs = Pbs::new(t.path().join("archive"));
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
    // While it runs, gc --no-wait refuses with "busy".
    let mut busy = 0;
    while ingest.try_wait().unwrap().is_none() {
        let r = pbs.run(&["gc", "--no-wait"]);
        if !r.status.success() {
            assert!(
                r.stderr.contains("busy"),
                "gc failed otherwise: {}",
                r.stderr
            );
            busy += 1;
        }
    }
    // A waiting gc started while a second ingest runs finishes after it.
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
    assert!(busy >= 1, "ingest finished before gc could see it running");
    assert!(gc.stdout.contains("gc done"), "{}", gc.stdout);

    assert_eq!(pbs.generations(), ["db/1", "db/2", "db/3"]);
    pbs.ok(&["verify", "--full"]);
    for (g, want) in [("db/1", &v1), ("db/2", &v2), ("db/3", &v3)] {
        let got = restore_snapshot(&pbs, g, t.path());
        assert_same_tree(want, &got, g);
    }
}
