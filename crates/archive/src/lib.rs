//! pullback's archive: a versioned, deduplicated, delta-compressed,
//! crash-safe store of directory generations. No network, no async runtime.
//! The on-disk format is described in FORMAT.md beside this crate.

pub mod archive;
pub mod backend;
pub mod chunker;
pub mod codec;
pub mod error;
pub mod id;
pub mod index;
pub mod ingest;
pub mod manifest;
pub mod pack;

pub use archive::Archive;
pub use error::{Error, Result};
pub use id::{ChunkId, Epoch, FileDigest, GenId, PackId, Seq, SourceName};
pub use ingest::{IngestOptions, IngestReport};
pub use manifest::{GenRecord, Node, NodeKind};
pub mod restore;
pub mod prune;
pub mod verify;
pub mod gc;
