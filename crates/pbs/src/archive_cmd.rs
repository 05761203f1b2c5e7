//! `pbs archive ...`: the archive commands, thin over the archive library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use archive::prune::Retention;
use archive::{Archive, Epoch, IngestOptions, SourceName};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::config::Config;

#[derive(Args)]
pub struct ArchiveArgs {
    #[command(subcommand)]
    cmd: ArchiveCmd,
}

#[derive(Subcommand)]
enum ArchiveCmd {
    /// Create an empty archive.
    Init,
    /// Commit a directory as the next generation of a source.
    Ingest {
        /// Source name: [A-Za-z0-9._-], 1 to 64 characters.
        #[arg(long)]
        source: String,
        /// Epoch the data was taken under (refused if lower than the source's).
        #[arg(long, default_value_t = 0)]
        epoch: u64,
        /// When the data was taken (RFC 3339); default: now.
        #[arg(long)]
        taken_at: Option<String>,
        /// Free text kept with the generation (e.g. a transaction id).
        #[arg(long)]
        label: Option<String>,
        /// Read every file, even those whose metadata is unchanged.
        #[arg(long)]
        reread: bool,
        /// Leave out paths matching this glob (relative to DIR; repeatable).
        #[arg(long = "exclude")]
        excludes: Vec<String>,
        /// Print the committed generation as JSON.
        #[arg(long)]
        json: bool,
        /// The directory to commit.
        dir: PathBuf,
    },
    /// List generations.
    List {
        /// Print the generations as JSON (an array).
        #[arg(long)]
        json: bool,
    },
    /// Show one generation (SOURCE/SEQ, SOURCE/latest or SOURCE) and its files.
    Show {
        /// The generation: SOURCE/SEQ, SOURCE/latest or SOURCE (its newest).
        gen: String,
        /// Print the generation and its entries as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check the archive: structure (quick) or every byte (--full).
    Verify {
        /// Also decode every chunk and check its SHA-256 and every pack's (reads everything).
        #[arg(long)]
        full: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove generations that the retention policy does not keep.
    Prune {
        /// Print the plan, remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Keep the newest N generations of each source (else [retention] keep_last).
        #[arg(long, value_name = "N")]
        keep_last: Option<u32>,
        /// Keep the newest of each of the last N hours (else [retention] keep_hourly).
        #[arg(long, value_name = "N")]
        keep_hourly: Option<u32>,
        /// Keep the newest of each of the last N days (else [retention] keep_daily).
        #[arg(long, value_name = "N")]
        keep_daily: Option<u32>,
        /// Keep the newest of each of the last N ISO weeks (else [retention] keep_weekly).
        #[arg(long, value_name = "N")]
        keep_weekly: Option<u32>,
        /// Keep the newest of each of the last N months (else [retention] keep_monthly).
        #[arg(long, value_name = "N")]
        keep_monthly: Option<u32>,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove data no generation uses.
    Gc {
        /// Print what would be freed, remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Fail at once instead of waiting while another gc runs (gc does not
        /// wait for ingests, restores or verifies).
        #[arg(long)]
        no_wait: bool,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restore a generation into an empty or missing directory.
    Restore {
        /// The generation: SOURCE/SEQ, SOURCE/latest or SOURCE (its newest).
        gen: String,
        /// The target directory: missing or empty.
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// Print what was restored as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub use wire::cli::fmt_time;

fn parse_time(s: &str) -> Result<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .with_context(|| {
            format!("--taken-at {s:?} is not an RFC 3339 time (e.g. 2026-11-22T01:00:00Z)")
        })?;
    Ok(t.unix_timestamp_nanos() as i64)
}

fn mb(b: u64) -> String {
    format!("{:.2} MB", b as f64 / 1e6)
}

fn print_json(v: &serde_json::Value) -> Result<()> {
    wire::outln!("{}", serde_json::to_string_pretty(v)?)?;
    Ok(())
}

fn record_json(r: &archive::GenRecord) -> serde_json::Value {
    json!({
        "generation": r.id().to_string(),
        "source": r.source.as_str(),
        "seq": r.seq.0,
        "epoch": r.epoch.0,
        "taken_at": fmt_time(r.taken_at_ns),
        "committed_at": fmt_time(r.committed_at_ns),
        "label": r.label,
        "files": r.stats.files,
        "dirs": r.stats.dirs,
        "symlinks": r.stats.symlinks,
        "bytes": r.stats.bytes,
        "files_read": r.stats.files_read,
        "bytes_read": r.stats.bytes_read,
        "new_chunks": r.stats.new_chunks,
        "new_deltas": r.stats.new_deltas,
        "added_bytes": r.stats.added_bytes,
    })
}

/// How [`open_archive`] treats a missing archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Open {
    Existing,
    Create,
    OrCreate,
}

/// The archive at `path`, or, with `[archive.s3]`, in the bucket (`path` then holds the
/// local scratch: staged writes, pins, locks).
pub fn open_archive(path: &Path, cfg: &Config, how: Open) -> Result<Archive> {
    let Some(s3) = &cfg.archive.s3 else {
        return Ok(match how {
            Open::Existing => Archive::open(path)?,
            Open::Create => Archive::init(path)?,
            Open::OrCreate => Archive::open_or_init(path)?,
        });
    };
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    let backend = std::sync::Arc::new(objstore::ObjectBackend::new(s3, path)?);
    Ok(match how {
        Open::Existing => Archive::with_backend(backend)?,
        Open::Create => Archive::init_on(backend)?,
        Open::OrCreate => Archive::open_or_init_on(backend)?,
    })
}

pub fn run(a: ArchiveArgs, path: Option<PathBuf>, cfg: &Config) -> Result<ExitCode> {
    let path = path.ok_or_else(|| {
        anyhow!("no archive given: pass --archive DIR or set [archive] path in --config")
    })?;
    let open = |p: &Path| open_archive(p, cfg, Open::Existing);
    match a.cmd {
        ArchiveCmd::Init => {
            let ar = open_archive(&path, cfg, Open::Create)?;
            wire::outln!("initialised archive {}", ar.backend().location())?;
        }
        ArchiveCmd::Ingest {
            source,
            epoch,
            taken_at,
            label,
            reread,
            excludes,
            json,
            dir,
        } => {
            let source = SourceName::new(&source).map_err(|e| anyhow!(e))?;
            let ar = open_archive(&path, cfg, Open::OrCreate)?;
            let opts = IngestOptions {
                epoch: Epoch(epoch),
                taken_at_ns: taken_at.as_deref().map(parse_time).transpose()?,
                label,
                reread,
                excludes,
            };
            let t = Instant::now();
            let rep = ar
                .ingest(&source, &dir, &opts)
                .with_context(|| format!("ingesting {} as {source}", dir.display()))?;
            for w in &rep.warnings {
                eprintln!("pbs: warning: {w}");
            }
            let r = &rep.record;
            if json {
                let mut v = record_json(r);
                v["seconds"] = json!(t.elapsed().as_secs_f64());
                v["warnings"] = json!(rep.warnings);
                print_json(&v)?;
            } else {
                wire::outln!(
                    "committed {} in {:.2} s: {} files, {}; read {} files ({}); added {} ({} new chunks, {} deltas)",
                    r.id(),
                    t.elapsed().as_secs_f64(),
                    r.stats.files,
                    mb(r.stats.bytes),
                    r.stats.files_read,
                    mb(r.stats.bytes_read),
                    mb(r.stats.added_bytes),
                    r.stats.new_chunks,
                    r.stats.new_deltas
                )?;
            }
        }
        ArchiveCmd::List { json } => {
            let ar = open(&path)?;
            let mut rows = Vec::new();
            for g in ar.generations()? {
                rows.push(
                    ar.record(&g)
                        .with_context(|| format!("reading generation {g}"))?,
                );
            }
            if json {
                print_json(&json!(rows.iter().map(record_json).collect::<Vec<_>>()))?;
            } else if rows.is_empty() {
                wire::outln!("no generations")?;
            } else {
                wire::outln!(
                    "{:<24} {:>6} {:<20} {:>8} {:>12} {:>12}",
                    "GENERATION",
                    "EPOCH",
                    "TAKEN AT",
                    "FILES",
                    "SIZE",
                    "ADDED"
                )?;
                for r in &rows {
                    wire::outln!(
                        "{:<24} {:>6} {:<20} {:>8} {:>12} {:>12}",
                        r.id().to_string(),
                        r.epoch.0,
                        fmt_time(r.taken_at_ns),
                        r.stats.files,
                        mb(r.stats.bytes),
                        mb(r.stats.added_bytes)
                    )?;
                }
            }
        }
        ArchiveCmd::Show { gen, json } => {
            let ar = open(&path)?;
            let g = ar.resolve(&gen)?;
            let r = ar.record(&g)?;
            let nodes = ar.manifest(&r)?;
            if json {
                let mut v = record_json(&r);
                v["entries"] = json!(nodes
                    .iter()
                    .map(|n| json!({
                        "path": n.path_lossy(),
                        "type": format!("{:?}", n.kind).to_lowercase(),
                        "mode": format!("{:o}", n.mode),
                        "size": n.size,
                        "sha256": n.digest.map(|d| d.to_hex()),
                        "target": (!n.target.is_empty()).then(|| String::from_utf8_lossy(&n.target).into_owned()),
                    }))
                    .collect::<Vec<_>>());
                print_json(&v)?;
            } else {
                wire::outln!(
                    "generation {}  epoch {}  taken {}  committed {}",
                    r.id(),
                    r.epoch,
                    fmt_time(r.taken_at_ns),
                    fmt_time(r.committed_at_ns)
                )?;
                if let Some(l) = &r.label {
                    wire::outln!("label {l}")?;
                }
                for n in &nodes {
                    let sig = n
                        .digest
                        .map(|d| d.to_hex())
                        .unwrap_or_else(|| "-".repeat(64));
                    let extra = if n.target.is_empty() {
                        String::new()
                    } else {
                        format!(" -> {}", String::from_utf8_lossy(&n.target))
                    };
                    wire::outln!(
                        "{:<7} {:>5o} {:>12} {sig} {}{extra}",
                        format!("{:?}", n.kind).to_lowercase(),
                        n.mode,
                        n.size,
                        n.path_lossy()
                    )?;
                }
            }
        }
        ArchiveCmd::Verify { full, json } => {
            let ar = open(&path)?;
            let t = Instant::now();
            let rep = ar.verify(full)?;
            if json {
                print_json(&serde_json::to_value(&rep)?)?;
            } else {
                wire::outln!(
                    "{} verify of {}: {} generations, {} packs, {} chunks checked in {:.2} s",
                    if full { "full" } else { "quick" },
                    path.display(),
                    rep.generations,
                    rep.packs,
                    rep.blobs_checked,
                    t.elapsed().as_secs_f64()
                )?;
                for p in &rep.problems {
                    wire::outln!("DAMAGED {}: {}", p.object, p.what)?;
                    for u in &p.used_by {
                        wire::outln!("    used by {u}")?;
                    }
                }
                if rep.problems.is_empty() {
                    wire::outln!("no problems found")?;
                }
            }
            if !rep.problems.is_empty() {
                return Ok(ExitCode::from(3));
            }
        }
        ArchiveCmd::Prune {
            dry_run,
            keep_last,
            keep_hourly,
            keep_daily,
            keep_weekly,
            keep_monthly,
            json,
        } => {
            let c = &cfg.retention;
            let pol = Retention {
                keep_last: keep_last.or(c.keep_last),
                keep_hourly: keep_hourly.or(c.keep_hourly),
                keep_daily: keep_daily.or(c.keep_daily),
                keep_weekly: keep_weekly.or(c.keep_weekly),
                keep_monthly: keep_monthly.or(c.keep_monthly),
            };
            if pol.is_empty() {
                bail!("no retention policy: give --keep-last/--keep-hourly/--keep-daily/--keep-weekly/--keep-monthly or [retention] in the config");
            }
            let ar = open(&path)?;
            let plan = ar.prune_plan(&pol)?;
            if json {
                print_json(&serde_json::to_value(&plan)?)?;
            } else {
                wire::out!("{plan}")?;
            }
            if !dry_run {
                let n = ar.apply_prune(&plan)?;
                if !json {
                    wire::outln!(
                        "removed {n} generations (run `pbs archive gc` to free their data)"
                    )?;
                }
            } else if !json {
                wire::outln!("dry run: nothing removed")?;
            }
        }
        ArchiveCmd::Gc {
            dry_run,
            no_wait,
            json,
        } => {
            let ar = open(&path)?;
            let plan = ar.gc_plan(!no_wait)?;
            if json {
                print_json(&serde_json::to_value(&plan)?)?;
            } else {
                wire::out!("{plan}")?;
            }
            if !dry_run {
                let freed = ar.gc(&plan, !no_wait)?;
                if !json {
                    wire::outln!("gc done: freed {}", mb(freed))?;
                }
            } else if !json {
                wire::outln!("dry run: nothing removed")?;
            }
        }
        ArchiveCmd::Restore { gen, to, json } => {
            let ar = open(&path)?;
            let g = ar.resolve(&gen)?;
            let t = Instant::now();
            let rep = ar
                .restore(&g, &to)
                .with_context(|| format!("restoring {g} to {}", to.display()))?;
            if json {
                print_json(
                    &json!({"generation": g.to_string(), "files": rep.files, "dirs": rep.dirs, "symlinks": rep.symlinks, "bytes": rep.bytes, "seconds": t.elapsed().as_secs_f64()}),
                )?;
            } else {
                wire::outln!(
                    "restored {g} to {} in {:.2} s: {} files, {} dirs, {} symlinks, {}",
                    to.display(),
                    t.elapsed().as_secs_f64(),
                    rep.files,
                    rep.dirs,
                    rep.symlinks,
                    mb(rep.bytes)
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
