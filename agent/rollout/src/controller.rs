//! The loop every node runs: publish this node's report, judge the canaries this node coordinates,
//! and keep the rollouts tidy (a second open rollout of one subject fails, a completion that lost
//! to a failure is undone, old ended rollouts are deleted). It runs every half second, when a
//! peer's values or the live set change, and when a rollout changed (the daemon wakes it after a
//! local write or a merge).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use agent_base::clock::now_ms;
use agent_engine::{Engine, HealthSample};
use agent_mesh::Mesh;
use agent_policy::opa::RegoService;
use agent_policy::rollout::{KEEP_ENDED, KEEP_ENDED_MS, Rollout, RolloutService, State, rank};

use crate::judge::{Verdict, judge};
use crate::report::{CanaryCounts, NodeReport, REPORT_KEY};

/// How often the loop runs without a wake-up.
const TICK: Duration = Duration::from_millis(500);
/// A node judges nothing for this long after it starts: its view of the members (who is alive,
/// what they reported) needs a few gossip rounds to fill.
const SETTLE: Duration = Duration::from_secs(10);
/// How often ended rollouts are looked at (undone completions, old ones deleted).
const TIDY_EVERY: Duration = Duration::from_secs(30);
/// An ended rollout is checked for a completion to undo for this long after it ended.
const RECONCILE_WITHIN_MS: u64 = 3600 * 1000;

/// The running loop; abort to stop.
pub struct RolloutController {
    task: JoinHandle<()>,
}

impl RolloutController {
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// This node's latest report, as the loop last made it (the API shows it beside the peers').
#[derive(Clone, Default)]
pub struct LocalReport(Arc<std::sync::Mutex<NodeReport>>);

impl LocalReport {
    pub fn get(&self) -> NodeReport {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn set(&self, report: NodeReport) {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = report;
    }
}

/// Starts the loop. `wake` is notified by whoever changes rollouts (an API write, a merge);
/// `local` is where it leaves this node's report.
pub fn spawn(
    rollouts: Arc<RolloutService>,
    engine: Arc<Engine>,
    rego: Arc<RegoService>,
    mesh: Option<Arc<Mesh>>,
    wake: Arc<Notify>,
    local: LocalReport,
) -> RolloutController {
    let task = tokio::spawn(async move {
        let changed = mesh.as_ref().map(|m| m.shared_changed());
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let started = Instant::now();
        let mut tidied: Option<Instant> = None;
        // This node's health when it first saw each baking canary: it reports what came after.
        let mut baselines: HashMap<String, HealthSample> = HashMap::new();
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = wake.notified() => {}
                _ = async {
                    match &changed {
                        Some(changed) => changed.notified().await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
            let service = Arc::clone(&rollouts);
            let all = match agent_base::blocking::run(move || service.list()).await {
                Ok(Ok(list)) => list,
                Ok(Err(err)) => {
                    warn!(error = %err, "cannot read rollouts");
                    continue;
                }
                Err(_) => return,
            };
            let open: Vec<&Rollout> = all.iter().filter(|r| r.state.is_open()).collect();
            let node_id = rollouts.node_id().to_owned();
            let report = own_report(&open, &engine, &rego, &node_id, &mut baselines);
            local.set(report.clone());
            // Every member's last report (a dead member's too: what it said before it died
            // counts), and who is live now.
            let mut reports = vec![(node_id.clone(), report.clone())];
            let mut live = vec![node_id.clone()];
            if let Some(mesh) = &mesh {
                mesh.publish(vec![(REPORT_KEY, report.encode())]).await;
                for member in mesh.shared_view().await.members {
                    if member.node_id == node_id {
                        continue;
                    }
                    if member.alive {
                        live.push(member.node_id.clone());
                    }
                    let peer = member
                        .values
                        .iter()
                        .find(|(key, _)| key == REPORT_KEY)
                        .and_then(|(_, value)| NodeReport::decode(value));
                    if let Some(peer) = peer {
                        reports.push((member.node_id, peer));
                    }
                }
            }
            if started.elapsed() < SETTLE {
                continue;
            }
            let coordinates = |key: &str| {
                rank::ranked(key, live.iter().map(String::as_str))
                    .first()
                    .is_some_and(|first| *first == node_id)
            };
            let mut ends = Vec::new();
            for rollout in open.iter().filter(|r| coordinates(&r.id)) {
                // Two nodes may start a rollout of one subject at once: the younger fails.
                if let Some(first) = open.iter().find(|other| {
                    other.subject.overlaps(&rollout.subject)
                        && (other.created_at_ms, &other.id) < (rollout.created_at_ms, &rollout.id)
                }) {
                    ends.push((
                        rollout.id.clone(),
                        Some(format!(
                            "rollout {} of {} started first",
                            first.id, first.subject
                        )),
                    ));
                    continue;
                }
                if !matches!(rollout.state, State::Baking { .. }) {
                    continue;
                }
                if !still_open_everywhere(rollout, &reports, &live) {
                    continue;
                }
                match judge(rollout, &reports, &live, now_ms()) {
                    Verdict::Wait => {}
                    Verdict::Complete => ends.push((rollout.id.clone(), None)),
                    Verdict::Fail(reason) => ends.push((rollout.id.clone(), Some(reason))),
                }
            }
            for (id, failure) in ends {
                let service = Arc::clone(&rollouts);
                let done = agent_base::blocking::run(move || match failure {
                    None => service.complete(&id),
                    Some(reason) => service.fail(&id, reason),
                })
                .await;
                match done {
                    Ok(Ok(ended)) => {
                        info!(rollout = %ended.id, state = ended.state.name(), "rollout ended")
                    }
                    Ok(Err(err)) => warn!(error = %err, "cannot end the rollout"),
                    Err(_) => return,
                }
            }
            if tidied.is_none_or(|at| at.elapsed() >= TIDY_EVERY) {
                tidied = Some(Instant::now());
                let ended: Vec<Rollout> = all
                    .iter()
                    .filter(|r| !r.state.is_open() && coordinates(&r.id))
                    .cloned()
                    .collect();
                let prune = to_prune(&all, now_ms());
                let prune: Vec<String> = prune.into_iter().filter(|id| coordinates(id)).collect();
                let service = Arc::clone(&rollouts);
                let tidy = agent_base::blocking::run(move || {
                    let now = now_ms();
                    for rollout in ended
                        .iter()
                        .filter(|r| ended_at(r).is_some_and(|at| now.saturating_sub(at) < RECONCILE_WITHIN_MS))
                    {
                        match service.reconcile(rollout) {
                            Ok(true) => warn!(rollout = %rollout.id, "a completion written while the rollout failed elsewhere was undone"),
                            Ok(false) => {}
                            Err(err) => warn!(rollout = %rollout.id, error = %err, "cannot reconcile the ended rollout"),
                        }
                    }
                    service.prune(&prune)
                })
                .await;
                match tidy {
                    Ok(Ok(0)) => {}
                    Ok(Ok(pruned)) => info!(pruned, "old ended rollouts deleted"),
                    Ok(Err(err)) => warn!(error = %err, "cannot delete old rollouts"),
                    Err(_) => return,
                }
            }
        }
    });
    RolloutController { task }
}

/// Whether every live member that reports on rollouts still reports `rollout` as baking: only
/// then is it ended. A node that has not pulled an end (it just came back, or a partition
/// healed) sees the rollout baking while the others no longer report it, and must not judge it:
/// its late end would overwrite theirs. (Members that report nothing, older builds, are not
/// waited for.)
fn still_open_everywhere(
    rollout: &Rollout,
    reports: &[(String, NodeReport)],
    live: &[String],
) -> bool {
    live.iter().all(|node| {
        reports
            .iter()
            .find(|(n, _)| n == node)
            .is_none_or(|(_, report)| report.canaries.contains_key(&rollout.id))
    })
}

/// When `rollout` ended (Unix ms), if it has.
fn ended_at(rollout: &Rollout) -> Option<u64> {
    match &rollout.state {
        State::Completed { at_ms, .. }
        | State::Promoted { at_ms, .. }
        | State::Failed { at_ms, .. }
        | State::Cancelled { at_ms, .. } => Some(*at_ms),
        State::Shadow | State::Baking { .. } => None,
    }
}

/// Ended rollouts past the newest [`KEEP_ENDED`], or ended longer than [`KEEP_ENDED_MS`] ago.
fn to_prune(all: &[Rollout], now_ms: u64) -> Vec<String> {
    let mut ended: Vec<(u64, &str)> = all
        .iter()
        .filter_map(|r| Some((ended_at(r)?, r.id.as_str())))
        .collect();
    ended.sort_by(|a, b| b.cmp(a));
    ended
        .iter()
        .enumerate()
        .filter(|(i, (at, _))| *i >= KEEP_ENDED || now_ms.saturating_sub(*at) > KEEP_ENDED_MS)
        .map(|(_, (_, id))| (*id).to_owned())
        .collect()
}

/// This node's report on the open rollouts.
fn own_report(
    open: &[&Rollout],
    engine: &Engine,
    rego: &RegoService,
    node_id: &str,
    baselines: &mut HashMap<String, HealthSample>,
) -> NodeReport {
    let now = engine.health().sample();
    baselines.retain(|id, _| open.iter().any(|r| r.id == *id));
    let mut report = NodeReport::default();
    for rollout in open
        .iter()
        .filter(|r| matches!(r.state, State::Baking { .. }))
    {
        let baseline = baselines.entry(rollout.id.clone()).or_insert(now);
        report.canaries.insert(
            rollout.id.clone(),
            CanaryCounts::new(rollout.applies_on(node_id), now.since(baseline)),
        );
    }
    for (rollout, why) in rego.overlay_failures() {
        if open.iter().any(|r| r.id == rollout) {
            report.broken.insert(rollout, why);
        }
    }
    for shadow in engine.current().shadows() {
        report
            .shadows
            .insert(shadow.rollout_id.to_string(), shadow.stats.counts());
    }
    report.bounded()
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_policy::rollout::{Candidate, Plan, Subject};

    fn ended(id: &str, at_ms: u64) -> Rollout {
        Rollout {
            id: id.into(),
            subject: Subject::RegoModule { id: "m".into() },
            candidate: Candidate::RegoModule(String::new()),
            plan: Plan::Shadow,
            state: State::Cancelled {
                at_ms,
                by: "a".into(),
            },
            base_version: None,
            created_at_ms: 0,
            created_by: "a".into(),
        }
    }

    #[test]
    fn ended_rollouts_are_kept_for_a_while_and_up_to_a_count() {
        let now = KEEP_ENDED_MS * 2;
        let mut all: Vec<Rollout> = (0..KEEP_ENDED as u64 + 5)
            .map(|i| ended(&format!("r-{i}"), now - 1000 - i))
            .collect();
        all.push(ended("old", now - KEEP_ENDED_MS - 1));
        let mut open = ended("open", 0);
        open.state = State::Shadow;
        all.push(open);
        let pruned = to_prune(&all, now);
        // The 5 oldest past the count, and the one past the age; never an open one.
        assert_eq!(pruned.len(), 6, "{pruned:?}");
        assert!(pruned.contains(&"old".to_owned()));
        assert!(pruned.contains(&format!("r-{}", KEEP_ENDED + 4)));
        assert!(!pruned.contains(&"r-0".to_owned()));
        assert!(!pruned.contains(&"open".to_owned()));
    }
}
