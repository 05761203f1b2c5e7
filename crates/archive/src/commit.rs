//! Committing a generation: the one sequence both an ingest and a received
//! generation go through. `Commit::begin` takes the source's commit lock,
//! picks the next sequence number and applies the epoch fence;
//! `Commit::publish` syncs the staged packs and creates the record file, the
//! commit point. What a writer reuses before it commits is pinned (`Pins`),
//! so that a gc running at the same time leaves it alone (FORMAT.md, "gc
//! alongside writers").

use std::sync::{Arc, Mutex};

use crate::archive::Archive;
use crate::backend::{Backend, LockGuard};
use crate::error::{Error, Result};
use crate::id::{ChunkId, DigestMap, DigestSet, Epoch, GenId, PackId, Seq, SourceName};
use crate::index::is_not_found;
use crate::ingest::PackSink;
use crate::manifest::{self, GenRecord};
use crate::pack;

/// Shared by a commit's publish step and by writers pinning packs;
/// exclusive while gc reads the pins and deletes packs.
pub(crate) const SWEEP_LOCK: &str = "sweep";

/// A generation being committed: holds the source's commit lock from
/// `begin` until it is published or dropped.
pub struct Commit<'a> {
    archive: &'a Archive,
    source: SourceName,
    seq: Seq,
    prev: Option<GenRecord>,
    _lock: Box<dyn LockGuard>,
}

impl<'a> Commit<'a> {
    /// Take the commit lock of `source` (waiting for another commit to it, or
    /// failing with `Busy` when `wait` is false), pick the sequence number
    /// (`seq`, or the next one) and refuse an epoch lower than the latest
    /// generation's.
    pub fn begin(
        archive: &'a Archive,
        source: &SourceName,
        epoch: Epoch,
        seq: Option<Seq>,
        wait: bool,
    ) -> Result<Commit<'a>> {
        let lock = archive
            .backend
            .lock(&format!("source-{source}"), true, wait)
            .map_err(|e| match e {
                Error::Busy(_) => Error::Busy(format!("another ingest of {source} is running")),
                e => e,
            })?;
        let prev = archive.latest(source)?;
        let next = Seq(prev.as_ref().map_or(1, |p| p.seq.0 + 1));
        let seq = seq.unwrap_or(next);
        if seq < next {
            return Err(Error::GenerationExists(GenId {
                source: source.clone(),
                seq,
            }));
        }
        if let Some(p) = &prev {
            if epoch < p.epoch {
                return Err(Error::StaleEpoch {
                    gen: format!("{source}/{seq}"),
                    source_name: source.to_string(),
                    got: epoch.0,
                    have: p.epoch.0,
                });
            }
        }
        Ok(Commit {
            archive,
            source: source.clone(),
            seq,
            prev,
            _lock: lock,
        })
    }

    pub fn seq(&self) -> Seq {
        self.seq
    }

    /// The latest generation of the source when the commit began.
    pub fn prev(&self) -> Option<&GenRecord> {
        self.prev.as_ref()
    }

    /// Make the staged packs durable, check that every chunk in `uses` (and
    /// every delta base below it) is stored, then create the record: the
    /// commit point. Runs under the shared sweep lock, so a gc deletes
    /// nothing between the check and the record, and sees the record once
    /// it deletes. On any error no record exists.
    pub(crate) fn publish(self, sink: &mut PackSink, record: &GenRecord, uses: &[ChunkId]) -> Result<()> {
        if record.source != self.source || record.seq != self.seq {
            return Err(Error::Invalid(format!(
                "record {} does not match the commit of {}/{}",
                record.id(),
                self.source,
                self.seq
            )));
        }
        let ar = self.archive;
        let bytes = record.encode()?;
        let _sweep = ar.backend.lock(SWEEP_LOCK, false, true)?;
        sink.publish()?;
        {
            let mut idx = ar.index_mut();
            for (id, size, entries) in std::mem::take(&mut sink.packs) {
                idx.add_pack(id, size, entries);
            }
        }
        ar.refresh()?;
        check_stored(ar, uses, &record.id())?;
        if !ar
            .backend
            .create(&manifest::gen_key(&self.source, self.seq), &bytes)?
        {
            return Err(Error::GenerationExists(record.id()));
        }
        Ok(())
    }
}

/// Every chunk in `uses` and every delta base below it is in the index.
fn check_stored(ar: &Archive, uses: &[ChunkId], gen: &GenId) -> Result<()> {
    let idx = ar.index();
    let mut seen: DigestSet<ChunkId> = DigestSet::default();
    let mut stack: Vec<ChunkId> = uses.to_vec();
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        let info = idx.get(&id).ok_or_else(|| {
            Error::Invalid(format!(
                "chunk {id}, which generation {gen} uses, is no longer stored \
                 (removed by a gc running at the same time?); nothing was committed"
            ))
        })?;
        stack.extend(info.entry.bases.iter().copied());
    }
    Ok(())
}

/// The packs a running writer reuses blobs of, before its record protects
/// them: `pins/<owner>.pin`, one pack id (hex) a line, while the writer
/// holds `locks/pin-<owner>`. Removed when the writer is done; gc removes
/// the pins of a writer that was killed.
pub struct Pins {
    backend: Arc<dyn Backend>,
    owner: String,
    /// Pack -> whether it was still stored when pinned.
    held: Mutex<DigestMap<PackId, bool>>,
    alive: Option<Box<dyn LockGuard>>,
}

impl Pins {
    pub fn new(backend: Arc<dyn Backend>) -> Result<Pins> {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let owner = format!(
            "{}-{n}-{:x}",
            std::process::id(),
            crate::ingest::now_ns()
        );
        let alive = backend.lock(&format!("pin-{owner}"), true, false)?;
        Ok(Pins {
            backend,
            owner,
            held: Mutex::new(DigestMap::default()),
            alive: Some(alive),
        })
    }

    fn key(&self) -> String {
        format!("pins/{}.pin", self.owner)
    }

    /// Pin `pack`, whose blobs the writer is about to rely on. Returns false
    /// when the pack is no longer stored (gc removed it since the index was
    /// read): the writer must then store those blobs itself.
    pub fn hold(&self, pack: &PackId) -> Result<bool> {
        if let Some(&ok) = self.lock_held().get(pack) {
            return Ok(ok);
        }
        // Pin, then look, under the shared sweep lock: gc either sees the
        // pin before it deletes, or deleted before we look.
        let _sweep = self.backend.lock(SWEEP_LOCK, false, true)?;
        self.backend
            .append(&self.key(), format!("{}\n", pack.to_hex()).as_bytes())?;
        let ok = match self.backend.size(&pack::key(pack)) {
            Ok(_) => true,
            Err(e) if is_not_found(&e) => false,
            Err(e) => return Err(e),
        };
        self.lock_held().insert(*pack, ok);
        Ok(ok)
    }

    /// Pin the pack holding `id`, if the archive has it: whether the writer
    /// may rely on the archive's copy.
    pub fn reuse(&self, ar: &Archive, id: &ChunkId) -> Result<bool> {
        let pack = ar.index().pack_of(id);
        match pack {
            Some(p) => self.hold(&p),
            None => Ok(false),
        }
    }

    fn lock_held(&self) -> std::sync::MutexGuard<'_, DigestMap<PackId, bool>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = self.backend.remove(&self.key());
        let _ = self.backend.remove(&format!("locks/pin-{}", self.owner));
        self.alive.take();
    }
}

/// The packs pinned by running writers. Call under the exclusive sweep lock.
/// Pins of writers that are gone are removed.
pub(crate) fn live_pins(backend: &dyn Backend) -> Result<DigestSet<PackId>> {
    let mut out = DigestSet::default();
    for key in backend.list("pins")? {
        let Some(owner) = key
            .strip_prefix("pins/")
            .and_then(|k| k.strip_suffix(".pin"))
        else {
            continue;
        };
        match backend.lock(&format!("pin-{owner}"), true, false) {
            Ok(_gone) => {
                backend.remove(&key)?;
                backend.remove(&format!("locks/pin-{owner}"))?;
            }
            Err(Error::Busy(_)) => {
                let raw = match backend.read(&key) {
                    Ok(r) => r,
                    // Its writer finished since the listing.
                    Err(e) if is_not_found(&e) => continue,
                    Err(e) => return Err(e),
                };
                out.extend(
                    String::from_utf8_lossy(&raw)
                        .lines()
                        .filter_map(|l| l.parse::<PackId>().ok()),
                );
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}
