//! The durable outbox: every message for the broker (actions for P0.3, audit summaries), kept in
//! redb from the transaction that records its decision until the broker's PUBACK for it arrives.
//!
//! Entries are keyed by a sequence number, so the publisher sends them in the order they were
//! decided, and after a restart sends again, in order, whatever is still here. Inserts happen only in
//! the audit writer's transaction ([`Outbox::insert`]), so a decision and its actions are committed
//! together or not at all; removals happen only in [`Outbox::remove`], called by the publisher for
//! keys whose PUBACK has arrived. The outbox holds at most `capacity` entries: `block` makes intake
//! wait for room ([`Outbox::reserve`]), `drop_oldest` evicts the oldest entries (counted, logged).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mesh_proto::{OutboxEntry, decode, encode};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};
use tracing::warn;

use crate::clock::now_us;
use crate::metrics::Metrics;
use crate::store::{DbContext, StoreError};

/// The outbox table: sequence number -> encoded [`OutboxEntry`].
pub const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");

/// What happens when a message would exceed the outbox's capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Intake waits until the broker has acknowledged enough to make room (backpressure).
    Block,
    /// The oldest entries are dropped (counted in `outbox_dropped` and logged).
    DropOldest,
}

/// A message about to enter the outbox.
#[derive(Debug, Clone)]
pub struct OutboxItem {
    pub id: String,
    pub topic: String,
    pub payload: String,
}

/// The outbox of this node's data file. Shared by the audit writer, the publisher and the API.
pub struct Outbox {
    db: Arc<Database>,
    capacity: u64,
    when_full: WhenFull,
    /// Entries committed and not yet removed.
    depth: AtomicU64,
    /// The key the next inserted entry gets.
    next_key: AtomicU64,
    /// The newest committed key (0: none yet).
    last_committed: AtomicU64,
    /// `block` only: one permit per free place.
    room: Semaphore,
    /// `block` only: entries beyond the capacity (the capacity shrank); removing them frees no room.
    owed: AtomicU64,
    committed: Notify,
    metrics: Arc<Metrics>,
}

impl Outbox {
    /// Opens the outbox of `db` (its table exists: `store::migrate` creates it).
    pub fn open(
        db: Arc<Database>,
        capacity: u64,
        when_full: WhenFull,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Outbox>, StoreError> {
        let (depth, last) = {
            let txn = db.begin_read().ctx("begin read")?;
            let table = txn.open_table(OUTBOX).ctx("open outbox")?;
            let depth = table.len().ctx("count outbox")?;
            let last = table
                .last()
                .ctx("read outbox tail")?
                .map_or(0, |(k, _)| k.value());
            (depth, last)
        };
        let room = match when_full {
            WhenFull::Block => capacity.saturating_sub(depth),
            WhenFull::DropOldest => 0,
        };
        metrics.upstream.outbox_depth.set(depth as i64);
        Ok(Arc::new(Outbox {
            db,
            capacity,
            when_full,
            depth: AtomicU64::new(depth),
            next_key: AtomicU64::new(last + 1),
            last_committed: AtomicU64::new(last),
            room: Semaphore::new(usize::try_from(room).unwrap_or(Semaphore::MAX_PERMITS)),
            owed: AtomicU64::new(depth.saturating_sub(capacity)),
            committed: Notify::new(),
            metrics,
        }))
    }

    /// Waits, under `block`, until there is room for `count` more entries, and takes it; the room is
    /// given back when they are removed. Under `drop_oldest` it returns at once.
    pub async fn reserve(&self, count: usize) {
        if self.when_full != WhenFull::Block || count == 0 {
            return;
        }
        let wanted = count.min(self.capacity as usize).max(1) as u32;
        if self.room.available_permits() < wanted as usize {
            self.metrics.upstream.outbox_full_waits.inc();
        }
        match self.room.acquire_many(wanted).await {
            Ok(permits) => permits.forget(),
            // The semaphore is never closed.
            Err(_) => warn!("outbox room closed"),
        }
    }

    /// Gives back room taken by [`reserve`](Self::reserve) for entries that were never committed.
    pub fn unreserve(&self, count: usize) {
        if self.when_full == WhenFull::Block && count > 0 {
            self.room
                .add_permits(count.min(self.capacity as usize).max(1));
        }
    }

    /// Inserts `items` in the caller's transaction (the audit writer's), and under `drop_oldest`
    /// evicts what exceeds the capacity. Returns how many entries were evicted.
    pub fn insert(&self, txn: &WriteTransaction, items: &[OutboxItem]) -> Result<u64, StoreError> {
        if items.is_empty() {
            return Ok(0);
        }
        let mut table = txn.open_table(OUTBOX).ctx("open outbox")?;
        let at = now_us();
        for item in items {
            let key = self.next_key.fetch_add(1, Ordering::Relaxed);
            let entry = OutboxEntry {
                id: item.id.clone(),
                topic: item.topic.clone(),
                payload: item.payload.clone(),
                enqueued_at_us: at,
            };
            table
                .insert(key, encode(&entry).as_slice())
                .ctx("insert outbox entry")?;
        }
        let mut dropped = 0;
        if self.when_full == WhenFull::DropOldest {
            while table.len().ctx("count outbox")? > self.capacity {
                if let Some((key, bytes)) = table.pop_first().ctx("drop oldest outbox entry")? {
                    let id = decode::<OutboxEntry>(bytes.value())
                        .map_or_else(|_| String::new(), |e| e.id);
                    warn!(key = key.value(), id = %id, capacity = self.capacity, "outbox full: oldest entry dropped");
                }
                dropped += 1;
            }
        }
        Ok(dropped)
    }

    /// Called by the writer once the transaction with [`insert`](Self::insert) has committed.
    pub fn committed(&self, added: u64, dropped: u64) {
        if added == 0 {
            return;
        }
        self.last_committed
            .store(self.next_key.load(Ordering::Relaxed) - 1, Ordering::Release);
        let depth = self.depth.fetch_add(added, Ordering::AcqRel) + added;
        let depth = if dropped > 0 {
            self.metrics.upstream.outbox_dropped.inc_by(dropped);
            self.depth.fetch_sub(dropped, Ordering::AcqRel) - dropped
        } else {
            depth
        };
        self.metrics.upstream.outbox_depth.set(depth as i64);
        self.committed.notify_one();
    }

    /// The newest committed key (0 if none was ever committed).
    pub fn last_committed(&self) -> u64 {
        self.last_committed.load(Ordering::Acquire)
    }

    /// Resolves after the next commit that added entries (or at once if one happened since the
    /// last call).
    pub async fn wait_committed(&self) {
        self.committed.notified().await;
    }

    /// Up to `limit` entries with keys above `after`, in key order.
    pub fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, OutboxEntry)>, StoreError> {
        let txn = self.db.begin_read().ctx("begin read")?;
        let table = txn.open_table(OUTBOX).ctx("open outbox")?;
        let mut out = Vec::with_capacity(limit.min(1024));
        for entry in table.range(after.saturating_add(1)..).ctx("scan outbox")? {
            if out.len() >= limit {
                break;
            }
            let (key, bytes) = entry.ctx("scan outbox")?;
            let record: OutboxEntry =
                decode(bytes.value()).map_err(|source| StoreError::Decode {
                    context: "outbox entry",
                    source,
                })?;
            out.push((key.value(), record));
        }
        Ok(out)
    }

    /// Removes entries whose PUBACK has arrived. Not fsynced on its own: a crash before the next
    /// durable commit only makes the publisher send them again (under the same id).
    pub fn remove(&self, keys: &[u64]) -> Result<u64, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut txn = self.db.begin_write().ctx("begin outbox removal")?;
        txn.set_durability(Durability::None)
            .ctx("set outbox removal durability")?;
        let mut removed = 0;
        {
            let mut table = txn.open_table(OUTBOX).ctx("open outbox")?;
            for key in keys {
                if table.remove(key).ctx("remove outbox entry")?.is_some() {
                    removed += 1;
                }
            }
        }
        txn.commit().ctx("commit outbox removal")?;
        let depth = self.depth.fetch_sub(removed, Ordering::AcqRel) - removed;
        self.metrics.upstream.outbox_depth.set(depth as i64);
        self.metrics.upstream.published.inc_by(removed);
        if self.when_full == WhenFull::Block {
            let mut free = removed;
            // Entries beyond a shrunk capacity free no room when they leave.
            let _ = self
                .owed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |owed| {
                    let paid = owed.min(free);
                    Some(owed - paid)
                })
                .map(|owed| free -= owed.min(free));
            if free > 0 {
                self.room.add_permits(free as usize);
            }
        }
        Ok(removed)
    }

    /// Entries committed and not yet acknowledged by the broker.
    pub fn depth(&self) -> u64 {
        self.depth.load(Ordering::Acquire)
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn when_full(&self) -> WhenFull {
        self.when_full
    }

    /// How long the oldest entry has waited (`None` when the outbox is empty).
    pub fn oldest_age(&self) -> Result<Option<Duration>, StoreError> {
        let txn = self.db.begin_read().ctx("begin read")?;
        let table = txn.open_table(OUTBOX).ctx("open outbox")?;
        let Some((_, bytes)) = table.first().ctx("read oldest outbox entry")? else {
            return Ok(None);
        };
        let entry: OutboxEntry = decode(bytes.value()).map_err(|source| StoreError::Decode {
            context: "outbox entry",
            source,
        })?;
        let age_us = (now_us() - entry.enqueued_at_us).max(0) as u64;
        Ok(Some(Duration::from_micros(age_us)))
    }
}
