//! Deciding on one incident: evaluate it, then record the evaluation in the audit ring, and, with an
//! upstream configured, turn every matched rule into an action message in the outbox.
//!
//! Both the HTTP API and the MQTT intake come through here, so every accepted incident is evaluated
//! and audited the same way. A decision with actions is committed (audit entry and outbox messages in
//! one transaction) before [`Decider::decide`] returns; [`Decider::decide_deferred`] hands the wait
//! to the caller, so the MQTT intake can keep evaluating while earlier incidents are being committed.

use std::sync::Arc;

use mesh_proto::{AuditRecord, AuditResult, ShadowResult};

use agent_base::clock::now_us;
use agent_engine::{Engine, Evaluation, Explanation, Incident};

use crate::audit::{AuditLog, Committed, NotCommitted};
use crate::event::Dedup;
use crate::facts::{DecisionsConfig, FactSources};
use crate::mesh_actions::MeshActions;
use crate::outbox::{Closed, Outbox, OutboxItem};
use crate::summary::WindowStats;

mod actions;
mod ids;
mod mesh;
mod observe;

pub use ids::action_id;
pub(crate) use ids::derived_uuid;

/// Evaluates incidents and audits the evaluations.
pub struct Decider {
    engine: Arc<Engine>,
    audit: AuditLog,
    node_id: String,
    upstream: Option<ActionSink>,
    stats: Option<Arc<WindowStats>>,
    /// Ids for events that come without one.
    dedup: Dedup,
    config: DecisionsConfig,
    /// Mesh and history facts.
    facts: FactSources,
    /// What becomes of matched rules' actions: throttling, and the mesh-scoped ones.
    mesh_actions: MeshActions,
    metrics: crate::DecisionMetrics,
    /// `[decision_logs]`, when it has a sink.
    decision_log: Option<Arc<crate::decision_log::DecisionLog>>,
}

/// One policy's verdict on an incident, explained (`POST /evaluate?explain=true`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct PolicyExplanation {
    pub policy_id: u64,
    pub policy_name: String,
    pub matched: bool,
    /// For a condition: each test evaluated, the one that decided, fields and facts read.
    #[serde(flatten)]
    pub condition: Option<Explanation>,
    /// For a Rego rule: the rule path (its value is the whole answer) or why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rego: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where matched rules go: the outbox, for this topic, at most this large.
pub struct ActionSink {
    pub outbox: Arc<Outbox>,
    pub topic: String,
    /// The largest payload the publisher may send (`mqtt.max_message_bytes`).
    pub max_bytes: usize,
}

/// Why an incident was not decided.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    /// The decision had actions and could not be committed: the caller must retry.
    #[error(transparent)]
    NotCommitted(#[from] NotCommitted),
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
    /// The agent is stopping: nothing was recorded; the caller retries elsewhere or later.
    #[error(transparent)]
    Stopping(#[from] Closed),
}

/// An action message would be larger than the broker link may carry: nothing was recorded.
#[derive(Debug, thiserror::Error)]
#[error(
    "the action message of policy `{policy}` would be {size} bytes, over mqtt.max_message_bytes ({limit}); the incident is refused (shrink its context)"
)]
pub struct TooLarge {
    pub policy: String,
    pub size: usize,
    pub limit: usize,
}

/// A decision whose audit entry and actions may still be on their way to disk.
pub struct Pending {
    pub decision: Decision,
    /// Set when the decision produced actions: resolves when they are committed.
    pub committed: Option<Committed>,
}

/// An incident and what every active policy said about it.
pub struct Decision {
    pub incident: Incident,
    pub evaluation: Evaluation,
    /// With [`DecideOptions::explain`]: why each policy matched or not.
    pub explanations: Option<Vec<PolicyExplanation>>,
}

/// How to decide.
#[derive(Debug, Clone, Copy, Default)]
pub struct DecideOptions {
    /// Evaluate without recording anything.
    pub dry_run: bool,
    /// Explain every verdict, with the same facts the evaluation read.
    pub explain: bool,
}

/// The event id under which a mesh action sent on a peer's claim is audited (then its id).
pub const MESH_ACTION_EVENT: &str = "mesh-action:";

impl Decider {
    /// Counts an event refused before evaluation (malformed) as an evaluation error, wherever it
    /// arrived.
    pub fn count_rejected(&self) {
        self.engine.metrics().evaluation_errors.inc();
    }

    /// `dedup` gives ids to events without one; seed it with [`Decider::reopen_windows`].
    pub fn new(engine: Arc<Engine>, audit: AuditLog, node_id: String, dedup: Dedup) -> Decider {
        Decider::with_config(engine, audit, node_id, dedup, DecisionsConfig::default())
    }

    /// Like [`new`](Self::new), with the `[decisions]` section.
    pub fn with_config(
        engine: Arc<Engine>,
        audit: AuditLog,
        node_id: String,
        dedup: Dedup,
        config: DecisionsConfig,
    ) -> Decider {
        let capacity = audit.settings().capacity.min(usize::MAX as u64) as usize;
        Decider {
            facts: FactSources::new(&node_id, &config, capacity),
            mesh_actions: MeshActions::new(&node_id, config.window_ms()),
            config,
            engine,
            audit,
            node_id,
            upstream: None,
            stats: None,
            dedup,
            metrics: crate::DecisionMetrics::default(),
            decision_log: None,
        }
    }

    /// Logs every recorded decision to `log` (`[decision_logs]`).
    pub fn with_decision_log(
        mut self,
        log: Option<Arc<crate::decision_log::DecisionLog>>,
    ) -> Decider {
        self.decision_log = log;
        self
    }

    /// Counts actions into `metrics` (registered by the daemon).
    pub fn with_metrics(mut self, metrics: crate::DecisionMetrics) -> Decider {
        self.metrics = metrics;
        self
    }

    /// The `[decisions]` section in force.
    pub fn config(&self) -> &DecisionsConfig {
        &self.config
    }

    /// Why each policy of `evaluation` matched or not, with the facts the evaluation read.
    fn explanations(
        &self,
        incident: &Incident,
        evaluation: &Evaluation,
        facts: &dyn agent_engine::Facts,
    ) -> Vec<PolicyExplanation> {
        evaluation
            .iter()
            .map(|(policy, verdict)| {
                let rego = match &policy.matcher {
                    agent_engine::Matcher::Rego { path } => Some(path.clone()),
                    agent_engine::Matcher::Condition(_) => None,
                };
                PolicyExplanation {
                    policy_id: policy.id,
                    policy_name: policy.name.to_string(),
                    matched: verdict.outcome.matched,
                    condition: policy.matcher.explain(incident, facts),
                    rego,
                    error: verdict.error.as_ref().map(ToString::to_string),
                }
            })
            .collect()
    }

    /// The de-duplication windows of id-less events, for the intakes.
    pub fn dedup(&self) -> &Dedup {
        &self.dedup
    }

    /// Re-opens the de-duplication windows of the events recorded within the last `window` (after
    /// a restart: a redelivered incident keeps the id it was recorded under).
    pub fn reopen_windows(
        &self,
        window: std::time::Duration,
    ) -> Result<usize, agent_store::StoreError> {
        let now_us = now_us();
        let since_us = now_us.saturating_sub(window.as_micros() as i64);
        let records = self
            .audit
            .read(crate::audit::Query {
                limit: crate::event::DEDUP_MAX_ENTRIES,
                since_us: Some(since_us),
                ..crate::audit::Query::default()
            })?
            .records;
        let now_ms = (now_us / 1000) as u64;
        for record in records.iter().rev() {
            self.dedup.remember(&record.event_id, now_ms);
        }
        Ok(self.dedup.len())
    }

    /// Matched rules become action messages through `sink`; this node can then send mesh
    /// actions (and says so in gossip).
    pub fn with_upstream(mut self, sink: ActionSink) -> Decider {
        self.upstream = Some(sink);
        self.mesh_actions.set_can_act();
        self
    }

    /// Every evaluation is also counted in `stats` (for the audit summaries).
    pub fn with_stats(mut self, stats: Arc<WindowStats>) -> Decider {
        self.stats = Some(stats);
        self
    }

    /// Evaluates `incident` (whose original JSON is `input_json`) and, unless `dry_run`, records the
    /// evaluation; when it produced actions, returns only once they are committed.
    pub async fn decide(
        &self,
        incident: Incident,
        input_json: String,
        dry_run: bool,
    ) -> Result<Decision, DecideError> {
        let options = DecideOptions {
            dry_run,
            explain: false,
        };
        let pending = self.decide_with(incident, input_json, options).await?;
        if let Some(committed) = pending.committed {
            committed.await.map_err(|_| NotCommitted)??;
        }
        Ok(pending.decision)
    }

    /// Like [`decide`](Self::decide), but leaves waiting for the commit to the caller. Under the
    /// outbox's `block` policy this waits for room first (backpressure). Dropping the future
    /// part way leaves no trace: room taken for it is given back.
    pub async fn decide_deferred(
        &self,
        incident: Incident,
        input_json: String,
        dry_run: bool,
    ) -> Result<Pending, DecideError> {
        let options = DecideOptions {
            dry_run,
            explain: false,
        };
        self.decide_with(incident, input_json, options).await
    }

    /// [`decide_deferred`](Self::decide_deferred), optionally explaining each verdict.
    pub async fn decide_with(
        &self,
        incident: Incident,
        input_json: String,
        options: DecideOptions,
    ) -> Result<Pending, DecideError> {
        let now_ms = agent_base::clock::now_ms();
        // The facts view is gone before the first await: one evaluation, one view.
        let (evaluation, explanations) = {
            let facts = self.facts.view(&incident, None, now_ms);
            let evaluation = self.engine.evaluate(&incident, &facts);
            let explanations = options
                .explain
                .then(|| self.explanations(&incident, &evaluation, &facts));
            (evaluation, explanations)
        };
        let mut committed = None;
        if !options.dry_run {
            let logged = self.decision_log.as_ref().map(|_| input_json.clone());
            let mut tentative = self.mesh_actions.tentative();
            let (record, actions) =
                self.prepare(&incident, input_json, &evaluation, now_ms, &mut tentative)?;
            committed = self.record(vec![record], actions, &evaluation.set).await?;
            // Recorded (or the writer fails and the agent stops): only now does it count.
            tentative.commit();
            self.remember(&incident, &evaluation, now_ms);
            self.count(&evaluation);
            if let Some(input_json) = logged {
                self.log_decision(&incident, &input_json, &evaluation);
            }
        }
        Ok(Pending {
            decision: Decision {
                incident,
                evaluation,
                explanations,
            },
            committed,
        })
    }

    /// Decides a batch all or nothing: every event is evaluated and every action built (and
    /// checked) before anything is recorded, and then all are committed together, in one
    /// transaction; returns once they are.
    pub async fn decide_batch(
        &self,
        events: Vec<(Incident, String)>,
        dry_run: bool,
    ) -> Result<Vec<Decision>, DecideError> {
        let mut decisions: Vec<Decision> = Vec::with_capacity(events.len());
        let mut records = Vec::with_capacity(events.len());
        let mut actions = Vec::new();
        let mut tentative = self.mesh_actions.tentative();
        // Events of the batch before this one, not recorded yet: facts count them.
        let mut earlier = crate::facts::Unrecorded::default();
        let now_ms = agent_base::clock::now_ms();
        let mut logged = Vec::new();
        for (incident, input_json) in events {
            if self.decision_log.is_some() && !dry_run {
                logged.push(input_json.clone());
            }
            let evaluation = {
                let facts = self.facts.view(&incident, Some(&earlier), now_ms);
                self.engine.evaluate(&incident, &facts)
            };
            if !dry_run {
                let (record, more) =
                    self.prepare(&incident, input_json, &evaluation, now_ms, &mut tentative)?;
                records.push(record);
                actions.extend(more);
            }
            earlier.add(&incident.kind, incident.severity);
            decisions.push(Decision {
                incident,
                evaluation,
                explanations: None,
            });
        }
        if dry_run {
            return Ok(decisions);
        }
        let set = decisions
            .last()
            .map_or_else(|| self.engine.current(), |d| Arc::clone(&d.evaluation.set));
        let committed = self.record(records, actions, &set).await?;
        tentative.commit();
        for decision in &decisions {
            self.remember(&decision.incident, &decision.evaluation, now_ms);
        }
        for (decision, input_json) in decisions.iter().zip(&logged) {
            self.log_decision(&decision.incident, input_json, &decision.evaluation);
        }
        if let Some(committed) = committed {
            committed.await.map_err(|_| NotCommitted)??;
        }
        for decision in &decisions {
            self.count(&decision.evaluation);
        }
        Ok(decisions)
    }

    /// Notes a decided incident for mesh and history facts.
    fn remember(&self, incident: &Incident, evaluation: &Evaluation, now_ms: u64) {
        self.facts.record(
            incident,
            now_ms,
            evaluation.matched().map(|policy| &*policy.name),
        );
    }

    /// Counts a recorded evaluation for the audit summaries.
    fn count(&self, evaluation: &Evaluation) {
        if let Some(stats) = &self.stats {
            stats.record(evaluation);
        }
    }

    /// The audit entry and the action messages of one evaluation. Nothing is recorded yet: an
    /// action too large refuses the incident before anything is.
    fn prepare(
        &self,
        incident: &Incident,
        input_json: String,
        evaluation: &Evaluation,
        now_ms: u64,
        tentative: &mut crate::mesh_actions::Tentative<'_>,
    ) -> Result<(AuditRecord, Vec<OutboxItem>), TooLarge> {
        let (actions, outcomes) = self.actions(incident, evaluation, now_ms, tentative)?;
        let mut record = self.audit_record(incident, input_json, evaluation);
        for result in &mut record.results {
            result.action = outcomes.get(&result.policy_id).cloned();
        }
        Ok((record, actions))
    }

    /// Records audit entries with their actions, all in one transaction: without actions, queued
    /// for the next group commit; with actions, committed at once when there is room for them
    /// (the returned receiver resolves at the commit).
    async fn record(
        &self,
        records: Vec<AuditRecord>,
        actions: Vec<OutboxItem>,
        set: &agent_engine::PolicySet,
    ) -> Result<Option<Committed>, DecideError> {
        // Counted once accepted (a commit that then fails stops the agent).
        let outcomes = observe::action_outcomes(&records, set);
        let recorded = self.record_now(records, actions).await;
        if recorded.is_ok() {
            for (mesh, outcome) in &outcomes {
                self.metrics.action(*mesh, outcome);
            }
        }
        recorded
    }

    async fn record_now(
        &self,
        records: Vec<AuditRecord>,
        actions: Vec<OutboxItem>,
    ) -> Result<Option<Committed>, DecideError> {
        match &self.upstream {
            Some(sink) if !actions.is_empty() => {
                let room = sink.outbox.reserve(actions.len()).await?;
                Ok(Some(
                    self.audit.append_durable(records, actions, room).await,
                ))
            }
            _ => {
                self.audit.append(records).await?;
                Ok(None)
            }
        }
    }

    /// Records an intake payload that is not a valid event: audited as rejected, with the reason.
    pub async fn reject(
        &self,
        source: &str,
        payload: &[u8],
        reason: &str,
    ) -> Result<(), NotCommitted> {
        let text = String::from_utf8_lossy(&payload[..payload.len().min(64 * 1024)]);
        let record = AuditRecord {
            seq: 0,
            at_us: now_us(),
            node: self.node_id.clone(),
            event_id: format!("rejected-{}", uuid::Uuid::new_v4()),
            // Kept as a JSON string: the payload itself may not be JSON at all.
            input_json: serde_json::Value::String(text.into_owned()).to_string(),
            policy_revision: self.engine.current().revision(),
            policies_evaluated: 0,
            results: vec![AuditResult {
                policy_id: 0,
                policy_version: 0,
                policy_name: REJECTED.into(),
                matched: false,
                execution_time_ns: 0,
                missing_fields: Vec::new(),
                error: Some(format!("rejected payload from {source}: {reason}")),
                action: None,
            }],
            execution_time_ns: 0,
            // Set by the ring when appended.
            prev_hash: [0; 32],
            shadow: Vec::new(),
        };
        self.audit.append(vec![record]).await?;
        if let Some(stats) = &self.stats {
            stats.record_rejected();
        }
        Ok(())
    }

    pub(crate) fn audit_record(
        &self,
        incident: &Incident,
        input_json: String,
        evaluation: &Evaluation,
    ) -> AuditRecord {
        AuditRecord {
            seq: 0,
            at_us: now_us(),
            node: self.node_id.clone(),
            event_id: incident.id.clone(),
            input_json,
            policy_revision: evaluation.set.revision(),
            policies_evaluated: evaluation.verdicts.len() as u32,
            results: evaluation
                .iter()
                .filter(|(_, verdict)| {
                    verdict.outcome.matched
                        || verdict.outcome.any_missing()
                        || verdict.error.is_some()
                })
                .map(|(policy, verdict)| AuditResult {
                    policy_id: policy.id,
                    policy_version: policy.version,
                    policy_name: policy.name.to_string(),
                    matched: verdict.outcome.matched,
                    execution_time_ns: verdict.elapsed_ns,
                    missing_fields: policy
                        .matcher
                        .missing_fields(verdict.outcome)
                        .map(str::to_owned)
                        .collect(),
                    error: verdict.error.as_ref().map(ToString::to_string),
                    action: None,
                })
                .collect(),
            execution_time_ns: evaluation.elapsed_ns,
            // Set by the ring when appended.
            prev_hash: [0; 32],
            shadow: evaluation
                .shadow_verdicts()
                .map(|(shadow, verdict)| ShadowResult {
                    policy_id: shadow.policy.id,
                    rollout_id: shadow.rollout_id.to_string(),
                    matched: verdict.verdict.outcome.matched,
                    agrees: verdict.agrees,
                    execution_time_ns: verdict.verdict.elapsed_ns,
                    error: verdict.verdict.error.as_ref().map(ToString::to_string),
                })
                .collect(),
        }
    }
}

/// The policy name under which a rejected intake payload appears in the audit.
pub const REJECTED: &str = "(rejected)";
