//! Where a coordinator's state lives: the PBS-local file (the default) or etcd
//! ([`super::etcd`]), behind one small interface. Every transition goes through
//! [`transact`]: read the state with its revision, run the pure state machine on it, write
//! the new state only if the stored revision is still the one read (compare-and-swap), and
//! on a lost race read again and run the machine again, at most [`MAX_TRIES`] times.
//!
//! A file has one writer (this PBS, under the coordinator's mutex): its state is the one in
//! memory and a write never loses the race. A shared store (etcd) may be changed by another
//! PBS at any time, so every transition starts from a fresh (linearizable) read, never
//! from the copy in memory.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::machine::Step;
use super::refusal::{CoordError, Refusal};
use super::CoordState;
use crate::config::Config;

/// A state as stored, with the revision it was read at (0: no state stored yet).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Versioned {
    pub state: Option<CoordState>,
    pub revision: i64,
}

/// What a conditional write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// Written; the state's revision is now `revision`.
    Done { revision: i64 },
    /// The stored state is no longer at the revision read: nothing written.
    Moved,
}

/// A grant of MAIN that a write records besides the state (etcd: the grant key and the
/// main's key under a lease, in the same transaction).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantNote<'a> {
    pub node: &'a str,
    pub epoch: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or did not answer in time: nothing was decided.
    #[error("{0}")]
    Unavailable(String),
    /// The store answered with something unusable, or a local write failed.
    #[error("{0}")]
    Failed(String),
}

impl From<StoreError> for CoordError {
    fn from(e: StoreError) -> CoordError {
        match e {
            StoreError::Unavailable(m) => CoordError::Unavailable(m),
            StoreError::Failed(m) => CoordError::Save(m),
        }
    }
}

/// One group's stored state.
pub trait Store: Send + Sync {
    /// Whether others (another PBS) may change the stored state: then every transition
    /// reads it first.
    fn shared(&self) -> bool;
    /// Reads the state (linearizable for a shared store).
    fn load(&self) -> Result<Versioned, StoreError>;
    /// Writes `next` if the stored state is still at `revision`.
    fn write(
        &self,
        revision: i64,
        next: &CoordState,
        grant: Option<GrantNote<'_>>,
    ) -> Result<Written, StoreError>;
    /// The main `node` spoke (a hello answered MAIN, an accepted notification).
    fn heard_main(&self, _node: &str) {}
    /// What `pbs status` shows about the store beyond the state (etcd: revisions, lease).
    fn status(&self) -> Option<Value> {
        None
    }
}

/// How many times a transition is run against a store that keeps changing under it.
pub const MAX_TRIES: usize = 16;

/// Runs transition `f` through `store`: `cached` is the state this PBS last read or wrote
/// with its revision, kept up to date. A refusal changes nothing; a state `f` leaves
/// unchanged is not written.
pub fn transact<T>(
    store: &dyn Store,
    cached: &mut (CoordState, i64),
    f: impl Fn(&CoordState) -> Result<Step<T>, Refusal>,
) -> Result<Step<T>, CoordError> {
    // A write whose compare failed: it may have been applied by an earlier try whose
    // answer was lost (the store tried it again); then the state read next is its own.
    let mut unsure: Option<Step<T>> = None;
    for _ in 0..MAX_TRIES {
        if store.shared() {
            let v = store.load()?;
            *cached = (v.state.unwrap_or_default(), v.revision);
            if let Some(step) = unsure.take().filter(|s| s.state == cached.0) {
                return Ok(step);
            }
        }
        let (cur, revision) = (&cached.0, cached.1);
        let step = f(cur)?;
        if step.state == *cur {
            return Ok(step);
        }
        // A grant always names a new main (a node that is MAIN cannot be granted again);
        // an epoch raised to the archive's at start is no grant.
        let grant = (step.state.main != cur.main)
            .then_some(())
            .and(step.state.main.as_deref())
            .map(|node| GrantNote {
                node,
                epoch: step.state.epoch,
            });
        match store.write(revision, &step.state, grant)? {
            Written::Done { revision } => {
                *cached = (step.state.clone(), revision);
                return Ok(step);
            }
            Written::Moved => {
                tracing::info!("the coordinator's state changed under this PBS: reading it again");
                unsure = Some(step);
            }
        }
    }
    Err(CoordError::Unavailable(format!(
        "the coordinator's state kept changing under this PBS ({MAX_TRIES} tries): nothing done, try again"
    )))
}

/// The state file of one group in the state dir (the default store).
pub struct FileStore {
    pub path: PathBuf,
}

impl Store for FileStore {
    fn shared(&self) -> bool {
        false
    }

    fn load(&self) -> Result<Versioned, StoreError> {
        let state = wire::read_json(&self.path).map_err(|e| StoreError::Failed(e.to_string()))?;
        Ok(Versioned { state, revision: 0 })
    }

    fn write(
        &self,
        revision: i64,
        next: &CoordState,
        _: Option<GrantNote<'_>>,
    ) -> Result<Written, StoreError> {
        wire::write_json_atomic(&self.path, next).map_err(|e| StoreError::Failed(e.to_string()))?;
        Ok(Written::Done {
            revision: revision + 1,
        })
    }
}

/// The store of group `group` as configured: etcd when `[coordinator] etcd` is set (one
/// connection, `etcd`, shared by the groups), else its file in `state_dir`.
pub fn open(
    cfg: &Config,
    state_dir: &Path,
    group: Option<&str>,
    etcd: Option<&std::sync::Arc<super::etcd::Etcd>>,
) -> Box<dyn Store> {
    match etcd {
        Some(e) => Box::new(super::etcd::EtcdStore::new(e.clone(), group)),
        None => Box::new(FileStore {
            path: super::group_state_path(cfg, state_dir, group),
        }),
    }
}

/// One group as `pbs status` shows it: its source, its state (none before the first
/// start), and what the store adds (etcd).
#[derive(Clone, Debug, Default)]
pub struct GroupRead {
    pub source: Option<String>,
    pub state: Option<CoordState>,
    pub store: Option<Value>,
}

/// Every group's state, read from the configured store (`pbs status` without a server).
pub fn read_groups(cfg: &Config, state_dir: &Path) -> anyhow::Result<Vec<GroupRead>> {
    let etcd = cfg
        .coordinator
        .etcd
        .as_ref()
        .map(|e| super::etcd::Etcd::connect(e, cfg.failover.after_secs))
        .transpose()?;
    let mut names: Vec<Option<String>> = cfg.sources.iter().map(|s| Some(s.name.clone())).collect();
    if names.is_empty() {
        names.push(None);
    }
    names
        .into_iter()
        .map(|source| {
            let store = open(cfg, state_dir, source.as_deref(), etcd.as_ref());
            let state = store.load()?.state;
            Ok(GroupRead {
                source,
                state,
                store: store.status(),
            })
        })
        .collect()
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
