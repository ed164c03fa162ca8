//! Custody (store-and-forward): take a message durably, answer it ourselves, deliver it later.
//!
//! Owns the promise users buy: once a positive ack has left, the message is on disk (fdatasync'd)
//! and reaches the upstream at least once, in order, across crashes. Three parts:
//!
//! - **accept** (called by the session for each message): reject what cannot be correlated
//!   (empty control id), answer a resent duplicate with the ack it already got, otherwise hand
//!   the payload to the committer and answer only after it is durable;
//! - **committer** (one thread per route): drains every pending append, writes them all, then
//!   one `sync` for the batch (group commit), and only then releases their acks;
//! - **drainer** (one task per route): sends the oldest record upstream, one in flight, with
//!   the relay's upstream (TLS, ack timeout, MSA-2 check); a positive reply advances the cursor,
//!   AE/AR follow `on_reply`, failures retry the same record after a jittered backoff.
//!
//! The ack code and whether an ack is sent at all follow HL7 (original mode AA/AE/AR; enhanced
//! mode, when MSH-15 is present, CA/CE/CR per table 0155) and the route's `ack_mode`. Must not
//! know sockets, peers or how the queue lays out its bytes.
//!
//! With `queue.backend: jetstream` the committer and drainer above are replaced by
//! [`crate::custody::jetstream`] (publish with PubAck; a shared consumer drains); accepting, duplicates
//! and acks stay here.

pub mod counters;
pub mod jetstream;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::{AckMode, CustodyConfig, QueueBackend, ReplyAction};
use crate::outcome::{Answer, Failure, Fault, Side};
use crate::queue::{Limits, QueueError, Record, SegmentLog, Store};
use crate::timing::backoff::Backoff;
use crate::upstream::Upstream;
use crate::wire::ack::own_ack;
use crate::wire::codec::Frame;
use crate::wire::hl7::printable;
use crate::wire::hl7::{AckCode, AckView, Header};
use counters::Counters;
use jetstream::JetStreamError;

/// The directory under a route's queue directory that holds its dead letters.
pub const DEAD_LETTER_DIR: &str = "dead-letter";
/// At most this many appends are written before one sync (bounds a batch's latency).
const MAX_BATCH: usize = 1024;
/// Remembered acks for duplicate detection, at most (oldest forgotten first).
const MAX_REMEMBERED: usize = 100_000;

/// Why a message was not taken into custody. The text follows "message not queued: " in the
/// sender's negative ack and the log line.
#[derive(Debug, thiserror::Error)]
pub enum NotQueued {
    /// The committer thread is gone (the guard is stopping, or it panicked).
    #[error("the queue committer stopped")]
    CommitterStopped,
    /// The embedded log refused the append (full, too large, poisoned).
    #[error("{0}")]
    Refused(QueueError),
    /// The batch's fsync failed: nothing of it is acknowledged.
    #[error("the queue could not be made durable: {0}")]
    NotDurable(Arc<QueueError>),
    /// JetStream did not confirm the publish.
    #[error("{0}")]
    JetStream(#[from] JetStreamError),
}

impl Fault for NotQueued {
    fn side(&self) -> Side {
        match self {
            NotQueued::CommitterStopped => Side::Internal,
            NotQueued::JetStream(err) => err.side(),
            NotQueued::Refused(_) | NotQueued::NotDurable(_) => Side::Queue,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            NotQueued::CommitterStopped => "committer_stopped",
            NotQueued::Refused(QueueError::Full { .. }) => "queue_full",
            NotQueued::Refused(QueueError::TooLarge { .. }) => "too_large",
            NotQueued::Refused(_) => "queue_error",
            NotQueued::NotDurable(_) => "not_durable",
            NotQueued::JetStream(err) => err.reason(),
        }
    }

    /// A full queue drains, a failed fsync may pass; a record that can never fit will not, and
    /// a stopped committer does not come back in this process.
    fn retry_helps(&self) -> bool {
        match self {
            NotQueued::CommitterStopped => false,
            NotQueued::Refused(QueueError::TooLarge { .. }) => false,
            NotQueued::Refused(_) | NotQueued::NotDurable(_) => true,
            NotQueued::JetStream(err) => err.retry_helps(),
        }
    }

    /// AE (CE in enhanced mode): the guard could not take the message now.
    fn ack(&self) -> AckCode {
        AckCode::AE
    }
}

struct AppendRequest {
    payload: Bytes,
    enqueued_at_ms: u64,
    done: oneshot::Sender<Result<u64, NotQueued>>,
}

/// Where a route's messages are kept.
enum Keeper {
    /// The embedded log: appends go to the committer thread; the drainer reads the store.
    Log {
        appends: mpsc::UnboundedSender<AppendRequest>,
        store: Arc<Mutex<Box<dyn Store>>>,
    },
    /// A NATS JetStream stream shared with the route's other guards.
    JetStream(Arc<crate::custody::jetstream::Nats>),
}

/// A route's custody: its queue, committer, duplicate memory and drainer.
pub struct Custody {
    route: Arc<str>,
    cfg: CustodyConfig,
    close_on_failure: bool,
    keeper: Keeper,
    duplicates: Mutex<Duplicates>,
    upstream_address: String,
    pub counters: Arc<Counters>,
}

impl Custody {
    /// Opens (and recovers) the route's queue, starts its committer thread and its drainer task.
    pub fn start(
        route: Arc<str>,
        cfg: CustodyConfig,
        upstream: Arc<Upstream>,
        close_on_failure: bool,
        shutdown: CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
    ) -> Result<Arc<Custody>, QueueError> {
        if let QueueBackend::JetStream(js) = &cfg.backend {
            let nats = crate::custody::jetstream::Nats::new(
                route.clone(),
                (**js).clone(),
                cfg.max_messages,
            );
            let custody = Arc::new(Custody {
                route,
                close_on_failure,
                keeper: Keeper::JetStream(nats.clone()),
                duplicates: Mutex::new(Duplicates::default()),
                upstream_address: upstream.address(),
                counters: Arc::new(Counters::default()),
                cfg,
            });
            crate::ops::metrics::watch_queue(custody.clone());
            let delivery = crate::custody::jetstream::DrainContext {
                upstream,
                retry: custody.cfg.retry,
                on_reply: custody.cfg.on_reply,
                counters: custody.counters.clone(),
                shutdown,
            };
            tracker.spawn(crate::custody::jetstream::run(nats, delivery));
            return Ok(custody);
        }
        let (log, recovery) = SegmentLog::open(&cfg.queue_dir, queue_limits(&cfg))?;
        let stats = log.stats();
        tracing::info!(
            route = %route,
            queue = %cfg.queue_dir.display(),
            pending = stats.messages,
            pending_bytes = stats.bytes,
            recovered_records = recovery.records,
            torn_tail_bytes = recovery.torn_tail_bytes,
            "custody queue open"
        );
        if recovery.torn_tail_bytes > 0 {
            tracing::warn!(route = %route, torn_tail_bytes = recovery.torn_tail_bytes, "an unfinished write at the end of the queue was discarded (it was never acked)");
        }
        let store: Arc<Mutex<Box<dyn Store>>> = Arc::new(Mutex::new(Box::new(log)));
        let wake = Arc::new(Notify::new());
        let counters = Arc::new(Counters::default());
        let (appends, requests) = mpsc::unbounded_channel();
        {
            let (store, wake, counters, route) =
                (store.clone(), wake.clone(), counters.clone(), route.clone());
            let thread_name = format!("commit-{}", &*route);
            std::thread::Builder::new()
                .name(thread_name)
                .spawn(move || commit_loop(requests, &store, &wake, &counters, &route))
                .map_err(|source| QueueError::Io {
                    path: cfg.queue_dir.clone(),
                    source,
                })?;
        }
        let custody = Arc::new(Custody {
            route,
            cfg,
            close_on_failure,
            keeper: Keeper::Log {
                appends,
                store: store.clone(),
            },
            duplicates: Mutex::new(Duplicates::default()),
            upstream_address: upstream.address(),
            counters,
        });
        crate::ops::metrics::watch_queue(custody.clone());
        if upstream.reopens_at_once() {
            let (upstream, stop) = (upstream.clone(), shutdown.clone());
            tracker.spawn(async move { upstream.keep_pool_fresh(stop).await });
        }
        let drainer = LogDrainer {
            custody: custody.clone(),
            store,
            wake,
            upstream,
            shutdown,
        };
        tracker.spawn(drainer.run());
        Ok(custody)
    }

    /// Where the drainer delivers, for logs.
    pub fn upstream_address(&self) -> &str {
        &self.upstream_address
    }

    /// Takes custody of one message (or refuses it) and says what to answer.
    pub async fn accept(&self, frame: &Frame, header: &Header<'_>) -> Answer {
        let enhanced = !header.accept_ack_type().is_empty();
        if header.control_id().is_empty() {
            return self.refuse(header, enhanced, true, "message has no control id (MSH-10); custody needs it to match acks, so it is not queued");
        }
        let key = DuplicateKey::of(header);
        if let Some(window) = self.cfg.duplicate_window {
            if let Some(ack) = self
                .duplicates
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .find(&key, window)
            {
                self.counters
                    .duplicates_answered
                    .fetch_add(1, Ordering::Relaxed);
                let code = AckView::parse(&ack)
                    .map(|a| a.code())
                    .unwrap_or(AckCode::AA);
                return Answer::Ack {
                    ack,
                    code,
                    outcome: "duplicate_answered",
                    committed: code.is_positive(),
                    problem: None,
                };
            }
        }
        let result = match &self.keeper {
            Keeper::Log { appends, .. } => {
                let (done, stored) = oneshot::channel();
                let request = AppendRequest {
                    payload: frame.payload_bytes(),
                    enqueued_at_ms: now_ms(),
                    done,
                };
                match appends.send(request) {
                    Ok(()) => stored.await.unwrap_or(Err(NotQueued::CommitterStopped)),
                    Err(_) => Err(NotQueued::CommitterStopped),
                }
            }
            Keeper::JetStream(nats) => {
                let id = crate::custody::jetstream::message_id(header);
                match nats.publish(frame.payload_bytes(), &id, now_ms()).await {
                    Ok(duplicate) => {
                        if duplicate {
                            self.counters
                                .duplicates_answered
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(0)
                    }
                    Err(err) => Err(NotQueued::JetStream(err)),
                }
            }
        };
        if let Err(err) = result {
            tracing::warn!(route = %self.route, control_id = %printable(header.control_id()), error = %err, "message not queued");
            if self.close_on_failure {
                return Answer::Close(Failure {
                    reason: "queue",
                    ..err.failure()
                });
            }
            return self.refuse(
                header,
                enhanced,
                false,
                &format!("message not queued: {err}"),
            );
        }
        self.counters.queued.fetch_add(1, Ordering::Relaxed);
        let code = if enhanced { AckCode::CA } else { AckCode::AA };
        let ack = own_ack(Some(header), code, "");
        if let Some(window) = self.cfg.duplicate_window {
            self.duplicates
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remember(key, ack.clone(), window);
        }
        if sends_ack(self.cfg.ack_mode, header.accept_ack_type(), true) {
            Answer::Ack {
                ack,
                code,
                outcome: "queued",
                committed: true,
                problem: None,
            }
        } else {
            Answer::Silent {
                code,
                outcome: "queued",
                committed: true,
            }
        }
    }

    /// A negative answer built here: AR (permanent: the message itself is unacceptable) or AE
    /// (the guard could not take it now); CR/CE in enhanced mode.
    fn refuse(&self, header: &Header<'_>, enhanced: bool, permanent: bool, text: &str) -> Answer {
        let code = match (enhanced, permanent) {
            (false, true) => AckCode::AR,
            (false, false) => AckCode::AE,
            (true, true) => AckCode::CR,
            (true, false) => AckCode::CE,
        };
        let outcome = if permanent { "rejected" } else { "not_queued" };
        if sends_ack(self.cfg.ack_mode, header.accept_ack_type(), false) {
            Answer::Ack {
                ack: own_ack(Some(header), code, text),
                code,
                outcome,
                committed: false,
                problem: None,
            }
        } else {
            Answer::Silent {
                code,
                outcome,
                committed: false,
            }
        }
    }
}

impl crate::ops::metrics::QueueProbe for Custody {
    fn route(&self) -> &str {
        &self.route
    }

    fn probe(&self) -> (crate::queue::QueueStats, u64) {
        match &self.keeper {
            Keeper::Log { store, .. } => {
                let stats = store.lock().unwrap_or_else(|e| e.into_inner()).stats();
                (stats, self.counters.dead_lettered.load(Ordering::Relaxed))
            }
            Keeper::JetStream(nats) => nats.stats(),
        }
    }

    fn writable(&self) -> bool {
        match &self.keeper {
            Keeper::Log { .. } => !self.counters.sync_failing.load(Ordering::Relaxed),
            Keeper::JetStream(nats) => nats.writable(),
        }
    }
}

/// Whether an ack goes out: `ack_mode`, and in `msh15` mode HL7 table 0155 (AL always, NE never,
/// ER only errors, SU only successes; an empty MSH-15 is original mode: always).
pub fn sends_ack(mode: AckMode, msh15: &[u8], positive: bool) -> bool {
    match mode {
        AckMode::Always => true,
        AckMode::Never => false,
        AckMode::ErrorsOnly => !positive,
        AckMode::Msh15 => match msh15 {
            b"NE" => false,
            b"ER" => !positive,
            b"SU" => positive,
            _ => true, // AL, empty (original mode), or an unknown value: answer.
        },
    }
}

/// The queue limits a route's custody config sets (shared with `mllp-guard queue ...`).
pub fn queue_limits(cfg: &CustodyConfig) -> Limits {
    Limits {
        max_bytes: cfg.max_bytes,
        max_messages: cfg.max_messages,
        segment_bytes: cfg.segment_bytes,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Group commit: every append waiting is written, then one sync makes the whole batch durable;
/// only then does any of them learn it is stored. A failed sync fails the whole batch.
fn commit_loop(
    mut requests: mpsc::UnboundedReceiver<AppendRequest>,
    store: &Mutex<Box<dyn Store>>,
    wake: &Notify,
    counters: &Counters,
    route: &str,
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
        for (request, result) in batch.drain(..).zip(results) {
            let _ = request.done.send(result);
        }
        wake.notify_one();
    }
}

/// Which message a resend is: MSH-3, MSH-4, MSH-10.
#[derive(Clone, PartialEq, Eq, Hash)]
struct DuplicateKey(Vec<u8>);

impl DuplicateKey {
    fn of(header: &Header<'_>) -> DuplicateKey {
        let mut key = Vec::with_capacity(64);
        for part in [
            header.sending_application(),
            header.sending_facility(),
            header.control_id(),
        ] {
            key.extend_from_slice(&(part.len() as u32).to_le_bytes());
            key.extend_from_slice(part);
        }
        DuplicateKey(key)
    }
}

/// Positive acks recently sent, by message, so a resend gets the same ack and is not queued
/// twice. Bounded in time (the window) and size.
#[derive(Default)]
struct Duplicates {
    acks: HashMap<DuplicateKey, (Instant, Bytes)>,
    order: VecDeque<(Instant, DuplicateKey)>,
}

impl Duplicates {
    fn find(&mut self, key: &DuplicateKey, window: Duration) -> Option<Bytes> {
        self.expire(window);
        self.acks.get(key).map(|(_, ack)| ack.clone())
    }

    fn remember(&mut self, key: DuplicateKey, ack: Bytes, window: Duration) {
        self.expire(window);
        let now = Instant::now();
        if self.acks.insert(key.clone(), (now, ack)).is_none() {
            self.order.push_back((now, key));
        }
        while self.order.len() > MAX_REMEMBERED {
            if let Some((_, old)) = self.order.pop_front() {
                self.acks.remove(&old);
            }
        }
    }

    fn expire(&mut self, window: Duration) {
        while let Some((at, _)) = self.order.front() {
            if at.elapsed() < window {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                self.acks.remove(&key);
            }
        }
    }
}

/// Delivers a route's queue to its upstream, in order, one message in flight.
struct LogDrainer {
    custody: Arc<Custody>,
    store: Arc<Mutex<Box<dyn Store>>>,
    wake: Arc<Notify>,
    upstream: Arc<Upstream>,
    shutdown: CancellationToken,
}

enum Next {
    Record(Record),
    Empty,
    Failed(String),
}

impl LogDrainer {
    async fn run(self) {
        let custody = &self.custody;
        let route = &custody.route;
        let mut backoff = Backoff::new(custody.cfg.retry.initial, custody.cfg.retry.max);
        let mut conn = None;
        let mut attempts_of_front = 0u32;
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            let next = {
                let store = self.store.clone();
                tokio::task::spawn_blocking(move || {
                    match store.lock().unwrap_or_else(|e| e.into_inner()).front() {
                        Ok(Some(record)) => Next::Record(record),
                        Ok(None) => Next::Empty,
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
                    tokio::select! {
                        _ = self.shutdown.cancelled() => break,
                        _ = self.wake.notified() => continue,
                        _ = reopen => {
                            self.upstream.reopen_idle(&mut conn).await;
                            continue;
                        }
                        // A bounded nap: a missed wake-up can never strand a record.
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
                Next::Failed(err) => {
                    tracing::error!(route = %route, error = %err, "cannot read the queue; retrying");
                    if self.pause(backoff.next_wait()).await {
                        break;
                    }
                    continue;
                }
            };
            let Some(frame) = Frame::from_payload(&record.payload) else {
                // Never happens for payloads that came from the decoder; refuse to send garbage.
                self.dead_letter(&record, "stored payload is not a valid MLLP payload")
                    .await;
                continue;
            };
            let header = Header::parse(&record.payload);
            let control_id = header
                .as_ref()
                .map(|h| h.control_id().to_vec())
                .unwrap_or_default();
            let shown_id = printable(&control_id);
            if attempts_of_front > 0 {
                custody
                    .counters
                    .redeliveries
                    .fetch_add(1, Ordering::Relaxed);
            }
            attempts_of_front += 1;
            let result = self
                .upstream
                .exchange(&mut conn, &frame, &control_id, Default::default())
                .await;
            let action = match &result {
                Ok(reply) if reply.code.is_positive() => ReplyAction::Accept,
                Ok(reply) if matches!(reply.code, AckCode::AE | AckCode::CE) => {
                    custody.cfg.on_reply.ae
                }
                Ok(_) => custody.cfg.on_reply.ar,
                Err(_) => ReplyAction::Retry,
            };
            match (action, &result) {
                (ReplyAction::Accept, Ok(reply)) => {
                    if self.ack(&record).await {
                        custody.counters.delivered.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(route = %route, seq = record.seq, control_id = %shown_id, ack = %reply.code, attempts = attempts_of_front, outcome = "delivered", "queued message delivered");
                        attempts_of_front = 0;
                        backoff.reset();
                    }
                }
                (ReplyAction::DeadLetter, Ok(reply)) => {
                    let text = ack_text(&reply.ack);
                    let reason = format!("upstream replied {}: {}", reply.code, text);
                    tracing::warn!(route = %route, seq = record.seq, control_id = %shown_id, ack = %reply.code, outcome = "dead_lettered", "queued message moved to the dead letters");
                    self.dead_letter(&record, &reason).await;
                    attempts_of_front = 0;
                    backoff.reset();
                }
                (_, Ok(reply)) => {
                    let wait = backoff.next_wait();
                    tracing::warn!(route = %route, seq = record.seq, control_id = %shown_id, ack = %reply.code, retry_in_ms = wait.as_millis() as u64, outcome = "retry", "upstream refused a queued message; retrying");
                    if self.pause(wait).await {
                        break;
                    }
                }
                (_, Err(err)) => {
                    let wait = backoff.next_wait();
                    tracing::warn!(route = %route, seq = record.seq, control_id = %shown_id, reason = err.reason(), error = %err, retry_in_ms = wait.as_millis() as u64, outcome = "retry", "delivery of a queued message failed; retrying (the upstream may see it twice)");
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
            let c = &custody.counters;
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
                tracing::error!(route = %self.custody.route, seq, error = %err, "cannot advance the queue cursor");
                false
            }
            Err(err) => {
                tracing::error!(route = %self.custody.route, seq, error = %err, "cannot advance the queue cursor");
                false
            }
        }
    }

    /// Stores the record in the dead letters (durably) and only then takes it off the queue.
    async fn dead_letter(&self, record: &Record, reason: &str) {
        let dir = self.custody.cfg.queue_dir.join(DEAD_LETTER_DIR);
        let limits = queue_limits(&self.custody.cfg);
        let (payload, at, reason) = (
            record.payload.clone(),
            record.enqueued_at_ms,
            reason.to_string(),
        );
        let stored = tokio::task::spawn_blocking(move || -> Result<(), QueueError> {
            let (mut dead, _) = SegmentLog::open(&dir, limits)?;
            dead.append(&payload, &reason, at)?;
            dead.sync()?;
            dead.close()
        })
        .await;
        match stored {
            Ok(Ok(())) => {
                self.custody
                    .counters
                    .dead_lettered
                    .fetch_add(1, Ordering::Relaxed);
                self.ack(record).await;
            }
            Ok(Err(err)) => {
                tracing::error!(route = %self.custody.route, seq = record.seq, error = %err, "cannot store a dead letter; the message stays queued");
                let _ = self.pause(Duration::from_secs(1)).await;
            }
            Err(err) => {
                tracing::error!(route = %self.custody.route, seq = record.seq, error = %err, "cannot store a dead letter; the message stays queued");
                let _ = self.pause(Duration::from_secs(1)).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msh15_mode_follows_hl7_table_0155() {
        let m = AckMode::Msh15;
        assert!(sends_ack(m, b"AL", true) && sends_ack(m, b"AL", false));
        assert!(!sends_ack(m, b"NE", true) && !sends_ack(m, b"NE", false));
        assert!(!sends_ack(m, b"ER", true) && sends_ack(m, b"ER", false));
        assert!(sends_ack(m, b"SU", true) && !sends_ack(m, b"SU", false));
        assert!(sends_ack(m, b"", true) && sends_ack(m, b"", false));
    }

    #[test]
    fn other_ack_modes_ignore_msh15() {
        for msh15 in [&b"AL"[..], b"NE", b"ER", b"SU", b""] {
            assert!(
                sends_ack(AckMode::Always, msh15, true) && sends_ack(AckMode::Always, msh15, false)
            );
            assert!(
                !sends_ack(AckMode::Never, msh15, true) && !sends_ack(AckMode::Never, msh15, false)
            );
            assert!(
                !sends_ack(AckMode::ErrorsOnly, msh15, true)
                    && sends_ack(AckMode::ErrorsOnly, msh15, false)
            );
        }
    }

    #[test]
    fn duplicates_are_found_within_the_window_and_forgotten_after() {
        let mut d = Duplicates::default();
        let key = DuplicateKey(b"k".to_vec());
        d.remember(
            key.clone(),
            Bytes::from_static(b"ack"),
            Duration::from_secs(60),
        );
        assert_eq!(
            d.find(&key, Duration::from_secs(60)),
            Some(Bytes::from_static(b"ack"))
        );
        assert_eq!(d.find(&key, Duration::ZERO), None);
        assert!(d.acks.is_empty() && d.order.is_empty());
    }

    #[test]
    fn duplicate_keys_do_not_collide_across_field_boundaries() {
        let a = Header::parse(b"MSH|^~\\&|AB|C|R|F|2024||ADT^A01|X|P|2.5\r").unwrap();
        let b = Header::parse(b"MSH|^~\\&|A|BC|R|F|2024||ADT^A01|X|P|2.5\r").unwrap();
        assert!(DuplicateKey::of(&a) != DuplicateKey::of(&b));
    }
}
