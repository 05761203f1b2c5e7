//! Why the coordinator refuses a request: one variant per reason, each naming what is
//! wrong. The HTTP status (404, 403, 409) is chosen at the API edge (`crate::ha_api`).

use archive::EpochError;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No configured node of that name (a hello, a token peer check).
    #[error("unknown node {0:?}")]
    UnknownNode(String),
    /// The token peer may not speak for that node.
    #[error("peer {peer} may not speak for node {node}")]
    MayNotSpeakFor { peer: String, node: String },

    // The takeover gates.
    #[error("unknown node {0:?}: not a clone")]
    UnknownClone(String),
    #[error("{node} is already MAIN at epoch {epoch}")]
    AlreadyMain { node: String, epoch: u64 },
    #[error("{0} is not a clone")]
    NotAClone(String),
    #[error("{0} is Disabled: excluded from takeover")]
    Disabled(String),
    #[error("{0} is Broken: rejoin it first")]
    Broken(String),
    #[error(
        "{0} is rejoining: not eligible until it has restored and verified the latest generation"
    )]
    Rejoining(String),
    #[error("{0} is a Spare: not eligible until a takeover activates it")]
    Spare(String),
    #[error("the epoch moved from {got} to {now} since {node} looked: another takeover happened")]
    EpochMoved { node: String, got: u64, now: u64 },
    #[error("{node} asked at an epoch it was never granted: {error}")]
    EpochNotGranted { node: String, error: EpochError },
    #[error("clone {other} holds a newer verified generation ({theirs}) than {node} ({}): take over there, or force", .mine.as_deref().unwrap_or("none"))]
    NewerClone {
        other: String,
        theirs: String,
        node: String,
        mine: Option<String>,
    },
    /// The epoch cannot grow any more.
    #[error("{0}")]
    EpochExhausted(EpochError),

    // Rejoin.
    #[error("{node} is the main at epoch {epoch}: switch over to a clone first")]
    MainCannotRejoin { node: String, epoch: u64 },
    #[error("{0} has no [[importer]] entry in the PBS config: add one so the PBS can restore it")]
    NoImporterEntry(String),

    // Fencing of notifications.
    #[error("node {node} is Broken (fenced; epoch now {epoch}): demote")]
    NotifyFromBroken { node: String, epoch: u64 },
    #[error("node {node} is rejoining as a clone (epoch {epoch}): demote")]
    NotifyFromRejoining { node: String, epoch: u64 },
    #[error("{error} from {node}: demote")]
    NotifyStale { node: String, error: EpochError },
    #[error("{error} (from {node}): refused")]
    NotifyEpoch { node: String, error: EpochError },
    #[error("{node} is not the main ({main} is, epoch {epoch}): demote")]
    NotifyNotMain {
        node: String,
        main: String,
        epoch: u64,
    },
}

/// A coordinator request that did not go through.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The new state could not be saved (nothing changed).
    #[error("cannot save the coordinator: {0}")]
    Save(String),
    /// The shared store (etcd) cannot be reached, or kept changing: nothing was decided.
    #[error("{0}")]
    Unavailable(String),
}

impl CoordError {
    /// The refusal, if it was one.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            CoordError::Refused(r) => Some(r),
            CoordError::Save(_) | CoordError::Unavailable(_) => None,
        }
    }
}
