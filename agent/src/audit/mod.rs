//! The audit ring: every evaluation, kept in redb, newest `capacity` entries, oldest dropped first.
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
//! that never loses its actions, and concurrent evaluations still share one fsync.

pub mod ring;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_proto::AuditRecord;
use redb::Database;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::metrics::Metrics;
use crate::outbox::{Outbox, OutboxItem};
use crate::store::{DbContext, StoreError};

pub use ring::Query;

/// Entries committed in one transaction at most; a fuller queue commits sooner.
const MAX_GROUP: usize = 8_192;
/// Entries waiting for the writer before `append` makes callers wait (backpressure).
const QUEUE: usize = 65_536;
/// Attempts to commit one group before its entries are dropped (and logged as lost).
const COMMIT_ATTEMPTS: u32 = 3;

/// How the ring behaves.
#[derive(Debug, Clone, Copy)]
pub struct AuditSettings {
    pub capacity: u64,
    pub commit_interval: Duration,
}

/// The entry could not be committed (the data file failed); nothing of it was recorded.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the audit entry and its outbox messages could not be committed")]
pub struct NotCommitted;

/// Resolves when an entry given to [`AuditLog::append_durable`] is committed (or failed to be).
pub type Committed = oneshot::Receiver<Result<(), NotCommitted>>;

/// One unit of work for the writer: an audit entry and/or outbox messages, and who waits for them.
struct Append {
    record: Option<AuditRecord>,
    outbox: Vec<OutboxItem>,
    done: Option<oneshot::Sender<Result<(), NotCommitted>>>,
}

/// The handle evaluations append through and the API reads through. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    queue: mpsc::Sender<Append>,
    db: Arc<Database>,
    settings: AuditSettings,
    metrics: Arc<Metrics>,
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
        settings: AuditSettings,
        metrics: Arc<Metrics>,
    ) -> Result<(AuditLog, AuditWriter), StoreError> {
        AuditLog::start_with_outbox(db, settings, metrics, None)
    }

    /// [`start`](Self::start), with an outbox that durable appends insert into.
    pub fn start_with_outbox(
        db: Arc<Database>,
        settings: AuditSettings,
        metrics: Arc<Metrics>,
        outbox: Option<Arc<Outbox>>,
    ) -> Result<(AuditLog, AuditWriter), StoreError> {
        let dropped = ring::trim(&db, settings.capacity)?;
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
            capacity: settings.capacity,
            next_seq,
            metrics: Arc::clone(&metrics),
            outbox,
        };
        let task = tokio::spawn(writer.run(rx, stopped, settings.commit_interval));
        let log = AuditLog {
            queue,
            db,
            settings,
            metrics,
        };
        Ok((log, AuditWriter { stop, task }))
    }

    /// Queues one entry (its `seq` is assigned by the writer). Waits only if the queue is full.
    pub async fn append(&self, record: AuditRecord) {
        self.metrics.audit_pending.inc();
        let append = Append {
            record: Some(record),
            outbox: Vec::new(),
            done: None,
        };
        if self.queue.send(append).await.is_err() {
            self.metrics.audit_pending.dec();
            warn!("audit writer has stopped; entry not recorded");
        }
    }

    /// Queues an entry (if any) with messages for the outbox, to be committed together and at once;
    /// the returned receiver resolves when they are on disk. The caller has reserved outbox room.
    pub async fn append_durable(
        &self,
        record: Option<AuditRecord>,
        outbox: Vec<OutboxItem>,
    ) -> Committed {
        let (done, committed) = oneshot::channel();
        if record.is_some() {
            self.metrics.audit_pending.inc();
        }
        let has_record = record.is_some();
        let append = Append {
            record,
            outbox,
            done: Some(done),
        };
        if let Err(mpsc::error::SendError(append)) = self.queue.send(append).await {
            if has_record {
                self.metrics.audit_pending.dec();
            }
            warn!("audit writer has stopped; entry not recorded");
            if let Some(done) = append.done {
                let _ = done.send(Err(NotCommitted));
            }
        }
        committed
    }

    /// Reads committed entries, newest first, and the head sequence number of the same snapshot.
    pub fn read(&self, query: Query) -> Result<(Vec<AuditRecord>, u64), StoreError> {
        ring::read(&self.db, query)
    }

    /// The sequence number of the newest committed entry.
    pub fn head(&self) -> Result<u64, StoreError> {
        ring::head(&self.db)
    }

    pub fn settings(&self) -> AuditSettings {
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
    capacity: u64,
    next_seq: u64,
    metrics: Arc<Metrics>,
    outbox: Option<Arc<Outbox>>,
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
        info!(head = self.next_seq - 1, "audit ring flushed");
    }

    /// Numbers and commits one group (entries and outbox messages in one transaction), then tells
    /// the waiters; returns the emptied vector for reuse.
    async fn commit(&mut self, mut group: Vec<Append>) -> Vec<Append> {
        if group.is_empty() {
            return group;
        }
        let mut records = Vec::with_capacity(group.len());
        let mut items = Vec::new();
        let mut waiters = Vec::new();
        for append in group.drain(..) {
            if let Some(mut record) = append.record {
                record.seq = self.next_seq;
                self.next_seq += 1;
                records.push(record);
            }
            items.extend(append.outbox);
            waiters.extend(append.done);
        }
        let count = records.len();
        let added = items.len();
        let mut result = Err(NotCommitted);
        for attempt in 1..=COMMIT_ATTEMPTS {
            let db = Arc::clone(&self.db);
            let capacity = self.capacity;
            let outbox = self.outbox.clone();
            let started = Instant::now();
            let joined = tokio::task::spawn_blocking(move || {
                let outcome = commit_group(&db, &records, capacity, outbox.as_deref(), &items);
                (outcome, records, items)
            })
            .await;
            let (outcome, returned, returned_items) = match joined {
                Ok(triple) => triple,
                Err(err) => {
                    error!(error = %err, lost = count, "audit commit task failed; entries lost");
                    break;
                }
            };
            records = returned;
            items = returned_items;
            match outcome {
                Ok(dropped) => {
                    self.metrics
                        .audit_commit_duration
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics.audit_appended.inc_by(count as u64);
                    if let Some(outbox) = &self.outbox {
                        outbox.committed(added as u64, dropped);
                    }
                    debug!(
                        count,
                        outbox = added,
                        head = self.next_seq - 1,
                        "audit group committed"
                    );
                    result = Ok(());
                    break;
                }
                Err(err) if attempt < COMMIT_ATTEMPTS => {
                    warn!(error = %err, attempt, "audit commit failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                Err(err) => {
                    error!(error = %err, lost = count, outbox_lost = added, "audit commit failed; entries lost");
                }
            }
        }
        self.metrics.audit_pending.dec_by(count as i64);
        if let (Err(_), Some(outbox)) = (result, &self.outbox) {
            outbox.unreserve(added);
        }
        for done in waiters {
            let _ = done.send(result);
        }
        group
    }
}

/// Appends the entries to the ring and the messages to the outbox, in one transaction. Returns how
/// many old outbox entries were evicted to make room.
fn commit_group(
    db: &Database,
    records: &[AuditRecord],
    capacity: u64,
    outbox: Option<&Outbox>,
    items: &[OutboxItem],
) -> Result<u64, StoreError> {
    let txn = db.begin_write().ctx("begin audit commit")?;
    ring::append(&txn, records, capacity)?;
    let dropped = match outbox {
        Some(outbox) => outbox.insert(&txn, items)?,
        None => 0,
    };
    txn.commit().ctx("commit audit group")?;
    Ok(dropped)
}
