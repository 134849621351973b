//! The loop every node runs: publish this node's report, and judge the canaries this node
//! coordinates. It runs every half second, when a peer's values or the live set change, and
//! when a rollout changed (the daemon wakes it after a local write or a merge).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use agent_base::clock::now_ms;
use agent_engine::{Engine, HealthSample};
use agent_mesh::Mesh;
use agent_policy::opa::RegoService;
use agent_policy::rollout::{Rollout, RolloutService, State, rank};

use crate::judge::{Verdict, judge};
use crate::report::{CanaryCounts, NodeReport, REPORT_KEY};

/// How often the loop runs without a wake-up.
const TICK: Duration = Duration::from_millis(500);

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
            let open = match agent_base::blocking::run(move || service.list()).await {
                Ok(Ok(list)) => list
                    .into_iter()
                    .filter(|r| r.state.is_open())
                    .collect::<Vec<_>>(),
                Ok(Err(err)) => {
                    warn!(error = %err, "cannot read rollouts");
                    continue;
                }
                Err(_) => return,
            };
            let report = own_report(&open, &engine, &rego, rollouts.node_id(), &mut baselines);
            local.set(report.clone());
            let node_id = rollouts.node_id().to_owned();
            let mut reports = vec![(node_id.clone(), report.clone())];
            let mut live = vec![node_id.clone()];
            if let Some(mesh) = &mesh {
                mesh.publish(vec![(REPORT_KEY, report.encode())]).await;
                for member in mesh.shared_view().await.members {
                    if member.node_id == node_id || !member.alive {
                        continue;
                    }
                    live.push(member.node_id.clone());
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
            for rollout in open
                .iter()
                .filter(|r| matches!(r.state, State::Baking { .. }))
            {
                let coordinator = rank::ranked(&rollout.id, live.iter().map(String::as_str))
                    .first()
                    .is_some_and(|first| *first == node_id);
                if !coordinator {
                    continue;
                }
                let end = match judge(rollout, &reports, now_ms()) {
                    Verdict::Wait => continue,
                    Verdict::Complete => None,
                    Verdict::Fail(reason) => Some(reason),
                };
                let service = Arc::clone(&rollouts);
                let id = rollout.id.clone();
                let done = agent_base::blocking::run(move || match end {
                    None => service.complete(&id),
                    Some(reason) => service.fail(&id, reason),
                })
                .await;
                match done {
                    Ok(Ok(ended)) => {
                        info!(rollout = %ended.id, state = ended.state.name(), "canary judged")
                    }
                    Ok(Err(err)) => {
                        warn!(rollout = %rollout.id, error = %err, "cannot end the canary rollout")
                    }
                    Err(_) => return,
                }
            }
        }
    });
    RolloutController { task }
}

/// This node's report on the open rollouts.
fn own_report(
    open: &[Rollout],
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
