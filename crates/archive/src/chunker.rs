//! Content-defined chunking (FastCDC 2020) and the resemblance features that
//! let ingest find, by content, an older chunk to delta-compress against.

use sha2::{Digest, Sha256};

use crate::id::ChunkId;

/// Chunk sizes: large chunks keep per-chunk overhead (index entry, manifest
/// entry, zstd frame) small; deltas make large chunks cheap to change.
pub const MIN_CHUNK: u32 = 64 * 1024;
pub const AVG_CHUNK: u32 = 256 * 1024;
pub const MAX_CHUNK: u32 = 1024 * 1024;

/// Bytes hashed at each end of a chunk for its features.
const FEATURE_SPAN: usize = 64;

/// Two resemblance features of a chunk: a hash of its first and of its last
/// 64 bytes. Chunk boundaries are content-defined, so a chunk that differs from
/// an older one by edits away from its ends shares at least one of them; the
/// older chunk is then a good delta base. 0 means "none" (chunk too small).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Features(pub [u64; 2]);

impl Features {
    pub fn of(data: &[u8]) -> Self {
        if data.len() < 2 * FEATURE_SPAN {
            return Features([0, 0]);
        }
        let h = |s: &[u8]| {
            let d = Sha256::digest(s);
            let v = u64::from_le_bytes(d[..8].try_into().unwrap_or([0; 8]));
            v.max(1)
        };
        Features([
            h(&data[..FEATURE_SPAN]),
            h(&data[data.len() - FEATURE_SPAN..]),
        ])
    }
}

/// Cut points of an in-memory buffer: (offset, length) pairs covering it.
pub fn cut(data: &[u8]) -> Vec<(usize, usize)> {
    if data.is_empty() {
        return Vec::new();
    }
    fastcdc::v2020::FastCDC::new(data, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK)
        .map(|c| (c.offset, c.length))
        .collect()
}

/// A chunk ready to be stored.
pub struct Chunk {
    pub id: ChunkId,
    pub data: Vec<u8>,
}

impl Chunk {
    pub fn new(data: Vec<u8>) -> Self {
        Chunk {
            id: ChunkId::of(&data),
            data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn boundaries_resynchronise_after_an_insert() {
        let a = pseudo_random(4 << 20, 7);
        let mut b = a.clone();
        b.splice(1000..1000, b"a few inserted bytes".iter().copied());
        let ids = |d: &[u8]| -> Vec<ChunkId> {
            cut(d).iter().map(|&(o, l)| ChunkId::of(&d[o..o + l])).collect()
        };
        let (ia, ib) = (ids(&a), ids(&b));
        let shared = ib.iter().filter(|id| ia.contains(id)).count();
        assert!(ia.len() > 8);
        assert!(shared >= ia.len() - 2, "only {shared} of {} chunks shared", ia.len());
    }

    #[test]
    fn features_survive_a_middle_edit() {
        let a = pseudo_random(200_000, 3);
        let mut b = a.clone();
        b[100_000] ^= 1;
        assert_eq!(Features::of(&a), Features::of(&b));
        assert_ne!(Features::of(&a), Features::of(&pseudo_random(200_000, 4)));
        assert_eq!(Features::of(b"tiny"), Features([0, 0]));
    }

    proptest! {
        #[test]
        fn cuts_cover_the_input_exactly(len in 0usize..3_000_000, seed: u64) {
            let d = pseudo_random(len, seed);
            let cuts = cut(&d);
            let mut at = 0;
            for (o, l) in cuts {
                prop_assert_eq!(o, at);
                prop_assert!(l as u32 <= MAX_CHUNK);
                at += l;
            }
            prop_assert_eq!(at, len);
        }
    }
}
