//! Policy rollout: serving this node's log to peers, and pulling from peers that are ahead.
//!
//! Gossip carries each node's revision (`<incarnation>:<head>:<digest>`). Every round, the
//! puller looks at live peers whose digest differs from this node's and whose log head is past
//! what this node has read of it, picks up to [`PULLS_PER_ROUND`] at random, and pulls their log
//! after its cursor, page by page. Each change is checked: its author's certificate must chain to
//! the mesh CA and be issued to the author, and the author's signature must verify; a change that
//! fails is refused and logged, the others are merged. Skipping peers with the same digest keeps
//! rollout traffic to about one pull per node per change, not one per pair of nodes.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use mesh_proto::mesh::{PullRequest, PullResponse, Request, Response};
use tracing::{info, warn};

use crate::links::Links;
use agent_identity::Verifier;
use agent_store::{MergeOutcome, Store};

use crate::error::MeshError;

/// Changes per page of a pull.
pub const PAGE: u32 = 512;
/// Encoded bytes of changes a page holds at most (one change always fits, however large): pages
/// of large documents (bundles, megabytes each) stay well under the transport's response cap
/// (64 MiB), and one slow page does not hold a pull for long.
pub const PAGE_BYTES: usize = 16 * 1024 * 1024;
/// Pulls in flight at most (one per peer).
pub const PULLS_PER_ROUND: usize = 2;

/// What a peer says about itself in gossip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRevision {
    pub incarnation: u64,
    pub head: u64,
    pub digest: String,
}

impl PeerRevision {
    pub fn encode(&self) -> String {
        format!("{}:{}:{}", self.incarnation, self.head, self.digest)
    }

    /// The digest of a well-formed revision text, without copying it (`parse` without the
    /// allocation, for the per-round member tally).
    pub fn digest_of(text: &str) -> Option<&str> {
        let mut parts = text.splitn(3, ':');
        parts.next()?.parse::<u64>().ok()?;
        parts.next()?.parse::<u64>().ok()?;
        parts.next()
    }

    pub fn parse(text: &str) -> Option<PeerRevision> {
        let mut parts = text.splitn(3, ':');
        Some(PeerRevision {
            incarnation: parts.next()?.parse().ok()?,
            head: parts.next()?.parse().ok()?,
            digest: parts.next()?.to_owned(),
        })
    }
}

/// Answers a peer's request from this node's store.
pub fn serve(store: &Store, stale: &AtomicBool, request: Request) -> Response {
    match request {
        Request::Hello(_) => Response::Refused("hello is only the first request".into()),
        Request::Pull(pull) => {
            if stale.load(Ordering::Acquire) {
                return Response::Refused(
                    "this node was away longer than the tombstone TTL and is catching up".into(),
                );
            }
            let limit = pull.limit.clamp(1, PAGE) as usize;
            let page = match store.log_since(pull.since, limit, PAGE_BYTES) {
                Ok(page) => page,
                Err(err) => return Response::Refused(format!("store error: {err}")),
            };
            let mut authors: Vec<&str> = page
                .changes
                .iter()
                .map(|c| c.change.item.author())
                .collect();
            authors.sort_unstable();
            authors.dedup();
            let certs = match store.node_certs(&authors) {
                Ok(certs) => certs,
                Err(err) => return Response::Refused(format!("store error: {err}")),
            };
            Response::Pull(PullResponse {
                incarnation: page.incarnation,
                head: page.head,
                changes: page.changes,
                certs,
                more: page.more,
            })
        }
    }
}

/// Pulls from peers and merges what they have.
pub struct Puller {
    pub links: Arc<dyn Links>,
    pub store: Arc<Store>,
    pub verifier: Arc<Verifier>,
    /// Set while this node must not hand on its set (see `Store::drop_absent_before`).
    pub stale: Arc<AtomicBool>,
    pub tombstone_ttl_ms: u64,
    pub metrics: super::metrics::MeshMetrics,
}

/// What one pull from one peer did.
#[derive(Debug, Default, Clone, Copy)]
pub struct PullOutcome {
    pub merge: MergeOutcome,
    pub refused: usize,
}

impl Puller {
    /// Pulls everything `peer` (node `node_id` at `addr`) has after this node's cursor for it.
    pub async fn pull(
        &self,
        node_id: &str,
        addr: SocketAddr,
        revision: &PeerRevision,
    ) -> Result<PullOutcome, MeshError> {
        let full = self.stale.load(Ordering::Acquire);
        let mut since = if full {
            0
        } else {
            self.store.peer_cursor(node_id, revision.incarnation)?
        };
        let mut total = PullOutcome::default();
        let mut seen_keys = HashSet::new();
        loop {
            let request = Request::Pull(PullRequest { since, limit: PAGE });
            let page = match self.links.request(addr, &request).await? {
                Response::Pull(page) => page,
                Response::Refused(reason) => {
                    return Err(MeshError::Peer {
                        node_id: node_id.to_owned(),
                        what: format!("refused the pull: {reason}"),
                    });
                }
                Response::Hello(_) => {
                    return Err(MeshError::Peer {
                        node_id: node_id.to_owned(),
                        what: "answered a pull with a hello".into(),
                    });
                }
            };
            let cursor = page.changes.last().map_or(since, |c| c.seq);
            let mut certs = Vec::new();
            for (author, der) in page.certs {
                match self.verifier.learn(&author, &der) {
                    Ok(()) => certs.push((author, der)),
                    Err(err) => {
                        warn!(peer = node_id, author = %author, error = %err, "refused a certificate")
                    }
                }
            }
            let mut accepted = Vec::with_capacity(page.changes.len());
            for logged in page.changes {
                if full {
                    seen_keys.insert(logged.change.item.key());
                }
                match self.verifier.verify_change(&logged.change) {
                    Ok(()) => accepted.push(logged.change),
                    Err(err) => {
                        total.refused += 1;
                        self.metrics.changes_refused.inc();
                        warn!(peer = node_id, error = %err, "refused a change");
                    }
                }
            }
            let store = Arc::clone(&self.store);
            let peer = node_id.to_owned();
            let incarnation = page.incarnation;
            let merge = agent_base::blocking::run(move || {
                store.merge_remote(&peer, incarnation, cursor, accepted, &certs)
            })
            .await
            .map_err(MeshError::task)??;
            self.metrics.changes_merged.inc_by(merge.applied as u64);
            self.metrics.changes_stale.inc_by(merge.stale as u64);
            total.merge.applied += merge.applied;
            total.merge.stale += merge.stale;
            total.merge.policies_changed |= merge.policies_changed;
            total.merge.documents_changed |= merge.documents_changed;
            total.merge.rollouts_changed |= merge.rollouts_changed;
            since = cursor;
            if !page.more {
                break;
            }
        }
        if full {
            let horizon = agent_base::clock::now_ms().saturating_sub(self.tombstone_ttl_ms);
            let dropped = self.store.drop_absent_before(&seen_keys, horizon)?;
            if !dropped.is_empty() {
                total.merge.policies_changed = true;
                total.merge.documents_changed = true;
                total.merge.rollouts_changed = true;
            }
            warn!(peer = node_id, dropped = ?dropped, "rejoined after longer than the tombstone TTL: took the peer's set, dropped keys it no longer knows");
            self.stale.store(false, Ordering::Release);
        }
        if total.merge.applied > 0 {
            info!(
                peer = node_id,
                applied = total.merge.applied,
                stale = total.merge.stale,
                refused = total.refused,
                "merged policy changes"
            );
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_round_trip_through_gossip_text() {
        let revision = PeerRevision {
            incarnation: 42,
            head: 7,
            digest: "00ff".into(),
        };
        assert_eq!(PeerRevision::digest_of(&revision.encode()), Some("00ff"));
        assert_eq!(PeerRevision::parse(&revision.encode()), Some(revision));
        assert_eq!(PeerRevision::parse("x:1:d"), None);
        assert_eq!(PeerRevision::digest_of("x:1:d"), None);
        assert_eq!(PeerRevision::parse("1:2"), None);
        assert_eq!(PeerRevision::digest_of("1:2"), None);
    }
}
