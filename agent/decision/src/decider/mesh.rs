//! The decider's side of mesh decisions: the history index refilled from the ring at start, the
//! mesh's view coming in, the mesh actions this node is first-ranked for going out (audited and put
//! in the outbox like any decision), and what it gossips.

use mesh_proto::{ActionOutcome, AuditRecord, AuditResult, IncidentView};

use agent_base::clock::{now_us, rfc3339};
use agent_engine::CompiledPolicy;

use super::{DecideError, Decider, MESH_ACTION_EVENT};
use crate::audit::NotCommitted;
use crate::facts::{MeshIncidents, PeerView};
use crate::mesh_actions::{Disposition, DueAction, RecentAction};

impl Decider {
    /// Fills the history index from the audit ring (at start): as many of the newest entries as
    /// the ring holds, read a page at a time. The actions sent within the last day are noted
    /// too, so that after a restart a mesh action is not sent again and cooldowns hold.
    pub fn reopen_history(&self) -> Result<usize, agent_store::StoreError> {
        #[derive(serde::Deserialize)]
        struct Kind {
            event_type: Option<String>,
        }
        let capacity = self.audit.settings().capacity as usize;
        let sent_since_ms = agent_base::clock::now_ms().saturating_sub(24 * 3600 * 1000);
        let mut sent: Vec<(String, u64, String, u64)> = Vec::new();
        let mut entries: Vec<(String, u64, Vec<String>)> = Vec::new();
        let mut before_seq = None;
        while entries.len() < capacity {
            let page = self.audit.read(crate::audit::Query {
                limit: 4096.min(capacity - entries.len()),
                before_seq,
                ..crate::audit::Query::default()
            })?;
            let Some(last) = page.records.last() else {
                break;
            };
            before_seq = Some(last.seq);
            for record in page.records {
                let Ok(Kind {
                    event_type: Some(kind),
                }) = serde_json::from_str::<Kind>(&record.input_json)
                else {
                    continue;
                };
                let at_ms = (record.at_us / 1000).max(0) as u64;
                let mut matched = Vec::new();
                for result in record.results.into_iter().filter(|r| r.matched) {
                    if let Some(ActionOutcome::Sent { action_id }) = result.action
                        && at_ms >= sent_since_ms
                    {
                        sent.push((action_id, result.policy_id, kind.clone(), at_ms));
                    }
                    matched.push(result.policy_name);
                }
                // A mesh action sent on a peer's claim is not an incident of this node's.
                if !record.event_id.starts_with(MESH_ACTION_EVENT) {
                    entries.push((kind, at_ms, matched));
                }
            }
        }
        for (kind, at_ms, matched) in entries.iter().rev() {
            self.facts
                .remember(kind, *at_ms, matched.iter().map(String::as_str));
        }
        for (action_id, policy_id, kind, at_ms) in sent.iter().rev() {
            self.mesh_actions
                .remember_sent(action_id, *policy_id, kind, *at_ms);
        }
        Ok(self.facts.history_len())
    }

    /// The mesh is configured: until it gives a settled view, mesh facts are missing and this
    /// node's mesh rules are suppressed; `members_seen` (the membership persisted by the last
    /// run) is the least size a majority counts against, until this node sees that many members
    /// or `floor_for` (the mesh's dead-node grace) has passed.
    pub fn with_mesh(self, members_seen: usize, floor_for: std::time::Duration) -> Decider {
        self.facts.expect_mesh(members_seen, floor_for);
        self
    }

    /// The mesh as gossip shows it now: mesh facts read it, and claimed mesh actions this node is
    /// now first-ranked for are sent (see [`act_on_mesh`](Self::act_on_mesh)).
    pub fn set_peers(&self, view: PeerView) {
        self.facts.set_peers(view);
    }

    /// Sends (or audits as suppressed) the mesh actions this node must now act on: peers' claims
    /// it is first-ranked for, and takeovers from failed actors. Returns how many it decided.
    pub async fn act_on_mesh(&self) -> Result<usize, DecideError> {
        let Some(sink) = &self.upstream else {
            return Ok(0);
        };
        let set = self.engine.current();
        let now_us = now_us();
        let peers = self.facts.peers();
        if !peers.settled {
            return Ok(0);
        }
        let mut tentative = self.mesh_actions.tentative();
        let due =
            self.mesh_actions
                .due(&peers, &set, (now_us / 1000).max(0) as u64, &mut tentative);
        if due.is_empty() {
            return Ok(0);
        }
        let mut records = Vec::with_capacity(due.len());
        let mut actions = Vec::new();
        for action in &due {
            let Some(policy) = set
                .policies()
                .iter()
                .find(|p| p.id == action.claim.policy_id)
            else {
                continue;
            };
            records.push(self.due_record(policy, action, now_us, set.revision()));
            if let Disposition::Send { action_id, mesh } = &action.disposition {
                let incident = IncidentView {
                    event_id: action.claim.event_id.clone(),
                    event_type: action.claim.key.clone(),
                    severity: action.claim.severity,
                    context: Default::default(),
                    timestamp: None,
                };
                actions.push(self.message(
                    sink,
                    policy,
                    action_id.clone(),
                    incident,
                    mesh.clone(),
                    rfc3339(now_us),
                ));
            }
        }
        let decided = records.len();
        let committed = self.record(records, actions, &set).await?;
        tentative.commit();
        if let Some(committed) = committed {
            committed.await.map_err(|_| NotCommitted)??;
        }
        Ok(decided)
    }

    /// The audit entry of a mesh action decided on a claim.
    fn due_record(
        &self,
        policy: &CompiledPolicy,
        action: &DueAction,
        now_us: i64,
        revision: u64,
    ) -> AuditRecord {
        let claim = &action.claim;
        AuditRecord {
            seq: 0,
            at_us: now_us,
            node: self.node_id.clone(),
            event_id: format!("{MESH_ACTION_EVENT}{}", claim.action_id),
            input_json: serde_json::json!({
                "event_type": claim.key,
                "mesh_claim": {
                    "claimed_by": action.claimant,
                    "action_id": claim.action_id,
                    "policy_id": claim.policy_id,
                    "incident_key": claim.key,
                    "window": claim.window,
                    "event_id": claim.event_id,
                    "severity": claim.severity,
                    "at_ms": claim.at_ms,
                }
            })
            .to_string(),
            policy_revision: revision,
            policies_evaluated: 0,
            results: vec![AuditResult {
                policy_id: policy.id,
                policy_version: policy.version,
                policy_name: policy.name.to_string(),
                matched: true,
                execution_time_ns: 0,
                missing_fields: Vec::new(),
                error: None,
                action: Some(action.disposition.outcome()),
            }],
            execution_time_ns: 0,
            prev_hash: [0; 32],
            shadow: Vec::new(),
        }
    }

    /// What this node publishes in gossip now: its incident summary, claims and acted log.
    pub fn gossip_values(&self) -> Vec<(&'static str, String)> {
        let now_ms = agent_base::clock::now_ms();
        let mut values = self.mesh_actions.gossip_values(now_ms);
        if self.config.share_incidents {
            values.push((
                crate::facts::peers::KEY_INCIDENTS,
                self.facts.gossip_summary(
                    now_ms,
                    self.config.gossip_max_bytes,
                    self.config.publish_interval_ms,
                ),
            ));
        }
        values
    }

    /// Whether this node's view of the mesh can speak for it (see [`with_mesh`](Self::with_mesh)).
    pub fn mesh_settled(&self) -> bool {
        self.facts.peers().settled
    }

    /// Resolves when claims or mesh actions changed: the daemon gossips them at once.
    pub async fn mesh_actions_changed(&self) {
        self.mesh_actions.changed().await;
    }

    /// `GET /mesh/incidents`.
    pub fn mesh_incidents(&self) -> MeshIncidents {
        self.facts.incidents(agent_base::clock::now_ms())
    }

    /// Recent mesh actions and who sent each.
    pub fn mesh_actions(&self) -> Vec<RecentAction> {
        self.mesh_actions.recent(&self.facts.peers())
    }
}
