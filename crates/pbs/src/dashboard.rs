//! The dashboard (`GET /` on the PBS): plain HTML, no JavaScript, from a maud template.
//! It shows the coordinator's state (epoch, main, nodes, a needed clone, the last
//! takeovers) and the archive's report (`GET /v1/status`).

use maud::html;
use serde_json::Value;
use wire::ha::NodeView;
use wire::html::{header_row, page};

use crate::coord::{clone_needed_text, CoordState, SHOW_TAKEOVERS};

const CSS: &str = "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}\
    td,th{border:1px solid #999;padding:.3em .6em}.Broken{color:#b00}.Leader{color:#070}";

/// One source's group as the page shows it: its source (none on a PBS without sources) and
/// its coordinator's state.
pub struct GroupView<'a> {
    pub source: Option<&'a str>,
    pub state: &'a CoordState,
}

/// The page, from every group's coordinator state, the node views and the status report.
pub fn render(groups: &[GroupView<'_>], nodes: &[NodeView], report: &Value) -> String {
    let text = |v: &Value, or: &'static str| v.as_str().map_or(or.to_string(), str::to_string);
    let empty = CoordState::default();
    let first = groups.first().map_or(&empty, |g| g.state);
    // The last takeovers of every group, newest first.
    let mut takeovers: Vec<_> = groups
        .iter()
        .flat_map(|g| g.state.takeovers.iter().rev())
        .collect();
    if groups.len() > 1 {
        takeovers.sort_by(|a, b| b.at.cmp(&a.at));
    }
    takeovers.truncate(SHOW_TAKEOVERS);
    let body = html! {
        h1 { "pullback backup server" }
        @if groups.len() > 1 {
            p { "Archive status " b { (text(&report["status"], "")) } }
            ul {
                @for g in groups {
                    li {
                        "Source " b { (g.source.unwrap_or("-")) }
                        ": epoch " b { (g.state.epoch) }
                        ", main " b { (g.state.main.as_deref().unwrap_or("none")) }
                    }
                }
            }
        } @else {
            p {
                "Epoch " b { (first.epoch) }
                ", main " b { (first.main.as_deref().unwrap_or("none")) }
                ", archive status " b { (text(&report["status"], "")) }
            }
        }
        h2 { "Nodes" }
        table {
            (header_row(&["node", "kind", "role", "status", "epoch", "generation", "last seen"]))
            @for n in nodes {
                tr {
                    td { (n.name) } td { (n.kind) } td { (n.role) }
                    td class=(n.status) { (n.status) }
                    td { (n.epoch) }
                    td { (n.generation.as_deref().unwrap_or("-")) }
                    td { (n.last_seen.as_deref().unwrap_or("-")) }
                }
            }
        }
        h2 { "Sources" }
        table {
            (header_row(&["source", "newest", "taken at", "age (s)", "last failure"]))
            @for s in report["sources"].as_array().into_iter().flatten() {
                tr {
                    td { (text(&s["name"], "")) }
                    td { (text(&s["newest"]["generation"], "none")) }
                    td { (text(&s["newest"]["taken_at"], "-")) }
                    td { (s["age_secs"].to_string()) }
                    td { (text(&s["last_failure"]["detail"], "-")) }
                }
            }
        }
        @for g in groups {
            @if let Some(c) = &g.state.clone_needed {
                p class="Broken" {
                    b { "A new clone is needed" }
                    @if groups.len() > 1 { " for source " (g.source.unwrap_or("-")) }
                    " since the takeover at epoch " (c.epoch) " (" (c.at) "): " (clone_needed_text(c))
                }
            }
        }
        h2 { "Takeovers" }
        table {
            (header_row(&["at", "node", "old main", "epoch", "forced", "by", "new clone"]))
            @for t in &takeovers {
                tr {
                    td { (t.at) } td { (t.node) }
                    td { (t.old_main.as_deref().unwrap_or("-")) }
                    td { (t.epoch) }
                    td { @if t.forced { b { "forced" } } @else { "no" } }
                    td { (t.by) } td { (t.new_clone) }
                }
            }
        }
    };
    page("pullback PBS", CSS, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::ha::{CloneNeeded, NodeKind, NodeStatus, Role, TakeoverBy, TakeoverRecord};

    fn fixture() -> (CoordState, Vec<NodeView>, serde_json::Value) {
        let mut st = CoordState {
            epoch: 7,
            main: Some("c<1>".into()),
            ..Default::default()
        };
        st.clone_needed = Some(CloneNeeded {
            at: "2026-01-01T00:00:00Z".into(),
            epoch: 7,
            new_main: "c<1>".into(),
            old_main: Some("main1".into()),
            hook: Some("/bin/hook \"x\"".into()),
            outcome: None,
            ok: None,
        });
        for (i, by) in [TakeoverBy::Page, TakeoverBy::Api, TakeoverBy::Auto]
            .into_iter()
            .enumerate()
        {
            st.takeovers.push(TakeoverRecord {
                at: format!("2026-01-0{}T00:00:00Z", i + 1),
                node: "c<1>".into(),
                old_main: (i != 1).then(|| "main&1".into()),
                epoch: 5 + i as u64,
                forced: i == 2,
                by,
                new_clone: "spare c2 activated".into(),
            });
        }
        let nodes = vec![
            NodeView {
                name: "c<1>".into(),
                kind: NodeKind::Importer,
                role: Role::Main,
                status: NodeStatus::Leader,
                epoch: 7,
                generation: Some("db/3".into()),
                last_seen: Some("2026-01-01T00:00:00Z".into()),
            },
            NodeView {
                name: "main&1".into(),
                kind: NodeKind::Exporter,
                role: Role::Backup,
                status: NodeStatus::Broken,
                epoch: 7,
                generation: None,
                last_seen: None,
            },
        ];
        let report = serde_json::json!({
            "status": "ok <fine>",
            "sources": [
                {"name": "db", "newest": {"generation": "db/3", "taken_at": "2026-01-01T00:00:00Z"},
                 "age_secs": 12, "last_failure": {"detail": "bad \"thing\" & <more>"}},
                {"name": "empty", "newest": null, "age_secs": null, "last_failure": null}
            ]
        });
        (st, nodes, report)
    }

    /// Byte for byte what the `format!` version wrote for the same state (its `'` escape
    /// aside, which none of these values has).
    #[test]
    fn the_page_is_what_it_was_and_escapes_every_value() {
        let (st, nodes, report) = fixture();
        let one = [GroupView {
            source: Some("db"),
            state: &st,
        }];
        assert_eq!(
            render(&one, &nodes, &report),
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>pullback PBS</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #999;padding:.3em .6em}.Broken{color:#b00}.Leader{color:#070}</style></head><body><h1>pullback backup server</h1><p>Epoch <b>7</b>, main <b>c&lt;1&gt;</b>, archive status <b>ok &lt;fine&gt;</b></p><h2>Nodes</h2><table>\
         <tr><th>node</th><th>kind</th><th>role</th><th>status</th><th>epoch</th><th>generation</th><th>last seen</th></tr>\
         <tr><td>c&lt;1&gt;</td><td>importer</td><td>MAIN</td><td class=\"Leader\">Leader</td><td>7</td><td>db/3</td><td>2026-01-01T00:00:00Z</td></tr>\
         <tr><td>main&amp;1</td><td>exporter</td><td>BACKUP</td><td class=\"Broken\">Broken</td><td>7</td><td>-</td><td>-</td></tr></table><h2>Sources</h2><table>\
         <tr><th>source</th><th>newest</th><th>taken at</th><th>age (s)</th><th>last failure</th></tr>\
         <tr><td>db</td><td>db/3</td><td>2026-01-01T00:00:00Z</td><td>12</td><td>bad &quot;thing&quot; &amp; &lt;more&gt;</td></tr>\
         <tr><td>empty</td><td>none</td><td>-</td><td>null</td><td>-</td></tr></table><p class=\"Broken\"><b>A new clone is needed</b> since the takeover at epoch 7 (2026-01-01T00:00:00Z): on_clone_needed hook /bin/hook &quot;x&quot; is running (or was cut short)</p><h2>Takeovers</h2><table>\
         <tr><th>at</th><th>node</th><th>old main</th><th>epoch</th><th>forced</th><th>by</th><th>new clone</th></tr>\
         <tr><td>2026-01-03T00:00:00Z</td><td>c&lt;1&gt;</td><td>main&amp;1</td><td>7</td><td><b>forced</b></td><td>auto</td><td>spare c2 activated</td></tr>\
         <tr><td>2026-01-02T00:00:00Z</td><td>c&lt;1&gt;</td><td>-</td><td>6</td><td>no</td><td>api</td><td>spare c2 activated</td></tr>\
         <tr><td>2026-01-01T00:00:00Z</td><td>c&lt;1&gt;</td><td>main&amp;1</td><td>5</td><td>no</td><td>page</td><td>spare c2 activated</td></tr></table></body></html>\n"
        );
    }

    #[test]
    fn several_groups_each_show_their_epoch_main_and_needed_clone() {
        let (st, nodes, report) = fixture();
        let other = CoordState {
            epoch: 2,
            main: Some("x1".into()),
            ..Default::default()
        };
        let two = [
            GroupView {
                source: Some("db"),
                state: &st,
            },
            GroupView {
                source: Some("books"),
                state: &other,
            },
        ];
        let page = render(&two, &nodes, &report);
        assert!(
            page.contains("<li>Source <b>db</b>: epoch <b>7</b>, main <b>c&lt;1&gt;</b></li>"),
            "{page}"
        );
        assert!(
            page.contains("<li>Source <b>books</b>: epoch <b>2</b>, main <b>x1</b></li>"),
            "{page}"
        );
        assert!(
            page.contains("A new clone is needed</b> for source db"),
            "{page}"
        );
        assert!(!page.contains("for source books"), "{page}");
    }
}
