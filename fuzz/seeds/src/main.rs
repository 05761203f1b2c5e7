//! Writes seed corpora for the fuzz targets into `DIR/<target>/` (default `corpus`):
//! a real record, manifests (with the tricky shapes a hostile list tries), packs built
//! by the archive's own writer, and request bodies. `make fuzz` runs it first.

use std::path::Path;

use archive::chunker::Features;
use archive::id::{ChunkId, Epoch, FileDigest, Seq, SourceName};
use archive::manifest::{encode_manifest, ChunkRef, GenRecord, GenStats, Node, NodeKind};
use archive::pack::{Entry, PackWriter};

fn node(path: &str, kind: NodeKind, data: &[u8], target: &str) -> Node {
    Node {
        path: path.as_bytes().to_vec(),
        kind,
        mode: 0o644,
        mtime_ns: 1,
        size: if kind == NodeKind::File {
            data.len() as u64
        } else {
            0
        },
        digest: (kind == NodeKind::File).then(|| FileDigest::of(data)),
        chunks: vec![],
        target: target.as_bytes().to_vec(),
        ino: 7,
        ctime_ns: 2,
    }
}

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
    let p = d.join(name);
    std::fs::write(&p, bytes).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "corpus".into());
    let dir = Path::new(&dir);

    let rec = GenRecord {
        source: SourceName::new("db").expect("valid name"),
        seq: Seq(3),
        epoch: Epoch(2),
        taken_at_ns: 1_700_000_000_000_000_000,
        committed_at_ns: 1_700_000_000_100_000_000,
        label: Some("tx-17".into()),
        stats: GenStats {
            files: 2,
            dirs: 1,
            ..GenStats::default()
        },
        manifest_len: 300,
        manifest_digest: FileDigest::of(b"m"),
        manifest_chunks: vec![
            ChunkRef(ChunkId::of(b"a"), 200),
            ChunkRef(ChunkId::of(b"b"), 100),
        ],
    };
    let bytes = rec.encode().expect("record encodes");
    write(dir, "gen_record", "record", &bytes);
    // The CBOR body alone: the target wraps it with magic and checksum.
    write(dir, "gen_record", "body", &bytes[8..bytes.len() - 32]);

    let lists: Vec<(&str, Vec<Node>)> = vec![
        (
            "plain",
            vec![
                node("d", NodeKind::Dir, b"", ""),
                node("d/f", NodeKind::File, b"hello", ""),
                node("d/l", NodeKind::Symlink, b"", "/etc/passwd"),
                node("e", NodeKind::File, b"", ""),
            ],
        ),
        ("dotdot", vec![node("../x", NodeKind::File, b"x", "")]),
        (
            "under_link",
            vec![
                node("a", NodeKind::Symlink, b"", "/etc"),
                node("a/passwd", NodeKind::File, b"x", ""),
            ],
        ),
        (
            "twice",
            vec![
                node("a", NodeKind::Dir, b"", ""),
                node("a", NodeKind::File, b"x", ""),
            ],
        ),
    ];
    for (name, nodes) in lists {
        let m = encode_manifest(&nodes).expect("manifest encodes");
        write(dir, "manifest", name, &m);
    }

    let mut w = PackWriter::new();
    let a = ChunkId::of(b"a");
    let b = ChunkId::of(b"b");
    let e = |data: &[u8], bases: Vec<ChunkId>| Entry {
        id: ChunkId::of(data),
        depth: bases.len().min(1) as u8,
        bases,
        offset: 0,
        stored_len: 0,
        raw_len: data.len() as u32,
        features: Features([1, 2, 3, 4, 5, 6]),
    };
    w.add(e(b"a", vec![]), b"AAAA");
    w.add(e(b"b", vec![a]), b"BB");
    w.add(e(b"c", vec![a, b, a]), b"C");
    let (_, pack, _) = w.finish();
    write(dir, "pack", "three", &pack);

    let bodies: [(u8, &str); 8] = [
        (0, r#"{"node":"main","epoch":3,"role":"MAIN"}"#),
        (
            1,
            r#"{"node":"c1","force":false,"epoch":3,"by":"page","password":"pw"}"#,
        ),
        (1, r#"{"node":"c1"}"#),
        (2, r#"{"to":"c1"}"#),
        (3, r#"{"node":"old"}"#),
        (4, r#"{"epoch":18446744073709551615}"#),
        (5, r#"{"role":"BACKUP","epoch":0}"#),
        (6, r#"{"role":"MAIN","epoch":1,"status":"Leader"}"#),
    ];
    for (i, (pick, body)) in bodies.iter().enumerate() {
        let mut v = vec![*pick];
        v.extend_from_slice(body.as_bytes());
        write(dir, "wire_json", &format!("body{i}"), &v);
    }
    println!("seeds written under {}", dir.display());
}
