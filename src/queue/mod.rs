//! The durable store-and-forward queue behind custody: a segmented, checksummed, append-only log,
//! one directory per route. Synchronous (`std::fs` only); the async side wraps it (a committer
//! thread does many [`Store::append`] then one [`Store::sync`], a drainer calls
//! [`Store::front`] / [`Store::ack`], both behind one mutex).
//!
//! # On-disk layout
//!
//! ```text
//! <dir>/LOCK                      the holder's pid; the writable SegmentLog holds an exclusive flock on it
//!                                 (`File::try_lock`) until close/drop or its process dies; a
//!                                 second open gets `Locked`; `open_read_only` takes no lock
//! <dir>/cursor                    8 KiB: two cursor slots, at offsets 0 and 4096
//! <dir>/synced                    24 bytes: the committed-through mark (below)
//! <dir>/damaged/                  bytes set aside by salvage, each `.bin` with a `.txt`
//! <dir>/rebuild/                  only during a salvage swap (below)
//! <dir>/00000000000000000001.seg  segments, named by the seq of their first record (20 digits,
//! <dir>/00000000000000004711.seg  so the lexical order is the log order)
//! ```
//!
//! A segment is a 32-byte header, then records back to back (each padded with zeros to a multiple
//! of 8 bytes), then zeros up to its preallocated size. A segment is created with `set_len`
//! ([`Limits::segment_bytes`], sparse zeros); a record too large for that gets a segment sized to
//! fit it alone. All integers are little endian.
//!
//! ```text
//! segment header   0 magic "MGQSEG\0\x01" | 8 queue_id u64 | 16 first_seq u64
//!                 24 crc u32 (CRC-32 of bytes 0..24) | 28 zero u32
//! record           0 len u32             = 36 + note_len + payload_len (0 is never a record:
//!                                          zeros end the log)
//!                  4 crc u32             CRC-32 of queue_id ‖ bytes 0..4 ‖ bytes 8..len
//!                  8 seq u64
//!                 16 enqueued_at_ms u64
//!                 24 synced_through u64  highest seq that was durable when this record was written
//!                 32 note_len u16 | 34 flags u16 (0) | 36 note (UTF-8) | payload
//! cursor slot      0 magic "MGQC" | 4 gen u64 | 12 acked_through u64 | 20 synced_through u64
//!                 28 queue_id u64 | 36 crc u32 (CRC-32 of bytes 0..36)
//! mark             0 magic "MGQM" | 4 synced_through u64 | 12 queue_id u64 | 20 crc u32
//! ```
//!
//! The mark is rewritten in place after every successful sync and never fsync'd: it costs one
//! `pwrite` per group commit and no extra fsync. A crash of the process (kill -9, OOM, panic)
//! leaves it in the page cache, so at the next open it says how far the last group commits were
//! durable, and acknowledged; only a power loss can make it stale (then recovery falls back to
//! the records' own `synced_through`, as before).
//!
//! CRC-32 is crc32fast's (IEEE polynomial, hardware accelerated). `queue_id` is a random number
//! chosen when the queue is created and written in every segment header and in the cursor;
//! mixing it into every record checksum means that bytes from another queue, or a payload that
//! embeds a record, never pass as a record of this one.
//!
//! # Invariants
//!
//! 1. Seqs start at 1 and strictly increase in log order. The seq of a durable record is never
//!    handed out again, also across restarts. Gaps are allowed (appends discarded by a failed
//!    sync); the seq of an append lost in a crash before its sync may be handed out again.
//! 2. Every segment but the last is *sealed*: before the log creates a new segment it fsyncs the
//!    current one (data, and the directory entry if new) and never writes to it again. A sealed
//!    segment therefore holds valid records followed by zeros; anything else in it is corruption.
//! 3. Only the last segment has a *tail*: the bytes written since the last successful fsync,
//!    which a crash may leave torn in any way (a prefix, zeros, garbage, or, after a power loss,
//!    later records present while an earlier one is missing).
//! 4. [`Store::front`] and [`Store::pending`] show a record only after a [`Store::sync`] that
//!    covered it returned `Ok` (or after a restart found it intact).
//! 5. Known-durable watermark `D` = the highest of the cursor's `synced_through` and the
//!    `synced_through` of every checksum-valid record anywhere in the log (including valid
//!    records found beyond a damaged one). A record at or below `D` was fsync'd before something
//!    that is still readable was written, so it cannot be part of a torn tail.
//! 6. A segment file is deleted only when every record in it is acknowledged, after a cursor
//!    saying so has been fsync'd; the last (active) segment is never deleted. (The deletion itself
//!    is not followed by a directory fsync: a segment that reappears after a crash holds only
//!    acknowledged records and is deleted again by recovery.)
//!
//! # Recovery ([`SegmentLog::open`])
//!
//! Takes the lock, reads the cursor (the valid slot with the higher generation), then reads every
//! segment and validates every record's checksum, order and bounds:
//! - in the last segment, the first unreadable record ends the log; everything from there on
//!   that is past `D` (the cursor's, the mark's and every valid record's `synced_through`) is a
//!   torn tail: it is zeroed (truncate + re-extend), fsync'd, and its extent up to the last
//!   non-zero byte is reported in [`Recovery::torn_tail_bytes`]. A last segment whose header
//!   never reached the disk is recreated;
//! - media damage: a record up to `D` unreadable or missing, or anything unreadable in a sealed
//!   segment. Nothing is skipped silently and the open does not fail: salvage (`salvage.rs`)
//!   keeps every record whose checksum holds, before and after the damage, moves the damaged
//!   bytes to `damaged/` (with the seq range they stood for and any MSH-10 still readable) and
//!   swaps in a clean queue of the intact pending records under a new queue id, crash-safely;
//!   [`Recovery::damaged`] says what was lost (the caller logs it and counts it);
//! - segments whose records are all acknowledged are deleted; the last segment is fsync'd, so
//!   what recovery found is durable before anything is appended after it.
//!
//! A record found unreadable while running is set aside the same way when it reaches the front
//! ([`Store::set_aside_front`]), and delivery goes on with the next.
//!
//! After a crash at any byte, the recovered pending records are: every record whose sync
//! returned `Ok`, minus those acknowledged before the last cursor fsync, in order; plus possibly
//! a prefix of the appends that were not yet synced (complete on disk, so they are delivered:
//! their sender, never told `Ok`, may send again - a duplicate, never a loss). Limit: after a
//! power loss the mark may be stale, and a record damaged on disk in the last synced batch, with
//! nothing later on disk, cannot be told from a torn write; it is cut and counted as a torn
//! tail. The count of messages lost to damage between two intact records is the seqs between
//! them: an append discarded by a failed sync also leaves a gap, so it is an upper bound.
//!
//! # Policies
//!
//! - Cursor: `ack` keeps the ack in memory and fsyncs the cursor (in place, alternating slots,
//!   so a torn slot write leaves the other, older slot) when [`ACK_PERSIST_EVERY`] acks would be
//!   unpersisted, when [`ACK_PERSIST_INTERVAL`] has passed since the last write (checked at each
//!   ack), before deleting a segment, on `purge`, on `close` and when the drainer asks
//!   ([`Store::persist_acks`], which custody does about [`ACK_SETTLE`] after a delivery, once for
//!   every ack since). A crash therefore re-delivers at most `ACK_PERSIST_EVERY - 1` acknowledged
//!   records, and a reader of the directory sees a delivery as gone within about `ACK_SETTLE`.
//!   With no valid slot at all, every record still on disk is delivered again
//!   ([`Recovery::cursor_lost`]).
//! - Sync errors: any I/O error in `append` or `sync` discards every append since the last
//!   successful fsync: the active segment is truncated back to the last synced offset (then
//!   re-extended, so the tail is zeros, and fsync'd) and a segment created since then is removed.
//!   An error in `append` is also reported by the next `sync` (which then discards the appends
//!   made after it too), so a batch is never confirmed in part. Seqs handed out are not reused in
//!   that process. If that repair fails as well, the queue is poisoned: `append`, `sync`, `ack`,
//!   `purge` and `close` return [`QueueError::Poisoned`] (reads still work, `close` still
//!   releases the lock) until it is reopened; recovery then treats the unsynced bytes as a torn
//!   tail, or finds them whole (then they are delivered: a duplicate, never a loss). Records of
//!   the batch that a segment roll-over had already fsync'd stay queued (the same).
//! - Limits ([`Limits`]) count every appended, unacknowledged record (synced or not) with its
//!   encoded size (36 + note + payload, rounded up to a multiple of 8): [`QueueStats::bytes`].
//!   Files on disk can exceed `max_bytes` by up to two segments (the acknowledged part of the
//!   oldest one and the preallocated rest of the newest).
//! - Memory: payloads stay on disk; per pending record an index entry of 40 bytes is kept, plus
//!   the front record (a cache for the drainer's retries).
//!
//! # Files
//!
//! - `store.rs`: the contract custody sees, [`Store`] and what crosses it.
//! - `format.rs`: the bytes described above (pure: no I/O).
//! - `recovery.rs`: [`SegmentLog::open`] and [`SegmentLog::open_read_only`], the rules under
//!   "Recovery".
//! - `survey.rs`: finding every intact record and every stretch of damage in a queue's bytes
//!   (pure; also the library side of the `queue_salvage` fuzz target).
//! - `salvage.rs`: media damage: keep the intact records, set the damaged bytes aside, swap in a
//!   clean queue; [`inspect`], the same survey for operators, changing nothing.
//! - `log.rs`: the open log's operations and the policies above.
//!
//! This file holds only the documentation, the module declarations and the re-exports, so that
//! `crate::queue::X` stays the path of every public item whichever file defines it.

mod format;
mod log;
mod recovery;
mod salvage;
mod store;
mod survey;

// `self::`: `log` alone reads like the log crate (a dev-dependency).
pub use self::log::{
    Limits, SegmentLog, ACK_PERSIST_EVERY, ACK_PERSIST_INTERVAL, ACK_SETTLE, MIN_SEGMENT_BYTES,
};
pub use format::RECORD_HEADER_BYTES;
pub use recovery::Recovery;
pub use salvage::{inspect, DamageFound, Inspection, SetAside};
pub use store::{Damage, QueueError, QueueStats, Record, Store};
pub use survey::fuzz_survey;

#[cfg(test)]
mod tests;
