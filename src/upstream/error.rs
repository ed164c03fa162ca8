//! Why an exchange with the receiver failed: one error type for the receiver's side of the
//! guard; through [`Fault`] it says that the receiver failed, its stable label, whether retrying
//! can help, and the ack that follows (its text becomes MSA-3 of the sender's AE). Must not know senders or how the failure is answered.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::outcome::{Fault, Side};
use crate::wire::ack::AckMismatch;
use crate::wire::commit::CommitError;

/// Why an exchange with the upstream failed. The text is PHI-free: it becomes MSA-3 of the
/// negative ack the sender receives.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {addr} could not be resolved: {source}")]
    Resolve { addr: String, source: io::Error },
    #[error("upstream {addr} is unreachable: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("no connection to upstream {addr} within {}", humantime::format_duration(*.timeout))]
    ConnectTimeout { addr: String, timeout: Duration },
    #[error("egress proxy ({proxy}) gave no tunnel to upstream {addr}: {reason}")]
    Proxy {
        proxy: String,
        addr: String,
        reason: crate::net::egress::EgressError,
    },
    #[error("TLS handshake with upstream {addr} failed: {source}")]
    Handshake { addr: String, source: io::Error },
    #[error("sending to the upstream failed: {0}")]
    Send(io::Error),
    #[error("reading the upstream's ack failed: {0}")]
    Receive(io::Error),
    #[error("the upstream closed the connection without acking")]
    ClosedBeforeAck,
    #[error("no ack from the upstream within {}", humantime::format_duration(*.0))]
    AckTimeout(Duration),
    #[error("the upstream's reply exceeds max_ack_bytes ({0} bytes)")]
    AckOversize(u64),
    #[error("the upstream's ack does not match: {0}")]
    AckMismatch(AckMismatch),
    #[error("all {size} upstream connections stayed busy for {}", humantime::format_duration(*.waited))]
    PoolBusy { size: usize, waited: Duration },
    #[error("upstream {addr} is unreachable (last attempt: {last}); next attempt in {} ms", .retry_in.as_millis())]
    Backoff {
        addr: String,
        retry_in: Duration,
        last: String,
    },
    #[error("no receiver connected in to {listen} within {}", humantime::format_duration(*.waited))]
    NoReceiver {
        listen: SocketAddr,
        waited: Duration,
    },
    #[error("the upstream did not commit the message (MLLP release 2): {0}")]
    NotCommitted(CommitError),
    #[error("the upstream sent too many messages while an ack was awaited")]
    Flooded,
}

impl UpstreamError {
    /// Whether the failed attempt may have reached the receiver: bytes of the message were
    /// (or may have been) sent before it failed, so sending it again may give the receiver a
    /// second copy. False when no connection to the receiver was made.
    pub fn may_have_reached_the_receiver(&self) -> bool {
        match self {
            UpstreamError::Resolve { .. }
            | UpstreamError::Connect { .. }
            | UpstreamError::ConnectTimeout { .. }
            | UpstreamError::Proxy { .. }
            | UpstreamError::Handshake { .. }
            | UpstreamError::PoolBusy { .. }
            | UpstreamError::Backoff { .. }
            | UpstreamError::NoReceiver { .. } => false,
            UpstreamError::Send(_)
            | UpstreamError::Receive(_)
            | UpstreamError::ClosedBeforeAck
            | UpstreamError::AckTimeout(_)
            | UpstreamError::AckOversize(_)
            | UpstreamError::AckMismatch(_)
            | UpstreamError::NotCommitted(_)
            | UpstreamError::Flooded => true,
        }
    }
}

impl Fault for UpstreamError {
    fn side(&self) -> Side {
        Side::Receiver
    }

    fn reason(&self) -> &'static str {
        match self {
            UpstreamError::Resolve { .. } => "resolve",
            UpstreamError::Connect { .. } => "connect",
            UpstreamError::ConnectTimeout { .. } => "connect_timeout",
            UpstreamError::Proxy { .. } => "proxy",
            UpstreamError::Handshake { .. } => "tls_handshake",
            UpstreamError::Send(_) => "send",
            UpstreamError::Receive(_) => "receive",
            UpstreamError::ClosedBeforeAck => "closed_before_ack",
            UpstreamError::AckTimeout(_) => "ack_timeout",
            UpstreamError::AckOversize(_) => "ack_oversize",
            UpstreamError::AckMismatch(_) => "ack_mismatch",
            UpstreamError::PoolBusy { .. } => "pool_busy",
            UpstreamError::Backoff { .. } => "reconnect_backoff",
            UpstreamError::NoReceiver { .. } => "no_receiver",
            UpstreamError::NotCommitted(_) => "not_committed",
            UpstreamError::Flooded => "flooded",
        }
    }

    /// Everything but a permanent handshake failure ([`UpstreamError::is_permanent`]): the
    /// receiver may be back, answer in time or answer right on the next attempt.
    fn retry_helps(&self) -> bool {
        !self.is_permanent()
    }

    fn ack_text(&self) -> &'static str {
        match self {
            UpstreamError::AckTimeout(_)
            | UpstreamError::ClosedBeforeAck
            | UpstreamError::Receive(_)
            | UpstreamError::NotCommitted(_) => "no reply from receiver",
            UpstreamError::AckMismatch(_)
            | UpstreamError::AckOversize(_)
            | UpstreamError::Flooded => "invalid reply from receiver",
            UpstreamError::PoolBusy { .. } => "receiver busy",
            _ => "receiver unavailable",
        }
    }
}

impl UpstreamError {
    /// A failure that retrying soon cannot fix: the peer's certificate does not verify, or it
    /// refuses our TLS version or ciphers. Reconnects then wait the maximum backoff.
    pub fn is_permanent(&self) -> bool {
        let UpstreamError::Handshake { source, .. } = self else {
            return false;
        };
        source
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .is_some_and(|tls| {
                matches!(
                    tls,
                    rustls::Error::InvalidCertificate(_)
                        | rustls::Error::PeerIncompatible(_)
                        | rustls::Error::AlertReceived(_)
                        | rustls::Error::NoCertificatesPresented
                )
            })
    }

    /// True when the message certainly or possibly never reached the receiver intact and the
    /// connection was reused: worth one more try on a fresh connection.
    pub(super) fn worth_retrying_fresh(&self) -> bool {
        matches!(
            self,
            UpstreamError::Send(_)
                | UpstreamError::ClosedBeforeAck
                | UpstreamError::Receive(_)
                | UpstreamError::NotCommitted(CommitError::Send(_) | CommitError::Closed)
        )
    }
}
