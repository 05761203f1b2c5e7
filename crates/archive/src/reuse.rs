//! Restoring a generation beside an earlier restore of the same source, taking
//! from it what did not change, and proving every file.
//!
//! A clone stages generation N+1 while its restore folder holds N. Most of
//! N+1's chunks are N's: their byte ranges are copied from the earlier
//! restore's files in the kernel (`copy_file_range`: no trip through this
//! process, and shared blocks where the filesystem can reflink), and only the
//! other chunks are decoded from the archive. Then every file is read back
//! and hashed, and must match its SHA-256 digest from the file list.
//!
//! Nothing in the earlier restore is trusted. It was handed to hooks and to
//! people after it was checked, and may have changed since: a file edited in
//! place, truncated, replaced by a symlink or a FIFO. So its files are opened
//! without following any symlink, only when they are regular files whose size
//! and modification time are still those the file list gave them (a cheap
//! filter against wasted work, not a proof: an edit that keeps both is caught
//! by the hash), and whatever was copied is proven by the digest of the file
//! it ends up in. A file that does not match is rebuilt from the archive alone,
//! every chunk checked against its id, and hashed again; only a mismatch then
//! is an error. The outcome is the same bytes as a full restore, or an error,
//! whatever the earlier restore holds.
//!
//! The chunks decoded here are not checked one by one against their ids (the
//! whole file's digest covers them, which is what costs: SHA-256 is most of a
//! restore's CPU time); when a digest does not match, the rebuild checks them
//! and names the damaged one.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;
use rustix::fs::SeekFrom;
use sha2::{Digest, Sha256};

use crate::archive::Archive;
use crate::beneath::Beneath;
use crate::error::{corrupt, IoContext, Result};
use crate::id::{ChunkId, DigestMap, FileDigest};
use crate::manifest::{Node, NodeKind};
use crate::restore::{restore_nodes_with, set_file_meta, RestoreReport};
use crate::walk::mtime_ns;

/// An earlier restore to take unchanged content from: its folder and the file
/// list it was restored from. Neither has to be right: a wrong one only costs
/// time (what it gives is checked), never correctness.
#[derive(Clone, Copy)]
pub struct Previous<'a> {
    pub dir: &'a Path,
    pub nodes: &'a [Node],
}

/// What [`Archive::restore_checked`] did.
#[derive(Clone, Debug, Default)]
pub struct CheckedReport {
    pub restore: RestoreReport,
    /// Bytes copied from the earlier restore (and proven by their file's digest).
    pub reused_bytes: u64,
    /// Bytes decoded from the archive (holes not counted).
    pub decoded_bytes: u64,
    /// Files whose content did not match their digest at first (the earlier
    /// restore had changed, or a chunk was damaged): rebuilt from the archive.
    pub rebuilt: u64,
}

/// Where a chunk's bytes are in the earlier restore.
#[derive(Clone, Copy)]
struct Source {
    node: usize,
    offset: u64,
}

/// The earlier restore, opened, with where each of its chunks is.
struct PrevIndex<'a> {
    root: Beneath,
    nodes: &'a [Node],
    at: DigestMap<ChunkId, Source>,
}

impl<'a> PrevIndex<'a> {
    fn new(prev: Previous<'a>) -> Option<Self> {
        let root = Beneath::open(prev.dir).ok()?;
        let mut at = DigestMap::default();
        for (i, n) in prev.nodes.iter().enumerate() {
            if n.kind != NodeKind::File || n.digest.is_none() {
                continue;
            }
            let mut offset = 0u64;
            for c in n.chunk_list() {
                at.entry(c.0).or_insert(Source { node: i, offset });
                offset += u64::from(c.1);
            }
        }
        Some(PrevIndex {
            root,
            nodes: prev.nodes,
            at,
        })
    }

    /// The earlier restore's file `node`, if it is still a regular file of the
    /// size and modification time it was restored with.
    fn open(&self, node: usize) -> Option<File> {
        let n = &self.nodes[node];
        let f = self.root.open_regular(&n.path).ok()?;
        let m = f.metadata().ok()?;
        (m.len() == n.size && mtime_ns(&m) == n.mtime_ns).then_some(f)
    }
}

/// One step of filling a file.
enum Piece {
    /// Bytes `from..from + len` of the earlier restore's file `node` go to `to`.
    Copy {
        node: usize,
        from: u64,
        to: u64,
        len: u64,
    },
    /// Chunk `chunk` of the file list (`len` bytes) goes to `to`, decoded
    /// from the archive.
    Decode { chunk: usize, to: u64, len: u64 },
}

impl Piece {
    /// Where in the file being filled it ends.
    fn end(&self) -> u64 {
        match *self {
            Piece::Copy { to, len, .. } | Piece::Decode { to, len, .. } => to + len,
        }
    }
}

#[derive(Default)]
struct Counters {
    reused: AtomicU64,
    decoded: AtomicU64,
    rebuilt: AtomicU64,
}

/// Copy `len` bytes from `src` at `from` to `dst` at `to`, skipping the holes
/// of `src` (they read as zeros, which the staged file has already: it was
/// made at its full length), so a sparse file stays sparse.
fn copy_range(src: &File, dst: &File, from: u64, to: u64, len: u64) -> io::Result<()> {
    let end = from + len;
    let mut at = from;
    while at < end {
        let data = match rustix::fs::seek(src, SeekFrom::Data(at)) {
            Ok(d) => d,
            // Only holes (or nothing) from here on.
            Err(rustix::io::Errno::NXIO) => return Ok(()),
            // No hole support: everything is data.
            Err(rustix::io::Errno::INVAL) => at,
            Err(e) => return Err(e.into()),
        };
        if data >= end {
            return Ok(());
        }
        let hole = match rustix::fs::seek(src, SeekFrom::Hole(data)) {
            Ok(h) => h.min(end),
            Err(_) => end,
        };
        copy_data(src, dst, data, to + (data - from), hole - data)?;
        at = hole;
    }
    Ok(())
}

/// Copy bytes in the kernel, or through a buffer where the kernel cannot.
fn copy_data(src: &File, dst: &File, from: u64, to: u64, len: u64) -> io::Result<()> {
    let (mut off_in, mut off_out, mut left) = (from, to, len);
    while left > 0 {
        let want = usize::try_from(left.min(1 << 30)).unwrap_or(1 << 30);
        match rustix::fs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), want) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => left -= n as u64,
            Err(
                rustix::io::Errno::XDEV
                | rustix::io::Errno::NOSYS
                | rustix::io::Errno::OPNOTSUPP
                | rustix::io::Errno::INVAL,
            ) => return copy_buffered(src, dst, off_in, off_out, left),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn copy_buffered(src: &File, dst: &File, from: u64, to: u64, len: u64) -> io::Result<()> {
    let mut buf = read_buffer(len);
    let mut done = 0u64;
    while done < len {
        let want = buf
            .len()
            .min(usize::try_from(len - done).unwrap_or(buf.len()));
        let n = src.read_at(&mut buf[..want], from + done)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        dst.write_all_at(&buf[..n], to + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Bytes filled before they are hashed (while the next ones are filled).
const WINDOW: u64 = 8 << 20;

/// Feed bytes `from..to` of `f` to `h` (to its end when `to` is past it).
fn hash_range(f: &File, h: &mut Sha256, buf: &mut [u8], from: u64, to: u64) -> io::Result<()> {
    let mut at = from;
    while at < to {
        let want = buf.len().min(usize::try_from(to - at).unwrap_or(buf.len()));
        let n = f.read_at(&mut buf[..want], at)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok(())
}

/// A buffer to read a file of `size` bytes back through: small files (most
/// of a tree) must not each zero a MiB.
fn read_buffer(size: u64) -> Vec<u8> {
    vec![0u8; usize::try_from(size.clamp(4096, 1 << 20)).unwrap_or(1 << 20)]
}

/// SHA-256 of the whole of `f` (`size` bytes, as far as the caller knows),
/// read from its start.
fn digest_of(f: &File, size: u64) -> io::Result<FileDigest> {
    let mut h = Sha256::new();
    hash_range(f, &mut h, &mut read_buffer(size), 0, u64::MAX)?;
    Ok(FileDigest(h.finalize().into()))
}

impl Archive {
    /// Write `nodes` into the empty folder `to` (as [`Archive::restore_nodes`]
    /// does) and prove every file: read back from `to`, it hashes to its
    /// digest. With `prev`, the chunks that the earlier restore also has are
    /// copied from it rather than decoded (see the module's notes on why that
    /// is safe whatever it holds). A file list with a file that has no digest
    /// is refused.
    pub fn restore_checked(
        &self,
        nodes: &[Node],
        to: &Path,
        prev: Option<Previous<'_>>,
    ) -> Result<CheckedReport> {
        if let Some(n) = nodes
            .iter()
            .find(|n| n.kind == NodeKind::File && n.digest.is_none())
        {
            return Err(corrupt(
                format!("file list to restore into {}", to.display()),
                format!("{} has no digest", n.path_lossy()),
            ));
        }
        let index = prev.and_then(PrevIndex::new);
        self.announce_reads(nodes);
        let counters = Counters::default();
        let restore = restore_nodes_with(nodes, to, |n, root| {
            self.checked_leaf(n, root, index.as_ref(), &counters)
        })?;
        Ok(CheckedReport {
            restore,
            reused_bytes: counters.reused.into_inner(),
            decoded_bytes: counters.decoded.into_inner(),
            rebuilt: counters.rebuilt.into_inner(),
        })
    }

    fn checked_leaf(
        &self,
        n: &Node,
        root: &Beneath,
        prev: Option<&PrevIndex>,
        counters: &Counters,
    ) -> Result<()> {
        let p = root.display(&n.path);
        if n.kind == NodeKind::Symlink {
            return root.symlink(&n.path, &n.target).at(&p);
        }
        let f = root.create_file(&n.path).at(&p)?;
        let r = self.fill_checked(n, &f, &p, prev, counters);
        if r.is_err() {
            drop(f);
            let _ = root.remove_file(&n.path);
            return r;
        }
        set_file_meta(n, &f, &p)
    }

    /// Fill `f` with `n`'s content, taking from `prev` what it has, and prove
    /// it against `n`'s digest; rebuild it from the archive alone if that
    /// fails.
    fn fill_checked(
        &self,
        n: &Node,
        f: &File,
        p: &Path,
        prev: Option<&PrevIndex>,
        counters: &Counters,
    ) -> Result<()> {
        f.set_len(n.size).at(p)?;
        let (pieces, sources) = plan(n, prev);
        if let Some((reused, decoded, digest)) = self.fill_hashing(n, f, p, &pieces, &sources)? {
            if Some(digest) == n.digest {
                counters.reused.fetch_add(reused, Ordering::Relaxed);
                counters.decoded.fetch_add(decoded, Ordering::Relaxed);
                return Ok(());
            }
        }
        counters.rebuilt.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            file = %p.display(),
            "not the content of the file list at first: rebuilt from the archive alone"
        );
        f.set_len(0).at(p)?;
        f.set_len(n.size).at(p)?;
        self.write_file(n, f, p)?;
        if Some(digest_of(f, n.size).at(p)?) != n.digest {
            return Err(corrupt(
                format!("restored file {}", p.display()),
                "content does not match its SHA-256 digest",
            ));
        }
        counters.decoded.fetch_add(n.size, Ordering::Relaxed);
        Ok(())
    }

    /// Carry out `pieces` a window at a time, and hash `f` read back from its
    /// start: each window once it is filled, while the next one is being
    /// filled (the hash is one stream; this keeps the other core busy), then
    /// whatever follows to the end of the file. `None` as for [`Self::fill`];
    /// else the bytes copied and decoded, and the file's digest.
    fn fill_hashing(
        &self,
        n: &Node,
        f: &File,
        p: &Path,
        pieces: &[Piece],
        sources: &[(usize, File)],
    ) -> Result<Option<(u64, u64, FileDigest)>> {
        let mut h = Sha256::new();
        let mut buf = read_buffer(n.size);
        let (mut hashed, mut filled) = (0u64, 0u64);
        let (mut reused, mut decoded) = (0u64, 0u64);
        let mut rest = pieces;
        while !rest.is_empty() {
            let mut k = 0;
            while k < rest.len() && rest[k].end() - filled < WINDOW {
                k += 1;
            }
            let (window, tail) = rest.split_at(k.clamp(1, rest.len()));
            let (read, done) = rayon::join(
                || hash_range(f, &mut h, &mut buf, hashed, filled),
                || self.fill(n, f, p, window, sources),
            );
            read.at(p)?;
            hashed = filled;
            let Some((c, d)) = done? else {
                return Ok(None);
            };
            reused += c;
            decoded += d;
            filled = window.last().map_or(filled, Piece::end);
            rest = tail;
        }
        hash_range(f, &mut h, &mut buf, hashed, u64::MAX).at(p)?;
        Ok(Some((reused, decoded, FileDigest(h.finalize().into()))))
    }

    /// Carry out `pieces`: the copies in this thread, the decodes in the
    /// pool. `None` when a copy from the earlier restore failed (it shrank or
    /// went away) or a chunk did not decode: the caller rebuilds the file.
    /// Only a failure to write `f` is an error. Returns the bytes copied and
    /// the bytes decoded.
    fn fill(
        &self,
        n: &Node,
        f: &File,
        p: &Path,
        pieces: &[Piece],
        sources: &[(usize, File)],
    ) -> Result<Option<(u64, u64)>> {
        let chunks = n.chunk_list();
        let decode = |piece: &Piece| -> Result<Option<u64>> {
            let Piece::Decode { chunk, to, .. } = *piece else {
                return Ok(Some(0));
            };
            let c = chunks[chunk];
            let data = match self.chunk_unchecked(&c.0) {
                Ok(d) if d.len() == c.1 as usize => d,
                _ => return Ok(None),
            };
            if data.iter().all(|&b| b == 0) {
                return Ok(Some(0)); // a hole: set_len made it zeros already
            }
            f.write_all_at(&data, to).at(p)?;
            Ok(Some(data.len() as u64))
        };
        let copy = || -> Option<u64> {
            let mut done = 0u64;
            for piece in pieces {
                let Piece::Copy {
                    node,
                    from,
                    to,
                    len,
                } = *piece
                else {
                    continue;
                };
                let src = &sources.iter().find(|(i, _)| *i == node)?.1;
                copy_range(src, f, from, to, len).ok()?;
                done += len;
            }
            Some(done)
        };
        let (copied, decoded) = rayon::join(copy, || {
            pieces
                .par_iter()
                .map(decode)
                .try_reduce(|| Some(0), |a, b| Ok(a.zip(b).map(|(a, b)| a + b)))
        });
        Ok(copied.zip(decoded?))
    }
}

/// How to fill `n`: runs of chunks copied from the earlier restore where it
/// has them (and its file is usable), the rest decoded. Returns the pieces
/// and the earlier restore's files they copy from, opened.
fn plan(n: &Node, prev: Option<&PrevIndex>) -> (Vec<Piece>, Vec<(usize, File)>) {
    let mut pieces: Vec<Piece> = Vec::new();
    // Earlier files looked at: opened, or None when unusable.
    let mut looked: Vec<(usize, Option<File>)> = Vec::new();
    let mut to = 0u64;
    for (i, c) in n.chunk_list().iter().enumerate() {
        let len = u64::from(c.1);
        let src = prev.and_then(|pi| {
            let s = *pi.at.get(&c.0)?;
            if !looked.iter().any(|(k, _)| *k == s.node) {
                looked.push((s.node, pi.open(s.node)));
            }
            looked
                .iter()
                .any(|(k, f)| *k == s.node && f.is_some())
                .then_some(s)
        });
        match (src, pieces.last_mut()) {
            (
                Some(s),
                Some(Piece::Copy {
                    node,
                    from,
                    to: at,
                    len: run,
                }),
            ) if *node == s.node
                && *from + *run == s.offset
                && *at + *run == to
                && *run + len <= WINDOW =>
            {
                *run += len;
            }
            (Some(s), _) => pieces.push(Piece::Copy {
                node: s.node,
                from: s.offset,
                to,
                len,
            }),
            (None, _) => pieces.push(Piece::Decode { chunk: i, to, len }),
        }
        to += len;
    }
    let sources = looked
        .into_iter()
        .filter_map(|(k, f)| f.map(|f| (k, f)))
        .collect();
    (pieces, sources)
}

#[cfg(test)]
mod tests;
