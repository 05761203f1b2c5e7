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
//! - notify fencing: a notification from a Broken node, from a node that is not the main,
//!   or at an epoch below the current one is refused with 409 (the node demotes).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Result;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use wire::ha::{Hello, NodeStatus, NodeView, Role, TakeoverRequest, Verdict};
use wire::server::ApiError;
use wire::PeerConfig;

use crate::config::Config;
use crate::daemon::ServerStatus;

/// One node as the coordinator keeps it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeState {
    /// `exporter` or `importer`.
    pub kind: String,
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
}

pub fn state_path(state_dir: &Path) -> PathBuf {
    state_dir.join("coordinator.json")
}

pub const EXPORTER: &str = "exporter";
pub const IMPORTER: &str = "importer";

/// The coordinator of a running PBS.
pub struct Coordinator {
    path: PathBuf,
    state: Mutex<CoordState>,
    /// Exporter node name → how to reach it (the source's exporter peer).
    exporters: BTreeMap<String, PeerConfig>,
    /// Node name → the token peers allowed to speak for it.
    speakers: BTreeMap<String, Vec<String>>,
}

fn conflict(msg: impl Into<String>) -> ApiError {
    ApiError::conflict(msg)
}

/// The sequence number of `SOURCE/SEQ`.
fn seq_of(gen: &str) -> Option<u64> {
    gen.rsplit_once('/').and_then(|(_, s)| s.parse().ok())
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
                kind: EXPORTER.into(),
                ..Default::default()
            });
        }
        for i in &cfg.importers {
            speakers
                .entry(i.name.clone())
                .or_default()
                .push(i.name.clone());
            let n = st.nodes.entry(i.name.clone()).or_insert_with(|| NodeState {
                kind: IMPORTER.into(),
                ..Default::default()
            });
            if st.main.as_deref() == Some(i.name.as_str()) || n.status == NodeStatus::Broken {
                continue;
            }
            n.status = if i.disabled {
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
            } else if is_main || (main_free && n.kind == EXPORTER) {
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
    ) -> Result<(Verdict, Option<String>), ApiError> {
        let verified = |name: &str| {
            server
                .importers
                .get(name)
                .and_then(|s| s.last_good.as_ref())
                .and_then(|e| e.generation.clone())
        };
        self.change(|st| {
            let n = st
                .nodes
                .get(&req.node)
                .ok_or_else(|| conflict(format!("unknown node {:?}: not a clone", req.node)))?;
            if st.main.as_deref() == Some(req.node.as_str()) {
                return Err(conflict(format!(
                    "{} is already MAIN at epoch {}",
                    req.node, st.epoch
                )));
            }
            if n.kind != IMPORTER {
                return Err(conflict(format!("{} is not a clone", req.node)));
            }
            match n.status {
                NodeStatus::Disabled => {
                    return Err(conflict(format!(
                        "{} is Disabled: excluded from takeover",
                        req.node
                    )))
                }
                NodeStatus::Broken => {
                    return Err(conflict(format!(
                        "{} is Broken: rejoin it first",
                        req.node
                    )))
                }
                _ => {}
            }
            if let Some(e) = req.epoch.filter(|e| *e < st.epoch) {
                return Err(conflict(format!(
                    "the epoch moved from {e} to {} since {} looked: another takeover happened",
                    st.epoch, req.node
                )));
            }
            if !req.force {
                let mine = verified(&req.node);
                let mine_seq = mine.as_deref().and_then(seq_of);
                for (other, o) in &st.nodes {
                    if other == &req.node
                        || o.kind != IMPORTER
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
            st.epoch += 1;
            let old = st.main.take();
            if let Some(o) = old.as_ref().and_then(|o| st.nodes.get_mut(o)) {
                o.role = Role::Backup;
                o.status = NodeStatus::Broken;
            }
            let now = wire::cli::now_rfc3339();
            let n = st
                .nodes
                .get_mut(&req.node)
                .ok_or_else(|| ApiError::internal("node vanished"))?;
            n.role = Role::Main;
            n.status = NodeStatus::Leader;
            n.last_seen = Some(now);
            st.main = Some(req.node.clone());
            tracing::warn!(node = %req.node, epoch = st.epoch, old_main = ?old, force = req.force, "takeover granted");
            Ok((
                Verdict {
                    role: Role::Main,
                    epoch: st.epoch,
                    status: NodeStatus::Leader,
                },
                old,
            ))
        })
    }

    /// Fencing of `/v1/notify`: refuses a Broken node, a node that is not the main, and
    /// an epoch below the current one.
    pub fn check_notify(&self, node: &str, epoch: u64) -> Result<(), ApiError> {
        self.change(|st| {
            let cur = st.epoch;
            let main = st.main.clone();
            if let Some(n) = st.nodes.get_mut(node) {
                n.last_seen = Some(wire::cli::now_rfc3339());
                if n.status == NodeStatus::Broken {
                    return Err(conflict(format!(
                        "node {node} is Broken (fenced; epoch now {cur}): demote"
                    )));
                }
            }
            if epoch < cur {
                return Err(conflict(format!(
                    "stale epoch {epoch} from {node} (current {cur}): demote"
                )));
            }
            if let Some(m) = main.filter(|m| m != node) {
                return Err(conflict(format!(
                    "{node} is not the main ({m} is, epoch {cur}): demote"
                )));
            }
            Ok(())
        })
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

fn reqwest_post() -> axum::http::Method {
    axum::http::Method::POST
}

/// The nodes as people see them (also used by `pbs status` from the files).
pub fn views(st: &CoordState, server: &ServerStatus) -> Vec<NodeView> {
    st.nodes
        .iter()
        .map(|(name, n)| {
            let generation = if n.kind == IMPORTER {
                server
                    .importers
                    .get(name)
                    .and_then(|s| s.last_good.as_ref())
                    .and_then(|e| e.generation.clone())
            } else {
                n.last_generation.clone()
            };
            NodeView {
                name: name.clone(),
                kind: n.kind.clone(),
                role: n.role,
                status: n.status,
                epoch: st.epoch,
                generation,
                last_seen: n.last_seen.clone(),
            }
        })
        .collect()
}

/// The dashboard (`GET /`): plain HTML, no JavaScript.
pub fn dashboard(st: &CoordState, nodes: &[NodeView], report: &serde_json::Value) -> String {
    use wire::ha::html_escape as e;
    let mut h = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>pullback PBS</title>\
         <style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}\
         td,th{border:1px solid #999;padding:.3em .6em}.Broken{color:#b00}.Leader{color:#070}</style>\
         </head><body><h1>pullback backup server</h1>",
    );
    h.push_str(&format!(
        "<p>Epoch <b>{}</b>, main <b>{}</b>, archive status <b>{}</b></p>",
        st.epoch,
        e(st.main.as_deref().unwrap_or("none")),
        e(report["status"].as_str().unwrap_or("")),
    ));
    h.push_str("<h2>Nodes</h2><table><tr><th>node</th><th>kind</th><th>role</th><th>status</th><th>epoch</th><th>generation</th><th>last seen</th></tr>");
    for n in nodes {
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{st}\">{st}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            e(&n.name),
            e(&n.kind),
            n.role,
            n.epoch,
            e(n.generation.as_deref().unwrap_or("-")),
            e(n.last_seen.as_deref().unwrap_or("-")),
            st = n.status,
        ));
    }
    h.push_str("</table><h2>Sources</h2><table><tr><th>source</th><th>newest</th><th>taken at</th><th>age (s)</th><th>last failure</th></tr>");
    for s in report["sources"].as_array().into_iter().flatten() {
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            e(s["name"].as_str().unwrap_or("")),
            e(s["newest"]["generation"].as_str().unwrap_or("none")),
            e(s["newest"]["taken_at"].as_str().unwrap_or("-")),
            e(&s["age_secs"].to_string()),
            e(s["last_failure"]["detail"].as_str().unwrap_or("-")),
        ));
    }
    h.push_str("</table></body></html>\n");
    h
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

        let (v, old) = c.takeover(&req("c1", true, Some(4)), &st).expect("forced");
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
    fn seqs() {
        assert_eq!(seq_of("db/12"), Some(12));
        assert_eq!(seq_of("db"), None);
        assert!(Some(3) > None::<u64>);
    }
}
