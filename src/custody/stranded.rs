//! Stranded queues: a queue directory under `state_dir` that no configured store-and-forward
//! route (on the embedded backend) owns any more: a route renamed, removed, switched to JetStream
//! or to `delivery: forward`; and a JetStream stream laid out as a route's (or a route's
//! dead-letter stream, counted with its route), in an account a configured route uses, that no
//! configured route names. Their messages were acknowledged and
//! would never be delivered, so `run` and `check` warn about them and `queue list` shows them;
//! `queue move` hands an embedded one to a route.
//!
//! Reads only (a read-only view of each queue, stream information). Must not know how the
//! guard runs or delivers.

use std::path::{Path, PathBuf};

use crate::config::{Config, Delivery, JetStreamQueue, QueueBackend};
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

/// A stream on NATS that no configured route names (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StrandedStream {
    pub stream: String,
    /// The NATS servers it was found on (those of a configured route).
    pub servers: String,
    pub pending: u64,
    /// Dead letters: in its dead-letter stream `<S>_DEAD` (part of the route, never listed on
    /// its own), and any the older layout left in the stream.
    pub dead: u64,
    /// The stream's bytes, and its dead-letter stream's.
    pub bytes: u64,
    pub dead_bytes: u64,
    pub oldest_enqueued_ms: Option<u64>,
}

/// Every stream laid out as a route's, in the accounts the configured JetStream routes use,
/// that no configured route names. An account that cannot be reached within a few seconds is
/// skipped (logged at debug): the caller says nothing rather than something false.
pub async fn stranded_streams(config: &Config) -> Vec<StrandedStream> {
    let jetstream: Vec<&JetStreamQueue> = config
        .routes
        .iter()
        .filter_map(|r| match &r.delivery {
            Delivery::StoreAndForward(c) => match &c.backend {
                QueueBackend::JetStream(js) => Some(&**js),
                QueueBackend::Embedded => None,
            },
            Delivery::Forward => None,
        })
        .collect();
    let configured: Vec<&str> = jetstream.iter().map(|js| js.stream.as_str()).collect();
    // One look per account (the same servers and credentials).
    let mut accounts: Vec<&JetStreamQueue> = Vec::new();
    for js in &jetstream {
        if !accounts
            .iter()
            .any(|a| a.servers == js.servers && a.credentials == js.credentials)
        {
            accounts.push(js);
        }
    }
    let mut out = Vec::new();
    for cfg in accounts {
        let look = async {
            let client = super::jetstream::connect(cfg, "mllp-guard stranded streams", false)
                .await
                .map_err(|e| e.to_string())?;
            let mut js = async_nats::jetstream::new(client.clone());
            js.set_timeout(cfg.publish_timeout);
            let mut found = Vec::new();
            for stream in super::jetstream::unowned_streams(&js, &configured)
                .await
                .map_err(|e| e.to_string())?
            {
                let depth = super::jetstream::depth(&js, &stream)
                    .await
                    .map_err(|e| e.to_string())?;
                found.push(StrandedStream {
                    stream,
                    servers: cfg.servers.join(", "),
                    pending: depth.pending,
                    dead: depth.dead,
                    bytes: depth.bytes,
                    dead_bytes: depth.dead_bytes,
                    oldest_enqueued_ms: depth.oldest_enqueued_ms,
                });
            }
            let _ = client.flush().await;
            Ok::<_, String>(found)
        };
        match tokio::time::timeout(std::time::Duration::from_secs(10), look).await {
            Ok(Ok(found)) => out.extend(found),
            Ok(Err(err)) => {
                tracing::debug!(servers = %cfg.servers.join(", "), error = %err, "cannot look for stranded JetStream streams")
            }
            Err(_) => {
                tracing::debug!(servers = %cfg.servers.join(", "), "looking for stranded JetStream streams timed out")
            }
        }
    }
    out
}

/// The warning `run` and `check` give for one stranded stream.
pub fn stream_warning(s: &StrandedStream) -> String {
    format!(
        "NATS JetStream ({}) holds the stream of no configured route: {} ({} pending, {} dead letters); these messages were acknowledged and will not be delivered: name it again in the route's queue.jetstream.stream, or deliver them elsewhere and delete the stream",
        s.servers, s.stream, s.pending, s.dead
    )
}
