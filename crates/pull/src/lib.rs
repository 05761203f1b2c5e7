//! The one transfer engine: **the receiver always pulls**.
//!
//! A generation moves from a [`GenSource`] (anything that can give the record of a
//! generation, then any set of blobs as one pack) into an archive by [`receive`]: the
//! record first, then, round after round, only the blobs the receiving archive lacks
//! (file-list chunks, file chunks, delta bases of what arrived), every byte checked by
//! `archive::transfer::Incoming`. The caller commits what [`receive`] returns. The PBS
//! pulls from the main's exporter this way, each clone pulls from its PBS the same way,
//! and a later PBS will pull from another PBS: nobody keeps a half-received transfer
//! for a peer, the puller holds it and drops it when it gives up.
//!
//! Every archive that is pulled from serves the same two routes ([`routes`]):
//! `GET /v1/generations/{source}/{seq}` and `POST /v1/blobs` (crates/wire/FORMAT.md).

use std::future::Future;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use archive::manifest::{GenRecord, MAX_RECORD_BYTES};
use archive::transfer::{Incoming, MAX_BLOBS_PER_REQUEST, MAX_PACK_BYTES};
use archive::{Archive, ChunkId, GenId, Seq, SourceName};
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Extension, Router};
use bytes::Bytes;
use wire::metrics::Counter;
use wire::server::ApiError;
use wire::{Client, Peer};

/// Where a generation is pulled from.
pub trait GenSource: Send + Sync {
    /// The record of `gen`, as stored (at most [`MAX_RECORD_BYTES`]).
    fn record(&self, gen: &GenId) -> impl Future<Output = Result<Bytes>> + Send;
    /// One pack holding the blobs `ids` (at most [`MAX_BLOBS_PER_REQUEST`] of them).
    fn blobs(&self, ids: &[ChunkId]) -> impl Future<Output = Result<Bytes>> + Send;
}

/// A daemon that serves [`routes`], over HTTP(S) with this side's token.
pub struct HttpSource {
    client: Client,
    /// What the peer is, for messages ("the exporter", "the PBS").
    what: String,
    received: Option<Counter>,
}

impl HttpSource {
    /// Pull through `client`; `what` names the peer in errors; every byte read is added
    /// to `received`.
    pub fn new(client: Client, what: impl Into<String>, received: Option<Counter>) -> Self {
        HttpSource {
            client,
            what: what.into(),
            received,
        }
    }

    fn count(&self, b: &Bytes) {
        if let Some(c) = &self.received {
            c.add(b.len() as u64);
        }
    }
}

impl HttpSource {
    /// The numbers of `source`'s generations at the peer, oldest first.
    pub async fn list(&self, source: &SourceName) -> Result<Vec<u64>> {
        self.client
            .get_json(&format!("/v1/generations/{source}"))
            .await
            .map_err(|e| anyhow!("{} ({}): {e}", self.what, self.client.base_url()))
    }
}

impl GenSource for HttpSource {
    async fn record(&self, gen: &GenId) -> Result<Bytes> {
        let b = self
            .client
            .get_bytes_max(
                &format!("/v1/generations/{}/{}", gen.source, gen.seq),
                MAX_RECORD_BYTES,
            )
            .await
            .map_err(|e| anyhow!("{} ({}): {e}", self.what, self.client.base_url()))?;
        self.count(&b);
        Ok(b)
    }

    async fn blobs(&self, ids: &[ChunkId]) -> Result<Bytes> {
        let body: Vec<u8> = ids.iter().flat_map(|id| id.0).collect();
        let b = self
            .client
            .post_bytes_max("/v1/blobs", body, MAX_PACK_BYTES)
            .await
            .map_err(|e| anyhow!("{} ({}): {e}", self.what, self.client.base_url()))?;
        self.count(&b);
        Ok(b)
    }
}

/// Pull generation `gen` from `src` into a complete [`Incoming`] checked against `ar`
/// (only what `ar` lacks is asked for). `check` sees the record before any blob is asked
/// for (epoch, replay, a clone's "never back"): its error ends the pull, unchanged, so
/// that the caller can tell its own refusals from transfer faults. Nothing is stored:
/// the caller commits the result (`Archive::commit_incoming`).
pub async fn receive<S: GenSource>(
    src: &S,
    ar: &Arc<Archive>,
    gen: &GenId,
    check: impl FnOnce(&GenRecord) -> Result<()> + Send + 'static,
) -> Result<Incoming> {
    let bytes = src.record(gen).await?;
    let want = gen.clone();
    let mut inc = wire::blocking(move || {
        let inc = Incoming::new(&bytes).context("the generation record")?;
        let got = inc.record().id();
        if got != want {
            bail!("asked for generation {want}, the source sent {got}");
        }
        check(inc.record())?;
        anyhow::Ok(inc)
    })
    .await?;
    loop {
        let a = ar.clone();
        let (i, need) = wire::blocking(move || {
            let need = inc.missing(&a)?;
            anyhow::Ok((inc, need))
        })
        .await?;
        inc = i;
        if need.is_empty() {
            return Ok(inc);
        }
        let pack = src.blobs(&need).await?;
        let (i, taken) = wire::blocking(move || {
            let n = inc.add_pack(&pack).context("a pack from the source")?;
            anyhow::Ok((inc, n))
        })
        .await?;
        inc = i;
        // Each round must bring something asked for, or the pull would never end.
        if taken == 0 {
            bail!(
                "{gen}: the source answered without any of the {} blobs asked for (first {})",
                need.len(),
                need[0]
            );
        }
    }
}

/// Who may read an archive through [`routes`]: `Ok` with the counter that the bytes
/// served to this peer are added to, `Err` (usually 403) to refuse the peer.
pub type Admit = Arc<dyn Fn(&Peer) -> Result<Counter, ApiError> + Send + Sync>;

#[derive(Clone)]
struct Served {
    archive: Arc<Archive>,
    admit: Admit,
}

impl Served {
    /// Read-only work on the archive off the async threads; what it returns is counted
    /// as sent.
    async fn serve(
        &self,
        peer: &Peer,
        f: impl FnOnce(&Archive) -> Result<Vec<u8>, ApiError> + Send + 'static,
    ) -> Result<Bytes, ApiError> {
        let sent = (self.admit)(peer)?;
        let ar = self.archive.clone();
        let b = tokio::task::spawn_blocking(move || f(&ar))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))??;
        sent.add(b.len() as u64);
        Ok(Bytes::from(b))
    }
}

async fn generation(
    State(s): State<Served>,
    Extension(peer): Extension<Peer>,
    Path((source, seq)): Path<(String, u64)>,
) -> Result<Bytes, ApiError> {
    let gen = GenId {
        source: SourceName::new(&source).map_err(ApiError::bad_request)?,
        seq: Seq(seq),
    };
    s.serve(&peer, move |ar| {
        ar.record_bytes(&gen)
            .map_err(|e| ApiError::not_found(e.to_string()))
    })
    .await
}

/// `GET /v1/generations/{source}`: the numbers of the source's generations, oldest first.
async fn list(
    State(s): State<Served>,
    Extension(peer): Extension<Peer>,
    Path(source): Path<String>,
) -> Result<axum::Json<Vec<u64>>, ApiError> {
    (s.admit)(&peer)?;
    let source = SourceName::new(&source).map_err(ApiError::bad_request)?;
    let ar = s.archive.clone();
    let seqs = tokio::task::spawn_blocking(move || {
        ar.generations().map(|g| {
            g.into_iter()
                .filter(|g| g.source == source)
                .map(|g| g.seq.0)
                .collect::<Vec<_>>()
        })
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(axum::Json(seqs))
}

/// Parse a `POST /v1/blobs` body: N × 32 raw bytes, 1 ≤ N ≤ [`MAX_BLOBS_PER_REQUEST`].
pub fn parse_ids(body: &[u8]) -> Result<Vec<ChunkId>, String> {
    if body.is_empty() || !body.len().is_multiple_of(32) {
        return Err("the body must be one or more 32-byte chunk ids".into());
    }
    if body.len() / 32 > MAX_BLOBS_PER_REQUEST {
        return Err(format!(
            "{} blobs asked for at once; at most {MAX_BLOBS_PER_REQUEST}",
            body.len() / 32
        ));
    }
    Ok(body
        .chunks_exact(32)
        .map(|c| {
            let mut id = [0; 32];
            id.copy_from_slice(c);
            ChunkId(id)
        })
        .collect())
}

async fn blobs(
    State(s): State<Served>,
    Extension(peer): Extension<Peer>,
    body: Bytes,
) -> Result<Bytes, ApiError> {
    s.serve(&peer, move |ar| {
        let ids = parse_ids(&body).map_err(ApiError::bad_request)?;
        ar.export_blobs(&ids)
            .map_err(|e| ApiError::bad_request(e.to_string()))
    })
    .await
}

/// The two routes a puller reads `archive` through, for the peers `admit` lets in.
/// Every body they take is small (at most 64 ids): the caller puts them behind its
/// token layer and its JSON body limit.
pub fn routes(archive: Arc<Archive>, admit: Admit) -> Router {
    Router::new()
        .route("/v1/generations/{source}", get(list))
        .route("/v1/generations/{source}/{seq}", get(generation))
        .route("/v1/blobs", post(blobs))
        .with_state(Served { archive, admit })
}

/// Any authenticated peer may read; what is served is added to `sent`.
pub fn anyone(sent: Counter) -> Admit {
    Arc::new(move |_| Ok(sent.clone()))
}

#[cfg(test)]
mod tests;
