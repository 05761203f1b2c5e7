//! The coordinator's state in etcd (`[coordinator] etcd = { endpoints, prefix, ... }`),
//! shared by every PBS configured with the same etcd, prefix and groups. Keys (see
//! FORMAT.md):
//!
//! - `<prefix>/coord/<group>`: the group's [`CoordState`] as JSON (what
//!   `coordinator.json` holds without etcd). Every transition reads it (a linearizable
//!   read), runs the state machine, and writes it in a transaction
//!   `if mod_revision(key) == read revision then put` (see `store::transact`).
//! - `<prefix>/grant/<group>`: the last grant of MAIN, `{"node", "epoch", "at"}`, written in
//!   the same transaction as the state that grants it: its `mod_revision` is the etcd
//!   revision of the grant (shown by `pbs status`).
//! - `<prefix>/main/<group>`: the main's name, also written by the grant's transaction,
//!   attached to a lease of `main_lease_secs` that the PBS which wrote it renews at each
//!   hello or notification of that main. Information only: "main lease alive" means some
//!   PBS heard the main within the lease's TTL, "expired" that none did. No decision reads
//!   it: the epoch in the state is the fencing token.
//!
//! The PBS is synchronous where it calls the coordinator (the transitions run on blocking
//! threads), so this store owns a small tokio runtime of its own for the etcd client and
//! waits for each request on a channel, at most `timeout_secs`: it never blocks inside the
//! server's runtime, and when etcd cannot be reached the request fails with
//! [`StoreError::Unavailable`] naming etcd (a takeover is refused with 503, never granted
//! on stale state).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, Identity, PutOptions, TlsOptions, Txn,
    TxnOp,
};
use serde_json::{json, Value};

use super::store::{GrantNote, Store, StoreError, Versioned, Written};
use super::CoordState;
use crate::config::EtcdConfig;

/// One connection to the etcd cluster, shared by the groups of a PBS.
pub struct Etcd {
    rt: Option<tokio::runtime::Runtime>,
    client: Client,
    prefix: String,
    timeout: Duration,
    lease_ttl: i64,
    endpoints: String,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        // Also from inside the server's runtime (dropping a runtime there panics).
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Whether a failed request may go through when tried again (another member, a new leader).
fn transient(e: &etcd_client::Error) -> bool {
    // gRPC codes that trying again will not change: InvalidArgument 3, PermissionDenied 7,
    // FailedPrecondition 9, OutOfRange 11, Unauthenticated 16.
    const FINAL: [i32; 5] = [3, 7, 9, 11, 16];
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => !FINAL.contains(&(s.code() as i32)),
        _ => false,
    }
}

/// `e` with the causes under it (a TLS handshake's reason lies two levels down).
fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::TransportError(t) => {
            format!("transport error: {}", wire::error_chain(t))
        }
        etcd_client::Error::GRpcStatus(s) => {
            format!("grpc request error: {}", wire::error_chain(s))
        }
        _ => e.to_string(),
    }
}

/// Why a request to etcd did not go through.
#[derive(Debug)]
enum Failed {
    /// No answer within the time, or only transient errors (members down, no leader).
    Unreachable(String),
    /// A final answer: a permission, a login, a bad request. Trying again changes nothing.
    Refused(String),
}

/// Runs the request `f` makes on `rt`, again while it fails in a transient way (a member
/// down, a leader election), and waits for it at most `timeout` in all.
fn wait<T: Send + 'static, F>(
    rt: &tokio::runtime::Runtime,
    timeout: Duration,
    f: impl Fn() -> F + Send + 'static,
) -> Result<T, Failed>
where
    F: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = None;
        let r = loop {
            match tokio::time::timeout_at(deadline, f()).await {
                Ok(Ok(v)) => break Ok(v),
                Ok(Err(e)) if transient(&e) => {
                    last = Some(describe(&e));
                    tokio::time::sleep(RETRY_PAUSE).await;
                    if tokio::time::Instant::now() + RETRY_PAUSE >= deadline {
                        break Err(Failed::Unreachable(last.unwrap_or_default()));
                    }
                }
                Ok(Err(e)) => break Err(Failed::Refused(describe(&e))),
                Err(_) => {
                    break Err(Failed::Unreachable(match last {
                        Some(e) => format!("{e} (and no answer within {} s)", timeout.as_secs()),
                        None => format!("no answer within {} s", timeout.as_secs()),
                    }))
                }
            }
        };
        let _ = tx.send(r);
    });
    rx.recv_timeout(timeout + Duration::from_secs(1))
        .unwrap_or_else(|_| {
            Err(Failed::Unreachable(format!(
                "no answer within {} s",
                timeout.as_secs()
            )))
        })
}

/// The TLS and user options of `cfg` (files read now: an error names the file).
fn options(cfg: &EtcdConfig) -> anyhow::Result<ConnectOptions> {
    let read = |what: &str, p: &std::path::Path| {
        std::fs::read(p).with_context(|| format!("[coordinator] etcd {what} {}", p.display()))
    };
    let mut opts = ConnectOptions::new();
    if let Some(ca) = &cfg.ca {
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read("ca", ca)?));
        if let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) {
            tls = tls.identity(Identity::from_pem(read("cert", cert)?, read("key", key)?));
        }
        opts = opts.with_tls(tls);
    }
    if let (Some(user), Some(pw)) = (&cfg.user, &cfg.password_file) {
        let pw = String::from_utf8(read("password_file", pw)?).with_context(|| {
            format!(
                "[coordinator] etcd password_file {}: not UTF-8",
                pw.display()
            )
        })?;
        // etcd's tokens expire (`--auth-token-ttl`, 5 minutes by default): a request that
        // meets an expired one authenticates again and is tried once more.
        opts = opts
            .with_user(user.clone(), pw.trim_end_matches(['\n', '\r']))
            .with_auto_token_refresh(true);
    }
    Ok(opts)
}

/// The pause between two tries of a request that failed in a transient way.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

impl Etcd {
    /// Connects (lazily: the first request finds out whether etcd answers).
    /// `default_lease`: the main lease's TTL when `main_lease_secs` is not set.
    pub fn connect(cfg: &EtcdConfig, default_lease: u64) -> anyhow::Result<Arc<Etcd>> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-client")
            .enable_all()
            .build()
            .context("starting the etcd client's runtime")?;
        let timeout = Duration::from_secs(cfg.timeout_secs);
        let endpoints = cfg.endpoints.join(",");
        // One try may take part of the budget only, so that a request that met a dead
        // member (a connect that hangs) is tried again on another within `timeout_secs`.
        let opts = options(cfg)?
            .with_timeout(timeout / 2)
            .with_connect_timeout(timeout / 4);
        let eps = cfg.endpoints.clone();
        let client = wait(&rt, timeout, move || {
            Client::connect(eps.clone(), Some(opts.clone()))
        })
        .map_err(|e| match e {
            Failed::Refused(e) => anyhow::anyhow!("etcd ({endpoints}) refused this PBS: {e}"),
            Failed::Unreachable(e) => anyhow::anyhow!("etcd ({endpoints}): cannot connect: {e}"),
        })?;
        let ttl = cfg.main_lease_secs.unwrap_or(default_lease).max(1);
        Ok(Arc::new(Etcd {
            rt: Some(rt),
            client,
            prefix: cfg.prefix.clone(),
            timeout,
            lease_ttl: i64::try_from(ttl).unwrap_or(i64::MAX),
            endpoints,
        }))
    }

    fn rt(&self) -> Result<&tokio::runtime::Runtime, StoreError> {
        self.rt
            .as_ref()
            .ok_or_else(|| StoreError::Failed("the etcd client was shut down".into()))
    }

    /// One request (`f` makes it with a handle on the client), tried again while it fails
    /// in a transient way, at most `timeout_secs` in all. A write tried again after an
    /// answer was lost may have been applied the first time: its compare then fails, and
    /// `store::transact` finds its own state when it reads again.
    fn run<T: Send + 'static, F>(
        &self,
        what: &str,
        f: impl Fn(Client) -> F + Send + 'static,
    ) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let client = self.client.clone();
        wait(self.rt()?, self.timeout, move || f(client.clone())).map_err(|e| {
            let (how, e) = match e {
                Failed::Refused(e) => ("refused", e),
                Failed::Unreachable(e) => ("cannot be reached", e),
            };
            StoreError::Unavailable(format!(
                "the coordinator's etcd ({}) {how} ({what}): {e}; nothing decided",
                self.endpoints
            ))
        })
    }

    fn key(&self, kind: &str, group: &str) -> String {
        format!("{}/{kind}/{group}", self.prefix)
    }
}

/// Which lease this PBS holds the main's key under.
#[derive(Clone, Debug)]
struct Held {
    node: String,
    lease: i64,
}

/// One group's state in etcd.
pub struct EtcdStore {
    etcd: Arc<Etcd>,
    coord_key: String,
    grant_key: String,
    main_key: String,
    held: Arc<Mutex<Option<Held>>>,
    /// A renewal of the main's lease is under way (at most one at a time).
    renewing: Arc<AtomicBool>,
}

impl EtcdStore {
    /// `group`: a source name; `_` for a PBS without sources.
    pub fn new(etcd: Arc<Etcd>, group: Option<&str>) -> EtcdStore {
        let g = group.unwrap_or("_");
        EtcdStore {
            coord_key: etcd.key("coord", g),
            grant_key: etcd.key("grant", g),
            main_key: etcd.key("main", g),
            etcd,
            held: Arc::default(),
            renewing: Arc::default(),
        }
    }

    fn held(&self) -> Option<Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_held(held: &Mutex<Option<Held>>, h: Option<Held>) {
        *held.lock().unwrap_or_else(|p| p.into_inner()) = h;
    }
}

/// Renews lease `h` once; whether it is still alive.
async fn renew(client: &mut Client, lease: i64) -> Result<bool, etcd_client::Error> {
    let (mut keeper, mut stream) = client.lease_keep_alive(lease).await?;
    keeper.keep_alive().await?;
    Ok(stream.message().await?.is_some_and(|r| r.ttl() > 0))
}

impl Store for EtcdStore {
    fn shared(&self) -> bool {
        true
    }

    fn load(&self) -> Result<Versioned, StoreError> {
        let key = self.coord_key.clone();
        let resp = self.etcd.run("reading the state", move |mut c| {
            let key = key.clone();
            async move { c.get(key, None).await }
        })?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(Versioned::default());
        };
        let state: CoordState = serde_json::from_slice(kv.value()).map_err(|e| {
            StoreError::Failed(format!(
                "etcd key {} does not hold a coordinator state: {e}",
                self.coord_key
            ))
        })?;
        Ok(Versioned {
            state: Some(state),
            revision: kv.mod_revision(),
        })
    }

    fn write(
        &self,
        revision: i64,
        next: &CoordState,
        grant: Option<GrantNote<'_>>,
    ) -> Result<Written, StoreError> {
        let json =
            serde_json::to_vec_pretty(next).map_err(|e| StoreError::Failed(e.to_string()))?;
        let mut ops = vec![TxnOp::put(self.coord_key.clone(), json, None)];
        let mut lease = None;
        if let Some(g) = grant {
            let ttl = self.etcd.lease_ttl;
            let id = self
                .etcd
                .run("a lease for the main's key", move |mut c| async move {
                    c.lease_grant(ttl, None).await
                })?
                .id();
            lease = Some(id);
            let note = json!({ "node": g.node, "epoch": g.epoch, "at": wire::cli::now_rfc3339() });
            ops.push(TxnOp::put(self.grant_key.clone(), note.to_string(), None));
            ops.push(TxnOp::put(
                self.main_key.clone(),
                g.node,
                Some(PutOptions::new().with_lease(id)),
            ));
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(
                self.coord_key.clone(),
                CompareOp::Equal,
                revision,
            )])
            .and_then(ops);
        let resp = self.etcd.run("writing the state", move |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })?;
        if !resp.succeeded() {
            // Unused: revoked in the background (it would expire anyway).
            if let (Some(id), Ok(rt)) = (lease, self.etcd.rt()) {
                let mut c = self.etcd.client.clone();
                rt.spawn(async move { c.lease_revoke(id).await });
            }
            return Ok(Written::Moved);
        }
        if let (Some(g), Some(lease)) = (grant, lease) {
            Self::set_held(
                &self.held,
                Some(Held {
                    node: g.node.to_string(),
                    lease,
                }),
            );
        }
        let revision = resp.header().map_or(revision + 1, |h| h.revision());
        Ok(Written::Done { revision })
    }

    /// Renews this PBS's lease on the main's key, or puts the key back under a new lease
    /// when it expired (no PBS heard the main for a while), in the background.
    fn heard_main(&self, node: &str) {
        let Ok(rt) = self.etcd.rt() else {
            return;
        };
        if self.renewing.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut c = self.etcd.client.clone();
        let (held, renewing) = (self.held.clone(), self.renewing.clone());
        let mine = self.held().filter(|h| h.node == node);
        let (key, node, ttl, timeout) = (
            self.main_key.clone(),
            node.to_string(),
            self.etcd.lease_ttl,
            self.etcd.timeout,
        );
        rt.spawn(async move {
            let work = async {
                if let Some(h) = mine {
                    // Expired (TTL 0, or "lease not found"): put the key back below.
                    if renew(&mut c, h.lease).await.unwrap_or(false) {
                        return Ok(());
                    }
                    Self::set_held(&held, None);
                }
                let id = c.lease_grant(ttl, None).await?.id();
                let txn = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        key,
                        node.clone(),
                        Some(PutOptions::new().with_lease(id)),
                    )]);
                if c.txn(txn).await?.succeeded() {
                    tracing::info!(node = %node, "the main's key is held under this PBS's lease again");
                    Self::set_held(&held, Some(Held { node, lease: id }));
                } else {
                    // Another PBS holds it.
                    c.lease_revoke(id).await?;
                }
                Ok::<_, etcd_client::Error>(())
            };
            match tokio::time::timeout(timeout, work).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("renewing the main's lease in etcd: {e}"),
                Err(_) => tracing::warn!("renewing the main's lease in etcd: no answer"),
            }
            renewing.store(false, Ordering::SeqCst);
        });
    }

    fn status(&self) -> Option<Value> {
        let keys = [
            self.coord_key.clone(),
            self.grant_key.clone(),
            self.main_key.clone(),
        ];
        let read = self.etcd.run("reading the status", move |mut c| {
            let keys = keys.clone();
            async move {
                let mut out = Vec::new();
                for k in keys {
                    let kv = c.get(k, None).await?.kvs().first().cloned();
                    let ttl = match kv.as_ref().map(|kv| kv.lease()).filter(|l| *l != 0) {
                        Some(l) => Some(c.lease_time_to_live(l, None).await?.ttl()),
                        None => None,
                    };
                    out.push((kv, ttl));
                }
                Ok(out)
            }
        });
        let mut v = json!({ "endpoints": self.etcd.endpoints, "key": self.coord_key });
        let rows = match read {
            Ok(rows) => rows,
            Err(e) => {
                v["error"] = json!(e.to_string());
                return Some(v);
            }
        };
        if let Some((Some(kv), _)) = rows.first() {
            v["revision"] = json!(kv.mod_revision());
        }
        if let Some((Some(kv), _)) = rows.get(1) {
            let mut g: Value = serde_json::from_slice(kv.value()).unwrap_or(Value::Null);
            if g.is_object() {
                g["revision"] = json!(kv.mod_revision());
            }
            v["grant"] = g;
        }
        let held = self.held().map(|h| h.lease);
        v["main_lease"] = match rows.get(2) {
            Some((Some(kv), ttl)) if ttl.is_some_and(|t| t > 0) => json!({
                "state": "alive",
                "node": String::from_utf8_lossy(kv.value()),
                "ttl_secs": ttl,
                "held_here": held == Some(kv.lease()),
            }),
            _ => json!({ "state": "expired" }),
        };
        Some(v)
    }
}

#[cfg(test)]
#[path = "etcd_tests.rs"]
mod tests;
