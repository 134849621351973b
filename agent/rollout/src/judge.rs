//! Whether a baking canary completes, fails or waits, from every member's report: the canary
//! nodes' failure rate against the other nodes' (the same time, the previous version), so a rise
//! that is everyone's (a bad input stream, a broken data source) does not fail it.

use agent_policy::rollout::{Plan, Rollout, State};

use crate::report::{CanaryCounts, NodeReport};

/// What the coordinator does with a canary.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Still baking.
    Wait,
    Complete,
    Fail(String),
}

/// The canary nodes' and the other nodes' counts.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Groups {
    pub canary: CanaryCounts,
    pub control: CanaryCounts,
}

/// Sums `reports` ((node, report) of every member heard from) into the canary's two groups.
pub fn groups(rollout: &Rollout, reports: &[(String, NodeReport)]) -> Groups {
    let mut groups = Groups::default();
    let Plan::Canary(plan) = &rollout.plan else {
        return groups;
    };
    for (node, report) in reports {
        let Some(counts) = report.canaries.get(&rollout.id) else {
            continue;
        };
        if plan.nodes.contains(node) {
            groups.canary = groups.canary.add(counts);
        } else {
            groups.control = groups.control.add(counts);
        }
    }
    groups
}

/// Judges a baking canary at `now_ms`, from the last report of every member heard from (`live`
/// the ones alive now).
pub fn judge(
    rollout: &Rollout,
    reports: &[(String, NodeReport)],
    live: &[String],
    now_ms: u64,
) -> Verdict {
    let (Plan::Canary(plan), State::Baking { until_ms }) = (&rollout.plan, &rollout.state) else {
        return Verdict::Wait;
    };
    if let Some((node, why)) = reports
        .iter()
        .find_map(|(node, report)| Some((node, report.broken.get(&rollout.id)?)))
    {
        return Verdict::Fail(format!("the candidate does not compile on {node}: {why}"));
    }
    let Groups { canary, control } = groups(rollout, reports);
    if canary.failures > 0
        && canary.failure_rate() > control.failure_rate() + plan.max_failure_rate_rise
    {
        return Verdict::Fail(format!(
            "failures rose on the canary nodes: {:.1}% of {} evaluations failed ({} errors, {} time limits, {} fail-mode answers) against {:.1}% of {} on the other nodes; the rise allowed is {:.1} points",
            canary.failure_rate() * 100.0,
            canary.evaluations,
            canary.failures,
            canary.timeouts,
            canary.fail_mode,
            control.failure_rate() * 100.0,
            control.evaluations,
            plan.max_failure_rate_rise * 100.0,
        ));
    }
    if now_ms < *until_ms {
        return Verdict::Wait;
    }
    // No news is not good news: every live canary node must have said how it went, and at
    // least one canary node (a canary node that died counts with what it said before).
    let reported = |node: &str| {
        reports
            .iter()
            .any(|(n, r)| n == node && r.canaries.contains_key(&rollout.id))
    };
    let silent: Vec<&str> = plan
        .nodes
        .iter()
        .filter(|node| live.contains(node) && !reported(node))
        .map(String::as_str)
        .collect();
    if !silent.is_empty() {
        return Verdict::Fail(format!(
            "canary nodes {} did not report how the candidate ran",
            silent.join(", ")
        ));
    }
    if !plan.nodes.iter().any(|node| reported(node)) {
        return Verdict::Fail("no canary node reported how the candidate ran".into());
    }
    if canary.evaluations < plan.min_canary_evaluations {
        return Verdict::Fail(format!(
            "the canary nodes evaluated {} times in {} s, fewer than the {} the plan asks for",
            canary.evaluations, plan.bake_sec, plan.min_canary_evaluations
        ));
    }
    Verdict::Complete
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_policy::rollout::{CanaryPlan, Candidate, Subject};

    fn rollout(max_rise: f64, min: u64) -> Rollout {
        Rollout {
            id: "r-1".into(),
            subject: Subject::RegoModule { id: "m".into() },
            candidate: Candidate::RegoModule("package m".into()),
            plan: Plan::Canary(CanaryPlan {
                fraction: 0.4,
                bake_sec: 10,
                max_failure_rate_rise: max_rise,
                min_canary_evaluations: min,
                nodes: vec!["a".into(), "b".into()],
            }),
            state: State::Baking { until_ms: 10_000 },
            base_version: Some(1),
            created_at_ms: 0,
            created_by: "a".into(),
        }
    }

    fn report(evaluations: u64, failures: u64) -> NodeReport {
        let mut report = NodeReport::default();
        report.canaries.insert(
            "r-1".into(),
            CanaryCounts {
                applies: true,
                evaluations,
                failures,
                timeouts: 0,
                fail_mode: failures,
            },
        );
        report
    }

    fn at(node: &str, report: NodeReport) -> (String, NodeReport) {
        (node.to_owned(), report)
    }

    fn judge(rollout: &Rollout, reports: &[(String, NodeReport)], now_ms: u64) -> Verdict {
        let live = ["a", "b", "c"].map(String::from);
        super::judge(rollout, reports, &live, now_ms)
    }

    #[test]
    fn a_rise_on_the_canary_nodes_fails_at_once() {
        let reports = [at("a", report(10, 2)), at("c", report(30, 0))];
        let verdict = judge(&rollout(0.0, 0), &reports, 1);
        assert!(
            matches!(&verdict, Verdict::Fail(why) if why.contains("20.0% of 10")),
            "{verdict:?}"
        );
    }

    #[test]
    fn a_rise_everyone_has_is_not_the_candidates() {
        let reports = [at("a", report(10, 1)), at("c", report(10, 1))];
        assert_eq!(judge(&rollout(0.0, 0), &reports, 1), Verdict::Wait);
        // ... and within the rise allowed.
        let reports = [at("a", report(100, 5)), at("c", report(100, 1))];
        assert_eq!(judge(&rollout(0.05, 0), &reports, 1), Verdict::Wait);
        assert!(matches!(
            judge(&rollout(0.01, 0), &reports, 1),
            Verdict::Fail(_)
        ));
    }

    #[test]
    fn a_healthy_canary_completes_after_its_bake_time() {
        let reports = [
            at("a", report(10, 0)),
            at("b", report(0, 0)),
            at("c", report(10, 0)),
        ];
        assert_eq!(judge(&rollout(0.0, 0), &reports, 9_999), Verdict::Wait);
        assert_eq!(judge(&rollout(0.0, 0), &reports, 10_000), Verdict::Complete);
        // Unless the canary nodes saw too little to judge by.
        assert!(matches!(
            judge(&rollout(0.0, 50), &reports, 10_000),
            Verdict::Fail(why) if why.contains("fewer than the 50")
        ));
        // Or one of them never said how it went...
        assert!(matches!(
            judge(&rollout(0.0, 0), &reports[..1], 10_000),
            Verdict::Fail(why) if why.contains("canary nodes b did not report")
        ));
        // ... unless it is dead: the others' reports are the evidence, if there are any.
        let live = ["a", "c"].map(String::from);
        assert_eq!(
            super::judge(&rollout(0.0, 0), &reports[..1], &live, 10_000),
            Verdict::Complete
        );
        let live = ["c"].map(String::from);
        assert!(matches!(
            super::judge(&rollout(0.0, 0), &reports[2..], &live, 10_000),
            Verdict::Fail(why) if why.contains("no canary node reported")
        ));
    }

    #[test]
    fn a_candidate_that_does_not_compile_somewhere_fails() {
        let mut broken = NodeReport::default();
        broken
            .broken
            .insert("r-1".into(), "rego_parse_error".into());
        let verdict = judge(&rollout(0.0, 0), &[at("b", broken)], 1);
        assert!(matches!(&verdict, Verdict::Fail(why) if why.contains("on b")));
    }
}
