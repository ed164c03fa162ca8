//! The junction between a session and delivery: what happens to a message once it is admitted.
//!
//! Today there is one delivery mode, forward: send the frame upstream, relay the upstream's
//! verified ack unchanged, and turn any upstream failure into the route's chosen answer (a
//! negative ack built here, or closing the sender's connection). It never invents a positive ack.
//! Custody (store-and-forward) will be the second mode here. Must not know sockets, TLS or peers.

use bytes::Bytes;

use crate::ack;
use crate::codec::{self, Frame};
use crate::config::OnUpstreamFailure;
use crate::hl7::{AckCode, Header};
use crate::upstream::{Upstream, UpstreamConn, UpstreamError};

/// What the session must do with the sender after dispatching one message.
#[derive(Debug)]
pub enum Answer {
    /// Write this ack frame to the sender. `code` is its MSA-1; `failure` is set when we built it
    /// ourselves because the upstream failed.
    Ack {
        wire: Bytes,
        code: AckCode,
        failure: Option<UpstreamError>,
    },
    /// Close the sender's connection without an answer (`on_upstream_failure: close`).
    Close(UpstreamError),
}

/// A route's delivery.
pub struct Dispatch {
    upstream: Upstream,
    on_upstream_failure: OnUpstreamFailure,
}

impl Dispatch {
    pub fn forward(upstream: Upstream, on_upstream_failure: OnUpstreamFailure) -> Dispatch {
        Dispatch {
            upstream,
            on_upstream_failure,
        }
    }

    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// Delivers one message and says what to answer. `slot` is the session's paired upstream
    /// connection.
    pub async fn deliver(
        &self,
        slot: &mut Option<UpstreamConn>,
        frame: &Frame,
        header: &Header<'_>,
    ) -> Answer {
        match self
            .upstream
            .exchange(slot, frame, header.control_id())
            .await
        {
            Ok(reply) => Answer::Ack {
                wire: reply.wire,
                code: reply.code,
                failure: None,
            },
            Err(err) => match self.on_upstream_failure {
                OnUpstreamFailure::Close => Answer::Close(err),
                OnUpstreamFailure::Nack => {
                    let text = format!("message not delivered: {err}");
                    Answer::Ack {
                        wire: negative_ack(Some(header), AckCode::AE, &text),
                        code: AckCode::AE,
                        failure: Some(err),
                    }
                }
            },
        }
    }
}

/// A framed negative ack built by the guard itself (sender and receiver swapped, MSA-2 = the
/// message's control id), or, when the message has no readable header, one with an empty MSA-2.
pub fn negative_ack(header: Option<&Header<'_>>, code: AckCode, text: &str) -> Bytes {
    let id = own_control_id();
    let now = ack::timestamp(std::time::SystemTime::now());
    let payload = match header {
        Some(header) => ack::build(header, code, text, &id, &now),
        None => ack::build_without_header(code, text, &id, &now),
    };
    codec::encode(&payload)
}

/// A unique control id for acks we build: "MG", the process start time, and a counter, in hex
/// (at most 20 characters, the v2.3 limit of MSH-10).
fn own_control_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static START: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let start = *START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() & 0xFFFF_FFFF)
            .unwrap_or(0)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xFFFF_FFFF;
    format!("MG{start:08X}{n:08X}")
}
