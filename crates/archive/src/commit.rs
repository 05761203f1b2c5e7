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
    pub(crate) fn publish(
        self,
        sink: &mut PackSink,
        record: &GenRecord,
        uses: impl IntoIterator<Item = ChunkId>,
    ) -> Result<()> {
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
fn check_stored(ar: &Archive, uses: impl IntoIterator<Item = ChunkId>, gen: &GenId) -> Result<()> {
    let gone = |id: &ChunkId| {
        Error::Invalid(format!(
            "chunk {id}, which generation {gen} uses, is no longer stored \
             (removed by a gc running at the same time?); nothing was committed"
        ))
    };
    let idx = ar.index();
    let mut bases: DigestSet<ChunkId> = DigestSet::default();
    let mut stack: Vec<ChunkId> = Vec::new();
    for id in uses {
        let info = idx.get(&id).ok_or_else(|| gone(&id))?;
        stack.extend(info.entry.bases.iter().copied());
        while let Some(b) = stack.pop() {
            if bases.insert(b) {
                let info = idx.get(&b).ok_or_else(|| gone(&b))?;
                stack.extend(info.entry.bases.iter().copied());
            }
        }
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
        let owner = format!("{}-{n}-{:x}", std::process::id(), crate::ingest::now_ns());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::IngestOptions;
    use crate::prune::Retention;
    use crate::transfer::Incoming;
    use std::path::{Path, PathBuf};

    /// Deterministic bytes that do not compress or dedup within themselves.
    fn data(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn tree(root: &Path, name: &str, files: &[(&str, Vec<u8>)]) -> PathBuf {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for (f, b) in files {
            std::fs::write(d.join(f), b).unwrap();
        }
        d
    }

    fn ingest(ar: &Archive, source: &str, dir: &Path, epoch: u64) -> Result<GenRecord> {
        let opts = IngestOptions {
            epoch: Epoch(epoch),
            ..Default::default()
        };
        Ok(ar
            .ingest(&SourceName::new(source).unwrap(), dir, &opts)?
            .record)
    }

    /// Everything `to` lacks of `gen`, received from `from`; not committed.
    fn receive(from: &Archive, to: &Archive, gen: &GenId) -> Incoming {
        let mut inc = Incoming::new(&from.record_bytes(gen).unwrap()).unwrap();
        for _ in 0..100 {
            let need = inc.missing(to).unwrap();
            if need.is_empty() {
                return inc;
            }
            inc.add_pack(&from.export_blobs(&need).unwrap()).unwrap();
        }
        panic!("no progress receiving {gen}");
    }

    fn packs(ar: &Archive) -> Vec<String> {
        let mut p = ar.backend().list("packs").unwrap();
        p.sort();
        p
    }

    #[test]
    fn threads_committing_to_one_source_get_consecutive_distinct_numbers() {
        let t = tempfile::tempdir().unwrap();
        let a = Archive::init(&t.path().join("a")).unwrap();
        let src = tree(t.path(), "src", &[("f", data(1, 300_000))]);
        let g = ingest(&a, "s", &src, 0).unwrap().id();
        let b = Arc::new(Archive::init(&t.path().join("b")).unwrap());
        let a = Arc::new(a);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (a, b, g) = (a.clone(), b.clone(), g.clone());
                std::thread::spawn(move || {
                    let inc = receive(&a, &b, &g);
                    b.commit_incoming(inc, None).unwrap().seq.0
                })
            })
            .collect();
        let mut seqs: Vec<u64> = threads.into_iter().map(|h| h.join().unwrap()).collect();
        seqs.sort();
        assert_eq!(seqs, [1, 2, 3, 4]);
        let gens: Vec<String> = b
            .generations()
            .unwrap()
            .iter()
            .map(|g| g.to_string())
            .collect();
        assert_eq!(gens, ["s/1", "s/2", "s/3", "s/4"]);
        assert!(b.verify(true).unwrap().is_clean());
        assert!(b.backend().list("pins").unwrap().is_empty());
    }

    #[test]
    fn one_commit_at_a_time_and_a_lower_epoch_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let ar = Archive::init(&t.path().join("a")).unwrap();
        let s = SourceName::new("s").unwrap();
        let src = tree(t.path(), "src", &[("f", data(2, 200_000))]);
        ingest(&ar, "s", &src, 5).unwrap();
        let c = Commit::begin(&ar, &s, Epoch(5), None, false).unwrap();
        assert_eq!(c.seq(), Seq(2));
        assert_eq!(c.prev().map(|p| p.seq), Some(Seq(1)));
        assert!(matches!(
            Commit::begin(&ar, &s, Epoch(5), None, false),
            Err(Error::Busy(_))
        ));
        let e = ingest(&ar, "s", &src, 5).unwrap_err();
        assert!(e.to_string().contains("another ingest of s"), "{e}");
        drop(c);
        assert!(matches!(
            Commit::begin(&ar, &s, Epoch(4), None, true),
            Err(Error::StaleEpoch {
                got: 4,
                have: 5,
                ..
            })
        ));
        assert!(matches!(
            Commit::begin(&ar, &s, Epoch(6), Some(Seq(1)), true),
            Err(Error::GenerationExists(_))
        ));
        // An ingest under a lower epoch stores nothing at all.
        let before = packs(&ar);
        std::fs::write(src.join("g"), data(3, 200_000)).unwrap();
        let e = ingest(&ar, "s", &src, 4).unwrap_err();
        assert!(matches!(e, Error::StaleEpoch { .. }), "{e}");
        assert_eq!(packs(&ar), before);
        assert_eq!(ar.generations().unwrap().len(), 1);
        // The same epoch or a higher one commits.
        assert_eq!(ingest(&ar, "s", &src, 5).unwrap().seq, Seq(2));
        assert_eq!(ingest(&ar, "s", &src, 7).unwrap().seq, Seq(3));
    }

    #[test]
    fn nothing_is_published_when_a_used_chunk_is_not_stored() {
        let t = tempfile::tempdir().unwrap();
        let ar = Archive::init(&t.path().join("a")).unwrap();
        let s = SourceName::new("s").unwrap();
        let src = tree(t.path(), "src", &[("f", data(4, 100_000))]);
        let r1 = ingest(&ar, "s", &src, 0).unwrap();
        let c = Commit::begin(&ar, &s, Epoch(0), None, true).unwrap();
        let mut rec = r1.clone();
        rec.seq = c.seq();
        let mut sink = PackSink::new(ar.backend());
        let nowhere = ChunkId::of(b"stored nowhere");
        let e = c.publish(&mut sink, &rec, [nowhere]).unwrap_err();
        assert!(e.to_string().contains(&nowhere.to_string()), "{e}");
        assert_eq!(ar.generations().unwrap(), vec![r1.id()]);
        // A record that is not the commit's is refused too.
        let c = Commit::begin(&ar, &s, Epoch(0), None, true).unwrap();
        assert!(c.publish(&mut sink, &r1, []).is_err());
        assert_eq!(ar.generations().unwrap(), vec![r1.id()]);
    }

    #[test]
    fn gc_spares_the_packs_a_running_transfer_reuses() {
        let t = tempfile::tempdir().unwrap();
        let shared = data(5, 3 << 20);
        let a = Archive::init(&t.path().join("a")).unwrap();
        let x = tree(t.path(), "x", &[("same", shared.clone())]);
        let gx = ingest(&a, "x", &x, 0).unwrap().id();
        for pinned in [true, false] {
            let b = Archive::init(&t.path().join(format!("b-{pinned}"))).unwrap();
            // y/1 holds the shared content; y/2 does not; prune y/1: the
            // shared blobs are now dead in b, but still in its index.
            let y1 = tree(t.path(), "y1", &[("same", shared.clone())]);
            let y2 = tree(t.path(), "y2", &[("other", data(6, 500_000))]);
            ingest(&b, "y", &y1, 0).unwrap();
            let first = packs(&b);
            ingest(&b, "y", &y2, 0).unwrap();
            let plan = b
                .prune_plan(&Retention {
                    keep_last: Some(1),
                    ..Default::default()
                })
                .unwrap();
            assert_eq!(b.apply_prune(&plan).unwrap(), 1);
            // The transfer relies on b's copy of the shared file: it asks
            // only for the file list.
            let mut inc = Incoming::new(&a.record_bytes(&gx).unwrap()).unwrap();
            let need = inc.missing(&b).unwrap();
            assert_eq!(need.len(), 1);
            inc.add_pack(&a.export_blobs(&need).unwrap()).unwrap();
            assert!(inc.missing(&b).unwrap().is_empty());
            let gc = b.gc_plan(true).unwrap();
            assert!(gc.delete_packs.contains(&first[0]), "{gc}");
            if !pinned {
                // Without the transfer's pins the dead pack goes.
                drop(inc);
                b.gc(&gc, true).unwrap();
                assert!(!packs(&b).contains(&first[0]));
                continue;
            }
            b.gc(&gc, true).unwrap();
            assert!(packs(&b).contains(&first[0]), "gc removed a pinned pack");
            let rec = b.commit_incoming(inc, Some(gx.seq)).unwrap();
            assert!(b.backend().list("pins").unwrap().is_empty());
            assert!(b.verify(true).unwrap().is_clean());
            let out = t.path().join("out");
            b.restore(&rec.id(), &out).unwrap();
            assert_eq!(std::fs::read(out.join("same")).unwrap(), shared);
        }
    }
}
