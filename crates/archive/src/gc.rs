//! Garbage collection: remove data that no generation needs. Runs alongside
//! ingests, received generations, restores, prune and verify; one gc at a
//! time (`locks/gc`; a second waits, or fails at once with `wait = false`).
//! It marks from every record, plans, writes the copies, then, under the
//! exclusive sweep lock (no commit publishing, no writer pinning), spares
//! every planned pack that a generation committed since the mark or a
//! running writer's pins still need, and deletes the rest (FORMAT.md, "gc
//! alongside writers"). Packs that hold only dead blobs are deleted; packs
//! that are mostly dead are rewritten with their live blobs first (new pack
//! durable before the old one goes). Delta bases of live blobs are live.

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;

use crate::archive::Archive;
use crate::commit::{live_pins, SWEEP_LOCK};
use crate::error::{Error, Result};
use crate::id::{ChunkId, DigestMap, DigestSet, GenId, PackId};
use crate::index::{is_not_found, read_trailer};
use crate::ingest::PackSink;
use crate::pack::{self, Entry};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GcPlan {
    pub live_blobs: u64,
    pub dead_blobs: u64,
    /// Packs with nothing live: deleted.
    pub delete_packs: Vec<String>,
    /// Packs mostly dead: live blobs copied to new packs, then deleted.
    pub repack_packs: Vec<String>,
    /// Bytes the deletions free (before the copies are written).
    pub freed_bytes: u64,
    /// Leftover temporary files of interrupted writes.
    pub tmp_files: Vec<String>,
}

impl fmt::Display for GcPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "gc plan: {} live chunks, {} dead; delete {} packs, repack {}, remove {} temporary files; frees {:.2} MB",
            self.live_blobs,
            self.dead_blobs,
            self.delete_packs.len(),
            self.repack_packs.len(),
            self.tmp_files.len(),
            self.freed_bytes as f64 / 1e6
        )?;
        for p in &self.delete_packs {
            writeln!(f, "  delete {p}")?;
        }
        for p in &self.repack_packs {
            writeln!(f, "  repack {p}")?;
        }
        Ok(())
    }
}

struct Sweep {
    plan: GcPlan,
    /// Blobs to copy out of repacked packs.
    copies: Vec<Entry>,
    /// The generations marked from.
    gens: std::collections::HashSet<GenId>,
    /// The trailer of every pack planned with.
    trailers: HashMap<PackId, Vec<Entry>>,
    /// Bytes each deleted or repacked pack frees.
    frees: HashMap<PackId, u64>,
}

/// Held by gc from its plan to its last deletion: one gc at a time.
const GC_LOCK: &str = "gc";

impl Archive {
    /// Everything any generation needs, delta bases included.
    fn live_set(&self) -> Result<(DigestSet<ChunkId>, std::collections::HashSet<GenId>)> {
        let mut used = DigestSet::default();
        let mut gens = std::collections::HashSet::new();
        for g in self.generations()? {
            if let Some(ids) = self.chunks_of(&g)? {
                used.extend(ids);
                gens.insert(g);
            }
        }
        let idx = self.index();
        let mut live = DigestSet::default();
        for id in used {
            idx.each_in_chain(id, &mut live, |_, _| {});
        }
        Ok((live, gens))
    }

    /// The chunks a generation uses (not their delta bases); None when it
    /// was removed (by a prune) since it was listed.
    fn chunks_of(&self, g: &GenId) -> Result<Option<Vec<ChunkId>>> {
        let rec = match self.record(g) {
            Ok(r) => r,
            Err(Error::NoSuchGeneration(_)) => return Ok(None),
            Err(e) => return Err(unsafe_to_collect(&g.to_string(), e)),
        };
        let nodes = self
            .manifest(&rec)
            .map_err(|e| unsafe_to_collect(&g.to_string(), e))?;
        Ok(Some(
            rec.manifest_chunks
                .iter()
                .copied()
                .chain(nodes.iter().flat_map(|n| n.chunk_list()))
                .map(|c| c.0)
                .collect(),
        ))
    }

    fn sweep(&self) -> Result<Sweep> {
        if let Some((key, e)) = self.index().bad_packs.first() {
            return Err(Error::Invalid(format!(
                "pack {key} is unreadable ({e}); gc refuses to run until it is repaired or removed"
            )));
        }
        let (mut live, gens) = self.live_set()?;
        let mut packs: Vec<(PackId, u64)> = {
            let idx = self.index();
            idx.packs
                .iter()
                .copied()
                .zip(idx.pack_sizes.iter().copied())
                .collect()
        };
        packs.sort();
        let mut trailers: HashMap<PackId, Vec<Entry>> = HashMap::new();
        for (pid, _) in &packs {
            let (_, _, entries) = read_trailer(self.backend.as_ref(), &pack::key(pid))?;
            trailers.insert(*pid, entries);
        }
        let (mut plan, copies, frees) = loop {
            let mut home: DigestSet<ChunkId> = DigestSet::default();
            let mut plan = GcPlan::default();
            let mut copies = Vec::new();
            let mut frees = HashMap::new();
            let mut per_pack: HashMap<PackId, Vec<(Entry, bool)>> = HashMap::new();
            let mut dead_bytes: HashMap<PackId, u64> = HashMap::new();
            for (pid, size) in &packs {
                let mut dead = *size;
                let mut v = Vec::new();
                for e in &trailers[pid] {
                    // A blob lives in the first pack that holds it; other copies are dead.
                    let alive = live.contains(&e.id) && home.insert(e.id);
                    if alive {
                        plan.live_blobs += 1;
                        dead -= e.stored_len as u64 + pack::ENTRY_LEN as u64;
                    } else {
                        plan.dead_blobs += 1;
                    }
                    v.push((e.clone(), alive));
                }
                dead_bytes.insert(*pid, dead);
                per_pack.insert(*pid, v);
            }
            let mut kept = Vec::new();
            for (pid, size) in &packs {
                let entries = &per_pack[pid];
                let dead = dead_bytes[pid];
                let any_live = entries.iter().any(|(_, a)| *a);
                // A pack without dead blobs is never rewritten (its fixed
                // overhead looks dead): the copy would be the same pack.
                let any_dead = entries.iter().any(|(_, a)| !*a);
                if !any_live {
                    plan.delete_packs.push(pack::key(pid));
                    plan.freed_bytes += size;
                    frees.insert(*pid, *size);
                } else if dead * 5 > *size && any_dead {
                    plan.repack_packs.push(pack::key(pid));
                    plan.freed_bytes += dead;
                    frees.insert(*pid, dead);
                    copies.extend(entries.iter().filter(|(_, a)| *a).map(|(e, _)| e.clone()));
                } else {
                    kept.push(*pid);
                }
            }
            // Every blob of a pack that stays, dead or not, stays in the
            // index, and ingest reuses any chunk the index has: its delta
            // bases must stay too. Keep them, and plan again.
            let mut more: Vec<ChunkId> = kept
                .iter()
                .flat_map(|pid| trailers[pid].iter().flat_map(|e| e.bases.iter().copied()))
                .filter(|b| !live.contains(b))
                .collect();
            if more.is_empty() {
                break (plan, copies, frees);
            }
            let idx = self.index();
            while let Some(b) = more.pop() {
                if live.insert(b) {
                    if let Some(info) = idx.get(&b) {
                        more.extend(info.entry.bases.iter().copied());
                    }
                }
            }
        };
        plan.tmp_files = self.backend.list("tmp")?;
        plan.tmp_files.sort();
        Ok(Sweep {
            plan,
            copies,
            gens,
            trailers,
            frees,
        })
    }

    /// What gc would do now.
    pub fn gc_plan(&self, wait: bool) -> Result<GcPlan> {
        let _g = self.backend.lock(GC_LOCK, true, wait)?;
        self.refresh()?;
        Ok(self.sweep()?.plan)
    }

    /// Collect garbage. The plan is made again, so what runs is always what
    /// is safe now; returns the bytes freed.
    pub fn gc(&self, shown: &GcPlan, wait: bool) -> Result<u64> {
        let backend = self.backend.clone();
        let _g = backend.lock(GC_LOCK, true, wait)?;
        self.refresh()?;
        let sw = self.sweep()?;
        let (plan, copies) = (&sw.plan, &sw.copies);
        if plan != shown {
            tracing::info!(
                "the archive changed since the plan was shown; running the current plan"
            );
        }
        let mut sink = PackSink::new(backend.as_ref());
        for e in copies {
            // Decode and check before copying: damage is not propagated.
            self.chunk(&e.id)?;
            let (e, payload) = self.payload(&e.id)?;
            sink.add(e, &payload)?;
        }
        sink.publish()?;
        // A pack the copies went into may already have existed, byte for
        // byte, as one the plan removes (left by an interrupted gc): it now
        // holds the live copies, so it stays.
        let written: Vec<PackId> = sink.packs.iter().map(|(id, _, _)| *id).collect();
        {
            let mut idx = self.index_mut();
            for (id, size, entries) in std::mem::take(&mut sink.packs) {
                idx.add_pack(id, size, entries);
            }
        }
        let doomed: DigestSet<PackId> = plan
            .delete_packs
            .iter()
            .chain(&plan.repack_packs)
            .filter_map(|k| pack::id_from_key(k))
            .filter(|p| !written.contains(p))
            .collect();
        let mut freed = 0;
        {
            // No commit publishes and no writer pins while this is held.
            let _x = backend.lock(SWEEP_LOCK, true, true)?;
            self.refresh()?;
            let spared = self.spared(&sw, &doomed)?;
            if !spared.is_empty() {
                tracing::info!(
                    "gc keeps {} packs that generations committed since it started, or running ingests, need",
                    spared.len()
                );
            }
            for p in doomed.iter().filter(|p| !spared.contains(*p)) {
                backend.remove(&pack::key(p))?;
                freed += sw.frees.get(p).copied().unwrap_or(0);
            }
        }
        // Temporary files are a running writer's staged packs unless no
        // writer holds the archive: removed only then.
        if let Ok(_x) = backend.lock("archive", true, false) {
            for key in backend.list("tmp")? {
                backend.remove(&key)?;
            }
        }
        self.refresh()?;
        Ok(freed)
    }

    /// Of the packs gc means to delete, those that must stay after all:
    /// pinned by a running writer, holding a chunk a generation committed
    /// since the mark uses, or a delta base of a blob in a pack that stays
    /// and was not planned with (new, or spared). Call under the exclusive
    /// sweep lock, with the index refreshed.
    fn spared(&self, sw: &Sweep, doomed: &DigestSet<PackId>) -> Result<DigestSet<PackId>> {
        let mut need: Vec<ChunkId> = Vec::new();
        for g in self.generations()? {
            if !sw.gens.contains(&g) {
                need.extend(self.chunks_of(&g)?.unwrap_or_default());
            }
        }
        let pinned = live_pins(self.backend.as_ref())?;
        let packs: Vec<PackId> = self.index().packs.clone();
        let mut extra: HashMap<PackId, Vec<Entry>> = HashMap::new();
        for p in packs.iter().filter(|p| !sw.trailers.contains_key(*p)) {
            match read_trailer(self.backend.as_ref(), &pack::key(p)) {
                Ok((_, _, entries)) => {
                    extra.insert(*p, entries);
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e),
            }
        }
        let entries_of = |p: &PackId| sw.trailers.get(p).or_else(|| extra.get(p));
        // Blobs in packs that stay, and where each doomed blob is.
        let mut stored: DigestSet<ChunkId> = DigestSet::default();
        let mut holders: DigestMap<ChunkId, PackId> = DigestMap::default();
        for p in &packs {
            for e in entries_of(p).into_iter().flatten() {
                if doomed.contains(p) {
                    holders.entry(e.id).or_insert(*p);
                } else {
                    stored.insert(e.id);
                }
            }
        }
        let mut spared: DigestSet<PackId> = DigestSet::default();
        let spare = |p: PackId,
                     stored: &mut DigestSet<ChunkId>,
                     need: &mut Vec<ChunkId>,
                     spared: &mut DigestSet<PackId>| {
            if spared.insert(p) {
                for e in entries_of(&p).into_iter().flatten() {
                    stored.insert(e.id);
                    need.extend(e.bases.iter().copied());
                }
            }
        };
        for p in doomed.iter().filter(|p| pinned.contains(*p)) {
            spare(*p, &mut stored, &mut need, &mut spared);
        }
        for e in extra.values().flatten() {
            need.extend(e.bases.iter().copied());
        }
        while let Some(id) = need.pop() {
            if stored.contains(&id) {
                continue;
            }
            // Stored nowhere else: keep the doomed pack that has it. (Stored
            // nowhere at all: a commit's own check refuses it.)
            if let Some(p) = holders.get(&id) {
                spare(*p, &mut stored, &mut need, &mut spared);
            }
        }
        Ok(spared)
    }
}

fn unsafe_to_collect(gen: &str, e: Error) -> Error {
    Error::Invalid(format!(
        "generation {gen} is unreadable ({e}); gc refuses to run, as it cannot tell what that generation needs"
    ))
}

impl Archive {
    /// Keep the newest `n` generations of every source and collect what the
    /// others held: the retention of a node's local archive (an exporter's
    /// outbox, an importer's store). Returns how many generations went.
    pub fn keep_last(&self, n: u32, wait: bool) -> Result<usize> {
        let plan = self.prune_plan(&crate::prune::Retention {
            keep_last: Some(n.max(1)),
            ..Default::default()
        })?;
        let removed = plan.removed().count();
        if removed > 0 {
            self.apply_prune(&plan)?;
            let gc = self.gc_plan(wait)?;
            self.gc(&gc, wait)?;
        }
        Ok(removed)
    }
}
