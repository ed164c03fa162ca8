//! Custody on NATS JetStream (`queue.backend: jetstream`): a replicated store that several guards
//! serving one route share, so losing a machine loses no acked message.
//!
//! Owns the mapping of custody's operations onto JetStream; must not know senders, sockets,
//! ack bytes or the upstream's protocol (custody answers senders, [`crate::upstream`] delivers).
//!
//! # Layout in NATS (two streams per route)
//!
//! ```text
//! stream <S>          subject <S>.queue (pending messages); retention work-queue (a message is
//!                     removed once its consumer acks it), discard new (full = publishes
//!                     refused, never a drop), file storage, replicas, max_bytes
//!                     (`jetstream.max_bytes`), max_msgs (`queue.max_messages`),
//!                     duplicate_window from the config
//! consumer mllp-guard durable pull consumer on <S>.queue: explicit ack, max_ack_pending 1,
//!                     ack_wait = `takeover`, unlimited redeliveries
//! stream <S>_DEAD     subject <S>.dead (dead letters); retention limits (kept until replayed or
//!                     purged), discard new, file storage, replicas and duplicate_window as
//!                     above, max_msgs and max_bytes from `queue.dead_letters` (updated at
//!                     start, never below what it holds)
//! headers             Nats-Msg-Id (dedup: sender|MSH-3|MSH-4|MSH-10|SHA-256 prefix), Mllp-Enqueued-Ms,
//!                     Mllp-Reason (dead letters only)
//! ```
//!
//! Dead letters have their own stream so that the route's limits never count them: a receiver
//! that rejects everything fills `<S>_DEAD`, not the queue. A stream of the older layout (one
//! stream taking `<S>.queue` and `<S>.dead`) is brought up to this one at start (`layout.rs`).
//!
//! # The guarantees and how they hold
//!
//! - **Never ack what is not stored**: [`Nats::publish`] returns `Ok` only with a PubAck, which
//!   the stream leader sends after the message is committed by a quorum of its replicas. No
//!   connection, an error or no PubAck within `publish_timeout` is an `Err` (a negative ack).
//! - **In order, one in flight, exactly one drainer**: every guard pulls from the same durable
//!   consumer, whose `max_ack_pending: 1` lets the server hand out the next message only after
//!   the previous one is acked; a redelivery comes before anything newer. Whichever guard holds
//!   the message is the route's drainer at that moment.
//! - **Takeover**: the holder confirms progress (`+WPI`, waited for) every `takeover / 4` while
//!   it delivers. A guard that dies stops confirming; after `takeover` the server redelivers the
//!   message to another guard, which resumes from it (the first unacknowledged message). A
//!   holder that cannot confirm progress abandons its delivery attempt before `takeover` has
//!   passed since its last confirmation, so two guards never deliver at once.
//! - **A lost stream is noticed** (`loss.rs`): a stream that is gone (a NATS server restarted
//!   on an empty store), made again by someone else, or whose sequence moved backwards, and a
//!   consumer that is gone: ERROR naming the stream and the acknowledged messages that were in
//!   it, `mllp_guard_jetstream_stream_lost_total` and `mllp_guard_jetstream_lost_messages_total`,
//!   then the stream and the consumer are made again and custody goes on (checked every few
//!   seconds, and at once when a publish finds no stream). The depth is read from the stream.
//! - **Retries**: a failed attempt is NAKed with the backoff as delay (the message stays the
//!   one in flight); AE/AR follow `on_reply`; a dead letter is published (PubAck) to `<S>.dead`
//!   before the message is acked off the queue.
//! - **Full dead letters**: when `<S>_DEAD` refuses a dead letter (full), the message stays the
//!   one in flight (NAKed with the retry backoff; offered again to this guard it is not sent to
//!   the receiver again, only its dead-lettering is retried), new messages get AE `dead letters
//!   full`, and the ERROR line, `mllp_guard_queue_dead_letters_full` and `/readyz` say why,
//!   as on the embedded queue. It clears once a dead letter is stored again, when the console
//!   replays them, or when the dead-letter stream is seen to hold fewer (a replay or purge by
//!   another guard or `mllp-guard queue`).

mod drain;
mod error;
mod inspect;
mod layout;
mod loss;
mod nats;
mod stream;

pub use drain::{run, DrainContext};
pub use error::{Cause, JetStreamError};
pub use inspect::{depth, purge, records, replay, unowned_streams, Depth, Part};
pub use nats::Nats;
pub use stream::{
    connect, dead_stream_name, dead_subject, ensure_dead_stream, ensure_stream, message_id,
    queue_subject, Limits, CONSUMER,
};

#[cfg(test)]
mod tests;
