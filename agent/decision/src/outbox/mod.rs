//! The durable outbox: every message for the broker (actions for P0.3, audit summaries), kept in
//! redb from the transaction that records its decision until the broker's PUBACK for it arrives.
//!
//! Entries are keyed by one sequence number across three lanes (tables): actions in `outbox`,
//! summaries in `outbox_summaries`, decision logs in `outbox_decision_logs`. The publisher reads
//! them merged by key, so it sends in the order things were decided, and after a restart sends
//! again, in order, whatever is still here. Each lane has its own bound, so summaries or logs
//! piling up during a long outage never take an action's place: actions are bounded by `capacity`
//! under the `when_full` policy (`block` makes intake wait for [`Room`], `drop_oldest` evicts the
//! oldest actions), summaries by `summary_capacity` and decision logs by `log_capacity` (the
//! oldest are dropped). Drops are counted and logged.
//!
//! All writes happen in the audit writer's transactions: [`Outbox::insert`] beside the decision's
//! audit entry, so a decision and its actions are committed together or not at all, and
//! [`Outbox::remove`] for keys whose PUBACK has arrived. The writer then reports what it committed
//! ([`Outbox::committed`]) and the counters, the room and the publisher follow.

mod config;
mod room;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mesh_proto::{OutboxEntry, decode, encode};
use redb::{
    AccessGuard, Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, StorageError,
    Table, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};
use tracing::warn;

use agent_base::clock::now_us;
use agent_store::schema::{OUTBOX, OUTBOX_DECISION_LOGS, OUTBOX_SUMMARIES};
use agent_store::{DbContext, StoreError};

use crate::metrics::OutboxMetrics;

pub use config::OutboxConfig;
pub use room::Room;

/// The outbox takes no more decisions: the agent is stopping.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the agent is stopping; the outbox takes no more actions")]
pub struct Closed;

/// What happens when an action would exceed the outbox's capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Intake waits until the broker has acknowledged enough to make room (backpressure).
    Block,
    /// The oldest actions are dropped (counted in `outbox_dropped` and logged).
    DropOldest,
}

/// Which table, and which bound, a message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Action,
    Summary,
    DecisionLog,
}

impl Lane {
    const ALL: [Lane; 3] = [Lane::Action, Lane::Summary, Lane::DecisionLog];

    fn table(self) -> TableDefinition<'static, u64, &'static [u8]> {
        match self {
            Lane::Action => OUTBOX,
            Lane::Summary => OUTBOX_SUMMARIES,
            Lane::DecisionLog => OUTBOX_DECISION_LOGS,
        }
    }
}

/// A message about to enter the outbox.
#[derive(Debug, Clone)]
pub struct OutboxItem {
    pub id: String,
    pub topic: String,
    pub payload: String,
    pub lane: Lane,
}

/// The bounds of the outbox.
#[derive(Debug, Clone, Copy)]
pub struct OutboxBounds {
    /// Actions held at most.
    pub capacity: u64,
    pub when_full: WhenFull,
    /// Summaries held at most (the oldest are dropped).
    pub summary_capacity: u64,
    /// Decision logs held at most (the oldest are dropped).
    pub log_capacity: u64,
}

/// What one transaction did to the outbox; [`Outbox::committed`] applies it after the commit.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OutboxChange {
    pub added: u64,
    /// Dropped past a bound: actions and summaries...
    pub dropped: u64,
    /// ...and decision logs (counted apart: they do not alarm as lost actions do).
    pub dropped_logs: u64,
    pub removed: u64,
    /// Of `removed`, how many were actions (their places are given back under `block`).
    pub removed_actions: u64,
}

/// The outbox of this node's data file. Shared by the audit writer, the publisher and the API.
pub struct Outbox {
    db: Arc<Database>,
    bounds: OutboxBounds,
    /// Entries committed and not yet removed (every lane).
    depth: AtomicU64,
    /// The key the next inserted entry gets.
    next_key: AtomicU64,
    /// The newest committed key (0: none yet).
    last_committed: AtomicU64,
    /// `block` only: one permit per free place for an action.
    room: Arc<Semaphore>,
    /// `block` only: actions beyond the capacity (it shrank, or one decision had more actions
    /// than the whole capacity); removing them frees no room.
    owed: AtomicU64,
    committed: Notify,
    metrics: OutboxMetrics,
}

impl Outbox {
    /// Opens the outbox of `db` (its tables exist: `store::migrate` creates them).
    pub fn open(
        db: Arc<Database>,
        bounds: OutboxBounds,
        metrics: OutboxMetrics,
    ) -> Result<Arc<Outbox>, StoreError> {
        // Each lane's size and newest key.
        let txn = db.begin_read().ctx("begin read")?;
        let lane = |lane: Lane| -> Result<(u64, u64), StoreError> {
            let table = txn.open_table(lane.table()).ctx("open outbox")?;
            let last = table.last().ctx("read outbox tail")?;
            Ok((
                table.len().ctx("count outbox")?,
                last.map_or(0, |(k, _)| k.value()),
            ))
        };
        let (actions, last_action) = lane(Lane::Action)?;
        let (summaries, last_summary) = lane(Lane::Summary)?;
        let (logs, last_log) = lane(Lane::DecisionLog)?;
        let last = last_action.max(last_summary).max(last_log);
        let summaries = summaries + logs;
        drop(txn);
        let room = match bounds.when_full {
            WhenFull::Block => bounds.capacity.saturating_sub(actions),
            WhenFull::DropOldest => 0,
        };
        metrics.depth.set((actions + summaries) as i64);
        Ok(Arc::new(Outbox {
            db,
            bounds,
            depth: AtomicU64::new(actions + summaries),
            next_key: AtomicU64::new(last + 1),
            last_committed: AtomicU64::new(last),
            room: Arc::new(Semaphore::new(
                usize::try_from(room)
                    .unwrap_or(Semaphore::MAX_PERMITS)
                    .min(Semaphore::MAX_PERMITS),
            )),
            owed: AtomicU64::new(actions.saturating_sub(bounds.capacity)),
            committed: Notify::new(),
            metrics,
        }))
    }

    /// Waits, under `block`, until there is room for `count` more actions, and takes it. The room
    /// travels with the decision to the writer: kept once its actions are committed (and given
    /// back as they leave), given back at once if the decision is dropped or not committed. Under
    /// `drop_oldest` it returns at once. After [`close`](Self::close) it fails at once, waiters
    /// included.
    pub async fn reserve(&self, count: usize) -> Result<Room, Closed> {
        if self.bounds.when_full != WhenFull::Block || count == 0 {
            return Ok(Room::none());
        }
        // A decision with more actions than the whole capacity takes all of it.
        let wanted = count.min(self.bounds.capacity as usize).max(1) as u32;
        if self.room.available_permits() < wanted as usize {
            self.metrics.full_waits.inc();
        }
        match Arc::clone(&self.room).acquire_many_owned(wanted).await {
            Ok(permit) => Ok(Room::new(permit)),
            Err(_) => Err(Closed),
        }
    }

    /// The agent is stopping (or its data file failed): decisions waiting for room, and any later
    /// ones, are turned away rather than waiting for a broker that may never make room.
    pub fn close(&self) {
        self.room.close();
    }

    /// Keeps `room` for `actions` committed actions: their places are given back by
    /// [`committed`](Self::committed) as they are removed.
    pub fn keep(&self, room: Room, actions: u64) {
        let taken = room.keep();
        if self.bounds.when_full == WhenFull::Block && actions > taken {
            self.owed.fetch_add(actions - taken, Ordering::AcqRel);
        }
    }

    /// Inserts `items` in the caller's transaction (the audit writer's), and drops what exceeds a
    /// lane's bound (actions only under `drop_oldest`).
    pub fn insert(
        &self,
        txn: &WriteTransaction,
        items: &[OutboxItem],
    ) -> Result<OutboxChange, StoreError> {
        let mut change = OutboxChange::default();
        if items.is_empty() {
            return Ok(change);
        }
        let at = now_us();
        for lane in Lane::ALL {
            let mut lane_items = items.iter().filter(|i| i.lane == lane).peekable();
            if lane_items.peek().is_none() {
                continue;
            }
            let mut table = txn.open_table(lane.table()).ctx("open outbox")?;
            for item in lane_items {
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
                change.added += 1;
            }
            let bound = match lane {
                Lane::Action if self.bounds.when_full == WhenFull::DropOldest => {
                    Some(self.bounds.capacity)
                }
                Lane::Action => None,
                Lane::Summary => Some(self.bounds.summary_capacity),
                Lane::DecisionLog => Some(self.bounds.log_capacity),
            };
            if let Some(bound) = bound {
                let dropped = drop_oldest(&mut table, bound)?;
                if lane == Lane::DecisionLog {
                    change.dropped_logs += dropped;
                } else {
                    change.dropped += dropped;
                }
            }
        }
        Ok(change)
    }

    /// Removes, in the caller's transaction (the audit writer's), entries whose PUBACK has arrived.
    pub fn remove(&self, txn: &WriteTransaction, keys: &[u64]) -> Result<OutboxChange, StoreError> {
        let mut change = OutboxChange::default();
        if keys.is_empty() {
            return Ok(change);
        }
        let mut actions = txn.open_table(OUTBOX).ctx("open outbox")?;
        let mut summaries = txn.open_table(OUTBOX_SUMMARIES).ctx("open outbox")?;
        let mut logs = txn.open_table(OUTBOX_DECISION_LOGS).ctx("open outbox")?;
        for key in keys {
            if actions.remove(key).ctx("remove outbox entry")?.is_some() {
                change.removed += 1;
                change.removed_actions += 1;
            } else if summaries.remove(key).ctx("remove outbox entry")?.is_some()
                || logs.remove(key).ctx("remove outbox entry")?.is_some()
            {
                change.removed += 1;
            }
        }
        Ok(change)
    }

    /// Called by the writer once a transaction with [`insert`](Self::insert) or
    /// [`remove`](Self::remove) has committed.
    pub fn committed(&self, change: OutboxChange) {
        if change == OutboxChange::default() {
            return;
        }
        // The depth moves before the new entries are shown to the publisher, so an entry is
        // counted before its removal can be.
        let next = |depth: u64| {
            (depth + change.added)
                .saturating_sub(change.dropped + change.dropped_logs + change.removed)
        };
        let before = self
            .depth
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| Some(next(d)))
            .unwrap_or_default();
        self.metrics.depth.set(next(before) as i64);
        self.metrics.dropped.inc_by(change.dropped);
        self.metrics.dropped_logs.inc_by(change.dropped_logs);
        self.give_back(change.removed_actions);
        if change.added > 0 {
            self.last_committed
                .store(self.next_key.load(Ordering::Relaxed) - 1, Ordering::Release);
            self.committed.notify_one();
        }
    }

    /// Frees places of removed actions (under `block`), except those owed.
    fn give_back(&self, count: u64) {
        if self.bounds.when_full != WhenFull::Block || count == 0 {
            return;
        }
        let owed = self
            .owed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |owed| {
                Some(owed - owed.min(count))
            })
            .unwrap_or(0);
        let free = count - owed.min(count);
        if free > 0 {
            self.room.add_permits(free as usize);
        }
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

    /// Up to `limit` entries of every lane with keys above `after`, in key order.
    pub fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, OutboxEntry)>, StoreError> {
        let txn = self.db.begin_read().ctx("begin read")?;
        let from = after.saturating_add(1)..;
        let tables = Lane::ALL
            .map(|lane| txn.open_table(lane.table()).ctx("open outbox"))
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        let mut ranges = tables
            .iter()
            .map(|table| {
                table
                    .range(from.clone())
                    .ctx("scan outbox")
                    .map(Iterator::peekable)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::with_capacity(limit.min(1024));
        while out.len() < limit {
            // The lane whose next key is lowest; a lane whose next item is an error goes first,
            // so the error is returned.
            let lowest = ranges
                .iter_mut()
                .enumerate()
                .filter_map(|(i, range)| {
                    range
                        .peek()
                        .map(|item| (peeked_key(Some(item)).unwrap_or(0), i))
                })
                .min();
            let Some((_, i)) = lowest else { break };
            let Some(next) = ranges[i].next() else { break };
            let (key, bytes) = next.ctx("scan outbox")?;
            out.push((key.value(), decode_entry(bytes.value())?));
        }
        Ok(out)
    }

    /// Entries committed and not yet acknowledged by the broker (every lane).
    pub fn depth(&self) -> u64 {
        self.depth.load(Ordering::Acquire)
    }

    pub fn capacity(&self) -> u64 {
        self.bounds.capacity
    }

    pub fn when_full(&self) -> WhenFull {
        self.bounds.when_full
    }

    /// How long the oldest entry has waited (`None` when the outbox is empty).
    pub fn oldest_age(&self) -> Result<Option<Duration>, StoreError> {
        let txn = self.db.begin_read().ctx("begin read")?;
        let mut oldest: Option<i64> = None;
        for lane in Lane::ALL {
            let table = txn.open_table(lane.table()).ctx("open outbox")?;
            if let Some((_, bytes)) = table.first().ctx("read oldest outbox entry")? {
                let at = decode_entry(bytes.value())?.enqueued_at_us;
                oldest = Some(oldest.map_or(at, |o| o.min(at)));
            }
        }
        Ok(oldest.map(|at| Duration::from_micros((now_us() - at).max(0) as u64)))
    }
}

/// One item of a range over an outbox table.
type RangeItem<'a, V> = Result<(AccessGuard<'a, u64>, AccessGuard<'a, V>), StorageError>;

/// The key of a peeked range entry (`None` at the end, or for an error, which `next` returns).
fn peeked_key<V: redb::Value>(peeked: Option<&RangeItem<'_, V>>) -> Option<u64> {
    match peeked {
        Some(Ok((key, _))) => Some(key.value()),
        _ => None,
    }
}

/// Drops the oldest entries of `table` beyond `bound`; returns how many.
fn drop_oldest(table: &mut Table<u64, &[u8]>, bound: u64) -> Result<u64, StoreError> {
    let mut dropped = 0;
    while table.len().ctx("count outbox")? > bound {
        if let Some((key, bytes)) = table.pop_first().ctx("drop oldest outbox entry")? {
            let id = decode_entry(bytes.value()).map_or_else(|_| String::new(), |e| e.id);
            warn!(key = key.value(), id = %id, bound, "outbox full: oldest entry dropped");
        }
        dropped += 1;
    }
    Ok(dropped)
}

fn decode_entry(bytes: &[u8]) -> Result<OutboxEntry, StoreError> {
    decode(bytes).map_err(|source| StoreError::Decode {
        context: "outbox entry",
        source,
    })
}

#[cfg(test)]
mod tests;
