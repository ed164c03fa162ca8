//! The embedded log's two workers: the committer (one thread per route: every waiting append is
//! written, then one `sync` for the batch, and only then does any of them learn it is stored) and
//! the drainer (one task per route: the oldest record goes upstream, one in flight; a positive
//! reply advances the cursor, which reaches the disk within `ACK_SETTLE`; AE/AR follow
//! `on_reply`, failures retry the same record after a jittered backoff until `retry.max_attempts`
//! or `retry.max_age` gives it up; dead letters go to their own queue). Must not know senders or
//! acks we give.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use super::counters::Counters;
use super::duplicates::{DuplicateKey, Duplicates, Journal};
use super::error::NotQueued;
use super::full::{dead_letters_full, dead_letters_have_room};
use super::give_up::{give_up, next_wait};
use crate::config::{CustodyConfig, ReplyAction};
use crate::outcome::Fault as _;
use crate::queue::{Damage, Limits, QueueError, Record, SegmentLog, Store, ACK_SETTLE};
use crate::timing::backoff::Backoff;
use crate::upstream::Upstream;
use crate::wire::codec::Frame;
use crate::wire::hl7::{printable, AckCode, AckView};

/// The directory under a route's queue directory that holds its dead letters.
pub const DEAD_LETTER_DIR: &str = "dead-letter";
/// At most this many appends are written before one sync (bounds a batch's latency).
const MAX_BATCH: usize = 1024;

/// One message waiting for the committer, and where its outcome goes.
pub(super) struct AppendRequest {
    pub(super) payload: Bytes,
    pub(super) enqueued_at_ms: u64,
    /// With `duplicate_window`: the message's key and the ack it gets once stored, remembered
    /// (and journalled) before that ack leaves.
    pub(super) remember: Option<(DuplicateKey, Bytes)>,
    pub(super) done: oneshot::Sender<Result<u64, NotQueued>>,
}

/// The committer's duplicate memory: the route's (shared with `accept`), its window and the
/// journal that keeps it across restarts (`None` when it could not be opened: memory only).
pub(super) struct Remembering {
    pub(super) memory: Arc<Mutex<Duplicates>>,
    pub(super) window: Duration,
    pub(super) journal: Option<Journal>,
}

/// The queue limits a route's custody config sets (shared with `mllp-guard queue ...`).
/// The dead-letter store's limits: `queue.dead_letters`, apart from the queue's.
pub fn dead_letter_limits(cfg: &CustodyConfig) -> Limits {
    Limits {
        max_bytes: cfg.dead_letters.max_bytes,
        max_messages: cfg.dead_letters.max_messages,
        segment_bytes: cfg.segment_bytes.min(
            cfg.dead_letters
                .max_bytes
                .max(crate::queue::MIN_SEGMENT_BYTES),
        ),
    }
}

pub fn queue_limits(cfg: &CustodyConfig) -> Limits {
    Limits {
        max_bytes: cfg.max_bytes,
        max_messages: cfg.max_messages,
        segment_bytes: cfg.segment_bytes,
    }
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Group commit: every append waiting is written, then one sync makes the whole batch durable;
/// only then does any of them learn it is stored. A failed sync fails the whole batch.
pub(super) fn commit_loop(
    mut requests: mpsc::UnboundedReceiver<AppendRequest>,
    store: &Mutex<Box<dyn Store>>,
    wake: &Notify,
    counters: &Counters,
    route: &str,
    mut remembering: Option<Remembering>,
) {
    let mut batch = Vec::with_capacity(64);
    while let Some(first) = requests.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let mut results = Vec::with_capacity(batch.len());
        {
            let mut log = store.lock().unwrap_or_else(|e| e.into_inner());
            for request in &batch {
                results.push(
                    log.append(&request.payload, "", request.enqueued_at_ms)
                        .map_err(NotQueued::Refused),
                );
            }
            if results.iter().any(Result::is_ok) {
                counters.syncs.fetch_add(1, Ordering::Relaxed);
                let synced = log.sync();
                counters
                    .sync_failing
                    .store(synced.is_err(), Ordering::Relaxed);
                if let Err(err) = synced {
                    tracing::error!(route, error = %err, "queue sync failed; the batch is answered negatively");
                    let err = Arc::new(err);
                    for result in &mut results {
                        if result.is_ok() {
                            *result = Err(NotQueued::NotDurable(err.clone()));
                        }
                    }
                }
            }
        }
        if let Some(r) = &mut remembering {
            remember(r, &mut batch, &results, route);
        }
        for (request, result) in batch.drain(..).zip(results) {
            let _ = request.done.send(result);
        }
        wake.notify_one();
    }
}

/// Remembers the keys of the stored messages of a batch (journal first), before their acks
/// leave. A journal that fails is given up (memory only, until the next start).
fn remember(
    r: &mut Remembering,
    batch: &mut [AppendRequest],
    results: &[Result<u64, NotQueued>],
    route: &str,
) {
    let stored: Vec<(DuplicateKey, Bytes)> = batch
        .iter_mut()
        .zip(results)
        .filter(|(_, result)| result.is_ok())
        .filter_map(|(request, _)| request.remember.take())
        .collect();
    if stored.is_empty() {
        return;
    }
    if let Some(journal) = &mut r.journal {
        match journal.append(&stored, &r.memory) {
            Ok(()) => return,
            Err(err) => {
                tracing::warn!(route, error = %err, "cannot write the duplicate journal; duplicates are remembered in memory only until the next start");
                r.journal = None;
            }
        }
    }
    let mut memory = r.memory.lock().unwrap_or_else(|e| e.into_inner());
    for (key, ack) in stored {
        memory.remember(key, ack, r.window);
    }
}

/// Delivers a route's queue to its upstream, in order, one message in flight.
pub(super) struct LogDrainer {
    pub(super) route: Arc<str>,
    pub(super) cfg: CustodyConfig,
    pub(super) counters: Arc<Counters>,
    pub(super) store: Arc<Mutex<Box<dyn Store>>>,
    pub(super) wake: Arc<Notify>,
    pub(super) upstream: Arc<Upstream>,
    pub(super) shutdown: CancellationToken,
    /// Paused by the operator: the queue keeps filling, nothing is sent.
    pub(super) paused: Arc<std::sync::atomic::AtomicBool>,
}

enum Next {
    Record(Record),
    Empty,
    /// The front record was damaged on disk and has been set aside.
    SetAside(Damage),
    Failed(String),
}

/// Tells people about damaged queue bytes set aside (at open or while delivering): one ERROR
/// line each, and the acknowledged messages lost in `mllp_guard_queue_damaged_records_total`.
pub(super) fn report_damage(route: &str, damage: &Damage) {
    crate::ops::metrics::queue_damaged_records(route, damage.lost);
    let control_ids = damage.control_ids.join(",");
    tracing::error!(
        route,
        lost = damage.lost,
        first_seq = damage.first_seq,
        last_seq = damage.last_seq,
        control_ids,
        moved_to = %damage.file.display(),
        "damaged queue bytes were set aside; acknowledged messages in them are lost (every intact message is kept and delivered in order)"
    );
}

/// What the drainer knows about the front record's delivery so far (since this guard started).
#[derive(Default)]
struct Front {
    seq: u64,
    /// Failed attempts.
    failures: u32,
    /// Attempts, failed or not (for the redelivery count).
    attempts: u32,
    /// What the last failed attempt got, for a dead letter's reason.
    last: String,
    /// An attempt reached the receiver (it answered, or the exchange broke after the message
    /// went out): the next send is a redelivery.
    reached_the_receiver: bool,
    /// Due for the dead letters with this reason: the write is retried (with the backoff, never
    /// a tight loop) and the message is not sent again meanwhile.
    dead_letter: Option<String>,
}

impl LogDrainer {
    pub(super) async fn run(self) {
        let route = &self.route;
        let retry = self.cfg.retry;
        let mut backoff = Backoff::new(retry.initial, retry.max);
        let mut conn: crate::upstream::ConnSlot = None;
        let mut front = Front::default();
        // When acks not yet in the cursor on disk are due to be persisted (`ACK_SETTLE`).
        let mut settle_at: Option<tokio::time::Instant> = None;
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            if self.paused.load(Ordering::Relaxed) {
                if self.pause(Duration::from_millis(100)).await {
                    break;
                }
                continue;
            }
            if settle_at.is_some_and(|at| at <= tokio::time::Instant::now()) {
                settle_at = None;
                self.persist_acks().await;
            }
            let next = {
                let store = self.store.clone();
                tokio::task::spawn_blocking(move || {
                    let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
                    match store.front() {
                        Ok(Some(record)) => Next::Record(record),
                        Ok(None) => Next::Empty,
                        // Damaged on disk: set it aside, and deliver the next.
                        Err(QueueError::Corrupt { .. }) => match store.set_aside_front() {
                            Ok(Some(damage)) => Next::SetAside(damage),
                            Ok(None) => Next::Failed("the front record changed while read".into()),
                            Err(err) => Next::Failed(err.to_string()),
                        },
                        Err(err) => Next::Failed(err.to_string()),
                    }
                })
                .await
                .unwrap_or_else(|e| Next::Failed(e.to_string()))
            };
            let record = match next {
                Next::Record(record) => record,
                Next::Empty => {
                    // `idle_reopen: at-once`: replace a quiet connection while there is time.
                    let reopen_at = conn
                        .as_ref()
                        .filter(|_| self.upstream.reopens_at_once())
                        .and_then(|c| self.upstream.idle_deadline(c));
                    let reopen = async {
                        match reopen_at {
                            Some(at) => tokio::time::sleep_until(at.into()).await,
                            None => std::future::pending().await,
                        }
                    };
                    let settle = async {
                        match settle_at {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        _ = self.shutdown.cancelled() => break,
                        _ = self.wake.notified() => continue,
                        _ = settle => continue,
                        _ = reopen => {
                            self.upstream.reopen_idle(&mut conn).await;
                            continue;
                        }
                        // A bounded nap: a missed wake-up can never strand a record.
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
                Next::SetAside(damage) => {
                    report_damage(route, &damage);
                    continue;
                }
                Next::Failed(err) => {
                    tracing::error!(route = %route, error = %err, "cannot read the queue; retrying");
                    if self.pause(backoff.next_wait()).await {
                        break;
                    }
                    continue;
                }
            };
            if front.seq != record.seq {
                front = Front {
                    seq: record.seq,
                    ..Front::default()
                };
            }
            if let Some(reason) = front.dead_letter.clone() {
                if self.dead_letter(&record, &reason).await {
                    settle_at.get_or_insert_with(|| tokio::time::Instant::now() + ACK_SETTLE);
                    backoff.reset();
                } else if self.pause(backoff.next_wait()).await {
                    break;
                }
                continue;
            }
            let age = Duration::from_millis(now_ms().saturating_sub(record.enqueued_at_ms));
            if let Some(reason) = give_up(&retry, front.failures, age, &front.last) {
                front.dead_letter = Some(reason);
                continue;
            }
            let Some(frame) = Frame::from_payload(&record.payload) else {
                // Never happens for payloads that came from the decoder; refuse to send garbage.
                if self
                    .dead_letter(&record, "stored payload is not a valid MLLP payload")
                    .await
                {
                    settle_at.get_or_insert_with(|| tokio::time::Instant::now() + ACK_SETTLE);
                }
                continue;
            };
            let header = crate::wire::hl7::find_header(&record.payload);
            let control_id = header
                .as_ref()
                .map(|h| h.control_id().to_vec())
                .unwrap_or_default();
            let shown_id = printable(&control_id);
            // A redelivery is a send after an attempt that reached the receiver (it answered, or
            // the exchange broke after the message went out): not a retry after a refused
            // connection, which delivered nothing.
            if front.reached_the_receiver {
                self.counters.redeliveries.fetch_add(1, Ordering::Relaxed);
            }
            front.attempts += 1;
            let result = self
                .upstream
                .exchange(&mut conn, &frame, &control_id, Default::default())
                .await;
            let action = match &result {
                Ok(reply) if reply.code.is_positive() => ReplyAction::Accept,
                Ok(reply) if matches!(reply.code, AckCode::AE | AckCode::CE) => {
                    self.cfg.on_reply.ae
                }
                Ok(_) => self.cfg.on_reply.ar,
                Err(_) => ReplyAction::Retry,
            };
            match (action, &result) {
                (ReplyAction::Accept, Ok(reply)) => {
                    if self.ack(&record).await {
                        self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(route = %route, seq = record.seq, control_id = %shown_id, ack = %reply.code, attempts = front.attempts, outcome = "delivered", "queued message delivered");
                        settle_at.get_or_insert_with(|| tokio::time::Instant::now() + ACK_SETTLE);
                        backoff.reset();
                    }
                }
                (ReplyAction::DeadLetter, Ok(reply)) => {
                    let text = ack_text(&reply.ack);
                    let reason = format!("upstream replied {}: {}", reply.code, text);
                    front.dead_letter = Some(reason);
                }
                (_, result) => {
                    front.failures += 1;
                    front.reached_the_receiver |= match &result {
                        Ok(_) => true,
                        Err(err) => err.may_have_reached_the_receiver(),
                    };
                    front.last = match result {
                        Ok(reply) => {
                            format!("upstream replied {}: {}", reply.code, ack_text(&reply.ack))
                        }
                        Err(err) => format!("{}: {err}", err.reason()),
                    };
                    let age = Duration::from_millis(now_ms().saturating_sub(record.enqueued_at_ms));
                    if let Some(reason) = give_up(&retry, front.failures, age, &front.last) {
                        front.dead_letter = Some(reason);
                        continue;
                    }
                    let wait = next_wait(&retry, backoff.next_wait(), age);
                    match result {
                        Ok(reply) => {
                            tracing::warn!(route = %route, seq = record.seq, control_id = %shown_id, ack = %reply.code, retry_in_ms = wait.as_millis() as u64, outcome = "retry", "upstream refused a queued message; retrying")
                        }
                        Err(err) if err.may_have_reached_the_receiver() => {
                            tracing::warn!(route = %route, seq = record.seq, control_id = %shown_id, reason = err.reason(), error = %err, retry_in_ms = wait.as_millis() as u64, outcome = "retry", "delivery of a queued message failed after it was sent; retrying (the upstream may see it twice)")
                        }
                        Err(err) => {
                            tracing::warn!(route = %route, seq = record.seq, control_id = %shown_id, reason = err.reason(), error = %err, retry_in_ms = wait.as_millis() as u64, outcome = "retry", "delivery of a queued message failed before it was sent; retrying")
                        }
                    }
                    // Acks of earlier deliveries reach the disk before a pause, not after it.
                    if settle_at.take().is_some() {
                        self.persist_acks().await;
                    }
                    if self.pause(wait).await {
                        break;
                    }
                }
            }
        }
        let mut log = self.store.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(err) = log.close() {
            tracing::error!(route = %route, error = %err, "closing the queue failed");
        } else {
            let c = &self.counters;
            tracing::info!(
                route = %route,
                pending = log.stats().messages,
                queued = c.queued.load(Ordering::Relaxed),
                syncs = c.syncs.load(Ordering::Relaxed),
                delivered = c.delivered.load(Ordering::Relaxed),
                redeliveries = c.redeliveries.load(Ordering::Relaxed),
                dead_lettered = c.dead_lettered.load(Ordering::Relaxed),
                duplicates_answered = c.duplicates_answered.load(Ordering::Relaxed),
                "custody queue closed"
            );
        }
    }

    /// Sleeps, or returns true at once if shutdown was requested.
    async fn pause(&self, wait: Duration) -> bool {
        tokio::select! {
            _ = self.shutdown.cancelled() => true,
            _ = tokio::time::sleep(wait) => false,
        }
    }

    /// Writes every ack not yet in the cursor on disk (one fsync), so that `queue list` and a
    /// restart see the deliveries; a failure is logged and retried at the next settle or close.
    async fn persist_acks(&self) {
        let store = self.store.clone();
        let done = tokio::task::spawn_blocking(move || {
            store
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .persist_acks()
        })
        .await;
        match done {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                tracing::warn!(route = %self.route, error = %err, "cannot write the queue cursor; delivered messages may be delivered again after a crash");
            }
            Err(err) => {
                tracing::warn!(route = %self.route, error = %err, "cannot write the queue cursor; delivered messages may be delivered again after a crash");
            }
        }
    }

    async fn ack(&self, record: &Record) -> bool {
        let store = self.store.clone();
        let seq = record.seq;
        let done = tokio::task::spawn_blocking(move || {
            store.lock().unwrap_or_else(|e| e.into_inner()).ack(seq)
        })
        .await;
        match done {
            Ok(Ok(())) => true,
            Ok(Err(err)) => {
                tracing::error!(route = %self.route, seq, error = %err, "cannot advance the queue cursor");
                false
            }
            Err(err) => {
                tracing::error!(route = %self.route, seq, error = %err, "cannot advance the queue cursor");
                false
            }
        }
    }

    /// Stores the record in the dead letters (durably) and only then takes it off the queue;
    /// whether it was taken off.
    /// Moves `record` to the dead letters (their own store and limits, `queue.dead_letters`)
    /// and acknowledges it; `false` (logged) when the dead letters cannot take it: it stays
    /// first, and while they are full new messages are refused (AE) and the route is unready.
    async fn dead_letter(&self, record: &Record, reason: &str) -> bool {
        let dir = self.cfg.queue_dir.join(DEAD_LETTER_DIR);
        let limits = dead_letter_limits(&self.cfg);
        let (payload, at, note) = (
            record.payload.clone(),
            record.enqueued_at_ms,
            reason.to_string(),
        );
        let stored = tokio::task::spawn_blocking(move || -> Result<(), QueueError> {
            let (mut dead, _) = SegmentLog::open(&dir, limits)?;
            let appended = dead.append(&payload, &note, at).and_then(|_| dead.sync());
            let closed = dead.close();
            appended.and(closed)
        })
        .await
        .unwrap_or_else(|e| {
            Err(QueueError::Poisoned {
                reason: e.to_string(),
            })
        });
        let control_id = crate::wire::hl7::find_header(&record.payload)
            .map(|h| printable(h.control_id()))
            .unwrap_or_default();
        match stored {
            Ok(()) => {
                dead_letters_have_room(&self.route, &self.counters);
                self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(route = %self.route, seq = record.seq, control_id = %control_id, reason, outcome = "dead_lettered", "queued message moved to the dead letters");
                crate::ops::notify::dead_letter(&self.route, record.seq, &control_id, reason);
                self.ack(record).await
            }
            Err(err @ QueueError::Full { .. }) => {
                dead_letters_full(&self.route, &self.counters, record.seq, &control_id, &err);
                false
            }
            Err(err) => {
                tracing::error!(route = %self.route, seq = record.seq, control_id = %control_id, error = %err, "cannot store a dead letter; the message stays first and is not sent again");
                false
            }
        }
    }
}

/// MSA-3 of an ack payload, printable and short (for a dead letter's reason).
fn ack_text(ack: &[u8]) -> String {
    AckView::parse(ack)
        .map(|a| printable(a.text()))
        .unwrap_or_default()
}
