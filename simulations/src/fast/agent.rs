//! One simulated node's agent, built from the constructors the daemon uses: the policy service
//! and its engine over the node's store, the audit ring and outbox, the decider with mesh facts,
//! the mesh, and `agent-mesh-link` between the two. In place of the HTTP API and MQTT, the
//! simulation hands incidents to the decider ([`Agent::decide`]) and a stand-in upstream takes
//! actions out of the outbox, as the broker's PUBACK would, and tells the simulation.

use std::sync::Arc;
use std::time::Duration;

use agent_base::Fatal;
use agent_decision::audit::{AuditConfig, AuditLog, AuditWriter};
use agent_decision::event::{Dedup, Event};
use agent_decision::outbox::{Outbox, OutboxBounds, WhenFull};
use agent_decision::{ActionSink, AuditMetrics, Decider, DecisionsConfig, OutboxMetrics};
use agent_engine::{Engine, EngineMetrics, RegoEngine};
use agent_mesh::{Mesh, OnMerged};
use agent_mesh_link::MeshLink;
use agent_policy::PolicyService;
use agent_policy::opa::RegoConfig;
use agent_store::Store;
use anyhow::Context;
use mesh_proto::upstream::ActionMessage;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;

/// The topic actions are written for (nothing is published).
const ACTIONS_TOPIC: &str = "sim/actions";
/// Audit entries a node keeps: enough for history facts, small enough for 1,000 nodes.
const AUDIT_CAPACITY: u64 = 10_000;
/// How long an id-less event's de-duplication window lasts (the daemon's default).
const DEDUP_WINDOW: Duration = Duration::from_secs(60);

/// An action taken out of a node's outbox.
pub struct Delivery {
    pub node: usize,
    pub message: ActionMessage,
}

/// What one evaluation cost and whether a policy failed in it.
pub struct Evaluated {
    pub elapsed_ns: u64,
    pub errors: usize,
}

/// A running node's agent; [`Agent::stop`] takes it down (its store lives on in the simulation).
pub struct Agent {
    pub policies: Arc<PolicyService>,
    decider: Arc<Decider>,
    mesh: Arc<Mesh>,
    link: MeshLink,
    upstream: JoinHandle<()>,
    writer: AuditWriter,
}

impl Agent {
    /// Builds node `index`'s agent on `store`; `start_mesh` starts its mesh, which calls the
    /// given hook after each merge (the daemon's: reload the policies). Actions it sends go to
    /// `deliveries`.
    pub async fn start(
        index: usize,
        node_id: &str,
        store: Arc<Store>,
        grace: Duration,
        deliveries: UnboundedSender<Delivery>,
        start_mesh: impl AsyncFnOnce(OnMerged) -> anyhow::Result<Mesh>,
    ) -> anyhow::Result<Agent> {
        let mut registry = Registry::default();
        let rego_settings = RegoConfig::default().settings();
        let engine = Arc::new(Engine::new(
            Arc::new(RegoEngine::new(rego_settings)),
            EngineMetrics::register(&mut registry),
        ));
        let policies = Arc::new(PolicyService::new(Arc::clone(&store), Arc::clone(&engine))?);
        let on_merged: OnMerged = {
            let policies = Arc::clone(&policies);
            Arc::new(move |outcome| {
                if outcome.policies_changed
                    && let Err(err) = policies.reload()
                {
                    tracing::error!(error = %err, "reloading policies after a merge");
                }
            })
        };
        let mesh = start_mesh(on_merged).await?;
        let outbox = Outbox::open(
            store.database(),
            OutboxBounds {
                capacity: 100_000,
                when_full: WhenFull::Block,
                summary_capacity: 1,
                log_capacity: 100,
            },
            OutboxMetrics::register(&mut registry),
        )?;
        let (audit, writer) = AuditLog::start_with_outbox(
            store.database(),
            AuditConfig {
                capacity: AUDIT_CAPACITY,
                ..AuditConfig::default()
            },
            AuditMetrics::register(&mut registry),
            Fatal::new(),
            Some(Arc::clone(&outbox)),
        )?;
        let seen = store.members_seen()?.unwrap_or(0);
        let decider = Decider::with_config(
            engine,
            audit.clone(),
            node_id.to_owned(),
            Dedup::new(DEDUP_WINDOW),
            DecisionsConfig::default(),
        )
        .with_mesh(seen as usize, grace)
        .with_upstream(ActionSink {
            outbox: Arc::clone(&outbox),
            topic: ACTIONS_TOPIC.into(),
            max_bytes: 256 * 1024,
        });
        // After a restart, as the daemon does: history facts and de-duplication windows come back
        // from the audit ring.
        decider
            .reopen_history()
            .context("re-reading history facts")?;
        decider
            .reopen_windows(DEDUP_WINDOW)
            .context("re-opening de-duplication windows")?;
        let decider = Arc::new(decider);
        let mesh = Arc::new(mesh);
        let link = agent_mesh_link::spawn(Arc::clone(&mesh), Arc::clone(&decider), store);
        let upstream = tokio::spawn(upstream(index, outbox, audit, deliveries));
        Ok(Agent {
            policies,
            decider,
            mesh,
            link,
            upstream,
            writer,
        })
    }

    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    /// Decides one incident of `kind` as the MQTT intake would; recorded, its actions on their
    /// way to the outbox.
    pub async fn decide(
        &self,
        event_id: String,
        kind: &str,
        severity: f64,
    ) -> anyhow::Result<Evaluated> {
        let input = serde_json::json!({
            "event_type": kind,
            "severity": severity,
            "event_id": event_id,
        })
        .to_string();
        let event: Event = serde_json::from_str(&input)?;
        let incident = event.into_incident("sim", input.as_bytes(), self.decider.dedup());
        let pending = self.decider.decide_deferred(incident, input, false).await?;
        let evaluation = &pending.decision.evaluation;
        Ok(Evaluated {
            elapsed_ns: evaluation.elapsed_ns,
            errors: evaluation
                .verdicts
                .iter()
                .filter(|v| v.error.is_some())
                .count(),
        })
    }

    /// Stops the node at once, as a kill would (what the audit writer holds is committed: the
    /// store is in memory, so nothing is gained by losing it).
    pub async fn stop(self) {
        self.upstream.abort();
        let _ = self.upstream.await;
        self.link.stop().await;
        if let Some(mesh) = Arc::into_inner(self.mesh) {
            mesh.shutdown().await;
        }
        self.writer.close().await;
    }
}

/// The upstream's stand-in: every committed action is delivered at once, then removed from the
/// outbox, as the MQTT upstream does on the broker's acknowledgement.
async fn upstream(
    node: usize,
    outbox: Arc<Outbox>,
    audit: AuditLog,
    deliveries: UnboundedSender<Delivery>,
) {
    let mut after = 0;
    loop {
        let entries = match outbox.read_after(after, 256) {
            Ok(entries) => entries,
            Err(err) => {
                tracing::error!(node, error = %err, "reading the outbox");
                return;
            }
        };
        if entries.is_empty() {
            outbox.wait_committed().await;
            continue;
        }
        let mut keys = Vec::with_capacity(entries.len());
        for (key, entry) in entries {
            after = key;
            keys.push(key);
            if entry.topic != ACTIONS_TOPIC {
                continue;
            }
            match serde_json::from_str::<ActionMessage>(&entry.payload) {
                Ok(message) => {
                    let _ = deliveries.send(Delivery { node, message });
                }
                Err(err) => tracing::error!(node, error = %err, "an action that does not parse"),
            }
        }
        audit.remove_from_outbox(keys).await;
    }
}
