//! MLLP release 2 towards the sender: the commit block that answers the frame it has in
//! flight, the copies of that frame the block answers too, and the HL7 ack sent until the
//! sender commits it.
//!
//! A commit block names no frame, so it is sent only for the frame the sender has in flight. A
//! sender whose wait for it ran out sends the frame again; copies already here when the block
//! goes out, or that cross it ([`Resends`]), are answered by it: never delivered again, never
//! given a block of their own (which the sender, by then waiting on its next frame, would take
//! for that one). Each copy gets an audit line (`duplicate_resend`). Must not know how a
//! message is delivered: the session gives the answer.

use std::io;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::route::{Peer, RouteContext};
use crate::wire::codec::{Decoded, Frame};
use crate::wire::commit::{self, Commit, CommitError, Resends};
use crate::wire::link::{Link, MAX_SET_ASIDE};

/// The sender sent more than [`MAX_SET_ASIDE`] frames while its ack waited for a commit.
pub(super) struct Flooded;

/// The release 2 answer to `frame` (`None`: an oversize one): the commit block (ACK when
/// `committed`, else NAK and nothing more), then `ack` until the sender commits it. The outer
/// `Err` ends the session; the inner result is the write's.
pub(super) async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &RouteContext,
    link: &mut Link<S>,
    (ack, committed): (Option<Bytes>, bool),
    frame: Option<&Frame>,
    resends: &mut Resends,
    who: &Peer,
) -> Result<io::Result<()>, Flooded> {
    // Copies the sender sent before this block are answered by it.
    if let Some(frame) = frame {
        for _ in 0..link.remove_copies(frame.payload()) {
            audit_copy(ctx, frame, who);
        }
    }
    let commit = if committed { Commit::Ack } else { Commit::Nak };
    let sent = commit::answer(link, commit).await;
    match frame {
        Some(frame) if committed => resends.committed(frame.payload_bytes()),
        _ => resends.settled(),
    }
    let (Ok(()), Some(ack), true) = (&sent, ack, committed) else {
        return Ok(sent);
    };
    let mut held = Vec::new();
    let result = commit::send_committed(
        link,
        &ack,
        ctx.route.commit_timeout(),
        &mut held,
        MAX_SET_ASIDE,
    )
    .await;
    // Everything held came before the sender's commit of the ack: copies among it crossed our
    // ACK, and none can follow once the sender committed what came after it.
    if let Some(frame) = frame {
        held.retain(|item| {
            let copy = matches!(item, Decoded::Frame(f) if resends.matches(f.payload()));
            if copy {
                audit_copy(ctx, frame, who);
            }
            !copy
        });
    }
    if result.is_ok() {
        resends.settled();
    }
    if !link.set_aside(held) {
        return Err(Flooded);
    }
    match result {
        Ok(()) => Ok(Ok(())),
        Err(CommitError::Send(err)) | Err(CommitError::Receive(err)) => Ok(Err(err)),
        Err(CommitError::Flooded) => Err(Flooded),
        Err(err) => {
            // The message was delivered; only the ack's commit is missing. Keep the
            // connection: the sender can still resend and be answered.
            tracing::warn!(route = %ctx.name, peer = %who.addr, proxy = who.proxy(), error = %err, "the sender did not commit its ack (MLLP release 2)");
            Ok(Ok(()))
        }
    }
}

/// The audit line of a copy of `frame` that a commit ACK already answered.
pub(super) fn audit_copy(ctx: &RouteContext, frame: &Frame, who: &Peer) {
    let frame = (frame.payload(), frame.len() as u64);
    super::messages::audit_undelivered(ctx, who, frame, "duplicate_resend", None, None);
}
