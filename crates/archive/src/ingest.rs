//! Ingest: commit a directory as a new generation of a source.
//!
//! The files that changed are read by the pipeline (pipeline.rs): files small
//! enough to hold in memory go to the workers whole, large ones are cut into
//! chunks as they are read (hashing the file as it goes). Workers hash chunks,
//! skip the ones the archive has, and compress the rest ([`Ctx`] here), as
//! deltas against a similar chunk of the previous generation when one is found
//! by content. The calling thread writes the blobs into packs and assembles the
//! manifest. Files whose size, mtime, ctime and inode match the previous
//! generation are not read at all.

use std::collections::HashMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::archive::{Archive, MAX_DEPTH};
use crate::chunker::{self, Features};
use crate::codec;
use crate::commit::{Commit, Pins};
use crate::error::{Error, IoContext, Result};
use crate::id::{ChunkId, DigestSet, Epoch, FileDigest, SourceName};
use crate::manifest::{self, ChunkRef, GenRecord, GenStats, Node, NodeKind};
use crate::pack::{self, Entry};
pub(crate) use crate::sink::PackSink;
use crate::walk::{ctime_ns, mtime_ns, walk};

#[derive(Clone, Debug, Default)]
pub struct IngestOptions {
    pub epoch: Epoch,
    /// When the data was taken (Unix ns); default: when the ingest starts.
    pub taken_at_ns: Option<i64>,
    pub label: Option<String>,
    /// Read every file even when its metadata matches the previous generation.
    pub reread: bool,
    /// Glob patterns of paths (relative to the ingested folder) to leave
    /// out; `*` also matches `/`, so `*.tmp` excludes at any depth. An
    /// excluded folder is left out with everything in it.
    pub excludes: Vec<String>,
}

fn exclude_set(patterns: &[String]) -> Result<globset::GlobSet> {
    let mut b = globset::GlobSetBuilder::new();
    for p in patterns {
        let g = globset::GlobBuilder::new(p)
            .literal_separator(false)
            .build()
            .map_err(|e| Error::Invalid(format!("bad exclude pattern {p:?}: {e}")))?;
        b.add(g);
    }
    b.build()
        .map_err(|e| Error::Invalid(format!("bad exclude patterns: {e}")))
}

#[derive(Clone, Debug)]
pub struct IngestReport {
    pub record: GenRecord,
    /// Things that were left out, e.g. sockets and device files.
    pub warnings: Vec<String>,
}

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// A compressed chunk on its way into a pack.
pub(crate) struct NewBlob {
    pub(crate) entry: Entry,
    pub(crate) payload: Vec<u8>,
}

/// What the workers share.
pub(crate) struct Ctx<'a> {
    archive: &'a Archive,
    /// The previous generation's chunks, in file order.
    prev_seq: Vec<ChunkRef>,
    /// Feature -> first position in `prev_seq` of a chunk that has it.
    candidates: HashMap<u64, usize>,
    /// Packs whose blobs this ingest reuses, pinned against a running gc.
    pins: &'a Pins,
    /// Chunks this ingest has already taken on.
    claimed: Mutex<DigestSet<ChunkId>>,
    level: i32,
    pub(crate) abort: AtomicBool,
}

impl Ctx<'_> {
    /// Hash a chunk; if the archive lacks it, encode it.
    pub(crate) fn process(
        &self,
        data: &[u8],
        id: Option<ChunkId>,
    ) -> Result<(ChunkRef, Option<NewBlob>)> {
        let id = id.unwrap_or_else(|| ChunkId::of(data));
        let r = ChunkRef(id, data.len() as u32);
        if self.archive.has_blob(&id) && self.pins.reuse(self.archive, &id)? {
            return Ok((r, None));
        }
        if !self
            .claimed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id)
        {
            return Ok((r, None));
        }
        let features = Features::of(data);
        let mut entry = Entry {
            id,
            bases: Vec::new(),
            offset: 0,
            stored_len: 0,
            raw_len: data.len() as u32,
            depth: 0,
            features,
        };
        if let Some((bases, depth)) = self.find_bases(features) {
            // A damaged base only costs compression here; verify reports it.
            if let Ok(prefix) = self.archive.prefix_of(&bases, 1) {
                let delta = codec::encode(data, Some(&prefix), self.level)?;
                let good = delta.len() <= data.len() / 8;
                let full = if good {
                    None
                } else {
                    Some(codec::encode(data, None, self.level)?)
                };
                match full {
                    Some(full) if full.len() <= delta.len() => {
                        return Ok((
                            r,
                            Some(NewBlob {
                                entry,
                                payload: full,
                            }),
                        ))
                    }
                    _ => {
                        entry.bases = bases;
                        entry.depth = depth + 1;
                        return Ok((
                            r,
                            Some(NewBlob {
                                entry,
                                payload: delta,
                            }),
                        ));
                    }
                }
            }
        }
        let payload = codec::encode(data, None, self.level)?;
        Ok((r, Some(NewBlob { entry, payload })))
    }

    /// Chunks of the previous generation to delta against, found by content:
    /// the run of chunks from the one sharing this chunk's first 64 bytes to
    /// the one sharing its last 64 (or the matched one and its neighbour, when
    /// only one end matched), so that a chunk whose boundaries moved is still
    /// covered. Returns them with their deepest chain; at the depth limit, the
    /// full chunks at the bottom of their chains instead.
    fn find_bases(&self, f: Features) -> Option<(Vec<ChunkId>, u8)> {
        let pos = |x: u64| (x != 0).then(|| self.candidates.get(&x).copied()).flatten();
        let last = self.prev_seq.len().checked_sub(1)?;
        let (lo, hi) = match (pos(f.0[0]), pos(f.0[1])) {
            (Some(a), Some(c)) if a <= c && c - a < pack::MAX_BASES => (a, c),
            (Some(a), _) => (a, (a + 1).min(last)),
            (None, Some(c)) => (c.saturating_sub(1), c),
            (None, None) => {
                // Edges moved: vote with the inner anchors, then take the run
                // of matched chunks around the most voted one.
                let hits: Vec<usize> = f.0[2..].iter().filter_map(|&x| pos(x)).collect();
                let best = *hits.iter().max_by_key(|&&p| {
                    (
                        hits.iter().filter(|&&q| q == p).count(),
                        std::cmp::Reverse(p),
                    )
                })?;
                let near = hits.iter().filter(|&&p| p.abs_diff(best) < pack::MAX_BASES);
                let lo = near.clone().min().copied().unwrap_or(best);
                let hi = near.max().copied().unwrap_or(best);
                if hi - lo + 3 <= pack::MAX_BASES {
                    (lo.saturating_sub(1), (hi + 1).min(last))
                } else {
                    (lo, hi)
                }
            }
        };
        let index = self.archive.index();
        let mut bases: Vec<ChunkId> = Vec::new();
        let mut bytes = 0usize;
        for c in &self.prev_seq[lo..=hi] {
            if bytes + c.1 as usize > codec::MAX_PREFIX {
                break;
            }
            if !bases.contains(&c.0) && index.contains(&c.0) {
                bases.push(c.0);
                bytes += c.1 as usize;
            }
        }
        let depth_of = |ids: &[ChunkId]| {
            ids.iter()
                .filter_map(|b| index.get(b).map(|i| i.entry.depth))
                .max()
        };
        let depth = depth_of(&bases)?;
        if depth < MAX_DEPTH {
            return Some((bases, depth));
        }
        let mut roots: Vec<ChunkId> = Vec::new();
        let mut bytes = 0usize;
        for r in bases.iter().flat_map(|b| index.roots_of(b)) {
            let len = index.get(&r).map_or(0, |i| i.entry.raw_len as usize);
            if roots.len() < pack::MAX_BASES
                && bytes + len <= codec::MAX_PREFIX
                && !roots.contains(&r)
            {
                roots.push(r);
                bytes += len;
            }
        }
        (!roots.is_empty()).then_some((roots, 0))
    }
}

impl Archive {
    /// Commit the directory `dir` as the next generation of `source`.
    pub fn ingest(
        &self,
        source: &SourceName,
        dir: &Path,
        opts: &IngestOptions,
    ) -> Result<IngestReport> {
        let started = now_ns();
        let _shared = self.backend.lock("archive", false, true)?;
        let commit = Commit::begin(self, source, opts.epoch, None, false)?;
        let meta = fs::metadata(dir).at(dir)?;
        if !meta.is_dir() {
            return Err(Error::Invalid(format!(
                "{} is not a directory",
                dir.display()
            )));
        }
        // Packs may have been added by others since we opened.
        self.refresh()?;
        let pins = Pins::new(self.backend.clone())?;

        let prev = commit.prev().cloned();
        let seq = commit.seq();
        let prev_nodes = match &prev {
            Some(p) => self.manifest(p)?,
            None => Vec::new(),
        };

        let mut warnings = Vec::new();
        let mut items = Vec::new();
        let ex = exclude_set(&opts.excludes)?;
        walk(dir, b"", &ex, &mut items, &mut warnings)?;

        let prev_seq: Vec<ChunkRef> = prev_nodes
            .iter()
            .flat_map(|n| n.chunk_list())
            .chain(prev.iter().flat_map(|p| p.manifest_chunks.iter().copied()))
            .collect();
        // Feature -> first chunk that has it; features found in more than two
        // chunks (repetitive content) point nowhere in particular: dropped.
        let mut seen: HashMap<u64, (usize, u32)> = HashMap::new();
        let index = self.index();
        for (i, c) in prev_seq.iter().enumerate() {
            if let Some(info) = index.get(&c.0) {
                for f in info.entry.features.0 {
                    if f != 0 {
                        seen.entry(f).or_insert((i, 0)).1 += 1;
                    }
                }
            }
        }
        let candidates: HashMap<u64, usize> = seen
            .into_iter()
            .filter(|(_, (_, n))| *n <= 2)
            .map(|(f, (i, _))| (f, i))
            .collect();
        drop(index);
        let prev_by_path: HashMap<&[u8], &Node> =
            prev_nodes.iter().map(|n| (&n.path[..], n)).collect();

        let ctx = Ctx {
            archive: self,
            prev_seq,
            pins: &pins,
            candidates,
            claimed: Mutex::new(DigestSet::default()),
            level: self.config.level,
            abort: AtomicBool::new(false),
        };
        let mut sink = PackSink::new(self.backend.as_ref());
        let mut stats = GenStats::default();

        // Nodes in walk order; files to read are filled in by the pipeline.
        let mut nodes: Vec<Node> = Vec::with_capacity(items.len());
        let mut to_read: Vec<usize> = Vec::new();
        for it in &items {
            let m = &it.meta;
            let mut node = Node {
                path: it.rel.clone(),
                kind: NodeKind::Dir,
                mode: m.permissions().mode() & 0o7777,
                mtime_ns: mtime_ns(m),
                size: 0,
                digest: None,
                chunks: Vec::new(),
                target: Vec::new(),
                ino: m.ino(),
                ctime_ns: ctime_ns(m),
            };
            let ft = m.file_type();
            if ft.is_symlink() {
                node.kind = NodeKind::Symlink;
                node.target = fs::read_link(&it.abs)
                    .at(&it.abs)?
                    .as_os_str()
                    .as_bytes()
                    .to_vec();
                stats.symlinks += 1;
            } else if ft.is_dir() {
                stats.dirs += 1;
            } else {
                node.kind = NodeKind::File;
                node.size = m.len();
                stats.files += 1;
                stats.bytes += m.len();
                let same = prev_by_path.get(&it.rel[..]).filter(|p| {
                    !opts.reread
                        && p.kind == NodeKind::File
                        && p.size == node.size
                        && p.mtime_ns == node.mtime_ns
                        && p.ctime_ns == node.ctime_ns
                        && p.ino == node.ino
                        && p.chunk_list().iter().all(|c| self.has_blob(&c.0))
                });
                match same {
                    Some(p) => {
                        node.digest = p.digest;
                        node.chunks = p.chunks.clone();
                    }
                    None => {
                        to_read.push(nodes.len());
                        stats.files_read += 1;
                    }
                }
            }
            nodes.push(node);
        }

        self.run_pipeline(&ctx, &items, &to_read, &mut nodes, &mut sink)?;
        stats.bytes_read = to_read.iter().map(|&i| nodes[i].size).sum();

        // The manifest is stored like file data, deltas included.
        let mbytes = manifest::encode_manifest(&nodes)?;
        let mut manifest_chunks = Vec::new();
        for (o, l) in chunker::cut(&mbytes) {
            let (r, b) = ctx.process(&mbytes[o..o + l], None)?;
            manifest_chunks.push(r);
            if let Some(b) = b {
                sink.add(b.entry, &b.payload)?;
            }
        }
        sink.flush()?;
        drop(ctx);

        stats.new_chunks = sink.blobs;
        stats.new_deltas = sink.deltas;
        let mut record = GenRecord {
            source: source.clone(),
            seq,
            epoch: opts.epoch,
            taken_at_ns: opts.taken_at_ns.unwrap_or(started),
            committed_at_ns: now_ns(),
            label: opts.label.clone(),
            stats,
            manifest_len: mbytes.len() as u64,
            manifest_digest: FileDigest::of(&mbytes),
            manifest_chunks,
        };
        let probe = record.encode()?;
        record.stats.added_bytes = sink.added_bytes + probe.len() as u64 + 8;
        let uses = nodes
            .iter()
            .flat_map(|n| n.chunk_list())
            .chain(record.manifest_chunks.iter().copied())
            .map(|c| c.0);
        commit.publish(&mut sink, &record, uses)?;
        drop(pins);
        tracing::info!(gen = %record.id(), files = record.stats.files, added = record.stats.added_bytes, "committed");
        Ok(IngestReport { record, warnings })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excludes_leave_out_matching_paths() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("cache/deep")).unwrap();
        fs::create_dir_all(src.join("data")).unwrap();
        for f in ["keep.txt", "x.tmp", "data/y.tmp", "data/z", "cache/deep/c"] {
            fs::write(src.join(f), f).unwrap();
        }
        let ar = Archive::init(&t.path().join("a")).unwrap();
        let opts = IngestOptions {
            excludes: vec!["*.tmp".into(), "cache".into()],
            ..Default::default()
        };
        let rec = ar
            .ingest(&SourceName::new("s").unwrap(), &src, &opts)
            .unwrap()
            .record;
        let mut paths: Vec<String> = ar
            .manifest(&rec)
            .unwrap()
            .iter()
            .map(|n| n.path_lossy())
            .collect();
        paths.sort();
        assert_eq!(paths, ["data", "data/z", "keep.txt"]);
        let bad = IngestOptions {
            excludes: vec!["a[".into()],
            ..Default::default()
        };
        let e = ar
            .ingest(&SourceName::new("s").unwrap(), &src, &bad)
            .unwrap_err();
        assert!(e.to_string().contains("a["), "{e}");
    }
}
