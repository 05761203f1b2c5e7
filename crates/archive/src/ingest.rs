//! Ingest: commit a directory as a new generation of a source.
//!
//! A producer thread walks the files in order: files small enough to hold in
//! memory go to the workers whole, large ones are cut into chunks as they are
//! read (hashing the file as it goes). Workers hash chunks, skip the ones the
//! archive has, and compress the rest, as deltas against a similar chunk of the
//! previous generation when one is found by content. The calling thread writes
//! the blobs into packs and assembles the manifest. Files whose size, mtime,
//! ctime and inode match the previous generation are not read at all.

use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, Sender};
use sha2::{Digest, Sha256};

use crate::archive::{Archive, MAX_DEPTH};
use crate::backend::Backend;
use crate::chunker::{self, Features};
use crate::codec;
use crate::error::{Error, IoContext, Result};
use crate::id::{ChunkId, DigestSet, Epoch, FileDigest, GenId, PackId, Seq, SourceName};
use crate::manifest::{self, ChunkRef, GenRecord, GenStats, Node, NodeKind};
use crate::pack::{self, BlobKind, Entry, PackWriter};

/// Files up to this size are read whole by a worker; larger ones are streamed.
const WHOLE_FILE_MAX: u64 = 4 << 20;

#[derive(Clone, Debug, Default)]
pub struct IngestOptions {
    pub epoch: Epoch,
    /// When the data was taken (Unix ns); default: when the ingest starts.
    pub taken_at_ns: Option<i64>,
    pub label: Option<String>,
    /// Read every file even when its metadata matches the previous generation.
    pub reread: bool,
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

fn mtime_ns(m: &Metadata) -> i64 {
    m.mtime() * 1_000_000_000 + m.mtime_nsec()
}
fn ctime_ns(m: &Metadata) -> i64 {
    m.ctime() * 1_000_000_000 + m.ctime_nsec()
}

struct Item {
    rel: Vec<u8>,
    abs: PathBuf,
    meta: Metadata,
}

fn walk(root: &Path, rel: &[u8], out: &mut Vec<Item>, warnings: &mut Vec<String>) -> Result<()> {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(std::ffi::OsStr::from_bytes(rel))
    };
    let mut names: Vec<std::ffi::OsString> = fs::read_dir(&dir)
        .at(&dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .at(&dir)?;
    names.sort();
    for name in names {
        let mut r = rel.to_vec();
        if !r.is_empty() {
            r.push(b'/');
        }
        r.extend_from_slice(name.as_bytes());
        let abs = dir.join(&name);
        let meta = fs::symlink_metadata(&abs).at(&abs)?;
        let ft = meta.file_type();
        if ft.is_dir() {
            out.push(Item {
                rel: r.clone(),
                abs,
                meta,
            });
            walk(root, &r, out, warnings)?;
        } else if ft.is_file() || ft.is_symlink() {
            out.push(Item { rel: r, abs, meta });
        } else {
            warnings.push(format!(
                "{}: not a file, directory or symlink; left out",
                abs.display()
            ));
        }
    }
    Ok(())
}

/// A compressed chunk on its way into a pack.
struct NewBlob {
    id: ChunkId,
    kind: BlobKind,
    base: Option<ChunkId>,
    depth: u8,
    raw_len: u32,
    features: Features,
    payload: Vec<u8>,
}

/// What the workers share.
struct Ctx<'a> {
    archive: &'a Archive,
    /// Feature -> chunk of the previous generation that has it.
    candidates: HashMap<u64, ChunkId>,
    /// Chunks this ingest has already taken on.
    claimed: Mutex<DigestSet<ChunkId>>,
    level: i32,
    abort: AtomicBool,
}

impl Ctx<'_> {
    /// Hash a chunk; if the archive lacks it, encode it.
    fn process(&self, data: &[u8], id: Option<ChunkId>) -> Result<(ChunkRef, Option<NewBlob>)> {
        let id = id.unwrap_or_else(|| ChunkId::of(data));
        let r = ChunkRef(id, data.len() as u32);
        if self.archive.index.contains(&id) {
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
        let mut blob = NewBlob {
            id,
            kind: BlobKind::Full,
            base: None,
            depth: 0,
            raw_len: data.len() as u32,
            features,
            payload: Vec::new(),
        };
        if let Some((base, depth)) = self.find_base(features) {
            // A damaged base only costs compression here; verify reports it.
            if let Ok(bd) = self.archive.chunk(&base) {
                let delta = codec::encode(data, Some(&bd), self.level)?;
                if delta.len() <= data.len() / 8 {
                    blob.kind = BlobKind::Delta;
                    blob.base = Some(base);
                    blob.depth = depth + 1;
                    blob.payload = delta;
                    return Ok((r, Some(blob)));
                }
                let full = codec::encode(data, None, self.level)?;
                if delta.len() < full.len() {
                    blob.kind = BlobKind::Delta;
                    blob.base = Some(base);
                    blob.depth = depth + 1;
                    blob.payload = delta;
                } else {
                    blob.payload = full;
                }
                return Ok((r, Some(blob)));
            }
        }
        blob.payload = codec::encode(data, None, self.level)?;
        Ok((r, Some(blob)))
    }

    /// A similar chunk of the previous generation, and its chain depth; at the
    /// depth limit, the full chunk at the bottom of its chain instead.
    fn find_base(&self, f: Features) -> Option<(ChunkId, u8)> {
        let index = &self.archive.index;
        let base = f
            .0
            .iter()
            .filter(|&&x| x != 0)
            .find_map(|x| self.candidates.get(x))?;
        let depth = index.get(base)?.entry.depth;
        if depth < MAX_DEPTH {
            Some((*base, depth))
        } else {
            index.root_of(base)
        }
    }
}

enum Job {
    Whole { fi: usize, path: PathBuf, meta: Metadata },
    Chunk { fi: usize, ci: usize, data: Vec<u8> },
}

enum Done {
    Whole {
        fi: usize,
        digest: FileDigest,
        chunks: Vec<ChunkRef>,
        blobs: Vec<NewBlob>,
    },
    Chunk {
        fi: usize,
        ci: usize,
        r: ChunkRef,
        blob: Option<NewBlob>,
    },
    Large {
        fi: usize,
        digest: FileDigest,
        size: u64,
    },
}

fn check_unchanged(path: &Path, before: &Metadata, read: u64) -> Result<()> {
    let after = fs::symlink_metadata(path).at(path)?;
    let why = if read != before.len() {
        format!("read {read} bytes, its size was {}", before.len())
    } else if after.len() != before.len() {
        format!("size went from {} to {}", before.len(), after.len())
    } else if mtime_ns(&after) != mtime_ns(before) || ctime_ns(&after) != ctime_ns(before) {
        "it was modified".to_string()
    } else {
        return Ok(());
    };
    Err(Error::ChangedWhileReading {
        path: path.into(),
        why,
    })
}

fn read_whole(ctx: &Ctx, fi: usize, path: &Path, meta: &Metadata) -> Result<Done> {
    let data = fs::read(path).at(path)?;
    check_unchanged(path, meta, data.len() as u64)?;
    let cuts = chunker::cut(&data);
    let mut chunks = Vec::with_capacity(cuts.len());
    let mut blobs = Vec::new();
    let digest = FileDigest::of(&data);
    for &(o, l) in &cuts {
        // A one-chunk file's chunk id is its digest: hash once.
        let known = (cuts.len() == 1).then_some(ChunkId(digest.0));
        let (r, b) = ctx.process(&data[o..o + l], known)?;
        chunks.push(r);
        blobs.extend(b);
    }
    Ok(Done::Whole {
        fi,
        digest,
        chunks,
        blobs,
    })
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    n: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
}

/// Stream a large file into chunk jobs; returns its digest and size.
fn stream_large(
    ctx: &Ctx,
    fi: usize,
    path: &Path,
    meta: &Metadata,
    jobs: &Sender<Job>,
) -> Result<Option<Done>> {
    let f = File::open(path).at(path)?;
    let mut reader = HashingReader {
        inner: f,
        hasher: Sha256::new(),
        n: 0,
    };
    let stream = fastcdc::v2020::StreamCDC::new(
        &mut reader,
        chunker::MIN_CHUNK,
        chunker::AVG_CHUNK,
        chunker::MAX_CHUNK,
    );
    for (ci, c) in stream.enumerate() {
        let c = c.map_err(|e| Error::Io {
            path: path.into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        if ctx.abort.load(Ordering::Relaxed) {
            return Ok(None);
        }
        if jobs.send(Job::Chunk { fi, ci, data: c.data }).is_err() {
            return Ok(None);
        }
    }
    check_unchanged(path, meta, reader.n)?;
    Ok(Some(Done::Large {
        fi,
        digest: FileDigest(reader.hasher.finalize().into()),
        size: reader.n,
    }))
}

/// Writes blobs into packs and keeps what it wrote.
pub(crate) struct PackSink<'a> {
    backend: &'a dyn Backend,
    writer: PackWriter,
    pub packs: Vec<(PackId, u64, Vec<Entry>)>,
    pub added_bytes: u64,
    pub blobs: u64,
    pub deltas: u64,
}

impl<'a> PackSink<'a> {
    pub fn new(backend: &'a dyn Backend) -> Self {
        PackSink {
            backend,
            writer: PackWriter::new(),
            packs: Vec::new(),
            added_bytes: 0,
            blobs: 0,
            deltas: 0,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        id: ChunkId,
        kind: BlobKind,
        base: Option<ChunkId>,
        depth: u8,
        raw_len: u32,
        features: Features,
        payload: &[u8],
    ) -> Result<()> {
        self.writer
            .add(id, kind, base, depth, raw_len, features, payload);
        self.blobs += 1;
        if kind == BlobKind::Delta {
            self.deltas += 1;
        }
        if self.writer.is_full() {
            self.flush()?;
        }
        Ok(())
    }

    fn add_blob(&mut self, b: NewBlob) -> Result<()> {
        self.add(b.id, b.kind, b.base, b.depth, b.raw_len, b.features, &b.payload)
    }

    pub fn flush(&mut self) -> Result<()> {
        if self.writer.is_empty() {
            return Ok(());
        }
        let w = std::mem::take(&mut self.writer);
        let (id, bytes, entries) = w.finish();
        self.backend.create(&pack::key(&id), &bytes)?;
        self.added_bytes += bytes.len() as u64;
        self.packs.push((id, bytes.len() as u64, entries));
        Ok(())
    }
}

impl Archive {
    /// Commit the directory `dir` as the next generation of `source`.
    pub fn ingest(
        &mut self,
        source: &SourceName,
        dir: &Path,
        opts: &IngestOptions,
    ) -> Result<IngestReport> {
        let started = now_ns();
        let _shared = self.backend.lock("archive", false, true)?;
        let _source = self
            .backend
            .lock(&format!("source-{source}"), true, false)
            .map_err(|_| Error::Busy(format!("another ingest of {source} is running")))?;
        let meta = fs::metadata(dir).at(dir)?;
        if !meta.is_dir() {
            return Err(Error::Invalid(format!("{} is not a directory", dir.display())));
        }
        // Packs may have been added by others since we opened.
        self.reload()?;

        let prev = self.latest(source)?;
        if let Some(p) = &prev {
            if opts.epoch < p.epoch {
                return Err(Error::StaleEpoch {
                    gen: format!("{source}/{}", p.seq.0 + 1),
                    source_name: source.to_string(),
                    got: opts.epoch.0,
                    have: p.epoch.0,
                });
            }
        }
        let seq = Seq(prev.as_ref().map_or(1, |p| p.seq.0 + 1));
        let prev_nodes = match &prev {
            Some(p) => self.manifest(p)?,
            None => Vec::new(),
        };

        let mut warnings = Vec::new();
        let mut items = Vec::new();
        walk(dir, b"", &mut items, &mut warnings)?;

        let mut candidates = HashMap::new();
        let prev_chunks = prev_nodes
            .iter()
            .flat_map(|n| n.chunk_list())
            .chain(prev.iter().flat_map(|p| p.manifest_chunks.iter().copied()));
        for c in prev_chunks {
            if let Some(info) = self.index.get(&c.0) {
                for f in info.entry.features.0 {
                    if f != 0 {
                        candidates.entry(f).or_insert(c.0);
                    }
                }
            }
        }
        let prev_by_path: HashMap<&[u8], &Node> =
            prev_nodes.iter().map(|n| (&n.path[..], n)).collect();

        let ctx = Ctx {
            archive: self,
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
                        && p.chunk_list().iter().all(|c| self.index.contains(&c.0))
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
                sink.add_blob(b)?;
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
        let bytes = record.encode()?;
        // The commit point.
        if !self
            .backend
            .create(&manifest::gen_key(source, seq), &bytes)?
        {
            return Err(Error::GenerationExists(GenId {
                source: source.clone(),
                seq,
            }));
        }
        for (id, size, entries) in std::mem::take(&mut sink.packs) {
            self.index.add_pack(id, size, &entries);
        }
        tracing::info!(gen = %record.id(), files = record.stats.files, added = record.stats.added_bytes, "committed");
        Ok(IngestReport { record, warnings })
    }

    fn run_pipeline(
        &self,
        ctx: &Ctx,
        items: &[Item],
        to_read: &[usize],
        nodes: &mut [Node],
        sink: &mut PackSink,
    ) -> Result<()> {
        if to_read.is_empty() {
            return Ok(());
        }
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let (job_tx, job_rx) = bounded::<Job>(workers * 2);
        let (done_tx, done_rx) = bounded::<Result<Done>>(workers * 4);
        // Per file being streamed: its chunks as they arrive.
        let mut partial: HashMap<usize, Vec<Option<ChunkRef>>> = HashMap::new();
        let mut large_done: HashMap<usize, (FileDigest, u64)> = HashMap::new();
        let mut first_err: Option<Error> = None;

        std::thread::scope(|s| {
            for _ in 0..workers {
                let job_rx = job_rx.clone();
                let done_tx = done_tx.clone();
                s.spawn(move || {
                    for job in job_rx {
                        let r = match job {
                            Job::Whole { fi, path, meta } => read_whole(ctx, fi, &path, &meta),
                            Job::Chunk { fi, ci, data } => ctx
                                .process(&data, None)
                                .map(|(r, blob)| Done::Chunk { fi, ci, r, blob }),
                        };
                        if r.is_err() {
                            ctx.abort.store(true, Ordering::Relaxed);
                        }
                        if done_tx.send(r).is_err() {
                            return;
                        }
                    }
                });
            }
            drop(job_rx);
            let producer_done = done_tx.clone();
            s.spawn(move || {
                for &fi in to_read {
                    if ctx.abort.load(Ordering::Relaxed) {
                        return;
                    }
                    let it = &items[fi];
                    if it.meta.len() <= WHOLE_FILE_MAX {
                        let job = Job::Whole {
                            fi,
                            path: it.abs.clone(),
                            meta: it.meta.clone(),
                        };
                        if job_tx.send(job).is_err() {
                            return;
                        }
                    } else {
                        match stream_large(ctx, fi, &it.abs, &it.meta, &job_tx) {
                            Ok(Some(d)) => {
                                if producer_done.send(Ok(d)).is_err() {
                                    return;
                                }
                            }
                            Ok(None) => return,
                            Err(e) => {
                                ctx.abort.store(true, Ordering::Relaxed);
                                let _ = producer_done.send(Err(e));
                                return;
                            }
                        }
                    }
                }
            });
            drop(done_tx);

            for msg in done_rx.iter() {
                let r = msg.and_then(|d| match d {
                    Done::Whole {
                        fi,
                        digest,
                        chunks,
                        blobs,
                    } => {
                        for b in blobs {
                            sink.add_blob(b)?;
                        }
                        let n = &mut nodes[fi];
                        n.digest = Some(digest);
                        n.size = chunks.iter().map(|c| c.1 as u64).sum();
                        n.chunks = if chunks.len() == 1 { Vec::new() } else { chunks };
                        Ok(())
                    }
                    Done::Chunk { fi, ci, r, blob } => {
                        if let Some(b) = blob {
                            sink.add_blob(b)?;
                        }
                        let v = partial.entry(fi).or_default();
                        if v.len() <= ci {
                            v.resize(ci + 1, None);
                        }
                        v[ci] = Some(r);
                        Ok(())
                    }
                    Done::Large { fi, digest, size } => {
                        large_done.insert(fi, (digest, size));
                        Ok(())
                    }
                });
                if let Err(e) = r {
                    ctx.abort.store(true, Ordering::Relaxed);
                    first_err = Some(e);
                    break;
                }
            }
            drop(done_rx);
        });
        if let Some(e) = first_err {
            return Err(e);
        }
        for (fi, (digest, size)) in large_done {
            let chunks: Vec<ChunkRef> = partial
                .remove(&fi)
                .unwrap_or_default()
                .into_iter()
                .collect::<Option<_>>()
                .ok_or_else(|| Error::Invalid(format!("{}: chunks lost in the pipeline", items[fi].abs.display())))?;
            let n = &mut nodes[fi];
            n.digest = Some(digest);
            n.size = size;
            n.chunks = chunks;
        }
        for &fi in to_read {
            if nodes[fi].digest.is_none() {
                return Err(Error::Invalid(format!(
                    "{}: not read completely",
                    items[fi].abs.display()
                )));
            }
        }
        Ok(())
    }
}
