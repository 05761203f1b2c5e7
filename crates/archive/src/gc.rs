//! Garbage collection: remove data that no generation needs. Runs under the
//! archive's exclusive lock, so it waits for ingests, restores and verifies to
//! finish (or fails at once with `wait = false`) and never sees half-written
//! generations. Packs that hold only dead blobs are deleted; packs that are
//! mostly dead are rewritten with their live blobs first (new pack durable
//! before the old one goes). Delta bases of live blobs are live.

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;

use crate::archive::Archive;
use crate::error::{Error, Result};
use crate::id::{ChunkId, DigestSet, PackId};
use crate::index::read_trailer;
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
}

impl Archive {
    /// Everything any generation needs, delta bases included.
    fn live_set(&self) -> Result<DigestSet<ChunkId>> {
        let mut live = DigestSet::default();
        for g in self.generations()? {
            let rec = self
                .record(&g)
                .map_err(|e| unsafe_to_collect(&g.to_string(), e))?;
            let nodes = self
                .manifest(&rec)
                .map_err(|e| unsafe_to_collect(&g.to_string(), e))?;
            live.extend(rec.manifest_chunks.iter().map(|c| c.0));
            live.extend(nodes.iter().flat_map(|n| n.chunk_list()).map(|c| c.0));
        }
        let mut stack: Vec<ChunkId> = live.iter().copied().collect();
        while let Some(id) = stack.pop() {
            if let Some(info) = self.index.get(&id) {
                for b in &info.entry.bases {
                    if live.insert(*b) {
                        stack.push(*b);
                    }
                }
            }
        }
        Ok(live)
    }

    fn sweep(&self) -> Result<Sweep> {
        if let Some((key, e)) = self.index.bad_packs.first() {
            return Err(Error::Invalid(format!(
                "pack {key} is unreadable ({e}); gc refuses to run until it is repaired or removed"
            )));
        }
        let mut live = self.live_set()?;
        let mut packs: Vec<(PackId, u64)> = self
            .index
            .packs
            .iter()
            .copied()
            .zip(self.index.pack_sizes.iter().copied())
            .collect();
        packs.sort();
        let mut trailers: HashMap<PackId, Vec<Entry>> = HashMap::new();
        for (pid, _) in &packs {
            let (_, _, entries) = read_trailer(self.backend.as_ref(), &pack::key(pid))?;
            trailers.insert(*pid, entries);
        }
        let (mut plan, copies) = loop {
            let mut home: DigestSet<ChunkId> = DigestSet::default();
            let mut plan = GcPlan::default();
            let mut copies = Vec::new();
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
                } else if dead * 5 > *size && any_dead {
                    plan.repack_packs.push(pack::key(pid));
                    plan.freed_bytes += dead;
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
                break (plan, copies);
            }
            while let Some(b) = more.pop() {
                if live.insert(b) {
                    if let Some(info) = self.index.get(&b) {
                        more.extend(info.entry.bases.iter().copied());
                    }
                }
            }
        };
        plan.tmp_files = self.backend.list("tmp")?;
        plan.tmp_files.sort();
        Ok(Sweep { plan, copies })
    }

    /// What gc would do now. Takes the exclusive lock while it looks.
    pub fn gc_plan(&mut self, wait: bool) -> Result<GcPlan> {
        let _x = self.backend.lock("archive", true, wait)?;
        self.reload()?;
        Ok(self.sweep()?.plan)
    }

    /// Collect garbage. The plan is made again under the lock, so what runs
    /// is always what is safe now; returns the bytes freed.
    pub fn gc(&mut self, shown: &GcPlan, wait: bool) -> Result<u64> {
        let backend = self.backend.clone();
        let _x = backend.lock("archive", true, wait)?;
        self.reload()?;
        let Sweep { plan, copies } = self.sweep()?;
        if plan != *shown {
            tracing::info!(
                "the archive changed since the plan was shown; running the current plan"
            );
        }
        let mut sink = PackSink::new(backend.as_ref());
        for e in &copies {
            // Decode and check before copying: damage is not propagated.
            self.chunk(&e.id)?;
            let (e, payload) = self.payload(&e.id)?;
            sink.add(e, &payload)?;
        }
        sink.publish()?;
        // A pack the copies went into may already have existed, byte for
        // byte, as one the plan removes (left by an interrupted gc): it now
        // holds the live copies, so it stays.
        let written: Vec<String> = sink.packs.iter().map(|(id, _, _)| pack::key(id)).collect();
        for key in plan.delete_packs.iter().chain(&plan.repack_packs) {
            if !written.contains(key) {
                backend.remove(key)?;
            }
        }
        for key in &plan.tmp_files {
            backend.remove(key)?;
        }
        self.reload()?;
        Ok(plan.freed_bytes)
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
    pub fn keep_last(&mut self, n: u32, wait: bool) -> Result<usize> {
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
