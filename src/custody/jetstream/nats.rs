//! A route's JetStream custody in a running guard: the connection once it is ready, publishing
//! for custody's `accept` (waiting, bounded, while the guard starts), the depth last read for
//! metrics, and noticing that full dead letters have room again. Must not know senders or how
//! the drainer delivers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use async_nats::jetstream;
use async_nats::HeaderMap;
use bytes::Bytes;

use super::error::JetStreamError;
use super::inspect::Depth;
use super::loss::{check, Route, Watch};
use super::stream::{publish_confirmed, queue_subject, Limits, HEADER_ENQUEUED};
use crate::config::JetStreamQueue;
use crate::custody::counters::Counters;
use crate::custody::full::dead_letters_have_room;
use crate::queue::QueueStats;

pub(super) struct Ready {
    pub(super) client: async_nats::Client,
    pub(super) js: jetstream::Context,
}

/// A route's JetStream custody in a running guard: publishes for custody's `accept`, and (in
/// [`run`](super::run)) the connection, the stream, the shared consumer and this guard's drainer.
pub struct Nats {
    pub(super) route: Arc<str>,
    pub(super) cfg: JetStreamQueue,
    pub(super) limits: Limits,
    pub(super) ready: OnceLock<Ready>,
    /// Woken when `ready` is set.
    pub(super) became_ready: tokio::sync::Notify,
    /// Depth and dead letters as last read (for metrics); refreshed every few seconds.
    pub(super) stats: Mutex<(QueueStats, u64)>,
    pub(super) connected: AtomicBool,
    /// What this guard knows of its stream, to notice when it is lost.
    pub(super) watch: Watch,
    /// While the dead letters are full: their count and bytes when last found so (read right
    /// after a refused dead letter), to notice when someone made room (fewer of either).
    full_at: Mutex<Option<(u64, u64)>>,
}

impl Nats {
    pub fn new(route: Arc<str>, cfg: JetStreamQueue, limits: Limits) -> Arc<Nats> {
        Arc::new(Nats {
            route,
            cfg,
            limits,
            ready: OnceLock::new(),
            became_ready: tokio::sync::Notify::new(),
            stats: Mutex::new((QueueStats::default(), 0)),
            connected: AtomicBool::new(false),
            watch: Watch::default(),
            full_at: Mutex::new(None),
        })
    }

    /// The JetStream context once connected (for the console's dead letters), and the stream.
    pub fn context(&self) -> Option<(jetstream::Context, &JetStreamQueue)> {
        self.ready.get().map(|r| (r.js.clone(), &self.cfg))
    }

    /// Stores one message: `Ok(duplicate)` once JetStream confirmed it (`duplicate`: the stream
    /// already had this message id within its window), `Err(reason)` when it is not stored.
    pub async fn publish(
        &self,
        payload: Bytes,
        message_id: &str,
        enqueued_at_ms: u64,
    ) -> Result<bool, JetStreamError> {
        let ready = match self.ready.get() {
            Some(ready) => ready,
            // Starting up: wait (bounded) for the connection and the stream.
            None => {
                let woken = self.became_ready.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                match self.ready.get() {
                    Some(ready) => ready,
                    None => {
                        let _ = tokio::time::timeout(self.cfg.publish_timeout, woken).await;
                        self.ready.get().ok_or(JetStreamError::NotReady)?
                    }
                }
            }
        };
        if ready.client.connection_state() != async_nats::connection::State::Connected {
            return Err(JetStreamError::Down);
        }
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, message_id);
        headers.insert(HEADER_ENQUEUED, enqueued_at_ms.to_string().as_str());
        let publish = || {
            publish_confirmed(
                &ready.js,
                queue_subject(&self.cfg.stream),
                headers.clone(),
                payload.clone(),
                self.cfg.publish_timeout,
            )
        };
        let ack = match publish().await {
            // The stream is gone (a NATS server restarted on an empty store): notice it, make
            // it again, and store this message in the new one.
            Err(JetStreamError::NoStream) => {
                let _ =
                    tokio::time::timeout(self.cfg.publish_timeout, self.check_stream(&ready.js))
                        .await;
                publish().await?
            }
            other => other?,
        };
        if !self.watch.stored(ack.sequence, ack.duplicate) {
            self.watch.check_now.notify_one();
        }
        Ok(ack.duplicate)
    }

    /// Notices a lost stream or consumer and makes them again (`loss.rs`).
    pub(super) async fn check_stream(&self, js: &jetstream::Context) {
        let route = Route {
            name: &self.route,
            cfg: &self.cfg,
            limits: self.limits,
            watch: &self.watch,
        };
        check(route, js).await;
    }

    /// The dead-letter stream refused a dead letter: what it holds now is the mark
    /// [`Self::notice_room`] compares with (read at once, bounded; kept as it was if it cannot
    /// be read).
    pub(super) async fn found_full(&self, js: &jetstream::Context) {
        let dead = super::stream::dead_stream_name(&self.cfg.stream);
        let read = async { js.get_stream(&dead).await.ok()?.get_info().await.ok() };
        if let Ok(Some(info)) = tokio::time::timeout(self.cfg.publish_timeout, read).await {
            *self.full_at.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((info.state.messages, info.state.bytes));
        }
    }

    /// While the dead letters are marked full, a depth read that finds none, or fewer (or
    /// fewer bytes of them) than when they were last found full, means someone replayed or
    /// purged some (this guard's console, another guard's, `mllp-guard queue`): new messages
    /// are taken again, and the held message is dead-lettered at its next try.
    pub(super) fn notice_room(&self, counters: &Counters, depth: &Depth) {
        let mut full_at = self.full_at.lock().unwrap_or_else(|e| e.into_inner());
        if !counters.dead_letters_full.load(Ordering::Relaxed) {
            *full_at = None;
            return;
        }
        match *full_at {
            _ if depth.dead == 0 => {}
            None => {
                *full_at = Some((depth.dead, depth.dead_bytes));
                return;
            }
            Some((dead, bytes)) if depth.dead < dead || depth.dead_bytes < bytes => {}
            Some(_) => return,
        }
        *full_at = None;
        dead_letters_have_room(&self.route, counters);
    }

    /// The last depth read, and dead letters.
    pub fn stats(&self) -> (QueueStats, u64) {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether publishes can currently succeed (connected to NATS).
    pub fn writable(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}
