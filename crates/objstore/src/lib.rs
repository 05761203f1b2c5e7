//! The archive on an S3-compatible object store: [`ObjectBackend`] implements the
//! archive's [`Backend`] over the `object_store` crate, so that packs, generation records
//! and the config live in a bucket (under a prefix) while everything else stays the same.
//!
//! What goes where (FORMAT.md beside this crate):
//! - `config`, `packs/…`, `gens/…`: objects `<prefix>/<key>` in the bucket;
//! - `tmp/…` (staged writes), `pins/…` and the locks: a local folder (`[archive] path`),
//!   because they matter only to the process that writes and are taken by flock(2). One
//!   bucket prefix belongs to one PBS at a time (a second PBS keeps its own prefix and
//!   mirrors, `[[mirror]]`);
//! - `cache/packs/…`: local copies of the packs this host put (`disk.rs`), read instead of
//!   the bucket, within `disk_cache_mib`.
//!
//! The commit point stays atomic: a generation record is one PUT, visible whole or not at
//! all, and it is put only after every pack it refers to has been put. A record is never
//! replaced: with `conditional_put = true` the PUT carries `If-None-Match: *` (AWS S3,
//! MinIO, R2 refuse it when the key exists); without, the backend asks (HEAD) first — safe
//! because the writer holds the source's lock (a local flock) and no other process writes
//! under this prefix. (Garage 2.5 ignores `If-None-Match` on PUT.)
//!
//! The archive is synchronous (no async runtime); this backend owns a small tokio
//! runtime and waits for each request on it, so it may be called from any thread,
//! including a runtime's blocking pool.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use archive::backend::{Backend, LocalBackend, LockGuard, Staged};
use archive::{Error, Result};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{ClientOptions, ObjectStore, PutMode, PutOptions, PutPayload, RetryConfig};
use serde::Deserialize;

mod disk;
mod ranges;
#[cfg(test)]
mod tests;
mod whole;

use disk::DiskCache;
use ranges::{Plan, Ranges, Slot};
use whole::{Job, Outcome, Whole};

/// `[archive.s3]` in the PBS config.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// `http://host:port` or `https://…` of the S3 API.
    pub endpoint: String,
    pub bucket: String,
    /// Keys go under `<prefix>/` (no leading or trailing `/`); empty: the bucket's root.
    #[serde(default)]
    pub prefix: String,
    #[serde(default = "default_region")]
    pub region: String,
    pub access_key_id: String,
    /// The secret, or `secret_access_key_file` naming a file that holds it.
    pub secret_access_key: Option<String>,
    pub secret_access_key_file: Option<PathBuf>,
    /// The store refuses a PUT with `If-None-Match: *` on an existing key (AWS S3, MinIO,
    /// R2): records are then created by that condition instead of HEAD-then-PUT.
    #[serde(default)]
    pub conditional_put: bool,
    /// A request without an answer for this long fails (after the retries).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Memory for read-ahead of pack ranges, MiB.
    #[serde(default = "default_cache_mib")]
    pub cache_mib: usize,
    /// Disk for local copies of the packs this host put or read, MiB, in
    /// `<[archive] path>/cache` (least recently read go first); 0: none, every read is a
    /// request.
    #[serde(default = "default_disk_cache_mib")]
    pub disk_cache_mib: u64,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("conditional_put", &self.conditional_put)
            .field("cache_mib", &self.cache_mib)
            .field("disk_cache_mib", &self.disk_cache_mib)
            .finish_non_exhaustive()
    }
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_timeout() -> u64 {
    30
}
fn default_cache_mib() -> usize {
    16
}
fn default_disk_cache_mib() -> u64 {
    4096
}

/// What one miss reads at least (the rest of a pack is usually read next).
const READ_AHEAD: u64 = 2 << 20;
/// A read that ends at an object's end (a pack footer) fetches this much of its tail, so
/// that the trailer before it needs no second request.
const TAIL: u64 = 256 << 10;

/// Pack uploads in flight at once (each up to 16 MiB in memory).
const PUTS_AT_ONCE: usize = 2;

/// Keys that stay in the local folder.
fn is_local(key: &str) -> bool {
    let top = key.split('/').next().unwrap_or("");
    matches!(top, "tmp" | "pins" | "locks")
}

fn is_pack(key: &str) -> bool {
    key.starts_with("packs/")
}

pub struct ObjectBackend {
    store: Arc<AmazonS3>,
    prefix: String,
    local: LocalBackend,
    rt: tokio::runtime::Runtime,
    conditional: bool,
    location: String,
    /// Object sizes seen (objects never change, so a size stays true until removal).
    sizes: Mutex<HashMap<String, u64>>,
    ranges: Arc<Ranges>,
    /// Local copies of packs (`disk_cache_mib`).
    disk: Option<Arc<DiskCache>>,
    /// Packs being fetched whole into `disk` ahead of a restore.
    whole: Arc<Whole>,
    /// PUTs of packs started by `will_publish`, by key; `publish_all` takes them.
    early: Mutex<HashMap<String, tokio::task::JoinHandle<PutResult>>>,
    /// Early PUTs in flight at once (each holds its pack in memory).
    early_slots: Arc<tokio::sync::Semaphore>,
}

/// A pack put: its key and its size.
type PutResult = std::result::Result<(String, u64), object_store::Error>;

/// PUT the staged file `tmp` as `path`; with `disk`, fsync it meanwhile and, once both
/// succeeded, keep it as the pack's local copy.
async fn put_pack(
    store: Arc<AmazonS3>,
    disk: Option<Arc<DiskCache>>,
    key: String,
    path: ObjPath,
    tmp: PathBuf,
) -> PutResult {
    // The local copy is fsynced while the PUT goes (not after it).
    let synced = disk.is_some().then(|| {
        let tmp = tmp.clone();
        tokio::task::spawn_blocking(move || std::fs::File::open(&tmp).and_then(|f| f.sync_all()))
    });
    let data = tokio::fs::read(&tmp)
        .await
        .map_err(|e| object_store::Error::Generic {
            store: "staged file",
            source: format!("{}: {e}", tmp.display()).into(),
        })?;
    let len = data.len() as u64;
    tracing::debug!(key, len, "PUT");
    store.put(&path, PutPayload::from(data)).await?;
    if let (Some(disk), Some(synced)) = (disk, synced) {
        if matches!(synced.await, Ok(Ok(()))) {
            disk.insert(&key, &tmp);
        }
    }
    Ok((key, len))
}

fn io_err(kind: io::ErrorKind, msg: String) -> io::Error {
    io::Error::new(kind, msg)
}

impl ObjectBackend {
    /// Connects nothing yet (the first request does); fails on a bad config.
    /// `local` is the folder for staged writes, pins and locks.
    pub fn new(cfg: &S3Config, local: impl Into<PathBuf>) -> Result<ObjectBackend> {
        let local: PathBuf = local.into();
        let secret =
            match (&cfg.secret_access_key, &cfg.secret_access_key_file) {
                (Some(s), None) => s.clone(),
                (None, Some(p)) => std::fs::read_to_string(p)
                    .map_err(|source| Error::Io {
                        path: p.clone(),
                        source,
                    })?
                    .trim()
                    .to_string(),
                _ => return Err(Error::Invalid(
                    "archive.s3: give exactly one of secret_access_key and secret_access_key_file"
                        .into(),
                )),
            };
        let prefix = cfg.prefix.trim_matches('/').to_string();
        if prefix.split('/').any(|p| p == "." || p == "..") {
            return Err(Error::Invalid(format!(
                "archive.s3.prefix {prefix:?}: no . or .. parts"
            )));
        }
        let timeout = Duration::from_secs(cfg.timeout_secs.max(1));
        // object_store's HTTP client brings no TLS provider of its own: ring, as everywhere
        // else in pullback (an already installed one is kept).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = AmazonS3Builder::new()
            .with_endpoint(&cfg.endpoint)
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region)
            .with_access_key_id(&cfg.access_key_id)
            .with_secret_access_key(secret)
            .with_virtual_hosted_style_request(false)
            // Every object is checked by its content hash when read.
            .with_unsigned_payload(true)
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(timeout)
                    .with_allow_http(cfg.endpoint.starts_with("http://")),
            )
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: timeout,
                ..Default::default()
            })
            .build()
            .map_err(|e| Error::Invalid(format!("archive.s3: {e}")))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("objstore")
            .enable_all()
            .build()
            .map_err(|e| Error::Invalid(format!("object store runtime: {e}")))?;
        let location = format!(
            "s3://{}/{} at {}",
            cfg.bucket,
            prefix,
            cfg.endpoint.trim_end_matches('/')
        );
        let disk = DiskCache::new(
            local.join("cache"),
            cfg.disk_cache_mib.saturating_mul(1 << 20),
        );
        Ok(ObjectBackend {
            store: Arc::new(store),
            prefix,
            disk: disk.map(Arc::new),
            whole: Arc::new(Whole::default()),
            early: Mutex::new(HashMap::new()),
            early_slots: Arc::new(tokio::sync::Semaphore::new(PUTS_AT_ONCE)),
            local: LocalBackend::new(local),
            rt,
            conditional: cfg.conditional_put,
            location,
            sizes: Mutex::new(HashMap::new()),
            ranges: Arc::new(Ranges::new((cfg.cache_mib as u64) << 20)),
        })
    }

    fn obj(&self, key: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(key)
        } else {
            ObjPath::from(format!("{}/{key}", self.prefix))
        }
    }

    fn err_path(&self, key: &str) -> PathBuf {
        PathBuf::from(format!("{}/{key}", self.location))
    }

    fn map_err(&self, key: &str, e: object_store::Error) -> Error {
        let kind = match &e {
            object_store::Error::NotFound { .. } => io::ErrorKind::NotFound,
            object_store::Error::AlreadyExists { .. } => io::ErrorKind::AlreadyExists,
            _ => io::ErrorKind::Other,
        };
        // The whole chain: object_store's own text often hides the cause.
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            let t = s.to_string();
            if !msg.contains(&t) {
                msg = format!("{msg}: {t}");
            }
            src = s.source();
        }
        Error::Io {
            path: self.err_path(key),
            source: io_err(kind, msg),
        }
    }

    /// Run `f` on this backend's runtime and wait for it (from any thread).
    fn run<T: Send + 'static>(
        &self,
        key: &str,
        f: impl Future<Output = std::result::Result<T, object_store::Error>> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.spawn(async move {
            let _ = tx.send(f.await);
        });
        match rx.recv() {
            Ok(r) => r.map_err(|e| self.map_err(key, e)),
            Err(_) => Err(Error::Io {
                path: self.err_path(key),
                source: io_err(io::ErrorKind::Other, "the request's task failed".into()),
            }),
        }
    }

    fn remember_size(&self, key: &str, size: u64) {
        let mut m = self.sizes.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= 100_000 {
            m.clear();
        }
        m.insert(key.to_string(), size);
    }

    /// Start fetching `slot`'s range in the background; readers wait on the slot.
    fn fetch(&self, key: &str, slot: Arc<Slot>) {
        let store = self.store.clone();
        let path = self.obj(key);
        let (start, end) = slot.range();
        tracing::debug!(key, start, end, "GET range");
        self.rt.spawn(async move {
            let r = match store.get_range(&path, start..end).await {
                Ok(b) if b.len() as u64 == end - start => Ok(b),
                Ok(b) => Err(format!(
                    "asked {} bytes at {start}, the store sent {}",
                    end - start,
                    b.len()
                )),
                Err(e) => Err(e.to_string()),
            };
            slot.fill(r);
        });
    }

    fn exists(&self, key: &str) -> Result<bool> {
        match self.size(key) {
            Ok(_) => Ok(true),
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// An object's size if a listing or HEAD told it (no request).
    fn known_size(&self, key: &str) -> Option<u64> {
        self.sizes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
    }

    fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<()> {
        let store = self.store.clone();
        let path = self.obj(key);
        let len = data.len() as u64;
        tracing::debug!(key, len, "PUT");
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        self.run(key, async move {
            store
                .put_opts(&path, PutPayload::from_bytes(data), opts)
                .await
        })?;
        self.remember_size(key, len);
        Ok(())
    }
}

impl Backend for ObjectBackend {
    fn read(&self, key: &str) -> Result<Vec<u8>> {
        if is_local(key) {
            return self.local.read(key);
        }
        let store = self.store.clone();
        let path = self.obj(key);
        tracing::debug!(key, "GET");
        let b = self.run(key, async move { store.get(&path).await?.bytes().await })?;
        // A whole read is the store's word (verify --full): a copy that differs goes.
        if let Some(disk) = self.disk.as_ref().filter(|_| is_pack(key)) {
            if disk.read(key).is_some_and(|copy| copy != b) {
                tracing::warn!(key, "the local copy differs from the object: dropped");
                disk.remove(key);
            }
        }
        Ok(b.to_vec())
    }

    fn read_at(&self, key: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        if is_local(key) {
            return self.local.read_at(key, offset, len);
        }
        if let Some(disk) = &self.disk {
            if let Some(b) = disk.read_at(key, offset, len) {
                return Ok(b);
            }
            // Announced by `will_read`: coming in pieces (or failed: ranged reads then).
            if let Some(b) = self.whole.read_at(key, offset, len) {
                return Ok(b);
            }
            // Its fetch may have just ended.
            if let Some(b) = disk.read_at(key, offset, len) {
                return Ok(b);
            }
        }
        let size = self.size(key)?;
        if offset.checked_add(len as u64).is_none_or(|end| end > size) {
            return Err(Error::Io {
                path: self.err_path(key),
                source: io_err(
                    io::ErrorKind::UnexpectedEof,
                    format!("{len} bytes at {offset}: the object has {size}"),
                ),
            });
        }
        tracing::trace!(key, offset, len, "read");
        let slot = match self
            .ranges
            .plan(key, offset, len as u64, size, READ_AHEAD, TAIL)
        {
            Plan::Wait(slot) => slot,
            Plan::Fetch(slots) => {
                for s in &slots {
                    self.fetch(key, s.clone());
                }
                slots[0].clone()
            }
        };
        self.ranges.read(&slot, offset, len).map_err(|e| {
            self.ranges.forget(key, Some(&slot));
            Error::Io {
                path: self.err_path(key),
                source: io_err(io::ErrorKind::Other, e),
            }
        })
    }

    fn size(&self, key: &str) -> Result<u64> {
        if is_local(key) {
            return self.local.size(key);
        }
        if let Some(s) = self.known_size(key) {
            return Ok(s);
        }
        if let Some(s) = self.disk.as_ref().and_then(|d| d.size(key)) {
            return Ok(s);
        }
        let store = self.store.clone();
        let path = self.obj(key);
        tracing::debug!(key, "HEAD");
        let meta = self.run(key, async move { store.head(&path).await })?;
        self.remember_size(key, meta.size);
        Ok(meta.size)
    }

    fn stage(&self, data: &[u8]) -> Result<Staged> {
        self.local.stage(data)
    }

    fn publish(&self, staged: &Staged, key: &str) -> Result<bool> {
        if is_local(key) {
            return self.local.publish(staged, key);
        }
        if is_pack(key) {
            return Ok(self.publish_all(&[(staged, key)])?.contains(&true));
        }
        let data = std::fs::read(&staged.tmp).map_err(|source| Error::Io {
            path: staged.tmp.clone(),
            source,
        })?;
        let data = Bytes::from(data);
        if self.conditional {
            return match self.put(key, data, PutMode::Create) {
                Ok(()) => Ok(true),
                Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => {
                    Ok(false)
                }
                Err(e) => Err(e),
            };
        }
        if self.exists(key)? {
            return Ok(false);
        }
        self.put(key, data, PutMode::Overwrite)?;
        Ok(true)
    }

    /// Packs at once, [`PUTS_AT_ONCE`] at a time, each read from its staged file only when
    /// its turn comes; anything else one by one.
    fn publish_all(&self, items: &[(&Staged, &str)]) -> Result<Vec<bool>> {
        let packs: Vec<_> = items.iter().filter(|(_, k)| is_pack(k)).collect();
        let disk = self.disk.clone();
        let jobs: Vec<_> = {
            let mut early = self.early.lock().unwrap_or_else(|p| p.into_inner());
            packs
                .iter()
                .map(|(s, k)| (k.to_string(), self.obj(k), s.tmp.clone(), early.remove(*k)))
                .collect()
        };
        let store = self.store.clone();
        let first = jobs.first().map(|j| j.0.clone()).unwrap_or_default();
        let done = self.run(&first, async move {
            futures::stream::iter(jobs.into_iter().map(|(key, path, tmp, early)| {
                let (store, disk) = (store.clone(), disk.clone());
                async move {
                    // Put early, before the caller's locks: a gc may have deleted it since
                    // (a pack no record used yet). It is there now, under the caller's sweep
                    // lock, or it is put again.
                    if let Some(Ok(Ok(r))) = match early {
                        Some(h) => Some(h.await),
                        None => None,
                    } {
                        match store.head(&path).await {
                            Ok(_) => return Ok(r),
                            Err(object_store::Error::NotFound { .. }) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    put_pack(store, disk, key, path, tmp).await
                }
            }))
            .buffer_unordered(PUTS_AT_ONCE)
            .try_collect::<Vec<_>>()
            .await
        })?;
        for (key, len) in done {
            self.remember_size(&key, len);
        }
        // Packs are named by their content: putting one is never refused.
        items
            .iter()
            .map(|(s, k)| {
                if is_pack(k) {
                    Ok(true)
                } else {
                    self.publish(s, k)
                }
            })
            .collect()
    }

    fn discard(&self, staged: Staged) {
        self.local.discard(staged)
    }

    fn append(&self, key: &str, data: &[u8]) -> Result<()> {
        if is_local(key) {
            return self.local.append(key, data);
        }
        Err(Error::Invalid(format!(
            "{key}: an object store cannot append (only to local scratch keys)"
        )))
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let prefix = prefix.trim_end_matches('/');
        if is_local(prefix) {
            return self.local.list(prefix);
        }
        let store = self.store.clone();
        let path = self.obj(prefix);
        let metas = self.run(prefix, async move {
            store.list(Some(&path)).try_collect::<Vec<_>>().await
        })?;
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let mut out = Vec::with_capacity(metas.len());
        for m in metas {
            let full = m.location.to_string();
            let Some(key) = full.strip_prefix(&strip) else {
                continue;
            };
            self.remember_size(key, m.size);
            out.push(key.to_string());
        }
        Ok(out)
    }

    fn remove(&self, key: &str) -> Result<()> {
        if is_local(key) {
            return self.local.remove(key);
        }
        self.sizes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        self.ranges.forget(key, None);
        if let Some(d) = &self.disk {
            d.remove(key);
        }
        let store = self.store.clone();
        let path = self.obj(key);
        match self.run(key, async move { store.delete(&path).await }) {
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    fn lock(&self, name: &str, exclusive: bool, wait: bool) -> Result<Box<dyn LockGuard>> {
        self.local.lock(name, exclusive, wait)
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    /// A pack's PUT starts at once, while the ingest goes on ([`PUTS_AT_ONCE`] at a time);
    /// `publish_all` waits for it and checks it is still there.
    fn will_publish(&self, staged: &Staged, key: &str) {
        if !is_pack(key) {
            return;
        }
        let (store, disk, slots) = (
            self.store.clone(),
            self.disk.clone(),
            self.early_slots.clone(),
        );
        let (k, path, tmp) = (key.to_string(), self.obj(key), staged.tmp.clone());
        let h = self.rt.spawn(async move {
            let _slot = slots.acquire_owned().await;
            put_pack(store, disk, k, path, tmp).await
        });
        let mut early = self.early.lock().unwrap_or_else(|p| p.into_inner());
        if early.len() >= 10_000 {
            early.clear();
        }
        early.insert(key.to_string(), h);
    }

    /// Packs mostly read (at least half their bytes) and not copied here yet are fetched
    /// whole into the local copies, in the order given, in pieces ([`whole::PIECE`],
    /// [`whole::WHOLE_AT_ONCE`] at a time), at most half the copies' budget ahead.
    fn will_read(&self, objects: &[(String, u64)]) {
        let Some(disk) = &self.disk else { return };
        let mut ahead = 0u64;
        for (key, need) in objects {
            if !is_pack(key) || disk.get(key).is_some() {
                continue;
            }
            let Some(size) = self.known_size(key) else {
                continue;
            };
            if need.saturating_mul(2) < size {
                continue;
            }
            ahead += size;
            if ahead > disk.budget() / 2 {
                break;
            }
            // An empty staged file, named as every staged write is.
            let Ok(file) = self.local.stage(&[]) else {
                continue;
            };
            if !self.whole.queue(key, self.obj(key), size, file.tmp.clone()) {
                self.local.discard(file);
            }
        }
        for _ in 0..self.whole.workers_wanted() {
            let (whole, store, disk) = (self.whole.clone(), self.store.clone(), disk.clone());
            self.rt.spawn(async move {
                while let Some((job, piece)) = whole.next() {
                    let ok = match fetch_piece(&store, &job, piece).await {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::debug!(key = %job.key, piece, error = %e, "pack not fetched whole");
                            false
                        }
                    };
                    match whole.piece_done(&job, piece, ok) {
                        Outcome::Partial => continue,
                        // Not fsynced: a copy lost or damaged by a power loss is read from
                        // the bucket.
                        Outcome::Complete => disk.insert(&job.key, &job.tmp),
                        Outcome::Failed => {}
                    }
                    whole.forget(&job);
                    let _ = tokio::fs::remove_file(&job.tmp).await;
                }
            });
        }
    }

    fn uncache(&self, key: &str) -> bool {
        let Some(disk) = &self.disk else {
            return false;
        };
        if disk.remove(key) {
            tracing::warn!(
                key,
                "a blob read from the local copy failed its check: reading the object"
            );
        }
        // Dropped by another reader after this one read it, maybe: read again either way.
        true
    }
}

/// GET piece `i` of `job`'s pack into its file.
async fn fetch_piece(store: &AmazonS3, job: &Job, i: usize) -> std::result::Result<(), String> {
    use std::os::unix::fs::FileExt;
    let (start, end) = job.range(i);
    if i == 0 {
        tracing::debug!(key = %job.key, size = job.size, "GET whole");
    }
    tracing::trace!(key = %job.key, start, end, "GET piece");
    let file = job
        .file()
        .map_err(|e| format!("{}: {e}", job.tmp.display()))?;
    let opts = object_store::GetOptions {
        range: Some((start..end).into()),
        ..Default::default()
    };
    let mut body = store
        .get_opts(&job.path, opts)
        .await
        .map_err(|e| e.to_string())?
        .into_stream();
    // Each part of the body goes to its place in the file as it comes: no piece-sized
    // buffer to fill and copy. Writes into the page cache, a few KiB at a time.
    let mut at = start;
    while let Some(part) = body.next().await {
        let part = part.map_err(|e| e.to_string())?;
        if at + part.len() as u64 > end {
            return Err(format!(
                "asked {} bytes at {start}, the store sent more",
                end - start
            ));
        }
        file.write_all_at(&part, at)
            .map_err(|e| format!("{}: {e}", job.tmp.display()))?;
        at += part.len() as u64;
    }
    if at != end {
        return Err(format!(
            "asked {} bytes at {start}, the store sent {}",
            end - start,
            at - start
        ));
    }
    Ok(())
}
