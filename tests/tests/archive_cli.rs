//! End to end: the real `pbs archive ...` binary, run as a separate process on
//! archives and sources made here in temporary folders.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use pullback_tests::garage::{get_object, put_object, Garage};
use pullback_tests::{
    assert_same_tree, pack_key, packs, restore_snapshot, snapshot, write, Kind, Pbs, Rng, Tree,
};
use serde_json::Value;
use tempfile::TempDir;

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// A source with text and binary data, an empty file, an empty folder, a
/// nested folder, an executable, a private file and two symlinks (one
/// dangling).
fn sample_source(dir: &Path, rng: &mut Rng) {
    write(&dir.join("docs/readme.txt"), &rng.text(30_000));
    write(&dir.join("docs/deep/er/notes.txt"), &rng.text(5_000));
    write(&dir.join("data/table.csv"), &rng.text(1_500_000));
    write(&dir.join("data/blob.bin"), &rng.bytes(300_000));
    write(&dir.join("run.sh"), b"#!/bin/sh\necho hello\n");
    write(&dir.join("empty"), b"");
    fs::create_dir_all(dir.join("empty-dir")).unwrap();
    fs::set_permissions(dir.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(
        dir.join("docs/readme.txt"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    symlink("data/table.csv", dir.join("latest.csv")).unwrap();
    symlink("../nowhere/at all", dir.join("dangling")).unwrap();
}

fn files_in(t: &Tree) -> (u64, u64) {
    t.values().fold((0, 0), |(n, b), m| match &m.kind {
        Kind::File { size, .. } => (n + 1, b + size),
        _ => (n, b),
    })
}

fn insert_at(path: &Path, at: usize, what: &[u8]) {
    let mut d = fs::read(path).unwrap();
    d.splice(at..at, what.iter().copied());
    fs::write(path, d).unwrap();
}

fn gen_names(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|g| g["generation"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn full_cycle_two_generations() {
    let tmp = TempDir::new().unwrap();
    let src = tmp.path().join("src");
    // The archive folder does not exist yet: ingest creates it.
    let pbs = Pbs::new(tmp.path().join("archive"));
    let mut rng = Rng::new(1);
    sample_source(&src, &mut rng);
    let snap1 = snapshot(&src);
    let (nfiles1, nbytes1) = files_in(&snap1);
    assert_eq!(nfiles1, 6);

    let v1 = pbs.json(&["ingest", "--source", "db", "--label", "first", s(&src)]);
    assert_eq!(v1["generation"], "db/1");
    assert_eq!(v1["seq"], 1);
    assert_eq!(v1["epoch"], 0);
    assert_eq!(v1["label"], "first");
    assert_eq!(v1["files"], nfiles1);
    assert_eq!(v1["bytes"], nbytes1);
    assert_eq!(v1["files_read"], nfiles1);
    assert_eq!(v1["dirs"], 5);
    assert_eq!(v1["symlinks"], 2);
    assert_eq!(v1["new_deltas"], 0);
    // table.csv compresses; blob.bin does not; nothing is stored twice.
    let added1 = v1["added_bytes"].as_u64().unwrap();
    assert!(
        added1 > 300_000 && added1 < nbytes1,
        "added {added1} of {nbytes1}"
    );

    // Change the source: rows inserted in the middle of the table, a new
    // file, a deleted file, a mode change (metadata only).
    insert_at(&src.join("data/table.csv"), 700_000, b"inserted\trow\t1\n");
    write(&src.join("docs/new.txt"), b"a new file\n");
    fs::remove_file(src.join("data/blob.bin")).unwrap();
    fs::set_permissions(
        src.join("docs/readme.txt"),
        fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let snap2 = snapshot(&src);
    let (nfiles2, nbytes2) = files_in(&snap2);

    let v2 = pbs.json(&["ingest", "--source", "db", "--label", "second", s(&src)]);
    assert_eq!(v2["generation"], "db/2");
    assert_eq!(v2["seq"], 2);
    assert_eq!(v2["files"], nfiles2);
    assert_eq!(v2["bytes"], nbytes2);
    // Only what changed is read: the table, the new file, the chmodded file.
    assert_eq!(v2["files_read"], 3);
    assert!(v2["new_deltas"].as_u64().unwrap() >= 1, "{v2}");
    let added2 = v2["added_bytes"].as_u64().unwrap();
    assert!(added2 * 20 < added1, "v2 added {added2} bytes, v1 {added1}");

    let list = pbs.list();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["seq"], 1);
    assert_eq!(list[1]["seq"], 2);
    assert_eq!(gen_names(&list), ["db/1", "db/2"]);
    assert_eq!(list[0]["label"], "first");
    assert_eq!(list[1]["label"], "second");

    // show: every entry with its type, mode, size, signature and target.
    let show = pbs.json(&["show", "db/1"]);
    assert_eq!(show["generation"], "db/1");
    let entries = show["entries"].as_array().unwrap();
    assert_eq!(entries.len(), snap1.len());
    for e in entries {
        let path = e["path"].as_str().unwrap();
        let m = &snap1[path.as_bytes()];
        match &m.kind {
            Kind::File { size, sha256 } => {
                assert_eq!(e["type"], "file", "{path}");
                assert_eq!(e["size"], *size, "{path}");
                assert_eq!(e["sha256"], sha256.as_str(), "{path}");
                assert_eq!(e["mode"], format!("{:o}", m.mode.unwrap()), "{path}");
            }
            Kind::Dir => {
                assert_eq!(e["type"], "dir", "{path}");
                assert_eq!(e["mode"], format!("{:o}", m.mode.unwrap()), "{path}");
            }
            Kind::Symlink { target } => {
                assert_eq!(e["type"], "symlink", "{path}");
                assert_eq!(e["target"], std::str::from_utf8(target).unwrap(), "{path}");
            }
        }
    }
    // SOURCE and SOURCE/latest name the newest generation.
    assert_eq!(pbs.json(&["show", "db"])["generation"], "db/2");
    assert_eq!(pbs.json(&["show", "db/latest"])["generation"], "db/2");
    let show2 = pbs.json(&["show", "db/2"]);
    let paths2: BTreeSet<&str> = show2["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(paths2.contains("docs/new.txt") && !paths2.contains("data/blob.bin"));

    // Both generations restore exactly: content, modes, mtimes, links.
    assert_same_tree(&snap1, &restore_snapshot(&pbs, "db/1", tmp.path()), "db/1");
    assert_same_tree(&snap2, &restore_snapshot(&pbs, "db/2", tmp.path()), "db/2");
    let r = pbs.json(&["restore", "db/2", "--to", s(&tmp.path().join("r2"))]);
    assert_eq!(r["files"], nfiles2);
    assert_eq!(r["bytes"], nbytes2);
    assert_eq!(r["symlinks"], 2);

    for full in [false, true] {
        let mut args = vec!["verify"];
        if full {
            args.push("--full");
        }
        let v = pbs.json(&args);
        assert_eq!(v["full"], full);
        assert_eq!(v["generations"], 2);
        assert_eq!(v["problems"].as_array().unwrap().len(), 0, "{v}");
        if full {
            assert!(v["blobs"].as_u64().unwrap() > 0);
            assert_eq!(v["blobs_checked"], v["blobs"]);
        } else {
            assert_eq!(v["blobs_checked"], 0);
        }
    }
    // The plain-text forms exit 0 too.
    let out = pbs.ok(&["verify", "--full"]);
    assert!(out.stdout.contains("no problems found"), "{}", out.stdout);
    let out = pbs.ok(&["list"]);
    assert!(out.stdout.contains("db/1") && out.stdout.contains("db/2"));
}

#[test]
fn bad_source_name_is_refused() {
    let tmp = TempDir::new().unwrap();
    let src = tmp.path().join("src");
    write(&src.join("f"), b"x");
    let pbs = Pbs::new(tmp.path().join("archive"));
    for bad in ["bad name", "a/b", ".hidden", ""] {
        let r = pbs.run(&["ingest", "--source", bad, s(&src)]);
        assert_eq!(r.code(), Some(1), "{bad:?}: {r:?}");
        assert!(
            r.stderr.contains("bad source name"),
            "{bad:?}: {}",
            r.stderr
        );
    }
    // Nothing was created.
    assert!(!pbs.archive.exists());
}

#[test]
fn a_folder_that_is_not_an_archive_is_refused() {
    let tmp = TempDir::new().unwrap();
    let src = tmp.path().join("src");
    write(&src.join("f"), b"x");
    let not_archive = tmp.path().join("photos");
    write(&not_archive.join("holiday.jpg"), b"not an archive");
    let pbs = Pbs::new(&not_archive);
    for args in [
        vec!["list"],
        vec!["verify"],
        vec!["ingest", "--source", "db", s(&src)],
        vec!["gc"],
    ] {
        let r = pbs.run(&args);
        assert_eq!(r.code(), Some(1), "{args:?}: {r:?}");
        assert!(
            r.stderr.contains("is not a pullback archive"),
            "{args:?}: {}",
            r.stderr
        );
    }
    // The folder is as it was.
    let names: Vec<_> = fs::read_dir(&not_archive)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["holiday.jpg"]);
    assert_eq!(
        fs::read(not_archive.join("holiday.jpg")).unwrap(),
        b"not an archive"
    );
}

#[test]
fn restore_refuses_a_non_empty_target_and_unknown_generations() {
    let tmp = TempDir::new().unwrap();
    let src = tmp.path().join("src");
    write(&src.join("a.txt"), b"alpha\n");
    write(&src.join("sub/b.txt"), b"bravo\n");
    let pbs = Pbs::new(tmp.path().join("archive"));
    pbs.ok(&["ingest", "--source", "db", s(&src)]);

    let target = tmp.path().join("busy");
    write(&target.join("keep.txt"), b"mine");
    let r = pbs.run(&["restore", "db/1", "--to", s(&target)]);
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(r.stderr.contains("exists and is not empty"), "{}", r.stderr);
    let names: Vec<_> = fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["keep.txt"]);
    assert_eq!(fs::read(target.join("keep.txt")).unwrap(), b"mine");

    let to = tmp.path().join("fresh");
    for (spec, msg) in [
        ("db/7", "no generation db/7"),
        ("other", "no generation other/latest"),
        ("db/x", "bad generation"),
        ("bad name/1", "bad source name"),
    ] {
        let r = pbs.run(&["restore", spec, "--to", s(&to)]);
        assert_eq!(r.code(), Some(1), "{spec}: {r:?}");
        assert!(r.stderr.contains(msg), "{spec}: {}", r.stderr);
        assert!(!to.exists(), "{spec}: the target was created");
        let r = pbs.run(&["show", spec]);
        assert_eq!(r.code(), Some(1), "{spec}: {r:?}");
        assert!(r.stderr.contains(msg), "{spec}: {}", r.stderr);
    }
    // The good one still works into an existing empty folder.
    fs::create_dir(&to).unwrap();
    pbs.ok(&["restore", "db/1", "--to", s(&to)]);
    assert_eq!(fs::read(to.join("sub/b.txt")).unwrap(), b"bravo\n");
}

#[test]
fn stale_epoch_is_refused_and_adds_nothing() {
    let tmp = TempDir::new().unwrap();
    let src = tmp.path().join("src");
    write(&src.join("a.txt"), b"alpha\n");
    let pbs = Pbs::new(tmp.path().join("archive"));
    let v = pbs.json(&["ingest", "--source", "db", "--epoch", "5", s(&src)]);
    assert_eq!(v["epoch"], 5);

    write(&src.join("a.txt"), b"alpha from an old main\n");
    let r = pbs.run(&["ingest", "--source", "db", "--epoch", "3", s(&src)]);
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(
        r.stderr.contains("epoch 3") && r.stderr.contains("epoch 5") && r.stderr.contains("stale"),
        "{}",
        r.stderr
    );
    let list = pbs.list();
    assert_eq!(gen_names(&list), ["db/1"]);
    assert_eq!(list[0]["epoch"], 5);
    assert_eq!(
        pbs.json(&["verify"])["problems"].as_array().unwrap().len(),
        0
    );

    // The same epoch and a later one are accepted; the sequence goes on at 2.
    assert_eq!(
        pbs.json(&["ingest", "--source", "db", "--epoch", "5", s(&src)])["generation"],
        "db/2"
    );
    let v = pbs.json(&["ingest", "--source", "db", "--epoch", "6", s(&src)]);
    assert_eq!(
        (v["generation"].as_str(), v["epoch"].as_u64()),
        (Some("db/3"), Some(6))
    );
    // Epochs are per source.
    let v = pbs.json(&["ingest", "--source", "other", "--epoch", "1", s(&src)]);
    assert_eq!(v["generation"], "other/1");
}

#[test]
fn prune_without_a_rule_is_refused() {
    let tmp = TempDir::new().unwrap();
    let src = tmp.path().join("src");
    write(&src.join("a.txt"), b"alpha\n");
    let pbs = Pbs::new(tmp.path().join("archive"));
    pbs.ok(&["ingest", "--source", "db", s(&src)]);
    pbs.ok(&["ingest", "--source", "db", s(&src)]);
    for dry in [false, true] {
        let mut args = vec!["prune"];
        if dry {
            args.push("--dry-run");
        }
        let r = pbs.run(&args);
        assert_eq!(r.code(), Some(1), "{r:?}");
        assert!(r.stderr.contains("no retention policy"), "{}", r.stderr);
    }
    assert_eq!(pbs.generations(), ["db/1", "db/2"]);
}

/// Flip the byte at `at` of `path`.
fn flip(path: &Path, at: usize) {
    let mut d = fs::read(path).unwrap();
    d[at] ^= 0x5a;
    fs::write(path, d).unwrap();
}

/// Where the damaged archive's packs are: a folder, or a bucket prefix.
enum Store<'a> {
    Local(&'a Path),
    Garage(&'a Garage, &'a str),
}

impl Store<'_> {
    /// The pack keys (`packs/XX/<id>.pack`) and sizes.
    fn packs(&self) -> Vec<(String, u64)> {
        match self {
            Store::Local(archive) => packs(archive)
                .into_iter()
                .map(|(p, len)| (pack_key(archive, &p), len))
                .collect(),
            Store::Garage(g, prefix) => g
                .objects(prefix)
                .into_iter()
                .filter_map(|k| {
                    let key = k.strip_prefix(&format!("{prefix}/"))?.to_string();
                    key.starts_with("packs/").then(|| {
                        let len = get_object(g, &k).len() as u64;
                        (key, len)
                    })
                })
                .collect(),
        }
    }

    fn flip(&self, key: &str, at: usize) {
        match self {
            Store::Local(archive) => flip(&archive.join(key), at),
            Store::Garage(g, prefix) => {
                let k = format!("{prefix}/{key}");
                let mut d = get_object(g, &k);
                d[at] ^= 0x5a;
                put_object(g, &k, &d);
            }
        }
    }
}

#[test]
fn a_flipped_byte_is_found_named_and_never_restored() {
    let tmp = TempDir::new().unwrap();
    let pbs = Pbs::new(tmp.path().join("archive"));
    flipped_byte_case(&tmp, &pbs, &Store::Local(&pbs.archive));
}

/// The same with the archive in a real S3 server (Garage): a byte flipped in a pack object
/// (bit rot the store did not catch, or a writer with the bucket's key).
#[test]
fn a_flipped_byte_in_object_storage_is_found_named_and_never_restored() {
    let tmp = TempDir::new().unwrap();
    let (garage, pbs) = Garage::with_pbs(tmp.path(), "flip");
    flipped_byte_case(&tmp, &pbs, &Store::Garage(&garage, "flip"));
}

/// Restore `gen` into a fresh folder with the object store's requests logged; the tree, the
/// number of ranged GETs it sent and of whole packs it fetched.
fn restore_counting_gets(pbs: &Pbs, gen: &str, to: &Path) -> (Tree, usize, usize) {
    if to.exists() {
        fs::remove_dir_all(to).unwrap();
    }
    let out = pbs
        .command(&["restore", gen, "--to", s(to)])
        .env("PULLBACK_LOG", "objstore=debug")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    (
        snapshot(to),
        stderr.matches("GET range").count(),
        stderr.matches("GET whole").count(),
    )
}

/// On a bucket, the PBS keeps a local copy of each pack it puts: a restore of what it just
/// stored sends no ranged GET; a damaged copy is dropped and the bucket read instead (the
/// restore is still whole and right); with no copies the bucket serves every blob.
#[test]
fn local_copies_of_packs_serve_reads_and_a_damaged_one_is_not_trusted() {
    let tmp = TempDir::new().unwrap();
    let (garage, pbs) = Garage::with_pbs(tmp.path(), "copies");
    let local = tmp.path().join("archive");
    let src = tmp.path().join("src");
    let mut rng = Rng::new(11);
    // Larger than two of the pieces a pack is fetched in (4 MiB).
    write(&src.join("big.bin"), &rng.bytes(9_000_000));
    write(&src.join("small.txt"), &rng.text(3_000));
    pbs.ok(&["ingest", "--source", "db", s(&src)]);
    let snap = snapshot(&src);

    // Every pack in the bucket has its copy, byte for byte.
    let store = Store::Garage(&garage, "copies");
    let all = store.packs();
    assert!(!all.is_empty());
    for (key, _) in &all {
        let copy = fs::read(local.join("cache").join(key))
            .unwrap_or_else(|e| panic!("no local copy of {key}: {e}"));
        assert_eq!(copy, get_object(&garage, &format!("copies/{key}")), "{key}");
    }
    let to = tmp.path().join("restore");
    let restores_from_copies_only = |what: &str| {
        let (tree, gets, wholes) = restore_counting_gets(&pbs, "db/1", &to);
        assert_same_tree(&snap, &tree, what);
        assert_eq!((gets, wholes), (0, 0), "{what}: GETs sent");
    };
    restores_from_copies_only("restore from the local copies");

    // A byte flipped in the copy of the big pack: that copy goes, the bucket serves it.
    let (key, len) = all.iter().max_by_key(|(_, len)| *len).unwrap();
    assert!(*len > 8 << 20, "{all:?}");
    let copy = local.join("cache").join(key);
    flip(&copy, *len as usize / 2);
    let (tree, gets, _) = restore_counting_gets(&pbs, "db/1", &to);
    assert_same_tree(&snap, &tree, "restore past a damaged copy");
    assert!(
        gets > 0,
        "the damaged copy was not replaced by the bucket's object"
    );
    assert!(!copy.exists(), "the damaged copy was kept");

    // No copies at all (a new host with the same bucket): the restore fetches the packs it
    // reads whole, and they are copies again.
    fs::remove_dir_all(local.join("cache")).unwrap();
    let (tree, _, wholes) = restore_counting_gets(&pbs, "db/1", &to);
    assert_same_tree(&snap, &tree, "restore from the bucket alone");
    assert!(wholes > 0, "no pack fetched whole");
    assert_eq!(
        fs::read(&copy).expect("the big pack copied again"),
        get_object(&garage, &format!("copies/{key}"))
    );
    restores_from_copies_only("restore from the fetched copies");

    // With disk_cache_mib = 0 nothing is copied: ranged reads only.
    let cfg0 = tmp.path().join("pbs0.toml");
    let text = fs::read_to_string(tmp.path().join("pbs.toml")).unwrap();
    fs::write(&cfg0, format!("{text}disk_cache_mib = 0\n")).unwrap();
    fs::remove_dir_all(local.join("cache")).unwrap();
    let pbs0 = Pbs::with_config(&local, &cfg0);
    let (tree, gets, wholes) = restore_counting_gets(&pbs0, "db/1", &to);
    assert_same_tree(&snap, &tree, "restore without copies");
    assert!(gets > 0 && wholes == 0, "{gets} ranged, {wholes} whole");
    assert!(!local.join("cache").exists());
}

fn flipped_byte_case(tmp: &TempDir, pbs: &Pbs, store: &Store) {
    let src = tmp.path().join("src");
    let mut rng = Rng::new(7);
    // One large incompressible file dominates the first pack, so the middle
    // of that pack is inside one of its chunks.
    write(&src.join("big.bin"), &rng.bytes(900_000));
    write(&src.join("small.txt"), &rng.text(3_000));
    write(&src.join("sub/other.txt"), &rng.text(2_000));
    pbs.ok(&["ingest", "--source", "db", s(&src)]);
    let snap1 = snapshot(&src);
    write(&src.join("small.txt"), &rng.text(3_100));
    pbs.ok(&["ingest", "--source", "db", s(&src)]);
    let snap2 = snapshot(&src);
    assert_eq!(
        pbs.json(&["verify", "--full"])["problems"],
        Value::Array(vec![])
    );

    let all = store.packs();
    let (key, len) = all
        .iter()
        .max_by_key(|(_, len)| *len)
        .unwrap_or_else(|| panic!("no packs"));
    assert!(*len > 800_000, "{all:?}");
    store.flip(key, *len as usize / 2);

    let r = pbs.run(&["verify", "--full", "--json"]);
    assert_eq!(r.code(), Some(3), "{r:?}");
    let v = r.json();
    let problems = v["problems"].as_array().unwrap();
    let chunk_problems: Vec<&Value> = problems
        .iter()
        .filter(|p| p["object"].as_str().unwrap().starts_with("chunk "))
        .collect();
    let used_by = |p: &Value| -> BTreeSet<String> {
        p["used_by"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_str().unwrap().to_owned())
            .collect()
    };
    // The flipped byte is in one of big.bin's chunks. big.bin is unchanged
    // in db/2: both generations use that chunk, and nothing else does.
    // (A chunk stored as a delta against it would be reported on its own.)
    let p = *chunk_problems
        .iter()
        .find(|p| used_by(p).contains("db/1:big.bin"))
        .unwrap_or_else(|| panic!("no problem names db/1:big.bin: {v}"));
    let id = p["object"].as_str().unwrap().trim_start_matches("chunk ");
    assert_eq!(id.len(), 64, "{p}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{p}");
    let expected: BTreeSet<String> = ["db/1:big.bin", "db/2:big.bin"].map(String::from).into();
    assert_eq!(used_by(p), expected, "{p}");
    // Every damaged chunk names who needs it: files of these generations.
    let damaged_ids: Vec<&str> = chunk_problems
        .iter()
        .map(|p| p["object"].as_str().unwrap().trim_start_matches("chunk "))
        .collect();
    for p in &chunk_problems {
        let users = used_by(p);
        assert!(!users.is_empty(), "{p}");
        for u in users {
            let (g, path) = u.split_once(':').unwrap_or_else(|| panic!("{u}"));
            let snap = if g == "db/1" { &snap1 } else { &snap2 };
            assert!(snap.contains_key(path.as_bytes()), "{u}");
        }
    }
    // The pack no longer matches its name either.
    assert!(
        problems
            .iter()
            .any(|p| p["object"] == format!("pack {key}")),
        "{v}"
    );
    // Quick verify checks structure only: it does not read the damaged bytes.
    assert_eq!(pbs.run(&["verify"]).code(), Some(0));

    // Restore fails, names the file, and writes no wrong bytes.
    for gen in ["db/1", "db/2"] {
        let to = tmp.path().join(format!("restore-{}", &gen[3..]));
        let r = pbs.run(&["restore", gen, "--to", s(&to)]);
        assert_eq!(r.code(), Some(1), "{r:?}");
        assert!(
            r.stderr.contains("cannot restore") && damaged_ids.iter().any(|d| r.stderr.contains(d)),
            "{}",
            r.stderr
        );
        // A target is either absent or complete: nothing half-filled, no
        // hidden partial folder left beside it, and the retry fails for the
        // same reason instead of "exists and is not empty".
        assert!(!to.exists(), "{gen}: a half-filled target was left");
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".partial-"))
            .collect();
        assert!(left.is_empty(), "{gen}: partial folders left: {left:?}");
        let again = pbs.run(&["restore", gen, "--to", s(&to)]);
        assert_eq!(again.code(), Some(1), "{again:?}");
        assert!(again.stderr.contains("cannot restore"), "{}", again.stderr);
        // An empty folder given as the target is kept as it was.
        std::fs::create_dir(&to).unwrap();
        assert_eq!(pbs.run(&["restore", gen, "--to", s(&to)]).code(), Some(1));
        assert_eq!(std::fs::read_dir(&to).unwrap().count(), 0, "{gen}");
        std::fs::remove_dir(&to).unwrap();
    }
}

#[test]
fn quick_verify_reports_a_truncated_pack() {
    let tmp = TempDir::new().unwrap();
    let src = tmp.path().join("src");
    let mut rng = Rng::new(8);
    write(&src.join("big.bin"), &rng.bytes(500_000));
    write(&src.join("small.txt"), &rng.text(3_000));
    let pbs = Pbs::new(tmp.path().join("archive"));
    pbs.ok(&["ingest", "--source", "db", s(&src)]);
    let all = packs(&pbs.archive);
    assert_eq!(all.len(), 1);
    let (pack, len) = &all[0];
    let f = fs::OpenOptions::new().write(true).open(pack).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);

    let r = pbs.run(&["verify", "--json"]);
    assert_eq!(r.code(), Some(3), "{r:?}");
    let v = r.json();
    assert_eq!(v["full"], false);
    let problems = v["problems"].as_array().unwrap();
    let key = pack_key(&pbs.archive, pack);
    assert!(
        problems
            .iter()
            .any(|p| p["object"] == format!("pack {key}")),
        "{v}"
    );
    // Everything the generation needs was in that pack: its file list is
    // reported as missing.
    assert!(
        problems.iter().any(|p| p["used_by"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u == "db/1 (its file list)")),
        "{v}"
    );
    let text = pbs.run(&["verify"]);
    assert_eq!(text.code(), Some(3));
    assert!(text.stdout.contains(&key), "{}", text.stdout);
    // A restore fails instead of producing a partial copy that looks whole.
    let r = pbs.run(&["restore", "db/1", "--to", s(&tmp.path().join("r"))]);
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(!tmp.path().join("r/big.bin").exists());
}

fn pack_bytes(archive: &Path) -> u64 {
    packs(archive).iter().map(|(_, l)| l).sum()
}

#[test]
fn prune_keeps_what_the_rules_say_and_gc_frees_the_rest() {
    let tmp = TempDir::new().unwrap();
    let src = tmp.path().join("src");
    let pbs = Pbs::new(tmp.path().join("archive"));
    let mut rng = Rng::new(3);
    write(&src.join("common.txt"), &rng.text(100_000));
    // Three days: two on the 1st, one on the 2nd, three on the 3rd.
    let times = [
        "2026-03-01T10:00:00Z",
        "2026-03-01T20:00:00Z",
        "2026-03-02T09:00:00Z",
        "2026-03-03T08:00:00Z",
        "2026-03-03T12:00:00Z",
        "2026-03-03T18:00:00+00:00",
    ];
    let mut snaps: BTreeMap<String, Tree> = BTreeMap::new();
    for (i, t) in times.iter().enumerate() {
        // Every generation has 200 kB of its own, incompressible.
        write(&src.join("unique.bin"), &rng.bytes(200_000));
        write(&src.join("counter.txt"), format!("{i}\n").as_bytes());
        let v = pbs.json(&["ingest", "--source", "db", "--taken-at", t, s(&src)]);
        assert_eq!(v["seq"], i + 1);
        assert_eq!(v["taken_at"], t.replace("+00:00", "Z"));
        snaps.insert(format!("db/{}", i + 1), snapshot(&src));
    }
    assert_eq!(pbs.list().len(), 6);

    let rules = ["--keep-daily", "2", "--keep-last", "1"];
    let mut args = vec!["prune", "--dry-run"];
    args.extend(rules);
    let plan = pbs.json(&args);
    let items = plan["items"].as_array().unwrap();
    assert_eq!(items.len(), 6);
    let verdicts: BTreeMap<String, (bool, Vec<String>)> = items
        .iter()
        .map(|i| {
            let reasons = i["reasons"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap().to_owned())
                .collect();
            (
                i["generation"].as_str().unwrap().to_owned(),
                (i["keep"].as_bool().unwrap(), reasons),
            )
        })
        .collect();
    let expect = |keep: bool, reasons: &[&str]| {
        (
            keep,
            reasons.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
        )
    };
    let gone = ["not kept by any rule"];
    assert_eq!(verdicts["db/6"], expect(true, &["last 1/1", "daily 1/2"]));
    assert_eq!(verdicts["db/3"], expect(true, &["daily 2/2"]));
    for g in ["db/1", "db/2", "db/4", "db/5"] {
        assert_eq!(verdicts[g], expect(false, &gone), "{g}");
    }
    let item6 = items.iter().find(|i| i["generation"] == "db/6").unwrap();
    assert_eq!(
        (item6["source"].as_str(), item6["seq"].as_u64()),
        (Some("db"), Some(6))
    );
    // 2026-03-03T18:00:00Z
    assert_eq!(item6["taken_at_ns"], 1_772_560_800_000_000_000i64);

    // The dry run removed nothing.
    assert_eq!(pbs.list().len(), 6);

    let mut args = vec!["prune"];
    args.extend(rules);
    let applied = pbs.json(&args);
    assert_eq!(applied["items"], plan["items"]);
    assert_eq!(pbs.generations(), ["db/3", "db/6"]);

    // gc: the four removed generations' unique data goes.
    let before = pack_bytes(&pbs.archive);
    let dry = pbs.json(&["gc", "--dry-run"]);
    assert_eq!(
        pack_bytes(&pbs.archive),
        before,
        "gc --dry-run changed packs"
    );
    let gc = pbs.json(&["gc"]);
    assert_eq!(gc, dry);
    let freed = gc["freed_bytes"].as_u64().unwrap();
    assert!(freed >= 800_000, "{gc}");
    assert!(gc["dead_blobs"].as_u64().unwrap() >= 4, "{gc}");
    let after = pack_bytes(&pbs.archive);
    assert!(after + 800_000 <= before, "packs {before} -> {after} bytes");
    for key in gc["delete_packs"]
        .as_array()
        .unwrap()
        .iter()
        .chain(gc["repack_packs"].as_array().unwrap())
    {
        assert!(
            !pbs.archive.join(key.as_str().unwrap()).exists(),
            "{key} still there"
        );
    }

    // Nothing left to collect; what remains is whole.
    let again = pbs.json(&["gc", "--dry-run"]);
    assert_eq!(again["freed_bytes"], 0, "{again}");
    assert_eq!(again["dead_blobs"], 0, "{again}");
    assert_eq!(again["delete_packs"], Value::Array(vec![]), "{again}");
    assert_eq!(again["repack_packs"], Value::Array(vec![]), "{again}");
    for g in ["db/3", "db/6"] {
        assert_same_tree(&snaps[g], &restore_snapshot(&pbs, g, tmp.path()), g);
    }
    let v = pbs.json(&["verify", "--full"]);
    assert_eq!(v["problems"], Value::Array(vec![]), "{v}");
    assert_eq!(v["generations"], 2);
}

#[test]
fn a_delta_whose_base_generation_was_pruned_still_restores() {
    let tmp = TempDir::new().unwrap();
    let src = tmp.path().join("src");
    let pbs = Pbs::new(tmp.path().join("archive"));
    let mut rng = Rng::new(4);
    write(&src.join("big.txt"), &rng.text(3_000_000));
    write(&src.join("gone.bin"), &rng.bytes(2_000_000));
    let v1 = pbs.json(&["ingest", "--source", "db", s(&src)]);

    insert_at(&src.join("big.txt"), 1_500_000, b"a small change\n");
    fs::remove_file(src.join("gone.bin")).unwrap();
    let snap2 = snapshot(&src);
    let v2 = pbs.json(&["ingest", "--source", "db", s(&src)]);
    assert!(v2["new_deltas"].as_u64().unwrap() >= 1, "{v2}");
    let (a1, a2) = (
        v1["added_bytes"].as_u64().unwrap(),
        v2["added_bytes"].as_u64().unwrap(),
    );
    assert!(
        a2 * 50 < a1,
        "v2 added {a2} bytes, v1 {a1}: not stored as a delta"
    );

    let p = pbs.json(&["prune", "--keep-last", "1"]);
    let removed: Vec<&str> = p["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["keep"] == false)
        .map(|i| i["generation"].as_str().unwrap())
        .collect();
    assert_eq!(removed, ["db/1"]);
    assert_eq!(pbs.generations(), ["db/2"]);

    // db/1's pack is mostly dead (gone.bin) but holds db/2's delta bases:
    // gc rewrites it with the live blobs, bases included.
    let gc = pbs.json(&["gc"]);
    assert_eq!(gc["repack_packs"].as_array().unwrap().len(), 1, "{gc}");
    assert!(gc["freed_bytes"].as_u64().unwrap() >= 2_000_000, "{gc}");
    let old = gc["repack_packs"][0].as_str().unwrap();
    assert!(!pbs.archive.join(old).exists());

    assert_same_tree(&snap2, &restore_snapshot(&pbs, "db/2", tmp.path()), "db/2");
    let v = pbs.json(&["verify", "--full"]);
    assert_eq!(v["problems"], Value::Array(vec![]), "{v}");
}

#[test]
fn gc_keeps_generations_whose_packs_are_tiny() {
    // A generation that changes little adds one tiny pack: its file list as
    // a delta of a few bytes (and maybe a small file). gc used to count such
    // a pack's fixed overhead as dead, rewrite it into the same bytes (the
    // same pack) and then delete it, with the generation's file list.
    // Nothing is pruned here, so nothing is dead and gc must change nothing.
    let tmp = TempDir::new().unwrap();
    let src = tmp.path().join("src");
    let pbs = Pbs::new(tmp.path().join("archive"));
    let mut rng = Rng::new(5);
    write(&src.join("common.txt"), &rng.text(20_000));
    write(&src.join("small.txt"), b"hi\n");
    write(&src.join("other.txt"), &rng.text(1_000));
    write(&src.join("big.bin"), &rng.bytes(300_000));
    pbs.ok(&["ingest", "--source", "db", s(&src)]);
    let mut snaps = vec![snapshot(&src)];
    let changes: [(&str, &dyn Fn()); 5] = [
        ("chmod to the same mode", &|| {
            fs::set_permissions(src.join("small.txt"), fs::Permissions::from_mode(0o644)).unwrap()
        }),
        ("delete a file", &|| {
            fs::remove_file(src.join("other.txt")).unwrap()
        }),
        ("add a small file", &|| {
            write(&src.join("new.txt"), b"new\n")
        }),
        ("append a line", &|| {
            write(&src.join("small.txt"), b"hi\nthere\n")
        }),
        ("delete the big file", &|| {
            fs::remove_file(src.join("big.bin")).unwrap()
        }),
    ];
    for (what, change) in changes {
        change();
        pbs.ok(&["ingest", "--source", "db", s(&src)]);
        snaps.push(snapshot(&src));
        let packs_before = packs(&pbs.archive);
        let gc = pbs.json(&["gc"]);
        let v = pbs.json(&["verify", "--full"]);
        assert_eq!(
            v["problems"],
            Value::Array(vec![]),
            "{what}: after {gc}: {v}"
        );
        assert_eq!(gc["dead_blobs"], 0, "{what}: {gc}");
        assert_eq!(gc["freed_bytes"], 0, "{what}: {gc}");
        assert_eq!(gc["repack_packs"], Value::Array(vec![]), "{what}: {gc}");
        assert_eq!(packs(&pbs.archive), packs_before, "{what}");
    }
    assert!(
        packs(&pbs.archive).iter().any(|(_, l)| *l < 300),
        "no tiny pack was made"
    );
    for (i, snap) in snaps.iter().enumerate() {
        let g = format!("db/{}", i + 1);
        assert_same_tree(snap, &restore_snapshot(&pbs, &g, tmp.path()), &g);
    }
}

#[test]
fn gc_keeps_the_delta_bases_of_dead_chunks_it_leaves_in_place() {
    // db/2 stores a.txt's edit as a delta against db/1's chunks, in a pack
    // with a large live file. Once db/1 and db/2 are pruned, that delta is
    // dead but its pack is mostly live, so gc leaves it there, and it stays
    // in the index. Its bases must then stay too: the archive would verify
    // as damaged, and an ingest that meets the same content again reuses
    // the chunk instead of storing it.
    let tmp = TempDir::new().unwrap();
    let src = tmp.path().join("src");
    let pbs = Pbs::new(tmp.path().join("archive"));
    let mut rng = Rng::new(6);
    write(&src.join("a.txt"), &rng.text(400_000));
    write(&src.join("r1.bin"), &rng.bytes(1_500_000));
    pbs.ok(&["ingest", "--source", "db", s(&src)]);
    insert_at(&src.join("a.txt"), 100_000, b"EDIT\n");
    let a2 = fs::read(src.join("a.txt")).unwrap();
    fs::remove_file(src.join("r1.bin")).unwrap();
    write(&src.join("live.bin"), &rng.bytes(1_500_000));
    let v2 = pbs.json(&["ingest", "--source", "db", s(&src)]);
    assert!(v2["new_deltas"].as_u64().unwrap() >= 1, "{v2}");
    fs::remove_file(src.join("a.txt")).unwrap();
    write(&src.join("fresh.bin"), &rng.bytes(100_000));
    pbs.ok(&["ingest", "--source", "db", s(&src)]);
    pbs.ok(&["prune", "--keep-last", "1"]);
    let gc = pbs.json(&["gc"]);
    assert!(gc["dead_blobs"].as_u64().unwrap() > 0, "{gc}");
    let v = pbs.json(&["verify", "--full"]);
    assert_eq!(v["problems"], Value::Array(vec![]), "after {gc}: {v}");

    // The same content comes back: the new generation restores exactly.
    fs::write(src.join("a.txt"), &a2).unwrap();
    let snap4 = snapshot(&src);
    pbs.ok(&["ingest", "--source", "db", s(&src)]);
    assert_same_tree(&snap4, &restore_snapshot(&pbs, "db/4", tmp.path()), "db/4");
    let v = pbs.json(&["verify", "--full"]);
    assert_eq!(v["problems"], Value::Array(vec![]), "{v}");
}

/// Copy a folder tree (files and folders only: archives have nothing else).
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (a, b) = (e.path(), to.join(e.file_name()));
        if e.file_type().unwrap().is_dir() {
            copy_tree(&a, &b);
        } else {
            fs::copy(&a, &b).unwrap();
        }
    }
}

#[test]
fn gc_after_an_interrupted_gc_keeps_every_live_chunk() {
    // A gc killed after writing its new packs but before deleting the old
    // ones leaves both. The next gc writes the same live blobs again, which
    // gives a pack identical (same name) to the leftover one: that pack must
    // not then be deleted as a leftover. The leftover is only treated as such
    // when its name sorts after the pack it copies, so try seeds until it does.
    for seed in 0..40 {
        let tmp = TempDir::new().unwrap();
        let src = tmp.path().join("src");
        let pbs = Pbs::new(tmp.path().join("archive"));
        let mut rng = Rng::new(100 + seed);
        write(&src.join("common.txt"), &rng.text(20_000));
        write(&src.join("big.bin"), &rng.bytes(1_000_000));
        pbs.ok(&["ingest", "--source", "db", s(&src)]);
        fs::remove_file(src.join("big.bin")).unwrap();
        let snap2 = snapshot(&src);
        pbs.ok(&["ingest", "--source", "db", s(&src)]);
        pbs.ok(&["prune", "--keep-last", "1"]);

        // Run gc to completion on a copy; put the packs it wrote into the
        // original: the state a gc killed just before its deletions leaves.
        let copy = Pbs::new(tmp.path().join("copy"));
        copy_tree(&pbs.archive, &copy.archive);
        let before: BTreeSet<String> = packs(&pbs.archive)
            .iter()
            .map(|(p, _)| pack_key(&pbs.archive, p))
            .collect();
        let gc = copy.json(&["gc"]);
        let repacked = gc["repack_packs"].as_array().unwrap();
        assert_eq!(repacked.len(), 1, "{gc}");
        let new: Vec<String> = packs(&copy.archive)
            .iter()
            .map(|(p, _)| pack_key(&copy.archive, p))
            .filter(|k| !before.contains(k))
            .collect();
        assert_eq!(new.len(), 1, "{new:?}");
        if new[0].as_str() < repacked[0].as_str().unwrap() {
            continue;
        }
        let dst = pbs.archive.join(&new[0]);
        fs::create_dir_all(dst.parent().unwrap()).unwrap();
        fs::copy(copy.archive.join(&new[0]), &dst).unwrap();

        pbs.ok(&["gc"]);
        let v = pbs.json(&["verify", "--full"]);
        assert_eq!(v["problems"], Value::Array(vec![]), "seed {seed}: {v}");
        assert_same_tree(&snap2, &restore_snapshot(&pbs, "db/2", tmp.path()), "db/2");
        // The archive ends as the uninterrupted gc left the copy.
        let keys = |a: &Path| -> BTreeSet<String> {
            packs(a).iter().map(|(p, _)| pack_key(a, p)).collect()
        };
        assert_eq!(keys(&pbs.archive), keys(&copy.archive));
        return;
    }
    panic!("no seed gave a leftover pack that sorts after the pack it copies");
}
