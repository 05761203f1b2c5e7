//! Opening an archive, naming generations, and reading chunks back.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rayon::prelude::*;

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, LocalBackend};
use crate::codec;
use crate::error::{corrupt, Error, Result};
use crate::id::{ChunkId, DigestMap, DigestSet, FileDigest, GenId, PackId, Seq, SourceName};
use crate::index::{read_trailer, Index};
use crate::manifest::{self, ChunkRef, GenRecord, Node};
use crate::pack;

/// Longest delta chain: restoring a chunk decodes at most this many blobs
/// below it.
pub const MAX_DEPTH: u8 = 8;
pub const CONFIG_KEY: &str = "config";
const FORMAT_NAME: &str = "pullback-archive";
const FORMAT_VERSION: u32 = 1;

/// The `config` object: what kind of archive this is.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArchiveConfig {
    pub format: String,
    pub version: u32,
    /// zstd level of full blobs (1: on database dumps both faster and
    /// smaller than 3; on a tree of system files 3.5 % larger).
    pub level: i32,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            level: 1,
        }
    }
}

/// An open archive. Every method takes `&self`: share it as `Arc<Archive>`
/// between threads. The in-memory index is behind its own lock, held only
/// for lookups and inserts; the file locks (`locks/`) serialise what must
/// be serialised, between threads and processes alike.
pub struct Archive {
    pub(crate) backend: Arc<dyn Backend>,
    index: RwLock<Index>,
    pub(crate) config: ArchiveConfig,
    pub(crate) cache: ChunkCache,
}

/// Memory for decoded delta bases.
const CACHE_BYTES: usize = 32 << 20;

impl Archive {
    /// Create a new archive in `path` (which must not hold one).
    pub fn init(path: &Path) -> Result<Archive> {
        std::fs::create_dir_all(path).map_err(|source| Error::Io {
            path: path.into(),
            source,
        })?;
        Self::init_on(Arc::new(LocalBackend::new(path)))
    }

    /// Create a new archive on `backend` (which must not hold one).
    pub fn init_on(backend: Arc<dyn Backend>) -> Result<Archive> {
        let cfg = ArchiveConfig::default();
        let bytes = serde_json::to_vec_pretty(&cfg).map_err(|e| Error::Invalid(e.to_string()))?;
        if !backend.create(CONFIG_KEY, &bytes)? {
            return Err(Error::Invalid(format!(
                "{} already holds an archive",
                backend.location()
            )));
        }
        Self::with_backend(backend)
    }

    /// Open the archive on `backend`, creating it when the backend holds no
    /// config, no pack and no generation. A backend holding packs or
    /// generations without a config is refused (never overwritten).
    pub fn open_or_init_on(backend: Arc<dyn Backend>) -> Result<Archive> {
        match backend.read(CONFIG_KEY) {
            Ok(raw) => Self::with_config(backend, &raw),
            Err(e) if crate::index::is_not_found(&e) => {
                if backend.list("packs")?.is_empty() && backend.list("gens")?.is_empty() {
                    Self::init_on(backend)
                } else {
                    Err(Error::NotAnArchive {
                        path: backend.location().into(),
                        why: "packs or generations but no config file".into(),
                    })
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Open the archive in `path`.
    pub fn open(path: &Path) -> Result<Archive> {
        if !path.join(CONFIG_KEY).exists() {
            return Err(Error::NotAnArchive {
                path: path.into(),
                why: "no config file (create one with `pbs archive init`)".into(),
            });
        }
        Self::with_backend(Arc::new(LocalBackend::new(path)))
    }

    /// Open `path`, creating the archive when the folder is missing or empty
    /// (or holds only what an interrupted creation leaves: `tmp`, `locks`).
    pub fn open_or_init(path: &Path) -> Result<Archive> {
        let empty = match std::fs::read_dir(path) {
            Ok(rd) => rd.filter_map(|e| e.ok()).all(|e| {
                let n = e.file_name();
                n == "tmp" || n == "locks"
            }),
            Err(_) => !path.exists(),
        };
        if empty {
            Self::init(path)
        } else {
            Self::open(path)
        }
    }

    pub fn with_backend(backend: Arc<dyn Backend>) -> Result<Archive> {
        let raw = backend.read(CONFIG_KEY)?;
        Self::with_config(backend, &raw)
    }

    /// [`Archive::with_backend`] with the config already read.
    fn with_config(backend: Arc<dyn Backend>, raw: &[u8]) -> Result<Archive> {
        let config: ArchiveConfig =
            serde_json::from_slice(raw).map_err(|e| Error::NotAnArchive {
                path: backend.location().into(),
                why: format!("config: {e}"),
            })?;
        if config.format != FORMAT_NAME || config.version != FORMAT_VERSION {
            return Err(Error::NotAnArchive {
                path: backend.location().into(),
                why: format!(
                    "format {} version {} (this program reads {FORMAT_NAME} {FORMAT_VERSION})",
                    config.format, config.version
                ),
            });
        }
        if !(1..=19).contains(&config.level) {
            return Err(corrupt(
                "config",
                format!("level {} not in 1..=19", config.level),
            ));
        }
        let index = Index::load(backend.as_ref())?;
        Ok(Archive {
            backend,
            index: RwLock::new(index),
            config,
            cache: ChunkCache::new(CACHE_BYTES),
        })
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// The in-memory index, read-locked: hold the guard only for lookups
    /// (no I/O under it), or it delays commits.
    pub fn index(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn index_mut(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn has_blob(&self, id: &ChunkId) -> bool {
        self.index().contains(id)
    }

    /// Reload the whole index from the pack trailers.
    pub fn reload(&self) -> Result<()> {
        let idx = Index::load(self.backend.as_ref())?;
        *self.index_mut() = idx;
        Ok(())
    }

    /// Bring the index up to date with the stored packs: the trailers of new
    /// packs are read and added; when a known pack is gone (gc removed it),
    /// the whole index is reloaded.
    pub fn refresh(&self) -> Result<()> {
        let keys = self.backend.list("packs")?;
        let (new, gone) = {
            let idx = self.index();
            let stored: DigestSet<PackId> =
                keys.iter().filter_map(|k| pack::id_from_key(k)).collect();
            let gone = idx.packs.iter().any(|p| !stored.contains(p))
                || idx.bad_packs.iter().any(|(k, _)| !keys.contains(k));
            let new: Vec<String> = keys
                .into_iter()
                .filter(|k| match pack::id_from_key(k) {
                    Some(id) => !idx.has_pack(&id),
                    None => !idx.bad_packs.iter().any(|(b, _)| b == k),
                })
                .collect();
            (new, gone)
        };
        if gone {
            return self.reload();
        }
        if new.is_empty() {
            return Ok(());
        }
        let loaded: Vec<(String, Result<_>)> = new
            .into_par_iter()
            .map(|k| {
                let r = read_trailer(self.backend.as_ref(), &k);
                (k, r)
            })
            .collect();
        let mut idx = self.index_mut();
        for (key, r) in loaded {
            match r {
                Ok((id, size, entries)) => idx.add_pack(id, size, entries),
                // Removed since it was listed.
                Err(e) if crate::index::is_not_found(&e) => {}
                Err(e) => {
                    if !idx.bad_packs.iter().any(|(b, _)| *b == key) {
                        idx.bad_packs.push((key, e));
                    }
                }
            }
        }
        Ok(())
    }

    /// Every committed generation, sorted by source then sequence.
    pub fn generations(&self) -> Result<Vec<GenId>> {
        let mut out: Vec<GenId> = self
            .backend
            .list("gens")?
            .iter()
            .filter_map(|k| manifest::parse_gen_key(k))
            .collect();
        out.sort();
        Ok(out)
    }

    pub fn sources(&self) -> Result<Vec<SourceName>> {
        let mut s: Vec<SourceName> = self.generations()?.into_iter().map(|g| g.source).collect();
        s.dedup();
        Ok(s)
    }

    pub fn record(&self, gen: &GenId) -> Result<GenRecord> {
        let key = manifest::gen_key(&gen.source, gen.seq);
        let raw = match self.backend.read(&key) {
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NoSuchGeneration(gen.to_string()))
            }
            r => r?,
        };
        let rec = GenRecord::decode(&raw, &format!("generation {gen}"))?;
        if rec.id() != *gen {
            return Err(corrupt(
                format!("generation {gen}"),
                format!("record names itself {}", rec.id()),
            ));
        }
        Ok(rec)
    }

    pub fn latest(&self, source: &SourceName) -> Result<Option<GenRecord>> {
        let last = self
            .generations()?
            .into_iter()
            .rfind(|g| &g.source == source);
        last.map(|g| self.record(&g)).transpose()
    }

    /// `SOURCE/SEQ`, `SOURCE/latest` or `SOURCE` (= latest).
    pub fn resolve(&self, spec: &str) -> Result<GenId> {
        let (src, seq) = spec.split_once('/').unwrap_or((spec, "latest"));
        let source = SourceName::new(src).map_err(Error::Invalid)?;
        if seq == "latest" {
            return self
                .latest(&source)?
                .map(|r| r.id())
                .ok_or_else(|| Error::NoSuchGeneration(format!("{source}/latest")));
        }
        let seq: u64 = seq.parse().map_err(|_| {
            Error::Invalid(format!(
                "bad generation {spec:?}: expected SOURCE/SEQ, SOURCE/latest or SOURCE"
            ))
        })?;
        let gen = GenId {
            source,
            seq: Seq(seq),
        };
        self.record(&gen)?;
        Ok(gen)
    }

    pub fn manifest(&self, rec: &GenRecord) -> Result<Vec<Node>> {
        let what = format!("manifest of {}", rec.id());
        let raw = self.read_stream(&rec.manifest_chunks)?;
        if raw.len() as u64 != rec.manifest_len || FileDigest::of(&raw) != rec.manifest_digest {
            return Err(corrupt(&what, "content does not match the record's digest"));
        }
        manifest::decode_manifest(&raw, &what)
    }

    pub fn read_stream(&self, chunks: &[ChunkRef]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for c in chunks {
            let d = self.chunk(&c.0)?;
            if d.len() != c.1 as usize {
                return Err(Error::DamagedChunk(
                    c.0,
                    format!("{} bytes, expected {}", d.len(), c.1),
                ));
            }
            out.extend_from_slice(&d);
        }
        Ok(out)
    }

    /// The stored payload of a blob, as it is in its pack.
    /// A pack gone since the index was read (gc moved its live blobs to a
    /// new pack) makes the index be refreshed and the blob looked up again.
    pub(crate) fn payload(&self, id: &ChunkId) -> Result<(pack::Entry, Vec<u8>)> {
        let mut refreshed = false;
        loop {
            let (pid, e) = {
                let idx = self.index();
                let info = idx.get(id).ok_or(Error::MissingChunk(*id))?;
                (idx.packs[info.pack as usize], info.entry.clone())
            };
            let key = pack::key(&pid);
            match self
                .backend
                .read_at(&key, e.offset as u64, e.stored_len as usize)
            {
                Ok(p) => return Ok((e, p)),
                Err(err) if !refreshed && crate::index::is_not_found(&err) => {
                    refreshed = true;
                    self.refresh()?;
                }
                Err(err) => return Err(Error::DamagedChunk(*id, format!("unreadable: {err}"))),
            }
        }
    }

    /// A chunk's plain content, decoded through its delta chain and checked
    /// against its id. Damaged data is an error, never returned.
    /// A damaged local copy of a pack (see [`Backend::uncache`]) is dropped and the chunk
    /// read again from the store before it is called damaged.
    pub fn chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let a = match decode_from(self, &self.cache, id, 0) {
            Err(Error::DamagedChunk(..)) if self.uncache_chain(id) => {
                decode_from(self, &self.cache, id, 0)?
            }
            r => r?,
        };
        Ok(Arc::try_unwrap(a).unwrap_or_else(|a| (*a).clone()))
    }

    /// Tell the backend which packs restoring `nodes` reads, in the order of first use,
    /// with the stored bytes needed of each (delta bases included).
    pub(crate) fn announce_reads(&self, nodes: &[Node]) {
        let keys = {
            let idx = self.index();
            let mut need: Vec<Option<u64>> = vec![None; idx.packs.len()];
            let mut order = Vec::new();
            let mut seen = DigestSet::default();
            for c in nodes.iter().flat_map(|n| n.chunk_list()) {
                idx.each_in_chain(c.0, &mut seen, |_, info| {
                    let p = info.pack as usize;
                    if need[p].is_none() {
                        order.push(p);
                    }
                    *need[p].get_or_insert(0) += info.entry.stored_len as u64;
                });
            }
            order
                .into_iter()
                .map(|p| (pack::key(&idx.packs[p]), need[p].unwrap_or(0)))
                .collect::<Vec<_>>()
        };
        self.backend.will_read(&keys);
    }

    /// Drop the backend's local copies of the packs `id` is decoded from (its own and its
    /// delta bases'), and the decoded bases; true when reading again may give other bytes.
    fn uncache_chain(&self, id: &ChunkId) -> bool {
        let mut chain = Vec::new();
        {
            let idx = self.index();
            idx.each_in_chain(*id, &mut DigestSet::default(), |c, info| {
                chain.push((c, idx.packs[info.pack as usize]));
            });
        }
        let mut dropped = false;
        for (c, pid) in chain {
            dropped |= self.backend.uncache(&pack::key(&pid));
            self.cache.remove(&c);
        }
        dropped
    }

    /// A chunk's plain content, decoded through its delta chain but *not*
    /// checked against its id: only for callers that prove the bytes another
    /// way (a whole file against its SHA-256 digest) and fall back to
    /// [`Archive::chunk`], which names the damaged chunk, when that fails.
    pub(crate) fn chunk_unchecked(&self, id: &ChunkId) -> Result<Arc<Vec<u8>>> {
        decode_unchecked(self, &self.cache, id)
    }

    /// The reference prefix of a delta: its bases' bytes, concatenated.
    pub(crate) fn prefix_of(&self, bases: &[ChunkId], depth: u32) -> Result<Vec<u8>> {
        prefix_from(self, &self.cache, bases, depth)
    }
}

/// Where blobs are read from: the archive, or the archive plus blobs being
/// received.
pub(crate) trait Blobs: Sync {
    fn blob(&self, id: &ChunkId) -> Result<(pack::Entry, Vec<u8>)>;
}

impl Blobs for Archive {
    fn blob(&self, id: &ChunkId) -> Result<(pack::Entry, Vec<u8>)> {
        self.payload(id)
    }
}

pub(crate) fn prefix_from(
    src: &dyn Blobs,
    cache: &ChunkCache,
    bases: &[ChunkId],
    depth: u32,
) -> Result<Vec<u8>> {
    let parts = bases
        .iter()
        .map(|b| match cache.get(b) {
            Some(d) => Ok(d),
            None => {
                let d = decode_from(src, cache, b, depth)?;
                cache.put(*b, d.clone());
                Ok(d)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        out.extend_from_slice(&p);
    }
    Ok(out)
}

/// Decode a chunk through its delta chain and check it against its id.
pub(crate) fn decode_from(
    src: &dyn Blobs,
    cache: &ChunkCache,
    id: &ChunkId,
    depth: u32,
) -> Result<Arc<Vec<u8>>> {
    decode_chain(src, cache, id, depth, depth == 0)
}

/// Decode a chunk through its delta chain without checking it against its id
/// (see [`Archive::chunk_unchecked`]).
pub(crate) fn decode_unchecked(
    src: &dyn Blobs,
    cache: &ChunkCache,
    id: &ChunkId,
) -> Result<Arc<Vec<u8>>> {
    decode_chain(src, cache, id, 0, false)
}

/// Decode a chunk through its delta chain; with `check`, check it against
/// its id.
fn decode_chain(
    src: &dyn Blobs,
    cache: &ChunkCache,
    id: &ChunkId,
    depth: u32,
    check: bool,
) -> Result<Arc<Vec<u8>>> {
    if depth > MAX_DEPTH as u32 + 1 {
        return Err(Error::DamagedChunk(
            *id,
            "delta chain too long or cyclic".into(),
        ));
    }
    let (e, payload) = src.blob(id)?;
    let prefix = if e.bases.is_empty() {
        None
    } else {
        Some(
            prefix_from(src, cache, &e.bases, depth + 1).map_err(|err| match err {
                Error::DamagedChunk(..) | Error::MissingChunk(_) => {
                    Error::DamagedChunk(*id, format!("a delta base is unusable: {err}"))
                }
                other => other,
            })?,
        )
    };
    let data = codec::decode(&payload, prefix.as_deref(), e.raw_len as usize)
        .map_err(|err| Error::DamagedChunk(*id, err.to_string()))?;
    // The chunk asked for is checked against its id; its delta bases need not
    // be: a wrong base cannot decode to bytes that pass this check. (Verify
    // checks every blob as a chunk asked for, so damage is still named.)
    if check && ChunkId::of(&data) != *id {
        return Err(Error::DamagedChunk(
            *id,
            "content does not match its SHA-256".into(),
        ));
    }
    Ok(Arc::new(data))
}

/// Recently decoded delta bases: neighbouring chunks share bases, so a
/// restore or verify decodes each base about once.
pub(crate) struct ChunkCache {
    inner: Mutex<CacheInner>,
    budget: usize,
}

#[derive(Default)]
struct CacheInner {
    map: DigestMap<ChunkId, (Arc<Vec<u8>>, u64)>,
    bytes: usize,
    tick: u64,
}

impl ChunkCache {
    pub fn new(budget: usize) -> Self {
        ChunkCache {
            inner: Mutex::new(CacheInner::default()),
            budget,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: &ChunkId) -> Option<Arc<Vec<u8>>> {
        let mut c = self.lock();
        c.tick += 1;
        let t = c.tick;
        let e = c.map.get_mut(id)?;
        e.1 = t;
        Some(e.0.clone())
    }

    pub fn remove(&self, id: &ChunkId) {
        let mut c = self.lock();
        if let Some((d, _)) = c.map.remove(id) {
            c.bytes -= d.len();
        }
    }

    pub fn put(&self, id: ChunkId, data: Arc<Vec<u8>>) {
        let mut c = self.lock();
        c.tick += 1;
        let t = c.tick;
        let len = data.len();
        if c.map.insert(id, (data, t)).is_none() {
            c.bytes += len;
        }
        while c.bytes > self.budget && c.map.len() > 1 {
            let oldest = c.map.iter().min_by_key(|(_, v)| v.1).map(|(k, _)| *k);
            if let Some(k) = oldest {
                if let Some((d, _)) = c.map.remove(&k) {
                    c.bytes -= d.len();
                }
            }
        }
    }
}
