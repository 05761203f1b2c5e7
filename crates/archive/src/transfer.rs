//! Moving a generation between archives: the sender serves its generation
//! record and, on request, any set of blobs as one pack (the same format as
//! on disk); the receiver asks only for what it lacks — the file list first,
//! then the chunks it names, then any delta bases of what arrived — checks
//! every byte, and commits the generation atomically. Deltas travel as they
//! are stored, so a transfer costs what the archive growth costs.
//!
//! The exporter's outbox, the PBS archive and each importer's store are all
//! archives: the same code serves both legs.

use std::collections::HashMap;
use std::sync::Arc;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::archive::{decode_from, decode_unchecked, Archive, Blobs, MAX_DEPTH};
use crate::commit::{Commit, Pins};
use crate::error::{corrupt, Error, Result};
use crate::id::{ChunkId, DigestMap, DigestSet, FileDigest, GenId, Seq};
use crate::ingest::{now_ns, PackSink};
use crate::manifest::{self, GenRecord, Node, NodeKind};
use crate::pack::{self, Entry, PackWriter};

/// Most blobs one request asks for.
pub const MAX_BLOBS_PER_REQUEST: usize = 64;

/// Largest pack one transfer round carries (a body read from the wire): 64 blobs of at
/// most one 1 MiB chunk each, as stored, fit many times over.
pub const MAX_PACK_BYTES: usize = 256 << 20;

impl Archive {
    /// The record of a generation, as stored (what a receiver starts from).
    pub fn record_bytes(&self, gen: &GenId) -> Result<Vec<u8>> {
        let rec = self.record(gen)?;
        rec.encode()
    }

    /// The named blobs, as stored, in one pack.
    pub fn export_blobs(&self, ids: &[ChunkId]) -> Result<Vec<u8>> {
        if ids.len() > MAX_BLOBS_PER_REQUEST {
            return Err(Error::Invalid(format!(
                "{} blobs asked for at once; at most {MAX_BLOBS_PER_REQUEST}",
                ids.len()
            )));
        }
        let mut w = PackWriter::new();
        let mut seen = DigestSet::default();
        for id in ids {
            if seen.insert(*id) {
                let (e, payload) = self.payload(id)?;
                w.add(e, &payload);
            }
        }
        Ok(w.finish().1)
    }
}

/// Received payloads, kept on disk (an unlinked temporary file, gone with
/// the process) so that a large first transfer does not live in memory.
struct Spool {
    file: std::fs::File,
    len: u64,
}

impl Spool {
    fn new() -> Result<Spool> {
        let dir = std::env::temp_dir();
        let file = tempfile::tempfile_in(&dir).map_err(|source| Error::Io { path: dir, source })?;
        Ok(Spool { file, len: 0 })
    }

    fn put(&mut self, data: &[u8]) -> Result<u64> {
        use std::os::unix::fs::FileExt;
        let at = self.len;
        self.file
            .write_all_at(data, at)
            .map_err(|source| Error::Io {
                path: "(receive spool)".into(),
                source,
            })?;
        self.len += data.len() as u64;
        Ok(at)
    }

    fn get(&self, at: u64, len: u32) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut b = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut b, at)
            .map_err(|source| Error::Io {
                path: "(receive spool)".into(),
                source,
            })?;
        Ok(b)
    }
}

/// A generation being received.
pub struct Incoming {
    record: GenRecord,
    /// Blobs received so far: entry and where the payload is in the spool.
    received: DigestMap<ChunkId, (Entry, u64)>,
    spool: Spool,
    /// Blobs asked for and not yet received.
    asked: DigestSet<ChunkId>,
    nodes: Option<Vec<Node>>,
    /// Packs of the archive whose blobs this transfer relies on, pinned
    /// against a running gc (made at the first `missing`).
    pins: Option<Pins>,
    pub bytes_received: u64,
}

/// The archive with the received blobs laid over it.
struct Overlay<'a> {
    archive: &'a Archive,
    received: &'a DigestMap<ChunkId, (Entry, u64)>,
    spool: &'a Spool,
}

impl Blobs for Overlay<'_> {
    fn blob(&self, id: &ChunkId) -> Result<(Entry, Vec<u8>)> {
        match self.received.get(id) {
            Some((e, at)) => Ok((e.clone(), self.spool.get(*at, e.stored_len)?)),
            None => self.archive.payload(id),
        }
    }
}

impl Incoming {
    /// Start from the sender's record bytes.
    pub fn new(record_bytes: &[u8]) -> Result<Incoming> {
        let record = GenRecord::decode(record_bytes, "received generation record")?;
        Ok(Incoming {
            record,
            received: DigestMap::default(),
            spool: Spool::new()?,
            asked: DigestSet::default(),
            nodes: None,
            pins: None,
            bytes_received: record_bytes.len() as u64,
        })
    }

    pub fn record(&self) -> &GenRecord {
        &self.record
    }

    /// Whether the blob is here: received, or in the archive (whose pack
    /// is then pinned, so that a gc leaves it until the commit).
    fn has(&self, ar: &Archive, id: &ChunkId) -> Result<bool> {
        if self.received.contains_key(id) {
            return Ok(true);
        }
        match &self.pins {
            Some(p) => p.reuse(ar, id),
            None => Ok(ar.has_blob(id)),
        }
    }

    /// Blobs still needed, at most `MAX_BLOBS_PER_REQUEST`; empty when the
    /// generation is complete.
    pub fn missing(&mut self, ar: &Archive) -> Result<Vec<ChunkId>> {
        if self.pins.is_none() {
            self.pins = Some(Pins::new(ar.backend.clone())?);
        }
        let mut need: Vec<ChunkId> = Vec::new();
        let push = |need: &mut Vec<ChunkId>, id: ChunkId| {
            if !need.contains(&id) {
                need.push(id);
            }
        };
        // Delta bases of what arrived.
        for (e, _) in self.received.values() {
            for b in &e.bases {
                if !self.has(ar, b)? {
                    push(&mut need, *b);
                }
            }
        }
        for c in &self.record.manifest_chunks {
            if !self.has(ar, &c.0)? {
                push(&mut need, c.0);
            }
        }
        if need.is_empty() && self.nodes.is_none() {
            let raw = {
                let ov = Overlay {
                    archive: ar,
                    received: &self.received,
                    spool: &self.spool,
                };
                // The record's sizes were checked when it was decoded.
                let cap = self.record.manifest_len.min(manifest::MAX_MANIFEST_BYTES);
                let mut raw = Vec::with_capacity(usize::try_from(cap).unwrap_or(0));
                for c in &self.record.manifest_chunks {
                    let d = decode_from(&ov, &ar.cache, &c.0, 0)?;
                    // Each piece has the length the record claims (which add up to
                    // at most the list limit), or the list stops here.
                    if d.len() != c.1 as usize {
                        return Err(corrupt(
                            format!("received file list of {}", self.record.id()),
                            format!("a chunk of {} bytes, the record says {}", d.len(), c.1),
                        ));
                    }
                    raw.extend_from_slice(&d);
                }
                raw
            };
            let what = format!("received file list of {}", self.record.id());
            if raw.len() as u64 != self.record.manifest_len
                || FileDigest::of(&raw) != self.record.manifest_digest
            {
                return Err(corrupt(&what, "does not match the record's digest"));
            }
            self.nodes = Some(manifest::decode_manifest(&raw, &what)?);
        }
        if need.is_empty() {
            if let Some(nodes) = &self.nodes {
                for n in nodes {
                    for c in n.chunk_list() {
                        if !self.has(ar, &c.0)? {
                            push(&mut need, c.0);
                            if need.len() >= MAX_BLOBS_PER_REQUEST {
                                break;
                            }
                        }
                    }
                    if need.len() >= MAX_BLOBS_PER_REQUEST {
                        break;
                    }
                }
            }
        }
        need.truncate(MAX_BLOBS_PER_REQUEST);
        self.asked.extend(need.iter().copied());
        Ok(need)
    }

    /// Take a pack of blobs from the sender. Blobs not asked for are ignored.
    /// Returns how many were taken.
    pub fn add_pack(&mut self, bytes: &[u8]) -> Result<usize> {
        self.bytes_received += bytes.len() as u64;
        let what = "received pack";
        if bytes.len() > MAX_PACK_BYTES {
            return Err(corrupt(
                what,
                format!(
                    "{} bytes, over the limit of {MAX_PACK_BYTES} bytes a pack",
                    bytes.len()
                ),
            ));
        }
        let min = pack::MAGIC.len() + pack::FOOTER_LEN;
        if bytes.len() < min || &bytes[..8] != pack::MAGIC {
            return Err(corrupt(what, "not a pack"));
        }
        let f = pack::parse_footer(&bytes[bytes.len() - pack::FOOTER_LEN..], what)?;
        let tlen = f
            .trailer_len()
            .filter(|&t| t + min <= bytes.len())
            .ok_or_else(|| corrupt(what, "footer claims more than the pack holds"))?;
        let t0 = bytes.len() - pack::FOOTER_LEN - tlen;
        let entries = pack::parse_trailer(&bytes[t0..t0 + tlen], &f, bytes.len() as u64, what)?;
        let mut n = 0;
        for e in entries {
            if !self.asked.remove(&e.id) {
                continue;
            }
            let (start, end) = (e.offset as usize, e.offset as usize + e.stored_len as usize);
            let payload = bytes
                .get(start..end)
                .ok_or_else(|| corrupt(what, "an entry points outside the pack"))?;
            let at = self.spool.put(payload)?;
            self.received.insert(e.id, (e, at));
            n += 1;
        }
        Ok(n)
    }
}

impl Archive {
    /// Check everything received and commit it as generation `seq` of its
    /// source (default: the next number). Nothing is stored unless every
    /// blob decodes to its id and every changed file hashes to its digest.
    pub fn commit_incoming(&self, mut inc: Incoming, seq: Option<Seq>) -> Result<GenRecord> {
        if !inc.missing(self)?.is_empty() {
            return Err(Error::Invalid(format!(
                "generation {} is incomplete: blobs are still missing",
                inc.record.id()
            )));
        }
        let nodes = inc.nodes.take().unwrap_or_default();
        let source = inc.record.source.clone();
        let _shared = self.backend.lock("archive", false, true)?;
        let commit = Commit::begin(self, &source, inc.record.epoch, seq, true)?;
        let seq = commit.seq();
        self.refresh()?;

        let ov = Overlay {
            archive: self,
            received: &inc.received,
            spool: &inc.spool,
        };
        // Every file with received content hashes to its digest; its chunks
        // are decoded on the way, a window at a time in parallel, and the
        // received ones checked against their ids. The ones this archive had
        // were checked when they came in, and the file's digest covers them
        // again: a damaged one is looked for (and named) only when a digest
        // does not match.
        let changed: Vec<&Node> = nodes
            .iter()
            .filter(|n| {
                n.kind == NodeKind::File
                    && n.chunk_list()
                        .iter()
                        .any(|c| inc.received.contains_key(&c.0))
            })
            .collect();
        changed.par_iter().try_for_each(|n| -> Result<()> {
            let mut h = Sha256::new();
            // Each window is hashed while the next one decodes.
            let mut decoded: Vec<Arc<Vec<u8>>> = Vec::new();
            for window in n.chunk_list().chunks(16) {
                let ready = std::mem::take(&mut decoded);
                let ((), next) = rayon::join(
                    || ready.iter().for_each(|d| h.update(&***d)),
                    || {
                        window
                            .par_iter()
                            .map(|c| {
                                if inc.received.contains_key(&c.0) {
                                    decode_from(&ov, &self.cache, &c.0, 0)
                                } else {
                                    decode_unchecked(&ov, &self.cache, &c.0)
                                }
                            })
                            .collect::<Result<Vec<_>>>()
                    },
                );
                decoded = next?;
            }
            decoded.iter().for_each(|d| h.update(&***d));
            if n.digest != Some(FileDigest(h.finalize().into())) {
                for c in n.chunk_list() {
                    decode_from(&ov, &self.cache, &c.0, 0)?;
                }
                return Err(corrupt(
                    format!("received file {}", n.path_lossy()),
                    "content does not match its SHA-256",
                ));
            }
            Ok(())
        })?;
        // Every other received blob (file lists, delta bases) decodes to its id.
        let covered: DigestSet<ChunkId> = changed
            .iter()
            .flat_map(|n| n.chunk_list())
            .map(|c| c.0)
            .collect();
        let ids: Vec<ChunkId> = inc.received.keys().copied().collect();
        ids.par_iter()
            .filter(|id| !covered.contains(*id))
            .try_for_each(|id| decode_from(&ov, &self.cache, id, 0).map(|_| ()))?;

        // Depths as this archive sees them; a chain too deep is cut by
        // storing that chunk whole.
        let mut depth: HashMap<ChunkId, u8> = HashMap::new();
        let mut order: Vec<ChunkId> = ids.clone();
        order.sort_by_key(|id| inc.received.get(id).map_or(0, |(e, _)| e.depth));
        let mut sink = PackSink::new(self.backend.as_ref());
        for id in order {
            let Some((e, at)) = inc.received.get(&id) else {
                continue;
            };
            let payload = inc.spool.get(*at, e.stored_len)?;
            let mut e = e.clone();
            let d = e
                .bases
                .iter()
                .map(|b| {
                    depth
                        .get(b)
                        .copied()
                        .or_else(|| self.index().get(b).map(|i| i.entry.depth))
                        .unwrap_or(0)
                })
                .max()
                .map_or(0, |m| m.saturating_add(1));
            if d > MAX_DEPTH {
                let data = decode_from(&ov, &self.cache, &id, 0)?;
                let full = crate::codec::encode(&data, None, self.config.level)?;
                e.bases.clear();
                e.depth = 0;
                depth.insert(id, 0);
                sink.add(e, &full)?;
            } else {
                e.depth = d;
                depth.insert(id, d);
                sink.add(e, &payload)?;
            }
        }
        sink.flush()?;
        let mut rec = inc.record.clone();
        rec.seq = seq;
        rec.committed_at_ns = now_ns();
        rec.stats.new_chunks = sink.blobs;
        rec.stats.new_deltas = sink.deltas;
        rec.stats.added_bytes = sink.added_bytes + rec.encode()?.len() as u64;
        let uses = nodes
            .iter()
            .flat_map(|n| n.chunk_list())
            .chain(rec.manifest_chunks.iter().copied())
            .map(|c| c.0);
        commit.publish(&mut sink, &rec, uses)?;
        Ok(rec)
    }
}

#[cfg(test)]
mod tests;
