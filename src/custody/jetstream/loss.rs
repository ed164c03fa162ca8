//! Noticing that a route's stream, its dead-letter stream or its consumer was lost, and custody
//! going on: a NATS server restarted on an empty store, a stream deleted by hand, a consumer
//! removed. Signs: a stream is not found, it was created at another time than the one this guard
//! knew, its last sequence is lower than one this guard saw (a PubAck's or a read's), or the
//! consumer is not found. Then an ERROR names the stream and how many acknowledged messages were
//! in it (pending, or dead letters, as last read plus what this guard stored, delivered and
//! dead-lettered since; both streams lost together are one report), metrics count it, and what
//! was lost is made again so custody resumes without a restart. Checked every few seconds, and
//! at once when a publish finds no stream or a PubAck's sequence goes backwards.
//!
//! Must not know senders, the drainer's delivery, or what the metrics do with the counts.

use std::sync::Mutex;

use async_nats::jetstream::{self, context::GetStreamErrorKind, ErrorCode};

use super::inspect::Depth;
use super::stream::{
    dead_stream_name, ensure_consumer, ensure_dead_stream, ensure_stream, Limits, CONSUMER,
};
use crate::config::JetStreamQueue;

/// What this guard last knew of its route's stream.
#[derive(Clone, Debug, Default)]
pub(super) struct Seen {
    /// When the stream was created (ns since the epoch), as last read.
    created: Option<i128>,
    /// The highest stream sequence seen (reads and PubAcks).
    last_seq: u64,
    /// The same two of the dead-letter stream (reads only).
    dead_created: Option<i128>,
    dead_last_seq: u64,
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

    /// The streams as this guard found or made them at start.
    pub(super) fn started(
        &self,
        stream: &jetstream::stream::Stream,
        dead: &jetstream::stream::Stream,
    ) {
        let (info, dead) = (stream.cached_info(), dead.cached_info());
        let mut seen = self.seen();
        seen.created = Some(info.created.unix_timestamp_nanos());
        seen.last_seq = info.state.last_sequence;
        seen.dead_created = Some(dead.created.unix_timestamp_nanos());
        seen.dead_last_seq = dead.state.last_sequence;
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
    pub(super) fn read(&self, before: (u64, u64, u64), depth: &Depth) {
        let mut seen = self.seen();
        seen.last_seq = seen.last_seq.max(depth.last_seq);
        seen.dead_last_seq = seen.dead_last_seq.max(depth.dead_last_seq);
        if (seen.stored_since, seen.delivered_since, seen.dead_since) != before {
            return;
        }
        seen.pending = depth.pending;
        seen.dead = depth.dead;
        (seen.stored_since, seen.delivered_since, seen.dead_since) = (0, 0, 0);
    }
}

/// The route a [`check`] is for.
pub(super) struct Route<'a> {
    pub(super) name: &'a str,
    pub(super) cfg: &'a JetStreamQueue,
    pub(super) limits: Limits,
    pub(super) watch: &'a Watch,
}

/// One stream as a [`check`] found it.
enum Look {
    /// NATS could not say (not reachable, a timeout): nothing is known.
    Unknown,
    /// Not found.
    Gone,
    /// Found; `lost` says why it is not the stream this guard knew (made again, or its
    /// sequence moved backwards).
    Found {
        stream: Box<jetstream::stream::Stream>,
        lost: Option<String>,
    },
}

/// Looks at the stream `name`, which this guard knew as created at `created` with sequences up
/// to `last_seq`.
async fn look(js: &jetstream::Context, name: &str, created: Option<i128>, last_seq: u64) -> Look {
    match js.get_stream(name).await {
        Ok(stream) => {
            let info = stream.cached_info();
            let (now, last) = (
                info.created.unix_timestamp_nanos(),
                info.state.last_sequence,
            );
            let lost = match created {
                Some(known) if known != now => Some(format!(
                    "it was made again (another guard or a person recreated it; its last sequence is now {last}, was at least {last_seq})"
                )),
                _ if last < last_seq => Some(format!(
                    "its sequence moved backwards (from {last_seq} to {last})"
                )),
                _ => None,
            };
            Look::Found {
                stream: Box::new(stream),
                lost,
            }
        }
        Err(err)
            if matches!(err.kind(), GetStreamErrorKind::JetStream(e)
                if e.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
        {
            Look::Gone
        }
        Err(_) => Look::Unknown,
    }
}

impl Look {
    /// Why this stream is lost, if it is.
    fn lost(&self) -> Option<String> {
        match self {
            Look::Unknown | Look::Found { lost: None, .. } => None,
            Look::Gone => Some(
                "it no longer exists (a NATS server restarted on an empty store, or the stream was deleted)"
                    .into(),
            ),
            Look::Found { lost: Some(why), .. } => Some(why.clone()),
        }
    }

    /// When the stream found was created, and its last sequence.
    fn found(&self) -> Option<(i128, u64)> {
        match self {
            Look::Found { stream, .. } => {
                let info = stream.cached_info();
                Some((
                    info.created.unix_timestamp_nanos(),
                    info.state.last_sequence,
                ))
            }
            _ => None,
        }
    }
}

/// Checks the route's streams and consumer, and makes them again when lost (see the module
/// documentation). Quiet when NATS cannot be reached (nothing is known then).
pub(super) async fn check(nats: Route<'_>, js: &jetstream::Context) {
    let watch = nats.watch;
    let _one = watch.checking.lock().await;
    let name = &nats.cfg.stream;
    // Taken before the streams are read: a sequence seen before cannot be above the one read
    // after, unless the stream was lost (a PubAck arriving meanwhile can be).
    let seen = watch.seen().clone();
    let route = look(js, name, seen.created, seen.last_seq).await;
    if let Look::Unknown = route {
        return;
    }
    let dead_name = dead_stream_name(name);
    let dead = look(js, &dead_name, seen.dead_created, seen.dead_last_seq).await;
    let (route_lost, dead_lost) = (route.lost(), dead.lost());
    {
        let mut now = watch.seen();
        if let Some((created, last)) = route.found() {
            now.created = Some(created);
            if route_lost.is_some() {
                now.last_seq = last;
            }
        }
        if let Some((created, last)) = dead.found() {
            now.dead_created = Some(created);
            if dead_lost.is_some() {
                now.dead_last_seq = last;
            }
        }
    }
    if let Some(why) = &route_lost {
        report(&nats, &seen, why, dead_lost.is_some());
    } else if let Some(why) = &dead_lost {
        report_dead(&nats, &seen, why);
    }
    if route_lost.is_some() || dead_lost.is_some() {
        let mut now = watch.seen();
        if route_lost.is_some() {
            now.pending = 0;
            (now.stored_since, now.delivered_since) = (0, 0);
        }
        if dead_lost.is_some() {
            (now.dead, now.dead_since) = (0, 0);
        }
    }
    if let Look::Gone = dead {
        match ensure_dead_stream(js, nats.cfg, nats.limits.dead).await {
            Ok(stream) => {
                let info = stream.cached_info();
                let mut now = watch.seen();
                now.dead_created = Some(info.created.unix_timestamp_nanos());
                now.dead_last_seq = info.state.last_sequence;
            }
            Err(err) => {
                tracing::warn!(route = %nats.name, error = %err, "cannot make the dead-letter stream again yet; retrying");
            }
        }
    }
    match route {
        Look::Found { stream, .. } => check_consumer(&nats, &stream).await,
        Look::Gone => remake(&nats, js).await,
        Look::Unknown => {}
    }
}

/// Makes the consumer again if it is gone.
async fn check_consumer(nats: &Route<'_>, stream: &jetstream::stream::Stream) {
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
            tracing::error!(route = %nats.name, stream = %nats.cfg.stream, consumer = CONSUMER, "the JetStream consumer of the route's stream disappeared; making it again (delivery resumes from the first pending message)");
            crate::ops::metrics::jetstream_stream_lost(nats.name, 0);
            if let Err(err) = ensure_consumer(stream, nats.cfg).await {
                tracing::warn!(route = %nats.name, error = %err, "cannot make the consumer again yet; retrying");
            }
        }
        Err(_) => {}
    }
}

/// Makes the route's stream and its consumer again.
async fn remake(nats: &Route<'_>, js: &jetstream::Context) {
    let name = &nats.cfg.stream;
    match ensure_stream(js, nats.cfg, nats.limits.max_messages).await {
        Ok(stream) => {
            {
                let info = stream.cached_info();
                let mut now = nats.watch.seen();
                now.created = Some(info.created.unix_timestamp_nanos());
                now.last_seq = info.state.last_sequence;
            }
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

/// The ERROR line and the metrics for a lost route stream (`with_dead`: its dead-letter stream
/// was lost with it).
fn report(nats: &Route<'_>, seen: &Seen, why: &str, with_dead: bool) {
    let pending = (seen.pending + seen.stored_since).saturating_sub(seen.delivered_since);
    let dead = if with_dead {
        seen.dead + seen.dead_since
    } else {
        0
    };
    let dead_stream = dead_stream_name(&nats.cfg.stream);
    let also = if with_dead {
        format!("; its dead-letter stream {dead_stream} was lost with it, and its dead letters ({dead}) are gone too; making them again")
    } else {
        format!(" (its dead letters, in {dead_stream}, are not); making it again")
    };
    tracing::error!(
        route = %nats.name,
        stream = %nats.cfg.stream,
        pending_lost = pending,
        dead_letters_lost = dead,
        "the route's JetStream stream was lost: {why}; the acknowledged messages pending in it ({pending}: as last read, plus stored and minus delivered by this guard since) are gone{also}"
    );
    crate::ops::metrics::jetstream_stream_lost(nats.name, pending + dead);
}

/// The ERROR line and the metrics for a lost dead-letter stream (the route's stream is not).
fn report_dead(nats: &Route<'_>, seen: &Seen, why: &str) {
    let dead = seen.dead + seen.dead_since;
    tracing::error!(
        route = %nats.name,
        stream = %dead_stream_name(&nats.cfg.stream),
        dead_letters_lost = dead,
        "the route's JetStream dead-letter stream was lost: {why}; its dead letters ({dead}: as last read, plus dead-lettered by this guard since) are gone; making it again"
    );
    crate::ops::metrics::jetstream_stream_lost(nats.name, dead);
}
