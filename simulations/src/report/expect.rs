//! The scenario's `[expect]` checked against a report: one [`Expectation`] per expectation set,
//! saying what held or what did not.

use super::{Expectation, Report};
use crate::scenario::Scenario;

pub(super) fn expectations(s: &Scenario, r: &Report) -> Vec<Expectation> {
    let mut out = Vec::new();
    let e = &s.expect;
    if let Some(limit) = e.converge_within_sec {
        let limit_ms = limit * 1e3;
        let late: Vec<String> = r
            .writes
            .iter()
            .enumerate()
            .filter(|(_, w)| !w.skipped && w.reach_100_ms.is_none_or(|t| t > limit_ms))
            .map(|(k, w)| match w.reach_100_ms {
                Some(t) => format!("write {k}: {t:.0} ms"),
                None => format!("write {k}: never reached every node"),
            })
            .collect();
        out.push(Expectation {
            what: format!("every write reaches every node within {limit} s"),
            ok: late.is_empty(),
            detail: if late.is_empty() {
                format!(
                    "slowest {:.0} ms",
                    r.rollout.reach_100_max_ms.unwrap_or_default()
                )
            } else {
                late.join("; ")
            },
        });
    }
    if let Some(limit) = e.membership_within_sec {
        let ok = r.membership_ms.is_some_and(|t| t <= limit * 1e3);
        out.push(Expectation {
            what: format!("every node sees every node live within {limit} s"),
            ok,
            detail: match r.membership_ms {
                Some(t) => format!("{t:.0} ms"),
                None => "never".into(),
            },
        });
    }
    if let Some(limit) = e.detect_within_sec {
        let late: Vec<String> = r
            .kills
            .iter()
            .filter(|k| k.all_seen_ms.is_none_or(|t| t > limit * 1e3))
            .map(|k| match k.all_seen_ms {
                Some(t) => format!("node {}: {t:.0} ms", k.node),
                None => format!("node {}: not seen dead by all", k.node),
            })
            .collect();
        out.push(Expectation {
            what: format!("every killed node is seen dead by all within {limit} s"),
            ok: late.is_empty() && !r.kills.is_empty(),
            detail: if r.kills.is_empty() {
                "no node was killed".into()
            } else if late.is_empty() {
                let slowest = r
                    .kills
                    .iter()
                    .filter_map(|k| k.all_seen_ms)
                    .fold(0.0, f64::max);
                format!("slowest {slowest:.0} ms")
            } else {
                late.join("; ")
            },
        });
    }
    if e.no_duplicate_actions {
        let a = &r.actions;
        out.push(Expectation {
            what: "no action is sent twice (but for a takeover)".into(),
            ok: a.duplicates == 0,
            detail: format!(
                "{} duplicates, {} takeovers, {} mesh actions, {} node actions",
                a.duplicates,
                a.takeovers,
                a.mesh.len(),
                a.node_actions
            ),
        });
    }
    if let Some(expected) = e.mesh_actions {
        let sent = r.actions.mesh.len();
        let mut detail = format!("{sent} sent");
        for missed in &r.actions.kill_actor_missed_ms {
            detail.push_str(&format!("; kill_actor at {missed:.0} ms found no actor"));
        }
        out.push(Expectation {
            what: format!("exactly {expected} mesh actions are sent"),
            ok: sent == expected,
            detail,
        });
    }
    if e.no_false_dead {
        out.push(Expectation {
            what: "no node up and reachable is seen dead".into(),
            ok: r.false_dead_max == 0,
            detail: format!("at most {} pairs at once", r.false_dead_max),
        });
    }
    out
}
