//! The transitions alone: a state and a request in, a refusal or a state and effects out.

use super::*;
use crate::coord::tests::req;
use crate::coord::NodeState;
use wire::server::ApiError;

const NOW: &str = "2026-01-01T00:00:00Z";

/// main1 (exporter) MAIN at epoch 4; clones c1, c2 Followers, off Disabled, sp a Spare.
fn world() -> (Rules, CoordState) {
    let rules = Rules {
        clones: ["c1", "c2", "off", "sp"].map(String::from).into(),
        spares: vec!["sp".into()],
        disabled: ["off".to_string()].into(),
        clone_hook: None,
    };
    let node = |kind, role, status| NodeState {
        kind,
        role,
        status,
        ..Default::default()
    };
    let mut st = CoordState {
        epoch: 4,
        main: Some("main1".into()),
        ..Default::default()
    };
    let imp = NodeKind::Importer;
    st.nodes.insert(
        "main1".into(),
        node(NodeKind::Exporter, Role::Main, NodeStatus::Leader),
    );
    for (n, s) in [
        ("c1", NodeStatus::Follower),
        ("c2", NodeStatus::Follower),
        ("off", NodeStatus::Disabled),
        ("sp", NodeStatus::Spare),
    ] {
        st.nodes.insert(n.into(), node(imp, Role::Backup, s));
    }
    (rules, st)
}

fn set_status(st: &mut CoordState, node: &str, status: NodeStatus) {
    if let Some(n) = st.nodes.get_mut(node) {
        n.status = status;
    }
}

/// c1 verified db/3, c2 db/10, off db/11.
fn verified(n: &str) -> Option<String> {
    match n {
        "c1" => Some("db/3".into()),
        "c2" => Some("db/10".into()),
        "off" => Some("db/11".into()),
        _ => None,
    }
}

const TAKEOVER: GrantKind = GrantKind::Takeover { promote: false };

fn refused(r: Result<Step<Grant>, Refusal>) -> Refusal {
    match r {
        Err(r) => r,
        Ok(s) => panic!("granted: {:?}", s.answer),
    }
}

#[test]
fn the_takeover_gates_each_name_their_reason() {
    let (rules, mut st) = world();
    set_status(&mut st, "c2", NodeStatus::Broken);
    st.nodes.insert(
        "c3".into(),
        NodeState {
            kind: NodeKind::Importer,
            status: NodeStatus::Rejoining,
            ..Default::default()
        },
    );
    let mut rules_c3 = rules.clone();
    rules_c3.clones.insert("c3".into());
    let g = |node: &str, force, epoch| {
        refused(rules_c3.grant(&st, &req(node, force, epoch), TAKEOVER, &verified, NOW))
    };
    let s = String::from;
    assert_eq!(g("nobody", true, None), Refusal::UnknownClone(s("nobody")));
    assert_eq!(
        g("main1", true, None),
        Refusal::AlreadyMain {
            node: s("main1"),
            epoch: 4
        }
    );
    assert_eq!(g("off", true, None), Refusal::Disabled(s("off")));
    assert_eq!(g("sp", true, None), Refusal::Spare(s("sp")));
    assert_eq!(g("c2", true, None), Refusal::Broken(s("c2")));
    assert_eq!(g("c3", true, None), Refusal::Rejoining(s("c3")));
    assert_eq!(
        g("c1", true, Some(3)),
        Refusal::EpochMoved {
            node: s("c1"),
            got: 3,
            now: 4
        }
    );
    assert!(matches!(
        g("c1", true, Some(5)),
        Refusal::EpochNotGranted {
            error: EpochError::Ahead { .. },
            ..
        }
    ));
    // An exporter node that is no [[importer]]: not a clone.
    let (rules, mut st) = world();
    st.main = None;
    assert_eq!(
        refused(rules.grant(&st, &req("main1", true, None), TAKEOVER, &verified, NOW)),
        Refusal::NotAClone(s("main1"))
    );
    // A Follower with a newer verified generation (numerically; the Disabled clone's does
    // not count), unless forced.
    let (rules, st) = world();
    let r = refused(rules.grant(&st, &req("c1", false, Some(4)), TAKEOVER, &verified, NOW));
    assert_eq!(
        r,
        Refusal::NewerClone {
            other: s("c2"),
            theirs: s("db/10"),
            node: s("c1"),
            mine: Some(s("db/3"))
        }
    );
    assert!(r.to_string().contains("take over there, or force"), "{r}");
    // At the maximum epoch nothing more can be granted.
    let (rules, mut st) = world();
    st.epoch = u64::MAX;
    assert!(matches!(
        refused(rules.grant(&st, &req("c1", true, None), TAKEOVER, &verified, NOW)),
        Refusal::EpochExhausted(EpochError::Exhausted(_))
    ));
}

#[test]
fn a_takeover_fences_the_old_main_and_asks_for_a_new_clone() {
    let (rules, st) = world();
    let step = rules
        .grant(&st, &req("c2", false, Some(4)), TAKEOVER, &verified, NOW)
        .expect("granted");
    let s = &step.state;
    assert_eq!((s.epoch, s.main.as_deref()), (5, Some("c2")));
    assert_eq!(
        (s.nodes["main1"].role, s.nodes["main1"].status),
        (Role::Backup, NodeStatus::Broken)
    );
    assert_eq!(s.nodes["c2"].status, NodeStatus::Leader);
    assert_eq!(
        s.nodes["sp"].status,
        NodeStatus::Follower,
        "the spare activated"
    );
    assert_eq!(s.pending_promotion.as_ref().map(|p| p.epoch), Some(5));
    assert_eq!(s.takeovers.len(), 1);
    // The clone asked itself: it promotes on the answer, so no Promote.
    assert_eq!(
        step.effects,
        [
            Effect::StepDown("main1".into()),
            Effect::PushLatest("sp".into())
        ]
    );
    assert_eq!(step.answer.new_clone, NewClone::Spare("sp".into()));

    // No spare left, by the admin token: the clone hook, then the PBS promotes.
    let step = rules
        .grant(
            &step.state,
            &req("c1", true, None),
            GrantKind::Takeover { promote: true },
            &verified,
            NOW,
        )
        .expect("granted");
    let needed = step.state.clone_needed.clone().expect("a clone is needed");
    assert_eq!((needed.epoch, needed.old_main.as_deref()), (6, Some("c2")));
    assert_eq!(
        step.effects,
        [
            Effect::StepDown("c2".into()),
            Effect::RunCloneHook(needed),
            Effect::Promote {
                node: "c1".into(),
                epoch: 6
            }
        ]
    );
}

#[test]
fn a_switchover_only_promotes_and_keeps_the_old_main_a_follower() {
    let (rules, st) = world();
    let step = rules
        .grant(
            &st,
            &req("c1", true, Some(4)),
            GrantKind::Switchover,
            &verified,
            NOW,
        )
        .expect("granted");
    assert_eq!(
        step.effects,
        [Effect::Promote {
            node: "c1".into(),
            epoch: 5
        }]
    );
    let s = &step.state;
    assert_eq!(s.nodes["main1"].status, NodeStatus::Follower);
    assert_eq!(
        s.nodes["sp"].status,
        NodeStatus::Spare,
        "no spare activated"
    );
    assert!(s.takeovers.is_empty() && s.clone_needed.is_none());
    assert_eq!(step.answer.new_clone, NewClone::Nothing);
}

#[test]
fn rejoin_pushes_the_latest_and_waits_for_exactly_it() {
    let (rules, st) = world();
    assert_eq!(
        rules.rejoin(&st, "main1").err(),
        Some(Refusal::MainCannotRejoin {
            node: "main1".into(),
            epoch: 4
        })
    );
    assert_eq!(
        rules.rejoin(&st, "x").err(),
        Some(Refusal::NoImporterEntry("x".into()))
    );
    let step = rules.rejoin(&st, "c1").expect("rejoin");
    assert_eq!(step.effects, [Effect::PushLatest("c1".into())]);
    let st = step.state;
    assert_eq!(st.nodes["c1"].status, NodeStatus::Rejoining);
    // Its hello (a restart): BACKUP, pushed the latest again.
    let h = Hello {
        node: "c1".into(),
        epoch: 4,
        role: Role::Main,
    };
    let step = rules.hello(&st, &h, NOW).expect("hello");
    assert_eq!(
        (step.answer.role, step.answer.status),
        (Role::Backup, NodeStatus::Rejoining)
    );
    assert_eq!(step.effects, [Effect::PushLatest("c1".into())]);
    // Behind, ahead, another source, garbage: still rejoining; exactly the latest: Follower.
    for gen in ["db/9", "db/11", "other/10", "db"] {
        let step = rules.finish_rejoin(&st, "c1", gen, "db/10");
        assert!(!step.answer, "{gen}");
        assert_eq!(step.state.nodes["c1"].status, NodeStatus::Rejoining);
    }
    let step = rules.finish_rejoin(&st, "c1", "db/10", "db/10");
    assert!(step.answer);
    assert_eq!(step.state.nodes["c1"].status, NodeStatus::Follower);
}

#[test]
fn only_the_main_at_the_current_epoch_may_notify() {
    let (rules, mut st) = world();
    set_status(&mut st, "c2", NodeStatus::Broken);
    set_status(&mut st, "c1", NodeStatus::Rejoining);
    let n = |node: &str, epoch| rules.check_notify(&st, node, epoch, NOW).err();
    assert_eq!(
        n("c2", 4),
        Some(Refusal::NotifyFromBroken {
            node: "c2".into(),
            epoch: 4
        })
    );
    assert_eq!(
        n("c1", 4),
        Some(Refusal::NotifyFromRejoining {
            node: "c1".into(),
            epoch: 4
        })
    );
    assert!(matches!(n("main1", 3), Some(Refusal::NotifyStale { .. })));
    assert!(matches!(n("main1", 5), Some(Refusal::NotifyEpoch { .. })));
    assert_eq!(
        n("off", 4),
        Some(Refusal::NotifyNotMain {
            node: "off".into(),
            main: "main1".into(),
            epoch: 4
        })
    );
    let step = rules.check_notify(&st, "main1", 4, NOW).expect("the main");
    assert!(step.effects.is_empty());
    assert_eq!(step.state.nodes["main1"].last_seen.as_deref(), Some(NOW));
}

#[test]
fn refusals_become_404_403_or_409_at_the_api_edge() {
    let code = |r: Refusal| ApiError::from(r).status.as_u16();
    assert_eq!(code(Refusal::UnknownNode("x".into())), 404);
    assert_eq!(
        code(Refusal::MayNotSpeakFor {
            peer: "p".into(),
            node: "n".into()
        }),
        403
    );
    assert_eq!(code(Refusal::Spare("x".into())), 409);
    assert_eq!(code(Refusal::UnknownClone("x".into())), 409);
}
