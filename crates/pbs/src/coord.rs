//! The coordinator: the PBS owns the epoch and every node's role.
//!
//! State (`STATE_DIR/coordinator.json`, written with `wire::write_json_atomic` before any
//! answer that depends on it): the epoch, the main node, and per node its role, status,
//! last seen time and last generation. Nodes are the configured sources' exporters and the
//! configured importers (clones); an importer with `disabled = true` is Disabled and never
//! eligible for takeover.
//!
//! - hello: a node says who it is; the coordinator answers its role. A node claiming MAIN
//!   at an older epoch, or one marked Broken, gets BACKUP/Broken. With no main yet, the
//!   first source exporter to say hello is granted MAIN at the current epoch.
//! - takeover: serialized by the state mutex. Refused (409, with the reason) for a node
//!   that is not an eligible clone, when the epoch moved since the clone looked, or
//!   (unless forced) when another eligible clone holds a newer verified generation.
//!   Otherwise: epoch + 1, the old main Broken, the node MAIN/Leader, saved; then the old
//!   main is told `POST /rest/ha/status?change=BACKUP` (best effort).
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
use std::time::Duration;

use anyhow::Result;
use archive::{Epoch, EpochError};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use wire::ha::{
    CloneNeeded, Hello, NodeKind, NodeStatus, NodeView, PendingPromotion, Role, TakeoverBy,
    TakeoverRecord, TakeoverRequest, Verdict,
};
use wire::server::ApiError;
use wire::PeerConfig;

use crate::config::Config;
use crate::daemon::ServerStatus;

mod fencing;
mod pending;

/// One node as the coordinator keeps it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeState {
    pub kind: NodeKind,
    pub role: Role,
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

/// What a grant did about the clone the new main no longer is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NewClone {
    /// A planned switchover: the old main is the new clone.
    Nothing,
    /// This spare was activated: push it the latest generation.
    Spare(String),
    /// No spare: run the `on_clone_needed` hook, if any.
    Needed(CloneNeeded),
}

/// A granted MAIN.
#[derive(Clone, Debug)]
pub struct Grant {
    pub verdict: Verdict,
    /// The old main (to be told to step down).
    pub old: Option<String>,
    pub new_clone: NewClone,
}

pub fn state_path(state_dir: &Path) -> PathBuf {
    state_dir.join("coordinator.json")
}

/// The coordinator of a running PBS.
pub struct Coordinator {
    path: PathBuf,
    state: Mutex<CoordState>,
    /// Exporter node name → how to reach it (the source's exporter peer).
    exporters: BTreeMap<String, PeerConfig>,
    /// Node name → the token peers allowed to speak for it.
    speakers: BTreeMap<String, Vec<String>>,
    /// The configured `[[importer]]` names: the nodes that can be clones (a node may be both
    /// a source's exporter and a clone: the machine of a former main, rejoined).
    clones: BTreeSet<String>,
    /// The `spare = true` importers, in config order.
    spares: Vec<String>,
    /// The `disabled = true` importers (an activated disabled spare is Disabled).
    disabled: BTreeSet<String>,
    /// `[failover] on_clone_needed`.
    clone_hook: Option<PathBuf>,
}

fn conflict(msg: impl Into<String>) -> ApiError {
    ApiError::conflict(msg)
}

/// The sequence number of `SOURCE/SEQ`.
fn seq_of(gen: &str) -> Option<u64> {
    gen.parse::<archive::GenId>().ok().map(|g| g.seq.0)
}

impl Coordinator {
    /// Loads (or creates) the state, adds the configured nodes, applies `disabled`, and
    /// raises the epoch to `archive_epoch` (the highest epoch of the archive's
    /// generations) if it is lower. Saves before returning.
    pub fn open(cfg: &Config, state_dir: &Path, archive_epoch: u64) -> Result<Coordinator> {
        let path = state_path(state_dir);
        let mut st: CoordState = wire::read_json(&path)?.unwrap_or_default();
        st.epoch = st.epoch.max(archive_epoch);
        let mut exporters = BTreeMap::new();
        let mut speakers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for s in &cfg.sources {
            let name = s.exporter.name.clone();
            exporters.insert(name.clone(), s.exporter.clone());
            let sp = speakers.entry(name.clone()).or_default();
            sp.push(name.clone());
            if let Some(p) = &s.notify_peer {
                sp.push(p.clone());
            }
            st.nodes.entry(name).or_insert_with(|| NodeState {
                kind: NodeKind::Exporter,
                ..Default::default()
            });
        }
        let mut clones = BTreeSet::new();
        let mut spares = Vec::new();
        let mut disabled = BTreeSet::new();
        for i in &cfg.importers {
            clones.insert(i.name.clone());
            if i.spare {
                spares.push(i.name.clone());
            }
            if i.disabled {
                disabled.insert(i.name.clone());
            }
            speakers
                .entry(i.name.clone())
                .or_default()
                .push(i.name.clone());
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
        wire::write_json_atomic(&path, &st)?;
        Ok(Coordinator {
            path,
            state: Mutex::new(st),
            exporters,
            speakers,
            clones,
            spares,
            disabled,
            clone_hook: cfg.failover.on_clone_needed.clone(),
        })
    }

    pub fn snapshot(&self) -> CoordState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs `f` on a copy of the state under the lock; saves and keeps the copy only if
    /// `f` succeeds and changed something.
    fn change<T>(
        &self,
        f: impl FnOnce(&mut CoordState) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = guard.clone();
        let out = f(&mut next)?;
        if next != *guard {
            wire::write_json_atomic(&self.path, &next)
                .map_err(|e| ApiError::internal(format!("cannot save the coordinator: {e}")))?;
            *guard = next;
        }
        Ok(out)
    }

    /// May token peer `peer` speak for `node`? (`admin` may speak for any.)
    pub fn check_peer(&self, peer: &str, node: &str) -> Result<(), ApiError> {
        let known = self
            .speakers
            .get(node)
            .ok_or_else(|| ApiError::not_found(format!("unknown node {node:?}")))?;
        if peer == "admin" || known.iter().any(|p| p == peer) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("peer {peer} may not speak for node {node}"),
            ))
        }
    }

    pub fn hello(&self, h: &Hello) -> Result<Verdict, ApiError> {
        self.change(|st| {
            let epoch = st.epoch;
            let is_main = st.main.as_deref() == Some(h.node.as_str());
            let main_free = st.main.is_none();
            let n = st
                .nodes
                .get_mut(&h.node)
                .ok_or_else(|| ApiError::not_found(format!("unknown node {:?}", h.node)))?;
            n.last_seen = Some(wire::cli::now_rfc3339());
            let stale_main = h.role == Role::Main && h.epoch < epoch && !is_main;
            if n.status == NodeStatus::Broken || stale_main {
                n.role = Role::Backup;
                n.status = NodeStatus::Broken;
            } else if n.status == NodeStatus::Rejoining {
                n.role = Role::Backup;
            } else if is_main || (main_free && n.kind == NodeKind::Exporter) {
                pending::confirm(&mut st.pending_promotion, h);
                n.role = Role::Main;
                n.status = NodeStatus::Leader;
                if main_free {
                    tracing::info!(node = %h.node, epoch, "granted MAIN (no main yet)");
                    st.main = Some(h.node.clone());
                }
            } else {
                n.role = Role::Backup;
            }
            let n = &st.nodes[&h.node];
            Ok(Verdict {
                role: n.role,
                epoch,
                status: n.status,
            })
        })
    }

    /// Grants MAIN to `req.node` if the gates allow it. Returns the verdict and the old
    /// main (to be told to step down).
    pub fn takeover(
        &self,
        req: &TakeoverRequest,
        server: &ServerStatus,
    ) -> Result<Grant, ApiError> {
        self.grant(req, server, NodeStatus::Broken)
    }

    /// The gates of a takeover without changing anything (a switchover checks its target
    /// before it stops the main).
    pub fn check_eligible(&self, node: &str) -> Result<(), ApiError> {
        let st = self.snapshot();
        Self::eligible(&self.clones, &st, node)
    }

    fn eligible(clones: &BTreeSet<String>, st: &CoordState, node: &str) -> Result<(), ApiError> {
        let n = st
            .nodes
            .get(node)
            .ok_or_else(|| conflict(format!("unknown node {node:?}: not a clone")))?;
        if st.main.as_deref() == Some(node) {
            return Err(conflict(format!(
                "{node} is already MAIN at epoch {}",
                st.epoch
            )));
        }
        if !clones.contains(node) {
            return Err(conflict(format!("{node} is not a clone")));
        }
        match n.status {
            NodeStatus::Disabled => Err(conflict(format!(
                "{node} is Disabled: excluded from takeover"
            ))),
            NodeStatus::Broken => Err(conflict(format!("{node} is Broken: rejoin it first"))),
            NodeStatus::Rejoining => Err(conflict(format!(
                "{node} is rejoining: not eligible until it has restored and verified the latest generation"
            ))),
            NodeStatus::Spare => Err(conflict(format!(
                "{node} is a Spare: not eligible until a takeover activates it"
            ))),
            _ => Ok(()),
        }
    }

    /// Grants MAIN to `req.node` through the takeover gates; the old main gets
    /// `old_status` (Broken after a takeover, Follower after a planned switchover).
    /// A takeover (old main Broken) is recorded in the history and activates the first
    /// spare, or records that a clone is needed.
    pub fn grant(
        &self,
        req: &TakeoverRequest,
        server: &ServerStatus,
        old_status: NodeStatus,
    ) -> Result<Grant, ApiError> {
        let verified = |name: &str| verified_generation(server, name);
        self.change(|st| {
            Self::eligible(&self.clones, st, &req.node)?;
            if let Some(Err(e)) = req.epoch.map(|e| Epoch::check(e, st.epoch)) {
                return Err(conflict(match e {
                    EpochError::Stale { got, .. } => format!(
                        "the epoch moved from {got} to {} since {} looked: another takeover happened",
                        st.epoch, req.node
                    ),
                    e => format!("{} asked at an epoch it was never granted: {e}", req.node),
                }));
            }
            if !req.force {
                let mine = verified(&req.node);
                let mine_seq = mine.as_deref().and_then(seq_of);
                for (other, o) in &st.nodes {
                    if other == &req.node
                        || !self.clones.contains(other)
                        || o.status != NodeStatus::Follower
                        || st.main.as_deref() == Some(other.as_str())
                    {
                        continue;
                    }
                    let theirs = verified(other);
                    if theirs.as_deref().and_then(seq_of) > mine_seq {
                        return Err(conflict(format!(
                            "clone {other} holds a newer verified generation ({}) than {} ({}): take over there, or force",
                            theirs.unwrap_or_default(),
                            req.node,
                            mine.as_deref().unwrap_or("none")
                        )));
                    }
                }
            }
            st.epoch = Epoch(st.epoch).next().map_err(|e| conflict(e.to_string()))?.0;
            let old = st.main.take();
            if let Some(o) = old.as_ref().and_then(|o| st.nodes.get_mut(o)) {
                o.role = Role::Backup;
                o.status = old_status;
            }
            let now = wire::cli::now_rfc3339();
            let n = st
                .nodes
                .get_mut(&req.node)
                .ok_or_else(|| ApiError::internal("node vanished"))?;
            n.role = Role::Main;
            n.status = NodeStatus::Leader;
            n.last_seen = Some(now.clone());
            st.main = Some(req.node.clone());
            st.pending_promotion = Some(pending::granted(&req.node, st.epoch, &now));
            tracing::warn!(node = %req.node, epoch = st.epoch, old_main = ?old, force = req.force, old_status = %old_status, "MAIN granted");
            let new_clone = if old_status == NodeStatus::Broken {
                self.after_takeover(st, req, old.clone(), now)
            } else {
                NewClone::Nothing
            };
            Ok(Grant {
                verdict: Verdict {
                    role: Role::Main,
                    epoch: st.epoch,
                    status: NodeStatus::Leader,
                },
                old,
                new_clone,
            })
        })
    }

    /// Part of a takeover's saved change: the history, then the first Spare activated or
    /// a clone recorded as needed.
    fn after_takeover(
        &self,
        st: &mut CoordState,
        req: &TakeoverRequest,
        old: Option<String>,
        at: String,
    ) -> NewClone {
        let spare = self.spares.iter().find(|s| {
            st.main.as_deref() != Some(s.as_str())
                && st
                    .nodes
                    .get(*s)
                    .is_some_and(|n| n.status == NodeStatus::Spare)
        });
        let (new_clone, what) = match spare.cloned() {
            Some(s) => {
                if let Some(n) = st.nodes.get_mut(&s) {
                    n.status = if self.disabled.contains(&s) {
                        NodeStatus::Disabled
                    } else {
                        NodeStatus::Follower
                    };
                    n.role = Role::Backup;
                }
                st.activated_spares.insert(s.clone());
                st.clone_needed = None;
                tracing::warn!(node = %s, epoch = st.epoch, "spare activated: a clone now");
                let what = format!("spare {s} activated");
                (NewClone::Spare(s), what)
            }
            None => {
                let needed = CloneNeeded {
                    at: at.clone(),
                    epoch: st.epoch,
                    new_main: req.node.clone(),
                    old_main: old.clone(),
                    hook: self.clone_hook.as_ref().map(|h| h.display().to_string()),
                    outcome: None,
                    ok: None,
                };
                st.clone_needed = Some(needed.clone());
                let what = if self.clone_hook.is_some() {
                    "on_clone_needed hook".to_string()
                } else {
                    tracing::warn!(epoch = st.epoch, "no spare clone: a new clone is needed");
                    "clone needed".to_string()
                };
                (NewClone::Needed(needed), what)
            }
        };
        let by = TakeoverBy::of_request(req.by.as_deref());
        st.takeovers.push(TakeoverRecord {
            at,
            node: req.node.clone(),
            old_main: old,
            epoch: st.epoch,
            forced: req.force,
            by,
            new_clone: what,
        });
        let extra = st.takeovers.len().saturating_sub(KEEP_TAKEOVERS);
        st.takeovers.drain(..extra);
        new_clone
    }

    /// Records how the `on_clone_needed` hook of the takeover at `epoch` ended.
    pub fn set_clone_outcome(&self, epoch: u64, outcome: String, ok: bool) {
        let r = self.change(|st| {
            if let Some(c) = st.clone_needed.as_mut().filter(|c| c.epoch == epoch) {
                c.outcome = Some(outcome);
                c.ok = Some(ok);
            }
            Ok(())
        });
        if let Err(e) = r {
            tracing::error!("{}", e.message);
        }
    }

    /// `pbs rejoin NODE`: the node comes back as a clone. Refused for the main and for a
    /// node with no `[[importer]]` entry (the PBS could not push to it). It is Rejoining
    /// (never MAIN, never notifies, not eligible) until [`Coordinator::finish_rejoin`].
    pub fn rejoin(&self, node: &str) -> Result<(), ApiError> {
        self.change(|st| {
            if st.main.as_deref() == Some(node) {
                return Err(conflict(format!(
                    "{node} is the main at epoch {}: switch over to a clone first",
                    st.epoch
                )));
            }
            if !self.clones.contains(node) {
                return Err(conflict(format!(
                    "{node} has no [[importer]] entry in the PBS config: add one so the PBS can restore it"
                )));
            }
            let n = st
                .nodes
                .get_mut(node)
                .ok_or_else(|| conflict(format!("unknown node {node:?}")))?;
            n.role = Role::Backup;
            n.status = NodeStatus::Rejoining;
            tracing::warn!(node, epoch = st.epoch, "rejoining as a clone");
            Ok(())
        })
    }

    /// A rejoining node verified `gen`: it is a Follower again when `gen` is the latest
    /// generation `latest` of its source (same sequence number: never behind, never ahead).
    /// Returns whether it became a Follower.
    pub fn finish_rejoin(&self, node: &str, gen: &str, latest: &str) -> bool {
        let r = self.change(|st| {
            let Some(n) = st.nodes.get_mut(node) else {
                return Ok(false);
            };
            if n.status != NodeStatus::Rejoining {
                return Ok(false);
            }
            let have = gen.parse::<archive::GenId>().ok();
            if have.is_none() || have != latest.parse().ok() {
                tracing::info!(
                    node,
                    gen,
                    latest,
                    "rejoining: not the latest generation yet"
                );
                return Ok(false);
            }
            n.status = NodeStatus::Follower;
            n.role = Role::Backup;
            st.clone_needed = None;
            if self.spares.iter().any(|s| s == node) {
                // A rejoined spare is a clone now, also after a restart.
                st.activated_spares.insert(node.to_string());
            }
            tracing::warn!(node, gen, "rejoined: Follower");
            Ok(true)
        });
        r.unwrap_or(false)
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

    /// The exporter peer of source node `node` (to reach the main), if it is one.
    pub fn exporter_peer(&self, node: &str) -> Option<PeerConfig> {
        self.exporters.get(node).cloned()
    }

    /// Automatic failover: the eligible clone with the newest verified generation whose
    /// last push did not fail since (the verified-restore gate), if any.
    pub fn best_clone(&self, server: &ServerStatus) -> Option<String> {
        let st = self.snapshot();
        st.nodes
            .keys()
            .filter(|n| Self::eligible(&self.clones, &st, n).is_ok())
            .filter(|n| {
                st.nodes
                    .get(*n)
                    .is_some_and(|x| x.status == NodeStatus::Follower)
            })
            .filter_map(|n| {
                let s = server.importers.get(n)?;
                let good = s.last_good.as_ref()?;
                let failed_since = s.last_failure.as_ref().is_some_and(|f| f.at > good.at);
                let seq = seq_of(good.generation.as_deref()?)?;
                (!failed_since).then(|| (seq, n.clone()))
            })
            .max()
            .map(|(_, n)| n)
    }

    /// Records `gen` as the last generation `node` published.
    pub fn set_generation(&self, node: &str, gen: &str) {
        let r = self.change(|st| {
            if let Some(n) = st.nodes.get_mut(node) {
                n.last_generation = Some(gen.to_string());
            }
            Ok(())
        });
        if let Err(e) = r {
            tracing::error!("{}", e.message);
        }
    }

    /// Tells the old main to step down (best effort, in the background).
    pub fn tell_to_step_down(&self, old: &str) {
        let Some(peer) = self.exporters.get(old).cloned() else {
            return;
        };
        tokio::spawn(async move {
            let r = async {
                let c = peer
                    .client(Duration::from_secs(10))
                    .map_err(|e| e.to_string())?;
                c.send(c.request(reqwest_post(), "/rest/ha/status?change=BACKUP"))
                    .await
                    .map_err(|e| e.to_string())
            }
            .await;
            match r {
                Ok(_) => tracing::info!(node = %peer.name, "old main told to step down"),
                Err(e) => {
                    tracing::warn!(node = %peer.name, "could not tell the old main to step down: {e}")
                }
            }
        });
    }
}

/// The generation the PBS last pushed to clone `name` and saw verified.
fn verified_generation(server: &ServerStatus, name: &str) -> Option<String> {
    server
        .importers
        .get(name)
        .and_then(|s| s.last_good.as_ref())
        .and_then(|e| e.generation.clone())
}

fn reqwest_post() -> axum::http::Method {
    axum::http::Method::POST
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
            let generation = if n.kind == NodeKind::Importer || (!is_main && verified.is_some()) {
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
mod tests {
    use super::*;
    use crate::daemon::{Event, ImporterStatus};

    fn cfg() -> Config {
        toml::from_str(
            r#"
[[source]]
name = "db"
exporter = { name = "main1", url = "http://127.0.0.1:1", token = "0123456789abcdef" }
[[importer]]
name = "c1"
url = "http://127.0.0.1:2"
token = "0123456789abcdeg"
[[importer]]
name = "c2"
url = "http://127.0.0.1:3"
token = "0123456789abcdeh"
[[importer]]
name = "off"
url = "http://127.0.0.1:4"
token = "0123456789abcdei"
disabled = true
"#,
        )
        .expect("config")
    }

    fn good(gens: &[(&str, &str)]) -> ServerStatus {
        let mut s = ServerStatus::default();
        for (n, g) in gens {
            s.importers.insert(
                n.to_string(),
                ImporterStatus {
                    last_good: Some(Event {
                        at: String::new(),
                        generation: Some(g.to_string()),
                        detail: String::new(),
                    }),
                    last_failure: None,
                },
            );
        }
        s
    }

    fn req(node: &str, force: bool, epoch: Option<u64>) -> TakeoverRequest {
        TakeoverRequest {
            node: node.into(),
            force,
            epoch,
            by: None,
            password: None,
        }
    }

    #[test]
    fn hello_grants_then_takeover_fences() {
        let dir = std::env::temp_dir().join(format!(
            "pullback-coord-test-{}-{}",
            std::process::id(),
            archive::ingest::now_ns()
        ));
        std::fs::create_dir_all(&dir).expect("tmp");
        let c = Coordinator::open(&cfg(), &dir, 4).expect("open");
        let hello = |node: &str, role: Role, epoch: u64| {
            c.hello(&Hello {
                node: node.into(),
                epoch,
                role,
            })
        };
        // A clone's hello before any main: BACKUP; the exporter's: MAIN at the archive's epoch.
        let v = hello("c1", Role::Backup, 0).expect("hello");
        assert_eq!(
            (v.role, v.status, v.epoch),
            (Role::Backup, NodeStatus::Follower, 4)
        );
        let v = hello("main1", Role::Backup, 0).expect("hello");
        assert_eq!(
            (v.role, v.status, v.epoch),
            (Role::Main, NodeStatus::Leader, 4)
        );
        assert_eq!(
            hello("off", Role::Backup, 0).map(|v| v.status).ok(),
            Some(NodeStatus::Disabled)
        );
        assert!(hello("nobody", Role::Backup, 0).is_err());

        // Gates: Disabled, unknown, a newer clone (unless forced), a moved epoch.
        let st = good(&[("c1", "db/3"), ("c2", "db/10"), ("off", "db/11")]);
        let e = c
            .takeover(&req("off", false, None), &st)
            .err()
            .map(|e| e.message);
        assert!(
            e.as_deref().is_some_and(|m| m.contains("Disabled")),
            "{e:?}"
        );
        assert!(c.takeover(&req("main1", false, None), &st).is_err());
        let e = c
            .takeover(&req("c1", false, Some(4)), &st)
            .err()
            .map(|e| e.message);
        // db/10 > db/3 (numerically, not as text); the Disabled clone's db/11 does not count.
        assert!(
            e.as_deref()
                .is_some_and(|m| m.contains("c2") && m.contains("db/10")),
            "{e:?}"
        );
        let e = c
            .takeover(&req("c1", true, Some(3)), &st)
            .err()
            .map(|e| e.message);
        assert!(
            e.as_deref().is_some_and(|m| m.contains("epoch moved")),
            "{e:?}"
        );
        assert_eq!(c.snapshot().epoch, 4, "refusals change nothing");

        let g = c.takeover(&req("c1", true, Some(4)), &st).expect("forced");
        let (v, old) = (g.verdict, g.old);
        // No spare configured: a clone is needed; the takeover is in the history.
        assert!(
            matches!(g.new_clone, NewClone::Needed(ref n) if n.new_main == "c1" && n.epoch == 5)
        );
        assert_eq!(
            (v.role, v.epoch, old.as_deref()),
            (Role::Main, 5, Some("main1"))
        );
        // Durable: a new coordinator on the same folder sees the same thing.
        let again = Coordinator::open(&cfg(), &dir, 0).expect("reopen");
        let s = again.snapshot();
        assert_eq!((s.epoch, s.main.as_deref()), (5, Some("c1")));
        assert_eq!(s.nodes["main1"].status, NodeStatus::Broken);
        assert_eq!(s.nodes["c1"].status, NodeStatus::Leader);

        // The old main: Broken whatever it claims; its notifications are refused.
        let v = again
            .hello(&Hello {
                node: "main1".into(),
                epoch: 4,
                role: Role::Main,
            })
            .expect("hello");
        assert_eq!(
            (v.role, v.status, v.epoch),
            (Role::Backup, NodeStatus::Broken, 5)
        );
        assert!(again.check_notify("main1", 5).is_err());
        assert!(again.check_notify("c1", 4).is_err(), "stale epoch");
        assert!(again.check_notify("c1", 5).is_ok());
        // A second takeover by the same node: already MAIN.
        assert!(again.takeover(&req("c1", false, None), &st).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn switchover_keeps_the_old_main_a_follower_and_rejoin_waits_for_the_latest() {
        let dir = std::env::temp_dir().join(format!(
            "pullback-coord-test2-{}-{}",
            std::process::id(),
            archive::ingest::now_ns()
        ));
        std::fs::create_dir_all(&dir).expect("tmp");
        let c = Coordinator::open(&cfg(), &dir, 0).expect("open");
        let hello = |node: &str, role: Role, epoch: u64| {
            c.hello(&Hello {
                node: node.into(),
                epoch,
                role,
            })
        };
        assert_eq!(
            hello("main1", Role::Backup, 0).map(|v| v.role).ok(),
            Some(Role::Main)
        );
        // The best clone: newest verified generation; the Disabled one does not count; a
        // clone whose last push failed since is not verified.
        let mut st = good(&[("c1", "db/3"), ("c2", "db/10"), ("off", "db/11")]);
        assert_eq!(c.best_clone(&st).as_deref(), Some("c2"));
        if let Some(i) = st.importers.get_mut("c2") {
            i.last_failure = Some(Event {
                at: "9999".into(),
                generation: Some("db/11".into()),
                detail: "failed".into(),
            });
        }
        assert_eq!(c.best_clone(&st).as_deref(), Some("c1"));
        // A planned switchover: old main BACKUP/Follower, not Broken.
        let g = c
            .grant(&req("c1", true, Some(0)), &st, NodeStatus::Follower)
            .expect("granted");
        let (v, old) = (g.verdict, g.old);
        // A switchover is no takeover: nothing recorded, no clone asked for.
        assert_eq!(g.new_clone, NewClone::Nothing);
        assert!(c.snapshot().takeovers.is_empty());
        assert_eq!((v.epoch, old.as_deref()), (1, Some("main1")));
        let s = c.snapshot();
        assert_eq!(s.nodes["main1"].status, NodeStatus::Follower);
        assert_eq!(s.nodes["main1"].role, Role::Backup);
        let v = hello("main1", Role::Backup, 0).expect("hello");
        assert_eq!((v.role, v.status), (Role::Backup, NodeStatus::Follower));
        // Rejoin: refused for the main and for a node that is no clone.
        assert!(c.rejoin("c1").is_err());
        assert!(c.rejoin("main1").is_err(), "no [[importer]] main1");
        c.rejoin("c2").expect("rejoin");
        assert!(c.is_rejoining("c2"));
        assert!(c.takeover(&req("c2", true, None), &st).is_err());
        assert!(c.check_notify("c2", 1).is_err());
        assert_eq!(
            hello("c2", Role::Main, 1).map(|v| (v.role, v.status)).ok(),
            Some((Role::Backup, NodeStatus::Rejoining))
        );
        // Not the latest (behind, or ahead): still rejoining; the latest: Follower.
        assert!(!c.finish_rejoin("c2", "db/9", "db/10"));
        assert!(!c.finish_rejoin("c2", "db/11", "db/10"));
        assert!(c.is_rejoining("c2"));
        assert!(c.finish_rejoin("c2", "db/10", "db/10"));
        assert_eq!(c.snapshot().nodes["c2"].status, NodeStatus::Follower);
        // Durable across a restart.
        c.rejoin("c2").expect("rejoin again");
        let again = Coordinator::open(&cfg(), &dir, 0).expect("reopen");
        assert!(again.is_rejoining("c2"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_takeover_activates_the_first_spare_durably_then_asks_for_a_clone() {
        let dir = std::env::temp_dir().join(format!(
            "pullback-coord-test3-{}-{}",
            std::process::id(),
            archive::ingest::now_ns()
        ));
        std::fs::create_dir_all(&dir).expect("tmp");
        let mut conf = cfg();
        conf.importers[1].spare = true; // c2
        conf.importers[2].spare = true; // off (also disabled)
        let c = Coordinator::open(&conf, &dir, 0).expect("open");
        let s = c.snapshot();
        assert_eq!(s.nodes["c2"].status, NodeStatus::Spare);
        assert_eq!(s.nodes["off"].status, NodeStatus::Spare);
        assert!(!c.receives_pushes("c2"));
        assert!(c.receives_pushes("c1"));
        let st = good(&[("c1", "db/3"), ("c2", "db/10")]);
        // A spare is not eligible, and its (stale) verified generation does not gate c1.
        let e = c
            .takeover(&req("c2", true, None), &st)
            .err()
            .map(|e| e.message);
        assert!(e.as_deref().is_some_and(|m| m.contains("Spare")), "{e:?}");
        assert_eq!(c.best_clone(&st).as_deref(), Some("c1"));
        c.hello(&Hello {
            node: "main1".into(),
            epoch: 0,
            role: Role::Backup,
        })
        .expect("hello");
        let mut r = req("c1", false, Some(0));
        r.by = Some("page".into());
        let g = c.takeover(&r, &st).expect("takeover");
        assert_eq!(g.new_clone, NewClone::Spare("c2".into()));
        let s = c.snapshot();
        assert_eq!(s.nodes["c2"].status, NodeStatus::Follower);
        assert_eq!(s.nodes["off"].status, NodeStatus::Spare, "only the first");
        assert!(c.receives_pushes("c2"));
        assert_eq!(s.takeovers.len(), 1);
        let t = &s.takeovers[0];
        assert_eq!(
            (
                t.node.as_str(),
                t.old_main.as_deref(),
                t.epoch,
                t.forced,
                t.by
            ),
            ("c1", Some("main1"), 1, false, TakeoverBy::Page)
        );
        assert_eq!(t.new_clone, "spare c2 activated");
        // Durable: a restart keeps c2 activated (not Spare again).
        let c = Coordinator::open(&conf, &dir, 0).expect("reopen");
        assert_eq!(c.snapshot().nodes["c2"].status, NodeStatus::Follower);
        // Next takeover (forced, by c2): the next spare, the Disabled one.
        let g = c.takeover(&req("c2", true, None), &st).expect("takeover 2");
        assert_eq!(g.new_clone, NewClone::Spare("off".into()));
        assert_eq!(c.snapshot().nodes["off"].status, NodeStatus::Disabled);
        let again = Coordinator::open(&conf, &dir, 0).expect("reopen");
        assert_eq!(again.snapshot().nodes["off"].status, NodeStatus::Disabled);
        // No spare left: a clone is needed (no hook configured), recorded.
        again.rejoin("c1").expect("rejoin");
        again.finish_rejoin("c1", "db/3", "db/3");
        let g = again
            .takeover(&req("c1", true, None), &st)
            .expect("takeover 3");
        assert!(matches!(g.new_clone, NewClone::Needed(_)));
        let s = again.snapshot();
        let n = s.clone_needed.as_ref().expect("clone needed");
        assert_eq!(
            (
                n.epoch,
                n.new_main.as_str(),
                n.old_main.as_deref(),
                n.hook.as_deref()
            ),
            (3, "c1", Some("c2"), None)
        );
        assert!(clone_needed_text(n).contains("set up a clone"));
        let hist: Vec<(u64, bool, &str)> = s
            .takeovers
            .iter()
            .map(|t| (t.epoch, t.forced, t.by.as_str()))
            .collect();
        assert_eq!(
            hist,
            [(1, false, "page"), (2, true, "api"), (3, true, "api")]
        );
        // A rejoin that finishes gives a new clone.
        again.rejoin("c2").expect("rejoin c2");
        again.finish_rejoin("c2", "db/3", "db/3");
        assert!(again.snapshot().clone_needed.is_none());
        // The history is bounded.
        for _ in 0..KEEP_TAKEOVERS {
            for (to, from) in [("c2", "c1"), ("c1", "c2")] {
                again.takeover(&req(to, true, None), &st).expect("takeover");
                again.rejoin(from).expect("rejoin");
                again.finish_rejoin(from, "db/3", "db/3");
            }
        }
        assert_eq!(again.snapshot().takeovers.len(), KEEP_TAKEOVERS);
        let _ = std::fs::remove_dir_all(&dir);

        // A spare rejoined by an operator stays a clone after a restart.
        let dir = dir.with_extension("rejoin");
        std::fs::create_dir_all(&dir).expect("tmp");
        let c = Coordinator::open(&conf, &dir, 0).expect("open");
        assert_eq!(c.snapshot().nodes["c2"].status, NodeStatus::Spare);
        c.rejoin("c2").expect("rejoin the spare");
        assert!(c.finish_rejoin("c2", "db/3", "db/3"));
        let again = Coordinator::open(&conf, &dir, 0).expect("reopen");
        assert_eq!(again.snapshot().nodes["c2"].status, NodeStatus::Follower);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn seqs() {
        assert_eq!(seq_of("db/12"), Some(12));
        assert_eq!(seq_of("db"), None);
        assert!(Some(3) > None::<u64>);
    }
}
