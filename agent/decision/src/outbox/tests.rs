//! The outbox on a real redb file: lanes and their bounds, key order across lanes, room that
//! travels with a decision and comes back when it is abandoned or its actions leave.

use std::sync::Arc;
use std::time::Duration;

use redb::Database;

use agent_store::Store;
use prometheus_client::registry::Registry;

use super::*;

struct Fixture {
    _dir: tempfile::TempDir,
    db: Arc<Database>,
    outbox: Arc<Outbox>,
    /// What the outbox's metrics are registered in, as the daemon's registry would hold them.
    registry: Registry,
}

fn outbox(capacity: u64, when_full: WhenFull, summary_capacity: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("agent.redb"), "n1").unwrap();
    let db = store.database();
    let bounds = OutboxBounds {
        capacity,
        when_full,
        summary_capacity,
        log_capacity: 3,
    };
    let mut registry = Registry::default();
    let outbox = Outbox::open(
        Arc::clone(&db),
        bounds,
        OutboxMetrics::register(&mut registry),
    )
    .unwrap();
    Fixture {
        _dir: dir,
        db,
        outbox,
        registry,
    }
}

fn item(id: &str, lane: Lane) -> OutboxItem {
    OutboxItem {
        id: id.into(),
        topic: "t".into(),
        payload: format!("{{\"id\":\"{id}\"}}"),
        lane,
    }
}

impl Fixture {
    /// Inserts and commits, as the audit writer does.
    fn insert(&self, items: &[OutboxItem]) -> OutboxChange {
        let txn = self.db.begin_write().unwrap();
        let change = self.outbox.insert(&txn, items).unwrap();
        txn.commit().unwrap();
        self.outbox.committed(change);
        change
    }

    fn remove(&self, keys: &[u64]) -> OutboxChange {
        let txn = self.db.begin_write().unwrap();
        let change = self.outbox.remove(&txn, keys).unwrap();
        txn.commit().unwrap();
        self.outbox.committed(change);
        change
    }

    fn ids(&self) -> Vec<String> {
        let entries = self.outbox.read_after(0, 1000).unwrap();
        entries.into_iter().map(|(_, e)| e.id).collect()
    }

    fn keys(&self) -> Vec<u64> {
        let entries = self.outbox.read_after(0, 1000).unwrap();
        entries.into_iter().map(|(k, _)| k).collect()
    }
}

#[test]
fn both_lanes_are_read_in_the_order_they_were_queued() {
    let f = outbox(10, WhenFull::Block, 10);
    f.insert(&[item("a1", Lane::Action), item("s1", Lane::Summary)]);
    f.insert(&[item("a2", Lane::Action)]);
    f.insert(&[item("s2", Lane::Summary), item("a3", Lane::Action)]);
    // Within one insert, actions take their keys before summaries.
    assert_eq!(f.ids(), ["a1", "s1", "a2", "a3", "s2"]);
    assert_eq!(f.outbox.depth(), 5);
    let keys = f.keys();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
    // Reading after a key and with a limit keeps the merge order.
    let page = f.outbox.read_after(keys[1], 2).unwrap();
    let ids: Vec<_> = page.into_iter().map(|(_, e)| e.id).collect();
    assert_eq!(ids, ["a2", "a3"]);
    assert_eq!(f.outbox.last_committed(), keys[4]);
}

#[test]
fn summaries_have_their_own_bound_and_never_take_an_actions_place() {
    let f = outbox(3, WhenFull::DropOldest, 2);
    f.insert(&[item("a1", Lane::Action), item("a2", Lane::Action)]);
    for s in ["s1", "s2", "s3", "s4"] {
        f.insert(&[item(s, Lane::Summary)]);
    }
    // The oldest summaries went; no action did.
    assert_eq!(f.ids(), ["a1", "a2", "s3", "s4"]);
    f.insert(&[item("a3", Lane::Action), item("a4", Lane::Action)]);
    // Now the actions' own bound drops the oldest action.
    assert_eq!(f.ids(), ["a2", "s3", "s4", "a3", "a4"]);
    assert_eq!(f.outbox.depth(), 5);
    let mut metrics = String::new();
    prometheus_client::encoding::text::encode(&mut metrics, &f.registry).unwrap();
    assert!(metrics.contains("outbox_dropped_total 3"), "{metrics}");
}

#[test]
fn removal_takes_keys_of_either_lane_and_the_depth_follows() {
    let f = outbox(10, WhenFull::Block, 10);
    f.insert(&[item("a1", Lane::Action), item("s1", Lane::Summary)]);
    let keys = f.keys();
    let change = f.remove(&[keys[0], keys[1], 999]);
    assert_eq!((change.removed, change.removed_actions), (2, 1));
    assert_eq!(f.outbox.depth(), 0);
    assert!(f.ids().is_empty());
    // Removing again changes nothing, and the depth does not wrap below zero.
    assert_eq!(f.remove(&keys).removed, 0);
    assert_eq!(f.outbox.depth(), 0);
}

#[tokio::test]
async fn room_given_up_by_an_abandoned_decision_comes_back() {
    let f = outbox(2, WhenFull::Block, 10);
    let room = f.outbox.reserve(2).await.unwrap();
    assert_eq!(f.outbox.room.available_permits(), 0);
    // The decision is dropped before its commit (an HTTP client went away).
    drop(room);
    assert_eq!(f.outbox.room.available_permits(), 2);
    // A dropped wait for room takes nothing either.
    let held = f.outbox.reserve(2).await.unwrap();
    let waiting = tokio::time::timeout(Duration::from_millis(50), f.outbox.reserve(1)).await;
    assert!(waiting.is_err(), "room was given twice");
    drop(held);
    assert_eq!(f.outbox.room.available_permits(), 2);
}

#[tokio::test]
async fn kept_room_returns_only_as_actions_leave() {
    let f = outbox(2, WhenFull::Block, 10);
    let room = f.outbox.reserve(2).await.unwrap();
    f.insert(&[item("a1", Lane::Action), item("a2", Lane::Action)]);
    f.outbox.keep(room, 2);
    assert_eq!(f.outbox.room.available_permits(), 0);
    // Summaries take no room.
    f.insert(&[item("s1", Lane::Summary)]);
    let keys = f.keys();
    f.remove(&[keys[2]]);
    assert_eq!(f.outbox.room.available_permits(), 0);
    f.remove(&[keys[0]]);
    assert_eq!(f.outbox.room.available_permits(), 1);
    // A third action now waits only for the one place left.
    let third = tokio::time::timeout(Duration::from_secs(5), f.outbox.reserve(1)).await;
    assert!(third.is_ok());
}

#[tokio::test]
async fn more_actions_than_the_capacity_owe_what_they_could_not_take() {
    let f = outbox(2, WhenFull::Block, 10);
    let room = f.outbox.reserve(3).await.unwrap();
    f.insert(&[
        item("a1", Lane::Action),
        item("a2", Lane::Action),
        item("a3", Lane::Action),
    ]);
    f.outbox.keep(room, 3);
    let keys = f.keys();
    f.remove(&keys);
    // Three left, but the capacity is two.
    assert_eq!(f.outbox.room.available_permits(), 2);
}

#[test]
fn a_reopened_outbox_counts_what_it_holds() {
    let f = outbox(2, WhenFull::Block, 10);
    f.insert(&[
        item("a1", Lane::Action),
        item("a2", Lane::Action),
        item("s1", Lane::Summary),
    ]);
    let last = f.outbox.last_committed();
    let bounds = OutboxBounds {
        capacity: 1,
        when_full: WhenFull::Block,
        summary_capacity: 10,
        log_capacity: 100,
    };
    let again = Outbox::open(
        Arc::clone(&f.db),
        bounds,
        OutboxMetrics::register(&mut Registry::default()),
    )
    .unwrap();
    assert_eq!(again.depth(), 3);
    assert_eq!(again.last_committed(), last);
    // The capacity shrank below what is held: no room, and one action owed.
    assert_eq!(again.room.available_permits(), 0);
    assert_eq!(again.owed.load(Ordering::Acquire), 1);
    assert!(again.oldest_age().unwrap().is_some());
}

#[tokio::test]
async fn a_closed_outbox_turns_away_waiting_and_later_decisions() {
    let f = outbox(1, WhenFull::Block, 10);
    let held = f.outbox.reserve(1).await.unwrap();
    let waiting = tokio::spawn({
        let outbox = Arc::clone(&f.outbox);
        async move { outbox.reserve(1).await.map(|_| ()) }
    });
    tokio::task::yield_now().await;
    f.outbox.close();
    assert!(waiting.await.unwrap().is_err(), "a waiter is turned away");
    assert!(f.outbox.reserve(1).await.is_err());
    drop(held);
}
