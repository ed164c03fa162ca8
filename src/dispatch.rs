//! The junction between a session and delivery: what happens to a message once it is admitted.
//!
//! Two modes. **Forward**: send the frame upstream, relay the upstream's verified ack unchanged,
//! and turn any upstream failure into the route's chosen answer (a negative ack built here, or
//! closing the sender's connection); it never invents a positive ack. **Custody**
//! (store-and-forward): hand the message to [`crate::custody`], which stores it durably and
//! answers for the upstream.
//!
//! Owns the choice between the two, the answer a forward failure gets, and a session's [`Lanes`]
//! (its own upstream connections, and what the receiver sends on them). Must not know sockets
//! or TLS; of the sender it knows only the [`Origin`] a PROXY header towards the receiver names.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::config::{Connections, OnUpstreamFailure};
use crate::custody::{Custody, SenderId};
use crate::net::proxy_protocol::Origin;
use crate::outcome::{Answer, Fault as _};
use crate::upstream::crossing::{self, ExchangeEnd, SessionEnd, ToReceiver};
use crate::upstream::{ConnSlot, PairedWith, Upstream, UpstreamConn, UpstreamError};
use crate::wire::ack;
use crate::wire::codec::{Decoded, Frame};
use crate::wire::hl7::{AckCode, Header};

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

    /// Delivers one message and says what to answer. `lanes` holds the session's own upstream
    /// connections (forward mode, paired) and `origin` is the sender they are paired with.
    ///
    /// `message` is a batch's first message, whose version, processing id and trigger shape
    /// the acks the guard builds for the batch (`None` for a single message).
    pub async fn deliver(
        &self,
        lanes: &mut Lanes,
        frame: &Frame,
        header: &Header<'_>,
        message: Option<&Header<'_>>,
        origin: Origin,
        sender: SenderId<'_>,
    ) -> Answer {
        match self {
            // Boxed for the same reason as `Upstream::open`: storing a message is a larger
            // state than forwarding it, and a durable write costs far more than the allocation.
            // Custody's own acks are positive exactly when the message is (or already was)
            // queued.
            Dispatch::Custody(custody) => {
                Box::pin(custody.accept(frame, header, message, sender)).await
            }
            Dispatch::Forward {
                upstream,
                on_upstream_failure,
            } => {
                let with = PairedWith {
                    crossing: lanes.crossing.as_mut(),
                    origin: Some(origin),
                };
                let slot = &mut lanes.route;
                let to = (header, message);
                forward(upstream, *on_upstream_failure, slot, frame, to, with).await
            }
        }
    }

    /// Delivers one message to a named upstream a rule chose (`action: route`), forward mode,
    /// on the session's own connection to it.
    pub async fn deliver_named(
        upstream: &Upstream,
        name: &str,
        on_upstream_failure: OnUpstreamFailure,
        lanes: &mut Lanes,
        frame: &Frame,
        to: (&Header<'_>, Option<&Header<'_>>),
        origin: Origin,
    ) -> Answer {
        let slot = lanes.named.entry(name.to_string()).or_default();
        let with = PairedWith {
            crossing: None,
            origin: Some(origin),
        };
        forward(upstream, on_upstream_failure, slot, frame, to, with).await
    }
}

/// One sender connection's own upstream connections (paired mode): the route's, and one per
/// named upstream a rule sent a message to. The session owns it and reaches the receiver only
/// through it: on a paired forward route the receiver may send on the route's connection, and
/// the session carries that direction too ([`crate::inbound::two_way`]); while a delivery
/// holds the lanes, the receiver's messages reach the session through the [`SessionEnd`] it
/// got from [`Lanes::open_crossing`].
#[derive(Default)]
pub struct Lanes {
    /// The upstream of a forward route with paired connections (the receiver may send on it).
    paired: Option<Arc<Upstream>>,
    route: ConnSlot,
    named: HashMap<String, ConnSlot>,
    /// Two-way: the exchanges' end of the side channel.
    crossing: Option<ExchangeEnd>,
}

impl Lanes {
    /// A session's lanes on a route delivered by `dispatch` with `connections`.
    pub fn new(dispatch: &Dispatch, connections: Connections) -> Lanes {
        let paired = match dispatch {
            Dispatch::Forward { upstream, .. } if connections == Connections::Paired => {
                Some(upstream.clone())
            }
            _ => None,
        };
        Lanes {
            paired,
            ..Lanes::default()
        }
    }

    /// Two-way lanes without a side channel yet get one: the session's end is returned
    /// (`None` when not two-way, or opened already).
    pub fn open_crossing(&mut self) -> Option<SessionEnd> {
        if self.paired.is_none() || self.crossing.is_some() {
            return None;
        }
        let (exchange, session) = crossing::pair();
        self.crossing = Some(exchange);
        Some(session)
    }

    /// Whether the receiver may send on this session's connection (paired forward route).
    pub fn two_way(&self) -> bool {
        self.paired.is_some()
    }

    /// Whether there is a paired receiver connection to watch for what the receiver sends.
    pub fn watching_receiver(&self) -> bool {
        self.paired.is_some() && self.route.is_some()
    }

    /// The paired receiver connection, to answer or relay what the receiver sent.
    pub fn receiver(&mut self) -> Option<&mut UpstreamConn> {
        self.route.as_deref_mut()
    }

    /// The next message the receiver sent on its own, already read (see
    /// [`UpstreamConn::next_inbound`]).
    pub fn next_from_receiver(&mut self) -> Option<Decoded> {
        self.route.as_mut().and_then(|conn| conn.next_inbound())
    }

    /// Whether a frame from the receiver has started and not ended.
    pub fn receiver_in_frame(&self) -> bool {
        self.route.as_ref().is_some_and(|conn| conn.in_frame())
    }

    /// Waits for more bytes from the paired receiver (cancel-safe; pending forever without a
    /// connection); 0 means it closed.
    pub async fn read_receiver(&mut self) -> std::io::Result<usize> {
        match self.route.as_mut() {
            Some(conn) => conn.read_more().await,
            None => std::future::pending().await,
        }
    }

    /// The receiver closed or broke the paired connection: the next message opens a new one.
    pub fn receiver_lost(&mut self) {
        self.route = None;
    }

    /// The serial of the paired receiver connection ([`UpstreamConn::serial`]), if one is open.
    pub fn receiver_serial(&self) -> Option<u64> {
        self.route.as_deref().map(UpstreamConn::serial)
    }

    /// Writes an answer to what the receiver sent, on the connection it came on (`per_attempt`:
    /// release 2's wait for its commit). `Ok(false)`: that connection is closed, the answer
    /// dropped. On a failed write the connection is dropped too (the next message opens one).
    pub async fn answer_receiver(
        &mut self,
        answer: &ToReceiver,
        per_attempt: std::time::Duration,
    ) -> Result<bool, UpstreamError> {
        let Some(conn) = self.route.as_mut().filter(|c| c.serial() == answer.conn) else {
            return Ok(false);
        };
        let written = conn
            .answer_inbound(answer.committed, &answer.ack, per_attempt)
            .await;
        if written.is_err() {
            self.route = None;
        }
        written.map(|()| true)
    }

    /// An answer the session gave an exchange that ended before writing it.
    pub fn leftover_answer(&mut self) -> Option<ToReceiver> {
        self.crossing
            .as_mut()
            .and_then(ExchangeEnd::leftover_answer)
    }

    /// `idle_reopen: at-once`: when the paired connection will have been quiet too long.
    pub fn idle_receiver_deadline(&self) -> Option<Instant> {
        match (&self.paired, &self.route) {
            (Some(upstream), Some(conn)) if upstream.reopens_at_once() => {
                upstream.idle_deadline(conn)
            }
            _ => None,
        }
    }

    /// Replaces the quiet paired connection with a new one now ([`Upstream::reopen_idle`]).
    pub async fn reopen_idle_receiver(&mut self) {
        if let Some(upstream) = &self.paired {
            upstream.reopen_idle(&mut self.route).await;
        }
    }
}

/// Forward mode: send the frame to `upstream` and relay its verified ack unchanged, or answer
/// the failure as `on_upstream_failure` says. Also used for rules that route to a named upstream.
/// `with`: what the paired `slot` is for (see [`Upstream::exchange`]). `to`: the frame's header
/// and, for a batch, its first message (see [`Dispatch::deliver`]).
async fn forward(
    upstream: &Upstream,
    on_upstream_failure: OnUpstreamFailure,
    slot: &mut ConnSlot,
    frame: &Frame,
    to: (&Header<'_>, Option<&Header<'_>>),
    with: PairedWith<'_>,
) -> Answer {
    let header = to.0;
    // Enhanced mode: a message that asks for no accept ack (MSH-15 NE, or ER: only on an error
    // the receiver may send later) is sent, and the sender answered nothing, at once; whatever
    // the receiver sends later on a paired connection is relayed by the session.
    if matches!(header.accept_ack_type(), b"NE" | b"ER") {
        return match upstream.send_only(slot, frame, with).await {
            Ok(()) => Answer::Silent {
                code: AckCode::CA,
                outcome: "forwarded",
                committed: true,
            },
            Err(err) => failed(on_upstream_failure, to, &err),
        };
    }
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
        Err(err) => failed(on_upstream_failure, to, &err),
    }
}

/// The answer when the receiver could not take the message: a negative ack with a fixed text
/// (the detail travels as the answer's problem, to the audit line), or a closed connection.
fn failed(
    on_upstream_failure: OnUpstreamFailure,
    (header, message): (&Header<'_>, Option<&Header<'_>>),
    err: &UpstreamError,
) -> Answer {
    let problem = err.failure();
    match on_upstream_failure {
        OnUpstreamFailure::Close => Answer::Close(problem),
        OnUpstreamFailure::Nack => {
            let says = ack::Says::negative(
                err.ack(),
                ack::ErrorCode::ApplicationInternal,
                err.ack_text(),
            );
            let (ack, code) = ack::own_ack_for(Some(header), message, says);
            Answer::Ack {
                ack,
                code,
                outcome: "upstream_failed",
                committed: false,
                problem: Some(problem),
            }
        }
    }
}
