//! The audit ring: every evaluation, kept in redb, newest `capacity` entries, oldest dropped first.
//! Its writer task is also the only writer of the outbox.
//!
//! Evaluations hand their entry to [`AuditLog::append`], which only queues it; one writer task
//! numbers queued entries and commits them in groups: at most every `commit_interval`, or sooner when
//! a group is full. So `/evaluate` never waits for an fsync, and a crash loses at most the entries
//! accepted during the last commit interval (plus the commit in flight). A clean shutdown
//! ([`AuditWriter::close`]) commits everything queued.
//!
//! An evaluation that produced messages for the broker ([`AuditLog::append_durable`]) hands them
//! over with its entry: the writer inserts them into the [`Outbox`] in the same transaction, and a
//! group holding such an entry is committed at once (with whatever else is queued) rather than at
//! the end of the interval; the caller learns when it is on disk. So acknowledging an incident after
//! that never loses its actions, and concurrent evaluations still share one fsync. Outbox entries
//! the broker acknowledged ([`AuditLog::remove_from_outbox`]) leave in the next group's
//! transaction: one writer, so removals never wait for a second write transaction's lock.
//!
//! A commit that fails is fatal ([`Fatal`]): redb refuses every later write on that file handle.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_proto::AuditRecord;
use redb::{Database, Durability};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use agent_base::{Fatal, InvalidSetting};
use agent_store::audit_ring as ring;
use agent_store::{DbContext, StoreError};
use serde::{Deserialize, Serialize};

use crate::metrics::AuditMetrics;
use crate::outbox::{Lane, Outbox, OutboxChange, OutboxItem, Room};

pub use ring::{Bounds, Page, Query, Verified, entry_hash, verify};

/// Entries committed in one transaction at most; a fuller queue commits sooner.
const MAX_GROUP: usize = 8_192;
/// Entries waiting for the writer before `append` makes callers wait (backpressure).
const QUEUE: usize = 65_536;

/// The `[audit]` config section: how the ring behaves.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Entries kept; the oldest is dropped first.
    pub capacity: u64,
    /// Bytes the kept entries may take (encoded); the oldest are dropped first.
    pub max_bytes: u64,
    /// Longest time an accepted entry waits before it is committed (what a crash can lose).
    pub commit_interval_ms: u64,
}

impl Default for AuditConfig {
    fn default() -> AuditConfig {
        AuditConfig {
            capacity: 100_000,
            max_bytes: 64 * 1024 * 1024,
            commit_interval_ms: 200,
        }
    }
}

impl AuditConfig {
    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.capacity == 0 {
            return Err(InvalidSetting::new("audit.capacity", "must be at least 1"));
        }
        if self.max_bytes < 1024 * 1024 {
            return Err(InvalidSetting::new(
                "audit.max_bytes",
                "must be at least 1048576 (1 MiB)",
            ));
        }
        if !(1..=60_000).contains(&self.commit_interval_ms) {
            return Err(InvalidSetting::new(
                "audit.commit_interval_ms",
                "must be between 1 and 60000",
            ));
        }
        Ok(())
    }

    pub fn commit_interval(&self) -> Duration {
        Duration::from_millis(self.commit_interval_ms)
    }

    pub fn bounds(&self) -> Bounds {
        Bounds {
            entries: self.capacity,
            bytes: self.max_bytes,
        }
    }
}

/// The entry could not be committed (the data file failed); nothing of it was recorded.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the audit entry and its outbox messages could not be committed")]
pub struct NotCommitted;

/// Resolves when an entry given to [`AuditLog::append_durable`] is committed (or failed to be).
pub type Committed = oneshot::Receiver<Result<(), NotCommitted>>;

/// One unit of work for the writer: audit entries, outbox messages (with the room taken for the
/// actions among them), outbox keys to remove, and who waits for the commit.
#[derive(Default)]
struct Append {
    records: Vec<AuditRecord>,
    outbox: Vec<OutboxItem>,
    room: Room,
    remove: Vec<u64>,
    done: Option<oneshot::Sender<Result<(), NotCommitted>>>,
}

/// The handle evaluations append through and the API reads through. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    queue: mpsc::Sender<Append>,
    db: Arc<Database>,
    settings: AuditConfig,
    metrics: AuditMetrics,
    /// Raised when the data file fails: from then on nothing is taken.
    fatal: Fatal,
}

/// The writer task; [`close`](AuditWriter::close) it to commit what is queued before exit.
pub struct AuditWriter {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl AuditLog {
    /// Trims the ring to its capacity and starts the writer.
    pub fn start(
        db: Arc<Database>,
        settings: AuditConfig,
        metrics: AuditMetrics,
        fatal: Fatal,
    ) -> Result<(AuditLog, AuditWriter), StoreError> {
        AuditLog::start_with_outbox(db, settings, metrics, fatal, None)
    }

    /// [`start`](Self::start), with an outbox that durable appends insert into.
    pub fn start_with_outbox(
        db: Arc<Database>,
        settings: AuditConfig,
        metrics: AuditMetrics,
        fatal: Fatal,
        outbox: Option<Arc<Outbox>>,
    ) -> Result<(AuditLog, AuditWriter), StoreError> {
        let dropped = ring::trim(&db, settings.bounds())?;
        if dropped > 0 {
            info!(
                dropped,
                capacity = settings.capacity,
                "audit ring trimmed to its capacity"
            );
        }
        let next_seq = ring::head(&db)? + 1;
        let (queue, rx) = mpsc::channel(QUEUE);
        let (stop, stopped) = watch::channel(false);
        let writer = Writer {
            db: Arc::clone(&db),
            bounds: settings.bounds(),
            next_seq,
            committed_seq: next_seq - 1,
            metrics: metrics.clone(),
            outbox,
            fatal: fatal.clone(),
        };
        let task = tokio::spawn(writer.run(rx, stopped, settings.commit_interval()));
        let log = AuditLog {
            queue,
            db,
            settings,
            metrics,
            fatal,
        };
        Ok((log, AuditWriter { stop, task }))
    }

    /// Queues entries for the next group commit, together (their `seq` is assigned by the
    /// writer). Waits only if the queue is full. Refused once the data file has failed or the
    /// writer has stopped: the caller must not report them recorded.
    pub async fn append(&self, records: Vec<AuditRecord>) -> Result<(), NotCommitted> {
        if records.is_empty() {
            return Ok(());
        }
        self.submit(Append {
            records,
            ..Append::default()
        })
        .await
    }

    /// Queues entries with messages for the outbox, to be committed together (all or none) and at
    /// once; the returned receiver resolves when they are on disk. `room` is what the caller
    /// reserved for the actions among them (`Outbox::reserve`).
    pub async fn append_durable(
        &self,
        records: Vec<AuditRecord>,
        outbox: Vec<OutboxItem>,
        room: Room,
    ) -> Committed {
        let (done, committed) = oneshot::channel();
        // Refused, the receiver is told so.
        let _ = self
            .submit(Append {
                records,
                outbox,
                room,
                done: Some(done),
                ..Append::default()
            })
            .await;
        committed
    }

    /// Queues the removal of outbox entries the broker acknowledged; they leave with the next
    /// group (not fsynced on their own: a crash before the next durable commit only sends them
    /// again, under the same id).
    pub async fn remove_from_outbox(&self, keys: Vec<u64>) {
        if !keys.is_empty() {
            let _ = self
                .submit(Append {
                    remove: keys,
                    ..Append::default()
                })
                .await;
        }
    }

    /// Removes `keys` (possibly none) and resolves once they, and every removal queued before,
    /// are committed: the queue is first in, first out.
    pub async fn remove_from_outbox_now(&self, keys: Vec<u64>) -> Result<(), NotCommitted> {
        let (done, committed) = oneshot::channel();
        let _ = self
            .submit(Append {
                remove: keys,
                done: Some(done),
                ..Append::default()
            })
            .await;
        committed.await.map_err(|_| NotCommitted)?
    }

    /// Hands `append` to the writer, its entries counted as pending. Refused once the data file
    /// has failed or the writer has stopped; its waiter, if any, is told.
    async fn submit(&self, append: Append) -> Result<(), NotCommitted> {
        let refuse = |append: Append| {
            if let Some(done) = append.done {
                let _ = done.send(Err(NotCommitted));
            }
            Err(NotCommitted)
        };
        if self.fatal.reason().is_some() {
            return refuse(append);
        }
        let count = append.records.len() as i64;
        self.metrics.pending.inc_by(count);
        if let Err(mpsc::error::SendError(append)) = self.queue.send(append).await {
            self.metrics.pending.dec_by(count);
            warn!("audit writer has stopped; not recorded");
            return refuse(append);
        }
        Ok(())
    }

    /// Reads committed entries, newest first, with the head sequence number of the same snapshot.
    pub fn read(&self, query: Query) -> Result<Page, StoreError> {
        ring::read(&self.db, query)
    }

    /// The sequence number of the newest committed entry.
    pub fn head(&self) -> Result<u64, StoreError> {
        ring::head(&self.db)
    }

    pub fn settings(&self) -> AuditConfig {
        self.settings
    }
}

impl AuditWriter {
    /// Commits everything queued so far and stops the writer.
    pub async fn close(self) {
        let _ = self.stop.send(true);
        if let Err(err) = self.task.await {
            error!(error = %err, "audit writer task failed");
        }
    }
}

struct Writer {
    db: Arc<Database>,
    bounds: Bounds,
    next_seq: u64,
    /// The newest sequence number on disk.
    committed_seq: u64,
    metrics: AuditMetrics,
    outbox: Option<Arc<Outbox>>,
    fatal: Fatal,
}

/// What one group commits: numbered entries, outbox messages, outbox removals.
struct Group {
    records: Vec<AuditRecord>,
    items: Vec<OutboxItem>,
    remove: Vec<u64>,
}

impl Writer {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Append>,
        mut stop: watch::Receiver<bool>,
        interval: Duration,
    ) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        loop {
            // Wait for the first entry of a group (or the stop signal).
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                first = rx.recv() => match first {
                    Some(record) => group.push(record),
                    None => break,
                },
            }
            // Then gather more until the interval has passed since that first entry, or it is full,
            // or someone waits for the group: then only what is already queued joins it.
            let deadline = tokio::time::Instant::now() + interval;
            let mut urgent = group.iter().any(|a: &Append| a.done.is_some());
            while group.len() < MAX_GROUP && !urgent {
                let room = MAX_GROUP - group.len();
                let before = group.len();
                tokio::select! {
                    biased;
                    _ = stop.changed() => break,
                    _ = tokio::time::sleep_until(deadline) => break,
                    next = rx.recv_many(&mut group, room) => if next == 0 { break },
                }
                urgent = group[before..].iter().any(|a| a.done.is_some());
            }
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(append) => group.push(append),
                    Err(_) => break,
                }
            }
            group = self.commit(group).await;
            if *stop.borrow() {
                break;
            }
        }
        // Stopping: everything already queued is committed before the task ends.
        rx.close();
        while rx.recv_many(&mut group, MAX_GROUP).await > 0 {
            group = self.commit(group).await;
        }
        if !group.is_empty() {
            self.commit(group).await;
        }
        info!(head = self.committed_seq, "audit ring flushed");
    }

    /// Numbers and commits one group (entries, outbox messages and removals in one transaction),
    /// then tells the waiters; returns the emptied vector for reuse.
    async fn commit(&mut self, mut appends: Vec<Append>) -> Vec<Append> {
        if appends.is_empty() {
            return appends;
        }
        let mut group = Group {
            records: Vec::with_capacity(appends.len()),
            items: Vec::new(),
            remove: Vec::new(),
        };
        let mut waiters = Vec::new();
        let mut rooms = Vec::new();
        for append in appends.drain(..) {
            for mut record in append.records {
                record.seq = self.next_seq;
                self.next_seq += 1;
                group.records.push(record);
            }
            // Only actions hold room; summaries have their own bound.
            let actions = append
                .outbox
                .iter()
                .filter(|item| item.lane == Lane::Action)
                .count() as u64;
            if actions > 0 {
                rooms.push((append.room, actions));
            }
            group.items.extend(append.outbox);
            group.remove.extend(append.remove);
            waiters.extend(append.done);
        }
        let count = group.records.len();
        let added = group.items.len();
        let result = if let Some(reason) = self.fatal.reason() {
            debug!(
                reason,
                lost = count,
                "data file failed earlier; group not committed"
            );
            Err(NotCommitted)
        } else {
            let db = Arc::clone(&self.db);
            let bounds = self.bounds;
            let outbox = self.outbox.clone();
            let started = Instant::now();
            let joined = agent_base::blocking::run(move || {
                commit_group(&db, &mut group, bounds, outbox.as_deref())
            })
            .await;
            match joined {
                Ok(Ok(change)) => {
                    self.committed_seq = self.next_seq - 1;
                    self.metrics
                        .commit_duration
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics.appended.inc_by(count as u64);
                    if let Some(outbox) = &self.outbox {
                        for (room, actions) in rooms.drain(..) {
                            outbox.keep(room, actions);
                        }
                        outbox.committed(change);
                    }
                    debug!(
                        count,
                        outbox = added,
                        removed = change.removed,
                        head = self.next_seq - 1,
                        "audit group committed"
                    );
                    Ok(())
                }
                Ok(Err(err)) => {
                    error!(error = %err, lost = count, outbox_lost = added, "audit commit failed");
                    self.fatal
                        .raise(format!("the data file failed a commit: {err}"));
                    Err(NotCommitted)
                }
                Err(err) => {
                    error!(error = %err, lost = count, outbox_lost = added, "audit commit task failed");
                    self.fatal
                        .raise(format!("the audit commit task failed: {err}"));
                    Err(NotCommitted)
                }
            }
        };
        self.metrics.pending.dec_by(count as i64);
        // Rooms not kept (the commit failed) are given back as they drop here.
        drop(rooms);
        for done in waiters {
            let _ = done.send(result);
        }
        appends
    }
}

/// Appends the entries to the ring, inserts the messages into the outbox and removes the
/// acknowledged ones, in one transaction. A group that only removes is not fsynced: losing it in
/// a crash only sends those messages again.
fn commit_group(
    db: &Database,
    group: &mut Group,
    bounds: Bounds,
    outbox: Option<&Outbox>,
) -> Result<OutboxChange, StoreError> {
    let mut txn = db.begin_write().ctx("begin audit commit")?;
    if group.records.is_empty() && group.items.is_empty() {
        txn.set_durability(Durability::None)
            .ctx("set removal durability")?;
    }
    ring::append(&txn, &mut group.records, bounds)?;
    let mut change = OutboxChange::default();
    if let Some(outbox) = outbox {
        change = outbox.insert(&txn, &group.items)?;
        let removed = outbox.remove(&txn, &group.remove)?;
        change.removed = removed.removed;
        change.removed_actions = removed.removed_actions;
    }
    txn.commit().ctx("commit audit group")?;
    Ok(change)
}

#[cfg(test)]
mod tests;
