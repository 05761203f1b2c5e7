//! Roles, epochs and the coordinator's HA API types, shared by the three daemons.
//!
//! A node is [`Role::Main`] or [`Role::Backup`]; every node starts as BACKUP and becomes
//! MAIN only when the coordinator (the PBS) grants it at the current [`Epoch`]. A node's
//! durable role lives in its role file ([`RoleFile`], `role_file` in the exporter's and
//! importer's configs, default `STATE_DIR/role.json`; one file for both daemons of a node),
//! written with [`crate::write_json_atomic`]; the `pullback-node` launcher reads it to
//! choose between `exporter serve` and `importer serve`.
//!
//! Coordinator API (PBS, token-protected):
//! - `POST /v1/ha/hello` [`Hello`] → [`Verdict`]
//! - `POST /v1/ha/takeover` [`TakeoverRequest`] → [`Verdict`] (409 with the reason when refused)
//! - `GET /v1/ha/nodes` → a list of [`NodeView`]
//! - `POST /v1/ha/switchover` [`SwitchoverRequest`], `POST /v1/ha/balance` → [`SwitchoverResult`]
//!   (admin only; 409 with the reason when refused)
//! - `POST /v1/ha/rejoin` [`RejoinRequest`] → [`NodeView`] (admin only)
//!
//! Clone API, from the coordinator only: `POST /v1/ha/promote` [`PromoteRequest`].
//!
//! Node API (exporter and importer), as the seeds: `GET /rest/ha/status` answers `MAIN` or
//! `BACKUP` (text); `POST /rest/ha/status?change=MAIN|BACKUP`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A node's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Role {
    /// Serves the software and exports its data.
    #[serde(rename = "MAIN")]
    Main,
    /// Does not serve (a clone, or a fenced former main).
    #[serde(rename = "BACKUP")]
    #[default]
    Backup,
}

impl Role {
    /// `MAIN` or `BACKUP`, as the HA API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Main => "MAIN",
            Role::Backup => "BACKUP",
        }
    }

    /// Parses `MAIN` / `BACKUP` (exactly, as the seeds spell them).
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "MAIN" => Some(Role::Main),
            "BACKUP" => Some(Role::Backup),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

crate::phase::wire_enum! {
    /// A node's status as people see it.
    pub enum NodeStatus {
        /// The main at the current epoch.
        Leader = "Leader",
        /// A clone, eligible for takeover (or an exporter node waiting for a grant).
        #[default]
        Follower = "Follower",
        /// A clone excluded from takeover by configuration.
        Disabled = "Disabled",
        /// A fenced former main, quarantined until an operator rejoins it.
        Broken = "Broken",
        /// Rejoined by an operator: a clone again once it has restored and verified the
        /// latest generation; until then never MAIN, never notifies, never eligible.
        Rejoining = "Rejoining",
        /// A configured spare clone (`spare = true`): nothing is pushed to it and it is not
        /// eligible, until a takeover activates it (then a Follower, pushed the latest
        /// generation at once).
        Spare = "Spare",
    }
}

/// What an exporter shows as its status (`status.json`, `GET /v1/status`): what the
/// coordinator said, or [`SINGLE_NODE`] while no coordinator confirmed it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ShownStatus {
    /// The status the coordinator gave this node.
    Coordinated(NodeStatus),
    /// No coordinator confirmed this node (a warning): [`SINGLE_NODE`].
    #[default]
    SingleNode,
}

impl fmt::Display for ShownStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShownStatus::Coordinated(s) => f.write_str(s.as_str()),
            ShownStatus::SingleNode => f.write_str(SINGLE_NODE),
        }
    }
}

impl From<ShownStatus> for String {
    fn from(s: ShownStatus) -> String {
        s.to_string()
    }
}

impl TryFrom<String> for ShownStatus {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s == SINGLE_NODE {
            return Ok(ShownStatus::SingleNode);
        }
        s.parse().map(ShownStatus::Coordinated)
    }
}

crate::phase::wire_enum! {
    /// What a node of the coordinator runs.
    pub enum NodeKind {
        /// A source's main node (its exporter).
        #[default]
        Exporter = "exporter",
        /// A clone (an importer).
        Importer = "importer",
    }
}

crate::phase::wire_enum! {
    /// How a takeover was asked for (the coordinator's takeover history).
    pub enum TakeoverBy {
        /// The clone's takeover page.
        Page = "page",
        /// The clone's `POST /v1/takeover`, the seeds' `change=MAIN`, or a direct call.
        #[default]
        Api = "api",
        /// The PBS's automatic failover.
        Auto = "auto",
    }
}

impl TakeoverBy {
    /// A request's `by`: `page` and `auto` as given, anything else (or nothing) `api`.
    pub fn of_request(by: Option<&str>) -> TakeoverBy {
        match by.and_then(|b| b.parse().ok()) {
            Some(b) => b,
            None => TakeoverBy::Api,
        }
    }
}

/// The status an exporter shows when no coordinator confirmed it (a warning).
pub const SINGLE_NODE: &str = "Leader (single node)";

/// A node's durable role (its role file, default `STATE_DIR/role.json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RoleFile {
    /// The role the node last held.
    pub role: Role,
    /// The epoch it was granted (MAIN) or last knew (BACKUP).
    pub epoch: u64,
    /// BACKUP because it was fenced (a takeover, or the coordinator said Broken): its data
    /// may have diverged, so the launcher keeps it on its idle exporter until an operator
    /// rejoins it. Not set when it stepped down in a switchover (it is a clone at once).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fenced: bool,
}

impl RoleFile {
    /// The default role file of a daemon: `state_dir/role.json`.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("role.json")
    }

    /// Reads the role file at `path`; `None` when there is none.
    pub fn load(path: &Path) -> Result<Option<RoleFile>, crate::state::StateError> {
        crate::read_json(path)
    }

    /// Writes it to `path` atomically and durably.
    pub fn save(&self, path: &Path) -> Result<(), crate::state::StateError> {
        crate::write_json_atomic(path, self)
    }
}

/// `POST /v1/ha/hello`: a node tells the coordinator who it is and what it believes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The node's name (the source's exporter name, or the importer's name).
    pub node: String,
    /// The epoch of its role file.
    pub epoch: u64,
    /// The role of its role file.
    pub role: Role,
}

/// The coordinator's answer to a hello or a granted takeover.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// The role the node must hold.
    pub role: Role,
    /// The coordinator's current epoch.
    pub epoch: u64,
    /// The node's status.
    pub status: NodeStatus,
}

/// `POST /v1/ha/takeover`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakeoverRequest {
    /// The clone that wants to become MAIN.
    pub node: String,
    /// Skip the newer-clone gate.
    #[serde(default)]
    pub force: bool,
    /// The epoch the clone knew when it decided: a takeover is refused if the epoch moved
    /// since (another takeover won). Absent: not checked.
    #[serde(default)]
    pub epoch: Option<u64>,
    /// How it was asked for: `page` (the clone's takeover page) or `api` (its
    /// `POST /v1/takeover`, the seeds' `change=MAIN`, or a direct call); recorded in the
    /// coordinator's takeover history. Absent: `api`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// The takeover password the operator gave the clone (which checked it first); the
    /// coordinator checks it again against the clone's `takeover_password_hash` in the
    /// PBS config, so the clone's token alone cannot take over. Not needed with the PBS's
    /// `admin` token. Never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

impl fmt::Debug for TakeoverRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TakeoverRequest")
            .field("node", &self.node)
            .field("force", &self.force)
            .field("epoch", &self.epoch)
            .field("by", &self.by)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A grant of MAIN whose promotion the new main has not confirmed yet
/// (`coordinator.json` `pending_promotion`, shown by `pbs status`). The coordinator
/// retries `POST /v1/ha/promote` on the clone until the clone's hello as MAIN at `epoch`
/// confirms it; a clone that restarts promotes itself when the coordinator says it is MAIN.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingPromotion {
    /// The node granted MAIN.
    pub node: String,
    /// The epoch granted.
    pub epoch: u64,
    /// When MAIN was granted (RFC 3339).
    pub granted_at: String,
    /// Promotions the coordinator retried.
    #[serde(default)]
    pub retries: u32,
    /// Why the last retry failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// One takeover in the coordinator's history (`coordinator.json`, shown by `pbs status`
/// and the dashboard).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakeoverRecord {
    /// When MAIN was granted (RFC 3339).
    pub at: String,
    /// The new main.
    pub node: String,
    /// The main it replaced, if any.
    pub old_main: Option<String>,
    /// The epoch granted.
    pub epoch: u64,
    /// Whether the gates were skipped (`force`).
    pub forced: bool,
    /// `page`, `api` or `auto` (automatic failover).
    pub by: TakeoverBy,
    /// What was done about the lost clone: `spare NAME activated`, `on_clone_needed hook`,
    /// or `clone needed`.
    #[serde(default)]
    pub new_clone: String,
}

/// After a takeover with no spare to activate: a new clone is needed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloneNeeded {
    /// When it was recorded (RFC 3339).
    pub at: String,
    /// The epoch of the takeover.
    pub epoch: u64,
    /// The new main.
    pub new_main: String,
    /// The main it replaced, if any.
    pub old_main: Option<String>,
    /// The `[failover] on_clone_needed` hook, if configured.
    pub hook: Option<String>,
    /// How the hook ended (`exit code 0 after 0.1 s`, or why it could not run); `None`
    /// while it runs or when there is no hook.
    pub outcome: Option<String>,
    /// Whether the hook succeeded.
    pub ok: Option<bool>,
}

/// `POST /v1/ha/switchover` (admin): planned, zero-loss hand-over to `to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchoverRequest {
    /// The clone that becomes MAIN.
    pub to: String,
}

/// `POST /v1/ha/rejoin` (admin): bring `node` back as a clone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejoinRequest {
    /// The node (usually a Broken former main).
    pub node: String,
}

/// `POST /v1/ha/promote` on a clone, from its coordinator only: the coordinator already
/// granted this clone MAIN at `epoch` (switchover, automatic failover, a retried grant); the
/// clone first asks the coordinator itself (a hello) and promotes only if it is MAIN at
/// exactly `epoch`; then it runs its promote hook, writes its role file and exits 0, as
/// after a takeover.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromoteRequest {
    /// The epoch the coordinator granted.
    pub epoch: u64,
}

/// The answer of a switchover, balance or automatic failover.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchoverResult {
    /// The new main.
    pub main: String,
    /// The old main (now BACKUP), if there was one.
    pub old_main: Option<String>,
    /// The new epoch.
    pub epoch: u64,
    /// The final generation the new main verified before it was promoted.
    pub generation: Option<String>,
    /// Nothing to do (balance: the preferred leader already leads).
    #[serde(default)]
    pub noop: bool,
}

/// One node as `GET /v1/ha/nodes` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// Node name.
    pub name: String,
    /// `exporter` (a source's main node) or `importer` (a clone).
    pub kind: NodeKind,
    /// Its role.
    pub role: Role,
    /// Its status.
    pub status: NodeStatus,
    /// The coordinator's current epoch.
    pub epoch: u64,
    /// Its last generation (exporter: newest committed; importer: last verified).
    pub generation: Option<String>,
    /// When it last said hello or notified (RFC 3339).
    pub last_seen: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles() {
        assert_eq!(Role::parse("MAIN"), Some(Role::Main));
        assert_eq!(Role::parse("main"), None);
        for (s, json) in [
            (ShownStatus::SingleNode, "\"Leader (single node)\""),
            (ShownStatus::Coordinated(NodeStatus::Broken), "\"Broken\""),
        ] {
            assert_eq!(serde_json::to_string(&s).unwrap_or_default(), json);
            assert_eq!(serde_json::from_str::<ShownStatus>(json).ok(), Some(s));
        }
        assert!(serde_json::from_str::<ShownStatus>("\"broken\"").is_err());
        assert_eq!(
            serde_json::to_string(&RoleFile {
                role: Role::Main,
                epoch: 3,
                fenced: false,
            })
            .unwrap_or_default(),
            r#"{"role":"MAIN","epoch":3}"#
        );
        let fenced = RoleFile {
            role: Role::Backup,
            epoch: 4,
            fenced: true,
        };
        let json = serde_json::to_string(&fenced).unwrap_or_default();
        assert_eq!(json, r#"{"role":"BACKUP","epoch":4,"fenced":true}"#);
        assert_eq!(serde_json::from_str::<RoleFile>(&json).ok(), Some(fenced));
    }
}
