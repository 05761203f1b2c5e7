//! The PBS a clone belongs to: `[coordinator]` (one table) or `[[coordinator]]` (several,
//! in order of preference), and how the clone asks them.
//!
//! - Every listed PBS's token peer (its `name`) may notify and promote this clone; a
//!   notified generation is pulled from the PBS that notified it (never from an address a
//!   request names).
//! - A question with one answer (is this epoch real, was this clone granted MAIN, take over,
//!   the nodes of the takeover page) goes to the listed PBS in order: the first that answers
//!   decides ([`Coordinators::first_answer`]). A PBS that cannot be reached (connection
//!   error, time-out, 5xx) is skipped, named in the log; an answer that refuses (4xx) is
//!   final: the clone does not shop around for a yes.
//! - The hello at start goes to every listed PBS.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use wire::{Client, PeerConfig, WireError};

/// The listed PBS, at least one, names all different, in order of preference.
#[derive(Debug, Clone)]
pub struct Coordinators(Vec<PeerConfig>);

/// Why no listed PBS gave an answer.
#[derive(Debug)]
pub(crate) enum NoAnswer {
    /// `pbs` answered and refused (a 4xx, or an answer that is not what was asked):
    /// final, the next PBS is not asked.
    Refused { pbs: String, error: WireError },
    /// None could be reached: each one's name and why.
    Unreachable(Vec<String>),
}

impl fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoAnswer::Refused { pbs, error } => write!(f, "{pbs} refused: {error}"),
            NoAnswer::Unreachable(why) => {
                write!(f, "no coordinator answered ({})", why.join("; "))
            }
        }
    }
}

impl Coordinators {
    /// A list checked like the config's: not empty, no name twice.
    pub fn new(list: Vec<PeerConfig>) -> Result<Coordinators, String> {
        if list.is_empty() {
            return Err(
                "no coordinator: give the PBS this clone belongs to ([coordinator] name, url, token), or several [[coordinator]] tables"
                    .into(),
            );
        }
        for (i, p) in list.iter().enumerate() {
            if list[..i].iter().any(|q| q.name == p.name) {
                return Err(format!(
                    "two coordinators are named {:?}: each PBS is told apart by its name (the token peer that notifies this clone)",
                    p.name
                ));
            }
        }
        Ok(Coordinators(list))
    }

    /// In order of preference.
    pub fn iter(&self) -> impl Iterator<Item = &PeerConfig> {
        self.0.iter()
    }

    /// The listed PBS whose name (token peer) is `name`.
    pub fn get(&self, name: &str) -> Option<&PeerConfig> {
        self.0.iter().find(|p| p.name == name)
    }

    /// The names, comma-separated, for messages.
    pub fn names(&self) -> String {
        self.0
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Makes every relative `ca` relative to `base` (the config file's folder).
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        for p in &mut self.0 {
            p.resolve_paths(base);
        }
    }

    /// Ask the listed PBS in order (`ask` gets a client for each, with `timeout`); the
    /// first that answers decides. One that cannot be reached (or whose client cannot be
    /// made) is skipped and named in the log (`what`: what was asked); a refusal is final.
    pub(crate) async fn first_answer<'a, T, F, Fut>(
        &'a self,
        what: &str,
        timeout: Duration,
        mut ask: F,
    ) -> Result<(&'a PeerConfig, T), NoAnswer>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, WireError>>,
    {
        let mut skipped = Vec::new();
        for p in &self.0 {
            let r = match p.client(timeout) {
                Ok(c) => ask(c).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(v) => return Ok((p, v)),
                Err(e) if e.is_retryable() || matches!(e, WireError::Setup { .. }) => {
                    tracing::warn!(pbs = %p.name, "{what}: coordinator {} did not answer, skipped: {e}", p.name);
                    skipped.push(format!("{}: {e}", p.name));
                }
                Err(error) => {
                    return Err(NoAnswer::Refused {
                        pbs: p.name.clone(),
                        error,
                    })
                }
            }
        }
        Err(NoAnswer::Unreachable(skipped))
    }
}

impl<'de> Deserialize<'de> for Coordinators {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct OneOrMany;
        impl<'de> Visitor<'de> for OneOrMany {
            type Value = Coordinators;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "one [coordinator] table or several [[coordinator]] tables (name, url, token, ca)",
                )
            }

            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<Coordinators, A::Error> {
                let one = PeerConfig::deserialize(de::value::MapAccessDeserializer::new(m))?;
                Coordinators::new(vec![one]).map_err(de::Error::custom)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, s: A) -> Result<Coordinators, A::Error> {
                let many =
                    Vec::<PeerConfig>::deserialize(de::value::SeqAccessDeserializer::new(s))?;
                Coordinators::new(many).map_err(de::Error::custom)
            }
        }
        d.deserialize_any(OneOrMany)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        coordinator: Coordinators,
    }

    fn parse(text: &str) -> Result<Cfg, String> {
        wire::config::parse_toml(text, Path::new("/etc/importer.toml")).map_err(|e| e.to_string())
    }

    const PBS1: &str =
        "name = \"pbs1\"\nurl = \"http://127.0.0.1:1\"\ntoken = \"0123456789abcdef\"\n";
    const PBS2: &str = "name = \"pbs2\"\nurl = \"http://127.0.0.1:2\"\ntoken = \"fedcba9876543210\"\nca = \"ca.pem\"\n";

    #[test]
    fn one_table_or_several_in_order() {
        let one = parse(&format!("[coordinator]\n{PBS1}")).unwrap();
        assert_eq!(one.coordinator.names(), "pbs1");
        let mut two = parse(&format!("[[coordinator]]\n{PBS2}[[coordinator]]\n{PBS1}")).unwrap();
        assert_eq!(two.coordinator.names(), "pbs2, pbs1");
        two.coordinator.resolve_paths(Path::new("/etc/pullback"));
        let p2 = two.coordinator.get("pbs2").unwrap();
        assert_eq!(p2.ca.as_deref(), Some(Path::new("/etc/pullback/ca.pem")));
        assert_eq!(
            two.coordinator.get("pbs1").unwrap().url,
            "http://127.0.0.1:1"
        );
        assert!(two.coordinator.get("pbs3").is_none());
    }

    #[test]
    fn the_same_name_twice_none_at_all_and_unknown_keys_are_refused_by_name() {
        let e = parse(&format!(
            "[[coordinator]]\n{PBS1}[[coordinator]]\n{}",
            PBS2.replace("pbs2", "pbs1")
        ))
        .unwrap_err();
        assert!(e.contains("two coordinators are named \"pbs1\""), "{e}");
        assert!(
            e.contains("/etc/importer.toml") && e.contains("coordinator"),
            "{e}"
        );
        let e = parse("coordinator = []\n").unwrap_err();
        assert!(e.contains("no coordinator"), "{e}");
        let e = parse("x = 1\n").unwrap_err();
        assert!(e.contains("unknown field `x`"), "{e}");
        let e = parse(&format!(
            "[[coordinator]]\n{PBS1}[[coordinator]]\n{PBS2}tokn = \"x\"\n"
        ))
        .unwrap_err();
        assert!(
            e.contains("unknown field `tokn`") && e.contains("line 10"),
            "{e}"
        );
        let e = parse(&format!("[coordinator]\n{PBS1}tokn = \"x\"\n")).unwrap_err();
        assert!(e.contains("unknown field `tokn`"), "{e}");
        let e = parse("coordinator = \"pbs\"\n").unwrap_err();
        assert!(e.contains("one [coordinator] table or several"), "{e}");
    }

    #[tokio::test]
    async fn the_first_that_answers_decides_and_a_refusal_is_final() {
        // Port 1 on loopback: nobody listens (connection refused at once).
        let dead = |n: &str| PeerConfig {
            name: n.into(),
            url: "http://127.0.0.1:1".into(),
            token: "0123456789abcdef".into(),
            ca: None,
        };
        let list = Coordinators::new(vec![dead("a"), dead("b")]).unwrap();
        let r = list
            .first_answer("test", Duration::from_secs(2), |c| async move {
                c.get_json::<serde_json::Value>("/v1/status").await
            })
            .await;
        match r {
            Err(NoAnswer::Unreachable(why)) => {
                assert_eq!(why.len(), 2, "{why:?}");
                assert!(
                    why[0].starts_with("a: ") && why[1].starts_with("b: "),
                    "{why:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        let mut asked = Vec::new();
        let r = list
            .first_answer("test", Duration::from_secs(2), |c| {
                asked.push(c.base_url().to_string());
                async move { Ok::<_, WireError>(1) }
            })
            .await;
        assert_eq!(
            r.map(|(p, v)| (p.name.clone(), v)).ok(),
            Some(("a".into(), 1))
        );
        assert_eq!(asked.len(), 1);
        // A 5xx moves to the next; a 4xx is final.
        let answer = |code: u16| WireError::Status {
            method: axum::http::Method::POST,
            url: "http://pbs/v1/ha/takeover".into(),
            status: axum::http::StatusCode::from_u16(code).unwrap(),
            message: format!("said {code}"),
        };
        for (first, second, want) in [(503, 409, "b:409"), (409, 200, "a:409"), (502, 200, "b:ok")]
        {
            let mut n = 0;
            let r = list
                .first_answer("test", Duration::from_secs(2), |_| {
                    n += 1;
                    let code = if n == 1 { first } else { second };
                    async move {
                        if code == 200 {
                            Ok(())
                        } else {
                            Err(answer(code))
                        }
                    }
                })
                .await;
            let got = match r {
                Ok((p, ())) => format!("{}:ok", p.name),
                Err(NoAnswer::Refused { pbs, error }) => {
                    format!("{pbs}:{}", error.status().map_or(0, |s| s.as_u16()))
                }
                Err(e) => e.to_string(),
            };
            assert_eq!(got, want, "{first} then {second}");
        }
    }
}
