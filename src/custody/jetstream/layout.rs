//! Making a route's streams as the current layout has them, at start and when they were lost:
//! the route's stream (`<S>.queue` only) and its dead-letter stream (`<S>_DEAD`, `<S>.dead`),
//! and bringing a stream of the older layout up to it. Must not know the drainer or custody's
//! answers.
//!
//! # From the older layout
//!
//! Before, one stream took both `<S>.queue` and `<S>.dead`, so dead letters counted against the
//! route's own limits (a receiver rejecting everything filled the queue). At start:
//!
//! 1. the route's stream stops taking `<S>.dead` (its subjects become `<S>.queue`; what it
//!    stored under `<S>.dead` stays in it, readable by subject);
//! 2. the dead-letter stream is made (now `<S>.dead` reaches it);
//! 3. every dead letter still under `<S>.dead` in the route's stream is published to the new
//!    stream (PubAck; its `Nats-Msg-Id` names the old sequence, so a second copy within the
//!    duplicate window is dropped) and only then deleted from the old one: a crash in between
//!    copies one twice, never loses one.
//!
//! Each step can be repeated, so a start interrupted anywhere finishes the move at the next one.
//! Until the move is done (a full dead-letter stream stops it), readers count, list, replay and
//! purge the dead letters left in the route's stream with the others ([`super::inspect`]).

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;

use super::error::JetStreamError;
use super::inspect::{delete_dead_letter, next_by_subject};
use super::stream::{
    dead_stream_name, dead_subject, enqueued_at, ensure_dead_stream, ensure_stream,
    publish_confirmed, Limits, HEADER_ENQUEUED, HEADER_REASON,
};
use crate::config::JetStreamQueue;

/// Gets (or makes) the route's stream and its dead-letter stream, moving dead letters left by
/// the older layout. Moving is best effort (a failure is logged and retried at the next start);
/// only failing to get or make a stream is an error.
pub(super) async fn ensure_streams(
    js: &jetstream::Context,
    cfg: &JetStreamQueue,
    limits: Limits,
) -> Result<(stream::Stream, stream::Stream), JetStreamError> {
    let mut route = ensure_stream(js, cfg, limits.max_messages).await?;
    let dead = dead_subject(&cfg.stream);
    if route.cached_info().config.subjects.contains(&dead) {
        let mut config = route.cached_info().config.clone();
        config.subjects.retain(|s| *s != dead);
        let updated = js
            .update_stream(&config)
            .await
            .map_err(|e| JetStreamError::Stream {
                stream: cfg.stream.clone(),
                source: e.into(),
            })?;
        tracing::info!(stream = %cfg.stream, subjects = ?updated.config.subjects, dead_letter_stream = %dead_stream_name(&cfg.stream), "the route's stream no longer takes its dead letters: they have a stream of their own now, with queue.dead_letters as its limits");
        route = js
            .get_stream(&cfg.stream)
            .await
            .map_err(|e| JetStreamError::Stream {
                stream: cfg.stream.clone(),
                source: e.into(),
            })?;
    }
    let dead_stream = ensure_dead_stream(js, cfg, limits.dead).await?;
    if let Err(err) = move_old_dead_letters(js, &route, cfg).await {
        tracing::warn!(stream = %cfg.stream, error = %err, "cannot move the dead letters of the older layout to the dead-letter stream yet; they stay where they are (still listed, replayed and purged) and the move is tried again at the next start");
    }
    Ok((route, dead_stream))
}

/// Moves every message under `<S>.dead` in the route's stream to the dead-letter stream (see
/// the module documentation); how many.
async fn move_old_dead_letters(
    js: &jetstream::Context,
    route: &stream::Stream,
    cfg: &JetStreamQueue,
) -> Result<u64, JetStreamError> {
    let (subject, target) = (dead_subject(&cfg.stream), dead_stream_name(&cfg.stream));
    let mut moved = 0u64;
    let mut seq = 1u64;
    while let Some(letter) = next_by_subject(route, &cfg.stream, &subject, seq).await? {
        seq = letter.sequence + 1;
        let mut headers = HeaderMap::new();
        let id = format!("mllp-guard-moved|{}|{}", cfg.stream, letter.sequence);
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        headers.insert(HEADER_ENQUEUED, enqueued_at(&letter).to_string().as_str());
        if let Some(reason) = letter.headers.get(HEADER_REASON) {
            headers.insert(HEADER_REASON, reason.as_str());
        }
        let ack = match publish_confirmed(
            js,
            subject.clone(),
            headers,
            letter.payload.clone(),
            cfg.publish_timeout,
        )
        .await
        {
            Ok(ack) => ack,
            Err(JetStreamError::Full(_)) => {
                tracing::warn!(stream = %cfg.stream, dead_letter_stream = %target, moved, "the dead-letter stream is full (queue.dead_letters): the rest of the older layout's dead letters stay in the route's stream (still listed, replayed and purged) until there is room");
                return Ok(moved);
            }
            Err(err) => return Err(err),
        };
        if ack.stream != target {
            return Err(JetStreamError::Stream {
                stream: cfg.stream.clone(),
                source: format!(
                    "a dead letter published to {subject} was stored by stream {}, not {target}",
                    ack.stream
                )
                .into(),
            });
        }
        delete_dead_letter(route, letter.sequence).await?;
        moved += 1;
    }
    if moved > 0 {
        tracing::info!(stream = %cfg.stream, dead_letter_stream = %target, moved, "dead letters moved from the route's stream to its dead-letter stream");
    }
    Ok(moved)
}
