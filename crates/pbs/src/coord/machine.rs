//! The coordinator's state machine, with no I/O: each transition takes the current
//! [`CoordState`] and a request and returns either a [`Refusal`] (the state is unchanged)
//! or a [`Step`]: the new state, the answer, and the [`Effect`]s the caller runs once the
//! new state is saved (`crate::effects`). The times it records are given to it (`now`).

use std::collections::BTreeSet;
use std::path::PathBuf;

use archive::{Epoch, EpochError, GenId};
use wire::ha::{
    CloneNeeded, Hello, NodeKind, NodeStatus, Role, TakeoverBy, TakeoverRecord, TakeoverRequest,
    Verdict,
};

use super::refusal::Refusal;
use super::{pending, CoordState, KEEP_TAKEOVERS};

/// What the caller does after a transition was saved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Tell the old main to step down (`POST /rest/ha/status?change=BACKUP`, best effort).
    StepDown(String),
    /// Tell the clone it was granted MAIN at `epoch` (`POST /v1/ha/promote`).
    Promote { node: String, epoch: u64 },
    /// Push the latest generation to this clone (an activated spare, a rejoining node).
    PushLatest(String),
    /// Run `[failover] on_clone_needed` for this takeover, if configured, and record how it
    /// ended.
    RunCloneHook(CloneNeeded),
}

/// A transition that went through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step<T> {
    pub state: CoordState,
    pub answer: T,
    pub effects: Vec<Effect>,
}

impl<T> Step<T> {
    fn new(state: CoordState, answer: T) -> Self {
        Step {
            state,
            answer,
            effects: Vec::new(),
        }
    }
}

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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub verdict: Verdict,
    /// The old main.
    pub old: Option<String>,
    pub new_clone: NewClone,
}

/// Which grant: a takeover fences the old main (Broken) and asks for a new clone; a
/// planned switchover keeps the old main a Follower (it stepped down already).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantKind {
    /// `promote`: the clone did not ask itself (admin token, automatic failover), so the
    /// PBS promotes it.
    Takeover {
        promote: bool,
    },
    Switchover,
}

/// The configured facts the transitions depend on.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    /// The configured `[[importer]]` names: the nodes that can be clones.
    pub clones: BTreeSet<String>,
    /// The `spare = true` importers, in config order.
    pub spares: Vec<String>,
    /// The `disabled = true` importers (an activated disabled spare is Disabled).
    pub disabled: BTreeSet<String>,
    /// `[failover] on_clone_needed`.
    pub clone_hook: Option<PathBuf>,
}

fn gen_id(g: &str) -> Option<GenId> {
    g.parse().ok()
}

impl Rules {
    /// A hello: the node's role (see the module doc of `crate::coord`).
    pub fn hello(&self, st: &CoordState, h: &Hello, now: &str) -> Result<Step<Verdict>, Refusal> {
        let mut st = st.clone();
        let epoch = st.epoch;
        let is_main = st.main.as_deref() == Some(h.node.as_str());
        let main_free = st.main.is_none();
        let n = st
            .nodes
            .get_mut(&h.node)
            .ok_or_else(|| Refusal::UnknownNode(h.node.clone()))?;
        n.last_seen = Some(now.to_string());
        let stale_main = h.role == Role::Main && h.epoch < epoch && !is_main;
        if n.status == NodeStatus::Broken || stale_main {
            n.role = Role::Backup;
            n.status = NodeStatus::Broken;
        } else if n.status == NodeStatus::Rejoining {
            n.role = Role::Backup;
        } else if is_main || (main_free && n.kind == NodeKind::Exporter) {
            n.role = Role::Main;
            n.status = NodeStatus::Leader;
            pending::confirm(&mut st.pending_promotion, h);
            if main_free {
                tracing::info!(node = %h.node, epoch, "granted MAIN (no main yet)");
                st.main = Some(h.node.clone());
            }
        } else {
            n.role = Role::Backup;
        }
        let n = &st.nodes[&h.node];
        let verdict = Verdict {
            role: n.role,
            epoch,
            status: n.status,
        };
        let mut step = Step::new(st, verdict);
        // A rejoining clone that (re)starts: restore the latest generation there.
        if step.answer.status == NodeStatus::Rejoining {
            step.effects.push(Effect::PushLatest(h.node.clone()));
        }
        Ok(step)
    }

    /// The gates every grant passes first: a configured clone that is not the main and is
    /// neither Disabled, Broken, Rejoining nor Spare.
    pub fn eligible(&self, st: &CoordState, node: &str) -> Result<(), Refusal> {
        let n = st
            .nodes
            .get(node)
            .ok_or_else(|| Refusal::UnknownClone(node.to_string()))?;
        if st.main.as_deref() == Some(node) {
            return Err(Refusal::AlreadyMain {
                node: node.to_string(),
                epoch: st.epoch,
            });
        }
        if !self.clones.contains(node) {
            return Err(Refusal::NotAClone(node.to_string()));
        }
        let node = node.to_string();
        match n.status {
            NodeStatus::Disabled => Err(Refusal::Disabled(node)),
            NodeStatus::Broken => Err(Refusal::Broken(node)),
            NodeStatus::Rejoining => Err(Refusal::Rejoining(node)),
            NodeStatus::Spare => Err(Refusal::Spare(node)),
            NodeStatus::Leader | NodeStatus::Follower => Ok(()),
        }
    }

    /// Grants MAIN to `req.node` through the gates: the epoch the clone looked at (if
    /// given), and unless forced no eligible Follower holding a newer verified generation
    /// (`verified`: the generation the PBS last saw a clone verify).
    pub fn grant(
        &self,
        st: &CoordState,
        req: &TakeoverRequest,
        kind: GrantKind,
        verified: &dyn Fn(&str) -> Option<String>,
        now: &str,
    ) -> Result<Step<Grant>, Refusal> {
        self.eligible(st, &req.node)?;
        match req.epoch.map(|e| Epoch::check(e, st.epoch)) {
            Some(Err(EpochError::Stale { got, .. })) => {
                return Err(Refusal::EpochMoved {
                    node: req.node.clone(),
                    got,
                    now: st.epoch,
                })
            }
            Some(Err(error)) => {
                return Err(Refusal::EpochNotGranted {
                    node: req.node.clone(),
                    error,
                })
            }
            _ => {}
        }
        if !req.force {
            self.newer_clone_gate(st, &req.node, verified)?;
        }
        let mut st = st.clone();
        st.epoch = Epoch(st.epoch).next().map_err(Refusal::EpochExhausted)?.0;
        let old_status = match kind {
            GrantKind::Takeover { .. } => NodeStatus::Broken,
            GrantKind::Switchover => NodeStatus::Follower,
        };
        let old = st.main.take();
        if let Some(o) = old.as_ref().and_then(|o| st.nodes.get_mut(o)) {
            o.role = Role::Backup;
            o.status = old_status;
        }
        let n = st
            .nodes
            .get_mut(&req.node)
            .ok_or_else(|| Refusal::UnknownClone(req.node.clone()))?;
        n.role = Role::Main;
        n.status = NodeStatus::Leader;
        n.last_seen = Some(now.to_string());
        st.main = Some(req.node.clone());
        st.pending_promotion = Some(pending::granted(&req.node, st.epoch, now));
        tracing::warn!(node = %req.node, epoch = st.epoch, old_main = ?old, force = req.force, old_status = %old_status, "MAIN granted");
        let mut effects = Vec::new();
        let new_clone = match kind {
            GrantKind::Takeover { .. } => {
                if let Some(o) = &old {
                    effects.push(Effect::StepDown(o.clone()));
                }
                let c = self.after_takeover(&mut st, req, old.clone(), now);
                match &c {
                    NewClone::Spare(s) => effects.push(Effect::PushLatest(s.clone())),
                    NewClone::Needed(n) => effects.push(Effect::RunCloneHook(n.clone())),
                    NewClone::Nothing => {}
                }
                c
            }
            GrantKind::Switchover => NewClone::Nothing,
        };
        if matches!(
            kind,
            GrantKind::Takeover { promote: true } | GrantKind::Switchover
        ) {
            effects.push(Effect::Promote {
                node: req.node.clone(),
                epoch: st.epoch,
            });
        }
        let answer = Grant {
            verdict: Verdict {
                role: Role::Main,
                epoch: st.epoch,
                status: NodeStatus::Leader,
            },
            old,
            new_clone,
        };
        Ok(Step {
            state: st,
            answer,
            effects,
        })
    }

    /// Refuses when another eligible Follower verified a newer generation than `node`.
    fn newer_clone_gate(
        &self,
        st: &CoordState,
        node: &str,
        verified: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), Refusal> {
        let mine = verified(node);
        let mine_seq = mine.as_deref().and_then(gen_id).map(|g| g.seq);
        for (other, o) in &st.nodes {
            if other == node
                || !self.clones.contains(other)
                || o.status != NodeStatus::Follower
                || st.main.as_deref() == Some(other.as_str())
            {
                continue;
            }
            let theirs = verified(other);
            if theirs.as_deref().and_then(gen_id).map(|g| g.seq) > mine_seq {
                return Err(Refusal::NewerClone {
                    other: other.clone(),
                    theirs: theirs.unwrap_or_default(),
                    node: node.to_string(),
                    mine,
                });
            }
        }
        Ok(())
    }

    /// Part of a takeover: the history, then the first Spare activated or a clone
    /// recorded as needed.
    fn after_takeover(
        &self,
        st: &mut CoordState,
        req: &TakeoverRequest,
        old: Option<String>,
        at: &str,
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
                    at: at.to_string(),
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
        st.takeovers.push(TakeoverRecord {
            at: at.to_string(),
            node: req.node.clone(),
            old_main: old,
            epoch: st.epoch,
            forced: req.force,
            by: TakeoverBy::of_request(req.by.as_deref()),
            new_clone: what,
        });
        let extra = st.takeovers.len().saturating_sub(KEEP_TAKEOVERS);
        st.takeovers.drain(..extra);
        new_clone
    }

    /// `pbs rejoin NODE`: the node comes back as a clone (Rejoining), and is pushed the
    /// latest generation. Refused for the main and for a node with no `[[importer]]`.
    pub fn rejoin(&self, st: &CoordState, node: &str) -> Result<Step<()>, Refusal> {
        if st.main.as_deref() == Some(node) {
            return Err(Refusal::MainCannotRejoin {
                node: node.to_string(),
                epoch: st.epoch,
            });
        }
        if !self.clones.contains(node) {
            return Err(Refusal::NoImporterEntry(node.to_string()));
        }
        let mut st = st.clone();
        let n = st
            .nodes
            .get_mut(node)
            .ok_or_else(|| Refusal::UnknownClone(node.to_string()))?;
        n.role = Role::Backup;
        n.status = NodeStatus::Rejoining;
        tracing::warn!(node, epoch = st.epoch, "rejoining as a clone");
        let mut step = Step::new(st, ());
        step.effects.push(Effect::PushLatest(node.to_string()));
        Ok(step)
    }

    /// A rejoining node verified `gen`: a Follower again when `gen` is exactly `latest`,
    /// the latest generation of its source (never behind, never ahead). Answers whether it
    /// became a Follower.
    pub fn finish_rejoin(
        &self,
        st: &CoordState,
        node: &str,
        gen: &str,
        latest: &str,
    ) -> Step<bool> {
        let mut st = st.clone();
        let Some(n) = st.nodes.get_mut(node) else {
            return Step::new(st, false);
        };
        if n.status != NodeStatus::Rejoining {
            return Step::new(st, false);
        }
        let have = gen_id(gen);
        if have.is_none() || have != gen_id(latest) {
            tracing::info!(
                node,
                gen,
                latest,
                "rejoining: not the latest generation yet"
            );
            return Step::new(st, false);
        }
        n.status = NodeStatus::Follower;
        n.role = Role::Backup;
        st.clone_needed = None;
        if self.spares.iter().any(|s| s == node) {
            // A rejoined spare is a clone now, also after a restart.
            st.activated_spares.insert(node.to_string());
        }
        tracing::warn!(node, gen, "rejoined: Follower");
        Step::new(st, true)
    }

    /// Fencing of `/v1/notify`: only the main, at exactly the current epoch, may notify;
    /// a Broken or rejoining node never.
    pub fn check_notify(
        &self,
        st: &CoordState,
        node: &str,
        epoch: u64,
        now: &str,
    ) -> Result<Step<()>, Refusal> {
        let mut st = st.clone();
        let cur = st.epoch;
        let main = st.main.clone();
        if let Some(n) = st.nodes.get_mut(node) {
            n.last_seen = Some(now.to_string());
            let (node, epoch) = (node.to_string(), cur);
            match n.status {
                NodeStatus::Broken => return Err(Refusal::NotifyFromBroken { node, epoch }),
                NodeStatus::Rejoining => return Err(Refusal::NotifyFromRejoining { node, epoch }),
                _ => {}
            }
        }
        let node_s = node.to_string();
        match Epoch::check(epoch, cur) {
            Err(error @ EpochError::Stale { .. }) => {
                return Err(Refusal::NotifyStale {
                    node: node_s,
                    error,
                })
            }
            Err(error) => {
                return Err(Refusal::NotifyEpoch {
                    node: node_s,
                    error,
                })
            }
            Ok(()) => {}
        }
        if let Some(m) = main.filter(|m| m != node) {
            return Err(Refusal::NotifyNotMain {
                node: node_s,
                main: m,
                epoch: cur,
            });
        }
        Ok(Step::new(st, ()))
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
