//! The junction between a session and delivery: what happens to a message once it is admitted.
//!
//! Two modes. **Forward**: send the frame upstream, relay the upstream's verified ack unchanged,
//! and turn any upstream failure into the route's chosen answer (a negative ack built here, or
//! closing the sender's connection); it never invents a positive ack. **Custody**
//! (store-and-forward): hand the message to [`crate::custody`], which stores it durably and
//! answers for the upstream. Must not know sockets, TLS or peers.

use std::sync::Arc;

use bytes::Bytes;

use crate::config::OnUpstreamFailure;
use crate::custody::{Custody, Verdict};
use crate::net::proxy_protocol::Origin;
use crate::upstream::{PairedWith, Upstream, UpstreamConn};
use crate::wire::ack;
use crate::wire::codec::Frame;
use crate::wire::hl7::{AckCode, Header};

/// What the session must do with the sender after dispatching one message.
#[derive(Debug)]
pub enum Answer {
    /// Write this ack (a payload; the session frames it). `outcome` names what happened (for the log line); `problem` says
    /// why when the ack is one we built because something failed.
    Ack {
        ack: Bytes,
        code: AckCode,
        outcome: &'static str,
        /// The message reached the receiver or the queue (whatever the ack code says).
        committed: bool,
        problem: Option<Problem>,
    },
    /// Write nothing and keep the connection (the sender asked for no ack of this kind).
    Silent {
        code: AckCode,
        outcome: &'static str,
        committed: bool,
    },
    /// Close the sender's connection without an answer.
    Close(Problem),
}

/// Why a message was not delivered, for the log line: a stable label and the details.
#[derive(Debug)]
pub struct Problem {
    pub reason: &'static str,
    pub detail: String,
}

/// A route's delivery.
pub enum Dispatch {
    Forward {
        upstream: Arc<Upstream>,
        on_upstream_failure: OnUpstreamFailure,
    },
    Custody(Arc<Custody>),
}

impl Dispatch {
    /// The upstream address, for logs.
    pub fn describe(&self) -> String {
        match self {
            Dispatch::Forward { upstream, .. } => upstream.address(),
            Dispatch::Custody(custody) => {
                format!("{} (store-and-forward)", custody.upstream_address())
            }
        }
    }

    /// Delivers one message and says what to answer. `slot` is the session's paired upstream
    /// connection (forward mode) and `origin` the sender it is paired with.
    pub async fn deliver(
        &self,
        slot: &mut Option<UpstreamConn>,
        frame: &Frame,
        header: &Header<'_>,
        origin: Origin,
    ) -> Answer {
        match self {
            // Boxed for the same reason as `Upstream::open`: storing a message is a larger
            // state than forwarding it, and a durable write costs far more than the allocation.
            Dispatch::Custody(custody) => match Box::pin(custody.accept(frame, header)).await {
                // Custody's own acks are positive exactly when the message is (or already was)
                // queued.
                Verdict::Ack { ack, code, outcome } => Answer::Ack {
                    ack,
                    code,
                    outcome,
                    committed: code.is_positive(),
                    problem: None,
                },
                Verdict::Silent { code, outcome } => Answer::Silent {
                    code,
                    outcome,
                    committed: code.is_positive(),
                },
                Verdict::Close { reason } => Answer::Close(Problem {
                    reason: "queue",
                    detail: reason,
                }),
            },
            Dispatch::Forward {
                upstream,
                on_upstream_failure,
            } => {
                let with = PairedWith {
                    two_way: true,
                    origin: Some(origin),
                };
                forward(upstream, *on_upstream_failure, slot, frame, header, with).await
            }
        }
    }
}

/// Forward mode: send the frame to `upstream` and relay its verified ack unchanged, or answer
/// the failure as `on_upstream_failure` says. Also used for rules that route to a named upstream.
/// `with`: what the paired `slot` is for (see [`Upstream::exchange`]).
pub async fn forward(
    upstream: &Upstream,
    on_upstream_failure: OnUpstreamFailure,
    slot: &mut Option<UpstreamConn>,
    frame: &Frame,
    header: &Header<'_>,
    with: PairedWith,
) -> Answer {
    match upstream
        .exchange(slot, frame, header.control_id(), with)
        .await
    {
        Ok(reply) => Answer::Ack {
            ack: reply.ack,
            code: reply.code,
            outcome: "forwarded",
            committed: true,
            problem: None,
        },
        Err(err) => {
            let problem = Problem {
                reason: err.reason(),
                detail: err.to_string(),
            };
            match on_upstream_failure {
                OnUpstreamFailure::Close => Answer::Close(problem),
                OnUpstreamFailure::Nack => Answer::Ack {
                    ack: ack::own_ack(
                        Some(header),
                        AckCode::AE,
                        &format!("message not delivered: {err}"),
                    ),
                    code: AckCode::AE,
                    outcome: "upstream_failed",
                    committed: false,
                    problem: Some(problem),
                },
            }
        }
    }
}
