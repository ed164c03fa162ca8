//! Stranded queues: a queue directory under `state_dir` that no configured store-and-forward
//! route (on the embedded backend) owns any more: a route renamed, removed, switched to JetStream
//! or to `delivery: forward`. Its messages were acknowledged and would never be delivered, so
//! `run` and `check` warn about it and `queue list` shows it; `queue move` hands it to a route.
//!
//! Reads only (a read-only view of each queue). Must not know how the guard runs or delivers.

use std::path::{Path, PathBuf};

use crate::config::{Config, Delivery, QueueBackend};
use crate::queue::{SegmentLog, Store};

/// A queue directory that belongs to no configured route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StrandedQueue {
    /// The directory's name: the route it belonged to.
    pub name: String,
    pub dir: PathBuf,
    /// Messages acknowledged and not delivered.
    pub pending: u64,
    /// Their encoded size.
    pub bytes: u64,
}

/// The names of the routes whose embedded queues live under `state_dir`.
fn owned(config: &Config) -> Vec<&str> {
    config
        .routes
        .iter()
        .filter(|r| {
            matches!(&r.delivery, Delivery::StoreAndForward(c) if c.backend == QueueBackend::Embedded)
        })
        .map(|r| r.name.as_str())
        .collect()
}

/// Whether `dir` holds a queue (its cursor or a segment).
fn is_queue(dir: &Path) -> bool {
    dir.join("cursor").exists()
        || std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        })
}

/// Every queue under `state_dir` that no route owns, with what is pending in it (a queue that
/// cannot be read counts as 0 pending, and is still listed).
pub fn stranded_queues(config: &Config) -> Vec<StrandedQueue> {
    let Some(state_dir) = &config.state_dir else {
        return Vec::new();
    };
    let owned = owned(config);
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return Vec::new();
    };
    let mut out: Vec<StrandedQueue> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let dir = e.path();
            if owned.contains(&name.as_str()) || !is_queue(&dir) {
                return None;
            }
            let stats = SegmentLog::open_read_only(&dir).ok().map(|log| log.stats());
            Some(StrandedQueue {
                name,
                dir,
                pending: stats.as_ref().map_or(0, |s| s.messages),
                bytes: stats.as_ref().map_or(0, |s| s.bytes),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The warning `run` and `check` give for one stranded queue.
pub fn warning(q: &StrandedQueue) -> String {
    format!(
        "state_dir holds the queue of no configured route: {} ({} pending); these messages were acknowledged and will not be delivered: rename the route back, or hand the queue to its new route with `mllp-guard queue move --config FILE --from {} --to NEW`",
        q.dir.display(),
        q.pending,
        q.name
    )
}
