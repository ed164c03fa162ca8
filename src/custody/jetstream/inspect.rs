//! What operators (`mllp-guard queue ...`) and the metrics read or change of a route's stream
//! while guards run: its depth, the messages of a subject, replaying dead letters, purging.
//! Must not know the drainer.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::HeaderMap;
use futures_util::StreamExt as _;

use super::error::{stream_error, JetStreamError};
use super::stream::{
    dead_subject, enqueued_at, publish_confirmed, queue_subject, HEADER_ENQUEUED, HEADER_REASON,
};
use crate::queue::Record;

/// A route's stream as operators see it.
#[derive(Clone, Debug, Default)]
pub struct Depth {
    pub pending: u64,
    pub dead: u64,
    /// The whole stream (pending and dead letters).
    pub bytes: u64,
    pub oldest_enqueued_ms: Option<u64>,
    pub last_seq: u64,
}

/// Reads the depth of a route's stream (messages per subject, the oldest pending one's age).
pub async fn depth(js: &jetstream::Context, stream_name: &str) -> Result<Depth, JetStreamError> {
    let stream = js
        .get_stream(stream_name)
        .await
        .map_err(|e| stream_error(stream_name, e))?;
    let (queue, dead) = (queue_subject(stream_name), dead_subject(stream_name));
    let mut out = Depth::default();
    let mut subjects = stream
        .info_with_subjects(format!("{stream_name}.*"))
        .await
        .map_err(|e| stream_error(stream_name, e))?;
    while let Some(entry) = subjects.next().await {
        let (subject, count) = entry.map_err(|e| stream_error(stream_name, e))?;
        if subject == queue {
            out.pending = count as u64;
        } else if subject == dead {
            out.dead = count as u64;
        }
    }
    let info = stream
        .get_info()
        .await
        .map_err(|e| JetStreamError::StreamInfo(e.into()))?;
    out.bytes = info.state.bytes;
    out.last_seq = info.state.last_sequence;
    if out.pending > 0 {
        if let Ok(first) = stream.get_first_raw_message_by_subject(&queue, 1).await {
            out.oldest_enqueued_ms = Some(enqueued_at(&first));
        }
    }
    Ok(out)
}

/// Up to `limit` messages of one subject (`queue` or `dead`) in stream order, as records (the
/// seq is the stream sequence; the note a dead letter's reason).
pub async fn records(
    js: &jetstream::Context,
    stream_name: &str,
    subject: &str,
    limit: usize,
) -> Result<Vec<Record>, JetStreamError> {
    let stream = js
        .get_stream(stream_name)
        .await
        .map_err(|e| stream_error(stream_name, e))?;
    let mut out = Vec::new();
    let mut seq = 1u64;
    while out.len() < limit {
        let found = stream
            .raw_message_builder()
            .sequence(seq)
            .next_by_subject(subject.to_string())
            .send()
            .await;
        let message = match found {
            Ok(message) => message,
            Err(err) if err.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {
                break
            }
            Err(err) => {
                return Err(JetStreamError::Read {
                    stream: stream_name.to_string(),
                    source: err.into(),
                })
            }
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
    Ok(out)
}

/// Moves every dead letter back to the end of the queue, in order: each is published (PubAck)
/// before it is deleted from the dead letters, so a crash replays twice, never loses one.
/// Works while guards run. Returns how many were replayed.
pub async fn replay(
    js: &jetstream::Context,
    stream_name: &str,
    limit: Duration,
) -> Result<u64, JetStreamError> {
    let stream = js
        .get_stream(stream_name)
        .await
        .map_err(|e| stream_error(stream_name, e))?;
    let letters = records(js, stream_name, &dead_subject(stream_name), usize::MAX).await?;
    let mut replayed = 0;
    for letter in letters {
        let mut headers = HeaderMap::new();
        // No message id: a replay must not be dropped as a duplicate of the original.
        headers.insert(HEADER_ENQUEUED, letter.enqueued_at_ms.to_string().as_str());
        publish_confirmed(
            js,
            queue_subject(stream_name),
            headers,
            letter.payload,
            limit,
        )
        .await?;
        stream
            .delete_message(letter.seq)
            .await
            .map_err(|e| JetStreamError::DeleteDeadLetter {
                seq: letter.seq,
                source: e.into(),
            })?;
        replayed += 1;
    }
    Ok(replayed)
}

/// Removes every message of one subject; returns how many.
pub async fn purge(
    js: &jetstream::Context,
    stream_name: &str,
    subject: &str,
) -> Result<u64, JetStreamError> {
    let stream = js
        .get_stream(stream_name)
        .await
        .map_err(|e| stream_error(stream_name, e))?;
    stream
        .purge()
        .filter(subject)
        .await
        .map(|r| r.purged)
        .map_err(|e| JetStreamError::Purge {
            subject: subject.to_string(),
            source: e.into(),
        })
}

/// The names of the streams in the account that are laid out as a route's (subjects exactly
/// `<S>.queue` and `<S>.dead`) and are not in `configured`: streams of routes renamed, removed
/// or moved to another backend.
pub async fn unowned_streams(
    js: &jetstream::Context,
    configured: &[&str],
) -> Result<Vec<String>, JetStreamError> {
    let mut streams = js.streams();
    let mut out = Vec::new();
    while let Some(info) = streams.next().await {
        let info = info.map_err(|e| JetStreamError::StreamInfo(e.into()))?;
        let name = &info.config.name;
        let mut subjects = info.config.subjects.clone();
        subjects.sort();
        let ours = subjects == [dead_subject(name), queue_subject(name)];
        if ours && !configured.contains(&name.as_str()) {
            out.push(name.clone());
        }
    }
    out.sort();
    Ok(out)
}
