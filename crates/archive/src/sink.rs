//! Writing new blobs into packs for a commit: staged (written, not yet synced) until the
//! commit publishes them all at once, before anything refers to them. Used by ingest and
//! by received generations.

use crate::backend::{Backend, Staged};
use crate::error::Result;
use crate::id::PackId;
use crate::pack::{self, BlobKind, Entry, PackWriter};

/// Writes blobs into packs, staged (written but not yet synced) until
/// `publish` makes them all durable at once, before anything refers to them.
pub(crate) struct PackSink<'a> {
    backend: &'a dyn Backend,
    writer: PackWriter,
    pub packs: Vec<(PackId, u64, Vec<Entry>)>,
    staged: Vec<(Staged, String)>,
    pub added_bytes: u64,
    pub blobs: u64,
    pub deltas: u64,
}

impl<'a> PackSink<'a> {
    pub fn new(backend: &'a dyn Backend) -> Self {
        PackSink {
            backend,
            writer: PackWriter::new(),
            packs: Vec::new(),
            staged: Vec::new(),
            added_bytes: 0,
            blobs: 0,
            deltas: 0,
        }
    }

    pub fn add(&mut self, e: Entry, payload: &[u8]) -> Result<()> {
        self.blobs += 1;
        if e.kind() == BlobKind::Delta {
            self.deltas += 1;
        }
        self.writer.add(e, payload);
        if self.writer.is_full() {
            self.flush()?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        if self.writer.is_empty() {
            return Ok(());
        }
        let w = std::mem::take(&mut self.writer);
        let (id, bytes, entries) = w.finish();
        let staged = self.backend.stage(&bytes)?;
        let key = pack::key(&id);
        tracing::debug!(key, len = bytes.len(), "pack staged");
        self.backend.will_publish(&staged, &key);
        self.staged.push((staged, key));
        self.added_bytes += bytes.len() as u64;
        self.packs.push((id, bytes.len() as u64, entries));
        Ok(())
    }

    /// Flush, then make every staged pack durable and visible.
    pub fn publish(&mut self) -> Result<()> {
        self.flush()?;
        let staged = std::mem::take(&mut self.staged);
        let items: Vec<(&Staged, &str)> = staged.iter().map(|(s, k)| (s, k.as_str())).collect();
        let r = self.backend.publish_all(&items);
        for (s, _) in staged {
            self.backend.discard(s);
        }
        r.map(|_| ())
    }
}

impl Drop for PackSink<'_> {
    fn drop(&mut self) {
        for (staged, _) in self.staged.drain(..) {
            self.backend.discard(staged);
        }
    }
}
