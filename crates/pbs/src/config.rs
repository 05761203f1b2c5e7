//! `pbs` configuration file (TOML). Unknown keys are errors that name the key.
//!
//! Besides the archive, retention and schedule, the PBS is the coordinator of takeover:
//! its nodes are the `[[source]]` exporters (by their `exporter.name`) and the
//! `[[importer]]` clones (by `name`; `disabled = true` excludes a clone from takeover).
//! Each node speaks to the coordinator with its own token in `[server] tokens`, whose
//! `peer` is the node's name (an exporter may also use its source's `notify_peer`).
//! `[coordinator] etcd = { endpoints, prefix, timeout_secs, main_lease_secs, ca, cert, key,
//! user, password_file }` keeps the coordinator's state in etcd, shared by several PBS (see
//! `coord::etcd`), over TLS and as an etcd user where configured; without it the state is
//! a file per group in `state_dir`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub archive: ArchiveSection,
    #[serde(default)]
    pub retention: Retention,
    /// Status and logs of the server.
    pub state_dir: Option<PathBuf>,
    /// Where `pbs serve` listens and the tokens it accepts.
    pub server: Option<wire::ListenConfig>,
    /// Sources: what to pull, from which exporter.
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
    /// Clones to push every generation to (also the nodes eligible for takeover).
    #[serde(default, rename = "importer")]
    pub importers: Vec<ImporterConfig>,
    #[serde(default)]
    pub schedule: Schedule,
    /// Switchover, balance and the automatic failover policy.
    #[serde(default)]
    pub failover: Failover,
    /// Sources this PBS keeps a second copy of, pulled from another PBS (`[[mirror]]`).
    #[serde(default, rename = "mirror")]
    pub mirrors: Vec<MirrorConfig>,
    /// Other PBS that mirror this one's sources: told of every new generation
    /// (`[[downstream]]`); their token peer (`name`) may read this archive.
    #[serde(default, rename = "downstream")]
    pub downstreams: Vec<wire::PeerConfig>,
    /// Where the coordinator keeps its state (`[coordinator]`): the state dir (default) or
    /// etcd, shared by several PBS.
    #[serde(default)]
    pub coordinator: CoordinatorConfig,
}

/// `[coordinator]`: without `etcd`, each group's state is a file in `state_dir`
/// (`coordinator.json`, `coordinator-<source>.json`). With `etcd`, it is one key per group
/// in that etcd cluster, changed by compare-and-swap: several PBS configured with the same
/// etcd, prefix and groups share one coordinator (see `coord::etcd`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    pub etcd: Option<EtcdConfig>,
}

/// `[coordinator] etcd = { endpoints, prefix, timeout_secs, main_lease_secs, ca, cert, key,
/// user, password_file }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// The etcd members' client URLs: all `http://host:2379`, or all `https://` (then `ca`
    /// is needed).
    pub endpoints: Vec<String>,
    /// The CA certificate (PEM) that signed the members' certificates (`https://` only).
    pub ca: Option<PathBuf>,
    /// This PBS's client certificate and its key (PEM), for members that ask for one
    /// (etcd's `--client-cert-auth`); both or neither, `https://` only.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The etcd user this PBS authenticates as (etcd's `auth enable`), with the password in
    /// `password_file`; `https://` only (a password never crosses the network in clear).
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Every key of this coordinator starts with it.
    #[serde(default = "default_etcd_prefix")]
    pub prefix: String,
    /// How long one etcd request may take before the PBS gives up (and refuses).
    #[serde(default = "default_etcd_timeout")]
    pub timeout_secs: u64,
    /// The TTL of the lease the main's key `<prefix>/main/<group>` is held under, renewed
    /// by each hello or notification of the main (default: `[failover] after_secs`).
    pub main_lease_secs: Option<u64>,
}

impl EtcdConfig {
    /// Whether the members are reached over TLS (`https://` endpoints).
    pub fn tls(&self) -> bool {
        self.endpoints.iter().any(|u| u.starts_with("https://"))
    }

    /// The endpoints' scheme and what goes with it: one scheme for all, the CA and client
    /// certificate only with `https://`, a user only with its password and over TLS.
    fn check(&self) -> Result<()> {
        if let Some(bad) = self
            .endpoints
            .iter()
            .find(|u| !u.starts_with("http://") && !u.starts_with("https://"))
        {
            bail!("[coordinator] etcd endpoint {bad:?} is not an http:// or https:// URL");
        }
        let tls = self.tls();
        if tls && self.endpoints.iter().any(|u| u.starts_with("http://")) {
            bail!("[coordinator] etcd endpoints mix http:// and https://: use one for all");
        }
        if tls && self.ca.is_none() {
            bail!("[coordinator] etcd endpoints are https://: give `ca`, the CA certificate (PEM) that signed the members' certificates");
        }
        if !tls && (self.ca.is_some() || self.cert.is_some() || self.key.is_some()) {
            bail!("[coordinator] etcd `ca`, `cert` and `key` are for https:// endpoints, and these are http://");
        }
        if self.cert.is_some() != self.key.is_some() {
            bail!(
                "[coordinator] etcd: give both `cert` and `key` (a client certificate), or neither"
            );
        }
        match (&self.user, &self.password_file) {
            (Some(_), None) => {
                bail!("[coordinator] etcd `user` needs `password_file`, a file holding its password")
            }
            (None, Some(_)) => bail!("[coordinator] etcd `password_file` needs `user`"),
            (Some(u), Some(_)) if u.is_empty() => bail!("[coordinator] etcd `user` is empty"),
            (Some(_), Some(_)) if !tls => bail!(
                "[coordinator] etcd `user` with http:// endpoints would send its password in clear: use https:// (with `ca`)"
            ),
            _ => Ok(()),
        }
    }
}

fn default_etcd_prefix() -> String {
    "/pullback".into()
}
fn default_etcd_timeout() -> u64 {
    5
}

/// `[[mirror]]`: keep the history of `source` that the PBS `from` holds, generation for
/// generation (same numbers, epochs and contents), pulled with the one engine: when `from` says a
/// generation is ready, at start, and on `schedule`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    pub source: String,
    /// The upstream PBS (its URL and the token it accepts from this PBS, whose peer name
    /// is in its `[[downstream]]`).
    pub from: wire::PeerConfig,
    /// 5-field cron (UTC): also look for new generations on this schedule.
    pub schedule: Option<String>,
}

/// `[failover]`: planned switchover (`pbs switchover`, `pbs balance`) and the optional
/// automatic failover policy (off by default).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failover {
    /// The node `pbs balance` makes the main (a `[[importer]]` name).
    pub preferred_leader: Option<String>,
    /// Take over automatically when the main has been silent for `after_secs`.
    #[serde(default)]
    pub auto: bool,
    /// Silence (no commit from its source, no hello or notification) after which the
    /// main counts as lost. Must exceed the exporter's export interval.
    #[serde(default = "default_after")]
    pub after_secs: u64,
    /// How long a switchover waits for the final generation to be verified on the target.
    #[serde(default = "default_switchover_timeout")]
    pub switchover_timeout_secs: u64,
    /// Run after a takeover (manual, forced or automatic) when no `spare` clone is left to
    /// activate: `PULLBACK_EPOCH`, `PULLBACK_NEW_MAIN`, `PULLBACK_OLD_MAIN`,
    /// `PULLBACK_GENERATION` (the newest generation of the old main's source); its output
    /// goes to `state_dir/logs/clone-needed-<epoch>.log`.
    pub on_clone_needed: Option<PathBuf>,
    /// A grant whose promotion the new main has not confirmed is retried
    /// (`POST /v1/ha/promote`) this often.
    #[serde(default = "default_promote_retry")]
    pub promote_retry_secs: u64,
}

impl Default for Failover {
    fn default() -> Self {
        Failover {
            preferred_leader: None,
            auto: false,
            after_secs: default_after(),
            switchover_timeout_secs: default_switchover_timeout(),
            on_clone_needed: None,
            promote_retry_secs: default_promote_retry(),
        }
    }
}

fn default_after() -> u64 {
    3 * 3600
}
fn default_switchover_timeout() -> u64 {
    600
}
fn default_promote_retry() -> u64 {
    30
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveSection {
    /// Where the archive lives; with `[archive.s3]`, the local folder for what stays on
    /// this host (staged writes, pins, locks) while packs and records go to the bucket.
    pub path: Option<PathBuf>,
    /// The archive on an S3-compatible object store (crates/objstore).
    pub s3: Option<objstore::S3Config>,
}

/// Retention policy for `pbs archive prune` and the scheduled prune.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    /// The exporter to pull from (its URL and the token it accepts from us).
    pub exporter: wire::PeerConfig,
    /// The token peer (in [server] tokens) allowed to notify for this source;
    /// default: the exporter's name.
    pub notify_peer: Option<String>,
    /// `pbs status` fails when the newest generation is older than this.
    #[serde(default = "default_max_age")]
    pub max_age_secs: u64,
    /// Pull attempts after a notification (exponential backoff between them).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
}

fn default_max_age() -> u64 {
    2 * 3600
}
fn default_attempts() -> u32 {
    5
}

/// A clone: where to push (its URL and the token it accepts from us) and whether it may
/// take over. Its name is also the token peer (in `[server] tokens`) it uses to say hello
/// to the coordinator and to ask for a takeover.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImporterConfig {
    pub name: String,
    pub url: String,
    pub token: String,
    pub ca: Option<PathBuf>,
    /// Excluded from takeover (status Disabled); it still receives every generation.
    #[serde(default)]
    pub disabled: bool,
    /// A spare (status Spare): nothing is pushed to it and it is not eligible until a
    /// takeover activates it (the first spare, in config order): then it is a Follower and
    /// is pushed the latest generation at once. Activation is kept in coordinator.json.
    #[serde(default)]
    pub spare: bool,
    /// The argon2 PHC hash of this clone's takeover password (the same as its
    /// `[takeover] password_hash`): a takeover asked with the clone's token is granted only
    /// with the password, so the token in `importer.toml` alone cannot take over.
    pub takeover_password_hash: Option<String>,
    /// The source whose group this node belongs to (it receives that source's generations,
    /// and may take over as its main). Default: the only `[[source]]`; required when there
    /// are several.
    pub source: Option<String>,
    /// This node's exporter (its URL and the token it accepts from this PBS): once the node
    /// is MAIN (a takeover, a switchover), the PBS pulls the source's next generations from
    /// it, into the same history. Not needed for a node that is a `[[source]]` exporter.
    pub exporter: Option<NodeExporter>,
}

/// `[[importer]] exporter = { url, token, ca }`: where the node's exporter listens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeExporter {
    pub url: String,
    pub token: String,
    pub ca: Option<PathBuf>,
}

impl Config {
    /// Every source this PBS holds: its `[[source]]`s, then its `[[mirror]]`s.
    pub fn source_names(&self) -> impl Iterator<Item = &str> {
        self.sources
            .iter()
            .map(|s| s.name.as_str())
            .chain(self.mirrors.iter().map(|m| m.source.as_str()))
    }
}

impl ImporterConfig {
    pub fn peer(&self) -> wire::PeerConfig {
        wire::PeerConfig {
            name: self.name.clone(),
            url: self.url.clone(),
            token: self.token.clone(),
            ca: self.ca.clone(),
        }
    }
}

/// Housekeeping of `pbs serve`, as 5-field cron expressions (UTC).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Prune by [retention], then gc.
    pub prune: Option<String>,
    /// Verify the archive.
    pub verify: Option<String>,
    /// Full verify (every byte) instead of quick.
    #[serde(default)]
    pub verify_full: bool,
}

pub fn load(path: &Path) -> Result<Config> {
    let mut c: Config = wire::load_toml(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let fix = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    };
    if let Some(p) = &mut c.archive.path {
        fix(p);
    }
    if let Some(p) = c
        .archive
        .s3
        .as_mut()
        .and_then(|s| s.secret_access_key_file.as_mut())
    {
        fix(p);
    }
    if let Some(p) = &mut c.state_dir {
        fix(p);
    }
    if let Some(e) = &mut c.coordinator.etcd {
        for p in [&mut e.ca, &mut e.cert, &mut e.key, &mut e.password_file]
            .into_iter()
            .flatten()
        {
            fix(p);
        }
    }
    if let Some(s) = &mut c.server {
        s.resolve_paths(base);
    }
    for m in &mut c.mirrors {
        m.from.resolve_paths(base);
        archive::SourceName::new(&m.source)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("config {}: [[mirror]] source", path.display()))?;
        if c.sources.iter().any(|s| s.name == m.source) {
            bail!(
                "config {}: [[mirror]] {} is also a [[source]]: a source has one history, pulled either from its nodes or from another PBS",
                path.display(),
                m.source
            );
        }
    }
    for d in &mut c.downstreams {
        d.resolve_paths(base);
    }
    for s in &mut c.sources {
        s.exporter.resolve_paths(base);
        archive::SourceName::new(&s.name)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("config {}: [[source]] name", path.display()))?;
    }
    // A PBS that only mirrors feeds clones of its mirrored sources (one group).
    let only_mirrors = c.sources.is_empty();
    let clone_sources: Vec<String> = if only_mirrors {
        c.mirrors.iter().map(|m| m.source.clone()).collect()
    } else {
        c.sources.iter().map(|s| s.name.clone()).collect()
    };
    let only_source = match clone_sources.as_slice() {
        [s] => Some(s.clone()),
        _ => None,
    };
    for i in &mut c.importers {
        if let Some(ca) = &mut i.ca {
            fix(ca);
        }
        let kind = if only_mirrors {
            "[[mirror]]"
        } else {
            "[[source]]"
        };
        match &i.source {
            None if clone_sources.len() > 1 => bail!(
                "config {}: [[importer]] {}: say which {kind} it is a clone of (source = ...): there are several",
                path.display(),
                i.name
            ),
            None => i.source = only_source.clone(),
            Some(s) if !clone_sources.contains(s) => bail!(
                "config {}: [[importer]] {}: source = {s:?} is not a {kind} {}",
                path.display(),
                i.name,
                if only_mirrors { "source" } else { "name" }
            ),
            Some(_) => {}
        }
        if let Some(ca) = i.exporter.as_mut().and_then(|e| e.ca.as_mut()) {
            fix(ca);
        }
        if i.exporter.is_some() && c.sources.iter().any(|s| s.exporter.name == i.name) {
            bail!(
                "config {}: [[importer]] {} has an exporter, but it is already the exporter of a [[source]]: give it once",
                path.display(),
                i.name
            );
        }
        if let Some(h) = &i.takeover_password_hash {
            crate::grant::check_hash(h).with_context(|| {
                format!(
                    "config {}: [[importer]] {} takeover_password_hash",
                    path.display(),
                    i.name
                )
            })?;
        }
    }
    if let Some(e) = &c.coordinator.etcd {
        if e.endpoints.is_empty() {
            bail!(
                "config {}: [coordinator] etcd needs at least one endpoint",
                path.display()
            );
        }
        e.check()
            .with_context(|| format!("config {}", path.display()))?;
        if !e.prefix.starts_with('/') || e.prefix.ends_with('/') {
            bail!(
                "config {}: [coordinator] etcd prefix {:?} must start with / and not end with /",
                path.display(),
                e.prefix
            );
        }
        if e.timeout_secs == 0 || e.main_lease_secs == Some(0) {
            bail!(
                "config {}: [coordinator] etcd timeout_secs and main_lease_secs must be at least 1",
                path.display()
            );
        }
    }
    if c.failover.auto && c.failover.after_secs == 0 {
        bail!(
            "config {}: failover.after_secs must be at least 1",
            path.display()
        );
    }
    if let Some(h) = &mut c.failover.on_clone_needed {
        fix(h);
    }
    if let Some(p) = &c.failover.preferred_leader {
        if !c.importers.iter().any(|i| &i.name == p) {
            bail!(
                "config {}: failover.preferred_leader = {p:?} is not an [[importer]] name",
                path.display()
            );
        }
    }
    let mut names: Vec<&str> = c.sources.iter().map(|s| s.name.as_str()).collect();
    names.sort();
    if names.windows(2).any(|w| w[0] == w[1]) {
        bail!(
            "config {}: two [[source]] sections have the same name",
            path.display()
        );
    }
    // A node belongs to one group: the source it exports first, or the one it is a clone of.
    let mut exporters: Vec<&str> = c.sources.iter().map(|s| s.exporter.name.as_str()).collect();
    exporters.sort();
    if let Some(w) = exporters.windows(2).find(|w| w[0] == w[1]) {
        bail!(
            "config {}: node {} is the exporter of two [[source]]s: a node belongs to one source's group",
            path.display(),
            w[0]
        );
    }
    for i in &c.importers {
        if let Some(s) = c
            .sources
            .iter()
            .find(|s| s.exporter.name == i.name && Some(&s.name) != i.source.as_ref())
        {
            bail!(
                "config {}: [[importer]] {} is the exporter of [[source]] {}, so its source must be {:?}",
                path.display(),
                i.name,
                s.name,
                s.name
            );
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named() {
        let e = toml::from_str::<Config>("[archive]\npaht = \"/x\"\n").unwrap_err();
        assert!(e.to_string().contains("paht"), "{e}");
        let c: Config = toml::from_str(
            "[archive]\npath = \"/x\"\n[retention]\nkeep_last = 3\n[[source]]\nname = \"db\"\nexporter = { name = \"e\", url = \"http://127.0.0.1:1\", token = \"0123456789abcdef\" }\n",
        )
        .unwrap();
        assert_eq!(c.archive.path, Some(PathBuf::from("/x")));
        assert_eq!(c.retention.keep_last, Some(3));
        assert_eq!(c.sources[0].max_age_secs, 7200);
    }

    #[test]
    fn the_coordinator_on_etcd_is_checked_at_load() {
        let dir = tempfile::tempdir().expect("tmp");
        let load_with = |etcd: &str| {
            let p = dir.path().join("pbs.toml");
            std::fs::write(&p, format!("[coordinator]\netcd = {{ {etcd} }}\n")).expect("write");
            load(&p)
        };
        let c = load_with(r#"endpoints = ["http://127.0.0.1:2379"]"#).expect("load");
        let e = c.coordinator.etcd.expect("etcd");
        assert_eq!(
            (e.prefix.as_str(), e.timeout_secs, e.main_lease_secs),
            ("/pullback", 5, None)
        );
        for (bad, says) in [
            ("endpoints = []", "at least one endpoint"),
            (
                r#"endpoints = ["ftp://h:2379"]"#,
                "not an http:// or https:// URL",
            ),
            (r#"endpoints = ["https://h:2379"]"#, "give `ca`"),
            (
                r#"endpoints = ["https://h:2379", "http://h2:2379"], ca = "ca.pem""#,
                "mix http:// and https://",
            ),
            (
                r#"endpoints = ["http://h:2379"], ca = "ca.pem""#,
                "are for https:// endpoints",
            ),
            (
                r#"endpoints = ["https://h:2379"], ca = "ca.pem", cert = "c.pem""#,
                "both `cert` and `key`",
            ),
            (
                r#"endpoints = ["https://h:2379"], ca = "ca.pem", user = "pb""#,
                "needs `password_file`",
            ),
            (
                r#"endpoints = ["http://h:2379"], user = "pb", password_file = "pw""#,
                "in clear",
            ),
            (
                r#"endpoints = ["http://h:2379"], prefix = "pullback""#,
                "must start with /",
            ),
            (
                r#"endpoints = ["http://h:2379"], prefix = "/p/""#,
                "not end with /",
            ),
            (
                r#"endpoints = ["http://h:2379"], timeout_secs = 0"#,
                "at least 1",
            ),
            (
                r#"endpoints = ["http://h:2379"], endpoint = "x""#,
                "endpoint",
            ),
        ] {
            let e = load_with(bad).expect_err(bad);
            assert!(format!("{e:#}").contains(says), "{bad}: {e:#}");
        }
        let c = load_with(
            r#"endpoints = ["https://h:2379"], ca = "ca.pem", cert = "/c.pem", key = "k.pem", user = "pb", password_file = "pw""#,
        )
        .expect("TLS and a user");
        let e = c.coordinator.etcd.expect("etcd");
        assert!(e.tls());
        assert_eq!(
            e.ca,
            Some(dir.path().join("ca.pem")),
            "relative to the config"
        );
        assert_eq!(e.cert, Some(PathBuf::from("/c.pem")));
        assert_eq!(e.password_file, Some(dir.path().join("pw")));
        assert!(load(&dir.path().join("none.toml")).is_err());
        let none: Config = toml::from_str("").expect("empty");
        assert!(none.coordinator.etcd.is_none());
    }

    #[test]
    fn importers_may_be_disabled() {
        let imp = |extra: &str| {
            toml::from_str::<Config>(&format!(
                "[[importer]]\nname = \"c1\"\nurl = \"http://127.0.0.1:2\"\ntoken = \"0123456789abcdef\"\n{extra}"
            ))
        };
        let c = imp("disabled = true\n").unwrap();
        assert!(c.importers[0].disabled);
        assert_eq!(c.importers[0].peer().url, "http://127.0.0.1:2");
        assert!(!imp("").unwrap().importers[0].disabled);
        assert!(imp("spare = true\n").unwrap().importers[0].spare);
        assert!(!imp("").unwrap().importers[0].spare);
        let e = imp("disable = true\n").unwrap_err();
        assert!(e.to_string().contains("disable"), "{e}");
    }

    #[test]
    fn a_pbs_that_only_mirrors_feeds_clones_of_its_mirrored_sources() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pbs.toml");
        let mirror = |name: &str| {
            format!(
                "[[mirror]]\nsource = \"{name}\"\nfrom = {{ name = \"pbs1\", url = \"http://127.0.0.1:1\", token = \"0123456789abcdef\" }}\n"
            )
        };
        let clone = |source: &str| {
            format!("[[importer]]\nname = \"c1\"\nurl = \"http://127.0.0.1:2\"\ntoken = \"0123456789abcdef\"\n{source}")
        };
        let load_text = |text: String| {
            std::fs::write(&path, text).unwrap();
            load(&path).map_err(|e| format!("{e:#}"))
        };
        // One mirrored source: the clone's source by default.
        let c = load_text(mirror("files") + &clone("")).unwrap();
        assert_eq!(c.importers[0].source.as_deref(), Some("files"));
        assert_eq!(c.source_names().collect::<Vec<_>>(), ["files"]);
        // Several: say which; it must be one of them.
        let two = mirror("files") + &mirror("books");
        let e = load_text(two.clone() + &clone("")).unwrap_err();
        assert!(e.contains("say which [[mirror]]"), "{e}");
        let c = load_text(two.clone() + &clone("source = \"books\"\n")).unwrap();
        assert_eq!(c.importers[0].source.as_deref(), Some("books"));
        let e = load_text(two + &clone("source = \"maps\"\n")).unwrap_err();
        assert!(e.contains("\"maps\" is not a [[mirror]] source"), "{e}");
    }
}
