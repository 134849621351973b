//! Replay: the incidents this node's audit ring recorded, evaluated again against a policy's
//! candidate definition (a stored policy's, a change to it not saved yet, or a policy not created
//! yet), with what each verdict was then beside what it would be now. Nothing is recorded, sent or
//! rolled out: it answers "what would this change have done" before the change is made.
//!
//! The ring keeps each entry's matched verdicts (and those that lacked a field), so "recorded" is
//! whether the policy matched that incident then. Facts are not replayed: a condition that reads
//! `mesh.*` or `history.*` sees them missing, as on a node alone with an empty history.

use std::sync::Arc;

use serde::Serialize;

use agent_engine::{Incident, Matcher, NoFacts, RegoSet, rego_input};
use agent_store::StoreError;
use agent_store::audit_ring::Query;

use crate::audit::AuditLog;
use crate::decider::{MESH_ACTION_EVENT, REJECTED};
use crate::event::Event;

/// Ring entries read at most in one call.
pub const MAX_REPLAYED: usize = 10_000;
/// The longest one replay may evaluate for; past it the report says `truncated` (each evaluation
/// has the Rego time limit, and a replay holds a blocking thread).
pub const MAX_REPLAY_TIME: std::time::Duration = std::time::Duration::from_secs(10);
/// Changed verdicts listed at most (all are counted).
pub const MAX_LISTED: usize = 200;

/// One incident whose verdict would change.
#[derive(Debug, Clone, Serialize)]
pub struct ChangedVerdict {
    pub seq: u64,
    pub event_id: String,
    pub event_type: String,
    pub severity: f64,
    pub timestamp_us: i64,
    /// Whether the policy matched this incident when it was recorded.
    pub recorded: bool,
    /// Whether the candidate matches it.
    pub replayed: bool,
    /// Whether the stored definition, replayed the same way (no facts, today's Rego), matches it:
    /// where this differs from `recorded`, the difference is the replay's, not the candidate's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a replay found.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    /// The policy whose recorded verdicts are compared (`None`: a policy not created yet, which
    /// matched nothing then).
    pub policy_id: Option<u64>,
    /// Incidents evaluated again.
    pub replayed: usize,
    /// Entries of the ring that are not incidents (rejected payloads, mesh actions), left out.
    pub skipped: usize,
    pub matched_then: usize,
    pub matched_now: usize,
    /// Incidents the candidate matches and the policy did not.
    pub newly_matching: usize,
    /// Incidents the policy matched and the candidate does not.
    pub no_longer_matching: usize,
    /// Incidents the candidate could not evaluate (a Rego error, a time limit).
    pub errors: usize,
    /// Incidents on which the candidate and the stored definition, both replayed, disagree: the
    /// change's own effect, free of what replaying loses (facts, older Rego). `None` for a policy
    /// not created yet.
    pub differs_from_stored: Option<usize>,
    /// The replay stopped at [`MAX_REPLAY_TIME`] before `limit` entries.
    pub truncated: bool,
    /// The changed verdicts, newest first, at most [`MAX_LISTED`].
    pub changes: Vec<ChangedVerdict>,
    /// The oldest entry replayed (`None` if none).
    pub oldest_seq: Option<u64>,
    pub newest_seq: Option<u64>,
}

/// Replays the newest `limit` incidents of `audit` against `candidate`.
/// `stored` is the policy's stored definition (for `policy_id`), replayed beside the candidate.
pub fn replay(
    audit: &AuditLog,
    policy_id: Option<u64>,
    candidate: &Matcher,
    stored: Option<&Matcher>,
    rego: Arc<RegoSet>,
    limit: usize,
) -> Result<ReplayReport, StoreError> {
    let limit = limit.clamp(1, MAX_REPLAYED);
    let started = std::time::Instant::now();
    let mut report = ReplayReport {
        policy_id,
        replayed: 0,
        skipped: 0,
        matched_then: 0,
        matched_now: 0,
        newly_matching: 0,
        no_longer_matching: 0,
        errors: 0,
        differs_from_stored: stored.map(|_| 0),
        truncated: false,
        changes: Vec::new(),
        oldest_seq: None,
        newest_seq: None,
    };
    let mut before: Option<u64> = None;
    'pages: while report.replayed + report.skipped < limit {
        let want = (limit - report.replayed - report.skipped).min(1_000);
        let page = audit.read(Query {
            limit: want,
            before_seq: before,
            max_bytes: 4 * 1024 * 1024,
            policy_id: None,
            since_us: None,
            matched_only: false,
        })?;
        let Some(last) = page.records.last() else {
            break;
        };
        before = Some(last.seq);
        for record in &page.records {
            if started.elapsed() > MAX_REPLAY_TIME {
                report.truncated = true;
                break 'pages;
            }
            let is_incident = !record.event_id.starts_with(MESH_ACTION_EVENT)
                && !record.results.iter().any(|r| r.policy_name == REJECTED);
            let event = is_incident
                .then(|| serde_json::from_str::<Event>(&record.input_json).ok())
                .flatten();
            let Some(event) = event else {
                report.skipped += 1;
                continue;
            };
            let incident = Incident {
                id: record.event_id.clone(),
                kind: event.event_type,
                severity: event.severity,
                timestamp: event.timestamp,
                context: event.context,
            };
            let recorded = policy_id.is_some_and(|id| {
                record
                    .results
                    .iter()
                    .any(|r| r.policy_id == id && r.matched)
            });
            let mut input = None;
            let mut rego_for = || {
                let input = input
                    .get_or_insert_with(|| rego_input(&incident, &NoFacts))
                    .clone();
                (Arc::clone(&rego), input)
            };
            let (replayed, error) = match candidate.eval(&incident, &NoFacts, &mut rego_for) {
                Ok(outcome) => (outcome.matched, None),
                Err(err) => (false, Some(err.to_string())),
            };
            let stored_now = stored.map(|matcher| {
                matcher
                    .eval(&incident, &NoFacts, &mut rego_for)
                    .is_ok_and(|outcome| outcome.matched)
            });
            if let (Some(count), Some(now)) = (report.differs_from_stored.as_mut(), stored_now)
                && now != replayed
            {
                *count += 1;
            }
            report.replayed += 1;
            report.newest_seq.get_or_insert(record.seq);
            report.oldest_seq = Some(record.seq);
            report.matched_then += usize::from(recorded);
            report.matched_now += usize::from(replayed);
            report.errors += usize::from(error.is_some());
            if recorded != replayed || error.is_some() {
                if replayed && !recorded {
                    report.newly_matching += 1;
                }
                if recorded && !replayed {
                    report.no_longer_matching += 1;
                }
                if report.changes.len() < MAX_LISTED {
                    report.changes.push(ChangedVerdict {
                        seq: record.seq,
                        event_id: incident.id.clone(),
                        event_type: incident.kind.clone(),
                        severity: incident.severity,
                        timestamp_us: record.at_us,
                        recorded,
                        replayed,
                        stored: stored_now,
                        error,
                    });
                }
            }
        }
        if page.next_before.is_none() && page.records.len() < want {
            // The ring has nothing older.
            break;
        }
    }
    Ok(report)
}
