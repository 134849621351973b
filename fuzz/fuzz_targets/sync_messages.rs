//! Bytes from a peer or from the data file, decoded as every record of the mesh protocol and of
//! the store: `mesh_proto::decode` (format byte + postcard) for the pull protocol's `Request` /
//! `Response` (as `mesh::transport` reads them off a QUIC stream), the replication log's
//! `LoggedChange`, and the stored `PolicyRecord` (both schemas), `PolicyChange`, `DocumentRecord`,
//! `DocumentChange`, `AuditRecord` (both schemas) and `OutboxEntry`; plain postcard for the parts; and the
//! gossip text of a peer's revision (`mesh::sync::PeerRevision`).
//!
//! chitchat's own gossip envelope is not decoded here: chitchat keeps its decoder crate-private
//! and `mesh::codec` reaches it only through a loopback UDP hop.
//!
//! Checked beyond "never panics": whatever decodes re-encodes to bytes that decode to the same
//! value, and what the agent derives from a decoded item (keys, signed bytes, views) is computed.

#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use agent_mesh::sync::PeerRevision;
use agent_policy::{ChangeView, PolicyView};
use mesh_proto::mesh::{Hello, PullRequest, PullResponse, Request, Response};
use mesh_proto::{
    AuditRecord, AuditRecordV1, DocumentChange, DocumentRecord, Hlc, LoggedChange, OutboxEntry,
    PolicyChange, PolicyRecord, PolicyRecordV1, Record, ReplicaItem, SignedChange, decode, encode,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Decodes `bytes` as a record; what decodes must round-trip.
fn record<T: Record + PartialEq + Debug>(bytes: &[u8]) -> Option<T> {
    match decode::<T>(bytes) {
        Ok(value) => {
            let again = encode(&value);
            assert_eq!(again[0], T::FORMAT);
            let back = decode::<T>(&again)
                .unwrap_or_else(|err| panic!("{} re-encoded does not decode: {err}", T::KIND));
            assert_eq!(back, value, "{} changed through a round trip", T::KIND);
            Some(value)
        }
        Err(err) => {
            let _ = err.to_string();
            None
        }
    }
}

/// Decodes `bytes` as plain postcard (no format byte); what decodes must round-trip.
fn plain<T: Serialize + DeserializeOwned + PartialEq + Debug>(bytes: &[u8]) -> Option<T> {
    let value = postcard::from_bytes::<T>(bytes).ok()?;
    let again = postcard::to_allocvec(&value).expect("a decoded value encodes");
    assert_eq!(
        postcard::from_bytes::<T>(&again).ok().as_ref(),
        Some(&value)
    );
    Some(value)
}

fn item(item: &ReplicaItem, deleted: bool) {
    let _ = (item.key(), item.stamp(), item.author(), item.order());
    let signed = SignedChange::signed_bytes(item, deleted);
    assert!(signed.starts_with(mesh_proto::mesh::CHANGE_SIGNATURE_CONTEXT));
    if let ReplicaItem::Policy(policy) = item {
        show_policy(policy.clone());
    }
}

fn show_policy(policy: PolicyRecord) {
    let view = PolicyView::from(policy);
    let _ = serde_json::to_string(&view).expect("a policy view serializes");
}

fn hlc(stamp: Hlc) {
    // Merging and ticking never panic, whatever a peer claims.
    let _ = stamp.tick(1_760_961_600_000);
    let _ = stamp.merge(stamp, 0);
    let _ = Hlc::default().merge(stamp, u64::MAX);
}

fuzz_target!(|data: &[u8]| {
    // The pull protocol, as the transport decodes it.
    match record::<Request>(data) {
        Some(Request::Hello(hello)) => {
            let _ = hello.gossip_addr.parse::<std::net::SocketAddr>();
        }
        Some(Request::Pull(_)) | None => {}
    }
    if let Some(Response::Pull(page)) = record::<Response>(data) {
        for logged in &page.changes {
            item(&logged.change.item, logged.change.deleted);
        }
    }
    if let Some(logged) = record::<LoggedChange>(data) {
        item(&logged.change.item, logged.change.deleted);
        hlc(logged.change.item.stamp());
    }

    // Stored records.
    if let Some(policy) = record::<PolicyRecord>(data) {
        hlc(policy.stamp);
        show_policy(policy);
    }
    let _ = record::<PolicyRecordV1>(data);
    if let Some(change) = record::<PolicyChange>(data) {
        let view = ChangeView::from(change);
        let _ = serde_json::to_string(&view).expect("a change view serializes");
    }
    if let Some(document) = record::<DocumentRecord>(data) {
        item(&ReplicaItem::Document(document), false);
    }
    let _ = record::<DocumentChange>(data);
    if let Some(entry) = record::<AuditRecord>(data) {
        // The ring's hash chain hashes an entry's stored bytes.
        let _ = agent_decision::audit::entry_hash(&encode(&entry));
    }
    if let Some(old) = record::<AuditRecordV1>(data) {
        // Schema migration: an old entry chained to its predecessor's hash.
        let chained = old.chained(agent_decision::audit::entry_hash(data));
        let _ = record::<AuditRecord>(&encode(&chained));
    }
    let _ = record::<OutboxEntry>(data);

    // The parts, without a format byte.
    let _ = plain::<Hello>(data);
    let _ = plain::<PullRequest>(data);
    let _ = plain::<PullResponse>(data);
    if let Some(change) = plain::<SignedChange>(data) {
        item(&change.item, change.deleted);
    }
    let _ = plain::<ReplicaItem>(data);
    if let Some(stamp) = plain::<Hlc>(data) {
        hlc(stamp);
    }

    // A peer's revision, as gossip carries it.
    if let Ok(text) = std::str::from_utf8(data)
        && let Some(revision) = PeerRevision::parse(text)
    {
        assert_eq!(PeerRevision::parse(&revision.encode()), Some(revision));
    }
});
