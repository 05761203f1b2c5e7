//! Pack files: many blobs in one immutable file, named by the SHA-256 of its
//! bytes, with a trailer that indexes them. See FORMAT.md.

use sha2::{Digest, Sha256};

use crate::chunker::{Features, MAX_CHUNK};
use crate::error::{corrupt, Result};
use crate::id::{ChunkId, PackId};

pub const MAGIC: &[u8; 8] = b"PBPACK\0\x01";
pub const END_MAGIC: &[u8; 8] = b"PBPKEND1";
pub const ENTRY_LEN: usize = 128;
pub const FOOTER_LEN: usize = 24;
/// A pack is closed once it holds this many bytes.
pub const TARGET_SIZE: usize = 16 << 20;

/// Most chunks a delta may use as its reference.
pub const MAX_BASES: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobKind {
    /// zstd frame of the chunk.
    Full = 0,
    /// zstd frame of the chunk compressed with its base chunks as prefix.
    Delta = 1,
}

/// One blob's trailer entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: ChunkId,
    /// The chunks whose plain bytes, concatenated in this order, are the
    /// reference prefix of a delta; empty for a full blob.
    pub bases: Vec<ChunkId>,
    pub offset: u32,
    pub stored_len: u32,
    pub raw_len: u32,
    /// Longest delta chain below this blob (0 for a full blob).
    pub depth: u8,
    pub features: Features,
}

impl Entry {
    pub fn kind(&self) -> BlobKind {
        if self.bases.is_empty() {
            BlobKind::Full
        } else {
            BlobKind::Delta
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.0);
        out.extend_from_slice(&self.bases.first().map(|b| b.0).unwrap_or([0; 32]));
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.stored_len.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.push(self.kind() as u8);
        out.push(self.depth);
        out.push(self.bases.len() as u8);
        out.push(0);
        for f in self.features.0 {
            out.extend_from_slice(&f.to_le_bytes());
        }
    }

    /// Parse a fixed entry; returns it with its first base only and the
    /// number of bases it declares.
    fn read(b: &[u8]) -> std::result::Result<(Self, usize), String> {
        let arr32 = |o: usize| -> [u8; 32] { b[o..o + 32].try_into().unwrap_or([0; 32]) };
        let u32at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
        let u64at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        let nbases = b[78] as usize;
        let kind_ok = match b[76] {
            0 => nbases == 0 && arr32(32) == [0; 32],
            1 => (1..=MAX_BASES).contains(&nbases),
            k => return Err(format!("unknown blob kind {k}")),
        };
        if !kind_ok {
            return Err(format!("blob kind {} with {nbases} bases", b[76]));
        }
        let bases = if nbases > 0 {
            vec![ChunkId(arr32(32))]
        } else {
            vec![]
        };
        Ok((
            Entry {
                id: ChunkId(arr32(0)),
                bases,
                offset: u32at(64),
                stored_len: u32at(68),
                raw_len: u32at(72),
                depth: b[77],
                features: Features(std::array::from_fn(|k| u64at(80 + 8 * k))),
            },
            nbases,
        ))
    }
}

pub fn key(id: &PackId) -> String {
    let h = id.to_hex();
    format!("packs/{}/{}.pack", &h[..2], h)
}

/// Parse a pack key back into its id.
pub fn id_from_key(key: &str) -> Option<PackId> {
    let name = key.rsplit('/').next()?.strip_suffix(".pack")?;
    name.parse().ok()
}

/// Builds one pack in memory.
pub struct PackWriter {
    buf: Vec<u8>,
    entries: Vec<Entry>,
}

impl Default for PackWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl PackWriter {
    pub fn new() -> Self {
        let mut buf = Vec::with_capacity(TARGET_SIZE + (1 << 20));
        buf.extend_from_slice(MAGIC);
        PackWriter {
            buf,
            entries: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.buf.len() >= TARGET_SIZE
    }

    /// Append an encoded blob (its entry's offset and length are set here).
    pub fn add(&mut self, mut e: Entry, payload: &[u8]) {
        e.offset = self.buf.len() as u32;
        e.stored_len = payload.len() as u32;
        self.buf.extend_from_slice(payload);
        self.entries.push(e);
    }

    /// Close the pack: its id, bytes and entries.
    pub fn finish(mut self) -> (PackId, Vec<u8>, Vec<Entry>) {
        let start = self.buf.len();
        for e in &self.entries {
            e.write(&mut self.buf);
        }
        // Bases after the first, in entry order.
        let mut extra = 0u32;
        for e in &self.entries {
            for b in e.bases.iter().skip(1) {
                self.buf.extend_from_slice(&b.0);
                extra += 1;
            }
        }
        let check = Sha256::digest(&self.buf[start..]);
        self.buf
            .extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(&extra.to_le_bytes());
        self.buf.extend_from_slice(&check[..8]);
        self.buf.extend_from_slice(END_MAGIC);
        let id = PackId::of(&self.buf);
        (id, self.buf, self.entries)
    }
}

/// A pack's footer: entry count, extra base count, trailer checksum.
pub struct Footer {
    pub entries: usize,
    pub extra_bases: usize,
    pub check: [u8; 8],
}

impl Footer {
    /// Bytes of the trailer this footer describes.
    pub fn trailer_len(&self) -> Option<usize> {
        self.entries
            .checked_mul(ENTRY_LEN)?
            .checked_add(self.extra_bases.checked_mul(32)?)
    }
}

/// Parse a pack's footer (its last FOOTER_LEN bytes).
pub fn parse_footer(footer: &[u8], what: &str) -> Result<Footer> {
    if footer.len() != FOOTER_LEN || &footer[16..24] != END_MAGIC {
        return Err(corrupt(what, "pack footer magic missing"));
    }
    let u32at =
        |o: usize| u32::from_le_bytes(footer[o..o + 4].try_into().unwrap_or([0; 4])) as usize;
    Ok(Footer {
        entries: u32at(0),
        extra_bases: u32at(4),
        check: footer[8..16].try_into().unwrap_or([0; 8]),
    })
}

/// Parse the trailer entries and check them against the pack's size.
pub fn parse_trailer(trailer: &[u8], f: &Footer, pack_size: u64, what: &str) -> Result<Vec<Entry>> {
    if Sha256::digest(trailer)[..8] != f.check {
        return Err(corrupt(what, "pack trailer checksum mismatch"));
    }
    if Some(trailer.len()) != f.trailer_len() {
        return Err(corrupt(what, "trailer length does not match the footer"));
    }
    let data_end = pack_size
        .checked_sub((trailer.len() + FOOTER_LEN) as u64)
        .ok_or_else(|| corrupt(what, "trailer larger than the pack"))?;
    let (fixed, extra) = trailer.split_at(f.entries * ENTRY_LEN);
    let mut extra = extra.chunks_exact(32);
    let mut out = Vec::with_capacity(f.entries);
    for (i, b) in fixed.chunks_exact(ENTRY_LEN).enumerate() {
        let (mut e, nbases) =
            Entry::read(b).map_err(|why| corrupt(what, format!("entry {i}: {why}")))?;
        for _ in 1..nbases {
            let b = extra
                .next()
                .ok_or_else(|| corrupt(what, format!("entry {i}: bases missing")))?;
            e.bases.push(ChunkId(b.try_into().unwrap_or([0; 32])));
        }
        if e.raw_len > MAX_CHUNK {
            return Err(corrupt(
                what,
                format!(
                    "entry {i}: plain length {} over the limit of {MAX_CHUNK} bytes a chunk",
                    e.raw_len
                ),
            ));
        }
        if (e.offset as u64) < MAGIC.len() as u64
            || e.offset as u64 + e.stored_len as u64 > data_end
        {
            return Err(corrupt(what, format!("entry {i} points outside the pack")));
        }
        out.push(e);
    }
    if extra.next().is_some() {
        return Err(corrupt(what, "more bases than entries use"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(data: &[u8], bases: Vec<ChunkId>) -> Entry {
        Entry {
            id: ChunkId::of(data),
            depth: bases.len() as u8,
            bases,
            offset: 0,
            stored_len: 0,
            raw_len: data.len() as u32,
            features: Features([1, 2, 3, 4, 5, 6]),
        }
    }

    #[test]
    fn pack_round_trip() {
        let mut w = PackWriter::new();
        let a = ChunkId::of(b"a");
        let b = ChunkId::of(b"b");
        w.add(entry(b"a", vec![]), b"AAAA");
        w.add(entry(b"b", vec![a]), b"BB");
        w.add(entry(b"c", vec![a, b, a]), b"C");
        let (id, bytes, entries) = w.finish();
        assert_eq!(id, PackId::of(&bytes));
        let size = bytes.len() as u64;
        let f = parse_footer(&bytes[bytes.len() - FOOTER_LEN..], "p").unwrap();
        assert_eq!((f.entries, f.extra_bases), (3, 2));
        let t0 = bytes.len() - FOOTER_LEN - f.trailer_len().unwrap();
        let trailer = &bytes[t0..bytes.len() - FOOTER_LEN];
        let parsed = parse_trailer(trailer, &f, size, "p").unwrap();
        assert_eq!(parsed, entries);
        assert_eq!(parsed[2].bases, vec![a, b, a]);
        assert_eq!(&bytes[parsed[1].offset as usize..][..2], b"BB");
        // A flipped trailer byte is caught.
        let mut bad = trailer.to_vec();
        bad[70] ^= 1;
        assert!(parse_trailer(&bad, &f, size, "p").is_err());
        assert_eq!(id_from_key(&key(&id)), Some(id));
    }

    #[test]
    fn an_entry_claiming_more_than_a_chunk_is_refused() {
        let mut w = PackWriter::new();
        let mut e = entry(b"a", vec![]);
        e.raw_len = MAX_CHUNK + 1;
        w.add(e, b"AAAA");
        let (_, bytes, _) = w.finish();
        let f = parse_footer(&bytes[bytes.len() - FOOTER_LEN..], "p").unwrap();
        let t0 = bytes.len() - FOOTER_LEN - f.trailer_len().unwrap();
        let err = parse_trailer(
            &bytes[t0..bytes.len() - FOOTER_LEN],
            &f,
            bytes.len() as u64,
            "p",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("over the limit of 1048576"),
            "{err}"
        );
        // A pack size smaller than its trailer is an error, not an underflow.
        let err = parse_trailer(&bytes[t0..bytes.len() - FOOTER_LEN], &f, 3, "p").unwrap_err();
        assert!(err.to_string().contains("larger than the pack"), "{err}");
        // And the decoder refuses the claim before allocating by it.
        let err = crate::codec::decode(b"", None, MAX_CHUNK as usize + 1).unwrap_err();
        assert!(err.to_string().contains("over the limit"), "{err}");
    }
}
