use super::*;
use crate::id::{GenId, SourceName};
use crate::ingest::IngestOptions;
use crate::restore::prepare_target;
use proptest::prelude::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

/// Reproducible bytes that do not compress away (xorshift).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Two generations of one source, the first restored in full in `prev`.
struct Two {
    t: tempfile::TempDir,
    ar: Archive,
    gen2: GenId,
    n1: Vec<Node>,
    n2: Vec<Node>,
    prev: PathBuf,
    staged: u32,
}

fn write_tree(dir: &Path, files: &[(&str, Vec<u8>)]) {
    if dir.exists() {
        fs::remove_dir_all(dir).unwrap();
    }
    fs::create_dir_all(dir).unwrap();
    for (name, data) in files {
        let p = dir.join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
    }
}

fn two(v1: &[(&str, Vec<u8>)], v2: &[(&str, Vec<u8>)]) -> Two {
    let t = tempfile::tempdir().unwrap();
    let ar = Archive::init(&t.path().join("ar")).unwrap();
    let src = t.path().join("src");
    let s = SourceName::new("t").unwrap();
    let opts = IngestOptions {
        reread: true,
        ..Default::default()
    };
    write_tree(&src, v1);
    let r1 = ar.ingest(&s, &src, &opts).unwrap().record;
    write_tree(&src, v2);
    let r2 = ar.ingest(&s, &src, &opts).unwrap().record;
    let prev = t.path().join("prev");
    ar.restore(&r1.id(), &prev).unwrap();
    Two {
        n1: ar.manifest(&r1).unwrap(),
        n2: ar.manifest(&r2).unwrap(),
        gen2: r2.id(),
        ar,
        t,
        prev,
        staged: 0,
    }
}

impl Two {
    /// Stage the second generation, taking from `prev` (with `nodes` as its
    /// list) or from nothing.
    fn stage(&mut self, nodes: Option<&[Node]>) -> (PathBuf, Result<CheckedReport>) {
        self.staged += 1;
        let to = self.t.path().join(format!("stage{}", self.staged));
        prepare_target(&to).unwrap();
        let prev = nodes.map(|nodes| Previous {
            dir: &self.prev,
            nodes,
        });
        let r = self.ar.restore_checked(&self.n2, &to, prev);
        (to, r)
    }

    /// `dir` holds what a fresh full restore of the second generation does:
    /// the same entries, bytes, modes and modification times.
    fn assert_full(&self, dir: &Path) {
        let full = self.t.path().join("full");
        if !full.exists() {
            self.ar.restore(&self.gen2, &full).unwrap();
        }
        for n in &self.n2 {
            let rel = String::from_utf8_lossy(&n.path).into_owned();
            let (a, b) = (full.join(&rel), dir.join(&rel));
            let (ma, mb) = (
                fs::symlink_metadata(&a).unwrap(),
                fs::symlink_metadata(&b).unwrap(),
            );
            assert_eq!(ma.mode(), mb.mode(), "{rel}");
            if n.kind == NodeKind::File {
                assert_eq!(ma.mtime_nsec(), mb.mtime_nsec(), "{rel}");
                assert!(fs::read(&a).unwrap() == fs::read(&b).unwrap(), "{rel}");
            }
        }
        let count = |d: &Path| walk_count(d);
        assert_eq!(count(&full), count(dir));
    }
}

fn walk_count(d: &Path) -> usize {
    fs::read_dir(d)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            1 + if e.file_type().unwrap().is_dir() {
                walk_count(&e.path())
            } else {
                0
            }
        })
        .sum()
}

/// A 2 MB file edited in two places, an unchanged file, a new one.
fn edited() -> Two {
    let big = noise(1, 2 << 20);
    let mut big2 = big.clone();
    big2.splice(700_000..700_000, noise(2, 1000));
    big2[1_500_000..1_500_100].copy_from_slice(&noise(3, 100));
    two(
        &[("big", big), ("d/same", noise(4, 300_000))],
        &[
            ("big", big2),
            ("d/same", noise(4, 300_000)),
            ("d/new", noise(5, 10)),
        ],
    )
}

#[test]
fn takes_unchanged_chunks_from_the_earlier_restore() {
    let mut t = edited();
    let n1 = t.n1.clone();
    let (dir, r) = t.stage(Some(&n1));
    let r = r.unwrap();
    t.assert_full(&dir);
    assert_eq!(r.rebuilt, 0);
    let total: u64 = t.n2.iter().map(|n| n.size).sum();
    assert!(r.reused_bytes > total / 2, "{r:?}");
    assert!(r.decoded_bytes < total / 2, "{r:?}");
    assert_eq!(r.reused_bytes + r.decoded_bytes, total, "{r:?}");

    // Without an earlier restore: everything decoded, the same result.
    let (dir, r) = t.stage(None);
    let r = r.unwrap();
    t.assert_full(&dir);
    assert_eq!((r.reused_bytes, r.decoded_bytes, r.rebuilt), (0, total, 0));
}

#[test]
fn an_earlier_copy_edited_in_place_is_not_trusted() {
    let mut t = edited();
    // Change bytes the new generation shares with the old one, keeping the
    // size and the modification time: only the digest can tell.
    let p = t.prev.join("big");
    let before = fs::metadata(&p).unwrap();
    let mut data = fs::read(&p).unwrap();
    data[100] ^= 0xff;
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&p, &data).unwrap();
    let f = File::options().write(true).open(&p).unwrap();
    f.set_modified(before.modified().unwrap()).unwrap();
    drop(f);
    let n1 = t.n1.clone();
    let (dir, r) = t.stage(Some(&n1));
    let r = r.unwrap();
    t.assert_full(&dir);
    assert_eq!(r.rebuilt, 1, "{r:?}");
}

#[test]
fn an_earlier_copy_replaced_or_cut_is_not_used() {
    let mut t = edited();
    let n1 = t.n1.clone();
    // A FIFO in place of a file must not stall the restore; a symlink to a
    // file with the right bytes is not followed; a shorter file is skipped.
    let big = t.prev.join("big");
    let keep = t.t.path().join("elsewhere");
    fs::rename(&big, &keep).unwrap();
    let c = std::ffi::CString::new(big.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let (dir, r) = t.stage(Some(&n1));
    t.assert_full(&dir);
    let r = r.unwrap();
    assert_eq!(r.reused_bytes, 300_000, "only d/same: {r:?}");

    fs::remove_file(&big).unwrap();
    std::os::unix::fs::symlink(&keep, &big).unwrap();
    let (dir, r) = t.stage(Some(&n1));
    t.assert_full(&dir);
    assert_eq!(r.unwrap().reused_bytes, 300_000);

    fs::remove_file(&big).unwrap();
    fs::copy(&keep, &big).unwrap();
    fs::set_permissions(&big, fs::Permissions::from_mode(0o644)).unwrap();
    let f = File::options().write(true).open(&big).unwrap();
    f.set_len(1 << 20).unwrap();
    drop(f);
    let (dir, r) = t.stage(Some(&n1));
    t.assert_full(&dir);
    assert_eq!(r.unwrap().reused_bytes, 300_000);

    // The earlier restore gone altogether.
    fs::remove_dir_all(&t.prev).unwrap();
    let (dir, r) = t.stage(Some(&n1));
    t.assert_full(&dir);
    assert_eq!(r.unwrap().reused_bytes, 0);
}

#[test]
fn a_wrong_list_for_the_earlier_copy_costs_time_not_correctness() {
    let mut t = edited();
    // The folder holds the first generation; say it holds the second, and
    // give its big file the size and time the second one lists, so that
    // only the content is wrong.
    let n2 = t.n2.clone();
    let big = n2.iter().find(|n| n.path == b"big").unwrap();
    let p = t.prev.join("big");
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    let f = File::options().write(true).open(&p).unwrap();
    f.set_len(big.size).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(big.mtime_ns as u64))
        .unwrap();
    drop(f);
    let (dir, r) = t.stage(Some(&n2));
    let r = r.unwrap();
    t.assert_full(&dir);
    assert_eq!(r.rebuilt, 1, "big does not match: {r:?}");
}

#[test]
fn a_damaged_chunk_is_an_error_that_names_it() {
    let mut t = edited();
    // A chunk only the second generation has (so it is decoded, not copied).
    let old: Vec<ChunkId> =
        t.n1.iter()
            .flat_map(|n| n.chunk_list())
            .map(|c| c.0)
            .collect();
    let id =
        t.n2.iter()
            .flat_map(|n| n.chunk_list())
            .map(|c| c.0)
            .find(|id| !old.contains(id))
            .unwrap();
    let (pack, e) = {
        let idx = t.ar.index();
        let info = idx.get(&id).unwrap();
        (idx.packs[info.pack as usize], info.entry.clone())
    };
    let path = t.t.path().join("ar").join(crate::pack::key(&pack));
    let mut bytes = fs::read(&path).unwrap();
    bytes[e.offset as usize + e.stored_len as usize / 2] ^= 0x55;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&path, &bytes).unwrap();
    let n1 = t.n1.clone();
    let (dir, r) = t.stage(Some(&n1));
    let e = r.unwrap_err().to_string();
    assert!(e.contains(&id.to_string()), "{e}");
    assert!(!dir.join("big").exists(), "a file that failed is removed");
}

#[test]
fn holes_stay_holes_when_taken_from_the_earlier_copy() {
    let mut sparse = vec![0u8; 16 << 20];
    sparse.extend_from_slice(&noise(6, 200_000));
    let mut sparse2 = sparse.clone();
    sparse2.extend_from_slice(b"more");
    let mut t = two(&[("s", sparse.clone())], &[("s", sparse2)]);
    // The full restore of the first generation left the zeros as holes.
    assert!(fs::metadata(t.prev.join("s")).unwrap().blocks() * 512 < 4 << 20);
    let n1 = t.n1.clone();
    let (dir, r) = t.stage(Some(&n1));
    let r = r.unwrap();
    t.assert_full(&dir);
    assert!(r.reused_bytes >= 16 << 20, "{r:?}");
    let blocks = fs::metadata(dir.join("s")).unwrap().blocks();
    assert!(blocks * 512 < 4 << 20, "{blocks} blocks allocated");
}

#[test]
fn copies_land_where_asked_in_the_kernel_or_through_a_buffer() {
    let t = tempfile::tempdir().unwrap();
    let data = noise(7, 3 << 20);
    let src = t.path().join("src");
    fs::write(&src, &data).unwrap();
    let src = File::open(&src).unwrap();
    for buffered in [false, true] {
        let dst = t.path().join(format!("dst{buffered}"));
        let dst = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&dst)
            .unwrap();
        dst.set_len(4 << 20).unwrap();
        let (from, to, len) = (1_000_001, 2_500_003, 1_200_007);
        if buffered {
            copy_buffered(&src, &dst, from, to, len).unwrap();
        } else {
            copy_range(&src, &dst, from, to, len).unwrap();
        }
        let mut got = vec![0u8; 4 << 20];
        dst.read_exact_at(&mut got, 0).unwrap();
        let mut want = vec![0u8; 4 << 20];
        want[to as usize..(to + len) as usize]
            .copy_from_slice(&data[from as usize..(from + len) as usize]);
        assert!(got == want, "buffered: {buffered}");
        // Past the end of the source: an error, not zeros.
        assert!(copy_buffered(&src, &dst, 3 << 20, 0, 10).is_err());
        assert!(copy_data(&src, &dst, 3 << 20, 0, 10).is_err());
    }
}

#[derive(Clone, Debug)]
enum Edit {
    Insert(usize, u16),
    Delete(usize, u16),
    Overwrite(usize, u16),
}

#[derive(Clone, Debug)]
enum Tamper {
    None,
    /// Flip a byte, keeping the size and modification time.
    Flip(usize),
    Truncate(usize),
    Remove,
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 1..5000u16).prop_map(|(a, b)| Edit::Insert(a, b)),
        (any::<usize>(), 1..5000u16).prop_map(|(a, b)| Edit::Delete(a, b)),
        (any::<usize>(), 1..5000u16).prop_map(|(a, b)| Edit::Overwrite(a, b)),
    ]
}

fn tamper() -> impl Strategy<Value = Tamper> {
    prop_oneof![
        Just(Tamper::None),
        any::<usize>().prop_map(Tamper::Flip),
        any::<usize>().prop_map(Tamper::Truncate),
        Just(Tamper::Remove),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    #[test]
    fn same_bytes_as_a_full_restore(
        seed in any::<u64>(),
        len in 100_000usize..1_500_000,
        edits in proptest::collection::vec(edit(), 0..6),
        tampers in proptest::collection::vec(tamper(), 2),
    ) {
        let a = noise(seed, len);
        let mut b = a.clone();
        for (k, e) in edits.iter().enumerate() {
            let at = |x: usize| x % (b.len() + 1);
            match *e {
                Edit::Insert(x, n) => {
                    let x = at(x);
                    b.splice(x..x, noise(seed ^ k as u64, n as usize));
                }
                Edit::Delete(x, n) => {
                    let x = at(x);
                    let end = (x + n as usize).min(b.len());
                    b.drain(x..end);
                }
                Edit::Overwrite(x, n) => {
                    let x = at(x);
                    let end = (x + n as usize).min(b.len());
                    let fresh = noise(!seed ^ k as u64, end - x);
                    b[x..end].copy_from_slice(&fresh);
                }
            }
        }
        let small = noise(seed.rotate_left(7), 5000);
        let mut t = two(
            &[("f", a.clone()), ("g", small.clone())],
            &[("f", b), ("g", small)],
        );
        for (name, tp) in ["f", "g"].iter().zip(&tampers) {
            let p = t.prev.join(name);
            let m = fs::metadata(&p).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
            match *tp {
                Tamper::None => {}
                Tamper::Flip(x) => {
                    let mut d = fs::read(&p).unwrap();
                    let i = x % d.len();
                    d[i] ^= 1;
                    fs::write(&p, &d).unwrap();
                    let f = File::options().write(true).open(&p).unwrap();
                    f.set_modified(m.modified().unwrap()).unwrap();
                }
                Tamper::Truncate(x) => {
                    let f = File::options().write(true).open(&p).unwrap();
                    f.set_len(x as u64 % m.len()).unwrap();
                }
                Tamper::Remove => fs::remove_file(&p).unwrap(),
            }
        }
        let n1 = t.n1.clone();
        let (dir, r) = t.stage(Some(&n1));
        let r = r.unwrap();
        t.assert_full(&dir);
        let flipped = tampers.iter().filter(|x| matches!(x, Tamper::Flip(_))).count();
        // A flipped byte in a range that was taken makes a rebuild; one in
        // a range that changed anyway may not.
        prop_assert!(r.rebuilt as usize <= flipped, "{:?}", r);
    }
}
