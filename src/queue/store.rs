//! The contract between custody and a queue backend: the [`Store`] trait and what crosses it,
//! [`Record`], [`QueueStats`], [`Damage`] and [`QueueError`]. The segment log implements it.
//! Must not know how or where a backend keeps its records.

use std::path::PathBuf;

use bytes::Bytes;

/// What can go wrong with a queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// A limit would be exceeded: the message is refused, nothing is dropped.
    #[error("queue is full ({reason})")]
    Full { reason: String },
    /// Another process (or another open handle) holds the queue directory.
    #[error("queue directory {dir} is in use by another mllp-guard process")]
    Locked { dir: PathBuf },
    #[error("queue I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Damage that cannot be a torn write (records known durable are unreadable or missing).
    #[error("queue record {seq} in {path} is corrupt: {reason}")]
    Corrupt {
        seq: u64,
        path: PathBuf,
        reason: String,
    },
    /// One record can never fit (note over 65535 bytes, record over 4 GiB or over `max_bytes`).
    #[error("queue record too large: {reason}")]
    TooLarge { reason: String },
    /// `ack` named a record that is not the front.
    #[error("cannot acknowledge seq {seq}: {}", match front {
        Some(front) => format!("the front of the queue is seq {front}"),
        None => "the queue is empty".to_string(),
    })]
    NotFront { seq: u64, front: Option<u64> },
    #[error("queue opened read-only: {op} is not allowed")]
    ReadOnly { op: &'static str },
    /// A failed write could not be undone; reopen the queue (recovery cuts the tail).
    #[error("queue is unusable after a failed repair ({reason}); reopen it")]
    Poisoned { reason: String },
    #[error("queue is closed")]
    Closed,
    #[error("invalid queue limits: {reason}")]
    InvalidLimits { reason: String },
}

/// One stretch of damaged bytes, set aside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The sequence numbers the bytes stood for, `first_seq..=last_seq` (empty when
    /// `last_seq < first_seq`: damage between records, no message in it).
    pub first_seq: u64,
    pub last_seq: u64,
    /// Messages among them that were acknowledged to their sender and not yet delivered: lost.
    pub lost: u64,
    /// MSH-10 control ids still readable in the bytes (at most 100).
    pub control_ids: Vec<String>,
    /// The file the bytes were moved to (a `.txt` beside it describes them).
    pub file: PathBuf,
}

/// One queued message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub enqueued_at_ms: u64,
    /// Small text, e.g. a dead-letter reason; usually empty.
    pub note: String,
    /// Empty when read without payload ([`Store::pending`] with `with_payload = false`).
    pub payload: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct QueueStats {
    /// Appended and not acknowledged (including appends not yet synced).
    pub messages: u64,
    /// Encoded size of those records: 36 + note + payload, rounded up to a multiple of 8.
    pub bytes: u64,
    pub oldest_enqueued_ms: Option<u64>,
    /// The seq the next append gets.
    pub next_seq: u64,
}

/// The storage behind custody; a second backend (NATS JetStream) will implement it later.
pub trait Store: Send {
    /// Appends one record (NOT yet durable). Refuses with `Full` when limits would be exceeded
    /// (never drops). Returns its seq: increasing; the seq of a durable record is never handed
    /// out again, also across restarts (one lost with its unsynced append in a crash may be).
    fn append(
        &mut self,
        payload: &[u8],
        note: &str,
        enqueued_at_ms: u64,
    ) -> Result<u64, QueueError>;
    /// Makes every append so far durable: fdatasync of the segment written (`sync_all` and a
    /// directory fsync when the segment file is new). After an error here, the appends since
    /// the last successful sync are NOT stored and the caller answers them negatively; the
    /// queue rewinds to the last synced offset, or is poisoned if that fails (module docs,
    /// "Sync errors").
    fn sync(&mut self) -> Result<(), QueueError>;
    /// The oldest record not yet acknowledged, read from disk (or a one-record cache), if any.
    /// Only durable (synced) records are returned, never one appended but not synced.
    fn front(&mut self) -> Result<Option<Record>, QueueError>;
    /// The upstream has the record `seq` (which must be the front, else `NotFront`): advance the
    /// ack cursor; delete segments whose records are all acknowledged. The cursor is fsync'd
    /// every [`ACK_PERSIST_EVERY`] acks, after [`ACK_PERSIST_INTERVAL`], before a segment
    /// deletion, on purge and on close: a crash re-delivers at most `ACK_PERSIST_EVERY - 1`.
    ///
    /// [`ACK_PERSIST_EVERY`]: super::ACK_PERSIST_EVERY
    /// [`ACK_PERSIST_INTERVAL`]: super::ACK_PERSIST_INTERVAL
    fn ack(&mut self, seq: u64) -> Result<(), QueueError>;
    /// The front record is damaged on disk (`front` returned `Corrupt`): move its bytes aside
    /// (`damaged/`) and acknowledge it, so that delivery goes on with the next. `Ok(None)` when
    /// the front reads fine (nothing is done).
    fn set_aside_front(&mut self) -> Result<Option<Damage>, QueueError>;
    /// Fsyncs the cursor now if an ack is not yet in it (one write for every ack since the last);
    /// returns whether it wrote. The drainer calls it shortly after a delivery, so that readers
    /// of the directory (`queue list` while the guard runs) and a restart after a crash see the
    /// delivered messages as gone without an fsync per ack.
    fn persist_acks(&mut self) -> Result<bool, QueueError>;
    /// Pending (unacknowledged, durable) records in order, at most `limit`, with empty payloads
    /// unless `with_payload` (for `queue list/show`).
    fn pending(&mut self, with_payload: bool, limit: usize) -> Result<Vec<Record>, QueueError>;
    /// Acknowledges everything pending (purge); returns how many were removed.
    fn purge(&mut self) -> Result<u64, QueueError>;
    fn stats(&self) -> QueueStats;
    /// Persists the cursor durably and releases the lock (also done on Drop, best effort).
    fn close(&mut self) -> Result<(), QueueError>;
}
