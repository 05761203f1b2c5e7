//! A tiny Prometheus registry (text exposition format 0.0.4), with no global state.
//!
//! A daemon makes one [`Metrics`], registers its series once at start-up and keeps the
//! handles: a [`Counter`] (a `u64` that only grows; name it `..._total`) or a [`Gauge`]
//! (an `f64`). Series may carry label pairs, e.g.
//! `pullback_bytes_received_total{peer="pbs"}`. Registering the same name and labels
//! again returns the same series.
//!
//! Durations are **gauges in seconds** (`..._seconds`, an `f64` stored as its bits), e.g.
//! `pullback_last_export_duration_seconds`; [`Gauge::set_duration`] does the conversion.
//! Timestamps are gauges of Unix seconds (`..._timestamp_seconds`).
//!
//! Names and label names are code, not input: characters Prometheus does not allow are
//! replaced by `_` rather than failing. [`Metrics::render`] gives the text;
//! [`Metrics::router`] serves it at `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use axum::Router;

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

#[derive(Debug)]
struct Family {
    help: String,
    kind: Kind,
    /// Rendered label set (`{a="x"}` or empty) → value cell.
    series: BTreeMap<String, Arc<AtomicU64>>,
}

/// A registry of counters and gauges. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    families: Arc<Mutex<BTreeMap<String, Family>>>,
}

/// A monotonically increasing `u64` series.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// An `f64` series that can go up and down (stored as its bits).
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicU64>);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }

    /// Sets the value to a duration in seconds.
    pub fn set_duration(&self, d: Duration) {
        self.set(d.as_secs_f64());
    }

    /// Adds `delta` (may be negative).
    pub fn add(&self, delta: f64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + delta).to_bits())
            });
    }

    /// The current value.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

fn sanitize(name: &str, allow_colon: bool) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || (allow_colon && c == ':') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn render_labels(labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let mut pairs: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (sanitize(k, false), escape_label_value(v)))
        .collect();
    pairs.sort();
    pairs.dedup_by(|a, b| a.0 == b.0);
    let inner: Vec<String> = pairs
        .into_iter()
        .map(|(k, v)| format!("{k}=\"{v}\""))
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn format_value(kind: Kind, bits: u64) -> String {
    match kind {
        Kind::Counter => bits.to_string(),
        Kind::Gauge => {
            let v = f64::from_bits(bits);
            if v.is_nan() {
                "NaN".into()
            } else if v == f64::INFINITY {
                "+Inf".into()
            } else if v == f64::NEG_INFINITY {
                "-Inf".into()
            } else {
                format!("{v}")
            }
        }
    }
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Family>> {
        // The map stays consistent even if a holder panicked: every change is one insert.
        self.families.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn series(
        &self,
        kind: Kind,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
    ) -> Arc<AtomicU64> {
        let name = sanitize(name, true);
        let key = render_labels(labels);
        let mut families = self.lock();
        let family = families.entry(name.clone()).or_insert_with(|| Family {
            help: help.to_owned(),
            kind,
            series: BTreeMap::new(),
        });
        if family.kind != kind {
            tracing::error!(
                "metric {name} is a {}, not a {}; this series is not exported",
                family.kind.as_str(),
                kind.as_str()
            );
            return Arc::new(AtomicU64::new(match kind {
                Kind::Counter => 0,
                Kind::Gauge => 0f64.to_bits(),
            }));
        }
        family
            .series
            .entry(key)
            .or_insert_with(|| Arc::new(AtomicU64::new(0)))
            .clone()
    }

    /// The counter `name` (no labels), created at 0 if new.
    pub fn counter(&self, name: &str, help: &str) -> Counter {
        self.counter_with(name, help, &[])
    }

    /// The counter `name` with `labels`, created at 0 if new.
    pub fn counter_with(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Counter {
        Counter(self.series(Kind::Counter, name, help, labels))
    }

    /// The gauge `name` (no labels), created at 0 if new.
    pub fn gauge(&self, name: &str, help: &str) -> Gauge {
        self.gauge_with(name, help, &[])
    }

    /// The gauge `name` with `labels`, created at 0 if new.
    pub fn gauge_with(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Gauge {
        Gauge(self.series(Kind::Gauge, name, help, labels))
    }

    /// All series in the text exposition format: per metric a `# HELP` and a `# TYPE`
    /// line, then one line per series, metrics sorted by name.
    pub fn render(&self) -> String {
        let families = self.lock();
        let mut out = String::new();
        for (name, family) in families.iter() {
            let _ = writeln!(out, "# HELP {name} {}", escape_help(&family.help));
            let _ = writeln!(out, "# TYPE {name} {}", family.kind.as_str());
            for (labels, cell) in &family.series {
                let value = format_value(family.kind, cell.load(Ordering::Relaxed));
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        }
        out
    }

    /// A router serving [`Metrics::render`] at `GET /metrics` (merge it into the
    /// daemon's router; it needs no token).
    pub fn router(&self) -> Router {
        let metrics = self.clone();
        Router::new().route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { ([(CONTENT_TYPE, CONTENT_TYPE_TEXT)], metrics.render()) }
            }),
        )
    }
}

impl fmt::Display for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_help_type_and_values() {
        let m = Metrics::new();
        let rx = m.counter_with(
            "pullback_bytes_received_total",
            "Bytes received from peers.",
            &[("peer", "pbs")],
        );
        rx.add(1500);
        m.counter_with(
            "pullback_bytes_received_total",
            "ignored second help",
            &[("peer", "pbs")],
        )
        .inc();
        m.counter_with(
            "pullback_bytes_received_total",
            "",
            &[("peer", "odd \"name\"\\\n")],
        )
        .add(2);
        let g = m.gauge(
            "pullback_last_export_duration_seconds",
            "Duration of the last export.\nIn seconds.",
        );
        g.set_duration(Duration::from_millis(1250));
        m.gauge("pullback_up", "1 when up.").set(1.0);
        m.gauge("pullback_nan", "not a number").set(f64::NAN);
        m.gauge("bad-name.x", "sanitised").add(-2.5);

        let text = m.render();
        assert!(
            text.contains(
                "# HELP bad_name_x sanitised\n# TYPE bad_name_x gauge\nbad_name_x -2.5\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "# HELP pullback_bytes_received_total Bytes received from peers.\n\
             # TYPE pullback_bytes_received_total counter\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("pullback_bytes_received_total{peer=\"pbs\"} 1501\n"),
            "{text}"
        );
        assert!(
            text.contains("pullback_bytes_received_total{peer=\"odd \\\"name\\\"\\\\\\n\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("# HELP pullback_last_export_duration_seconds Duration of the last export.\\nIn seconds.\n"), "{text}");
        assert!(text.contains("# TYPE pullback_last_export_duration_seconds gauge\npullback_last_export_duration_seconds 1.25\n"), "{text}");
        assert!(text.contains("pullback_up 1\n"), "{text}");
        assert!(text.contains("pullback_nan NaN\n"), "{text}");
        assert_eq!(rx.get(), 1501);
        // Every line is a comment or `name[{labels}] value`.
        for line in text.lines() {
            assert!(
                line.starts_with("# ") || line.split(' ').count() >= 2,
                "{line}"
            );
        }
    }

    #[test]
    fn kind_clash_is_not_exported() {
        let m = Metrics::new();
        m.counter("x_total", "a counter").add(3);
        m.gauge("x_total", "now a gauge").set(9.0);
        let text = m.render();
        assert!(
            text.contains("x_total 3\n") && !text.contains(" 9"),
            "{text}"
        );
    }
}
