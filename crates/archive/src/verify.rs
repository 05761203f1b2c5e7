//! Verify: quick (structure: every generation readable, every chunk it uses
//! present, every delta base present) or full (also decode every blob and
//! re-hash it, and re-hash every pack). A damaged chunk is reported with every
//! generation and path that depends on it.

use std::collections::BTreeMap;
use std::sync::Mutex;

use rayon::prelude::*;
use serde::Serialize;

use crate::archive::Archive;
use crate::error::{Error, Result};
use crate::id::{ChunkId, DigestMap, GenId, PackId};
use crate::pack;

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// `chunk ID`, `pack KEY` or `generation SOURCE/SEQ`.
    pub object: String,
    pub what: String,
    /// `SOURCE/SEQ:path` of everything that cannot be restored because of it.
    pub used_by: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub full: bool,
    pub generations: usize,
    pub packs: usize,
    pub blobs: usize,
    pub blobs_checked: usize,
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl Archive {
    /// Runs alongside ingests, prune and gc: it takes only shared access,
    /// and what a gc running meanwhile removed (packs, generations a prune
    /// removed) is not reported as missing.
    pub fn verify(&self, full: bool) -> Result<VerifyReport> {
        let _shared = self.backend.lock("archive", false, true)?;
        self.refresh()?;
        let mut problems = Vec::new();
        let mut damaged: DigestMap<ChunkId, String> = DigestMap::default();
        let (packs, ids) = {
            let idx = self.index();
            for (key, e) in &idx.bad_packs {
                problems.push(Problem {
                    object: format!("pack {key}"),
                    what: e.to_string(),
                    used_by: vec![],
                });
            }
            for (id, info) in &idx.blobs {
                for b in &info.entry.bases {
                    if !idx.contains(b) {
                        damaged.insert(*id, format!("its delta base {b} is missing"));
                    }
                }
            }
            let ids: Vec<ChunkId> = idx.blobs.keys().copied().collect();
            (idx.packs.clone(), ids)
        };
        let mut checked = 0;
        if full {
            let pack_problems = Mutex::new(Vec::new());
            packs.par_iter().for_each(|pid: &PackId| {
                let key = pack::key(pid);
                match self.backend.read(&key) {
                    Ok(b) if PackId::of(&b) == *pid => {}
                    // Removed by a gc since the index was read.
                    Err(e) if crate::index::is_not_found(&e) => {}
                    Ok(_) => pack_problems
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(Problem {
                            object: format!("pack {key}"),
                            what: "content does not match its name (SHA-256); see the chunks below"
                                .into(),
                            used_by: vec![],
                        }),
                    Err(e) => pack_problems
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(Problem {
                            object: format!("pack {key}"),
                            what: e.to_string(),
                            used_by: vec![],
                        }),
                }
            });
            problems.extend(
                pack_problems
                    .into_inner()
                    .unwrap_or_else(|p| p.into_inner()),
            );
            let bad: Vec<(ChunkId, String)> = ids
                .par_iter()
                .filter_map(|id| self.chunk(id).err().map(|e| (*id, e.to_string())))
                .collect();
            checked = ids.len();
            // A blob gc removed meanwhile is not damaged: look again at
            // what failed, with the index as it is now.
            let bad = if bad.is_empty() {
                bad
            } else {
                self.refresh()?;
                bad.into_iter()
                    .filter(|(id, _)| self.has_blob(id) && self.chunk(id).is_err())
                    .collect()
            };
            for (id, why) in bad {
                damaged.entry(id).or_insert(why);
            }
        }

        // Which generations and paths each damaged or missing chunk breaks.
        let mut users: BTreeMap<ChunkId, (String, Vec<(GenId, String)>)> = BTreeMap::new();
        let gens = self.generations()?;
        // Every generation listed has its packs stored before its record.
        self.refresh()?;
        let mut gen_problems: Vec<(GenId, Problem)> = Vec::new();
        for g in &gens {
            let rec = match self.record(g) {
                Ok(r) => r,
                // Removed by a prune since it was listed.
                Err(Error::NoSuchGeneration(_)) => continue,
                Err(e) => {
                    gen_problems.push((
                        g.clone(),
                        Problem {
                            object: format!("generation {g}"),
                            what: e.to_string(),
                            used_by: vec![g.to_string()],
                        },
                    ));
                    continue;
                }
            };
            let mut note = |id: &ChunkId, user: String| {
                let why = if let Some(w) = damaged.get(id) {
                    w.clone()
                } else if !self.has_blob(id) {
                    "missing from the archive".to_string()
                } else {
                    return;
                };
                users
                    .entry(*id)
                    .or_insert_with(|| (why, Vec::new()))
                    .1
                    .push((g.clone(), user));
            };
            for c in &rec.manifest_chunks {
                note(&c.0, format!("{g} (its file list)"));
            }
            match self.manifest(&rec) {
                Ok(nodes) => {
                    for n in &nodes {
                        for c in n.chunk_list() {
                            note(&c.0, format!("{g}:{}", n.path_lossy()));
                        }
                    }
                }
                Err(e) => gen_problems.push((
                    g.clone(),
                    Problem {
                        object: format!("generation {g}"),
                        what: format!("file list unreadable: {e}"),
                        used_by: vec![g.to_string()],
                    },
                )),
            }
        }
        // A prune and gc running meanwhile may have removed generations and
        // the blobs only they used: what is gone now is not a problem.
        let mut gone_gens = false;
        if !users.is_empty() || !gen_problems.is_empty() || !damaged.is_empty() {
            self.refresh()?;
            let now: std::collections::HashSet<GenId> = self.generations()?.into_iter().collect();
            gone_gens = gens.iter().any(|g| !now.contains(g));
            damaged.retain(|id, _| self.has_blob(id));
            users.retain(|id, (why, used_by)| {
                used_by.retain(|(g, _)| now.contains(g));
                let missing = why.as_str() == "missing from the archive";
                if missing && self.has_blob(id) {
                    return false;
                }
                !used_by.is_empty() || damaged.contains_key(id)
            });
            gen_problems.retain(|(g, _)| now.contains(g));
        }
        problems.extend(gen_problems.into_iter().map(|(_, p)| p));
        for (id, why) in &damaged {
            if !users.contains_key(id) {
                users.insert(*id, (why.clone(), Vec::new()));
            }
        }
        for (id, (what, used_by)) in users {
            let mut used_by: Vec<String> = used_by.into_iter().map(|(_, u)| u).collect();
            used_by.dedup();
            problems.push(Problem {
                object: format!("chunk {id}"),
                what,
                used_by,
            });
        }
        let (npacks, nblobs) = {
            let idx = self.index();
            (idx.packs.len(), idx.blobs.len())
        };
        let generations = if gone_gens {
            self.generations()?.len()
        } else {
            gens.len()
        };
        Ok(VerifyReport {
            full,
            generations,
            packs: npacks,
            blobs: nblobs,
            blobs_checked: checked,
            problems,
        })
    }
}
