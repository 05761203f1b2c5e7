use super::*;
use crate::id::SourceName;
use crate::ingest::IngestOptions;
use std::path::Path;

fn write(dir: &Path, name: &str, data: &[u8]) {
    std::fs::write(dir.join(name), data).unwrap();
}

fn rows(n: u32, tag: &str) -> Vec<u8> {
    (0..n)
        .flat_map(|i| format!("{i}\t{tag}\t{:x}\n", i.wrapping_mul(2654435761)).into_bytes())
        .collect()
}

/// Move one generation from `a` to `b` the way the daemons do.
fn transfer(a: &Archive, b: &Archive, gen: &GenId) -> (GenRecord, u64, usize) {
    let mut inc = Incoming::new(&a.record_bytes(gen).unwrap()).unwrap();
    let mut rounds = 0;
    loop {
        let need = inc.missing(b).unwrap();
        if need.is_empty() {
            break;
        }
        rounds += 1;
        assert!(rounds < 20, "no progress");
        let pack = a.export_blobs(&need).unwrap();
        assert_eq!(inc.add_pack(&pack).unwrap(), need.len());
    }
    let sent = inc.bytes_received;
    (b.commit_incoming(inc, Some(gen.seq)).unwrap(), sent, rounds)
}

#[test]
fn second_transfer_carries_only_the_delta() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let mut data = rows(400_000, "a");
    write(&src, "dump.sql", &data);
    write(&src, "small", b"hello");
    let a = Archive::init(&t.path().join("a")).unwrap();
    let b = Archive::init(&t.path().join("b")).unwrap();
    let s = SourceName::new("db").unwrap();
    let g1 = a
        .ingest(&s, &src, &IngestOptions::default())
        .unwrap()
        .record
        .id();
    let (r1, sent1, _) = transfer(&a, &b, &g1);
    assert_eq!(r1.seq, g1.seq);
    // A few scattered edits.
    for at in [1_000_000usize, 4_000_000, 7_000_000] {
        data[at] = b'#';
    }
    write(&src, "dump.sql", &data);
    let g2 = a
        .ingest(&s, &src, &IngestOptions::default())
        .unwrap()
        .record
        .id();
    let (_, sent2, _) = transfer(&a, &b, &g2);
    assert!(
        sent2 * 50 < sent1,
        "second transfer {sent2} B vs first {sent1} B"
    );
    let out = t.path().join("out");
    b.restore(&g2, &out).unwrap();
    assert_eq!(std::fs::read(out.join("dump.sql")).unwrap(), data);
    assert!(b.verify(true).unwrap().is_clean());
}

#[test]
fn corrupted_blobs_are_refused_and_nothing_is_stored() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    write(&src, "f", &rows(50_000, "x"));
    let a = Archive::init(&t.path().join("a")).unwrap();
    let b = Archive::init(&t.path().join("b")).unwrap();
    let s = SourceName::new("db").unwrap();
    let g = a
        .ingest(&s, &src, &IngestOptions::default())
        .unwrap()
        .record
        .id();
    let mut inc = Incoming::new(&a.record_bytes(&g).unwrap()).unwrap();
    let r = (|| -> Result<GenRecord> {
        loop {
            let need = inc.missing(&b)?;
            if need.is_empty() {
                break;
            }
            let mut pack = a.export_blobs(&need)?;
            pack[20] ^= 0x40; // inside the first payload
            inc.add_pack(&pack)?;
        }
        b.commit_incoming(inc, None)
    })();
    assert!(matches!(r, Err(Error::DamagedChunk(..))), "{r:?}");
    assert!(b.generations().unwrap().is_empty());
    assert!(b.backend().list("packs").unwrap().is_empty());
}

#[test]
fn a_damaged_chunk_already_here_is_named_when_a_digest_does_not_match() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let mut data = rows(400_000, "a");
    write(&src, "dump.sql", &data);
    let a = Archive::init(&t.path().join("a")).unwrap();
    let b = Archive::init(&t.path().join("b")).unwrap();
    let s = SourceName::new("db").unwrap();
    let opts = IngestOptions::default();
    let g1 = a.ingest(&s, &src, &opts).unwrap().record.id();
    transfer(&a, &b, &g1);
    // The file's first chunk, which the next generation shares, is
    // damaged in `b`: it is not received again, so only the file's digest
    // can notice, and the error must still name the chunk.
    let first = b.manifest(&b.record(&g1).unwrap()).unwrap()[0].chunk_list()[0].0;
    let (pack, e) = {
        let idx = b.index();
        let info = idx.get(&first).unwrap();
        (idx.packs[info.pack as usize], info.entry.clone())
    };
    let path = t.path().join("b").join(crate::pack::key(&pack));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[e.offset as usize + e.stored_len as usize / 2] ^= 0x55;
    let mut perm = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o644);
    std::fs::set_permissions(&path, perm).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    data[4_000_000] = b'#';
    write(&src, "dump.sql", &data);
    let g2 = a.ingest(&s, &src, &opts).unwrap().record.id();
    let mut inc = Incoming::new(&a.record_bytes(&g2).unwrap()).unwrap();
    loop {
        let need = inc.missing(&b).unwrap();
        if need.is_empty() {
            break;
        }
        assert!(!need.contains(&first));
        inc.add_pack(&a.export_blobs(&need).unwrap()).unwrap();
    }
    let r = b.commit_incoming(inc, None);
    assert!(
        matches!(&r, Err(Error::DamagedChunk(id, _)) if *id == first),
        "{r:?}"
    );
    assert_eq!(b.generations().unwrap(), vec![g1]);
}

#[test]
fn bad_records_and_packs_are_errors() {
    assert!(Incoming::new(b"not a record").is_err());
    let mut w = PackWriter::new();
    w.add(
        Entry {
            id: ChunkId::of(b"x"),
            bases: vec![],
            offset: 0,
            stored_len: 0,
            raw_len: 1,
            depth: 0,
            features: Default::default(),
        },
        b"zz",
    );
    let (_, mut bytes, _) = w.finish();
    let n = bytes.len();
    bytes[n - 30] ^= 1; // trailer
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("s");
    std::fs::create_dir(&src).unwrap();
    let a = Archive::init(&t.path().join("a")).unwrap();
    let g = a
        .ingest(
            &SourceName::new("x").unwrap(),
            &src,
            &IngestOptions::default(),
        )
        .unwrap()
        .record
        .id();
    let mut inc = Incoming::new(&a.record_bytes(&g).unwrap()).unwrap();
    assert!(inc.add_pack(&bytes).is_err());
    assert!(inc.add_pack(b"short").is_err());
}
