//! Generation records and manifests. See FORMAT.md.
//!
//! A generation is two things: a small *record* file (`gens/SOURCE/SEQ.gen`)
//! whose creation is the commit point, and a *manifest* (the file list) stored
//! as ordinary chunks, so that a manifest that changes little from the previous
//! one is delta-compressed like any other data.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::chunker::MAX_CHUNK;
use crate::error::{corrupt, Result};
use crate::id::{ChunkId, Epoch, FileDigest, GenId, Seq, SourceName};

pub const GEN_MAGIC: &[u8; 8] = b"PBGEN\0\0\x01";
pub const MANIFEST_MAGIC: &[u8; 8] = b"PBMAN\0\0\x01";

/// Largest generation record (its bytes) read from disk or the wire. A real one is a few
/// hundred bytes plus about 40 per file-list chunk: a [`MAX_MANIFEST_BYTES`] list needs
/// under 10 KiB.
pub const MAX_RECORD_BYTES: usize = 1 << 20;
/// Largest file list (its encoded bytes, `manifest_len`).
pub const MAX_MANIFEST_BYTES: u64 = 128 << 20;
/// Most entries in one file list.
pub const MAX_NODES: usize = 2_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
}

/// One chunk of a file: its id and plain length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef(pub ChunkId, pub u32);

/// One entry of a generation's file list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Relative path, `/`-separated, raw bytes (any Unix file name).
    #[serde(with = "serde_bytes")]
    pub path: Vec<u8>,
    pub kind: NodeKind,
    /// Permission bits (the low 12 bits of st_mode).
    pub mode: u32,
    pub mtime_ns: i64,
    pub size: u64,
    /// SHA-256 of the file's content (files only): the backup signature.
    pub digest: Option<FileDigest>,
    /// The file's chunks, in order; empty when the file is exactly one chunk,
    /// which is then `digest` itself.
    pub chunks: Vec<ChunkRef>,
    /// Symlink target.
    #[serde(with = "serde_bytes")]
    pub target: Vec<u8>,
    /// Where the data was read from (inode, ctime): lets the next ingest of the
    /// same directory skip unchanged files without reading them.
    pub ino: u64,
    pub ctime_ns: i64,
}

impl Node {
    /// The file's chunks, expanding the single-chunk shorthand.
    pub fn chunk_list(&self) -> Vec<ChunkRef> {
        match (self.chunks.is_empty(), self.digest) {
            (true, Some(d)) if self.size > 0 => vec![ChunkRef(ChunkId(d.0), self.size as u32)],
            _ => self.chunks.clone(),
        }
    }

    pub fn path_lossy(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }

    /// Check what a stored node claims, before acting on it.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let p = &self.path;
        if p.is_empty()
            || p[0] == b'/'
            || p.contains(&0)
            || p.split(|&b| b == b'/')
                .any(|c| c.is_empty() || c == b"." || c == b"..")
        {
            return Err(format!("unsafe path {:?}", self.path_lossy()));
        }
        if self.mode & !0o7777 != 0 {
            return Err(format!(
                "{}: mode {:o} has bits beyond the permission bits",
                self.path_lossy(),
                self.mode
            ));
        }
        if self.kind == NodeKind::Symlink && (self.target.is_empty() || self.target.contains(&0)) {
            return Err(format!(
                "symlink {} has an unusable target",
                self.path_lossy()
            ));
        }
        if self.kind == NodeKind::File {
            if self.digest.is_none() {
                return Err(format!("file {} has no digest", self.path_lossy()));
            }
            if self.chunks.is_empty() && self.size > u64::from(MAX_CHUNK) {
                return Err(format!(
                    "file {}: {} bytes in one chunk, over the limit of {MAX_CHUNK} bytes a chunk",
                    self.path_lossy(),
                    self.size
                ));
            }
            if let Some(c) = self.chunks.iter().find(|c| c.1 > MAX_CHUNK) {
                return Err(format!(
                    "file {}: a chunk of {} bytes, over the limit of {MAX_CHUNK} bytes a chunk",
                    self.path_lossy(),
                    c.1
                ));
            }
            let total: u64 = self.chunk_list().iter().map(|c| c.1 as u64).sum();
            if total != self.size {
                return Err(format!(
                    "file {}: chunks add up to {total} bytes, size says {}",
                    self.path_lossy(),
                    self.size
                ));
            }
        }
        Ok(())
    }
}

/// Check a whole file list, before anything acts on it: every entry is
/// [`Node::validate`], no path is listed twice, and every entry's parent is a
/// folder listed before it. A parent that is a symlink (`a -> /etc`, then
/// `a/passwd`) or a file is refused: a restore must never write outside its
/// folder, whatever the list says.
pub fn validate_list(nodes: &[Node]) -> std::result::Result<(), String> {
    let mut kinds: std::collections::HashMap<&[u8], NodeKind> =
        std::collections::HashMap::with_capacity(nodes.len());
    for n in nodes {
        n.validate()?;
        if let Some(cut) = n.path.iter().rposition(|&b| b == b'/') {
            let parent = &n.path[..cut];
            match kinds.get(parent) {
                Some(NodeKind::Dir) => {}
                Some(other) => {
                    return Err(format!(
                        "{}: its parent {} is a {}, not a folder",
                        n.path_lossy(),
                        String::from_utf8_lossy(parent),
                        match other {
                            NodeKind::Symlink => "symlink",
                            _ => "file",
                        }
                    ))
                }
                None => {
                    return Err(format!(
                        "{}: its parent folder {} is not listed before it",
                        n.path_lossy(),
                        String::from_utf8_lossy(parent)
                    ))
                }
            }
        }
        if kinds.insert(&n.path, n.kind).is_some() {
            return Err(format!("{} is listed twice", n.path_lossy()));
        }
    }
    Ok(())
}

/// Counters kept with a generation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Plain bytes of all files.
    pub bytes: u64,
    /// Files whose content was read (the others matched the previous generation).
    pub files_read: u64,
    pub bytes_read: u64,
    /// Chunks this generation added, and how many of them are deltas.
    pub new_chunks: u64,
    pub new_deltas: u64,
    /// Bytes this generation added to the archive (packs and record).
    pub added_bytes: u64,
}

/// The record whose creation commits a generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenRecord {
    pub source: SourceName,
    pub seq: Seq,
    pub epoch: Epoch,
    /// When the data was taken (Unix ns): what the data-loss window counts from.
    pub taken_at_ns: i64,
    pub committed_at_ns: i64,
    /// Free text, e.g. the export's transaction id.
    pub label: Option<String>,
    pub stats: GenStats,
    /// The manifest: its length, SHA-256 and chunks.
    pub manifest_len: u64,
    pub manifest_digest: FileDigest,
    pub manifest_chunks: Vec<ChunkRef>,
}

impl GenRecord {
    pub fn id(&self) -> GenId {
        GenId {
            source: self.source.clone(),
            seq: self.seq,
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut out = GEN_MAGIC.to_vec();
        ciborium::into_writer(self, &mut out)
            .map_err(|e| corrupt("generation record", e.to_string()))?;
        let sum = Sha256::digest(&out);
        out.extend_from_slice(&sum);
        Ok(out)
    }

    pub fn decode(b: &[u8], what: &str) -> Result<Self> {
        if b.len() > MAX_RECORD_BYTES {
            return Err(corrupt(
                what,
                format!(
                    "{} bytes, over the limit of {MAX_RECORD_BYTES} bytes a record",
                    b.len()
                ),
            ));
        }
        if b.len() < 40 || &b[..8] != GEN_MAGIC {
            return Err(corrupt(what, "not a generation record (bad magic)"));
        }
        let (body, sum) = b.split_at(b.len() - 32);
        if Sha256::digest(body)[..] != sum[..] {
            return Err(corrupt(what, "checksum mismatch"));
        }
        let rec: GenRecord =
            ciborium::from_reader(&body[8..]).map_err(|e| corrupt(what, e.to_string()))?;
        rec.check_sizes().map_err(|why| corrupt(what, why))?;
        Ok(rec)
    }

    /// The sizes a record claims, checked before anything allocates by them: the file
    /// list within [`MAX_MANIFEST_BYTES`], each of its chunks within the archive's
    /// largest chunk, and the chunks adding up to the list's length.
    fn check_sizes(&self) -> std::result::Result<(), String> {
        if self.manifest_len > MAX_MANIFEST_BYTES {
            return Err(format!(
                "a file list of {} bytes, over the limit of {MAX_MANIFEST_BYTES} bytes",
                self.manifest_len
            ));
        }
        if let Some(c) = self.manifest_chunks.iter().find(|c| c.1 > MAX_CHUNK) {
            return Err(format!(
                "a file-list chunk of {} bytes, over the limit of {MAX_CHUNK} bytes a chunk",
                c.1
            ));
        }
        let total: u64 = self.manifest_chunks.iter().map(|c| u64::from(c.1)).sum();
        if total != self.manifest_len {
            return Err(format!(
                "file-list chunks add up to {total} bytes, the record says {}",
                self.manifest_len
            ));
        }
        Ok(())
    }
}

pub fn gen_key(source: &SourceName, seq: Seq) -> String {
    format!("gens/{}/{:020}.gen", source, seq.0)
}

/// Parse `gens/SOURCE/SEQ.gen`.
pub fn parse_gen_key(key: &str) -> Option<GenId> {
    let mut it = key.split('/');
    let (g, s, f) = (it.next()?, it.next()?, it.next()?);
    if g != "gens" || it.next().is_some() {
        return None;
    }
    let seq = f.strip_suffix(".gen")?.parse().ok()?;
    Some(GenId {
        source: SourceName::new(s).ok()?,
        seq: Seq(seq),
    })
}

pub fn encode_manifest(nodes: &[Node]) -> Result<Vec<u8>> {
    let mut out = MANIFEST_MAGIC.to_vec();
    ciborium::into_writer(nodes, &mut out).map_err(|e| corrupt("manifest", e.to_string()))?;
    Ok(out)
}

pub fn decode_manifest(b: &[u8], what: &str) -> Result<Vec<Node>> {
    if b.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(corrupt(
            what,
            format!(
                "{} bytes, over the limit of {MAX_MANIFEST_BYTES} bytes a file list",
                b.len()
            ),
        ));
    }
    if b.len() < 8 || &b[..8] != MANIFEST_MAGIC {
        return Err(corrupt(what, "not a manifest (bad magic)"));
    }
    let nodes: Vec<Node> =
        ciborium::from_reader(&b[8..]).map_err(|e| corrupt(what, e.to_string()))?;
    if nodes.len() > MAX_NODES {
        return Err(corrupt(
            what,
            format!(
                "{} entries, over the limit of {MAX_NODES} entries a file list",
                nodes.len()
            ),
        ));
    }
    validate_list(&nodes).map_err(|why| corrupt(what, why))?;
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, data: &[u8]) -> Node {
        Node {
            path: path.as_bytes().to_vec(),
            kind: NodeKind::File,
            mode: 0o644,
            mtime_ns: 1,
            size: data.len() as u64,
            digest: Some(FileDigest::of(data)),
            chunks: vec![],
            target: vec![],
            ino: 0,
            ctime_ns: 0,
        }
    }

    /// Generation db/3 at epoch 2 with a one-chunk file list of 10 bytes.
    fn record(label: Option<&str>) -> GenRecord {
        GenRecord {
            source: SourceName::new("db").unwrap(),
            seq: Seq(3),
            epoch: Epoch(2),
            taken_at_ns: 5,
            committed_at_ns: 6,
            label: label.map(str::to_string),
            stats: GenStats::default(),
            manifest_len: 10,
            manifest_digest: FileDigest::of(b"m"),
            manifest_chunks: vec![ChunkRef(ChunkId::of(b"m"), 10)],
        }
    }

    #[test]
    fn record_round_trip_and_tamper() {
        let r = record(Some("tx"));
        let mut b = r.encode().unwrap();
        assert_eq!(GenRecord::decode(&b, "g").unwrap(), r);
        b[12] ^= 1;
        assert!(GenRecord::decode(&b, "g").is_err());
        assert_eq!(parse_gen_key(&gen_key(&r.source, r.seq)), Some(r.id()));
    }

    #[test]
    fn record_sizes_are_bounded() {
        let r = record(None);
        assert!(GenRecord::decode(&r.encode().unwrap(), "g").is_ok());
        let bad = |f: &dyn Fn(&mut GenRecord)| {
            let mut x = r.clone();
            f(&mut x);
            GenRecord::decode(&x.encode().unwrap(), "g")
                .unwrap_err()
                .to_string()
        };
        let e = bad(&|x| x.label = Some("x".repeat(MAX_RECORD_BYTES)));
        assert!(
            e.contains("over the limit of 1048576 bytes a record"),
            "{e}"
        );
        let e = bad(&|x| x.manifest_len = 1 << 40);
        assert!(e.contains("over the limit of 134217728 bytes"), "{e}");
        let e = bad(&|x| {
            x.manifest_len = u64::from(MAX_CHUNK) + 1;
            x.manifest_chunks = vec![ChunkRef(ChunkId::of(b"m"), MAX_CHUNK + 1)];
        });
        assert!(e.contains("over the limit of 1048576 bytes a chunk"), "{e}");
        let e = bad(&|x| x.manifest_len = 11);
        assert!(e.contains("add up to 10 bytes"), "{e}");
    }

    #[test]
    fn chunks_over_the_largest_are_refused() {
        let mut one = file("a", b"");
        one.size = u64::from(MAX_CHUNK) + 1;
        one.digest = Some(FileDigest::of(b"x"));
        let e = one.validate().unwrap_err();
        assert!(e.contains("in one chunk, over the limit"), "{e}");
        let mut many = one.clone();
        many.size = u64::from(u32::MAX);
        many.chunks = vec![ChunkRef(ChunkId::of(b"x"), u32::MAX)];
        let e = many.validate().unwrap_err();
        assert!(e.contains("a chunk of 4294967295 bytes"), "{e}");
    }

    #[test]
    fn manifest_rejects_unsafe_paths() {
        let mut a = file("a", b"");
        a.kind = NodeKind::Dir;
        a.digest = None;
        let good = vec![a, file("a/b", b"xyz")];
        assert_eq!(
            decode_manifest(&encode_manifest(&good).unwrap(), "m").unwrap(),
            good
        );
        for bad in ["../etc/passwd", "/abs", "a//b", "a/./b", ""] {
            let m = encode_manifest(&[file(bad, b"x")]).unwrap();
            assert!(decode_manifest(&m, "m").is_err(), "{bad:?} accepted");
        }
        let mut link = file("a", b"");
        link.kind = NodeKind::Symlink;
        link.digest = None;
        link.target = b"/etc".to_vec();
        let mut dir = file("d", b"");
        dir.kind = NodeKind::Dir;
        dir.digest = None;
        let mut setuid_beyond = file("b", b"x");
        setuid_beyond.mode = 0o10644;
        for (bad, why) in [
            (vec![link.clone(), file("a/passwd", b"x")], "is a symlink"),
            (vec![file("f", b"x"), file("f/x", b"x")], "is a file"),
            (vec![file("d/x", b"x"), dir.clone()], "not listed before"),
            (vec![file("x", b"x"), file("x", b"y")], "listed twice"),
            (vec![setuid_beyond], "beyond the permission bits"),
        ] {
            let err = decode_manifest(&encode_manifest(&bad).unwrap(), "m").unwrap_err();
            assert!(err.to_string().contains(why), "{err}");
        }
        let ok = vec![dir, file("d/x", b"x"), link];
        assert!(decode_manifest(&encode_manifest(&ok).unwrap(), "m").is_ok());
        let mut wrong_size = file("a", b"xyz");
        wrong_size.chunks = vec![ChunkRef(ChunkId::of(b"xyz"), 3)];
        wrong_size.size = 5;
        assert!(decode_manifest(&encode_manifest(&[wrong_size]).unwrap(), "m").is_err());
    }
}
