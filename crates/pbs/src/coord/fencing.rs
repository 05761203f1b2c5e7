//! Fencing of `/v1/notify`: only the main, at exactly the current epoch, may notify.

use archive::{Epoch, EpochError};
use wire::ha::NodeStatus;
use wire::server::ApiError;

use super::{conflict, Coordinator};

impl Coordinator {
    /// Fencing of `/v1/notify`: refuses a Broken node, a node that is not the main, and
    /// an epoch other than the current one ([`Epoch::check`]).
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
                if n.status == NodeStatus::Rejoining {
                    return Err(conflict(format!(
                        "node {node} is rejoining as a clone (epoch {cur}): demote"
                    )));
                }
            }
            match Epoch::check(epoch, cur) {
                Err(e @ EpochError::Stale { .. }) => {
                    return Err(conflict(format!("{e} from {node}: demote")))
                }
                Err(e) => return Err(conflict(format!("{e} (from {node}): refused"))),
                Ok(()) => {}
            }
            if let Some(m) = main.filter(|m| m != node) {
                return Err(conflict(format!(
                    "{node} is not the main ({m} is, epoch {cur}): demote"
                )));
            }
            Ok(())
        })
    }
}
