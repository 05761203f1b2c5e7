//! Prune: a retention policy turns the list of generations into a plan (keep
//! or remove, with the reasons), which `--dry-run` prints and the real run
//! applies. The newest generation of every source is always kept.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::archive::Archive;
use crate::error::{Error, Result};
use crate::manifest::{self, GenRecord};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
}

impl Retention {
    pub fn is_empty(&self) -> bool {
        *self == Retention::default()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlanItem {
    pub generation: String,
    pub source: String,
    pub seq: u64,
    pub taken_at_ns: i64,
    pub keep: bool,
    pub reasons: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PrunePlan {
    /// Per source, newest first.
    pub items: Vec<PlanItem>,
}

impl PrunePlan {
    pub fn removed(&self) -> impl Iterator<Item = &PlanItem> {
        self.items.iter().filter(|i| !i.keep)
    }
}

impl fmt::Display for PrunePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for i in &self.items {
            let verdict = if i.keep { "keep  " } else { "remove" };
            writeln!(f, "{verdict} {:<24} {}", i.generation, i.reasons.join(", "))?;
        }
        Ok(())
    }
}

fn at(ns: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(ns as i128).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Build the plan for these records (any sources) under `pol`.
pub fn plan(records: &[GenRecord], pol: &Retention) -> PrunePlan {
    let mut by_source: BTreeMap<&str, Vec<&GenRecord>> = BTreeMap::new();
    for r in records {
        by_source.entry(r.source.as_str()).or_default().push(r);
    }
    type Bucket = fn(i64) -> i64;
    let rules: [(&str, Option<u32>, Bucket); 5] = [
        ("last", pol.keep_last, |_| 0),
        ("hourly", pol.keep_hourly, |ns| {
            ns.div_euclid(3_600_000_000_000)
        }),
        ("daily", pol.keep_daily, |ns| {
            let d = at(ns);
            d.year() as i64 * 1000 + d.ordinal() as i64
        }),
        ("weekly", pol.keep_weekly, |ns| {
            let (y, w, _) = at(ns).to_iso_week_date();
            y as i64 * 100 + w as i64
        }),
        ("monthly", pol.keep_monthly, |ns| {
            let d = at(ns);
            d.year() as i64 * 100 + d.month() as i64
        }),
    ];
    let mut items = Vec::new();
    for (_, mut gens) in by_source {
        gens.sort_by_key(|r| std::cmp::Reverse((r.taken_at_ns, r.seq)));
        let newest = gens.iter().map(|r| r.seq).max();
        let mut reasons: Vec<Vec<String>> = vec![Vec::new(); gens.len()];
        for (name, count, bucket) in rules {
            let Some(n) = count else { continue };
            let mut kept = 0;
            let mut last: Option<i64> = None;
            for (i, r) in gens.iter().enumerate() {
                if kept >= n {
                    break;
                }
                let b = if name == "last" {
                    i as i64
                } else {
                    bucket(r.taken_at_ns)
                };
                if last != Some(b) {
                    last = Some(b);
                    kept += 1;
                    reasons[i].push(format!("{name} {kept}/{n}"));
                }
            }
        }
        for (r, mut why) in gens.into_iter().zip(reasons) {
            if Some(r.seq) == newest && why.is_empty() {
                why.push("newest of its source".into());
            }
            let keep = !why.is_empty();
            if !keep {
                why.push("not kept by any rule".into());
            }
            items.push(PlanItem {
                generation: r.id().to_string(),
                source: r.source.to_string(),
                seq: r.seq.0,
                taken_at_ns: r.taken_at_ns,
                keep,
                reasons: why,
            });
        }
    }
    PrunePlan { items }
}

impl Archive {
    pub fn prune_plan(&self, pol: &Retention) -> Result<PrunePlan> {
        if pol.is_empty() {
            return Err(Error::Invalid(
                "no retention rule given: nothing would be kept".into(),
            ));
        }
        let mut records = Vec::new();
        for g in self.generations()? {
            records.push(self.record(&g)?);
        }
        Ok(plan(&records, pol))
    }

    /// Remove the generations the plan marks; returns how many. Runs
    /// alongside ingests: a source's latest generation (a running ingest's
    /// delta base) is never removed, even by a plan made before it was.
    pub fn apply_prune(&self, plan: &PrunePlan) -> Result<usize> {
        let _shared = self.backend.lock("archive", false, true)?;
        let mut latest: BTreeMap<String, u64> = BTreeMap::new();
        for g in self.generations()? {
            let e = latest.entry(g.source.to_string()).or_insert(g.seq.0);
            *e = (*e).max(g.seq.0);
        }
        let mut n = 0;
        for i in plan.removed() {
            if latest.get(&i.source) == Some(&i.seq) {
                continue;
            }
            let source = crate::id::SourceName::new(&i.source).map_err(Error::Invalid)?;
            self.backend
                .remove(&manifest::gen_key(&source, crate::id::Seq(i.seq)))?;
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{ChunkId, Epoch, FileDigest, Seq, SourceName};
    use crate::manifest::{ChunkRef, GenStats};

    const H: i64 = 3_600_000_000_000;

    fn rec(source: &str, seq: u64, hours: i64) -> GenRecord {
        GenRecord {
            source: SourceName::new(source).unwrap(),
            seq: Seq(seq),
            epoch: Epoch(0),
            // 2026-01-01T00:00:00Z plus `hours`
            taken_at_ns: 1_767_225_600_000_000_000 + hours * H,
            committed_at_ns: 0,
            label: None,
            stats: GenStats::default(),
            manifest_len: 0,
            manifest_digest: FileDigest::of(b""),
            manifest_chunks: vec![ChunkRef(ChunkId::of(b""), 0)],
        }
    }

    fn kept(p: &PrunePlan) -> Vec<String> {
        p.items
            .iter()
            .filter(|i| i.keep)
            .map(|i| i.generation.clone())
            .collect()
    }

    #[test]
    fn keep_last_and_daily() {
        // Every 6 hours over 3 days: seq 1..=12.
        let recs: Vec<_> = (0..12).map(|i| rec("db", i + 1, i as i64 * 6)).collect();
        let p = plan(
            &recs,
            &Retention {
                keep_last: Some(2),
                ..Default::default()
            },
        );
        assert_eq!(kept(&p), ["db/12", "db/11"]);
        let p = plan(
            &recs,
            &Retention {
                keep_daily: Some(2),
                ..Default::default()
            },
        );
        // Newest of each of the two newest days: day 3 = seq 9..12, day 2 = 5..8.
        assert_eq!(kept(&p), ["db/12", "db/8"]);
        let p = plan(
            &recs,
            &Retention {
                keep_last: Some(1),
                keep_daily: Some(3),
                ..Default::default()
            },
        );
        assert_eq!(kept(&p), ["db/12", "db/8", "db/4"]);
        assert_eq!(p.items[0].reasons, ["last 1/1", "daily 1/3"]);
        assert_eq!(p.removed().count(), 9);
    }

    #[test]
    fn newest_is_always_kept_and_sources_are_separate() {
        let recs = vec![rec("a", 1, 0), rec("a", 2, 1), rec("b", 7, 0)];
        let p = plan(
            &recs,
            &Retention {
                keep_monthly: Some(0),
                ..Default::default()
            },
        );
        assert_eq!(kept(&p), ["a/2", "b/7"]);
        assert_eq!(p.items[0].reasons, ["newest of its source"]);
    }

    #[test]
    fn weekly_and_monthly_buckets() {
        // One a day for 60 days.
        let recs: Vec<_> = (0..60).map(|i| rec("s", i + 1, i as i64 * 24)).collect();
        let p = plan(
            &recs,
            &Retention {
                keep_monthly: Some(3),
                ..Default::default()
            },
        );
        // Jan 31 (seq 31), Feb 28 (seq 59), Mar 1 (seq 60).
        assert_eq!(kept(&p), ["s/60", "s/59", "s/31"]);
        let p = plan(
            &recs,
            &Retention {
                keep_weekly: Some(2),
                ..Default::default()
            },
        );
        // 2026-03-01 is a Sunday (end of ISO week 9): seq 60; week 8 ends Feb 22 = seq 53.
        assert_eq!(kept(&p), ["s/60", "s/53"]);
    }

    #[test]
    fn a_plan_older_than_the_latest_generation_never_removes_it() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("f"), b"one").unwrap();
        let ar = Archive::init(&t.path().join("a")).unwrap();
        let s = SourceName::new("s").unwrap();
        let opts = crate::ingest::IngestOptions::default();
        ar.ingest(&s, &src, &opts).unwrap();
        std::fs::write(src.join("f"), b"two").unwrap();
        ar.ingest(&s, &src, &opts).unwrap();
        let item = |seq: u64| PlanItem {
            generation: format!("s/{seq}"),
            source: "s".into(),
            seq,
            taken_at_ns: 0,
            keep: false,
            reasons: vec![],
        };
        let stale = PrunePlan {
            items: vec![item(2), item(1)],
        };
        assert_eq!(ar.apply_prune(&stale).unwrap(), 1);
        let left: Vec<String> = ar
            .generations()
            .unwrap()
            .iter()
            .map(|g| g.to_string())
            .collect();
        assert_eq!(left, ["s/2"]);
    }
}
