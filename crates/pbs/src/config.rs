//! `pbs` configuration file (TOML). Unknown keys are errors that name the key.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub archive: ArchiveSection,
    #[serde(default)]
    pub retention: Retention,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveSection {
    /// Where the archive lives.
    pub path: Option<PathBuf>,
}

/// Retention policy for `pbs archive prune` (flags override it).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
}

pub fn load(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named() {
        let e = toml::from_str::<Config>("[archive]\npaht = \"/x\"\n").unwrap_err();
        assert!(e.to_string().contains("paht"), "{e}");
        let c: Config =
            toml::from_str("[archive]\npath = \"/x\"\n[retention]\nkeep_last = 3\n").unwrap();
        assert_eq!(c.archive.path, Some(PathBuf::from("/x")));
        assert_eq!(c.retention.keep_last, Some(3));
    }
}
