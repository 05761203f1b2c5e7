//! The clone's takeover page (`GET`/`POST /takeover`): what a person reads before taking
//! over (the last valid backup, when its data was taken, the nodes), and the form.

use axum::http::StatusCode;
use maud::{html, Markup, Render};
use wire::ha::NodeView;
use wire::html::{header_row, page};

use crate::server::Status;

/// What the page shows.
pub struct View<'a> {
    /// This clone's name.
    pub name: &'a str,
    pub status: &'a Status,
    /// The coordinator's nodes, or why they could not be read.
    pub nodes: &'a Result<Vec<NodeView>, String>,
    /// The coordinator that listed them (the first listed PBS that answered).
    pub nodes_from: Option<&'a str>,
    /// The answer to a POST: its status and what to say.
    pub result: Option<&'a (StatusCode, String)>,
    /// The data-loss window of the last valid backup ([`data_loss_window`]).
    pub window: Option<String>,
    /// The form's single-use token.
    pub form_token: &'a str,
}

/// Now − `taken_at`, as `H h MM min SS s`.
pub fn data_loss_window(taken_at: &str) -> String {
    let parsed =
        time::OffsetDateTime::parse(taken_at, &time::format_description::well_known::Rfc3339);
    match parsed {
        Ok(t) => {
            let secs = (time::OffsetDateTime::now_utc() - t).whole_seconds().max(0);
            format!(
                "{} h {:02} min {:02} s",
                secs / 3600,
                (secs / 60) % 60,
                secs % 60
            )
        }
        Err(_) => "unknown".into(),
    }
}

const CSS: &str = "body{font-family:sans-serif;margin:2em;max-width:60em}\
    td,th{border:1px solid #999;padding:.3em .6em}table{border-collapse:collapse}\
    pre{background:#eee;padding:1em;overflow:auto}.ok{color:#070}.bad{color:#b00}\
    button{background:#c00;color:#fff;padding:.5em 1.5em;border:0}";

/// One row of the status table.
fn row(k: &str, v: impl Render) -> Markup {
    html! { tr { th { (k) } td { (v) } } }
}

/// The page.
pub fn render(v: &View) -> String {
    let st = v.status;
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let body = html! {
        h1 { "Takeover: clone " (v.name) }
        @if let Some((code, msg)) = v.result {
            p class=(if code.is_success() { "ok" } else { "bad" }) id="result" { b { (msg) } }
        }
        table {
            @match &st.last_valid {
                Some(l) => {
                    (row("Last valid backup, data taken at", &l.taken_at))
                    (row("Generation", &l.generation))
                    @if let Some(from) = &l.from {
                        (row("Pulled from (the PBS that notified it)", from))
                    }
                    (row("Restored at", &l.restored_at))
                    (row("Restore and verify passed", yes_no(l.verified && st.last_import_ok != Some(false))))
                    (row("Data-loss window (now − taken at)", v.window.as_deref().unwrap_or("unknown")))
                }
                None => (row("Last valid backup", "none yet")),
            }
            (row("Import running", st.importing.as_deref().map_or("no".to_string(), |g| format!("yes ({g})"))))
            @if let Some(f) = &st.last_failure {
                (row("Last failure", format!("{} at {}: {}", f.generation, f.at, f.reason)))
            }
            (row("Role", st.role.as_str()))
            (row("Epoch", st.epoch))
        }
        h2 { "Nodes" }
        @if let Some(from) = v.nodes_from {
            p { "as the coordinator " (from) " lists them" }
        }
        @match v.nodes {
            Ok(list) => table {
                (header_row(&["node", "kind", "role", "status", "epoch", "generation"]))
                @for n in list {
                    tr {
                        td { (n.name) } td { (n.kind) } td { (n.role) } td { (n.status) }
                        td { (n.epoch) } td { (n.generation.as_deref().unwrap_or("-")) }
                    }
                }
            },
            Err(e) => p { "coordinator not reachable: " (e) },
        }
        h2 { "Import log (end)" }
        pre { (st.last_log.trim_end()) }
        h2 { "Take over" }
        form method="post" action="/takeover" {
            input type="hidden" name="form_token" value=(v.form_token);
            label { "Takeover password " input type="password" name="password" autocomplete="off" required; }
            " "
            label {
                input type="checkbox" name="force" value="1";
                " force (skip the verified-restore, running-import and newer-clone checks)"
            }
            " "
            button type="submit" { "Take over" }
        }
        p { "The old main is fenced (Broken) and this clone becomes the main node." }
    };
    page("pullback takeover", CSS, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{Applied, Failure};
    use wire::ha::{NodeKind, NodeStatus, Role};

    /// A clone's status, the coordinator's nodes, the answer to a POST.
    type Case = (
        Status,
        Result<Vec<NodeView>, String>,
        Option<(StatusCode, String)>,
    );

    fn views() -> Vec<Case> {
        let full = Status {
            name: "c<1>".into(),
            role: Role::Backup,
            status: NodeStatus::Follower,
            epoch: 4,
            last_valid: Some(Applied {
                generation: "db/3".into(),
                taken_at: "2026-01-01T00:00:00Z".into(),
                restored_at: "2026-01-01T00:00:05Z".into(),
                verified: true,
                from: None,
            }),
            importing: Some("db/<4>".into()),
            last_failure: Some(Failure {
                generation: "db/2".into(),
                at: "2026-01-01T00:00:01Z".into(),
                reason: "hook \"x\" & <y>".into(),
            }),
            last_log: "line 1\n<script>\n\n".into(),
            last_import_ok: Some(false),
        };
        let nodes = vec![
            NodeView {
                name: "main&1".into(),
                kind: NodeKind::Exporter,
                role: Role::Main,
                status: NodeStatus::Leader,
                epoch: 4,
                generation: Some("db/3".into()),
                last_seen: None,
            },
            NodeView {
                name: "c<1>".into(),
                kind: NodeKind::Importer,
                role: Role::Backup,
                status: NodeStatus::Follower,
                epoch: 4,
                generation: None,
                last_seen: None,
            },
        ];
        vec![
            (
                full,
                Ok(nodes),
                Some((
                    StatusCode::CONFLICT,
                    "Takeover refused: a <b> & \"c\"".into(),
                )),
            ),
            (
                Status::default(),
                Err("no [coordinator] <configured>".into()),
                None,
            ),
            (
                Status {
                    last_valid: None,
                    ..Default::default()
                },
                Ok(vec![]),
                Some((StatusCode::OK, "Takeover done".into())),
            ),
        ]
    }

    fn page(i: usize) -> String {
        let v = views();
        let (st, nodes, result) = &v[i];
        render(&View {
            name: "c<1>",
            status: st,
            nodes,
            nodes_from: None,
            result: result.as_ref(),
            window: st
                .last_valid
                .as_ref()
                .map(|_| "1 h 02 min 03 s".to_string()),
            form_token: "tok123",
        })
    }
    /// Byte for byte what the `format!` version wrote for the same views (its `'` escape
    /// aside, which none of these values has): with a result, a failure and nodes; with
    /// nothing yet and no coordinator; after a takeover.
    #[test]
    fn the_page_is_what_it_was_and_escapes_every_value() {
        assert_eq!(
            page(0),
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>pullback takeover</title><style>body{font-family:sans-serif;margin:2em;max-width:60em}td,th{border:1px solid #999;padding:.3em .6em}table{border-collapse:collapse}pre{background:#eee;padding:1em;overflow:auto}.ok{color:#070}.bad{color:#b00}button{background:#c00;color:#fff;padding:.5em 1.5em;border:0}</style></head><body><h1>Takeover: clone c&lt;1&gt;</h1><p class=\"bad\" id=\"result\"><b>Takeover refused: a &lt;b&gt; &amp; &quot;c&quot;</b></p><table>\
             <tr><th>Last valid backup, data taken at</th><td>2026-01-01T00:00:00Z</td></tr>\
             <tr><th>Generation</th><td>db/3</td></tr>\
             <tr><th>Restored at</th><td>2026-01-01T00:00:05Z</td></tr>\
             <tr><th>Restore and verify passed</th><td>no</td></tr>\
             <tr><th>Data-loss window (now − taken at)</th><td>1 h 02 min 03 s</td></tr>\
             <tr><th>Import running</th><td>yes (db/&lt;4&gt;)</td></tr>\
             <tr><th>Last failure</th><td>db/2 at 2026-01-01T00:00:01Z: hook &quot;x&quot; &amp; &lt;y&gt;</td></tr>\
             <tr><th>Role</th><td>BACKUP</td></tr>\
             <tr><th>Epoch</th><td>4</td></tr></table><h2>Nodes</h2><table>\
             <tr><th>node</th><th>kind</th><th>role</th><th>status</th><th>epoch</th><th>generation</th></tr>\
             <tr><td>main&amp;1</td><td>exporter</td><td>MAIN</td><td>Leader</td><td>4</td><td>db/3</td></tr>\
             <tr><td>c&lt;1&gt;</td><td>importer</td><td>BACKUP</td><td>Follower</td><td>4</td><td>-</td></tr></table><h2>Import log (end)</h2><pre>line 1\n&lt;script&gt;</pre><h2>Take over</h2><form method=\"post\" action=\"/takeover\"><input type=\"hidden\" name=\"form_token\" value=\"tok123\"><label>Takeover password <input type=\"password\" name=\"password\" autocomplete=\"off\" required></label> <label><input type=\"checkbox\" name=\"force\" value=\"1\"> force (skip the verified-restore, running-import and newer-clone checks)</label> <button type=\"submit\">Take over</button></form><p>The old main is fenced (Broken) and this clone becomes the main node.</p></body></html>\n"
        );
        assert_eq!(
            page(1),
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>pullback takeover</title><style>body{font-family:sans-serif;margin:2em;max-width:60em}td,th{border:1px solid #999;padding:.3em .6em}table{border-collapse:collapse}pre{background:#eee;padding:1em;overflow:auto}.ok{color:#070}.bad{color:#b00}button{background:#c00;color:#fff;padding:.5em 1.5em;border:0}</style></head><body><h1>Takeover: clone c&lt;1&gt;</h1><table>\
             <tr><th>Last valid backup</th><td>none yet</td></tr>\
             <tr><th>Import running</th><td>no</td></tr>\
             <tr><th>Role</th><td>BACKUP</td></tr>\
             <tr><th>Epoch</th><td>0</td></tr></table><h2>Nodes</h2><p>coordinator not reachable: no [coordinator] &lt;configured&gt;</p><h2>Import log (end)</h2><pre></pre><h2>Take over</h2><form method=\"post\" action=\"/takeover\"><input type=\"hidden\" name=\"form_token\" value=\"tok123\"><label>Takeover password <input type=\"password\" name=\"password\" autocomplete=\"off\" required></label> <label><input type=\"checkbox\" name=\"force\" value=\"1\"> force (skip the verified-restore, running-import and newer-clone checks)</label> <button type=\"submit\">Take over</button></form><p>The old main is fenced (Broken) and this clone becomes the main node.</p></body></html>\n"
        );
        assert_eq!(
            page(2),
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>pullback takeover</title><style>body{font-family:sans-serif;margin:2em;max-width:60em}td,th{border:1px solid #999;padding:.3em .6em}table{border-collapse:collapse}pre{background:#eee;padding:1em;overflow:auto}.ok{color:#070}.bad{color:#b00}button{background:#c00;color:#fff;padding:.5em 1.5em;border:0}</style></head><body><h1>Takeover: clone c&lt;1&gt;</h1><p class=\"ok\" id=\"result\"><b>Takeover done</b></p><table>\
             <tr><th>Last valid backup</th><td>none yet</td></tr>\
             <tr><th>Import running</th><td>no</td></tr>\
             <tr><th>Role</th><td>BACKUP</td></tr>\
             <tr><th>Epoch</th><td>0</td></tr></table><h2>Nodes</h2><table>\
             <tr><th>node</th><th>kind</th><th>role</th><th>status</th><th>epoch</th><th>generation</th></tr></table><h2>Import log (end)</h2><pre></pre><h2>Take over</h2><form method=\"post\" action=\"/takeover\"><input type=\"hidden\" name=\"form_token\" value=\"tok123\"><label>Takeover password <input type=\"password\" name=\"password\" autocomplete=\"off\" required></label> <label><input type=\"checkbox\" name=\"force\" value=\"1\"> force (skip the verified-restore, running-import and newer-clone checks)</label> <button type=\"submit\">Take over</button></form><p>The old main is fenced (Broken) and this clone becomes the main node.</p></body></html>\n"
        );
    }

    #[test]
    fn the_pbs_that_notified_and_the_one_that_listed_the_nodes_are_shown() {
        let v = views();
        let mut st = v[0].0.clone();
        if let Some(l) = st.last_valid.as_mut() {
            l.from = Some("pbs<2>".into());
        }
        let html = render(&View {
            name: "c1",
            status: &st,
            nodes: &v[0].1,
            nodes_from: Some("pbs&1"),
            result: None,
            window: None,
            form_token: "t",
        });
        assert!(
            html.contains(
                "<tr><th>Pulled from (the PBS that notified it)</th><td>pbs&lt;2&gt;</td></tr>"
            ),
            "{html}"
        );
        assert!(
            html.contains("<h2>Nodes</h2><p>as the coordinator pbs&amp;1 lists them</p>"),
            "{html}"
        );
    }
}
