//! What operators (`mllp-guard queue ...`), the console and the metrics read or change of a
//! route's streams while guards run: the depth, the messages pending or dead, replaying dead
//! letters, purging, and which streams in an account are laid out as a route's. Dead letters
//! are read from the dead-letter stream and, while a move from the older layout is unfinished
//! ([`super::layout`]), from under `<S>.dead` in the route's stream too (those first: older).
//! Must not know the drainer.

use std::time::Duration;

use async_nats::jetstream::{self, context::GetStreamErrorKind, stream, ErrorCode};
use async_nats::HeaderMap;
use futures_util::StreamExt as _;

use super::error::{stream_error, JetStreamError};
use super::stream::{
    dead_stream_name, dead_subject, enqueued_at, publish_confirmed, queue_subject, HEADER_ENQUEUED,
    HEADER_REASON,
};
use crate::queue::Record;

/// Which of a route's messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// Waiting for delivery: `<S>.queue` in the route's stream.
    Pending,
    /// The dead letters: the dead-letter stream `<S>_DEAD` (and any left by the older layout).
    Dead,
}

/// A route's streams as operators see them.
#[derive(Clone, Debug, Default)]
pub struct Depth {
    pub pending: u64,
    pub dead: u64,
    /// The route's stream (pending messages, and any dead letters the older layout left in it).
    pub bytes: u64,
    /// The dead-letter stream.
    pub dead_bytes: u64,
    pub oldest_enqueued_ms: Option<u64>,
    /// The last sequence of the route's stream, and of its dead-letter stream.
    pub last_seq: u64,
    pub dead_last_seq: u64,
}

/// The stream named `name`, `None` when it does not exist.
pub(super) async fn find(
    js: &jetstream::Context,
    name: &str,
) -> Result<Option<stream::Stream>, JetStreamError> {
    match js.get_stream(name).await {
        Ok(stream) => Ok(Some(stream)),
        Err(err)
            if matches!(err.kind(), GetStreamErrorKind::JetStream(e)
                if e.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
        {
            Ok(None)
        }
        Err(err) => Err(stream_error(name, err)),
    }
}

/// The first message under `subject` in `stream` at or after sequence `from`.
pub(super) async fn next_by_subject(
    stream: &stream::Stream,
    stream_name: &str,
    subject: &str,
    from: u64,
) -> Result<Option<jetstream::message::StreamMessage>, JetStreamError> {
    let found = stream
        .raw_message_builder()
        .sequence(from)
        .next_by_subject(subject.to_string())
        .send()
        .await;
    match found {
        Ok(message) => Ok(Some(message)),
        Err(err) if err.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(err) => Err(JetStreamError::Read {
            stream: stream_name.to_string(),
            source: err.into(),
        }),
    }
}

/// A stream's current information (read now, not cached).
async fn info(stream: &stream::Stream) -> Result<stream::Info, JetStreamError> {
    stream
        .get_info()
        .await
        .map_err(|e| JetStreamError::StreamInfo(e.into()))
}

/// Deletes the dead letter at `seq` from `stream` (after it was stored elsewhere).
pub(super) async fn delete_dead_letter(
    stream: &stream::Stream,
    seq: u64,
) -> Result<(), JetStreamError> {
    stream
        .delete_message(seq)
        .await
        .map(|_| ())
        .map_err(|e| JetStreamError::DeleteDeadLetter {
            seq,
            source: e.into(),
        })
}

/// Where one part of a route's messages is: (stream, its name, the subject in it), oldest
/// first; streams that do not exist are left out.
async fn sources(
    js: &jetstream::Context,
    stream_name: &str,
    part: Part,
) -> Result<Vec<(stream::Stream, String, String)>, JetStreamError> {
    let route = find(js, stream_name).await?;
    let mut out = Vec::new();
    match part {
        Part::Pending => {
            out.extend(route.map(|s| (s, stream_name.to_string(), queue_subject(stream_name))))
        }
        Part::Dead => {
            let dead = dead_stream_name(stream_name);
            out.extend(route.map(|s| (s, stream_name.to_string(), dead_subject(stream_name))));
            out.extend(
                find(js, &dead)
                    .await?
                    .map(|s| (s, dead.clone(), dead_subject(stream_name))),
            );
        }
    }
    Ok(out)
}

/// Reads the depth of a route's streams (messages per subject, the oldest pending one's age).
/// An error when neither the route's stream nor its dead-letter stream exists.
pub async fn depth(js: &jetstream::Context, stream_name: &str) -> Result<Depth, JetStreamError> {
    let dead_name = dead_stream_name(stream_name);
    let (route, dead) = (find(js, stream_name).await?, find(js, &dead_name).await?);
    if route.is_none() && dead.is_none() {
        return Err(JetStreamError::Stream {
            stream: stream_name.to_string(),
            source: "stream not found".into(),
        });
    }
    let mut out = Depth::default();
    if let Some(dead) = dead {
        let info = info(&dead).await?;
        out.dead = info.state.messages;
        out.dead_bytes = info.state.bytes;
        out.dead_last_seq = info.state.last_sequence;
    }
    let Some(stream) = route else {
        return Ok(out);
    };
    let queue = queue_subject(stream_name);
    let mut subjects = stream
        .info_with_subjects(format!("{stream_name}.*"))
        .await
        .map_err(|e| stream_error(stream_name, e))?;
    while let Some(entry) = subjects.next().await {
        let (subject, count) = entry.map_err(|e| stream_error(stream_name, e))?;
        if subject == queue {
            out.pending = count as u64;
        } else if subject == dead_subject(stream_name) {
            // Left by the older layout, not moved yet.
            out.dead += count as u64;
        }
    }
    let info = info(&stream).await?;
    out.bytes = info.state.bytes;
    out.last_seq = info.state.last_sequence;
    if out.pending > 0 {
        if let Ok(first) = stream.get_first_raw_message_by_subject(&queue, 1).await {
            out.oldest_enqueued_ms = Some(enqueued_at(&first));
        }
    }
    Ok(out)
}

/// Up to `limit` of a route's pending messages or dead letters, oldest first, as records (the
/// seq is the stream sequence; the note a dead letter's reason).
pub async fn records(
    js: &jetstream::Context,
    stream_name: &str,
    part: Part,
    limit: usize,
) -> Result<Vec<Record>, JetStreamError> {
    let mut out = Vec::new();
    for (stream, name, subject) in sources(js, stream_name, part).await? {
        let mut seq = 1u64;
        while out.len() < limit {
            let Some(message) = next_by_subject(&stream, &name, &subject, seq).await? else {
                break;
            };
            seq = message.sequence + 1;
            out.push(Record {
                seq: message.sequence,
                enqueued_at_ms: enqueued_at(&message),
                note: message
                    .headers
                    .get(HEADER_REASON)
                    .map(|v| v.as_str().to_string())
                    .unwrap_or_default(),
                payload: message.payload,
            });
        }
    }
    Ok(out)
}

/// Moves every dead letter back to the end of the queue, in order: each is published (PubAck)
/// before it is deleted from the dead letters, so a crash replays twice, never loses one. Only
/// the dead letters there when it starts (one dead-lettered again meanwhile stays). Works while
/// guards run. Returns how many were replayed.
pub async fn replay(
    js: &jetstream::Context,
    stream_name: &str,
    limit: Duration,
) -> Result<u64, JetStreamError> {
    let mut replayed = 0;
    for (stream, name, subject) in sources(js, stream_name, Part::Dead).await? {
        let until = info(&stream).await?.state.last_sequence;
        let mut seq = 1u64;
        while seq <= until {
            let Some(letter) = next_by_subject(&stream, &name, &subject, seq).await? else {
                break;
            };
            if letter.sequence > until {
                break;
            }
            seq = letter.sequence + 1;
            let mut headers = HeaderMap::new();
            // No message id: a replay must not be dropped as a duplicate of the original.
            headers.insert(HEADER_ENQUEUED, enqueued_at(&letter).to_string().as_str());
            publish_confirmed(
                js,
                queue_subject(stream_name),
                headers,
                letter.payload,
                limit,
            )
            .await?;
            delete_dead_letter(&stream, letter.sequence).await?;
            replayed += 1;
        }
    }
    Ok(replayed)
}

/// Removes every pending message, or every dead letter; returns how many.
pub async fn purge(
    js: &jetstream::Context,
    stream_name: &str,
    part: Part,
) -> Result<u64, JetStreamError> {
    let mut purged = 0;
    for (stream, _, subject) in sources(js, stream_name, part).await? {
        purged += stream
            .purge()
            .filter(subject.as_str())
            .await
            .map(|r| r.purged)
            .map_err(|e| JetStreamError::Purge {
                subject: subject.clone(),
                source: e.into(),
            })?;
    }
    Ok(purged)
}

/// The route a stream in the account is laid out for, if any: `<S>` for a route's stream
/// (subjects `<S>.queue`, or `<S>.queue` and `<S>.dead` in the older layout) and for its
/// dead-letter stream (`<S>_DEAD`, subject `<S>.dead`).
fn route_of(info: &stream::Info) -> Option<&str> {
    let name = info.config.name.as_str();
    let mut subjects = info.config.subjects.clone();
    subjects.sort();
    if subjects == [queue_subject(name)] || subjects == [dead_subject(name), queue_subject(name)] {
        return Some(name);
    }
    let route = name.strip_suffix("_DEAD")?;
    (subjects == [dead_subject(route)]).then_some(route)
}

/// The routes (named by their stream, `<S>`) whose streams are in the account and not in
/// `configured`: streams of routes renamed, removed or moved to another backend. A route's
/// dead-letter stream is part of its route, never one of its own.
pub async fn unowned_streams(
    js: &jetstream::Context,
    configured: &[&str],
) -> Result<Vec<String>, JetStreamError> {
    let mut streams = js.streams();
    let mut out = Vec::new();
    while let Some(info) = streams.next().await {
        let info = info.map_err(|e| JetStreamError::StreamInfo(e.into()))?;
        if let Some(route) = route_of(&info) {
            if !configured.contains(&route) && !out.iter().any(|r| r == route) {
                out.push(route.to_string());
            }
        }
    }
    out.sort();
    Ok(out)
}
