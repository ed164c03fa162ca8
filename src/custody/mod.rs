//! Custody (store-and-forward): take a message durably, answer it ourselves, deliver it later.
//!
//! Owns the promise users buy: once a positive ack has left, the message is on disk (fdatasync'd)
//! and reaches the upstream at least once, in order, across crashes. Three parts:
//!
//! - **accept** (called by the session for each message): reject what cannot be correlated
//!   (empty control id), answer a resent duplicate with the ack it already got, otherwise hand
//!   the payload to the committer and answer only after it is durable;
//! - **committer** (one thread per route): drains every pending append, writes them all, then
//!   one `sync` for the batch (group commit), writes their duplicate keys to the journal, and
//!   only then releases their acks;
//! - **drainer** (one task per route): sends the oldest record upstream, one in flight, with
//!   the relay's upstream (TLS, ack timeout, MSA-2 check); a positive reply advances the cursor,
//!   AE/AR follow `on_reply`, failures retry the same record after a jittered backoff until
//!   `retry.max_attempts` or `retry.max_age` gives it up to the dead letters.
//!
//! The ack code and whether an ack is sent at all follow HL7 (original mode AA/AE/AR; enhanced
//! mode, when MSH-15 is present, CA/CE/CR per table 0155) and the route's `ack_mode`. Must not
//! know sockets, peers or how the queue lays out its bytes.
//!
//! With `queue.backend: jetstream` the committer and drainer above are replaced by
//! [`jetstream`] (publish with PubAck; a shared consumer drains); accepting, duplicates and acks
//! stay here.
//!
//! Files: this one accepts (and answers); `duplicates` remembers the acks given (and, on the
//! embedded queue, journals them so they survive restarts); `log` holds the embedded log's
//! committer and drainer; [`jetstream`] the JetStream backend; `give_up` when both drainers stop
//! retrying a message (`retry.max_attempts`, `retry.max_age`); `full` when both say their dead
//! letters are full; `error` why a message was not queued; [`counters`] what both backends
//! count.

pub mod counters;
mod dead_letters;
mod duplicates;
mod error;
mod full;
pub(crate) mod give_up;
pub mod jetstream;
mod log;
pub mod stranded;

pub use dead_letters::DeadLetter;
pub use duplicates::SenderId;
pub use error::NotQueued;
pub use log::{dead_letter_limits, queue_limits, DEAD_LETTER_DIR};

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::{AckMode, CustodyConfig, QueueBackend};
use crate::outcome::{Answer, Failure, Fault};
use crate::queue::{QueueError, SegmentLog, Store};
use crate::upstream::Upstream;
use crate::wire::ack::{own_ack_for, ErrorCode, Says};
use crate::wire::codec::Frame;
use crate::wire::hl7::printable;
use crate::wire::hl7::{AckCode, AckView, Header};
use counters::Counters;
use duplicates::{Duplicates, Journal, MessageIdentity, Seen};
use log::{commit_loop, now_ms, AppendRequest, LogDrainer, Remembering};

/// Where a route's messages are kept.
enum Keeper {
    /// The embedded log: appends go to the committer thread; the drainer reads the store.
    Log {
        appends: mpsc::UnboundedSender<AppendRequest>,
        store: Arc<Mutex<Box<dyn Store>>>,
    },
    /// A NATS JetStream stream shared with the route's other guards.
    JetStream(Arc<jetstream::Nats>),
}

/// A route's custody: its queue, committer, duplicate memory and drainer.
pub struct Custody {
    route: Arc<str>,
    cfg: CustodyConfig,
    close_on_failure: bool,
    keeper: Keeper,
    duplicates: Arc<Mutex<Duplicates>>,
    upstream_address: String,
    pub counters: Arc<Counters>,
    /// Paused by the operator: messages are accepted and queued, the drainer sends nothing.
    pub paused: Arc<std::sync::atomic::AtomicBool>,
    /// Where the drainer delivers (the console's reconnect).
    pub upstream: Arc<Upstream>,
}

impl Custody {
    /// Opens (and recovers) the route's queue, starts its committer thread and its drainer task.
    pub fn start(
        route: Arc<str>,
        cfg: CustodyConfig,
        upstream: Arc<Upstream>,
        close_on_failure: bool,
        paused: Arc<std::sync::atomic::AtomicBool>,
        shutdown: CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
    ) -> Result<Arc<Custody>, QueueError> {
        if let QueueBackend::JetStream(js) = &cfg.backend {
            let limits = jetstream::Limits {
                max_messages: cfg.max_messages,
                dead: cfg.dead_letters,
            };
            let nats = jetstream::Nats::new(route.clone(), (**js).clone(), limits);
            let custody = Arc::new(Custody {
                route,
                close_on_failure,
                keeper: Keeper::JetStream(nats.clone()),
                duplicates: Arc::new(Mutex::new(Duplicates::default())),
                upstream_address: upstream.address(),
                counters: Arc::new(Counters::default()),
                paused: paused.clone(),
                upstream: upstream.clone(),
                cfg,
            });
            crate::ops::metrics::watch_queue(custody.clone());
            let delivery = jetstream::DrainContext {
                upstream,
                retry: custody.cfg.retry,
                on_reply: custody.cfg.on_reply,
                counters: custody.counters.clone(),
                shutdown,
                paused,
            };
            tracker.spawn(jetstream::run(nats, delivery));
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
            tracing::warn!(route = %route, torn_tail_bytes = recovery.torn_tail_bytes, "an unfinished write at the end of the queue was discarded (past the last write known durable: never acknowledged, as far as the queue can tell)");
        }
        for damage in &recovery.damaged {
            log::report_damage(&route, damage);
        }
        let store: Arc<Mutex<Box<dyn Store>>> = Arc::new(Mutex::new(Box::new(log)));
        let duplicates = Arc::new(Mutex::new(Duplicates::default()));
        let remembering = cfg.duplicate_window.map(|window| {
            let mut memory = Duplicates::default();
            let journal = match Journal::open(&cfg.queue_dir, window, &mut memory) {
                Ok(journal) => Some(journal),
                Err(err) => {
                    tracing::warn!(route = %route, error = %err, "cannot open the duplicate journal; duplicates are remembered in memory only (a resend after a restart is queued again)");
                    None
                }
            };
            *duplicates.lock().unwrap_or_else(|e| e.into_inner()) = memory;
            Remembering {
                memory: duplicates.clone(),
                window,
                journal,
            }
        });
        let wake = Arc::new(Notify::new());
        let counters = Arc::new(Counters::default());
        let (appends, requests) = mpsc::unbounded_channel();
        {
            let (store, wake, counters, route) =
                (store.clone(), wake.clone(), counters.clone(), route.clone());
            let thread_name = format!("commit-{}", &*route);
            std::thread::Builder::new()
                .name(thread_name)
                .spawn(move || commit_loop(requests, &store, &wake, &counters, &route, remembering))
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
            duplicates,
            upstream_address: upstream.address(),
            counters,
            paused: paused.clone(),
            upstream: upstream.clone(),
        });
        crate::ops::metrics::watch_queue(custody.clone());
        if upstream.reopens_at_once() {
            let (upstream, stop) = (upstream.clone(), shutdown.clone());
            tracker.spawn(async move { upstream.keep_pool_fresh(stop).await });
        }
        let drainer = LogDrainer {
            route: custody.route.clone(),
            cfg: custody.cfg.clone(),
            counters: custody.counters.clone(),
            store,
            wake,
            upstream,
            shutdown,
            paused,
        };
        tracker.spawn(drainer.run());
        Ok(custody)
    }

    /// Where the drainer delivers, for logs.
    pub fn upstream_address(&self) -> &str {
        &self.upstream_address
    }

    /// Takes custody of one message (or refuses it) and says what to answer.
    /// `message` is a batch's first message (its version and trigger shape our acks); `None`
    /// for a single message.
    pub async fn accept(
        &self,
        frame: &Frame,
        header: &Header<'_>,
        message: Option<&Header<'_>>,
        sender: SenderId<'_>,
    ) -> Answer {
        if header.control_id().is_empty() {
            tracing::warn!(route = %self.route, "message not queued: it has no control id (MSH-10), which custody needs to match acks");
            let says = Says::refused(ErrorCode::RequiredFieldMissing, "control id missing");
            return self.refuse(header, message, true, says.at(1, Some(10)));
        }
        let identity = MessageIdentity::of(header, sender, frame.payload());
        let key = identity.key();
        if let Some(window) = self.cfg.duplicate_window {
            let duplicates = self.duplicates.lock().unwrap_or_else(|e| e.into_inner());
            // The same ids with another body: a new message (a sender whose counter wrapped or
            // restarted), taken like any other; worth a warning, never a silent loss.
            if let Some(earlier) = duplicates.reused(&identity, window) {
                crate::ops::metrics::control_id_reused(&self.route);
                tracing::warn!(
                    route = %self.route,
                    control_id = %printable(header.control_id()),
                    earlier_sha256 = %duplicates::hex(&earlier),
                    sha256 = %duplicates::hex(identity.digest()),
                    "control id reused with another body within duplicate_window: taken as a new message"
                );
            }
            drop(duplicates);
        }
        // A resend answered before gets the same answer; one being committed right now (sent
        // again on another connection) waits for that commit, and is then answered like it.
        let mut _reserved = None;
        if let Some(window) = self.cfg.duplicate_window {
            loop {
                let (seen, reserved) = duplicates::check_and_reserve(&self.duplicates, key, window);
                match seen {
                    Seen::Answered(ack) => return self.answer_duplicate(header, ack),
                    Seen::InFlight(notify) => {
                        let notified = notify.notified();
                        tokio::pin!(notified);
                        // Registered before looking again: a wake-up in between is not lost.
                        notified.as_mut().enable();
                        if !matches!(
                            duplicates::check_and_reserve(&self.duplicates, key, window).0,
                            Seen::InFlight(_)
                        ) {
                            continue;
                        }
                        notified.await;
                    }
                    Seen::New => {
                        _reserved = reserved;
                        break;
                    }
                }
            }
        }
        if self.counters.dead_letters_full.load(Ordering::Relaxed) {
            tracing::warn!(route = %self.route, control_id = %printable(header.control_id()), "message not queued: the dead letters are full (queue.dead_letters); replay or purge them");
            return self.refuse(header, message, false, Says::not_now("dead letters full"));
        }
        let (ack, code) = own_ack_for(Some(header), message, Says::ACCEPTED);
        let result = match &self.keeper {
            Keeper::Log { appends, .. } => {
                let (done, stored) = oneshot::channel();
                let request = AppendRequest {
                    payload: frame.payload_bytes(),
                    enqueued_at_ms: now_ms(),
                    // The committer remembers (and journals) it before this ack may leave.
                    remember: self.cfg.duplicate_window.map(|_| (key, ack.clone())),
                    done,
                };
                match appends.send(request) {
                    Ok(()) => stored.await.unwrap_or(Err(NotQueued::CommitterStopped)),
                    Err(_) => Err(NotQueued::CommitterStopped),
                }
            }
            Keeper::JetStream(nats) => {
                let id = jetstream::message_id(header, sender, frame.payload());
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
            return self.refuse(header, message, false, Says::not_now(err.ack_text()));
        }
        self.counters.queued.fetch_add(1, Ordering::Relaxed);
        if let Some(window) = self.cfg.duplicate_window {
            let mut duplicates = self.duplicates.lock().unwrap_or_else(|e| e.into_inner());
            duplicates.taken(&identity, window);
            // The embedded queue's committer remembered (and journalled) it before this ack.
            if let Keeper::JetStream(_) = &self.keeper {
                duplicates.remember(key, ack.clone(), window);
            }
        }
        if sends_ack(self.cfg.ack_mode, header.accept_ack_type(), code) {
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

    /// The answer to a resend within `duplicate_window`: the ack the first one got, or none
    /// where `ack_mode` sent none.
    fn answer_duplicate(&self, header: &Header<'_>, ack: bytes::Bytes) -> Answer {
        self.counters
            .duplicates_answered
            .fetch_add(1, Ordering::Relaxed);
        let code = AckView::parse(&ack)
            .map(|a| a.code())
            .unwrap_or(AckCode::AA);
        if !sends_ack(self.cfg.ack_mode, header.accept_ack_type(), code) {
            return Answer::Silent {
                code,
                outcome: "duplicate_answered",
                committed: code.is_positive(),
            };
        }
        Answer::Ack {
            ack,
            code,
            outcome: "duplicate_answered",
            committed: code.is_positive(),
            problem: None,
        }
    }

    /// A negative answer built here: AR (permanent: the message itself is unacceptable) or AE
    /// (the guard could not take it now); CR/CE in enhanced mode ([`own_ack`] picks them).
    fn refuse(
        &self,
        header: &Header<'_>,
        message: Option<&Header<'_>>,
        permanent: bool,
        says: Says<'_>,
    ) -> Answer {
        let outcome = if permanent { "rejected" } else { "not_queued" };
        let (ack, code) = own_ack_for(Some(header), message, says);
        if sends_ack(self.cfg.ack_mode, header.accept_ack_type(), code) {
            Answer::Ack {
                ack,
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

/// The console's view of the dead letters ([`dead_letters`] does the work).
impl Custody {
    /// Up to `limit` dead letters, oldest first, metadata only.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, String> {
        match &self.keeper {
            Keeper::JetStream(nats) => {
                let (js, cfg) = nats
                    .context()
                    .ok_or("JetStream is not connected yet; try again")?;
                let records = jetstream::records(&js, &cfg.stream, jetstream::Part::Dead, limit)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(records.iter().map(DeadLetter::of).collect())
            }
            Keeper::Log { .. } => {
                dead_letters::list_embedded(self.cfg.queue_dir.join(DEAD_LETTER_DIR), limit).await
            }
        }
    }

    /// How many dead letters the route holds now.
    pub fn dead_letter_count(&self) -> u64 {
        match &self.keeper {
            Keeper::JetStream(nats) => nats.stats().1,
            Keeper::Log { .. } => {
                dead_letters::count_embedded(&self.cfg.queue_dir.join(DEAD_LETTER_DIR))
            }
        }
    }

    /// Moves every dead letter back to the end of the route's queue, in order, while the guard
    /// runs; how many. Each is durably queued before the dead letters are removed.
    pub async fn replay_dead_letters(&self) -> Result<u64, String> {
        let replayed = match &self.keeper {
            Keeper::JetStream(nats) => {
                let (js, cfg) = nats
                    .context()
                    .ok_or("JetStream is not connected yet; try again")?;
                jetstream::replay(&js, &cfg.stream, cfg.publish_timeout)
                    .await
                    .map_err(|e| e.to_string())?
            }
            Keeper::Log { appends, .. } => {
                let dir = self.cfg.queue_dir.join(DEAD_LETTER_DIR);
                let limits = dead_letter_limits(&self.cfg);
                dead_letters::replay_embedded(dir, limits, appends).await?
            }
        };
        self.counters.queued.fetch_add(replayed, Ordering::Relaxed);
        full::dead_letters_have_room(&self.route, &self.counters);
        Ok(replayed)
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

    fn backed_up(&self) -> Option<String> {
        if self.counters.dead_letters_full.load(Ordering::Relaxed) {
            return Some(format!(
                "its dead letters are full (queue.dead_letters: {} messages, {} bytes); new messages are refused until they are replayed or purged",
                self.cfg.dead_letters.max_messages, self.cfg.dead_letters.max_bytes
            ));
        }
        let when = self.cfg.unready_when?;
        let (stats, _) = self.probe();
        if let Some(limit) = when.pending.filter(|&n| stats.messages >= n) {
            return Some(format!(
                "{} messages pending (queue.unready_when.pending {limit})",
                stats.messages
            ));
        }
        let oldest = stats
            .oldest_enqueued_ms
            .map(|at| std::time::Duration::from_millis(now_ms().saturating_sub(at)))?;
        let limit = when.oldest.filter(|&d| oldest >= d)?;
        Some(format!(
            "the oldest message has waited {}s (queue.unready_when.oldest {})",
            oldest.as_secs(),
            humantime::format_duration(limit)
        ))
    }
}

/// Whether an ack with `code` goes out: `ack_mode` (`ae-only`: AE/CE only, `ar-only`: AR/CR
/// only), and in `msh15` mode HL7 table 0155 (AL always, NE never, ER only errors, SU only
/// successes; an empty MSH-15 is original mode: always).
pub fn sends_ack(mode: AckMode, msh15: &[u8], code: AckCode) -> bool {
    let positive = code.is_positive();
    match mode {
        AckMode::Always => true,
        AckMode::Never => false,
        AckMode::ErrorsOnly => !positive,
        AckMode::AeOnly => matches!(code, AckCode::AE | AckCode::CE),
        AckMode::ArOnly => matches!(code, AckCode::AR | AckCode::CR),
        AckMode::Msh15 => match msh15 {
            b"NE" => false,
            b"ER" => !positive,
            b"SU" => positive,
            _ => true, // AL, empty (original mode), or an unknown value: answer.
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use AckCode::{AA, AE, AR, CA, CE, CR};

    #[test]
    fn msh15_mode_follows_hl7_table_0155() {
        let m = AckMode::Msh15;
        assert!(sends_ack(m, b"AL", CA) && sends_ack(m, b"AL", CE));
        assert!(!sends_ack(m, b"NE", CA) && !sends_ack(m, b"NE", CR));
        assert!(!sends_ack(m, b"ER", CA) && sends_ack(m, b"ER", CE));
        assert!(sends_ack(m, b"SU", CA) && !sends_ack(m, b"SU", CR));
        assert!(sends_ack(m, b"", AA) && sends_ack(m, b"", AE));
    }

    #[test]
    fn other_ack_modes_ignore_msh15() {
        for msh15 in [&b"AL"[..], b"NE", b"ER", b"SU", b""] {
            let sent = |mode| [AA, AE, AR, CA, CE, CR].map(|code| sends_ack(mode, msh15, code));
            assert_eq!(sent(AckMode::Always), [true; 6]);
            assert_eq!(sent(AckMode::Never), [false; 6]);
            assert_eq!(
                sent(AckMode::ErrorsOnly),
                [false, true, true, false, true, true]
            );
            assert_eq!(
                sent(AckMode::AeOnly),
                [false, true, false, false, true, false]
            );
            assert_eq!(
                sent(AckMode::ArOnly),
                [false, false, true, false, false, true]
            );
        }
    }
}
