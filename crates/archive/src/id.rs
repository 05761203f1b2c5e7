//! Newtypes for the identifiers that cross the archive's API.

use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// SHA-256 of a chunk's plain content: the chunk's name in the archive.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

/// SHA-256 of a whole file's content: the file's backup signature.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileDigest(pub [u8; 32]);

/// SHA-256 of a pack file's bytes: the pack's name in the archive.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackId(pub [u8; 32]);

/// Per-source generation number; only grows.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize, Default,
)]
pub struct Seq(pub u64);

/// Coordinator epoch a generation was taken under; only grows.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize, Default,
)]
pub struct Epoch(pub u64);

/// Why an epoch is refused: a peer's epoch must equal the coordinator's current one, and
/// the epoch cannot grow past `u64::MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EpochError {
    /// Older than the current epoch: the sender was fenced.
    #[error("stale epoch {got} (current {current})")]
    Stale { got: u64, current: u64 },
    /// Newer than the current epoch: no coordinator granted it.
    #[error("epoch {got} is ahead of the current epoch {current}: no coordinator granted it")]
    Ahead { got: u64, current: u64 },
    /// The epoch is `u64::MAX`: no further grant is possible.
    #[error("the epoch is at its maximum ({0}): no further grant is possible")]
    Exhausted(u64),
}

impl Epoch {
    /// The epoch after this one (a grant), refused at `u64::MAX` instead of wrapping.
    pub fn next(self) -> Result<Epoch, EpochError> {
        self.0
            .checked_add(1)
            .map(Epoch)
            .ok_or(EpochError::Exhausted(self.0))
    }

    /// The one check of an epoch that came from a peer (notify, pull, push, promote,
    /// takeover): it must equal the current epoch `current`, neither lower nor higher.
    pub fn check(got: u64, current: u64) -> Result<(), EpochError> {
        match got.cmp(&current) {
            std::cmp::Ordering::Equal => Ok(()),
            std::cmp::Ordering::Less => Err(EpochError::Stale { got, current }),
            std::cmp::Ordering::Greater => Err(EpochError::Ahead { got, current }),
        }
    }
}

macro_rules! digest_type {
    ($t:ident) => {
        impl $t {
            pub fn of(data: &[u8]) -> Self {
                $t(Sha256::digest(data).into())
            }
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
            /// First 8 bytes as hex: enough for people to tell objects apart.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..6])
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($t), self.short())
            }
        }
        // Serialized as a 32-byte string (CBOR byte string, not an array).
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let b = serde_bytes::ByteArray::<32>::deserialize(d)?;
                Ok($t(b.into_array()))
            }
        }
        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out)
                    .map_err(|e| format!("{s:?} is not a 64-digit hex digest: {e}"))?;
                Ok($t(out))
            }
        }
    };
}
digest_type!(ChunkId);
digest_type!(FileDigest);
digest_type!(PackId);

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A hasher for maps keyed by SHA-256 digests: the key is already uniformly
/// distributed, so its first eight bytes are the hash.
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Digests hash as one 32-byte write; anything else still gets mixed.
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(b);
        }
    }
}

pub type DigestMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<DigestHasher>>;
pub type DigestSet<K> = std::collections::HashSet<K, BuildHasherDefault<DigestHasher>>;

/// A source name: what a generation series is called. `[A-Za-z0-9._-]`, 1..=64
/// characters, not starting with a dot, so it is safe as a directory name. Checked when
/// deserialized too (a received generation record names its source).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct SourceName(String);

impl TryFrom<String> for SourceName {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        SourceName::new(&s)
    }
}

impl SourceName {
    pub fn new(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && !s.starts_with('.')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
        if ok {
            Ok(SourceName(s.to_owned()))
        } else {
            Err(format!(
                "bad source name {s:?}: use 1 to 64 of [A-Za-z0-9._-], not starting with '.'"
            ))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A generation's full name: `SOURCE/SEQ`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct GenId {
    pub source: SourceName,
    pub seq: Seq,
}

impl fmt::Display for GenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.source, self.seq)
    }
}

/// Parses `SOURCE/SEQ` (what [`GenId`]'s `Display` writes): a valid source name, one `/`,
/// a decimal sequence number.
impl FromStr for GenId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (source, seq) = s
            .split_once('/')
            .ok_or_else(|| format!("bad generation {s:?}: expected SOURCE/SEQ"))?;
        let seq = seq
            .parse::<u64>()
            .map_err(|e| format!("bad generation {s:?}: the sequence number {seq:?} {e}"))?;
        Ok(GenId {
            source: SourceName::new(source).map_err(|e| format!("bad generation {s:?}: {e}"))?,
            seq: Seq(seq),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_id_hex_round_trip() {
        let id = ChunkId::of(b"hello");
        assert_eq!(
            id.to_hex(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(id.to_hex().parse::<ChunkId>().unwrap(), id);
        assert!("zz".parse::<ChunkId>().is_err());
    }

    #[test]
    fn epochs_are_checked_for_equality_and_never_wrap() {
        assert_eq!(Epoch(3).next(), Ok(Epoch(4)));
        assert_eq!(Epoch(u64::MAX).next(), Err(EpochError::Exhausted(u64::MAX)));
        assert_eq!(Epoch::check(4, 4), Ok(()));
        assert!(matches!(Epoch::check(3, 4), Err(EpochError::Stale { .. })));
        assert!(matches!(
            Epoch::check(u64::MAX, 4),
            Err(EpochError::Ahead { .. })
        ));
    }

    #[test]
    fn gen_ids_parse_what_they_print() {
        let g: GenId = "pg-main_1.x/12".parse().expect("parses");
        assert_eq!((g.source.as_str(), g.seq), ("pg-main_1.x", Seq(12)));
        assert_eq!(g.to_string(), "pg-main_1.x/12");
        for bad in ["db", "db/", "/3", "db/x", "db/-1", "a/b/3", ".x/3", "db/3/"] {
            let e = bad.parse::<GenId>().err();
            assert!(
                e.as_deref().is_some_and(|e| e.contains(bad)),
                "{bad:?}: {e:?}"
            );
        }
    }

    #[test]
    fn source_names() {
        assert!(SourceName::new("pg-main_1.x").is_ok());
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(SourceName::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// Found by the `gen_record` fuzz target's check: a received record whose body
    /// names a source that is not a valid name (`../x`, `a/b`) decoded as if it were one.
    #[test]
    fn a_record_naming_a_bad_source_does_not_decode() {
        use crate::manifest::{GenRecord, GenStats};
        for bad in ["../x", "a/b", "", ".hidden", "nul\0"] {
            let rec = GenRecord {
                source: SourceName(bad.to_owned()),
                seq: Seq(1),
                epoch: Epoch(0),
                taken_at_ns: 0,
                committed_at_ns: 0,
                label: None,
                stats: GenStats::default(),
                manifest_len: 0,
                manifest_digest: FileDigest::of(b""),
                manifest_chunks: vec![],
            };
            let bytes = rec.encode().unwrap();
            let e = GenRecord::decode(&bytes, "received record").unwrap_err();
            assert!(e.to_string().contains("bad source name"), "{bad:?}: {e}");
        }
    }
}
