//! The ingest pipeline: read the files that changed and turn them into chunks.
//!
//! A producer thread walks the files to read in order: files small enough to
//! hold in memory go to the workers whole, large ones are cut into chunks as
//! they are read (hashing the file as it goes). Workers hash chunks and encode
//! the new ones ([`Ctx::process`]); the calling thread adds the blobs to the
//! pack sink and fills in each file's digest and chunk list.

use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use crossbeam_channel::{bounded, Sender};
use sha2::{Digest, Sha256};

use crate::archive::Archive;
use crate::chunker;
use crate::error::{Error, IoContext, Result};
use crate::id::{ChunkId, FileDigest};
use crate::ingest::{Ctx, NewBlob};
use crate::manifest::{ChunkRef, Node};
use crate::sink::PackSink;
use crate::walk::{ctime_ns, mtime_ns, Item};

/// Files up to this size are read whole by a worker; larger ones are streamed.
const WHOLE_FILE_MAX: u64 = 4 << 20;

enum Job {
    Whole {
        fi: usize,
        path: PathBuf,
        meta: Metadata,
    },
    Chunk {
        fi: usize,
        ci: usize,
        data: Vec<u8>,
    },
}

enum Done {
    Whole {
        fi: usize,
        digest: FileDigest,
        chunks: Vec<ChunkRef>,
        blobs: Vec<NewBlob>,
    },
    Chunk {
        fi: usize,
        ci: usize,
        r: ChunkRef,
        blob: Option<NewBlob>,
    },
    Large {
        fi: usize,
        digest: FileDigest,
        size: u64,
    },
}

fn check_unchanged(path: &Path, before: &Metadata, read: u64) -> Result<()> {
    let after = fs::symlink_metadata(path).at(path)?;
    let why = if read != before.len() {
        format!("read {read} bytes, its size was {}", before.len())
    } else if after.len() != before.len() {
        format!("size went from {} to {}", before.len(), after.len())
    } else if mtime_ns(&after) != mtime_ns(before) || ctime_ns(&after) != ctime_ns(before) {
        "it was modified".to_string()
    } else {
        return Ok(());
    };
    Err(Error::ChangedWhileReading {
        path: path.into(),
        why,
    })
}

fn read_whole(ctx: &Ctx, fi: usize, path: &Path, meta: &Metadata) -> Result<Done> {
    let data = fs::read(path).at(path)?;
    check_unchanged(path, meta, data.len() as u64)?;
    let cuts = chunker::cut(&data);
    let mut chunks = Vec::with_capacity(cuts.len());
    let mut blobs = Vec::new();
    let digest = FileDigest::of(&data);
    for &(o, l) in &cuts {
        // A one-chunk file's chunk id is its digest: hash once.
        let known = (cuts.len() == 1).then_some(ChunkId(digest.0));
        let (r, b) = ctx.process(&data[o..o + l], known)?;
        chunks.push(r);
        blobs.extend(b);
    }
    Ok(Done::Whole {
        fi,
        digest,
        chunks,
        blobs,
    })
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    n: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
}

/// Stream a large file into chunk jobs; returns its digest and size.
fn stream_large(
    ctx: &Ctx,
    fi: usize,
    path: &Path,
    meta: &Metadata,
    jobs: &Sender<Job>,
) -> Result<Option<Done>> {
    let f = File::open(path).at(path)?;
    let mut reader = HashingReader {
        inner: f,
        hasher: Sha256::new(),
        n: 0,
    };
    let stream = fastcdc::v2020::StreamCDC::new(
        &mut reader,
        chunker::MIN_CHUNK,
        chunker::AVG_CHUNK,
        chunker::MAX_CHUNK,
    );
    for (ci, c) in stream.enumerate() {
        let c = c.map_err(|e| Error::Io {
            path: path.into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        if ctx.abort.load(Ordering::Relaxed) {
            return Ok(None);
        }
        if jobs
            .send(Job::Chunk {
                fi,
                ci,
                data: c.data,
            })
            .is_err()
        {
            return Ok(None);
        }
    }
    check_unchanged(path, meta, reader.n)?;
    Ok(Some(Done::Large {
        fi,
        digest: FileDigest(reader.hasher.finalize().into()),
        size: reader.n,
    }))
}

impl Archive {
    /// Read the files `to_read` (indices into `items` and `nodes`) through the
    /// workers, adding new blobs to `sink` and each file's digest, size and
    /// chunks to its node.
    pub(crate) fn run_pipeline(
        &self,
        ctx: &Ctx,
        items: &[Item],
        to_read: &[usize],
        nodes: &mut [Node],
        sink: &mut PackSink,
    ) -> Result<()> {
        if to_read.is_empty() {
            return Ok(());
        }
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let (job_tx, job_rx) = bounded::<Job>(workers * 2);
        let (done_tx, done_rx) = bounded::<Result<Done>>(workers * 4);
        // Per file being streamed: its chunks as they arrive.
        let mut partial: HashMap<usize, Vec<Option<ChunkRef>>> = HashMap::new();
        let mut large_done: HashMap<usize, (FileDigest, u64)> = HashMap::new();
        let mut first_err: Option<Error> = None;

        std::thread::scope(|s| {
            for _ in 0..workers {
                let job_rx = job_rx.clone();
                let done_tx = done_tx.clone();
                s.spawn(move || {
                    for job in job_rx {
                        let r = match job {
                            Job::Whole { fi, path, meta } => read_whole(ctx, fi, &path, &meta),
                            Job::Chunk { fi, ci, data } => ctx
                                .process(&data, None)
                                .map(|(r, blob)| Done::Chunk { fi, ci, r, blob }),
                        };
                        if r.is_err() {
                            ctx.abort.store(true, Ordering::Relaxed);
                        }
                        if done_tx.send(r).is_err() {
                            return;
                        }
                    }
                });
            }
            drop(job_rx);
            let producer_done = done_tx.clone();
            s.spawn(move || {
                for &fi in to_read {
                    if ctx.abort.load(Ordering::Relaxed) {
                        return;
                    }
                    let it = &items[fi];
                    if it.meta.len() <= WHOLE_FILE_MAX {
                        let job = Job::Whole {
                            fi,
                            path: it.abs.clone(),
                            meta: it.meta.clone(),
                        };
                        if job_tx.send(job).is_err() {
                            return;
                        }
                    } else {
                        match stream_large(ctx, fi, &it.abs, &it.meta, &job_tx) {
                            Ok(Some(d)) => {
                                if producer_done.send(Ok(d)).is_err() {
                                    return;
                                }
                            }
                            Ok(None) => return,
                            Err(e) => {
                                ctx.abort.store(true, Ordering::Relaxed);
                                let _ = producer_done.send(Err(e));
                                return;
                            }
                        }
                    }
                }
            });
            drop(done_tx);

            for msg in done_rx.iter() {
                let r = msg.and_then(|d| match d {
                    Done::Whole {
                        fi,
                        digest,
                        chunks,
                        blobs,
                    } => {
                        for b in blobs {
                            sink.add(b.entry, &b.payload)?;
                        }
                        let n = &mut nodes[fi];
                        n.digest = Some(digest);
                        n.size = chunks.iter().map(|c| c.1 as u64).sum();
                        n.chunks = if chunks.len() == 1 {
                            Vec::new()
                        } else {
                            chunks
                        };
                        Ok(())
                    }
                    Done::Chunk { fi, ci, r, blob } => {
                        if let Some(b) = blob {
                            sink.add(b.entry, &b.payload)?;
                        }
                        let v = partial.entry(fi).or_default();
                        if v.len() <= ci {
                            v.resize(ci + 1, None);
                        }
                        v[ci] = Some(r);
                        Ok(())
                    }
                    Done::Large { fi, digest, size } => {
                        large_done.insert(fi, (digest, size));
                        Ok(())
                    }
                });
                if let Err(e) = r {
                    ctx.abort.store(true, Ordering::Relaxed);
                    first_err = Some(e);
                    break;
                }
            }
            drop(done_rx);
        });
        if let Some(e) = first_err {
            return Err(e);
        }
        for (fi, (digest, size)) in large_done {
            let chunks: Vec<ChunkRef> = partial
                .remove(&fi)
                .unwrap_or_default()
                .into_iter()
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "{}: chunks lost in the pipeline",
                        items[fi].abs.display()
                    ))
                })?;
            let n = &mut nodes[fi];
            n.digest = Some(digest);
            n.size = size;
            n.chunks = chunks;
        }
        for &fi in to_read {
            if nodes[fi].digest.is_none() {
                return Err(Error::Invalid(format!(
                    "{}: not read completely",
                    items[fi].abs.display()
                )));
            }
        }
        Ok(())
    }
}
