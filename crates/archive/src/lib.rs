//! pullback's archive: a versioned, deduplicated, delta-compressed,
//! crash-safe store of directory generations. No network, no async runtime.
//! The on-disk format is described in FORMAT.md beside this crate.

pub mod archive;
pub mod backend;
pub mod beneath;
pub mod chunker;
pub mod codec;
pub mod commit;
pub mod error;
pub mod id;
pub mod index;
pub mod ingest;
pub mod manifest;
pub mod pack;

pub use archive::Archive;
pub use error::{Error, Result};
pub use id::{ChunkId, Epoch, EpochError, FileDigest, GenId, PackId, Seq, SourceName};
pub use ingest::{IngestOptions, IngestReport};
pub use manifest::{GenRecord, Node, NodeKind};
pub mod gc;
mod pipeline;
pub mod prune;
pub mod restore;
pub mod reuse;
mod sink;
pub mod transfer;
pub mod verify;
mod walk;

/// Make the C allocator hand large buffers back to the system as soon as they
/// are freed (glibc otherwise raises its mmap threshold after the first free
/// and keeps every worker's chunk buffers resident). Call once, early.
pub fn tune_allocator() {
    // SAFETY: mallopt only sets allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}
