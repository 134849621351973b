//! The collector's redb file: every summary received (in arrival order), the last summary of each
//! node, and every action seen (by `action_id`, so resends collapse into one).

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::Value;

use agent_store::{DbContext, StoreError};

/// Arrival number -> summary JSON.
const SUMMARIES: TableDefinition<u64, &str> = TableDefinition::new("summaries");
/// `summary_id` -> arrival number (a resent summary is kept once).
const SUMMARY_IDS: TableDefinition<&str, u64> = TableDefinition::new("summary_ids");
/// Node id -> its newest summary JSON.
const NODES: TableDefinition<&str, &str> = TableDefinition::new("nodes");
/// `action_id` -> action JSON.
const ACTIONS: TableDefinition<&str, &str> = TableDefinition::new("actions");

/// A message the collector keeps.
pub enum Received {
    Summary {
        id: String,
        node_id: String,
        json: String,
    },
    Action {
        id: String,
        json: String,
    },
}

pub struct CollectorStore {
    db: Database,
}

impl CollectorStore {
    pub fn open(path: &Path) -> Result<CollectorStore, StoreError> {
        let db = Database::create(path).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        let txn = db.begin_write().ctx("begin collector setup")?;
        txn.open_table(SUMMARIES).ctx("create summaries")?;
        txn.open_table(SUMMARY_IDS).ctx("create summary ids")?;
        txn.open_table(NODES).ctx("create nodes")?;
        txn.open_table(ACTIONS).ctx("create actions")?;
        txn.commit().ctx("commit collector setup")?;
        Ok(CollectorStore { db })
    }

    /// Keeps a batch in one transaction (fsynced: the batch is acknowledged after this).
    pub fn keep(&self, batch: &[Received]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().ctx("begin collector write")?;
        {
            let mut summaries = txn.open_table(SUMMARIES).ctx("open summaries")?;
            let mut ids = txn.open_table(SUMMARY_IDS).ctx("open summary ids")?;
            let mut nodes = txn.open_table(NODES).ctx("open nodes")?;
            let mut actions = txn.open_table(ACTIONS).ctx("open actions")?;
            let mut next = summaries
                .last()
                .ctx("read last summary")?
                .map_or(1, |(k, _)| k.value() + 1);
            for item in batch {
                match item {
                    Received::Summary { id, node_id, json } => {
                        if ids.get(id.as_str()).ctx("read summary id")?.is_some() {
                            continue;
                        }
                        summaries.insert(next, json.as_str()).ctx("write summary")?;
                        ids.insert(id.as_str(), next).ctx("write summary id")?;
                        nodes
                            .insert(node_id.as_str(), json.as_str())
                            .ctx("write node")?;
                        next += 1;
                    }
                    Received::Action { id, json } => {
                        actions
                            .insert(id.as_str(), json.as_str())
                            .ctx("write action")?;
                    }
                }
            }
        }
        txn.commit().ctx("commit collector write")
    }

    /// Summaries, newest first, optionally of one node.
    pub fn summaries(&self, node: Option<&str>, limit: usize) -> Result<Vec<Value>, StoreError> {
        let txn = self.db.begin_read().ctx("begin read")?;
        let table = txn.open_table(SUMMARIES).ctx("open summaries")?;
        let mut out = Vec::new();
        for entry in table.iter().ctx("scan summaries")?.rev() {
            if out.len() >= limit {
                break;
            }
            let (_, json) = entry.ctx("scan summaries")?;
            let value: Value = serde_json::from_str(json.value()).unwrap_or(Value::Null);
            if node.is_none_or(|n| value["node_id"] == n) {
                out.push(value);
            }
        }
        Ok(out)
    }

    /// Every node with its newest summary.
    pub fn nodes(&self) -> Result<Vec<(String, Value)>, StoreError> {
        let txn = self.db.begin_read().ctx("begin read")?;
        let table = txn.open_table(NODES).ctx("open nodes")?;
        let mut out = Vec::new();
        for entry in table.iter().ctx("scan nodes")? {
            let (node, json) = entry.ctx("scan nodes")?;
            out.push((
                node.value().to_owned(),
                serde_json::from_str(json.value()).unwrap_or(Value::Null),
            ));
        }
        Ok(out)
    }

    /// Actions seen, by id (at most `limit`).
    pub fn actions(&self, limit: usize) -> Result<Vec<Value>, StoreError> {
        let txn = self.db.begin_read().ctx("begin read")?;
        let table = txn.open_table(ACTIONS).ctx("open actions")?;
        let mut out = Vec::new();
        for entry in table.iter().ctx("scan actions")? {
            if out.len() >= limit {
                break;
            }
            let (_, json) = entry.ctx("scan actions")?;
            out.push(serde_json::from_str(json.value()).unwrap_or(Value::Null));
        }
        Ok(out)
    }
}
