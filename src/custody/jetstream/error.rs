//! What a JetStream operation can fail with, and what that says for the sender (through
//! [`Fault`]). Must not know what was being done with the stream beyond the label.

use std::time::Duration;

use crate::outcome::{Fault, Side};

/// What a JetStream operation can fail with. The texts are the ones logs and negative acks
/// carry (PHI-free); the causes are the NATS client's own errors.
#[derive(Debug, thiserror::Error)]
pub enum JetStreamError {
    #[error("reading NATS credentials {}: {source}", .path.display())]
    Credentials {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot connect to NATS ({servers}): {source}")]
    Connect { servers: String, source: Cause },
    #[error("stream {stream}: {source}")]
    Stream { stream: String, source: Cause },
    #[error("consumer {consumer} on stream {stream}: {source}")]
    Consumer {
        consumer: &'static str,
        stream: String,
        source: Cause,
    },
    #[error("not connected to NATS JetStream yet")]
    NotReady,
    #[error("the connection to NATS is down")]
    Down,
    #[error("JetStream publish failed: {0}")]
    Publish(Cause),
    #[error("JetStream did not confirm the publish: {0}")]
    NotConfirmed(Cause),
    /// No stream takes the subject (it was lost; custody makes it again).
    #[error("no JetStream stream takes the route's messages (it is being made again)")]
    NoStream,
    #[error("JetStream did not confirm the publish within {}", humantime::format_duration(*.0))]
    ConfirmTimeout(Duration),
    /// The stream is at its message or byte limit and refused the message (not stored).
    #[error("the JetStream stream is full: {0}")]
    Full(Cause),
    #[error("{0}")]
    StreamInfo(Cause),
    #[error("reading stream {stream}: {source}")]
    Read { stream: String, source: Cause },
    #[error("deleting dead letter {seq}: {source}")]
    DeleteDeadLetter { seq: u64, source: Cause },
    #[error("purging {subject}: {source}")]
    Purge { subject: String, source: Cause },
    #[error("{0}")]
    Settle(Cause),
    #[error("timed out")]
    SettleTimeout,
}

/// The NATS client's error behind a [`JetStreamError`].
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

impl Fault for JetStreamError {
    fn side(&self) -> Side {
        Side::Queue
    }

    fn reason(&self) -> &'static str {
        match self {
            JetStreamError::Credentials { .. } => "nats_credentials",
            JetStreamError::Connect { .. } => "nats_connect",
            JetStreamError::Stream { .. } => "stream",
            JetStreamError::Consumer { .. } => "consumer",
            JetStreamError::NotReady => "not_ready",
            JetStreamError::Down => "nats_down",
            JetStreamError::Publish(_) => "publish",
            JetStreamError::NotConfirmed(_) => "publish_not_confirmed",
            JetStreamError::NoStream => "no_stream",
            JetStreamError::ConfirmTimeout(_) => "publish_timeout",
            JetStreamError::Full(_) => "queue_full",
            JetStreamError::StreamInfo(_) => "stream_info",
            JetStreamError::Read { .. } => "read",
            JetStreamError::DeleteDeadLetter { .. } => "delete",
            JetStreamError::Purge { .. } => "purge",
            JetStreamError::Settle(_) => "settle",
            JetStreamError::SettleTimeout => "settle_timeout",
        }
    }

    /// Everything but an unreadable credentials file: NATS may be back, the stream elected.
    fn retry_helps(&self) -> bool {
        !matches!(self, JetStreamError::Credentials { .. })
    }
}

/// A failure to reach or read a route's stream.
pub(super) fn stream_error(
    stream: &str,
    err: impl std::error::Error + Send + Sync + 'static,
) -> JetStreamError {
    JetStreamError::Stream {
        stream: stream.to_string(),
        source: Box::new(err),
    }
}
