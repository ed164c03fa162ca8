//! Noticing that a route's stream (or its consumer) was lost, and custody going on: a NATS
//! server restarted on an empty store, a stream deleted by hand, a consumer removed. Signs: the
//! stream is not found, it was created at another time than the one this guard knew, its last
//! sequence is lower than one this guard saw (a PubAck's or a read's), or the consumer is not
//! found. Then an ERROR names the stream and how many acknowledged messages were in it (pending
//! and dead letters, as last read plus what this guard stored and delivered since), metrics
//! count it, and the stream and the consumer are made again so custody resumes without a
//! restart. Checked every few seconds, and at once when a publish finds no stream or a PubAck's
//! sequence goes backwards.
//!
//! Must not know senders, the drainer's delivery, or what the metrics do with the counts.

use std::sync::Mutex;

use async_nats::jetstream::{self, context::GetStreamErrorKind, ErrorCode};

use super::stream::{ensure_consumer, ensure_stream, CONSUMER};
use crate::config::JetStreamQueue;

/// What this guard last knew of its route's stream.
#[derive(Clone, Debug, Default)]
pub(super) struct Seen {
    /// When the stream was created (ns since the epoch), as last read.
    created: Option<i128>,
    /// The highest stream sequence seen (reads and PubAcks).
    last_seq: u64,
    /// Pending messages and dead letters at the last read.
    pending: u64,
    dead: u64,
    /// Messages this guard stored (new, not duplicates), took off the queue (delivered or
    /// dead-lettered) and dead-lettered since the last read.
    stored_since: u64,
    delivered_since: u64,
    dead_since: u64,
}

/// The [`Seen`] of one route, shared by its publishes, its drainer and its checks.
#[derive(Default)]
pub(super) struct Watch {
    seen: Mutex<Seen>,
    /// One check at a time: a publish that finds no stream waits for the one running.
    checking: tokio::sync::Mutex<()>,
    /// Asks the stats loop for a check now (a pull failed, a PubAck's sequence went back).
    pub(super) check_now: tokio::sync::Notify,
}

impl Watch {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stream as this guard found or made it at start.
    pub(super) fn started(&self, stream: &jetstream::stream::Stream) {
        let info = stream.cached_info();
        let mut seen = self.seen();
        seen.created = Some(info.created.unix_timestamp_nanos());
        seen.last_seq = info.state.last_sequence;
    }

    /// A confirmed publish: `seq` from its PubAck. False when the sequence went backwards (the
    /// stream was lost and made again): the caller checks at once.
    pub(super) fn stored(&self, seq: u64, duplicate: bool) -> bool {
        let mut seen = self.seen();
        if !duplicate {
            seen.stored_since += 1;
        }
        if seq < seen.last_seq && !duplicate {
            return false;
        }
        seen.last_seq = seen.last_seq.max(seq);
        true
    }

    /// A message acked off the queue by this guard's drainer.
    pub(super) fn delivered(&self) {
        self.seen().delivered_since += 1;
    }

    /// A message moved from the queue to the dead letters by this guard's drainer.
    pub(super) fn dead_lettered(&self) {
        let mut seen = self.seen();
        seen.delivered_since += 1;
        seen.dead_since += 1;
    }

    /// The counts since the last read, taken just before a depth read.
    pub(super) fn before_read(&self) -> (u64, u64, u64) {
        let seen = self.seen();
        (seen.stored_since, seen.delivered_since, seen.dead_since)
    }

    /// A depth read from the stream (`before`: [`Self::before_read`]): the counts start again
    /// from it, unless this guard stored or delivered something while it was read (the read may
    /// or may not include that): then the last clean read stays the base, and the counts since
    /// it go on.
    pub(super) fn read(&self, before: (u64, u64, u64), pending: u64, dead: u64, last_seq: u64) {
        let mut seen = self.seen();
        seen.last_seq = seen.last_seq.max(last_seq);
        if (seen.stored_since, seen.delivered_since, seen.dead_since) != before {
            return;
        }
        seen.pending = pending;
        seen.dead = dead;
        (seen.stored_since, seen.delivered_since, seen.dead_since) = (0, 0, 0);
    }
}

/// The route a [`check`] is for.
pub(super) struct Route<'a> {
    pub(super) name: &'a str,
    pub(super) cfg: &'a JetStreamQueue,
    pub(super) max_messages: u64,
    pub(super) watch: &'a Watch,
}

/// Checks the route's stream and consumer, and makes them again when lost (see the module
/// documentation). Quiet when NATS cannot be reached (nothing is known then).
pub(super) async fn check(nats: Route<'_>, js: &jetstream::Context) {
    let watch = nats.watch;
    let _one = watch.checking.lock().await;
    let name = &nats.cfg.stream;
    // Taken before the stream is read: a sequence seen before cannot be above the one read
    // after, unless the stream was lost (a PubAck arriving meanwhile can be).
    let seen = watch.seen().clone();
    let lost = match js.get_stream(name).await {
        Ok(stream) => {
            let info = stream.cached_info();
            let created = info.created.unix_timestamp_nanos();
            let last = info.state.last_sequence;
            let why = match seen.created {
                Some(known) if known != created => Some(format!(
                    "it was made again (another guard or a person recreated it; its last sequence is now {last}, was at least {})",
                    seen.last_seq
                )),
                _ if last < seen.last_seq => Some(format!(
                    "its sequence moved backwards (from {} to {last})",
                    seen.last_seq
                )),
                _ => None,
            };
            {
                let mut now = watch.seen();
                now.created = Some(created);
                if why.is_some() {
                    now.last_seq = last;
                }
            }
            if let Some(why) = why {
                report(&nats, &seen, &why);
                let mut now = watch.seen();
                (now.pending, now.dead) = (0, 0);
                (now.stored_since, now.delivered_since, now.dead_since) = (0, 0, 0);
            }
            match stream.consumer_info(CONSUMER).await {
                Ok(_) => {}
                Err(err)
                    if matches!(
                        err.kind(),
                        jetstream::context::ConsumerInfoErrorKind::NotFound
                    ) || matches!(err.kind(),
                        jetstream::context::ConsumerInfoErrorKind::JetStream(e)
                            if e.error_code() == ErrorCode::CONSUMER_NOT_FOUND) =>
                {
                    tracing::error!(route = %nats.name, stream = %name, consumer = CONSUMER, "the JetStream consumer of the route's stream disappeared; making it again (delivery resumes from the first pending message)");
                    crate::ops::metrics::jetstream_stream_lost(nats.name, 0);
                    if let Err(err) = ensure_consumer(&stream, nats.cfg).await {
                        tracing::warn!(route = %nats.name, error = %err, "cannot make the consumer again yet; retrying");
                    }
                }
                Err(_) => {}
            }
            return;
        }
        Err(err)
            if matches!(err.kind(), GetStreamErrorKind::JetStream(e)
                if e.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
        {
            seen
        }
        Err(_) => return,
    };
    report(
        &nats,
        &lost,
        "it no longer exists (a NATS server restarted on an empty store, or the stream was deleted)",
    );
    match ensure_stream(js, nats.cfg, nats.max_messages).await {
        Ok(stream) => {
            *watch.seen() = Seen {
                created: Some(stream.cached_info().created.unix_timestamp_nanos()),
                last_seq: stream.cached_info().state.last_sequence,
                ..Seen::default()
            };
            match ensure_consumer(&stream, nats.cfg).await {
                Ok(_) => {
                    tracing::warn!(route = %nats.name, stream = %name, "JetStream stream and consumer made again; custody goes on");
                }
                Err(err) => {
                    tracing::warn!(route = %nats.name, error = %err, "stream made again, but not its consumer yet; retrying");
                }
            }
        }
        Err(err) => {
            tracing::warn!(route = %nats.name, error = %err, "cannot make the JetStream stream again yet; retrying");
        }
    }
}

/// The ERROR line and the metrics for a lost stream.
fn report(nats: &Route<'_>, seen: &Seen, why: &str) {
    let pending = (seen.pending + seen.stored_since).saturating_sub(seen.delivered_since);
    let dead = seen.dead + seen.dead_since;
    tracing::error!(
        route = %nats.name,
        stream = %nats.cfg.stream,
        pending_lost = pending,
        dead_letters_lost = dead,
        "the route's JetStream stream was lost: {why}; the acknowledged messages pending in it ({pending}: as last read, plus stored and minus delivered by this guard since) and its dead letters ({dead}) are gone; making it again"
    );
    crate::ops::metrics::jetstream_stream_lost(nats.name, pending + dead);
}
