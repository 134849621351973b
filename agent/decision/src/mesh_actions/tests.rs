use std::sync::Arc;

use agent_engine::{EngineMetrics, Incident, PolicySet};
use mesh_proto::PolicyRecord;
use mesh_proto::shared::Acted;

use super::*;
use crate::facts::PeerView;

const WINDOW_MS: u64 = 60_000;
const NOW: u64 = 1_000 * WINDOW_MS + 5_000;

fn set(definition: &str) -> PolicySet {
    let metrics = EngineMetrics::register(&mut prometheus_client::registry::Registry::default());
    let record = PolicyRecord {
        id: 7,
        name: "scale".into(),
        description: String::new(),
        definition_json: definition.into(),
        active: true,
        priority: 1,
        version: 1,
        created_at_us: 0,
        updated_at_us: 0,
        stamp: Default::default(),
        author: "n1".into(),
    };
    let (set, invalid) = PolicySet::build(vec![record], 1, &metrics);
    assert!(invalid.is_empty(), "{invalid:?}");
    set
}

fn mesh_rule() -> PolicySet {
    set(r#"{"condition":"incident.severity > 1","action":"scale","scope":"mesh","cooldown_sec":0}"#)
}

fn incident() -> Incident {
    Incident {
        id: "e1".into(),
        kind: "cpu_spike".into(),
        severity: 5.0,
        timestamp: None,
        context: Default::default(),
    }
}

/// A view from `me` of `alive` (all can act) and `dead`.
fn view(me: &str, alive: &[&str], dead: &[&str]) -> PeerView {
    let mut view = PeerView::alone(me);
    view.from_mesh = true;
    view.alive = alive.iter().map(|n| n.to_string()).collect();
    view.alive.sort();
    view.actors = alive
        .iter()
        .filter(|n| **n != me)
        .map(|n| n.to_string())
        .collect();
    view.actors.sort();
    view.dead = dead.iter().map(|n| n.to_string()).collect();
    view.dead_actors = view.dead.clone();
    view.known = alive.len() + dead.len();
    view
}

fn actions(me: &str) -> MeshActions {
    let actions = MeshActions::new(me, WINDOW_MS);
    actions.set_can_act();
    actions
}

/// The node of `members` ranked first for policy 7 on `cpu_spike` in the current window.
fn first(members: &[&str]) -> String {
    let members: Vec<String> = members.iter().map(|m| m.to_string()).collect();
    actor(&members, 7, "cpu_spike", NOW / WINDOW_MS)
        .unwrap()
        .to_owned()
}

#[test]
fn the_first_ranked_node_sends_and_the_others_defer() {
    let set = mesh_rule();
    let policy = &set.policies()[0];
    let nodes = ["n1", "n2", "n3"];
    let actor = first(&nodes);
    for me in nodes {
        let actions = actions(me);
        let mut tentative = actions.tentative();
        let disposition = actions.on_match(
            policy,
            &incident(),
            "node-id".into(),
            NOW,
            &view(me, &nodes, &[]),
            &mut tentative,
        );
        tentative.commit();
        match disposition {
            Disposition::Send { action_id, mesh } => {
                assert_eq!(me, actor);
                assert_eq!(action_id, mesh_action_id(7, "cpu_spike", NOW / WINDOW_MS));
                assert!(!mesh.unwrap().takeover);
            }
            Disposition::Deferred { actor: named, .. } => {
                assert_ne!(me, actor);
                assert_eq!(named, actor);
            }
            other => panic!("{me}: {other:?}"),
        }
    }
}

#[test]
fn a_refused_decision_leaves_no_trace_and_its_retry_sends() {
    let set = mesh_rule();
    let policy = &set.policies()[0];
    let actor = first(&["n1"]);
    let actions = actions(&actor);
    let alone = view(&actor, &[&actor], &[]);
    {
        let mut tentative = actions.tentative();
        let sent = actions.on_match(policy, &incident(), "x".into(), NOW, &alone, &mut tentative);
        assert!(matches!(sent, Disposition::Send { .. }), "{sent:?}");
        // Not committed: an uncommitted action is not gossiped either.
        let acted = actions.gossip_values(NOW);
        assert_eq!(
            acted[1].1,
            crate::facts::peers::to_gossip(&ActedLog::default())
        );
    }
    let mut tentative = actions.tentative();
    let retry = actions.on_match(policy, &incident(), "x".into(), NOW, &alone, &mut tentative);
    assert!(matches!(retry, Disposition::Send { .. }), "{retry:?}");
    tentative.commit();
    let mut tentative = actions.tentative();
    let again = actions.on_match(policy, &incident(), "x".into(), NOW, &alone, &mut tentative);
    assert!(
        matches!(&again, Disposition::Suppressed { reason, .. } if reason.starts_with("already decided")),
        "{again:?}"
    );
}

#[test]
fn when_the_actor_dies_the_next_node_takes_over_once() {
    let set = mesh_rule();
    let policy = &set.policies()[0];
    let nodes = ["n1", "n2", "n3", "n4"];
    let actor = first(&nodes);
    let rest: Vec<&str> = nodes.iter().copied().filter(|n| *n != actor).collect();
    let next = first(&rest);
    let claimant = *rest.iter().find(|n| **n != next).unwrap();
    // The claimant's claim, as gossip carries it.
    let claimer = actions(claimant);
    let mut tentative = claimer.tentative();
    let deferred = claimer.on_match(
        policy,
        &incident(),
        "x".into(),
        NOW,
        &view(claimant, &nodes, &[]),
        &mut tentative,
    );
    tentative.commit();
    assert!(
        matches!(deferred, Disposition::Deferred { .. }),
        "{deferred:?}"
    );
    let claim = claimer.lock().claims[0].0.clone();
    let acted = Acted {
        action_id: claim.action_id.clone(),
        policy_id: 7,
        key: "cpu_spike".into(),
        window: claim.window,
        at_ms: NOW,
        takeover: false,
    };

    let successor = actions(&next);
    // While the actor is alive and says it sent the action, the next node does nothing.
    let mut alive = view(&next, &nodes, &[]);
    alive.claims = vec![(claimant.to_owned(), claim.clone())];
    alive.acted = vec![(actor.clone(), acted.clone(), true)];
    let mut tentative = successor.tentative();
    assert!(successor.due(&alive, &set, NOW, &mut tentative).is_empty());
    // Once it is seen dead, the next node sends the same action, as a takeover, once.
    let mut dead = view(&next, &rest, &[&actor]);
    dead.claims = vec![(claimant.to_owned(), claim.clone())];
    dead.acted = vec![(actor.clone(), acted, false)];
    let due = successor.due(&dead, &set, NOW, &mut tentative);
    assert_eq!(due.len(), 1, "{due:?}");
    match &due[0].disposition {
        Disposition::Send { action_id, mesh } => {
            assert_eq!(*action_id, claim.action_id);
            let mesh = mesh.as_ref().unwrap();
            assert!(mesh.takeover);
            assert_eq!(mesh.claimed_by, claimant);
        }
        other => panic!("{other:?}"),
    }
    tentative.commit();
    let mut tentative = successor.tentative();
    assert!(successor.due(&dead, &set, NOW, &mut tentative).is_empty());
}

#[test]
fn nodes_that_cannot_act_are_not_ranked() {
    let set = mesh_rule();
    let policy = &set.policies()[0];
    // n1 has no upstream: n2 acts whatever the hash says.
    let observer = MeshActions::new("n1", WINDOW_MS);
    let mut peers = view("n1", &["n1", "n2"], &[]);
    peers.actors = vec!["n2".into()];
    let mut tentative = observer.tentative();
    let disposition =
        observer.on_match(policy, &incident(), "x".into(), NOW, &peers, &mut tentative);
    assert!(
        matches!(&disposition, Disposition::Deferred { actor, .. } if actor == "n2"),
        "{disposition:?}"
    );
    peers.actors.clear();
    let nobody = observer.on_match(policy, &incident(), "x".into(), NOW, &peers, &mut tentative);
    assert!(
        matches!(nobody, Disposition::Suppressed { .. }),
        "{nobody:?}"
    );
}

#[test]
fn a_majority_counts_the_persisted_membership_too() {
    let set = set(
        r#"{"condition":"true","action":"scale","scope":"mesh","quorum":"majority","cooldown_sec":0}"#,
    );
    let policy = &set.policies()[0];
    let actions = actions("n1");
    let mut peers = view("n1", &["n1", "n2"], &[]);
    peers.known_floor = 5;
    let mut tentative = actions.tentative();
    let disposition =
        actions.on_match(policy, &incident(), "x".into(), NOW, &peers, &mut tentative);
    assert!(
        matches!(&disposition, Disposition::Suppressed { reason, .. } if reason.contains("2 of 5")),
        "{disposition:?}"
    );
}

#[test]
fn node_rules_cool_down_per_incident_type() {
    let set = set(r#"{"condition":"true","action":"restart","cooldown_sec":60}"#);
    let policy = Arc::clone(&set.policies()[0]);
    let actions = actions("n1");
    let peers = view("n1", &["n1"], &[]);
    let decide = |at: u64, kind: &str| {
        let mut incident = incident();
        incident.kind = kind.into();
        let mut tentative = actions.tentative();
        let d = actions.on_match(&policy, &incident, "x".into(), at, &peers, &mut tentative);
        tentative.commit();
        d
    };
    assert!(matches!(decide(NOW, "a"), Disposition::Send { .. }));
    assert!(matches!(
        decide(NOW + 1_000, "a"),
        Disposition::Suppressed { .. }
    ));
    assert!(matches!(decide(NOW + 1_000, "b"), Disposition::Send { .. }));
    assert!(matches!(
        decide(NOW + 61_000, "a"),
        Disposition::Send { .. }
    ));
}

#[test]
fn a_refused_decision_leaves_no_claim_behind() {
    let set = mesh_rule();
    let policy = &set.policies()[0];
    let nodes = ["n1", "n2", "n3"];
    let actor = first(&nodes);
    let me = *nodes.iter().find(|n| **n != actor).unwrap();
    let actions = actions(me);
    let peers = view(me, &nodes, &[]);
    let empty = crate::facts::peers::to_gossip(&Claims::default());
    {
        let mut tentative = actions.tentative();
        let deferred =
            actions.on_match(policy, &incident(), "x".into(), NOW, &peers, &mut tentative);
        assert!(
            matches!(deferred, Disposition::Deferred { .. }),
            "{deferred:?}"
        );
        // Not gossiped before the decision is recorded...
        assert_eq!(actions.gossip_values(NOW)[0].1, empty);
    }
    // ...and gone once it is refused.
    assert!(actions.lock().claims.is_empty());
    let mut tentative = actions.tentative();
    let _ = actions.on_match(policy, &incident(), "x".into(), NOW, &peers, &mut tentative);
    tentative.commit();
    assert_ne!(actions.gossip_values(NOW)[0].1, empty);
}
