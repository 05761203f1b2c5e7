//! A slow clone holds up nobody: while one clone's import hook is held, the
//! PBS goes on pulling new generations and the other clone gets each of
//! them; the slow clone then catches up with the newest in one step.

use std::fs;

use pullback_tests::cluster::{wait_for, Cluster, HeldImport, Options, Who};

#[test]
fn a_slow_clone_delays_neither_the_next_pull_nor_the_other_clone() {
    let dir = tempfile::tempdir().unwrap();
    let held = HeldImport::new(dir.path(), "import");
    let mut c = Cluster::new(Options {
        importers: 2,
        import_hooks: vec![Some(held.hook.clone()), None],
        ..Options::default()
    });
    fs::write(c.src().join("data.txt"), "1\n").unwrap();
    c.start_all();
    c.cycle(1);

    // clone0's next import hangs in its hook (as a 30 s import would).
    fs::write(&held.block, "").unwrap();
    for seq in 2..=4u64 {
        fs::write(c.src().join("data.txt"), format!("{seq}\n")).unwrap();
        let r = c.export_ok();
        assert!(
            r.stdout.contains(&format!("committed as files/{seq}")),
            "{}",
            r.stdout
        );
        // clone1 gets each generation while clone0 is still held.
        wait_for(&format!("clone1 to verify files/{seq}"), || {
            let s = c.importer_live(1)?;
            (s["last_valid"]["generation"] == format!("files/{seq}")
                && s["last_valid"]["verified"] == true)
                .then_some(())
        });
        assert!(held.started.exists());
        let s0 = c.importer_live(0).unwrap();
        assert_eq!(
            s0["importing"], "files/2",
            "clone0 is still on its first held import: {s0}"
        );
        assert_eq!(s0["last_valid"]["generation"], "files/1", "{s0}");
    }
    // Order, from the PBS's own records: files/3 and files/4 were committed
    // and clone1 verified files/4 before clone0 finished anything after files/1.
    let (_, pst) = c.pbs_status();
    let clone0 = &pst["importers"][0];
    assert_eq!(clone0["last_good"]["generation"], "files/1", "{pst}");
    assert_eq!(
        pst["importers"][1]["last_good"]["generation"], "files/4",
        "{pst}"
    );

    // Released, clone0 finishes files/2 and then goes straight to the newest
    // (files/3, queued while it was held, was replaced by files/4).
    fs::remove_file(&held.block).unwrap();
    fs::write(&held.release, "").unwrap();
    c.wait_imported("files/4");
    assert_eq!(
        fs::read_to_string(c.restore_dir(0).join("data.txt")).unwrap(),
        "4\n"
    );
    let log = fs::read_to_string(c.log(Who::Importer(0))).unwrap_or_default();
    assert!(
        !log.contains("generation=files/3"),
        "files/3 was pushed to clone0 although files/4 was queued:\n{log}"
    );
}
