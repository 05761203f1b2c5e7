//! The pieces the HTML pages share (the PBS dashboard, the clone's takeover page): maud
//! templates, so every value put into a page is escaped, and the layout is written once.

use maud::{html, Markup, PreEscaped};

/// A whole page: doctype, UTF-8, `title`, the page's own `css`, then `body`; one line
/// ending in a newline.
pub fn page(title: &str, css: &str, body: Markup) -> String {
    let mut out = html! {
        (PreEscaped("<!doctype html>"))
        html {
            head {
                meta charset="utf-8";
                title { (title) }
                style { (PreEscaped(css)) }
            }
            body { (body) }
        }
    }
    .into_string();
    out.push('\n');
    out
}

/// A table's header row.
pub fn header_row(names: &[&str]) -> Markup {
    html! {
        tr { @for n in names { th { (n) } } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_escape_what_they_are_given() {
        let p = page(
            "a<b",
            "td{x:1}",
            html! { p { ("<i>&\"") } (header_row(&["k<"])) },
        );
        assert_eq!(
            p,
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>a&lt;b</title>\
             <style>td{x:1}</style></head><body><p>&lt;i&gt;&amp;&quot;</p>\
             <tr><th>k&lt;</th></tr></body></html>\n"
        );
    }
}
