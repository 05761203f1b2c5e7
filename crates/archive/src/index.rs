//! The in-memory index of every blob: built at open from the pack trailers.

use rayon::prelude::*;

use crate::backend::Backend;
use crate::error::{corrupt, Error, Result};
use crate::id::{ChunkId, DigestMap, PackId};
use crate::pack::{self, Entry};

/// Where a blob lives and how to decode it.
#[derive(Clone, Copy, Debug)]
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
    /// Packs whose trailer could not be read: their blobs are unknown.
    pub bad_packs: Vec<(String, Error)>,
    /// Blobs stored in more than one pack (left by an interrupted repack).
    pub duplicates: u64,
}

impl Index {
    pub fn load(backend: &dyn Backend) -> Result<Index> {
        let keys = backend.list("packs")?;
        let loaded: Vec<(String, Result<(PackId, u64, Vec<Entry>)>)> = keys
            .into_par_iter()
            .map(|k| {
                let r = read_trailer(backend, &k);
                (k, r)
            })
            .collect();
        let mut idx = Index::default();
        for (key, r) in loaded {
            match r {
                Ok((id, size, entries)) => idx.add_pack(id, size, &entries),
                Err(e) => idx.bad_packs.push((key, e)),
            }
        }
        Ok(idx)
    }

    pub fn add_pack(&mut self, id: PackId, size: u64, entries: &[Entry]) {
        let p = self.packs.len() as u32;
        self.packs.push(id);
        self.pack_sizes.push(size);
        for e in entries {
            if self
                .blobs
                .insert(e.id, BlobInfo { pack: p, entry: *e })
                .is_some()
            {
                self.duplicates += 1;
            }
        }
    }

    pub fn get(&self, id: &ChunkId) -> Option<&BlobInfo> {
        self.blobs.get(id)
    }

    pub fn contains(&self, id: &ChunkId) -> bool {
        self.blobs.contains_key(id)
    }

    /// The full (depth 0) blob at the bottom of `id`'s delta chain.
    pub fn root_of(&self, id: &ChunkId) -> Option<(ChunkId, u8)> {
        let mut cur = *id;
        for _ in 0..=u8::MAX {
            let info = self.get(&cur)?;
            match info.entry.base {
                None => return Some((cur, 0)),
                Some(b) => cur = b,
            }
        }
        None
    }
}

/// Read and check one pack's trailer.
pub fn read_trailer(backend: &dyn Backend, key: &str) -> Result<(PackId, u64, Vec<Entry>)> {
    let what = format!("pack {key}");
    let id = pack::id_from_key(key).ok_or_else(|| corrupt(&what, "name is not a pack id"))?;
    let size = backend.size(key)?;
    let min = (pack::MAGIC.len() + pack::FOOTER_LEN) as u64;
    if size < min {
        return Err(corrupt(&what, format!("only {size} bytes long")));
    }
    let footer = backend.read_at(key, size - pack::FOOTER_LEN as u64, pack::FOOTER_LEN)?;
    let (n, check) = pack::parse_footer(&footer, &what)?;
    let tlen = n
        .checked_mul(pack::ENTRY_LEN)
        .filter(|&t| (t as u64) + min <= size)
        .ok_or_else(|| corrupt(&what, format!("footer claims {n} entries")))?;
    let trailer = backend.read_at(key, size - (pack::FOOTER_LEN + tlen) as u64, tlen)?;
    let entries = pack::parse_trailer(&trailer, check, size, &what)?;
    Ok((id, size, entries))
}
