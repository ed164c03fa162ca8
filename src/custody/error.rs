//! Why custody could not take a message: the committer stopped, the embedded log refused the
//! append or could not make it durable, or JetStream did not confirm it; through [`Fault`] each
//! says which side failed and whether trying again can help. Must not know senders.

use std::sync::Arc;

use super::jetstream::JetStreamError;
use crate::outcome::{Fault, Side};
use crate::queue::QueueError;

/// Why a message was not taken into custody. The text follows "message not queued: " in the
/// sender's negative ack and the log line.
#[derive(Debug, thiserror::Error)]
pub enum NotQueued {
    /// The committer thread is gone (the guard is stopping, or it panicked).
    #[error("the queue committer stopped")]
    CommitterStopped,
    /// The embedded log refused the append (full, too large, poisoned).
    #[error("{0}")]
    Refused(QueueError),
    /// The batch's fsync failed: nothing of it is acknowledged.
    #[error("the queue could not be made durable: {0}")]
    NotDurable(Arc<QueueError>),
    /// JetStream did not confirm the publish.
    #[error("{0}")]
    JetStream(#[from] JetStreamError),
}

impl Fault for NotQueued {
    fn side(&self) -> Side {
        match self {
            NotQueued::CommitterStopped => Side::Internal,
            NotQueued::JetStream(err) => err.side(),
            NotQueued::Refused(_) | NotQueued::NotDurable(_) => Side::Queue,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            NotQueued::CommitterStopped => "committer_stopped",
            NotQueued::Refused(QueueError::Full { .. }) => "queue_full",
            NotQueued::Refused(QueueError::TooLarge { .. }) => "too_large",
            NotQueued::Refused(_) => "queue_error",
            NotQueued::NotDurable(_) => "not_durable",
            NotQueued::JetStream(err) => err.reason(),
        }
    }

    /// A full queue drains, a failed fsync may pass; a record that can never fit will not, and
    /// a stopped committer does not come back in this process.
    fn retry_helps(&self) -> bool {
        match self {
            NotQueued::CommitterStopped => false,
            NotQueued::Refused(QueueError::TooLarge { .. }) => false,
            NotQueued::Refused(_) | NotQueued::NotDurable(_) => true,
            NotQueued::JetStream(err) => err.retry_helps(),
        }
    }

    fn ack_text(&self) -> &'static str {
        match (self.reason(), self.side()) {
            ("queue_full", _) => "queue full",
            // The publish went out and its confirmation did not come back: the stream may hold
            // it. Resent unchanged it has the same Nats-Msg-Id, and the stream's duplicate
            // window drops the second copy; re-keyed, it would be a duplicate.
            ("publish_timeout" | "publish_not_confirmed", _) => {
                "not confirmed, may be stored: resend it unchanged"
            }
            ("too_large", _) => "message too large",
            (_, Side::Internal) => "internal error",
            _ => "message not queued",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::custody::jetstream::JetStreamError;

    #[test]
    fn an_unconfirmed_publish_says_the_message_may_be_stored() {
        let timeout = NotQueued::JetStream(JetStreamError::ConfirmTimeout(
            std::time::Duration::from_secs(5),
        ));
        assert_eq!(
            timeout.ack_text(),
            "not confirmed, may be stored: resend it unchanged"
        );
        assert!(timeout.ack_text().len() <= 80);
        let down = NotQueued::JetStream(JetStreamError::Down);
        assert_eq!(down.ack_text(), "message not queued");
        // A full stream refused it: not stored, and not ambiguous.
        let full = NotQueued::JetStream(JetStreamError::Full("maximum messages exceeded".into()));
        assert_eq!(full.ack_text(), "queue full");
    }
}
