//! What a hook does wrong stays contained: an export hook that leaves the
//! backup folder empty publishes nothing, and an import hook left running by
//! a killed importer is killed when the importer starts again.

use std::fs;

use pullback_tests::cluster::{
    files_hook, wait_for, write_script, Cluster, HeldImport, Options, Who,
};
use pullback_tests::snapshot;

#[test]
fn an_export_hook_that_empties_the_backup_folder_publishes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("empty-next");
    let hook = dir.path().join("export");
    write_script(
        &hook,
        &format!(
            "if [ -e {m} ]; then find \"$PULLBACK_BACKUP_DIR\" -mindepth 1 -delete; echo emptied; exit 0; fi\nexec {e}",
            m = mark.display(),
            e = files_hook("export").display()
        ),
    );
    let mut c = Cluster::new(Options {
        export_hook: Some(hook),
        exporter_attempts: 1,
        ..Options::default()
    });
    fs::write(c.src().join("data.txt"), "the data\n").unwrap();
    c.start_all();
    c.cycle(1);
    let before = snapshot(&c.restore_dir(0));

    fs::write(&mark, "").unwrap();
    let r = c.exporter_run();
    assert!(
        !r.status.success(),
        "an empty backup was published: {}",
        r.stdout
    );
    let said = format!("{}{}", r.stdout, r.stderr);
    assert!(
        said.contains("empty") && said.contains("allow_empty"),
        "{said}"
    );
    let list = c.archive().json(&["list"]);
    assert_eq!(list.as_array().map(|a| a.len()), Some(1), "{list}");
    assert_eq!(
        snapshot(&c.restore_dir(0)),
        before,
        "the clone's copy changed"
    );

    // The next good export goes through as usual.
    fs::remove_file(&mark).unwrap();
    c.cycle(2);
    assert_eq!(
        fs::read_to_string(c.restore_dir(0).join("data.txt")).unwrap(),
        "the data\n"
    );
}

/// True when `pid` is gone or a zombie.
fn dead(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn an_import_hook_left_by_a_killed_importer_is_killed_at_restart() {
    let dir = tempfile::tempdir().unwrap();
    let held = HeldImport::new(dir.path(), "import");
    let mut c = Cluster::new(Options {
        import_hooks: vec![Some(held.hook.clone())],
        ..Options::default()
    });
    fs::write(c.src().join("data.txt"), "one\n").unwrap();
    c.start_all();
    c.cycle(1);
    let before = snapshot(&c.restore_dir(0));

    fs::write(&held.block, "").unwrap();
    fs::write(c.src().join("data.txt"), "two\n").unwrap();
    let run = c.command(Who::Exporter).arg("run").spawn().unwrap();
    wait_for("the import hook to start", || {
        held.started.exists().then_some(())
    });
    let record = c.path().join("clone0/hooks/import.pid");
    let pid: i32 = wait_for("the hook's record", || {
        fs::read_to_string(&record)
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    });
    c.kill(Who::Importer(0));
    // Killing the importer alone leaves its hook running.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        !dead(pid),
        "the hook died with the importer: the test proves nothing"
    );

    c.start(Who::Importer(0));
    wait_for("the leftover hook to be killed", || dead(pid).then_some(()));
    assert!(!record.exists(), "the record stays after the kill");
    // The half-imported generation was rolled back: the clone holds files/1.
    assert_eq!(snapshot(&c.restore_dir(0)), before);
    let st = c.importer_status(0);
    assert_eq!(st["last_valid"]["generation"], "files/1", "{st}");
    fs::write(&held.release, "").unwrap();
    drop(run);
}

#[test]
fn an_export_hook_that_prints_50_mb_keeps_a_bounded_log() {
    let dir = tempfile::tempdir().unwrap();
    let hook = dir.path().join("export");
    write_script(
        &hook,
        &format!(
            "echo chatty-start\nhead -c 50000000 /dev/zero | tr '\\0' x\necho\necho chatty-end\nexec {e}",
            e = files_hook("export").display()
        ),
    );
    let mut c = Cluster::new(Options {
        export_hook: Some(hook),
        ..Options::default()
    });
    fs::write(c.src().join("data.txt"), "the data\n").unwrap();
    c.start_all();
    c.cycle(1);
    let logs: Vec<_> = fs::read_dir(c.path().join("exporter/logs"))
        .unwrap()
        .filter_map(|e| e.ok())
        .collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    let kept = fs::read(logs[0].path()).unwrap();
    assert!(kept.len() < 1_200_000, "{} bytes of log kept", kept.len());
    let text = String::from_utf8_lossy(&kept);
    assert!(
        text.contains("chatty-start") && text.contains("chatty-end"),
        "start and end kept"
    );
    assert!(text.contains("left out"), "the cut is said");
    let st = c.run(Who::Exporter, &["status", "--json"]).json();
    let tail = st["last_run"]["log_tail"].as_str().unwrap_or_default();
    assert!(
        tail.len() <= 4096 && tail.contains("files export: copied"),
        "{st}"
    );
}
