//! The other direction on a paired connection: a message the receiver sends on its own is
//! relayed to the sender, and the sender's ack back to the receiver, with the same checks as
//! the forward direction (a readable header, the size limit, MSA-2 equal to the message's
//! control id, an answer within `ack_timeout`). A frame of the receiver that is itself an
//! acknowledgement (an application ack, enhanced mode) is relayed at once and answered only if
//! its own MSH-15 asks for it; the guard never acknowledges an acknowledgement.
//!
//! Owns telling the sender's reply to that message from the sender's own messages that cross
//! it (those are set aside on the sender's link, in order, and handled next), and the answer
//! the receiver gets when the sender cannot take the message (an AE or AR built here, never a
//! positive ack). Must not know how connections are made or what the route's rules say: rules
//! judge what senders send, and this traffic comes from the receiver the route already trusts.

use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::MllpRelease;
use crate::ops::audit;
use crate::route::{Peer, RouteContext};
use crate::upstream::UpstreamConn;
use crate::wire::ack::{own_ack, ErrorCode, Says};
use crate::wire::codec::{Decoded, Frame, Framing};
use crate::wire::commit::{self, Commit, CommitError};
use crate::wire::hl7::{AckCode, AckView, Header};
use crate::wire::link::{Link, MAX_SET_ASIDE};

/// Why the sender's connection cannot go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenderLost {
    /// It closed while we waited for its ack.
    Closed,
    /// Reading or writing failed.
    Io,
    /// It sent more than [`MAX_SET_ASIDE`] frames without answering.
    Flooded,
}

/// Relays one item the receiver sent on `conn` to the sender on `link` and answers the
/// receiver. `Ok(true)`: both connections go on; `Ok(false)`: the receiver's connection failed
/// and must be dropped (the next message opens a new one).
pub async fn relay_to_sender<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &RouteContext,
    link: &mut Link<S>,
    conn: &mut UpstreamConn,
    item: Decoded,
    who: &Peer,
) -> Result<bool, SenderLost> {
    let started = Instant::now();
    let audit = |header: Option<&Header<'_>>,
                 bytes: u64,
                 payload: &[u8],
                 outcome: &'static str,
                 ack: AckCode,
                 problem: Option<(&'static str, &str)>| {
        audit::record(
            &audit::Entry {
                route: &ctx.metrics,
                direction: "to_sender",
                peer: who.addr,
                proxy: who.proxy,
                identity: who.identity(),
                header,
                bytes,
                outcome,
                ack: Some(ack),
                started,
                rule: None,
                problem,
            },
            payload,
        )
    };
    let frame = match item {
        Decoded::Frame(frame) => frame,
        Decoded::Oversize { head, len } => {
            let header = Header::parse(&head).ok();
            let limit = ctx.route.upstream.max_ack_bytes;
            tracing::warn!(route = %ctx.name, len, limit, "a message from the receiver exceeds max_ack_bytes; not relayed");
            audit(
                header.as_ref(),
                len,
                &head,
                "oversize",
                AckCode::AE,
                Some(("oversize", "exceeds max_ack_bytes")),
            );
            let (ack, _) = own_ack(header.as_ref(), Says::not_now("message too large"));
            return Ok(answer_receiver(ctx, conn, false, &ack).await);
        }
    };
    let bytes = frame.len() as u64;
    let header = match Header::parse(frame.payload()) {
        Ok(header) => header,
        Err(err) => {
            let detail = err.to_string();
            audit(
                None,
                bytes,
                frame.payload(),
                "rejected",
                AckCode::AR,
                Some(("no_header", &detail)),
            );
            let (ack, _) = own_ack(
                None,
                Says::refused(ErrorCode::SegmentSequence, "no message header"),
            );
            return Ok(answer_receiver(ctx, conn, false, &ack).await);
        }
    };
    // No smuggling across framings, this way too: the sender's side would cut the message at
    // a byte that frames messages there.
    let framings = (ctx.route.upstream.framing, ctx.route.framing);
    if let Some(b) = Framing::smuggled_byte(frame.payload(), framings.0, framings.1) {
        let detail = b.to_string();
        let problem = Some(("framing_bytes", detail.as_str()));
        audit(
            Some(&header),
            bytes,
            frame.payload(),
            "rejected",
            AckCode::AR,
            problem,
        );
        let (ack, _) = own_ack(Some(&header), Says::refused(ErrorCode::DataType, &detail));
        return Ok(answer_receiver(ctx, conn, false, &ack).await);
    }
    let control_id = header.control_id();
    // What reached the sender (the receiver's ack or message), with the ack code it carried.
    let audit_relayed = |code| {
        audit(
            Some(&header),
            bytes,
            frame.payload(),
            "relayed_to_sender",
            code,
            None,
        )
    };
    // An acknowledgement (an application ack in enhanced mode) goes to the sender at once; it
    // is answered only if its own MSH-15 asks for an answer, and never by the guard itself.
    if let Ok(receivers_ack) = AckView::parse(frame.payload()) {
        let code = receivers_ack.code();
        let asks = matches!(header.accept_ack_type(), b"AL" | b"SU" | b"ER");
        let relayed = if asks {
            deliver(ctx, link, &frame, control_id).await
        } else {
            send_to_sender(ctx, link, &frame).await.map(|()| Vec::new())
        };
        let answered = match relayed {
            Ok(reply) if asks => answer_receiver(ctx, conn, true, &reply).await,
            Ok(_) => true,
            Err(Failure::Sender(lost)) => return Err(lost),
            Err(Failure::NoAck(why)) => {
                tracing::warn!(route = %ctx.name, control_id = %crate::wire::hl7::Printable(control_id), reason = %why, "the sender did not answer the receiver's ack; an ack is never acked by the guard");
                true
            }
        };
        audit_relayed(code);
        return Ok(answered);
    }
    let (ack, committed) = match deliver(ctx, link, &frame, control_id).await {
        Ok(reply) => {
            let code = AckView::parse(&reply)
                .map(|a| a.code())
                .unwrap_or(AckCode::AE);
            audit_relayed(code);
            (reply, true)
        }
        Err(Failure::Sender(lost)) => {
            let (ack, _) = own_ack(Some(&header), Says::not_now("sender unavailable"));
            audit(
                Some(&header),
                bytes,
                frame.payload(),
                "sender_lost",
                AckCode::AE,
                Some(("sender_lost", "the sender's connection failed")),
            );
            answer_receiver(ctx, conn, false, &ack).await;
            return Err(lost);
        }
        Err(Failure::NoAck(why)) => {
            audit(
                Some(&header),
                bytes,
                frame.payload(),
                "sender_failed",
                AckCode::AE,
                Some(("sender_failed", &why)),
            );
            let (ack, _) = own_ack(Some(&header), Says::not_now("no reply from sender"));
            let ack = ack.to_vec();
            (ack, false)
        }
    };
    Ok(answer_receiver(ctx, conn, committed, &ack).await)
}

enum Failure {
    Sender(SenderLost),
    /// The sender did not answer acceptably; the text says why (PHI-free).
    NoAck(String),
}

/// Sends `frame` to the sender and waits for the reply whose MSA-2 is `control_id`. Frames
/// without that are the sender's own messages: set aside for the session.
async fn deliver<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &RouteContext,
    link: &mut Link<S>,
    frame: &Frame,
    control_id: &[u8],
) -> Result<Vec<u8>, Failure> {
    let ack_timeout = ctx.route.upstream.ack_timeout;
    let release2 = ctx.route.release == MllpRelease::Two;
    let mut held: Vec<Decoded> = Vec::new();
    let exchange = async {
        if release2 {
            commit::send_committed(link, frame.payload(), ack_timeout, &mut held, MAX_SET_ASIDE)
                .await
                .map_err(uncommitted)?;
        } else {
            link.send_frame(frame)
                .await
                .map_err(|_| Failure::Sender(SenderLost::Io))?;
        }
        // A reply may already be among the frames that came before the commit block.
        let mut earlier = std::mem::take(&mut held).into_iter();
        loop {
            let item = match earlier.next() {
                Some(item) => item,
                None => match link.next().await {
                    Ok(Some(item)) => item,
                    Ok(None) => return Err(Failure::Sender(SenderLost::Closed)),
                    Err(_) => return Err(Failure::Sender(SenderLost::Io)),
                },
            };
            if let Decoded::Frame(reply) = &item {
                if commit::of_frame(reply).is_some() {
                    continue;
                }
                let answers_it = AckView::parse(reply.payload())
                    .is_ok_and(|ack| ack.acked_control_id() == control_id);
                if answers_it {
                    if release2 {
                        commit::answer(link, Commit::Ack)
                            .await
                            .map_err(|_| Failure::Sender(SenderLost::Io))?;
                    }
                    return Ok(reply.payload().to_vec());
                }
            }
            // Anything else is the sender's own traffic, handled after this exchange.
            if held.len() >= MAX_SET_ASIDE {
                return Err(Failure::Sender(SenderLost::Flooded));
            }
            held.push(item);
        }
    };
    let outcome = tokio::time::timeout(ack_timeout, exchange).await;
    if !link.set_aside(held) {
        return Err(Failure::Sender(SenderLost::Flooded));
    }
    outcome.unwrap_or_else(|_| {
        Err(Failure::NoAck(format!(
            "no ack from the sender within {}",
            humantime::format_duration(ack_timeout)
        )))
    })
}

/// Sends `frame` to the sender and waits for no answer (MLLP release 2: only its commit block).
async fn send_to_sender<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &RouteContext,
    link: &mut Link<S>,
    frame: &Frame,
) -> Result<(), Failure> {
    if ctx.route.release == MllpRelease::One {
        return link
            .send_frame(frame)
            .await
            .map_err(|_| Failure::Sender(SenderLost::Io));
    }
    let mut held = Vec::new();
    let ack_timeout = ctx.route.upstream.ack_timeout;
    let sent =
        commit::send_committed(link, frame.payload(), ack_timeout, &mut held, MAX_SET_ASIDE).await;
    if !link.set_aside(held) {
        return Err(Failure::Sender(SenderLost::Flooded));
    }
    sent.map_err(uncommitted)
}

/// What a failed release 2 send to the sender means for the relay.
fn uncommitted(err: CommitError) -> Failure {
    match err {
        CommitError::Send(_) | CommitError::Receive(_) => Failure::Sender(SenderLost::Io),
        CommitError::Closed => Failure::Sender(SenderLost::Closed),
        CommitError::Flooded => Failure::Sender(SenderLost::Flooded),
        other => Failure::NoAck(format!("the sender did not commit it: {other}")),
    }
}

/// Sends the receiver its answer; false when its connection failed.
async fn answer_receiver(
    ctx: &RouteContext,
    conn: &mut UpstreamConn,
    committed: bool,
    ack: &[u8],
) -> bool {
    match conn
        .answer_inbound(committed, ack, ctx.route.upstream.commit_timeout())
        .await
    {
        Ok(()) => true,
        Err(err) => {
            tracing::warn!(route = %ctx.name, error = %err, "could not answer the receiver's message; dropping its connection");
            false
        }
    }
}
