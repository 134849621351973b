//! The writer on a data file whose disk fails: a failed commit is fatal, its waiters learn that
//! nothing was recorded, the room they took comes back, and nothing later is committed on the
//! same handle.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mesh_proto::AuditRecord;
use redb::backends::FileBackend;
use redb::{Database, StorageBackend};

use prometheus_client::registry::Registry;

use super::*;
use crate::outbox::{Lane, OutboxBounds, WhenFull};
use crate::{AuditMetrics, OutboxMetrics};

/// A real file whose writes and syncs start failing when `failing` is set (a disk gone bad).
#[derive(Debug)]
struct FailingDisk {
    file: FileBackend,
    failing: Arc<AtomicBool>,
}

impl FailingDisk {
    fn check(&self) -> Result<(), std::io::Error> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected disk failure"));
        }
        Ok(())
    }
}

impl StorageBackend for FailingDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.file.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.file.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.check()?;
        self.file.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.check()?;
        self.file.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.check()?;
        self.file.write(offset, data)
    }
}

fn record(event_id: &str) -> AuditRecord {
    AuditRecord {
        seq: 0,
        at_us: 1,
        node: "n1".into(),
        event_id: event_id.into(),
        input_json: "{}".into(),
        policy_revision: 1,
        policies_evaluated: 0,
        results: Vec::new(),
        execution_time_ns: 0,
        prev_hash: [0; 32],
        shadow: Vec::new(),
    }
}

fn action(id: &str) -> OutboxItem {
    OutboxItem {
        id: id.into(),
        topic: "p03/actions".into(),
        payload: "{}".into(),
        lane: Lane::Action,
    }
}

fn summary(id: &str) -> OutboxItem {
    OutboxItem {
        lane: Lane::Summary,
        ..action(id)
    }
}

/// A writer with a `block` outbox of `capacity` actions on a real file.
fn writer(capacity: u64) -> (tempfile::TempDir, AuditLog, AuditWriter, Arc<Outbox>) {
    let dir = tempfile::tempdir().unwrap();
    let store = agent_store::Store::open(&dir.path().join("agent.redb"), "n1").unwrap();
    let bounds = OutboxBounds {
        capacity,
        when_full: WhenFull::Block,
        summary_capacity: 100,
        log_capacity: 100,
    };
    let outbox = Outbox::open(
        store.database(),
        bounds,
        OutboxMetrics::register(&mut Registry::default()),
    )
    .unwrap();
    let settings = AuditConfig {
        capacity: 100,
        max_bytes: u64::MAX,
        commit_interval_ms: 10,
    };
    let (audit, writer) = AuditLog::start_with_outbox(
        store.database(),
        settings,
        AuditMetrics::register(&mut Registry::default()),
        Fatal::new(),
        Some(Arc::clone(&outbox)),
    )
    .unwrap();
    (dir, audit, writer, outbox)
}

/// The keys of what the outbox holds, oldest first.
fn keys(outbox: &Outbox) -> Vec<u64> {
    let entries = outbox.read_after(0, 100).unwrap();
    entries.into_iter().map(|(key, _)| key).collect()
}

#[tokio::test]
async fn summaries_leaving_the_outbox_do_not_cost_actions_their_room() {
    let (_dir, audit, writer, outbox) = writer(2);
    // Summaries come and go (each committed and then acknowledged)...
    for i in 0..5 {
        let committed = audit
            .append_durable(Vec::new(), vec![summary(&format!("s{i}"))], Room::none())
            .await;
        assert!(matches!(committed.await, Ok(Ok(()))));
    }
    audit.remove_from_outbox_now(keys(&outbox)).await.unwrap();
    // ...and then actions: each one that leaves gives its place back, so the whole capacity is
    // free again at the end.
    for i in 0..4 {
        let room = tokio::time::timeout(Duration::from_secs(10), outbox.reserve(2))
            .await
            .expect("room for two actions")
            .unwrap();
        let committed = audit
            .append_durable(
                vec![record(&format!("e{i}"))],
                vec![action(&format!("a{i}-1")), action(&format!("a{i}-2"))],
                room,
            )
            .await;
        assert!(matches!(committed.await, Ok(Ok(()))));
        let queued = keys(&outbox);
        assert_eq!(queued.len(), 2);
        audit.remove_from_outbox_now(queued).await.unwrap();
    }
    assert_eq!(outbox.depth(), 0);
    writer.close().await;
}

#[tokio::test]
async fn a_failed_commit_is_fatal_and_nothing_after_it_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.path().join("agent.redb"))
        .unwrap();
    let failing = Arc::new(AtomicBool::new(false));
    let disk = FailingDisk {
        file: FileBackend::new(file).unwrap(),
        failing: Arc::clone(&failing),
    };
    let db = Arc::new(Database::builder().create_with_backend(disk).unwrap());
    agent_store::migrate(&db, "n1").unwrap();
    let bounds = OutboxBounds {
        capacity: 4,
        when_full: WhenFull::Block,
        summary_capacity: 4,
        log_capacity: 100,
    };
    let outbox = Outbox::open(
        Arc::clone(&db),
        bounds,
        OutboxMetrics::register(&mut Registry::default()),
    )
    .unwrap();
    let fatal = Fatal::new();
    let settings = AuditConfig {
        capacity: 100,
        max_bytes: u64::MAX,
        commit_interval_ms: 10,
    };
    let (audit, writer) = AuditLog::start_with_outbox(
        Arc::clone(&db),
        settings,
        AuditMetrics::register(&mut Registry::default()),
        fatal.clone(),
        Some(Arc::clone(&outbox)),
    )
    .unwrap();

    // A healthy commit first.
    let room = outbox.reserve(1).await.unwrap();
    let committed = audit
        .append_durable(vec![record("ok")], vec![action("a-ok")], room)
        .await;
    assert!(matches!(committed.await, Ok(Ok(()))));
    assert_eq!(outbox.depth(), 1);
    assert_eq!(fatal.reason(), None);

    // The disk fails: the decision is not recorded, the agent is told to stop, and the room the
    // decision took is back (3 free of 4: one action is committed).
    failing.store(true, Ordering::SeqCst);
    let room = outbox.reserve(2).await.unwrap();
    let committed = audit
        .append_durable(
            vec![record("lost")],
            vec![action("a-1"), action("a-2")],
            room,
        )
        .await;
    assert!(matches!(committed.await, Ok(Err(NotCommitted))));
    let reason = tokio::time::timeout(Duration::from_secs(10), fatal.raised())
        .await
        .unwrap();
    assert!(reason.contains("commit"), "{reason}");
    assert_eq!(outbox.depth(), 1);
    let again = tokio::time::timeout(Duration::from_secs(10), outbox.reserve(3)).await;
    assert!(
        matches!(again, Ok(Ok(_))),
        "the failed decision's room was not given back"
    );
    drop(again);

    // Even once the disk answers again, this handle commits nothing more: only a restart (a
    // fresh open) may write to the file again.
    failing.store(false, Ordering::SeqCst);
    let committed = audit
        .append_durable(vec![record("later")], vec![action("a-3")], Room::none())
        .await;
    assert!(matches!(committed.await, Ok(Err(NotCommitted))));
    writer.close().await;
    let page = audit
        .read(Query {
            limit: 10,
            ..Query::default()
        })
        .unwrap();
    let (entries, head) = (page.records, page.head);
    let ids: Vec<_> = entries.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!((ids, head), (vec!["ok"], 1));
}

fn numbered(first: u64, count: u64) -> Vec<AuditRecord> {
    (first..first + count)
        .map(|seq| AuditRecord {
            seq,
            ..record(&format!("e{seq}"))
        })
        .collect()
}

fn append_committed(db: &Database, records: &mut [AuditRecord], bounds: Bounds) {
    let txn = db.begin_write().unwrap();
    ring::append(&txn, records, bounds).unwrap();
    txn.commit().unwrap();
}

#[test]
fn the_ring_is_a_hash_chain_that_verify_checks() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::create(dir.path().join("a.redb")).unwrap();
    let bounds = Bounds {
        entries: 5,
        bytes: u64::MAX,
    };
    append_committed(&db, &mut numbered(1, 3), bounds);
    append_committed(&db, &mut numbered(4, 4), bounds);
    let verified = verify(&db).unwrap();
    assert_eq!(
        (
            verified.entries,
            verified.first,
            verified.last,
            verified.broken
        ),
        (5, 3, 7, None),
        "evicted entries do not break the chain"
    );
    // A lost entry in the middle, then an altered one, are found.
    {
        let txn = db.begin_write().unwrap();
        txn.open_table(agent_store::schema::AUDIT)
            .unwrap()
            .remove(5)
            .unwrap();
        txn.commit().unwrap();
    }
    let broken = verify(&db).unwrap().broken.unwrap();
    assert_eq!(broken.0, 6);
    assert!(broken.1.contains("missing"), "{}", broken.1);
    let mut altered = numbered(5, 1);
    altered[0].prev_hash = [7; 32];
    {
        let txn = db.begin_write().unwrap();
        txn.open_table(agent_store::schema::AUDIT)
            .unwrap()
            .insert(5, mesh_proto::encode(&altered[0]).as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let broken = verify(&db).unwrap().broken.unwrap();
    assert_eq!(broken.0, 5, "{}", broken.1);
}

#[test]
fn a_schema_6_ring_is_chained_by_the_migration() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.redb");
    drop(agent_store::Store::open(&path, "n1").unwrap());
    {
        let db = Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(agent_store::schema::META).unwrap();
            meta.insert(agent_store::schema::META_SCHEMA, 6).unwrap();
            let mut table = txn.open_table(agent_store::schema::AUDIT).unwrap();
            for seq in 1..=3u64 {
                let old = mesh_proto::AuditRecordV1 {
                    seq,
                    at_us: 1,
                    node: "n1".into(),
                    event_id: format!("e{seq}"),
                    input_json: "{}".into(),
                    policy_revision: 1,
                    policies_evaluated: 0,
                    results: Vec::new(),
                    execution_time_ns: 0,
                };
                table
                    .insert(seq, mesh_proto::encode(&old).as_slice())
                    .unwrap();
            }
        }
        txn.commit().unwrap();
    }
    let store = agent_store::Store::open(&path, "n1").unwrap();
    let verified = verify(&*store.database()).unwrap();
    assert_eq!((verified.entries, verified.broken), (3, None));
}
