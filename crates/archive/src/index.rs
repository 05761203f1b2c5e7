//! The in-memory index of every blob: built at open from the pack trailers.

use rayon::prelude::*;

use crate::backend::Backend;
use crate::error::{corrupt, Error, Result};
use crate::id::{ChunkId, DigestMap, DigestSet, PackId};
use crate::pack::{self, Entry};

/// Where a blob lives and how to decode it.
#[derive(Clone, Debug)]
pub struct BlobInfo {
    /// Position in `Index::packs`.
    pub pack: u32,
    pub entry: Entry,
}

#[derive(Default)]
pub struct Index {
    pub packs: Vec<PackId>,
    /// Bytes of each pack, by position.
    pub pack_sizes: Vec<u64>,
    pub blobs: DigestMap<ChunkId, BlobInfo>,
    /// The packs of `packs`, for lookups.
    pub pack_set: DigestSet<PackId>,
    /// Packs whose trailer could not be read: their blobs are unknown.
    pub bad_packs: Vec<(String, Error)>,
    /// Blobs stored in more than one pack (left by an interrupted repack).
    pub duplicates: u64,
}

impl Index {
    pub fn load(backend: &dyn Backend) -> Result<Index> {
        let keys = backend.list("packs")?;
        let loaded: Vec<(String, Result<PackTrailer>)> = keys
            .into_par_iter()
            .map(|k| {
                let r = read_trailer(backend, &k);
                (k, r)
            })
            .collect();
        let mut idx = Index::default();
        for (key, r) in loaded {
            match r {
                Ok((id, size, entries)) => idx.add_pack(id, size, entries),
                // Removed (by a running gc) since it was listed.
                Err(e) if is_not_found(&e) => {}
                Err(e) => idx.bad_packs.push((key, e)),
            }
        }
        Ok(idx)
    }

    /// Add a pack's blobs; a pack already known is left as it is.
    pub fn add_pack(&mut self, id: PackId, size: u64, entries: Vec<Entry>) {
        if !self.pack_set.insert(id) {
            return;
        }
        let p = self.packs.len() as u32;
        self.packs.push(id);
        self.pack_sizes.push(size);
        for e in entries {
            if self
                .blobs
                .insert(e.id, BlobInfo { pack: p, entry: e })
                .is_some()
            {
                self.duplicates += 1;
            }
        }
    }

    pub fn has_pack(&self, id: &PackId) -> bool {
        self.pack_set.contains(id)
    }

    /// The pack holding a blob.
    pub fn pack_of(&self, id: &ChunkId) -> Option<PackId> {
        self.get(id).map(|i| self.packs[i.pack as usize])
    }

    pub fn get(&self, id: &ChunkId) -> Option<&BlobInfo> {
        self.blobs.get(id)
    }

    /// Visit `id` and every delta base below it that this index holds, each once: `seen`
    /// gets every id met (also those not held), may be shared across calls, and stops a
    /// cycle.
    pub fn each_in_chain(
        &self,
        id: ChunkId,
        seen: &mut DigestSet<ChunkId>,
        mut visit: impl FnMut(ChunkId, &BlobInfo),
    ) {
        let mut todo = vec![id];
        while let Some(c) = todo.pop() {
            if !seen.insert(c) {
                continue;
            }
            let Some(info) = self.get(&c) else { continue };
            visit(c, info);
            todo.extend(info.entry.bases.iter().rev().copied());
        }
    }

    pub fn contains(&self, id: &ChunkId) -> bool {
        self.blobs.contains_key(id)
    }

    /// The full (depth 0) blobs at the bottom of `id`'s delta chains, in
    /// the order their bytes are met.
    pub fn roots_of(&self, id: &ChunkId) -> Vec<ChunkId> {
        let mut out = Vec::new();
        let mut stack = vec![(*id, 0u32)];
        while let Some((cur, d)) = stack.pop() {
            let Some(info) = self.get(&cur) else { continue };
            if info.entry.bases.is_empty() {
                if !out.contains(&cur) {
                    out.push(cur);
                }
            } else if d <= u8::MAX as u32 {
                stack.extend(info.entry.bases.iter().rev().map(|b| (*b, d + 1)));
            }
        }
        out
    }
}

/// A pack's id, size and entries.
pub type PackTrailer = (PackId, u64, Vec<Entry>);

/// Read and check one pack's trailer.
pub fn read_trailer(backend: &dyn Backend, key: &str) -> Result<PackTrailer> {
    let what = format!("pack {key}");
    let id = pack::id_from_key(key).ok_or_else(|| corrupt(&what, "name is not a pack id"))?;
    let size = backend.size(key)?;
    let min = (pack::MAGIC.len() + pack::FOOTER_LEN) as u64;
    if size < min {
        return Err(corrupt(&what, format!("only {size} bytes long")));
    }
    let footer = backend.read_at(key, size - pack::FOOTER_LEN as u64, pack::FOOTER_LEN)?;
    let f = pack::parse_footer(&footer, &what)?;
    let tlen = f
        .trailer_len()
        .filter(|&t| (t as u64) + min <= size)
        .ok_or_else(|| corrupt(&what, format!("footer claims {} entries", f.entries)))?;
    let trailer = backend.read_at(key, size - (pack::FOOTER_LEN + tlen) as u64, tlen)?;
    let entries = pack::parse_trailer(&trailer, &f, size, &what)?;
    Ok((id, size, entries))
}

/// An I/O error saying the object does not exist.
pub(crate) fn is_not_found(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}
