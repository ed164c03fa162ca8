//! A running route's dead letters, for the console: what they are (metadata only, never a
//! payload) and replaying them into the queue, on both backends, while the guard runs.
//!
//! Embedded: the dead-letter log is held exclusively for the replay (the drainer, which opens it
//! only to add one, retries later), each letter is appended through the route's committer like
//! a new message (durable before anything is removed), then the dead letters are purged: a crash
//! in between replays twice, never loses one. JetStream: [`super::jetstream::replay`]. Must not
//! know HTTP or who asked.

use std::path::PathBuf;

use tokio::sync::{mpsc, oneshot};

use super::log::{now_ms, AppendRequest};
use crate::queue::{Limits, QueueError, Record, SegmentLog, Store};
use crate::wire::hl7::printable;

/// One dead letter, described without its payload.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeadLetter {
    pub seq: u64,
    /// MSH-10 (empty when the header cannot be read).
    pub msh10: String,
    /// MSH-9.
    pub msh9: String,
    /// Payload bytes.
    pub size: usize,
    /// Seconds since it was first queued.
    pub age_s: u64,
    pub reason: String,
}

impl DeadLetter {
    pub(super) fn of(record: &Record) -> DeadLetter {
        let (msh9, msh10) = match crate::wire::hl7::find_header(&record.payload) {
            Ok(h) => (printable(h.message_type()), printable(h.control_id())),
            Err(_) => (String::new(), String::new()),
        };
        DeadLetter {
            seq: record.seq,
            msh10,
            msh9,
            size: record.payload.len(),
            age_s: now_ms().saturating_sub(record.enqueued_at_ms) / 1000,
            reason: record.note.clone(),
        }
    }
}

/// How long the console waits for the drainer to let go of the dead-letter log.
const LOCK_TRIES: u32 = 50;

/// Up to `limit` dead letters of the embedded log in `dir`.
pub(super) async fn list_embedded(dir: PathBuf, limit: usize) -> Result<Vec<DeadLetter>, String> {
    let records = tokio::task::spawn_blocking(move || -> Result<Vec<Record>, String> {
        if !dir.exists() {
            return Ok(Vec::new());
        }
        let mut log = SegmentLog::open_read_only(&dir).map_err(|e| e.to_string())?;
        log.pending(true, limit).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())??;
    Ok(records.iter().map(DeadLetter::of).collect())
}

/// How many dead letters the embedded log in `dir` holds.
pub(super) fn count_embedded(dir: &std::path::Path) -> u64 {
    if !dir.exists() {
        return 0;
    }
    SegmentLog::open_read_only(dir).map_or(0, |log| log.stats().messages)
}

/// Moves every dead letter of the embedded log in `dir` back through the route's committer
/// (`appends`), in order, then purges them; how many.
pub(super) async fn replay_embedded(
    dir: PathBuf,
    limits: Limits,
    appends: &mpsc::UnboundedSender<AppendRequest>,
) -> Result<u64, String> {
    if !dir.exists() {
        return Ok(0);
    }
    let mut dead = None;
    for _ in 0..LOCK_TRIES {
        let dir = dir.clone();
        match tokio::task::spawn_blocking(move || SegmentLog::open(&dir, limits))
            .await
            .map_err(|e| e.to_string())?
        {
            Ok((log, _)) => {
                dead = Some(log);
                break;
            }
            // The drainer is adding one right now.
            Err(QueueError::Locked { .. }) => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            Err(err) => return Err(err.to_string()),
        }
    }
    let mut dead = dead.ok_or("the dead letters are busy; try again")?;
    let letters = match dead.pending(true, usize::MAX) {
        Ok(letters) => letters,
        Err(err) => {
            let _ = dead.close();
            return Err(err.to_string());
        }
    };
    for letter in &letters {
        let (done, stored) = oneshot::channel();
        let request = AppendRequest {
            payload: letter.payload.clone(),
            enqueued_at_ms: letter.enqueued_at_ms,
            remember: None,
            done,
        };
        let stored = match appends.send(request) {
            Ok(()) => stored.await.map_err(|_| "the queue is closing".to_string()),
            Err(_) => Err("the queue is closing".to_string()),
        };
        if let Err(err) = stored.and_then(|r| r.map_err(|e| e.to_string())) {
            let _ = dead.close();
            return Err(format!("replay stopped (nothing removed from the dead letters; replaying again may queue some twice): {err}"));
        }
    }
    // Durable in the queue first (the committer answered), then gone from the dead letters.
    tokio::task::spawn_blocking(move || -> Result<(), QueueError> {
        dead.purge()?;
        dead.close()
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    Ok(letters.len() as u64)
}
