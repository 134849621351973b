//! Deciding on one incident: evaluate it, then record the evaluation in the audit ring, and, with an
//! upstream configured, turn every matched rule into an action message in the outbox.
//!
//! Both the HTTP API and the MQTT intake come through here, so every accepted incident is evaluated
//! and audited the same way. A decision with actions is committed (audit entry and outbox messages in
//! one transaction) before [`Decider::decide`] returns; [`Decider::decide_deferred`] hands the wait
//! to the caller, so the MQTT intake can keep evaluating while earlier incidents are being committed.

use std::sync::Arc;

use mesh_proto::{ActionMessage, AuditRecord, AuditResult, IncidentView};

use agent_base::clock::{now_us, rfc3339};
use agent_engine::{Engine, Evaluation, Incident};

use crate::audit::{AuditLog, Committed, NotCommitted};
use crate::event::Dedup;
use crate::outbox::{Closed, Lane, Outbox, OutboxItem};
use crate::summary::WindowStats;

/// Evaluates incidents and audits the evaluations.
pub struct Decider {
    engine: Arc<Engine>,
    audit: AuditLog,
    node_id: String,
    upstream: Option<ActionSink>,
    stats: Option<Arc<WindowStats>>,
    /// Ids for events that come without one.
    dedup: Dedup,
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
}

impl Decider {
    /// Counts an event refused before evaluation (malformed) as an evaluation error, wherever it
    /// arrived.
    pub fn count_rejected(&self) {
        self.engine.metrics().evaluation_errors.inc();
    }

    /// `dedup` gives ids to events without one; seed it with [`Decider::reopen_windows`].
    pub fn new(engine: Arc<Engine>, audit: AuditLog, node_id: String, dedup: Dedup) -> Decider {
        Decider {
            engine,
            audit,
            node_id,
            upstream: None,
            stats: None,
            dedup,
        }
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

    /// Matched rules become action messages through `sink`.
    pub fn with_upstream(mut self, sink: ActionSink) -> Decider {
        self.upstream = Some(sink);
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
        let pending = self.decide_deferred(incident, input_json, dry_run).await?;
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
        let evaluation = self.engine.evaluate(&incident);
        let mut committed = None;
        if !dry_run {
            let (record, actions) = self.prepare(&incident, input_json, &evaluation)?;
            committed = self.record(vec![record], actions).await?;
            self.count(&evaluation);
        }
        Ok(Pending {
            decision: Decision {
                incident,
                evaluation,
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
        let mut decisions = Vec::with_capacity(events.len());
        let mut records = Vec::with_capacity(events.len());
        let mut actions = Vec::new();
        for (incident, input_json) in events {
            let evaluation = self.engine.evaluate(&incident);
            if !dry_run {
                let (record, more) = self.prepare(&incident, input_json, &evaluation)?;
                records.push(record);
                actions.extend(more);
            }
            decisions.push(Decision {
                incident,
                evaluation,
            });
        }
        if dry_run {
            return Ok(decisions);
        }
        if let Some(committed) = self.record(records, actions).await? {
            committed.await.map_err(|_| NotCommitted)??;
        }
        for decision in &decisions {
            self.count(&decision.evaluation);
        }
        Ok(decisions)
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
    ) -> Result<(AuditRecord, Vec<OutboxItem>), TooLarge> {
        let actions = match &self.upstream {
            Some(sink) => self.actions(sink, incident, evaluation)?,
            None => Vec::new(),
        };
        Ok((self.audit_record(incident, input_json, evaluation), actions))
    }

    /// Records audit entries with their actions, all in one transaction: without actions, queued
    /// for the next group commit; with actions, committed at once when there is room for them
    /// (the returned receiver resolves at the commit).
    async fn record(
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
            }],
            execution_time_ns: 0,
            // Set by the ring when appended.
            prev_hash: [0; 32],
        };
        self.audit.append(vec![record]).await?;
        if let Some(stats) = &self.stats {
            stats.record_rejected();
        }
        Ok(())
    }

    /// One action message per matched rule.
    fn actions(
        &self,
        sink: &ActionSink,
        incident: &Incident,
        evaluation: &Evaluation,
    ) -> Result<Vec<OutboxItem>, TooLarge> {
        let mut matched = evaluation.matched().peekable();
        if matched.peek().is_none() {
            return Ok(Vec::new());
        }
        let decided_at = rfc3339(now_us());
        let view = IncidentView {
            event_id: incident.id.clone(),
            event_type: incident.kind.clone(),
            severity: incident.severity,
            context: incident.context.clone(),
            timestamp: incident.timestamp.clone(),
        };
        let items: Vec<OutboxItem> = matched
            .map(|policy| {
                let action_id = action_id(&self.node_id, &incident.id, policy.id, policy.version);
                let message = ActionMessage {
                    action_id: action_id.clone(),
                    node_id: self.node_id.clone(),
                    policy_id: policy.id,
                    policy_name: policy.name.to_string(),
                    policy_version: policy.version,
                    action: policy.action.to_string(),
                    modifiers: serde_json::from_str(policy.modifiers.get())
                        .unwrap_or(serde_json::Value::Null),
                    reversibility_sec: policy.reversibility_sec,
                    incident: view.clone(),
                    decided_at: decided_at.clone(),
                };
                OutboxItem {
                    id: action_id,
                    topic: sink.topic.clone(),
                    // Serializing derived types into a String cannot fail.
                    payload: serde_json::to_string(&message).unwrap_or_default(),
                    lane: Lane::Action,
                }
            })
            .collect();
        // Items come in the order of the matched policies.
        let oversized = evaluation
            .matched()
            .zip(&items)
            .find(|(_, item)| item.payload.len() > sink.max_bytes);
        if let Some((policy, item)) = oversized {
            return Err(TooLarge {
                policy: policy.name.to_string(),
                size: item.payload.len(),
                limit: sink.max_bytes,
            });
        }
        Ok(items)
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
                })
                .collect(),
            execution_time_ns: evaluation.elapsed_ns,
            // Set by the ring when appended.
            prev_hash: [0; 32],
        }
    }
}

/// The policy name under which a rejected intake payload appears in the audit.
pub const REJECTED: &str = "(rejected)";

/// The id of the action policy `policy_id` at `version` takes on incident `event_id` at `node_id`:
/// derived, not drawn, so deciding the same incident again (a monitor's redelivery after a crash)
/// yields the same id, and the consumer's de-duplication holds across it.
pub fn action_id(node_id: &str, event_id: &str, policy_id: u64, version: u64) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"mesh-agent action v1\0");
    ctx.update(node_id.as_bytes());
    ctx.update(b"\0");
    ctx.update(event_id.as_bytes());
    ctx.update(b"\0");
    ctx.update(&policy_id.to_be_bytes());
    ctx.update(&version.to_be_bytes());
    let digest = ctx.finish();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.as_ref()[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::action_id;

    #[test]
    fn action_ids_are_stable_and_distinct() {
        let a = action_id("n1", "e1", 7, 1);
        assert_eq!(a, action_id("n1", "e1", 7, 1));
        assert_ne!(a, action_id("n1", "e1", 7, 2));
        assert_ne!(a, action_id("n1", "e1", 8, 1));
        assert_ne!(a, action_id("n2", "e1", 7, 1));
        assert_ne!(a, action_id("n1", "e2", 7, 1));
        // The separator keeps ("ab", "c") apart from ("a", "bc").
        assert_ne!(action_id("ab", "c", 1, 1), action_id("a", "bc", 1, 1));
        assert_eq!(a.len(), 36);
    }
}
