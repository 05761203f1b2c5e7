//! The coordinator: the PBS owns the epoch and every node's role.
//!
//! The rules are a state machine with no I/O ([`machine`]): a request and the current
//! state give a typed [`Refusal`] or the new state plus the [`Effect`]s to run. This file
//! keeps the state (loaded at start, saved before any answer that depends on it) and hands
//! the effects back to the caller (`crate::ha_api`, `crate::failover`), which runs them
//! (`crate::effects`) and maps refusals to HTTP only there.
//!
//! One coordinator per source's group (`App::coords`): the source's exporter and the
//! `[[importer]]`s whose `source` it is, with their own epoch and main. State
//! (`STATE_DIR/coordinator.json` for the first source, `coordinator-<source>.json` for the
//! others, written with `wire::write_json_atomic` before any answer that depends on it): the
//! epoch, the main node, and per node its role, status, last seen time and last generation;
//! or, with `[coordinator] etcd`, one etcd key per group holding the same JSON, changed by
//! compare-and-swap and shared by several PBS (see [`store`], [`etcd`]);
//! an importer with `disabled = true` is Disabled and never eligible for takeover.
//!
//! - hello: a node says who it is; the coordinator answers its role. A node claiming MAIN
//!   at an older epoch, or one marked Broken, gets BACKUP/Broken. With no main yet, the
//!   first source exporter to say hello is granted MAIN at the current epoch.
//! - takeover: serialized by the state mutex. Refused (409, with the reason) for a node
//!   that is not an eligible clone, when the epoch moved since the clone looked, or
//!   (unless forced) when another eligible clone holds a newer verified generation.
//!   Otherwise: epoch + 1, the old main Broken, the node MAIN/Leader, saved; then the old
//!   main is told `POST /rest/ha/status?change=BACKUP` (best effort, an effect).
//! - notify fencing: a notification from a Broken or rejoining node, from a node that is
//!   not the main, or at an epoch below the current one is refused with 409 (the node
//!   demotes).
//! - switchover (`crate::failover`): the same grant as a takeover, forced once the target
//!   verified the main's final generation, with the old main left BACKUP/Follower.
//! - rejoin: a node with an `[[importer]]` entry (not the main) becomes Rejoining — never
//!   MAIN, no notifications, not eligible — until it has verified the latest generation of
//!   its source (same sequence number), then Follower. Eligibility is "is a configured
//!   `[[importer]]`", so a former main's machine can come back as a clone under its name.
//! - spares and the takeover history: an `[[importer]]` with `spare = true` is Spare (no
//!   pushes, not eligible) until a takeover (not a switchover) activates it, in the same
//!   saved change as the grant: the first Spare in config order becomes a Follower (kept in
//!   `activated_spares`) and the caller pushes it the latest generation. With no spare left,
//!   `clone_needed` is recorded (the caller runs `[failover] on_clone_needed`, if set, and
//!   records its outcome). Every takeover is appended to `takeovers` (the last
//!   [`KEEP_TAKEOVERS`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use wire::ha::{
    CloneNeeded, Hello, NodeKind, NodeStatus, NodeView, PendingPromotion, TakeoverRecord,
    TakeoverRequest, Verdict,
};
use wire::PeerConfig;

use crate::config::Config;
use crate::daemon::ServerStatus;

pub mod etcd;
pub mod machine;
mod pending;
pub mod refusal;
pub mod store;

pub use machine::{Effect, Grant, GrantKind, Rules, Step};
pub use refusal::{CoordError, Refusal};
pub use store::Store;

/// One node as the coordinator keeps it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeState {
    pub kind: NodeKind,
    pub role: wire::ha::Role,
    pub status: NodeStatus,
    pub last_seen: Option<String>,
    pub last_generation: Option<String>,
}

/// `STATE_DIR/coordinator.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CoordState {
    pub epoch: u64,
    pub main: Option<String>,
    pub nodes: BTreeMap<String, NodeState>,
    /// The `spare` clones a takeover activated (Followers from then on).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub activated_spares: BTreeSet<String>,
    /// The last [`KEEP_TAKEOVERS`] takeovers, oldest first.
    #[serde(default)]
    pub takeovers: Vec<TakeoverRecord>,
    /// Set by a takeover that found no spare to activate; cleared when a spare is
    /// activated, a node finishes rejoining, or a new `[[importer]]` is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_needed: Option<CloneNeeded>,
    /// The last grant, until the new main confirms its promotion ([`pending`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_promotion: Option<PendingPromotion>,
}

/// How many takeovers `coordinator.json` keeps.
pub const KEEP_TAKEOVERS: usize = 20;

/// The state file of the first source's group (and of a PBS without sources).
pub fn state_path(state_dir: &Path) -> PathBuf {
    state_dir.join("coordinator.json")
}

/// The state file of `group` (a source name): `coordinator.json` for the first
/// `[[source]]`, `coordinator-<source>.json` for the others.
pub fn group_state_path(cfg: &Config, state_dir: &Path, group: Option<&str>) -> PathBuf {
    match group {
        Some(g) if cfg.sources.first().is_some_and(|s| s.name != g) => {
            state_dir.join(format!("coordinator-{g}.json"))
        }
        _ => state_path(state_dir),
    }
}

/// The coordinator of a running PBS: the state, saved, and the rules.
pub struct Coordinator {
    /// The source whose group this coordinates (`None`: a PBS without sources).
    pub group: Option<String>,
    /// Where the state lives: its file, or etcd ([`store`]).
    store: Box<dyn Store>,
    /// The state as this PBS last read or wrote it, with its store revision. With a shared
    /// store (etcd) every transition reads the state again first; this copy only answers
    /// what informs (pushes, the dashboard between reads).
    state: Mutex<(CoordState, i64)>,
    /// Exporter node name → how to reach it (the source's exporter peer).
    exporters: BTreeMap<String, PeerConfig>,
    /// Node name → the token peers allowed to speak for it.
    speakers: BTreeMap<String, Vec<String>>,
    rules: Rules,
}

impl Coordinator {
    /// Loads (or creates) the state, adds the configured nodes, applies `disabled`, and
    /// raises the epoch to `archive_epoch` (the highest epoch of the archive's
    /// generations) if it is lower. Saves before returning.
    #[cfg(test)]
    pub fn open(cfg: &Config, state_dir: &Path, archive_epoch: u64) -> Result<Coordinator> {
        let first = cfg.sources.first().map(|s| s.name.clone());
        let store = store::open(cfg, state_dir, first.as_deref(), None);
        Self::open_group(cfg, store, first.as_deref(), archive_epoch)
    }

    /// [`Coordinator::open`] for the group of source `group`: its exporter and the
    /// `[[importer]]`s whose `source` it is, with its own epoch and main, kept in `store`.
    pub fn open_group(
        cfg: &Config,
        store: Box<dyn Store>,
        group: Option<&str>,
        archive_epoch: u64,
    ) -> Result<Coordinator> {
        let mut exporters = BTreeMap::new();
        let mut speakers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        // An importer without `source` (only when the config was not loaded through
        // `config::load`, which sets it) is a clone of the first source.
        let first = cfg.sources.first().map(|s| s.name.as_str());
        let in_group = |source: Option<&str>| group.is_none() || source.or(first) == group;
        for s in cfg.sources.iter().filter(|s| in_group(Some(&s.name))) {
            let name = s.exporter.name.clone();
            exporters.insert(name.clone(), s.exporter.clone());
            let sp = speakers.entry(name.clone()).or_default();
            sp.push(name.clone());
            if let Some(p) = &s.notify_peer {
                sp.push(p.clone());
            }
        }
        let mut rules = Rules {
            clone_hook: cfg.failover.on_clone_needed.clone(),
            ..Default::default()
        };
        let importers: Vec<_> = cfg
            .importers
            .iter()
            .filter(|i| in_group(i.source.as_deref()))
            .collect();
        for i in &importers {
            rules.clones.insert(i.name.clone());
            if i.spare {
                rules.spares.push(i.name.clone());
            }
            if i.disabled {
                rules.disabled.insert(i.name.clone());
            }
            speakers
                .entry(i.name.clone())
                .or_default()
                .push(i.name.clone());
            if let Some(e) = &i.exporter {
                exporters.insert(
                    i.name.clone(),
                    PeerConfig {
                        name: i.name.clone(),
                        url: e.url.clone(),
                        token: e.token.clone(),
                        ca: e.ca.clone(),
                    },
                );
            }
        }
        let exporter_names: Vec<&str> = cfg
            .sources
            .iter()
            .filter(|s| in_group(Some(&s.name)))
            .map(|s| s.exporter.name.as_str())
            .collect();
        let loaded = store.load().map_err(anyhow::Error::msg)?;
        let read_at = loaded.revision;
        let mut cached = (loaded.state.unwrap_or_default(), read_at);
        // The configured nodes, through the store like any change (another PBS sharing it
        // may be doing the same).
        let step = store::transact(&*store, &mut cached, |st| {
            Ok(Step {
                state: configured(st, &exporter_names, &importers, archive_epoch),
                answer: (),
                effects: Vec::new(),
            })
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        if !store.shared() && cached.1 == read_at {
            // The file is there from the first start on, changed or not.
            store
                .write(cached.1, &step.state, None)
                .map_err(anyhow::Error::msg)?;
        }
        Ok(Coordinator {
            group: group.map(str::to_string),
            store,
            state: Mutex::new(cached),
            exporters,
            speakers,
            rules,
        })
    }

    pub fn snapshot(&self) -> CoordState {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// The state as stored now (read again from a shared store; the copy in memory is kept
    /// up to date).
    pub fn fresh(&self) -> Result<CoordState, CoordError> {
        if !self.store.shared() {
            return Ok(self.snapshot());
        }
        let v = self.store.load()?;
        let st = v.state.unwrap_or_default();
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if v.revision >= guard.1 {
            *guard = (st.clone(), v.revision);
        }
        Ok(st)
    }

    /// The group as `pbs status` shows it, read from the store now.
    pub fn read_for_status(&self) -> Result<store::GroupRead, CoordError> {
        Ok(store::GroupRead {
            source: self.group.clone(),
            state: Some(self.fresh()?),
            store: self.store.status(),
        })
    }

    /// Runs transition `f` through the store ([`store::transact`]: on the state as stored
    /// now, written only if nobody changed it meanwhile). Returns the answer and the
    /// effects to run.
    fn apply<T>(
        &self,
        f: impl Fn(&Rules, &CoordState) -> Result<Step<T>, Refusal>,
    ) -> Result<(T, Vec<Effect>), CoordError> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let step = store::transact(&*self.store, &mut guard, |st| f(&self.rules, st))?;
        Ok((step.answer, step.effects))
    }

    /// A record that cannot be refused (a generation, a hook's outcome, a retry).
    fn record(&self, f: impl Fn(&mut CoordState)) {
        let r = self.apply(|_, st| {
            let mut next = st.clone();
            f(&mut next);
            Ok(Step {
                state: next,
                answer: (),
                effects: Vec::new(),
            })
        });
        if let Err(e) = r {
            tracing::error!("{e}");
        }
    }

    /// May token peer `peer` speak for `node`? (`admin` may speak for any.)
    pub fn check_peer(&self, peer: &str, node: &str) -> Result<(), Refusal> {
        let known = self
            .speakers
            .get(node)
            .ok_or_else(|| Refusal::UnknownNode(node.to_string()))?;
        if peer == "admin" || known.iter().any(|p| p == peer) {
            Ok(())
        } else {
            Err(Refusal::MayNotSpeakFor {
                peer: peer.to_string(),
                node: node.to_string(),
            })
        }
    }

    pub fn hello(&self, h: &Hello) -> Result<(Verdict, Vec<Effect>), CoordError> {
        let now = wire::cli::now_rfc3339();
        let (v, effects) = self.apply(|r, st| r.hello(st, h, &now))?;
        if v.role == wire::ha::Role::Main {
            self.store.heard_main(&h.node);
        }
        Ok((v, effects))
    }

    /// The gates of a takeover without changing anything (a switchover checks its target
    /// before it stops the main).
    pub fn check_eligible(&self, node: &str) -> Result<(), CoordError> {
        Ok(self.rules.eligible(&self.fresh()?, node)?)
    }

    /// Grants MAIN to `req.node` if the gates allow it (see [`Rules::grant`]).
    pub fn grant(
        &self,
        req: &TakeoverRequest,
        server: &ServerStatus,
        kind: GrantKind,
    ) -> Result<(Grant, Vec<Effect>), CoordError> {
        let verified = |name: &str| verified_generation(server, name);
        let now = wire::cli::now_rfc3339();
        self.apply(|r, st| r.grant(st, req, kind, &verified, &now))
    }

    /// Records how the `on_clone_needed` hook of the takeover at `epoch` ended.
    pub fn set_clone_outcome(&self, epoch: u64, outcome: String, ok: bool) {
        self.record(|st| {
            if let Some(c) = st.clone_needed.as_mut().filter(|c| c.epoch == epoch) {
                c.outcome = Some(outcome.clone());
                c.ok = Some(ok);
            }
        })
    }

    /// `pbs rejoin NODE` (see [`Rules::rejoin`]).
    pub fn rejoin(&self, node: &str) -> Result<Vec<Effect>, CoordError> {
        self.apply(|r, st| r.rejoin(st, node)).map(|(_, e)| e)
    }

    /// A rejoining node verified `gen` (see [`Rules::finish_rejoin`]); whether it became a
    /// Follower.
    pub fn finish_rejoin(&self, node: &str, gen: &str, latest: &str) -> bool {
        self.apply(|r, st| Ok(r.finish_rejoin(st, node, gen, latest)))
            .map(|(b, _)| b)
            .unwrap_or_else(|e| {
                tracing::error!("{e}");
                false
            })
    }

    /// Fencing of `/v1/notify` (see [`Rules::check_notify`]).
    pub fn check_notify(&self, node: &str, epoch: u64) -> Result<(), CoordError> {
        let now = wire::cli::now_rfc3339();
        self.apply(|r, st| r.check_notify(st, node, epoch, &now))?;
        self.store.heard_main(node);
        Ok(())
    }

    /// Whether `node` is rejoining.
    pub fn is_rejoining(&self, node: &str) -> bool {
        self.snapshot()
            .nodes
            .get(node)
            .is_some_and(|n| n.status == NodeStatus::Rejoining)
    }

    /// Whether the PBS pushes to clone `node`: not while it is the main, Broken or Spare.
    pub fn receives_pushes(&self, node: &str) -> bool {
        let st = self.snapshot();
        st.main.as_deref() != Some(node)
            && st
                .nodes
                .get(node)
                .is_none_or(|n| !matches!(n.status, NodeStatus::Broken | NodeStatus::Spare))
    }

    /// The exporter of node `node` (to pull from the main, to ask it to step down): a
    /// `[[source]]` exporter, or an `[[importer]]` with an `exporter`.
    pub fn exporter_peer(&self, node: &str) -> Option<PeerConfig> {
        self.exporters.get(node).cloned()
    }

    /// Whether `node` is one of this group's nodes.
    pub fn has_node(&self, node: &str) -> bool {
        self.speakers.contains_key(node)
    }

    /// The node token peer `peer` speaks for: its own name, or the node whose source names
    /// it `notify_peer`.
    pub fn node_of(&self, peer: &str) -> Option<String> {
        if self.speakers.contains_key(peer) {
            return Some(peer.to_string());
        }
        self.speakers
            .iter()
            .find(|(_, sp)| sp.iter().any(|p| p == peer))
            .map(|(n, _)| n.clone())
    }

    /// Automatic failover: the eligible clone with the newest verified generation whose
    /// last push did not fail since (the verified-restore gate), if any.
    pub fn best_clone(&self, server: &ServerStatus) -> Option<String> {
        let st = self.snapshot();
        st.nodes
            .iter()
            .filter(|(n, x)| {
                self.rules.eligible(&st, n).is_ok() && x.status == NodeStatus::Follower
            })
            .filter_map(|(n, _)| {
                let s = server.importers.get(n)?;
                let good = s.last_good.as_ref()?;
                let failed_since = s.last_failure.as_ref().is_some_and(|f| f.at > good.at);
                let seq = good
                    .generation
                    .as_deref()?
                    .parse::<archive::GenId>()
                    .ok()?
                    .seq;
                (!failed_since).then(|| (seq, n.clone()))
            })
            .max()
            .map(|(_, n)| n)
    }

    /// Records `gen` as the last generation `node` published.
    pub fn set_generation(&self, node: &str, gen: &str) {
        self.record(|st| {
            if let Some(n) = st.nodes.get_mut(node) {
                n.last_generation = Some(gen.to_string());
            }
        })
    }
}

/// `st` with the configured nodes: the group's exporters and importers added, each
/// importer's status from its `spare` and `disabled` (not the main's, nor a Broken or
/// rejoining node's), and the epoch at least `archive_epoch`.
fn configured(
    st: &CoordState,
    exporters: &[&str],
    importers: &[&crate::config::ImporterConfig],
    archive_epoch: u64,
) -> CoordState {
    let mut st = st.clone();
    st.epoch = st.epoch.max(archive_epoch);
    for name in exporters {
        st.nodes
            .entry(name.to_string())
            .or_insert_with(|| NodeState {
                kind: NodeKind::Exporter,
                ..Default::default()
            });
    }
    for i in importers {
        if !st.nodes.contains_key(&i.name) && st.clone_needed.take().is_some() {
            tracing::info!(node = %i.name, "a new clone is configured: no clone needed any more");
        }
        let n = st.nodes.entry(i.name.clone()).or_insert_with(|| NodeState {
            kind: NodeKind::Importer,
            ..Default::default()
        });
        if st.main.as_deref() == Some(i.name.as_str())
            || matches!(n.status, NodeStatus::Broken | NodeStatus::Rejoining)
        {
            continue;
        }
        n.status = if i.spare && !st.activated_spares.contains(&i.name) {
            NodeStatus::Spare
        } else if i.disabled {
            NodeStatus::Disabled
        } else {
            NodeStatus::Follower
        };
    }
    st
}

/// The generation the PBS last pushed to clone `name` and saw verified.
fn verified_generation(server: &ServerStatus, name: &str) -> Option<String> {
    server
        .importers
        .get(name)
        .and_then(|s| s.last_good.as_ref())
        .and_then(|e| e.generation.clone())
}

/// The nodes as people see them (also used by `pbs status` from the files).
pub fn views(st: &CoordState, server: &ServerStatus) -> Vec<NodeView> {
    st.nodes
        .iter()
        .map(|(name, n)| {
            // A clone's: the last generation it verified (also for a former main that
            // rejoined as a clone, once it has one); a main's: the last it published.
            let verified = verified_generation(server, name);
            let is_main = st.main.as_deref() == Some(name.as_str());
            let generation = if is_main {
                n.last_generation.clone().or(verified)
            } else if n.kind == NodeKind::Importer || verified.is_some() {
                verified
            } else {
                n.last_generation.clone()
            };
            NodeView {
                name: name.clone(),
                kind: n.kind,
                role: n.role,
                status: n.status,
                epoch: st.epoch,
                generation,
                last_seen: n.last_seen.clone(),
            }
        })
        .collect()
}

/// How many takeovers `pbs status` and the dashboard show (newest first).
pub const SHOW_TAKEOVERS: usize = 5;

/// One line about a needed clone (the hook's state, or what to do).
pub fn clone_needed_text(c: &CloneNeeded) -> String {
    match (&c.hook, &c.outcome) {
        (None, _) => {
            "no spare clone and no [failover] on_clone_needed hook: set up a clone".to_string()
        }
        (Some(h), None) => format!("on_clone_needed hook {h} is running (or was cut short)"),
        (Some(h), Some(o)) => format!(
            "on_clone_needed hook {h} {}: {o}",
            if c.ok == Some(true) {
                "succeeded"
            } else {
                "FAILED"
            }
        ),
    }
}

#[cfg(test)]
mod tests;
