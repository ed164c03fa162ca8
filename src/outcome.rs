//! What became of one message: the [`Answer`] the sender gets, and, when something failed, a
//! [`Failure`] saying which side failed, whether trying again can help, and why.
//!
//! One answer type travels from the place that decides (custody, a forward to the receiver, a
//! refusal in the session) to the session that writes it, with no conversion on the way. Each
//! error type at a boundary of the data path (the receiver's [`crate::upstream::UpstreamError`],
//! custody's [`crate::custody::NotQueued`], JetStream's
//! [`crate::custody::jetstream::JetStreamError`]) describes itself through [`Fault`]. Pure: must
//! not know sockets, the queue or how an answer is written.

use bytes::Bytes;

use crate::wire::hl7::AckCode;

/// Which side of the guard a failure is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The sender's message or connection (oversize, no header, rate, rules).
    Sender,
    /// The receiver: unreachable, too slow, a wrong ack.
    Receiver,
    /// The custody queue: full, not durable, its JetStream unreachable.
    Queue,
    /// The guard itself (a task that stopped).
    Internal,
}

impl Side {
    /// The side's name, as in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Sender => "sender",
            Side::Receiver => "receiver",
            Side::Queue => "queue",
            Side::Internal => "internal",
        }
    }
}

/// What an error at a boundary of the data path says about itself.
pub trait Fault: std::error::Error {
    /// Which side failed.
    fn side(&self) -> Side;
    /// A short, stable label for logs and metrics.
    fn reason(&self) -> &'static str;
    /// Whether the same message may succeed if tried again later (a resend, a redelivery, a
    /// reconnect); `false` when retrying soon cannot fix it.
    fn retry_helps(&self) -> bool;
    /// The negative ack the sender gets when this stops its message: AE (application error:
    /// the guard or the receiver could not take it now; the default) or AR (the message itself
    /// is refused, so resending it is pointless).
    fn ack(&self) -> AckCode {
        AckCode::AE
    }

    /// The short fixed text the sender's ack carries (`receiver unavailable`, `queue full`, ...):
    /// never an address, a name or an OS error of the inside; the detail ([`Fault::failure`])
    /// goes to the log line with the message's control id.
    fn ack_text(&self) -> &'static str {
        match self.side() {
            Side::Receiver => "receiver unavailable",
            Side::Queue => "message not queued",
            Side::Internal => "internal error",
            Side::Sender => "message refused",
        }
    }

    /// The failure as it travels with an answer: the label, the side, and the error's text.
    fn failure(&self) -> Failure {
        Failure {
            side: self.side(),
            reason: self.reason(),
            detail: self.to_string(),
            retry_helps: self.retry_helps(),
        }
    }
}

/// Why a message was not delivered, for the log line: which side failed, a stable label, the
/// details (never payload), and whether trying again can help.
#[derive(Debug)]
pub struct Failure {
    pub side: Side,
    pub reason: &'static str,
    pub detail: String,
    pub retry_helps: bool,
}

/// What the session must do with the sender after one of its messages.
#[derive(Debug)]
pub enum Answer {
    /// Write this ack (a payload; the session frames it). `outcome` names what happened (for the
    /// log line); `problem` says why when the ack is one we built because something failed.
    Ack {
        ack: Bytes,
        code: AckCode,
        outcome: &'static str,
        /// The message reached the receiver or the queue (whatever the ack code says): the MLLP
        /// release 2 commit block is ACK, not NAK.
        committed: bool,
        problem: Option<Failure>,
    },
    /// Write nothing and keep the connection (the sender asked for no ack of this kind).
    Silent {
        code: AckCode,
        outcome: &'static str,
        committed: bool,
    },
    /// Close the sender's connection without an answer.
    Close(Failure),
}

impl Answer {
    /// A negative ack for a message the guard refused itself (never delivered, never queued).
    pub fn refused(ack: Bytes, code: AckCode, outcome: &'static str) -> Answer {
        Answer::Ack {
            ack,
            code,
            outcome,
            committed: false,
            problem: None,
        }
    }
}
