//! The reverse direction's one message in flight: a frame the receiver sent on its own,
//! checked, relayed to the sender, and then answered to the receiver once, by the sender's ack
//! or, when there is none, by an AE or AR built here (never a positive ack).
//!
//! The checks are the forward direction's: a readable header, the size limit
//! (`max_ack_bytes`), no framing bytes of the other side; then MSA-2 of the sender's reply must
//! equal the message's control id, within `ack_timeout` of its arrival. A frame of the receiver
//! that is itself an acknowledgement (an application ack, enhanced mode) is relayed and awaits
//! an answer only if its own MSH-15 asks for one; the guard never acknowledges an
//! acknowledgement. Must not know how connections are made, what the route's rules say (this
//! traffic comes from the receiver the route already trusts), or how the other direction
//! fares: [`super::TwoWay`] decides when a frame is relayed and where its answer goes.

use std::time::Instant;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::MllpRelease;
use crate::ops::audit;
use crate::route::{Peer, RouteContext};
use crate::upstream::crossing::{Arrived, ToReceiver};
use crate::wire::ack::{own_ack, ErrorCode, Says};
use crate::wire::codec::{Decoded, Frame, Framing};
use crate::wire::commit::{self, Commit, CommitError};
use crate::wire::hl7::{AckCode, AckView, Header, Printable};
use crate::wire::link::{Link, MAX_SET_ASIDE};

/// Why the sender's connection cannot go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenderLost {
    /// It closed while we waited for its answer.
    Closed,
    /// Reading or writing failed.
    Io,
    /// It sent more than [`MAX_SET_ASIDE`] frames without answering.
    Flooded,
}

/// What relaying one frame of the receiver's came to.
pub enum Relayed {
    /// Nothing is awaited: the receiver gets this answer now (`None`: no answer at all).
    Done(Option<ToReceiver>),
    /// Relayed; the sender's answer is awaited.
    Awaiting(Reverse),
    /// The sender's connection failed while relaying; the receiver gets this answer.
    SenderLost(SenderLost, Option<ToReceiver>),
}

/// A frame of the receiver's relayed to the sender, awaiting the sender's answer.
pub struct Reverse {
    frame: Frame,
    /// Its MSH-10: the sender's answer names it in MSA-2.
    control_id: Vec<u8>,
    /// The receiver connection it came on.
    conn: u64,
    started: Instant,
    /// When the sender's answer is due (`ack_timeout` after the frame arrived).
    pub deadline: Instant,
    /// It is itself an acknowledgement (enhanced mode) whose MSH-15 asks for an answer: the
    /// sender's answer is relayed, but the guard never answers it in the sender's stead.
    is_ack: bool,
}

/// The audit line of a frame relayed (or not) to the sender.
struct Line<'a> {
    ctx: &'a RouteContext,
    who: &'a Peer,
    started: Instant,
    frame: &'a [u8],
    bytes: u64,
}

impl Line<'_> {
    fn record(&self, outcome: &'static str, ack: AckCode, problem: Option<(&'static str, &str)>) {
        let header = Header::parse(self.frame).ok();
        audit::record(
            &audit::Entry {
                route: &self.ctx.metrics,
                direction: "to_sender",
                peer: self.who.addr,
                proxy: self.who.proxy,
                identity: self.who.identity(),
                header: header.as_ref(),
                bytes: self.bytes,
                outcome,
                ack: Some(ack),
                started: self.started,
                rule: None,
                problem,
            },
            self.frame,
        )
    }
}

/// The control id (MSH-10) of a frame the receiver sent, if it has a header.
pub fn control_id(item: &Decoded) -> Option<Vec<u8>> {
    match item {
        Decoded::Frame(frame) => Header::parse(frame.payload())
            .ok()
            .map(|header| header.control_id().to_vec()),
        Decoded::Oversize { .. } => None,
    }
}

/// Checks the frame the receiver sent and relays it to the sender on `link`.
pub async fn relay<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &RouteContext,
    link: &mut Link<S>,
    arrived: Arrived,
    who: &Peer,
) -> Relayed {
    let started = Instant::now();
    let Arrived { conn, item } = arrived;
    let refused = |ack: Bytes| Relayed::Done(Some(not_committed(conn, ack)));
    let frame = match item {
        Decoded::Frame(frame) => frame,
        Decoded::Oversize { head, len } => {
            let limit = ctx.route.upstream.max_ack_bytes;
            tracing::warn!(route = %ctx.name, len, limit, "a message from the receiver exceeds max_ack_bytes; not relayed");
            let line = Line {
                ctx,
                who,
                started,
                frame: &head,
                bytes: len,
            };
            line.record(
                "oversize",
                AckCode::AE,
                Some(("oversize", "exceeds max_ack_bytes")),
            );
            let header = Header::parse(&head).ok();
            let (ack, _) = own_ack(header.as_ref(), Says::not_now("message too large"));
            return refused(ack);
        }
    };
    let line = Line {
        ctx,
        who,
        started,
        frame: frame.payload(),
        bytes: frame.len() as u64,
    };
    let header = match Header::parse(frame.payload()) {
        Ok(header) => header,
        Err(err) => {
            let detail = err.to_string();
            line.record("rejected", AckCode::AR, Some(("no_header", &detail)));
            let says = Says::refused(ErrorCode::SegmentSequence, "no message header");
            return refused(own_ack(None, says).0);
        }
    };
    // No smuggling across framings, this way too: the sender's side would cut the message at
    // a byte that frames messages there.
    let framings = (ctx.route.upstream.framing, ctx.route.framing);
    if let Some(b) = Framing::smuggled_byte(frame.payload(), framings.0, framings.1) {
        let detail = b.to_string();
        line.record(
            "rejected",
            AckCode::AR,
            Some(("framing_bytes", detail.as_str())),
        );
        let says = Says::refused(ErrorCode::DataType, &detail);
        return refused(own_ack(Some(&header), says).0);
    }
    // An acknowledgement (an application ack in enhanced mode) awaits an answer only if its own
    // MSH-15 asks for one.
    let receivers_ack = AckView::parse(frame.payload()).ok().map(|ack| ack.code());
    let asks = matches!(header.accept_ack_type(), b"AL" | b"SU" | b"ER");
    let control_id = header.control_id().to_vec();
    let not_delivered = |says: Says<'_>| not_committed(conn, own_ack(Some(&header), says).0);
    match send_to_sender(ctx, link, &frame).await {
        Ok(()) => {}
        Err(Failure::Sender(lost)) => {
            let Some(code) = receivers_ack else {
                let problem = Some(("sender_lost", "the sender's connection failed"));
                line.record("sender_lost", AckCode::AE, problem);
                return Relayed::SenderLost(
                    lost,
                    Some(not_delivered(Says::not_now("sender unavailable"))),
                );
            };
            line.record("sender_lost", code, None);
            return Relayed::SenderLost(lost, None);
        }
        Err(Failure::NoAck(why)) => {
            let Some(code) = receivers_ack else {
                line.record("sender_failed", AckCode::AE, Some(("sender_failed", &why)));
                return Relayed::Done(Some(not_delivered(Says::not_now("no reply from sender"))));
            };
            tracing::warn!(route = %ctx.name, control_id = %Printable(&control_id), reason = %why, "the sender did not commit the receiver's ack; an ack is never acked by the guard");
            line.record("relayed_to_sender", code, None);
            return Relayed::Done(None);
        }
    }
    if let (Some(code), false) = (receivers_ack, asks) {
        line.record("relayed_to_sender", code, None);
        return Relayed::Done(None);
    }
    Relayed::Awaiting(Reverse {
        frame,
        control_id,
        conn,
        started,
        deadline: started + ctx.route.upstream.ack_timeout,
        is_ack: receivers_ack.is_some(),
    })
}

impl Reverse {
    /// Whether the sender's frame `payload` answers this one (MSA-2 equals its control id).
    pub fn answered_by(&self, acked_control_id: &[u8]) -> bool {
        acked_control_id == self.control_id.as_slice()
    }

    /// Its control id (MSH-10).
    pub fn control_id(&self) -> &[u8] {
        &self.control_id
    }

    fn line<'a>(&'a self, ctx: &'a RouteContext, who: &'a Peer) -> Line<'a> {
        Line {
            ctx,
            who,
            started: self.started,
            frame: self.frame.payload(),
            bytes: self.frame.len() as u64,
        }
    }

    /// The code the receiver's own ack carried (an acknowledgement relayed), else `code`.
    fn relayed_code(&self, code: AckCode) -> AckCode {
        match self.is_ack {
            true => AckView::parse(self.frame.payload()).map_or(code, |ack| ack.code()),
            false => code,
        }
    }

    /// The sender answered with `reply` (release 2: committed here first). The receiver gets
    /// it unchanged; the second value is `Err` when the commit block could not be written.
    pub async fn answered<S: AsyncRead + AsyncWrite + Unpin>(
        self,
        ctx: &RouteContext,
        link: &mut Link<S>,
        reply: Frame,
        who: &Peer,
    ) -> (ToReceiver, Result<(), SenderLost>) {
        let committed = match ctx.route.release {
            MllpRelease::One => Ok(()),
            MllpRelease::Two => commit::answer(link, Commit::Ack)
                .await
                .map_err(|_| SenderLost::Io),
        };
        let code = AckView::parse(reply.payload()).map_or(AckCode::AE, |ack| ack.code());
        self.line(ctx, who)
            .record("relayed_to_sender", self.relayed_code(code), None);
        let answer = ToReceiver {
            conn: self.conn,
            committed: true,
            ack: reply.payload_bytes(),
        };
        (answer, committed)
    }

    /// No answer from the sender by the deadline: an AE for a message (it did not answer, so
    /// the guard cannot say it was taken); nothing for an acknowledgement.
    pub fn timed_out(self, ctx: &RouteContext, who: &Peer) -> Option<ToReceiver> {
        let why = format!(
            "no ack from the sender within {}",
            humantime::format_duration(ctx.route.upstream.ack_timeout)
        );
        if self.is_ack {
            tracing::warn!(route = %ctx.name, control_id = %Printable(&self.control_id), reason = %why, "the sender did not answer the receiver's ack; an ack is never acked by the guard");
            self.line(ctx, who)
                .record("relayed_to_sender", self.relayed_code(AckCode::AE), None);
            return None;
        }
        self.line(ctx, who)
            .record("sender_failed", AckCode::AE, Some(("sender_failed", &why)));
        Some(self.own_answer(Says::not_now("no reply from sender")))
    }

    /// The sender's connection ended before it answered: an AE for a message, nothing for an
    /// acknowledgement.
    pub fn sender_lost(self, ctx: &RouteContext, who: &Peer) -> Option<ToReceiver> {
        if self.is_ack {
            self.line(ctx, who)
                .record("sender_lost", self.relayed_code(AckCode::AE), None);
            return None;
        }
        let problem = Some((
            "sender_lost",
            "the sender's connection ended before it answered",
        ));
        self.line(ctx, who)
            .record("sender_lost", AckCode::AE, problem);
        Some(self.own_answer(Says::not_now("sender unavailable")))
    }

    fn own_answer(&self, says: Says<'_>) -> ToReceiver {
        let header = Header::parse(self.frame.payload()).ok();
        not_committed(self.conn, own_ack(header.as_ref(), says).0)
    }
}

/// An answer built by the guard: never a commit (release 2: a NAK and nothing more).
fn not_committed(conn: u64, ack: Bytes) -> ToReceiver {
    ToReceiver {
        conn,
        committed: false,
        ack,
    }
}

enum Failure {
    Sender(SenderLost),
    /// The sender did not commit it (release 2); the text says why (PHI-free).
    NoAck(String),
}

/// Sends `frame` to the sender: within `send_timeout` (release 1), or until it commits it,
/// within `ack_timeout` (release 2).
async fn send_to_sender<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &RouteContext,
    link: &mut Link<S>,
    frame: &Frame,
) -> Result<(), Failure> {
    if ctx.route.release == MllpRelease::One {
        // A sender that does not read is given `send_timeout`, as for its own acks.
        return match tokio::time::timeout(ctx.route.send_timeout, link.send_frame(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Failure::Sender(SenderLost::Io)),
            Err(_) => {
                tracing::warn!(route = %ctx.name, send_timeout = %humantime::format_duration(ctx.route.send_timeout), "the sender does not read what the receiver sends; closing the connection");
                Err(Failure::Sender(SenderLost::Io))
            }
        };
    }
    let mut held = Vec::new();
    let per_attempt = ctx.route.commit_timeout();
    let sending =
        commit::send_committed(link, frame.payload(), per_attempt, &mut held, MAX_SET_ASIDE);
    let sent = tokio::time::timeout(ctx.route.upstream.ack_timeout, sending).await;
    if !link.set_aside(held) {
        return Err(Failure::Sender(SenderLost::Flooded));
    }
    match sent {
        Ok(Ok(())) => Ok(()),
        Ok(Err(CommitError::Send(_) | CommitError::Receive(_))) => {
            Err(Failure::Sender(SenderLost::Io))
        }
        Ok(Err(CommitError::Closed)) => Err(Failure::Sender(SenderLost::Closed)),
        Ok(Err(CommitError::Flooded)) => Err(Failure::Sender(SenderLost::Flooded)),
        Ok(Err(other)) => Err(Failure::NoAck(format!(
            "the sender did not commit it: {other}"
        ))),
        Err(_) => Err(Failure::NoAck(format!(
            "the sender did not commit it within {}",
            humantime::format_duration(ctx.route.upstream.ack_timeout)
        ))),
    }
}
