//! Pack files: many blobs in one immutable file, named by the SHA-256 of its
//! bytes, with a trailer that indexes them. See FORMAT.md.

use sha2::{Digest, Sha256};

use crate::chunker::Features;
use crate::error::{corrupt, Result};
use crate::id::{ChunkId, PackId};

pub const MAGIC: &[u8; 8] = b"PBPACK\0\x01";
pub const END_MAGIC: &[u8; 8] = b"PBPKEND1";
pub const ENTRY_LEN: usize = 96;
pub const FOOTER_LEN: usize = 24;
/// A pack is closed once it holds this many bytes.
pub const TARGET_SIZE: usize = 16 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobKind {
    /// zstd frame of the chunk.
    Full = 0,
    /// zstd frame of the chunk compressed with its base chunk as prefix.
    Delta = 1,
}

/// One blob's trailer entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: ChunkId,
    pub base: Option<ChunkId>,
    pub offset: u32,
    pub stored_len: u32,
    pub raw_len: u32,
    pub kind: BlobKind,
    /// Length of the delta chain below this blob (0 for a full blob).
    pub depth: u8,
    pub features: Features,
}

impl Entry {
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.0);
        out.extend_from_slice(&self.base.map(|b| b.0).unwrap_or([0; 32]));
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.stored_len.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.push(self.kind as u8);
        out.push(self.depth);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.features.0[0].to_le_bytes());
        out.extend_from_slice(&self.features.0[1].to_le_bytes());
    }

    fn read(b: &[u8]) -> std::result::Result<Self, String> {
        let arr32 = |o: usize| -> [u8; 32] { b[o..o + 32].try_into().unwrap_or([0; 32]) };
        let u32at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
        let u64at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        let base = arr32(32);
        let kind = match b[76] {
            0 => BlobKind::Full,
            1 => BlobKind::Delta,
            k => return Err(format!("unknown blob kind {k}")),
        };
        let base = if base == [0; 32] {
            None
        } else {
            Some(ChunkId(base))
        };
        if (kind == BlobKind::Delta) != base.is_some() {
            return Err("delta blob without base, or full blob with one".into());
        }
        Ok(Entry {
            id: ChunkId(arr32(0)),
            base,
            offset: u32at(64),
            stored_len: u32at(68),
            raw_len: u32at(72),
            kind,
            depth: b[77],
            features: Features([u64at(80), u64at(88)]),
        })
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

    /// Append an encoded blob; returns its entry.
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        id: ChunkId,
        kind: BlobKind,
        base: Option<ChunkId>,
        depth: u8,
        raw_len: u32,
        features: Features,
        payload: &[u8],
    ) -> Entry {
        let e = Entry {
            id,
            base,
            offset: self.buf.len() as u32,
            stored_len: payload.len() as u32,
            raw_len,
            kind,
            depth,
            features,
        };
        self.buf.extend_from_slice(payload);
        self.entries.push(e);
        e
    }

    /// Close the pack: its id, bytes and entries.
    pub fn finish(mut self) -> (PackId, Vec<u8>, Vec<Entry>) {
        let start = self.buf.len();
        for e in &self.entries {
            e.write(&mut self.buf);
        }
        let check = Sha256::digest(&self.buf[start..]);
        self.buf
            .extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.extend_from_slice(&check[..8]);
        self.buf.extend_from_slice(END_MAGIC);
        let id = PackId::of(&self.buf);
        (id, self.buf, self.entries)
    }
}

/// Parse a pack's footer (its last FOOTER_LEN bytes): how many entries.
pub fn parse_footer(footer: &[u8], what: &str) -> Result<(usize, [u8; 8])> {
    if footer.len() != FOOTER_LEN || &footer[16..24] != END_MAGIC {
        return Err(corrupt(what, "pack footer magic missing"));
    }
    let n = u32::from_le_bytes(footer[0..4].try_into().unwrap_or([0; 4])) as usize;
    let check: [u8; 8] = footer[8..16].try_into().unwrap_or([0; 8]);
    Ok((n, check))
}

/// Parse the trailer entries and check them against the pack's size.
pub fn parse_trailer(
    trailer: &[u8],
    check: [u8; 8],
    pack_size: u64,
    what: &str,
) -> Result<Vec<Entry>> {
    if Sha256::digest(trailer)[..8] != check {
        return Err(corrupt(what, "pack trailer checksum mismatch"));
    }
    let data_end = pack_size - (trailer.len() + FOOTER_LEN) as u64;
    let mut out = Vec::with_capacity(trailer.len() / ENTRY_LEN);
    for (i, b) in trailer.chunks_exact(ENTRY_LEN).enumerate() {
        let e = Entry::read(b).map_err(|why| corrupt(what, format!("entry {i}: {why}")))?;
        if (e.offset as u64) < MAGIC.len() as u64
            || e.offset as u64 + e.stored_len as u64 > data_end
        {
            return Err(corrupt(what, format!("entry {i} points outside the pack")));
        }
        out.push(e);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trip() {
        let mut w = PackWriter::new();
        let a = ChunkId::of(b"a");
        let b = ChunkId::of(b"b");
        w.add(a, BlobKind::Full, None, 0, 1, Features([1, 2]), b"AAAA");
        w.add(b, BlobKind::Delta, Some(a), 1, 1, Features([3, 4]), b"BB");
        let (id, bytes, entries) = w.finish();
        assert_eq!(id, PackId::of(&bytes));
        let size = bytes.len() as u64;
        let (n, check) = parse_footer(&bytes[bytes.len() - FOOTER_LEN..], "p").unwrap();
        assert_eq!(n, 2);
        let t0 = bytes.len() - FOOTER_LEN - n * ENTRY_LEN;
        let parsed = parse_trailer(&bytes[t0..bytes.len() - FOOTER_LEN], check, size, "p").unwrap();
        assert_eq!(parsed, entries);
        assert_eq!(&bytes[parsed[1].offset as usize..][..2], b"BB");
        // A flipped trailer byte is caught.
        let mut bad = bytes[t0..bytes.len() - FOOTER_LEN].to_vec();
        bad[70] ^= 1;
        assert!(parse_trailer(&bad, check, size, "p").is_err());
        assert_eq!(id_from_key(&key(&id)), Some(id));
    }
}
