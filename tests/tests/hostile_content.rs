//! A compromised main serves generations whose file list would lead a
//! restore outside its folder (a symlink, then paths under it): the PBS
//! refuses them at the pull, a clone refuses them at its own pull, `pbs archive
//! verify` flags one already stored and `pbs archive restore` writes nothing
//! outside its target. Nothing outside is ever written, nothing stored is lost.

use std::fs;

use pullback_tests::cluster::{Cluster, Options};
use pullback_tests::evil::{
    below_root, notify_crafted, proxied_cluster, pull_crafted, Craft, Crafted,
};
use pullback_tests::{snapshot, Pbs};

fn entries_in(dir: &std::path::Path) -> usize {
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn a_file_list_through_a_symlink_is_refused_everywhere() {
    let mut c = proxied_cluster();
    fs::write(c.src().join("keep.txt"), "generation one\n").unwrap();
    c.start_all();
    c.cycle(1);
    let clone_before = snapshot(&c.restore_dir(0));

    let outside = c.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let clone_state = c.path().join("clone0");
    let role_before = fs::read(clone_state.join("role.json")).ok();
    let deep = format!("r/{}/y", String::from_utf8(below_root(&outside)).unwrap());
    let deep_dirs: Vec<String> = deep
        .match_indices('/')
        .skip(1)
        .map(|(i, _)| deep[..i].to_string())
        .collect();
    let out_b = outside.as_os_str().as_encoded_bytes().to_vec();
    let state_b = clone_state.as_os_str().as_encoded_bytes().to_vec();
    let role = br#"{"role":"MAIN","epoch":99}"#;
    let tricks: Vec<(&str, Vec<Craft>)> = vec![
        (
            "symlink to a folder outside",
            vec![Craft::Symlink("a", &out_b), Craft::File("a/x", b"owned")],
        ),
        ("symlink to /", {
            // Every folder on the way is listed, as a real list would.
            let mut v = vec![Craft::Symlink("r", b"/")];
            v.extend(deep_dirs.iter().map(|d| Craft::Dir(d)));
            v.push(Craft::File(&deep, b"owned"));
            v
        }),
        (
            "symlink to the clone's state folder",
            vec![
                Craft::Symlink("s", &state_b),
                Craft::File("s/role.json", role),
            ],
        ),
        (
            "file used as a folder",
            vec![Craft::File("f", b"x"), Craft::File("f/y", b"owned")],
        ),
    ];

    // Leg 1: the PBS pulls from a main that serves the crafted list.
    for (what, entries) in &tricks {
        let said = pull_crafted(&c, what, entries);
        assert!(said.contains("not a folder"), "{what}: {said}");
        assert_eq!(entries_in(&outside), 0, "{what}: wrote outside");
        let list = c.archive().json(&["list"]);
        let gens: Vec<_> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["generation"].clone())
            .collect();
        assert_eq!(gens, vec![serde_json::json!("files/1")], "{what}: {list}");
    }

    // Leg 2: the clone is told (with the PBS's token) of a generation that a fake PBS
    // serves with the same lists: the clone's pull refuses it.
    for (i, (what, entries)) in tricks.iter().enumerate() {
        let r = notify_crafted(&c, what, entries, 10 + i as u64);
        let said = r.text();
        let refused = r.status >= 400 || r.json()["ok"] != true;
        assert!(refused, "{what}: the clone accepted it: {said}");
        assert!(said.contains("not a folder"), "{what}: {said}");
        assert_eq!(entries_in(&outside), 0, "{what}: the clone wrote outside");
        assert_eq!(
            fs::read(clone_state.join("role.json")).ok(),
            role_before,
            "{what}"
        );
        assert_eq!(
            snapshot(&c.restore_dir(0)),
            clone_before,
            "{what}: the clone's copy changed"
        );
    }
    let st = c.importer_status(0);
    assert_eq!(st["last_valid"]["generation"], "files/1", "{st}");

    // Leg 3: an archive that already holds such a generation (written as
    // the format allows, before this check existed): verify flags it,
    // restore refuses it and writes nothing, outside or in the target.
    for (what, entries) in &tricks {
        let crafted = Crafted::new("files", 0, entries);
        let pbs = Pbs::new(crafted.commit_in_place(1));
        let v = pbs.run(&["verify", "--full"]);
        assert_ne!(v.code(), Some(0), "{what}: verify passed: {}", v.stdout);
        assert!(v.stdout.contains("not a folder"), "{what}: {}", v.stdout);
        let to = c.path().join("restored");
        let r = pbs.run(&["restore", "files/1", "--to", to.to_str().unwrap()]);
        assert_eq!(r.code(), Some(1), "{what}: {r:?}");
        assert!(r.stderr.contains("not a folder"), "{what}: {}", r.stderr);
        assert!(!to.exists(), "{what}: a target was left");
        assert_eq!(entries_in(&outside), 0, "{what}: restore wrote outside");
    }
}

#[test]
fn a_setuid_file_of_another_user_is_not_restored_setuid() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut c = Cluster::new(Options::default());
    let tool = c.src().join("tool");
    fs::write(&tool, "#!/bin/sh\nid\n").unwrap();
    fs::set_permissions(&tool, fs::Permissions::from_mode(0o4755)).unwrap();
    let sgid = c.src().join("group-tool");
    fs::write(&sgid, "#!/bin/sh\nid\n").unwrap();
    fs::set_permissions(&sgid, fs::Permissions::from_mode(0o2755)).unwrap();
    // Owned by someone else, as on a real main (possible when the tests run as root).
    let as_root = unsafe { libc::geteuid() } == 0;
    if as_root {
        std::os::unix::fs::chown(&tool, Some(65534), Some(65534)).unwrap();
        // chown clears the setuid bit: set it again.
        fs::set_permissions(&tool, fs::Permissions::from_mode(0o4755)).unwrap();
    }
    c.start_all();
    c.cycle(1);
    // The signature keeps what the main had...
    let show = c.archive().json(&["show", "files/1"]);
    let mode_of = |name: &str| {
        show["entries"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["path"] == name))
            .map(|e| e["mode"].clone())
    };
    assert_eq!(mode_of("tool"), Some(serde_json::json!("4755")), "{show}");
    assert_eq!(
        mode_of("group-tool"),
        Some(serde_json::json!("2755")),
        "{show}"
    );
    // ...the clone gets the bits without setuid/setgid.
    for (f, want) in [("tool", 0o755), ("group-tool", 0o755)] {
        let m = fs::metadata(c.restore_dir(0).join(f)).unwrap();
        assert_eq!(m.mode() & 0o7777, want, "{f}: {:o}", m.mode() & 0o7777);
        if as_root {
            assert_eq!(m.uid(), 0, "ownership is not restored");
        }
    }
}
