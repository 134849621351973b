//! What nodes of a mesh say to each other beside chitchat's gossip: the handshake on a new
//! connection, and the pull protocol that carries policy changes.
//!
//! Gossip only says how far each node is (its revision: a change counter and a digest); a node that
//! sees a peer ahead pulls the changes it lacks with a [`Request::Pull`]. Every change is signed by
//! its author ([`SignedChange`]), so a change relayed by a third node is still checked against its
//! author's certificate. Messages are records (format byte + postcard): a newer build that changes
//! a message's shape gives it a new format byte, and an older peer refuses it clearly.

use serde::{Deserialize, Serialize};

use crate::{DocKind, DocumentRecord, Hlc, PolicyRecord, Record};

/// The protocol version a node speaks; peers with another version are refused at the handshake.
pub const MESH_PROTOCOL: u16 = 1;

/// Domain separation for change signatures: a signature over a change can never be replayed as a
/// signature over anything else signed with the node key (TLS handshakes sign other contexts).
pub const CHANGE_SIGNATURE_CONTEXT: &[u8] = b"mesh-agent policy change v1\0";

/// One replicated item: an incident policy or a Rego module / data document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ReplicaItem {
    Policy(PolicyRecord),
    Document(DocumentRecord),
}

impl ReplicaItem {
    /// The key the item is merged under: one last-writer-wins register per key.
    pub fn key(&self) -> String {
        match self {
            ReplicaItem::Policy(p) => policy_key(p.id),
            ReplicaItem::Document(d) => d.kind.key(&d.name),
        }
    }

    pub fn stamp(&self) -> Hlc {
        match self {
            ReplicaItem::Policy(p) => p.stamp,
            ReplicaItem::Document(d) => d.stamp,
        }
    }

    pub fn author(&self) -> &str {
        match self {
            ReplicaItem::Policy(p) => &p.author,
            ReplicaItem::Document(d) => &d.author,
        }
    }

    /// The order of versions of one key: the later stamp wins, the author id breaks ties.
    pub fn order(&self) -> (Hlc, &str) {
        (self.stamp(), self.author())
    }
}

/// The replication key of policy `id`.
pub fn policy_key(id: u64) -> String {
    format!("policy:{id:020}")
}

/// The replication key of a document.
pub fn document_key(kind: DocKind, name: &str) -> String {
    kind.key(name)
}

/// The latest version of one key as its author wrote it, delete or not, with the author's
/// signature over [`SignedChange::signed_bytes`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedChange {
    pub item: ReplicaItem,
    pub deleted: bool,
    /// ECDSA P-256 SHA-256 (ASN.1) by the author's node key; empty until signed (a node that ran
    /// alone signs its own changes when it joins a mesh).
    pub signature: Vec<u8>,
}

impl SignedChange {
    /// The bytes the author signs: a fixed context, then the item and the delete flag (postcard
    /// is deterministic, so every node computes the same bytes).
    pub fn signed_bytes(item: &ReplicaItem, deleted: bool) -> Vec<u8> {
        match postcard::to_extend(&(item, deleted), CHANGE_SIGNATURE_CONTEXT.to_vec()) {
            Ok(bytes) => bytes,
            Err(err) => unreachable!("postcard cannot fail to serialize derived types: {err}"),
        }
    }
}

/// A change as a node's replication log holds it: its local sequence number, then the change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedChange {
    pub seq: u64,
    pub change: SignedChange,
}

impl Record for LoggedChange {
    const FORMAT: u8 = 1;
    const KIND: &'static str = "replicated change";
}

/// The first message on a new connection, in both directions: who the node says it is. The
/// receiver checks the node id against the certificate the connection was authenticated with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u16,
    pub cluster_id: String,
    pub node_id: String,
    /// The address peers gossip to (chitchat's advertise address).
    pub gossip_addr: String,
}

/// Asks a peer for the changes in its log after `since` (its sequence numbers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PullRequest {
    pub since: u64,
    pub limit: u32,
}

/// A page of a peer's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PullResponse {
    /// Identifies the peer's data file: sequence numbers of another incarnation mean nothing.
    pub incarnation: u64,
    /// The peer's last sequence number.
    pub head: u64,
    /// Changes with `seq > since`, oldest first; `seq` of the last is where the next page starts.
    pub changes: Vec<LoggedChange>,
    /// Certificates (DER) of the authors of `changes`, to verify their signatures.
    pub certs: Vec<(String, Vec<u8>)>,
    /// True if the log has more after this page.
    pub more: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    Hello(Hello),
    Pull(PullRequest),
}

impl Record for Request {
    const FORMAT: u8 = 1;
    const KIND: &'static str = "mesh request";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Hello(Hello),
    Pull(PullResponse),
    /// The request was refused; the text says why (wrong cluster, identity mismatch, stale node).
    Refused(String),
}

impl Record for Response {
    const FORMAT: u8 = 1;
    const KIND: &'static str = "mesh response";
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode, encode};

    fn policy() -> PolicyRecord {
        PolicyRecord {
            id: 7,
            name: "n".into(),
            description: String::new(),
            definition_json: "{}".into(),
            active: true,
            priority: 1,
            version: 2,
            created_at_us: 1,
            updated_at_us: 2,
            stamp: Hlc {
                wall_ms: 10,
                logical: 0,
            },
            author: "a".into(),
        }
    }

    #[test]
    fn signed_bytes_depend_on_every_part() {
        let item = ReplicaItem::Policy(policy());
        let base = SignedChange::signed_bytes(&item, false);
        assert!(base.starts_with(CHANGE_SIGNATURE_CONTEXT));
        assert_ne!(base, SignedChange::signed_bytes(&item, true));
        let mut other = policy();
        other.priority = 2;
        assert_ne!(
            base,
            SignedChange::signed_bytes(&ReplicaItem::Policy(other), false)
        );
    }

    #[test]
    fn order_breaks_stamp_ties_by_author() {
        let a = ReplicaItem::Policy(policy());
        let mut p = policy();
        p.author = "b".into();
        let b = ReplicaItem::Policy(p);
        assert!(a.order() < b.order());
        assert_eq!(a.key(), "policy:00000000000000000007");
    }

    #[test]
    fn messages_round_trip() {
        let response = Response::Pull(PullResponse {
            incarnation: 3,
            head: 9,
            changes: vec![LoggedChange {
                seq: 9,
                change: SignedChange {
                    item: ReplicaItem::Policy(policy()),
                    deleted: false,
                    signature: vec![1, 2, 3],
                },
            }],
            certs: vec![("a".into(), vec![4])],
            more: false,
        });
        assert_eq!(decode::<Response>(&encode(&response)).unwrap(), response);
        let request = Request::Pull(PullRequest {
            since: 1,
            limit: 10,
        });
        assert_eq!(decode::<Request>(&encode(&request)).unwrap(), request);
    }
}
