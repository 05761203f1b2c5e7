//! Content-defined chunking (FastCDC 2020) and the resemblance features that
//! let ingest find, by content, an older chunk to delta-compress against.

use sha2::{Digest, Sha256};

use crate::id::ChunkId;

/// Chunk sizes: large chunks keep per-chunk overhead (index entry, manifest
/// entry, zstd frame) small; deltas make large chunks cheap to change.
pub const MIN_CHUNK: u32 = 64 * 1024;
pub const AVG_CHUNK: u32 = 256 * 1024;
pub const MAX_CHUNK: u32 = 1024 * 1024;

/// Bytes hashed at each end of a chunk for its edge features.
const FEATURE_SPAN: usize = 64;
pub const NUM_FEATURES: usize = 6;
/// Anchor density inside a chunk: one position in 2^ANCHOR_BITS on average.
const ANCHOR_BITS: u32 = 12;

/// Resemblance features of a chunk, used to find by content an older chunk
/// to delta-compress against. 0 means "none".
///
/// * 0 and 1: a hash of the chunk's first and last 64 bytes. Boundaries are
///   content-defined, so a chunk edited away from its ends keeps them.
/// * 2..6: a bottom-4 sketch of content-defined anchors inside the chunk
///   (positions where a 64-byte rolling hash has its low bits zero; the
///   anchor's value is that hash, mixed). These survive when the chunk's
///   boundaries moved (a cut forced by the size limit, a deleted region),
///   because they depend only on the bytes around each anchor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Features(pub [u64; NUM_FEATURES]);

/// Gear table: 256 fixed pseudo-random words (splitmix64 of the byte).
const GEAR: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut z = (i as u64)
            .wrapping_add(1)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        t[i] = z ^ (z >> 31);
        i += 1;
    }
    t
};

impl Features {
    pub fn of(data: &[u8]) -> Self {
        let mut f = [0u64; NUM_FEATURES];
        if data.len() < 2 * FEATURE_SPAN {
            return Features(f);
        }
        let h = |s: &[u8]| {
            let d = Sha256::digest(s);
            u64::from_le_bytes(d[..8].try_into().unwrap_or([0; 8])).max(1)
        };
        f[0] = h(&data[..FEATURE_SPAN]);
        f[1] = h(&data[data.len() - FEATURE_SPAN..]);
        // Bottom-4 of the anchor values, kept sorted in f[2..6] (0 = empty).
        let mask = (1u64 << ANCHOR_BITS) - 1;
        let mut g: u64 = 0;
        let mut bottom = [u64::MAX; 4];
        for (i, &b) in data.iter().enumerate() {
            g = (g << 1).wrapping_add(GEAR[b as usize]);
            if g & mask == 0 && i >= FEATURE_SPAN {
                let v = (g ^ (g >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9) | 1;
                if v < bottom[3] && !bottom.contains(&v) {
                    bottom[3] = v;
                    bottom.sort_unstable();
                }
            }
        }
        for (k, v) in bottom.iter().enumerate() {
            f[2 + k] = if *v == u64::MAX { 0 } else { *v };
        }
        Features(f)
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
            cut(d)
                .iter()
                .map(|&(o, l)| ChunkId::of(&d[o..o + l]))
                .collect()
        };
        let (ia, ib) = (ids(&a), ids(&b));
        let shared = ib.iter().filter(|id| ia.contains(id)).count();
        assert!(ia.len() > 8);
        assert!(
            shared >= ia.len() - 2,
            "only {shared} of {} chunks shared",
            ia.len()
        );
    }

    #[test]
    fn features_survive_a_middle_edit() {
        let a = pseudo_random(200_000, 3);
        let mut b = a.clone();
        b[100_000] ^= 1;
        let (fa, fb) = (Features::of(&a), Features::of(&b));
        assert_eq!(fa.0[..2], fb.0[..2]);
        // Most anchors are far from one flipped byte.
        let shared = fa.0[2..]
            .iter()
            .filter(|x| **x != 0 && fb.0[2..].contains(x))
            .count();
        assert!(shared >= 3, "{fa:?} vs {fb:?}");
        let fc = Features::of(&pseudo_random(200_000, 4));
        assert!(fa.0.iter().all(|x| !fc.0.contains(x)));
        assert_eq!(Features::of(b"tiny"), Features::default());
    }

    #[test]
    fn anchors_survive_moved_boundaries() {
        // The second half of one chunk: no edge matches, anchors do.
        let a = pseudo_random(400_000, 9);
        let (fa, fb) = (Features::of(&a), Features::of(&a[150_000..]));
        assert_ne!(fa.0[0], fb.0[0]);
        let shared = fb.0[2..]
            .iter()
            .filter(|x| **x != 0 && fa.0[2..].contains(x))
            .count();
        assert!(shared >= 1, "{fa:?} vs {fb:?}");
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
