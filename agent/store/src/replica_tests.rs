//! Merging pulled changes: last writer wins by (stamp, author), deletes stay deleted, every node
//! ends with the same digest.

use mesh_proto::{DocKind, SignedChange};
use tempfile::TempDir;

use super::*;

fn fields(name: &str, priority: i64) -> PolicyFields {
    PolicyFields {
        name: name.into(),
        description: String::new(),
        definition_json: r#"{"condition":"incident.severity > 1","action":"a"}"#.into(),
        active: true,
        priority,
    }
}

fn node(dir: &TempDir, id: &str) -> Store {
    Store::open(&dir.path().join(format!("{id}.redb")), id).unwrap()
}

/// Pulls everything `from` has after the cursor `to` holds for it, as the mesh does (minus the
/// signature checks, which `identity` tests).
fn pull(to: &Store, from: &Store) -> MergeOutcome {
    let incarnation = from.incarnation().unwrap();
    let since = to.peer_cursor(from.node_id(), incarnation).unwrap();
    let page = from.log_since_unsigned(since, 1000).unwrap();
    let cursor = page.changes.last().map_or(since, |c| c.seq);
    let changes: Vec<SignedChange> = page.changes.into_iter().map(|c| c.change).collect();
    to.merge_remote(from.node_id(), incarnation, cursor, changes, &[])
        .unwrap()
}

#[test]
fn a_new_node_gets_the_whole_set_byte_for_byte() {
    let dir = TempDir::new().unwrap();
    let a = node(&dir, "a");
    let b = node(&dir, "b");
    let p = a.create(fields("p", 1)).unwrap();
    a.write_documents(vec![DocWrite::Put {
        kind: DocKind::RegoModule,
        name: "m.rego".into(),
        body: "package m".into(),
    }])
    .unwrap();
    let outcome = pull(&b, &a);
    assert_eq!(outcome.applied, 2);
    assert!(outcome.policies_changed && outcome.documents_changed);
    assert_eq!(b.get(p.id).unwrap().unwrap(), p);
    assert_eq!(b.get_by_name("p").unwrap().unwrap().id, p.id);
    assert_eq!(
        b.get_document(DocKind::RegoModule, "m.rego").unwrap(),
        a.get_document(DocKind::RegoModule, "m.rego").unwrap()
    );
    assert_eq!(
        a.replica_revision().unwrap().digest,
        b.replica_revision().unwrap().digest
    );
    // Pulling again brings nothing: the cursor moved.
    assert_eq!(pull(&b, &a).applied, 0);
}

#[test]
fn concurrent_edits_of_one_policy_end_with_the_same_winner_everywhere() {
    let dir = TempDir::new().unwrap();
    let a = node(&dir, "a");
    let b = node(&dir, "b");
    let p = a.create(fields("p", 1)).unwrap();
    pull(&b, &a);
    // Both edit version 1 while cut off from each other.
    a.update(p.id, 1, fields("p", 10)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2));
    let later = b.update(p.id, 1, fields("p", 20)).unwrap();
    pull(&a, &b);
    pull(&b, &a);
    assert_eq!(a.get(p.id).unwrap().unwrap(), later);
    assert_eq!(b.get(p.id).unwrap().unwrap(), later);
    assert_eq!(
        a.replica_revision().unwrap().digest,
        b.replica_revision().unwrap().digest
    );
    // A later local edit at the losing node orders after the merged winner.
    let next = a.update(p.id, later.version, fields("p", 30)).unwrap();
    assert!(next.stamp > later.stamp);
}

#[test]
fn edits_of_different_policies_during_a_partition_are_both_kept() {
    let dir = TempDir::new().unwrap();
    let a = node(&dir, "a");
    let b = node(&dir, "b");
    let pa = a.create(fields("pa", 1)).unwrap();
    let pb = b.create(fields("pb", 2)).unwrap();
    pull(&a, &b);
    pull(&b, &a);
    for store in [&a, &b] {
        assert_eq!(store.get(pa.id).unwrap().unwrap(), pa);
        assert_eq!(store.get(pb.id).unwrap().unwrap(), pb);
    }
}

#[test]
fn a_delete_is_not_undone_by_an_older_update() {
    let dir = TempDir::new().unwrap();
    let a = node(&dir, "a");
    let b = node(&dir, "b");
    let c = node(&dir, "c");
    let p = a.create(fields("p", 1)).unwrap();
    pull(&b, &a);
    pull(&c, &a);
    // c updates, then b deletes (later); a hears of the delete first, then of the update.
    c.update(p.id, 1, fields("p", 5)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2));
    b.delete(p.id).unwrap();
    pull(&a, &b);
    let outcome = pull(&a, &c);
    assert_eq!(outcome.stale, 1);
    assert!(a.get(p.id).unwrap().is_none());
    assert!(a.get_by_name("p").unwrap().is_none());
    pull(&c, &b);
    assert!(c.get(p.id).unwrap().is_none());
    assert_eq!(
        a.replica_revision().unwrap().digest,
        c.replica_revision().unwrap().digest
    );
    // Until the tombstone expires.
    let horizon = p.stamp.wall_ms + 60_000;
    assert_eq!(a.drop_tombstones_before(horizon).unwrap(), 1);
    assert_eq!(a.replica_revision().unwrap().live, 0);
}

#[test]
fn concurrent_creates_of_one_name_resolve_to_the_same_policy_everywhere() {
    let dir = TempDir::new().unwrap();
    let a = node(&dir, "a");
    let b = node(&dir, "b");
    let pa = a.create(fields("same", 1)).unwrap();
    let pb = b.create(fields("same", 2)).unwrap();
    pull(&a, &b);
    pull(&b, &a);
    let winner = pa.id.min(pb.id);
    assert_eq!(a.get_by_name("same").unwrap().unwrap().id, winner);
    assert_eq!(b.get_by_name("same").unwrap().unwrap().id, winner);
    assert_eq!(a.list().unwrap().len(), 2);
}

#[test]
fn a_store_from_schema_3_is_seeded_into_the_replica() {
    let dir = TempDir::new().unwrap();
    let a = node(&dir, "a");
    a.create(fields("p", 1)).unwrap();
    let revision = a.replica_revision().unwrap();
    assert_eq!((revision.head, revision.live), (1, 1));
    assert_ne!(a.incarnation().unwrap(), 0);
}

#[test]
fn when_one_of_two_same_named_policies_goes_the_other_keeps_the_name() {
    let dir = TempDir::new().unwrap();
    let a = node(&dir, "a");
    let b = node(&dir, "b");
    let pa = a.create(fields("same", 1)).unwrap();
    let pb = b.create(fields("same", 2)).unwrap();
    pull(&a, &b);
    pull(&b, &a);
    let (lower, higher) = if pa.id < pb.id {
        (pa.id, pb.id)
    } else {
        (pb.id, pa.id)
    };
    a.delete(lower).unwrap();
    pull(&b, &a);
    for store in [&a, &b] {
        assert_eq!(store.get_by_name("same").unwrap().unwrap().id, higher);
        assert!(matches!(
            store.create(fields("same", 3)),
            Err(StoreError::DuplicateName { existing_id, .. }) if existing_id == higher
        ));
    }
    // Renaming the remaining one frees the name everywhere.
    let remaining = a.get(higher).unwrap().unwrap();
    a.update(higher, remaining.version, fields("other", 1))
        .unwrap();
    pull(&b, &a);
    assert!(b.get_by_name("same").unwrap().is_none());
    assert_eq!(b.get_by_name("other").unwrap().unwrap().id, higher);
}

#[test]
fn replayed_and_reordered_changes_change_nothing() {
    let dir = TempDir::new().unwrap();
    let a = node(&dir, "a");
    let b = node(&dir, "b");
    let p = a.create(fields("p", 1)).unwrap();
    let v1 = a.log_since_unsigned(0, 1000).unwrap().changes;
    a.update(p.id, p.version, fields("p", 2)).unwrap();
    a.update(p.id, p.version + 1, fields("p", 3)).unwrap();
    let all = a.log_since_unsigned(0, 1000).unwrap().changes;
    let incarnation = a.incarnation().unwrap();
    // Newest first (a peer reordering its page): the same winner as in order.
    let mut reordered: Vec<SignedChange> = all.iter().rev().map(|c| c.change.clone()).collect();
    let outcome = b
        .merge_remote("a", incarnation, 0, reordered.clone(), &[])
        .unwrap();
    assert_eq!(outcome.applied, 1, "only the newest applies");
    assert_eq!(b.get(p.id).unwrap().unwrap().priority, 3);
    // The old version replayed after the newer: stale, nothing changes.
    let replay: Vec<SignedChange> = v1.into_iter().map(|c| c.change).collect();
    let before = b.replica_revision().unwrap().digest;
    let outcome = b.merge_remote("a", incarnation, 0, replay, &[]).unwrap();
    assert_eq!((outcome.applied, outcome.stale), (0, 1));
    assert_eq!(b.get(p.id).unwrap().unwrap().priority, 3);
    assert_eq!(b.replica_revision().unwrap().digest, before);
    // The whole page again, twice: idempotent.
    reordered.reverse();
    let outcome = b.merge_remote("a", incarnation, 0, reordered, &[]).unwrap();
    assert_eq!(outcome.applied, 0);
    assert_eq!(
        b.replica_revision().unwrap().digest,
        a.replica_revision().unwrap().digest
    );
}

#[test]
fn large_documents_are_paged_by_bytes_and_still_all_arrive() {
    let dir = TempDir::new().unwrap();
    let a = node(&dir, "a");
    let b = node(&dir, "b");
    // Three bundle documents of 1.5 MB each: a page of 2 MB holds one at a time (a page always
    // holds one, whatever its size).
    let body = format!("{{\"archive\":\"{}\"}}", "A".repeat(1_500_000));
    for name in ["x", "y", "z"] {
        a.write_documents(vec![DocWrite::Put {
            kind: DocKind::Bundle,
            name: name.into(),
            body: body.clone(),
        }])
        .unwrap();
    }
    let incarnation = a.incarnation().unwrap();
    let mut since = 0;
    let mut pages = 0;
    loop {
        let page = a.log_since_unsigned_bytes(since, 512, 2_000_000).unwrap();
        assert!(page.changes.len() <= 1, "a page over the byte budget");
        pages += 1;
        let cursor = page.changes.last().map_or(since, |c| c.seq);
        let changes: Vec<SignedChange> = page.changes.into_iter().map(|c| c.change).collect();
        b.merge_remote("a", incarnation, cursor, changes, &[])
            .unwrap();
        since = cursor;
        if !page.more {
            break;
        }
    }
    assert_eq!(pages, 3);
    let listed = b.list_documents(DocKind::Bundle).unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|d| d.body == body));
    // Bundles are a kind of their own: modules and data list none of them.
    assert!(b.list_documents(DocKind::RegoModule).unwrap().is_empty());
    assert!(b.list_documents(DocKind::Data).unwrap().is_empty());
    assert_eq!(
        a.replica_revision().unwrap().digest,
        b.replica_revision().unwrap().digest
    );
}
