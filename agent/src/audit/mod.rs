//! The audit ring: every evaluation, kept in redb, newest `capacity` entries, oldest dropped first.
//!
//! Evaluations hand their entry to [`AuditLog::append`], which only queues it; one writer task
//! numbers queued entries and commits them in groups: at most every `commit_interval`, or sooner when
//! a group is full. So `/evaluate` never waits for an fsync, and a crash loses at most the entries
//! accepted during the last commit interval (plus the commit in flight). A clean shutdown
//! ([`AuditWriter::close`]) commits everything queued.

pub mod ring;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_proto::AuditRecord;
use redb::Database;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::metrics::Metrics;
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

/// The handle evaluations append through and the API reads through. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    queue: mpsc::Sender<AuditRecord>,
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
        if self.queue.send(record).await.is_err() {
            self.metrics.audit_pending.dec();
            warn!("audit writer has stopped; entry not recorded");
        }
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
}

impl Writer {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<AuditRecord>,
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
            // Then gather more until the interval has passed since that first entry, or it is full.
            let deadline = tokio::time::Instant::now() + interval;
            while group.len() < MAX_GROUP {
                let room = MAX_GROUP - group.len();
                tokio::select! {
                    biased;
                    _ = stop.changed() => break,
                    _ = tokio::time::sleep_until(deadline) => break,
                    next = rx.recv_many(&mut group, room) => if next == 0 { break },
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

    /// Numbers and commits one group; returns the emptied vector for reuse.
    async fn commit(&mut self, mut group: Vec<AuditRecord>) -> Vec<AuditRecord> {
        if group.is_empty() {
            return group;
        }
        for record in &mut group {
            record.seq = self.next_seq;
            self.next_seq += 1;
        }
        let count = group.len();
        for attempt in 1..=COMMIT_ATTEMPTS {
            let db = Arc::clone(&self.db);
            let capacity = self.capacity;
            let started = Instant::now();
            let result = tokio::task::spawn_blocking(move || {
                let outcome = commit_group(&db, &group, capacity);
                (outcome, group)
            })
            .await;
            let (outcome, returned) = match result {
                Ok(pair) => pair,
                Err(err) => {
                    error!(error = %err, lost = count, "audit commit task failed; entries lost");
                    self.metrics.audit_pending.dec_by(count as i64);
                    return Vec::with_capacity(MAX_GROUP);
                }
            };
            group = returned;
            match outcome {
                Ok(()) => {
                    self.metrics
                        .audit_commit_duration
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics.audit_appended.inc_by(count as u64);
                    self.metrics.audit_pending.dec_by(count as i64);
                    debug!(count, head = self.next_seq - 1, "audit group committed");
                    group.clear();
                    return group;
                }
                Err(err) if attempt < COMMIT_ATTEMPTS => {
                    warn!(error = %err, attempt, "audit commit failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                Err(err) => {
                    error!(error = %err, lost = count, "audit commit failed; entries lost");
                    self.metrics.audit_pending.dec_by(count as i64);
                }
            }
        }
        group.clear();
        group
    }
}

fn commit_group(db: &Database, group: &[AuditRecord], capacity: u64) -> Result<(), StoreError> {
    let txn = db.begin_write().ctx("begin audit commit")?;
    ring::append(&txn, group, capacity)?;
    txn.commit().ctx("commit audit group")
}
