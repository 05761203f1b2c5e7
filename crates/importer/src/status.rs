//! The clone's status (`GET /v1/status`, `STATE_DIR/status.json`) and `importer status`.

use std::process::ExitCode;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::server::status_path;
use crate::Config;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Applied {
    pub generation: String,
    pub taken_at: String,
    pub restored_at: String,
    /// Restore checked and both hooks passed.
    pub verified: bool,
    /// The PBS (its `[coordinator] name`) that notified this generation and that it was
    /// pulled from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Failure {
    pub generation: String,
    pub at: String,
    pub reason: String,
}

/// What `GET /v1/status` and `importer status` show.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    pub name: String,
    pub role: wire::ha::Role,
    pub status: wire::ha::NodeStatus,
    pub epoch: u64,
    /// The copy in the restore folder.
    pub last_valid: Option<Applied>,
    /// A generation being received or imported right now.
    pub importing: Option<String>,
    pub last_failure: Option<Failure>,
    /// The end of the last import's hook log.
    pub last_log: String,
    /// Whether the last import (restore, import and verify hooks) passed; `None` before
    /// the first one.
    #[serde(default)]
    pub last_import_ok: Option<bool>,
}

pub fn print_status(cfg: &Config, json: bool) -> Result<ExitCode> {
    let st: Option<Status> = wire::read_json(&status_path(cfg))?;
    let Some(st) = st else {
        wire::outln!(
            "importer {}: never started (no {})",
            cfg.name,
            status_path(cfg).display()
        )?;
        return Ok(ExitCode::from(1));
    };
    if json {
        wire::outln!("{}", serde_json::to_string_pretty(&st)?)?;
    } else {
        wire::outln!(
            "importer {}  role {}  status {}  epoch {}",
            st.name,
            st.role,
            st.status,
            st.epoch
        )?;
        match &st.last_valid {
            Some(v) => wire::outln!(
                "last valid: {} taken {} restored {} verified {}{}",
                v.generation,
                v.taken_at,
                v.restored_at,
                v.verified,
                v.from
                    .as_ref()
                    .map_or(String::new(), |f| format!(" from {f}"))
            )?,
            None => wire::outln!("last valid: none yet")?,
        }
        if let Some(i) = &st.importing {
            wire::outln!("importing: {i}")?;
        }
        if let Some(f) = &st.last_failure {
            wire::outln!("last failure: {} at {}: {}", f.generation, f.at, f.reason)?;
            if !st.last_log.trim().is_empty() {
                wire::outln!("--- last hook log (end) ---\n{}", st.last_log.trim_end())?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
