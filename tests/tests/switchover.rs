//! Planned switchover and balance, rejoin, and the automatic failover policy, end to end
//! with the real `exporter`, `pbs` and `importer` daemons over loopback (the `files` hooks).

use std::fs;
use std::process::Command;
use std::thread;
use std::time::Duration;

use pullback_tests::cluster::{
    files_hook, http, wait_for, write_script, Cluster, Daemon, HeldImport, Options, PortHold, Who,
};
use pullback_tests::ha::{node_row, request};
use pullback_tests::{bin, write};
use serde_json::{json, Value};

/// The PBS's node `name`: (role, status, epoch, generation).
fn node(c: &Cluster, name: &str) -> (String, String, u64, Option<String>) {
    let n = node_row(c, name);
    (n.role, n.status, n.epoch, n.generation)
}

fn seq(gen: &str) -> u64 {
    gen.rsplit_once('/')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or_else(|| panic!("not a generation: {gen}"))
}

fn marker_script(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let marker = dir.join(format!("{name}.marker"));
    let script = dir.join(name);
    write_script(
        &script,
        &format!("echo \"epoch=$PULLBACK_EPOCH\" >> {}", marker.display()),
    );
    (script, marker)
}

// ---------------------------------------------------------------- switchover / balance

#[test]
fn balance_switches_over_to_the_preferred_leader_without_losing_a_write() {
    let dir = tempfile::tempdir().expect("tmp");
    let (promote, promoted) = marker_script(dir.path(), "promote");
    let (demote, demoted) = marker_script(dir.path(), "demote");
    let mut c = Cluster::new(Options {
        promote_hook: Some(promote),
        demote_hook: Some(demote),
        pbs_extra: "[failover]\npreferred_leader = \"clone0\"\nswitchover_timeout_secs = 120\n"
            .into(),
        ..Options::default()
    });
    write(&c.src().join("data.txt"), b"row 1\n");
    c.start_all();
    c.cycle(1);

    // Refusals: not a clone, unknown, not admin; nothing changes.
    for (to, why) in [("exporter", "already MAIN"), ("nobody", "unknown node")] {
        let r = c.run(Who::Pbs, &["switchover", "--to", to]);
        assert!(!r.status.success(), "switchover to {to}: {}", r.stdout);
        assert!(
            r.stderr.contains("409") && r.stderr.contains(why),
            "{to}: {}",
            r.stderr
        );
    }
    let body = json!({"to": "clone0"}).to_string();
    let r = request(
        c.port(Who::Pbs),
        "POST",
        "/v1/ha/switchover",
        Some(&c.tokens.notify),
        body.as_bytes(),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(node(&c, "exporter").1, "Leader");

    // Writes on the main just before the switchover, never exported by a schedule.
    write(&c.src().join("data.txt"), b"row 1\nrow 2 (last write)\n");
    write(
        &c.src().join("late.txt"),
        b"written just before the switchover\n",
    );

    let r = c.run(Who::Pbs, &["balance"]);
    assert!(r.status.success(), "pbs balance: {}{}", r.stdout, r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).expect("JSON");
    assert_eq!(
        v,
        json!({"main": "clone0", "old_main": "exporter", "epoch": 1, "generation": "files/2", "noop": false})
    );

    // The old main: demote hook, final export, role BACKUP, exit 0 (not Broken).
    assert_eq!(c.wait_exit(Who::Exporter).code(), Some(0));
    assert_eq!(
        c.role_file(Who::Exporter),
        Some(json!({"role": "BACKUP", "epoch": 0}))
    );
    assert_eq!(
        fs::read_to_string(&demoted).unwrap_or_default(),
        "epoch=0\n"
    );
    // The new main: promoted at epoch 1 with the final generation in place.
    assert_eq!(c.wait_exit(Who::Importer(0)).code(), Some(0));
    assert_eq!(
        c.role_file(Who::Importer(0)),
        Some(json!({"role": "MAIN", "epoch": 1}))
    );
    assert_eq!(
        fs::read_to_string(&promoted).unwrap_or_default(),
        "epoch=1\n"
    );
    assert_eq!(
        fs::read(c.clone_data(0).join("data.txt")).expect("data.txt on the new main"),
        b"row 1\nrow 2 (last write)\n"
    );
    assert_eq!(
        fs::read(c.clone_data(0).join("late.txt")).expect("late.txt on the new main"),
        b"written just before the switchover\n"
    );
    assert_eq!(c.archive().generations(), ["files/1", "files/2"]);
    let (role, status, epoch, _) = node(&c, "exporter");
    assert_eq!(
        (role.as_str(), status.as_str(), epoch),
        ("BACKUP", "Follower", 1)
    );
    let (role, status, epoch, _) = node(&c, "clone0");
    assert_eq!(
        (role.as_str(), status.as_str(), epoch),
        ("MAIN", "Leader", 1)
    );

    // Balance again: the preferred leader leads, nothing to do.
    let r = c.run(Who::Pbs, &["balance"]);
    assert!(r.status.success(), "{}", r.stderr);
    assert!(r.stdout.contains("\"noop\": true"), "{}", r.stdout);
    assert_eq!(node(&c, "clone0").2, 1);

    // The old main restarts: BACKUP, Follower (not Broken), and it exports nothing.
    c.start(Who::Exporter);
    let st = c.admin(Who::Exporter, "GET", "/v1/status").json();
    assert_eq!(
        (st["role"].as_str(), st["status"].as_str()),
        (Some("BACKUP"), Some("Follower")),
        "{st}"
    );
    assert!(!c.exporter_run().status.success());
}

#[test]
fn a_switchover_is_refused_when_the_target_cannot_verify_the_final_generation() {
    let dir = tempfile::tempdir().expect("tmp");
    let fail = dir.path().join("fail-import");
    let import = dir.path().join("import");
    write_script(
        &import,
        &format!(
            "if [ -e {} ]; then echo 'import broken on purpose'; exit 3; fi\nexec {}",
            fail.display(),
            files_hook("import").display()
        ),
    );
    let mut c = Cluster::new(Options {
        import_hooks: vec![Some(import)],
        ..Options::default()
    });
    write(&c.src().join("data.txt"), b"one\n");
    c.start_all();
    c.cycle(1);
    fs::write(&fail, b"").expect("marker");
    let r = c.run(Who::Pbs, &["switchover", "--to", "clone0"]);
    assert!(!r.status.success(), "{}", r.stdout);
    assert!(
        r.stderr.contains("409") && r.stderr.contains("final generation files/2"),
        "{}",
        r.stderr
    );
    // Nothing granted: the epoch did not move, the clone is no main.
    assert!(c.role_file(Who::Importer(0)).is_none());
    assert!(c.importer_live(0).is_some());
    let (role, status, epoch, _) = node(&c, "exporter");
    assert_eq!(
        (role.as_str(), status.as_str(), epoch),
        ("MAIN", "Leader", 0)
    );
    let (role, status, _, _) = node(&c, "clone0");
    assert_eq!((role.as_str(), status.as_str()), ("BACKUP", "Follower"));
}

// ---------------------------------------------------------------- rejoin

#[test]
fn a_broken_former_main_rejoins_as_a_clone_once_it_verified_the_latest_generation() {
    let dir = tempfile::tempdir().expect("tmp");
    let held = HeldImport::new(dir.path(), "import-rejoin");
    let (block, started, release, import) = (
        held.block.clone(),
        held.started.clone(),
        held.release.clone(),
        held.hook.clone(),
    );
    // The former main's machine as a clone: an [[importer]] of the same node name.
    let mut port = PortHold::new();
    let push = "push-rejoin-0123456789abcdef".to_string();
    let mut c = Cluster::new(Options {
        pbs_extra: format!(
            "[[importer]]\nname = \"exporter\"\nurl = \"http://127.0.0.1:{}\"\ntoken = \"{push}\"\n",
            port.port
        ),
        takeover_hash: Some(pullback_tests::ha::password_hash(
            pullback_tests::ha::PASSWORD,
        )),
        ..Options::default()
    });
    write(&c.src().join("data.txt"), b"one\n");
    c.start_all();
    c.cycle(1);
    write(&c.src().join("data.txt"), b"one\ntwo\n");
    c.cycle(2);
    // The main is lost; clone0 takes over (the seeds' HA API), the old main is Broken.
    c.kill(Who::Exporter);
    // (change=MAIN needs the takeover password now.)
    let pw = json!({ "password": pullback_tests::ha::PASSWORD }).to_string();
    let r = request(
        c.port(Who::Importer(0)),
        "POST",
        "/rest/ha/status?change=MAIN",
        Some(&c.tokens.admin),
        pw.as_bytes(),
    );
    assert_eq!((r.status, r.text().as_str()), (200, "MAIN"));
    assert_eq!(c.wait_exit(Who::Importer(0)).code(), Some(0));
    assert_eq!(node(&c, "exporter").1, "Broken");

    // Refused for the main, and for a node the PBS cannot push to.
    let r = c.run(Who::Pbs, &["rejoin", "clone0"]);
    assert!(
        !r.status.success() && r.stderr.contains("is the main"),
        "{}",
        r.stderr
    );

    // The wiped node comes back as a clone (importer serve, empty folders).
    let node_dir = c.path().join("rejoined");
    let cfg = node_dir.join("importer.toml");
    fs::create_dir_all(&node_dir).expect("node dir");
    fs::write(
        &cfg,
        format!(
            r#"name = "exporter"
store = "{d}/store"
restore_dir = "{d}/restore"
state_dir = "{d}/state"
[hooks]
import = "{import}"
verify = "{verify}"
timeout_secs = 120
[server]
listen = "127.0.0.1:{p}"
tokens = [{{ peer = "pbs", token = "{push}" }}, {{ peer = "admin", token = "{admin}" }}]
[coordinator]
name = "pbs"
url = "http://127.0.0.1:{pp}"
token = "{coord}"
"#,
            d = node_dir.display(),
            import = import.display(),
            verify = files_hook("verify").display(),
            p = port.port,
            admin = c.tokens.admin,
            pp = c.port(Who::Pbs),
            coord = c.tokens.notify,
        ),
    )
    .expect("importer.toml");
    // Leftovers of an earlier life on that node, and the old main's role file:
    // `importer rejoin` wipes them (and refuses without --yes).
    for d in ["store/x", "restore/y", "restore.staging/z", "state/logs"] {
        fs::create_dir_all(node_dir.join(d)).expect("leftover");
    }
    assert!(
        c.role_file(Who::Exporter).is_some(),
        "the old main has a role file"
    );
    let wipe = |yes: bool| {
        let mut cmd = Command::new(bin("importer"));
        cmd.arg("--config")
            .arg(&cfg)
            .arg("rejoin")
            .arg("--exporter-state")
            .arg(c.path().join("exporter"));
        if yes {
            cmd.arg("--yes");
        }
        cmd.output().expect("importer rejoin")
    };
    let r = wipe(false);
    assert!(!r.status.success() && String::from_utf8_lossy(&r.stderr).contains("--yes"));
    assert!(
        node_dir.join("store/x").exists(),
        "nothing deleted without --yes"
    );
    let r = wipe(true);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    for d in ["store", "restore", "restore.staging"] {
        assert!(!node_dir.join(d).exists(), "{d} left after the wipe");
    }
    // The state folder holds only the new role file: BACKUP, so that the node's launcher
    // runs its importer.
    let left: Vec<_> = fs::read_dir(node_dir.join("state"))
        .expect("the state folder")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    assert_eq!(left, ["role.json"], "state left after the wipe");
    let role: Value =
        serde_json::from_slice(&fs::read(node_dir.join("state/role.json")).expect("role file"))
            .expect("JSON");
    assert_eq!(role, json!({"role": "BACKUP", "epoch": 0}));
    assert!(
        c.role_file(Who::Exporter).is_none(),
        "the old main's role file is gone"
    );
    fs::write(&block, b"").expect("block");
    port.release();
    let log = fs::File::create(node_dir.join("importer.log")).expect("log");
    let _rejoined = Daemon {
        child: Command::new(bin("importer"))
            .arg("--config")
            .arg(&cfg)
            .arg("serve")
            .env("PULLBACK_FILES_TARGET", node_dir.join("data"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("importer serve"),
    };
    let auth = format!("token {}", c.tokens.admin);
    wait_for("the rejoining importer to answer", || {
        let r = http(
            port.port,
            "GET",
            "/v1/status",
            &[("Authorization", &auth)],
            b"",
        )
        .ok()?;
        (r.status == 200).then_some(())
    });
    // Still Broken: nothing is pushed to it until an operator rejoins it.
    assert_eq!(node(&c, "exporter").1, "Broken");
    thread::sleep(Duration::from_millis(300));
    assert!(
        !started.exists(),
        "a generation was pushed to a Broken node"
    );

    let r = c.run(Who::Pbs, &["rejoin", "exporter"]);
    assert!(r.status.success(), "pbs rejoin: {}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("\"Rejoining\""), "{}", r.stdout);
    wait_for(
        "the latest generation to be imported on the rejoining node",
        || started.exists().then_some(()),
    );
    // Until it has verified the latest generation: never MAIN, no notification.
    let (role, status, epoch, _) = node(&c, "exporter");
    assert_eq!(
        (role.as_str(), status.as_str(), epoch),
        ("BACKUP", "Rejoining", 1)
    );
    let t = json!({"node": "exporter", "force": true}).to_string();
    let r = request(
        c.port(Who::Pbs),
        "POST",
        "/v1/ha/takeover",
        Some(&c.tokens.admin),
        t.as_bytes(),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("rejoining"), "{}", r.text());
    let n = json!({"source": "files", "seq": 3, "tx": "rejoin-1", "epoch": 1, "node": "exporter"})
        .to_string();
    let r = request(
        c.port(Who::Pbs),
        "POST",
        "/v1/notify",
        Some(&c.tokens.notify),
        n.as_bytes(),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    let h = json!({"node": "exporter", "epoch": 1, "role": "MAIN"}).to_string();
    let r = request(
        c.port(Who::Pbs),
        "POST",
        "/v1/ha/hello",
        Some(&c.tokens.notify),
        h.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["role"], "BACKUP", "{}", r.text());

    fs::write(&release, b"").expect("release");
    let gen = wait_for("the rejoined node to be a Follower", || {
        let (role, status, _, gen) = node(&c, "exporter");
        (role == "BACKUP" && status == "Follower").then_some(gen)?
    });
    // Its generation is the latest, never ahead of the main's newest.
    let newest = c
        .archive()
        .generations()
        .last()
        .cloned()
        .expect("a generation");
    assert_eq!(gen, newest);
    assert!(seq(&gen) <= seq(&newest));
    // The generation shown is the one the PBS saw it verify (not the one it once published).
    let (_, pst) = c.pbs_status();
    let imp = pst["importers"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == "exporter"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(imp["last_good"]["generation"], newest.as_str(), "{pst}");
    assert_eq!(
        fs::read(node_dir.join("data/data.txt")).expect("restored data"),
        b"one\ntwo\n"
    );
    assert!(
        !node_dir.join("state/role.json").exists()
            || fs::read_to_string(node_dir.join("state/role.json"))
                .unwrap_or_default()
                .contains("BACKUP")
    );
}

// ---------------------------------------------------------------- automatic failover

fn auto_cluster(auto: bool) -> Cluster {
    let mut c = Cluster::new(Options {
        pbs_extra: format!("[failover]\nauto = {auto}\nafter_secs = 3\n"),
        ..Options::default()
    });
    write(&c.src().join("data.txt"), b"auto\n");
    c.start_all();
    c.cycle(1);
    c
}

#[test]
fn automatic_failover_promotes_the_verified_clone_when_the_main_is_silent() {
    let mut c = auto_cluster(true);
    c.kill(Who::Exporter);
    let st = c.wait_exit(Who::Importer(0));
    assert_eq!(st.code(), Some(0), "{st}");
    assert_eq!(
        c.role_file(Who::Importer(0)),
        Some(json!({"role": "MAIN", "epoch": 1}))
    );
    let (role, status, epoch, _) = node(&c, "clone0");
    assert_eq!(
        (role.as_str(), status.as_str(), epoch),
        ("MAIN", "Leader", 1)
    );
    assert_eq!(node(&c, "exporter").1, "Broken");
    // Recorded as automatic, not forced; no spare and no hook: a clone is needed (warning).
    let (_, st) = c.pbs_status();
    let t = &st["takeovers"][0];
    assert_eq!(
        (
            t["node"].as_str(),
            t["old_main"].as_str(),
            t["epoch"].as_u64(),
            t["forced"].as_bool(),
            t["by"].as_str()
        ),
        (
            Some("clone0"),
            Some("exporter"),
            Some(1),
            Some(false),
            Some("auto")
        ),
        "{st}"
    );
    assert_eq!(st["clone_needed"]["new_main"], "clone0", "{st}");
    assert!(st["clone_needed"]["hook"].is_null(), "{st}");
    let text = c.run(Who::Pbs, &["status"]).stdout;
    assert!(
        text.contains("WARNING: a new clone is needed") && text.contains("set up a clone"),
        "{text}"
    );
}

#[test]
fn without_the_policy_a_silent_main_is_left_alone() {
    let mut c = auto_cluster(false);
    c.kill(Who::Exporter);
    // Twice after_secs: with auto = true this is long enough to fail over.
    for _ in 0..12 {
        thread::sleep(Duration::from_millis(500));
        assert!(c.role_file(Who::Importer(0)).is_none());
    }
    assert!(c.importer_live(0).is_some(), "the clone must keep running");
    let (role, status, epoch, _) = node(&c, "exporter");
    assert_eq!(
        (role.as_str(), status.as_str(), epoch),
        ("MAIN", "Leader", 0)
    );
}
