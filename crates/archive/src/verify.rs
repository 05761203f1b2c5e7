//! Verify: quick (structure: every generation readable, every chunk it uses
//! present, every delta base present) or full (also decode every blob and
//! re-hash it, and re-hash every pack). A damaged chunk is reported with every
//! generation and path that depends on it.

use std::collections::BTreeMap;
use std::sync::Mutex;

use rayon::prelude::*;
use serde::Serialize;

use crate::archive::Archive;
use crate::error::Result;
use crate::id::{ChunkId, DigestMap, PackId};
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
    pub fn verify(&self, full: bool) -> Result<VerifyReport> {
        let _shared = self.backend.lock("archive", false, true)?;
        let mut problems = Vec::new();
        for (key, e) in &self.index.bad_packs {
            problems.push(Problem {
                object: format!("pack {key}"),
                what: e.to_string(),
                used_by: vec![],
            });
        }
        let mut damaged: DigestMap<ChunkId, String> = DigestMap::default();
        for (id, info) in &self.index.blobs {
            for b in &info.entry.bases {
                if !self.index.contains(b) {
                    damaged.insert(*id, format!("its delta base {b} is missing"));
                }
            }
        }
        let mut checked = 0;
        if full {
            let pack_problems = Mutex::new(Vec::new());
            self.index.packs.par_iter().for_each(|pid: &PackId| {
                let key = pack::key(pid);
                match self.backend.read(&key) {
                    Ok(b) if PackId::of(&b) == *pid => {}
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
            let ids: Vec<ChunkId> = self.index.blobs.keys().copied().collect();
            let bad: Vec<(ChunkId, String)> = ids
                .par_iter()
                .filter_map(|id| self.chunk(id).err().map(|e| (*id, e.to_string())))
                .collect();
            checked = ids.len();
            for (id, why) in bad {
                damaged.entry(id).or_insert(why);
            }
        }

        // Which generations and paths each damaged or missing chunk breaks.
        let mut users: BTreeMap<ChunkId, (String, Vec<String>)> = BTreeMap::new();
        let gens = self.generations()?;
        for g in &gens {
            let rec = match self.record(g) {
                Ok(r) => r,
                Err(e) => {
                    problems.push(Problem {
                        object: format!("generation {g}"),
                        what: e.to_string(),
                        used_by: vec![g.to_string()],
                    });
                    continue;
                }
            };
            let mut note = |id: &ChunkId, user: String| {
                let why = if let Some(w) = damaged.get(id) {
                    w.clone()
                } else if !self.index.contains(id) {
                    "missing from the archive".to_string()
                } else {
                    return;
                };
                users
                    .entry(*id)
                    .or_insert_with(|| (why, Vec::new()))
                    .1
                    .push(user);
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
                Err(e) => problems.push(Problem {
                    object: format!("generation {g}"),
                    what: format!("file list unreadable: {e}"),
                    used_by: vec![g.to_string()],
                }),
            }
        }
        for (id, why) in &damaged {
            if !users.contains_key(id) {
                users.insert(*id, (why.clone(), Vec::new()));
            }
        }
        for (id, (what, mut used_by)) in users {
            used_by.dedup();
            problems.push(Problem {
                object: format!("chunk {id}"),
                what,
                used_by,
            });
        }
        Ok(VerifyReport {
            full,
            generations: gens.len(),
            packs: self.index.packs.len(),
            blobs: self.index.blobs.len(),
            blobs_checked: checked,
            problems,
        })
    }
}
