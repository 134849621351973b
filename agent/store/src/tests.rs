use mesh_proto::{ChangeOp, PolicyRecordV1, encode};
use redb::Database;
use tempfile::TempDir;

use super::schema::{META, META_SCHEMA, POLICIES, SCHEMA_VERSION};
use super::*;

fn fields(name: &str) -> PolicyFields {
    PolicyFields {
        name: name.into(),
        description: String::new(),
        definition_json: r#"{"condition":"incident.severity > 1","action":"a"}"#.into(),
        active: true,
        priority: 0,
    }
}

fn open(dir: &TempDir) -> Store {
    Store::open(&dir.path().join("agent.redb"), "edge-1").unwrap()
}

#[test]
fn create_update_delete_keeps_every_version() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let created = store.create(fields("a")).unwrap();
    assert_eq!(created.version, 1);
    assert!(created.id > 0 && created.id <= MAX_ID);
    let mut changed = fields("a2");
    changed.priority = 7;
    let updated = store.update(created.id, 1, changed).unwrap();
    assert_eq!(
        (updated.version, updated.priority, updated.name.as_str()),
        (2, 7, "a2")
    );
    assert!(updated.stamp > created.stamp);
    assert_eq!(updated.created_at_us, created.created_at_us);
    // The old name is free again, the new one is taken.
    assert!(store.get_by_name("a").unwrap().is_none());
    assert_eq!(store.get_by_name("a2").unwrap().unwrap().id, created.id);

    let deleted = store.delete(created.id).unwrap();
    assert_eq!(deleted.version, 3);
    assert!(store.get(created.id).unwrap().is_none());
    assert!(store.get_by_name("a2").unwrap().is_none());

    let history = store.history(created.id).unwrap();
    let ops: Vec<_> = history
        .iter()
        .map(|c| (c.op, c.policy.version, c.revision))
        .collect();
    assert_eq!(
        ops,
        [
            (ChangeOp::Create, 1, 1),
            (ChangeOp::Update, 2, 2),
            (ChangeOp::Delete, 3, 3)
        ]
    );
    assert_eq!(store.revision().unwrap(), 3);
}

#[test]
fn names_are_unique_and_errors_say_which() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let a = store.create(fields("a")).unwrap();
    let b = store.create(fields("b")).unwrap();
    assert!(matches!(
        store.create(fields("a")),
        Err(StoreError::DuplicateName { existing_id, .. }) if existing_id == a.id
    ));
    assert!(matches!(
        store.update(b.id, 1, fields("a")),
        Err(StoreError::DuplicateName { .. })
    ));
    // A failed write changes nothing.
    assert_eq!(store.revision().unwrap(), 2);
    assert_eq!(store.get(b.id).unwrap().unwrap().name, "b");
}

#[test]
fn stale_update_is_refused() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let a = store.create(fields("a")).unwrap();
    store.update(a.id, 1, fields("a")).unwrap();
    assert!(matches!(
        store.update(a.id, 1, fields("a")),
        Err(StoreError::VersionConflict {
            expected: 1,
            found: 2,
            ..
        })
    ));
    assert!(matches!(
        store.update(999, 1, fields("x")),
        Err(StoreError::NotFound { id: 999 })
    ));
    assert!(matches!(
        store.delete(999),
        Err(StoreError::NotFound { id: 999 })
    ));
}

#[test]
fn ids_are_unique_and_never_reused() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let mut seen = std::collections::HashSet::new();
    for i in 0..200 {
        let p = store.create(fields(&format!("p{i}"))).unwrap();
        assert!(seen.insert(p.id));
        if i % 2 == 0 {
            store.delete(p.id).unwrap();
        }
    }
}

#[test]
fn survives_reopen() {
    let dir = TempDir::new().unwrap();
    let id = {
        let store = open(&dir);
        store.create(fields("kept")).unwrap().id
    };
    let store = open(&dir);
    assert_eq!(store.get(id).unwrap().unwrap().name, "kept");
    assert_eq!(store.revision().unwrap(), 1);
    // The id counter survived too: the next id is above the first.
    assert!(store.create(fields("next")).unwrap().id > id);
}

/// Writes a data file the way the first release (schema 1) did.
fn write_schema_v1(path: &std::path::Path, policies: &[PolicyRecordV1]) {
    let db = Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut meta = txn.open_table(META).unwrap();
        meta.insert(META_SCHEMA, 1).unwrap();
        let mut table = txn.open_table(POLICIES).unwrap();
        for p in policies {
            table.insert(p.id, encode(p).as_slice()).unwrap();
        }
    }
    txn.commit().unwrap();
}

#[test]
fn migrates_a_schema_1_file() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("agent.redb");
    let v1 = |id: u64, name: &str| PolicyRecordV1 {
        id,
        name: name.into(),
        description: format!("{name} description"),
        definition_json: r#"{"condition":"incident.severity >= 8","action":"x"}"#.into(),
        active: id % 2 == 1,
        priority: id as i64,
        created_at_us: 1_700_000_000_000_000,
        updated_at_us: 1_700_000_100_000_000 + id as i64,
    };
    write_schema_v1(&path, &[v1(1, "memory_leak_recovery"), v1(2, "cpu_spike")]);

    let store = Store::open(&path, "edge-9").unwrap();
    let all = store.list().unwrap();
    assert_eq!(all.len(), 2);
    let first = &all[0];
    assert_eq!(
        (first.id, first.name.as_str(), first.version),
        (1, "memory_leak_recovery", 1)
    );
    assert_eq!(first.description, "memory_leak_recovery description");
    assert_eq!(first.author, "edge-9");
    assert_eq!(first.stamp.wall_ms, 1_700_000_100_000);
    assert!(!all[1].active && all[1].priority == 2);
    assert_eq!(store.get_by_name("cpu_spike").unwrap().unwrap().id, 2);
    assert_eq!(store.history(1).unwrap().len(), 1);
    assert_eq!(store.revision().unwrap(), 2);
    // New writes continue after the migrated ones.
    let next = store.create(fields("new")).unwrap();
    assert!(next.id > 2);
    assert!(next.stamp > first.stamp);
    drop(store);

    // The migrated file reopens as schema 2 with nothing redone.
    let store = Store::open(&path, "edge-9").unwrap();
    assert_eq!(store.revision().unwrap(), 3);
    let db = store.database();
    let txn = redb::ReadableDatabase::begin_read(&*db).unwrap();
    let meta = txn.open_table(META).unwrap();
    assert_eq!(
        meta.get(META_SCHEMA).unwrap().unwrap().value(),
        SCHEMA_VERSION
    );
}

#[test]
fn refuses_a_file_from_a_newer_schema() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("agent.redb");
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert(META_SCHEMA, SCHEMA_VERSION + 1)
            .unwrap();
        txn.commit().unwrap();
    }
    match Store::open(&path, "edge-1") {
        Err(StoreError::NewerSchema { found, supported }) => {
            assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        other => panic!("expected NewerSchema, got {:?}", other.err()),
    }
}

#[test]
fn documents_are_versioned_with_history() {
    use mesh_proto::DocKind;
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let put = |name: &str, body: &str| DocWrite::Put {
        kind: DocKind::RegoModule,
        name: name.into(),
        body: body.into(),
    };
    let written = store
        .write_documents(vec![put("a", "package a"), put("b", "package b")])
        .unwrap();
    assert_eq!(written.len(), 2);
    // Same body again: no new version; another body: version 2.
    assert!(
        store
            .write_documents(vec![put("a", "package a")])
            .unwrap()
            .is_empty()
    );
    let v2 = store
        .write_documents(vec![put("a", "package a\nx := 1")])
        .unwrap();
    assert_eq!(v2[0].version, 2);
    store
        .write_documents(vec![DocWrite::Delete {
            kind: DocKind::RegoModule,
            name: "b".into(),
        }])
        .unwrap();
    let names: Vec<String> = store
        .list_documents(DocKind::RegoModule)
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["a"]);
    assert!(store.list_documents(DocKind::Data).unwrap().is_empty());
    // Re-created after a delete, a document continues its version numbers.
    let again = store.write_documents(vec![put("b", "package b")]).unwrap();
    assert_eq!(again[0].version, 3);
    let ops: Vec<_> = store
        .document_history(DocKind::RegoModule, "b")
        .unwrap()
        .iter()
        .map(|c| (c.op, c.document.version))
        .collect();
    assert_eq!(
        ops,
        [
            (ChangeOp::Create, 1),
            (ChangeOp::Delete, 2),
            (ChangeOp::Create, 3)
        ]
    );
    assert_eq!(store.revision().unwrap(), 5);
    // A failing batch changes nothing.
    let err = store.write_documents(vec![
        put("c", "package c"),
        DocWrite::Delete {
            kind: DocKind::Data,
            name: "nope".into(),
        },
    ]);
    assert!(matches!(err, Err(StoreError::DocumentNotFound { .. })));
    assert!(
        store
            .get_document(DocKind::RegoModule, "c")
            .unwrap()
            .is_none()
    );
    assert_eq!(store.revision().unwrap(), 5);
}
