//! A clone killed (SIGKILL) at random moments while it pulls, stages, swaps in and imports a
//! generation: once it is back, its restore folder holds exactly the previous generation or
//! the new one, never a mix, and the PBS brings it to the newest one.

use std::thread;
use std::time::Duration;

use pullback_tests::cluster::{wait_for, Cluster, Options, Who};
use pullback_tests::{snapshot, write, Rng};

#[test]
fn a_clone_killed_at_random_moments_keeps_a_whole_generation() {
    let mut c = Cluster::new(Options::default());
    let mut rng = Rng::new(21);
    let big = c.src().join("big.bin");
    let mut data = rng.bytes(24 << 20);
    write(&big, &data);
    write(&c.src().join("notes.txt"), &rng.text(50_000));
    c.start_all();
    c.cycle(1);
    let mut before = snapshot(&c.restore_dir(0));
    let mut killed_mid_import = 0;
    for round in 2..=7u64 {
        // Scattered edits, a new file, a removed one: a delta and whole new chunks.
        for _ in 0..20 {
            let at = rng.below(data.len() as u64) as usize;
            data[at] = data[at].wrapping_add(1);
        }
        write(&big, &data);
        write(
            &c.src().join(format!("new-{round}.txt")),
            &rng.text(200_000),
        );
        let _ = std::fs::remove_file(c.src().join(format!("new-{}.txt", round - 2)));
        let gen = format!("files/{round}");
        let after = snapshot(&c.src());
        let r = c.export_ok();
        assert!(
            r.stdout.contains(&format!("committed as {gen}")),
            "{}",
            r.stdout
        );
        // The PBS now tells the clone, which pulls and imports: kill it somewhere in there.
        thread::sleep(Duration::from_millis(rng.below(600)));
        let importing = c
            .importer_live(0)
            .is_some_and(|s| s["importing"].as_str() == Some(gen.as_str()));
        c.kill(Who::Importer(0));
        if importing {
            killed_mid_import += 1;
        }
        c.start(Who::Importer(0));
        // Back up (a crashed import was rolled back at start): one whole generation.
        let now = snapshot(&c.restore_dir(0));
        assert!(
            now == before || now == after,
            "round {round}: the restore folder is neither the previous generation nor {gen}"
        );
        // A restarted PBS tells every clone of the newest generation (its push job may
        // have given up on the dead clone).
        c.kill(Who::Pbs);
        c.start(Who::Pbs);
        c.wait_imported(&gen);
        assert_eq!(snapshot(&c.restore_dir(0)), after, "round {round}: {gen}");
        let st = wait_for("the clone's status", || c.importer_live(0));
        assert!(st["importing"].is_null(), "{st}");
        before = after;
    }
    eprintln!("killed in the middle of an import {killed_mid_import} times out of 6");
    let v = c.archive().run(&["verify", "--full", "--json"]);
    assert_eq!(v.code(), Some(0), "{v:?}");
}
