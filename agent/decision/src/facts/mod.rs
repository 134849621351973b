//! The facts conditions read beside the incident. Mesh facts (`mesh.fraction_with('cpu_spike')`)
//! come from this node's own incident window and its gossiped view of the peers; history facts
//! (`history.count('memory_leak', '10m')`) from the index kept beside the audit ring.
//!
//! An evaluation takes a [`FactsView`]: the peers' view loaded once, the incident being evaluated
//! counted as if it were already recorded (it is recorded only once the decision is, so a dry run
//! leaves no trace), and the local window and history read under a short lock per fact.

mod config;
mod history;
pub mod peers;
mod window;

use std::sync::{Arc, Mutex, MutexGuard};

use agent_engine::{FactQuery, Facts, Incident};
use arc_swap::ArcSwap;
use serde::Serialize;

pub use config::DecisionsConfig;
pub use history::History;
pub use peers::{MemberInput, MeshInput, PeerView};
pub use window::{IncidentWindow, TypeStats};

/// Where facts come from, shared by every evaluation on this node.
pub struct FactSources {
    window: Mutex<IncidentWindow>,
    history: Mutex<History>,
    peers: ArcSwap<PeerView>,
    /// Set when a mesh is configured: until its view settles, mesh facts are missing.
    mesh: Mutex<Option<Settling>>,
    /// The summary last gossiped.
    published: Mutex<Option<Published>>,
}

struct Published {
    /// When it was last looked at (a change is looked for at most once per interval).
    at_ms: u64,
    summary: mesh_proto::shared::IncidentSummary,
    text: String,
}

/// How a node that expects a mesh decides its view has settled: it sees at least as many
/// members as the last run persisted (or, with none persisted, any peer), or it has had views for
/// [`SETTLE`].
struct Settling {
    members_seen: usize,
    /// How long the persisted membership counts at most (the mesh's dead-node grace: after it,
    /// members that left are forgotten by the mesh too).
    floor_until: tokio::time::Instant,
    first_view: Option<tokio::time::Instant>,
}

/// How long after its first mesh view a node trusts its view without a persisted membership.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(5);

impl FactSources {
    /// `history_capacity` is the audit ring's capacity: the index keeps as much as the ring.
    pub fn new(node_id: &str, config: &DecisionsConfig, history_capacity: usize) -> FactSources {
        FactSources {
            window: Mutex::new(IncidentWindow::new(config.window_ms())),
            history: Mutex::new(History::new(history_capacity)),
            peers: ArcSwap::from_pointee(PeerView::alone(node_id)),
            mesh: Mutex::new(None),
            published: Mutex::new(None),
        }
    }

    /// A mesh is configured; `members_seen` is the membership the last run persisted (0: none),
    /// which counts as the mesh's size for a majority until this node sees as many members, or
    /// for `floor_for` at most.
    pub fn expect_mesh(&self, members_seen: usize, floor_for: std::time::Duration) {
        let now = tokio::time::Instant::now();
        *lock(&self.mesh) = Some(Settling {
            members_seen,
            floor_until: now.checked_add(floor_for).unwrap_or(now),
            first_view: None,
        });
        let mut alone = PeerView::clone(&self.peers.load());
        alone.settled = false;
        alone.known_floor = members_seen;
        self.peers.store(Arc::new(alone));
    }

    /// The facts for evaluating `incident` at `now_ms`; `earlier` are incidents decided with it
    /// (a batch) and not recorded yet, which count as if they were.
    pub fn view<'a>(
        &'a self,
        incident: &'a Incident,
        earlier: Option<&'a Unrecorded>,
        now_ms: u64,
    ) -> FactsView<'a> {
        FactsView {
            sources: self,
            peers: std::cell::OnceCell::new(),
            now_ms,
            current: Some((&incident.kind, incident.severity)),
            earlier,
        }
    }

    /// Records a decided incident: in the window (gossiped) and the history index.
    pub fn record<'a>(
        &self,
        incident: &Incident,
        at_ms: u64,
        matched: impl IntoIterator<Item = &'a str>,
    ) {
        lock(&self.window).record(&incident.kind, incident.severity, at_ms);
        lock(&self.history).record(&incident.kind, at_ms, matched);
    }

    /// Feeds the history index with an entry of the ring (at start, oldest first).
    pub fn remember<'a>(&self, kind: &str, at_ms: u64, matched: impl IntoIterator<Item = &'a str>) {
        lock(&self.history).record(kind, at_ms, matched);
    }

    pub fn history_len(&self) -> usize {
        lock(&self.history).len()
    }

    /// The mesh's latest view. Until it has settled (see [`Settling`]) mesh facts are missing
    /// and a majority is counted against the persisted membership.
    pub fn set_peers(&self, mut view: PeerView) {
        if let Some(settling) = lock(&self.mesh).as_mut() {
            let first = *settling
                .first_view
                .get_or_insert_with(tokio::time::Instant::now);
            let had_floor = settling.members_seen > 0;
            let reached = view.known >= settling.members_seen;
            if reached || tokio::time::Instant::now() >= settling.floor_until {
                // The mesh's own view holds at least as much from here on.
                settling.members_seen = 0;
            }
            view.known_floor = settling.members_seen;
            // With a persisted membership, seeing it again; without one, seeing any peer (a join
            // learns the whole membership from its seed in one exchange); else SETTLE.
            let enough = if had_floor { reached } else { view.known > 1 };
            view.settled = enough || first.elapsed() >= SETTLE;
        }
        self.peers.store(Arc::new(view));
    }

    pub fn peers(&self) -> Arc<PeerView> {
        self.peers.load_full()
    }

    /// What this node gossips about its incidents, as gossip text within `max_bytes`. The value
    /// changes only when what mesh facts read changes (see [`significant`]), at most once per
    /// `min_interval_ms`, or when the last one is half a window old (receivers drop a summary two
    /// windows old): a peer's change wakes every node, and a summary that changed on every wake
    /// would echo around the mesh.
    pub fn gossip_summary(&self, now_ms: u64, max_bytes: usize, min_interval_ms: u64) -> String {
        let mut last = lock(&self.published);
        if let Some(published) = last.as_ref()
            && now_ms.saturating_sub(published.at_ms) < min_interval_ms
        {
            return published.text.clone();
        }
        let mut window = lock(&self.window);
        let refresh_ms = window.window_ms() / 2;
        // The summary is built for the gossiped text: base64 takes 4 bytes for every 3.
        let mut summary = window.summary(now_ms, max_bytes / 4 * 3);
        drop(window);
        if let Some(published) = last.as_mut()
            && significant(&published.summary) == significant(&summary)
            && now_ms.saturating_sub(published.summary.at_ms) < refresh_ms
        {
            published.at_ms = now_ms;
            return published.text.clone();
        }
        summary.at_ms = now_ms;
        let text = peers::to_gossip(&summary);
        *last = Some(Published {
            at_ms: now_ms,
            summary,
            text: text.clone(),
        });
        text
    }

    /// The mesh-wide picture of incidents this node sees (`GET /mesh/incidents`).
    pub fn incidents(&self, now_ms: u64) -> MeshIncidents {
        let peers = self.peers.load_full();
        let window = lock(&self.window);
        let mut types: std::collections::BTreeMap<String, TypeView> = Default::default();
        for (kind, stats) in window.all(now_ms) {
            types
                .entry(kind.to_owned())
                .or_default()
                .nodes
                .push(NodeCount {
                    node_id: peers.self_id.clone(),
                    count: stats.count,
                    max_severity: stats.max_severity,
                });
        }
        for (kind, across) in &peers.types {
            let entry = types.entry(kind.clone()).or_default();
            for (node, count, severity) in &across.nodes {
                entry.nodes.push(NodeCount {
                    node_id: node.clone(),
                    count: *count,
                    max_severity: f64::from(*severity),
                });
            }
        }
        let alive = peers.alive.len();
        for view in types.values_mut() {
            view.nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
            view.nodes_with = view.nodes.len();
            view.fraction_with = view.nodes_with as f64 / alive as f64;
            view.max_severity = view
                .nodes
                .iter()
                .map(|n| n.max_severity)
                .fold(f64::NEG_INFINITY, f64::max);
        }
        MeshIncidents {
            node_id: peers.self_id.clone(),
            window_sec: window.window_ms() / 1000,
            nodes_alive: alive,
            nodes_known: peers.known,
            types,
        }
    }
}

/// What of a summary is worth gossiping again: which types, their highest severity (what mesh
/// facts read), and each count's power of two (so `/mesh/incidents` stays within 2x of the truth
/// while a steady stream of incidents does not republish every second).
fn significant(summary: &mesh_proto::shared::IncidentSummary) -> Vec<(&str, u32, u32)> {
    let mut parts: Vec<(&str, u32, u32)> = summary
        .types
        .iter()
        .map(|t| {
            let magnitude = t.count.checked_ilog2().unwrap_or(0);
            (t.kind.as_str(), magnitude, t.max_severity.to_bits())
        })
        .collect();
    // The summary lists the busiest types first; two with close counts swap places freely.
    parts.sort_unstable();
    parts
}

/// `GET /mesh/incidents`.
#[derive(Debug, Clone, Serialize)]
pub struct MeshIncidents {
    pub node_id: String,
    pub window_sec: u64,
    pub nodes_alive: usize,
    pub nodes_known: usize,
    pub types: std::collections::BTreeMap<String, TypeView>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TypeView {
    pub nodes_with: usize,
    pub fraction_with: f64,
    pub max_severity: f64,
    pub nodes: Vec<NodeCount>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeCount {
    pub node_id: String,
    pub count: u32,
    pub max_severity: f64,
}

/// The facts one evaluation reads.
pub struct FactsView<'a> {
    sources: &'a FactSources,
    /// Loaded on the first mesh fact, once per evaluation (a guard, not a reference count:
    /// cheaper on the hot path; an evaluation that reads no mesh fact does not load it).
    peers: std::cell::OnceCell<arc_swap::Guard<Arc<PeerView>>>,
    now_ms: u64,
    /// The incident under evaluation, not recorded yet: counted here.
    current: Option<(&'a str, f64)>,
    /// Incidents of the same batch before it, not recorded yet either.
    earlier: Option<&'a Unrecorded>,
}

/// Incidents decided but not recorded yet (the earlier events of a batch), by type: how many and
/// the highest severity. A map, so a fact reads it in one lookup however long the batch.
#[derive(Debug, Default)]
pub struct Unrecorded(std::collections::HashMap<String, (u32, f64), foldhash::fast::RandomState>);

impl Unrecorded {
    pub fn add(&mut self, kind: &str, severity: f64) {
        match self.0.get_mut(kind) {
            Some((count, max)) => {
                *count = count.saturating_add(1);
                *max = max.max(severity);
            }
            None => {
                self.0.insert(kind.to_owned(), (1, severity));
            }
        }
    }
}

impl FactsView<'_> {
    fn peers(&self) -> &PeerView {
        self.peers.get_or_init(|| self.sources.peers.load())
    }

    /// The incidents of `kind` not recorded yet (this one and earlier ones of its batch), and
    /// their highest severity.
    fn unrecorded(&self, kind: &str) -> (u32, f64) {
        let mut count = 0u32;
        let mut severity = f64::NEG_INFINITY;
        if let Some(&(n, max)) = self.earlier.and_then(|e| e.0.get(kind)) {
            count = n;
            severity = max;
        }
        for &(k, s) in self.current.iter() {
            if k == kind {
                count += 1;
                severity = severity.max(s);
            }
        }
        (count, severity)
    }

    /// This node's figures for `kind`, the incidents not recorded yet included.
    fn local(&self, kind: &str) -> Option<TypeStats> {
        let recorded = lock(&self.sources.window).stats(kind, self.now_ms);
        let (count, severity) = self.unrecorded(kind);
        if count == 0 {
            return recorded;
        }
        Some(match recorded {
            Some(stats) => TypeStats {
                count: stats.count.saturating_add(count),
                max_severity: stats.max_severity.max(severity),
            },
            None => TypeStats {
                count,
                max_severity: severity,
            },
        })
    }

    fn nodes_with(&self, kind: &str) -> usize {
        let peers = self.peers().peers_with(kind).map_or(0, |t| t.nodes.len());
        peers + usize::from(self.local(kind).is_some())
    }

    fn max_severity(&self, kind: &str) -> Option<f64> {
        let peers = self.peers().peers_with(kind).map(|t| t.max_severity);
        let local = self.local(kind).map(|s| s.max_severity);
        match (peers, local) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Facts for FactsView<'_> {
    fn fact(&self, query: FactQuery<'_>) -> Option<f64> {
        let is_mesh = !matches!(
            query,
            FactQuery::HistoryCount { .. } | FactQuery::LastMatched(_)
        );
        if is_mesh && !self.peers().settled {
            // A node that has just joined sees too few members to speak for the mesh.
            return None;
        }
        let alive = || self.peers().alive.len().max(1);
        match query {
            FactQuery::NodesAlive => Some(alive() as f64),
            FactQuery::NodesWith(kind) => Some(self.nodes_with(kind) as f64),
            FactQuery::FractionWith(kind) => Some(self.nodes_with(kind) as f64 / alive() as f64),
            FactQuery::MaxSeverity(kind) => self.max_severity(kind),
            FactQuery::HistoryCount { kind, window_ms } => {
                let since = self.now_ms.saturating_sub(window_ms);
                let recorded = lock(&self.sources.history).count(kind, since);
                Some((recorded + self.unrecorded(kind).0 as usize) as f64)
            }
            FactQuery::LastMatched(policy) => lock(&self.sources.history)
                .last_matched(policy)
                .map(|at| self.now_ms.saturating_sub(at) as f64 / 1000.0),
        }
    }

    fn rego_mesh(&self) -> Option<serde_json::Value> {
        let peers = self.peers();
        if !peers.settled {
            return None;
        }
        let alive = peers.alive.len().max(1);
        let mut kinds: Vec<&str> = peers.types.keys().map(String::as_str).collect();
        let local: Vec<String> = lock(&self.sources.window)
            .all(self.now_ms)
            .into_iter()
            .map(|(kind, _)| kind.to_owned())
            .collect();
        kinds.extend(local.iter().map(String::as_str));
        if let Some((current, _)) = self.current {
            kinds.push(current);
        }
        kinds.extend(
            self.earlier
                .iter()
                .flat_map(|e| e.0.keys().map(String::as_str)),
        );
        kinds.sort_unstable();
        kinds.dedup();
        let incidents: serde_json::Map<String, serde_json::Value> = kinds
            .into_iter()
            .map(|kind| {
                let nodes = self.nodes_with(kind);
                (
                    kind.to_owned(),
                    serde_json::json!({
                        "nodes_with": nodes,
                        "fraction_with": nodes as f64 / alive as f64,
                        "max_severity": self.max_severity(kind),
                    }),
                )
            })
            .collect();
        Some(serde_json::json!({
            "nodes_alive": alive,
            "incidents": incidents,
        }))
    }
}

/// The state behind these locks stays consistent at every step, so a panic elsewhere while one
/// was held leaves nothing half-done: take it anyway.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incident(kind: &str) -> Incident {
        Incident {
            id: "e".into(),
            kind: kind.into(),
            severity: 3.0,
            timestamp: None,
            context: Default::default(),
        }
    }

    #[test]
    fn a_batch_counts_its_earlier_events_in_one_lookup() {
        let sources = FactSources::new("n1", &DecisionsConfig::default(), 100);
        let now = 1_000_000;
        sources.record(&incident("leak"), now - 1_000, []);
        let mut earlier = Unrecorded::default();
        earlier.add("leak", 2.0);
        earlier.add("other", 9.0);
        let leak = incident("leak");
        let facts = sources.view(&leak, Some(&earlier), now);
        let query = FactQuery::HistoryCount {
            kind: "leak",
            window_ms: 60_000,
        };
        // One recorded, one earlier in the batch, and this one.
        assert_eq!(facts.fact(query), Some(3.0));
        assert_eq!(facts.fact(FactQuery::MaxSeverity("other")), Some(9.0));
    }

    #[test]
    fn the_gossiped_summary_changes_only_with_the_counts_or_to_stay_fresh() {
        let sources = FactSources::new("n1", &DecisionsConfig::default(), 100);
        let t0 = 1_000_000;
        sources.record(&incident("a"), t0, []);
        sources.record(&incident("a"), t0, []);
        let first = sources.gossip_summary(t0, 1024, 1000);
        // Woken again and again by peers: the same text, so gossip has nothing new to carry.
        assert_eq!(sources.gossip_summary(t0 + 10, 1024, 1000), first);
        assert_eq!(sources.gossip_summary(t0 + 5_000, 1024, 1000), first);
        // A third incident within the same power of two does not; a type that appears does
        // (after the interval)...
        sources.record(&incident("a"), t0 + 2_000, []);
        assert_eq!(sources.gossip_summary(t0 + 4_000, 1024, 1000), first);
        sources.record(&incident("b"), t0 + 6_000, []);
        let second = sources.gossip_summary(t0 + 6_000, 1024, 1000);
        assert_ne!(second, first);
        // ...and so does age: half a window on, the same counts are published afresh.
        let third = sources.gossip_summary(t0 + 6_000 + 31_000, 1024, 1000);
        assert_ne!(third, second);
        let summary: mesh_proto::shared::IncidentSummary = peers::from_gossip(&third).unwrap();
        assert_eq!(summary.at_ms, t0 + 37_000);
        assert_eq!(summary.types[0].count, 3);
    }
}
