//! MLLP release 2: the commit blocks that answer every frame, the bounded resend loop of a
//! side that waits for them, and the copies a resending peer leaves behind.
//!
//! In release 2 (HL7 v2 Transport, MLLP release 2) the receiver of any frame answers it with a
//! one-byte frame: ACK (`0x06`, "committed") or NAK (`0x15`, "not committed; you may send it
//! again"). The HL7 ack message is still sent, as an ordinary frame in the other direction,
//! and is itself answered by a commit block. A commit block names no frame: it answers the one
//! the peer has in flight, so a peer that sent a frame again (its wait for our block ran out)
//! takes our one block for the copy, and a second block would answer its next frame
//! ([`Resends`]). This module owns the two byte values, telling a commit block from a message,
//! sending a frame until it is committed, and recognising those copies. It must not know HL7
//! fields, routes or timeouts' meaning: the caller gives the deadline per attempt.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout;

use crate::wire::codec::{Decoded, Frame};
use crate::wire::link::Link;

/// The commit acknowledgement payload.
pub const ACK: u8 = 0x06;
/// The negative commit acknowledgement payload.
pub const NAK: u8 = 0x15;
/// How many times a frame is sent again after a NAK or a silence before giving up (so at most
/// `1 + MAX_RESENDS` sends).
pub const MAX_RESENDS: u32 = 3;

/// A commit block's meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Commit {
    Ack,
    Nak,
}

impl Commit {
    /// The commit block a payload is, if it is one (exactly one byte, ACK or NAK).
    pub fn of(payload: &[u8]) -> Option<Commit> {
        match payload {
            [ACK] => Some(Commit::Ack),
            [NAK] => Some(Commit::Nak),
            _ => None,
        }
    }

    /// The payload to send.
    pub fn payload(self) -> &'static [u8] {
        match self {
            Commit::Ack => &[ACK],
            Commit::Nak => &[NAK],
        }
    }
}

/// Why a frame was not committed by the peer.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("the peer answered NAK (not committed) {0} times")]
    Refused(u32),
    #[error("no commit block from the peer within {} after {attempts} sends", humantime::format_duration(*.per_attempt))]
    Timeout {
        per_attempt: Duration,
        attempts: u32,
    },
    #[error("the peer closed the connection before committing")]
    Closed,
    #[error("sending to the peer failed: {0}")]
    Send(io::Error),
    #[error("reading from the peer failed: {0}")]
    Receive(io::Error),
    #[error("the peer sent too many frames without committing ours")]
    Flooded,
}

/// Sends `payload` on `link` (in its framing) and waits for the peer's commit block, sending
/// it again after a NAK or after `per_attempt` of silence, at most [`MAX_RESENDS`] times.
///
/// Frames that arrive meanwhile and are not commit blocks (the peer's own messages or the HL7
/// ack racing the commit) are kept, in order, in `held` for the caller; at most `max_held`.
pub async fn send_committed<S: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Link<S>,
    payload: &[u8],
    per_attempt: Duration,
    held: &mut Vec<Decoded>,
    max_held: usize,
) -> Result<(), CommitError> {
    let mut naks = 0;
    let mut attempts = 0;
    loop {
        attempts += 1;
        link.send_payload(payload)
            .await
            .map_err(CommitError::Send)?;
        let answer = timeout(per_attempt, async {
            loop {
                match link.next().await {
                    Ok(Some(Decoded::Frame(frame))) => match Commit::of(frame.payload()) {
                        Some(commit) => return Ok(commit),
                        None if held.len() < max_held => held.push(Decoded::Frame(frame)),
                        None => return Err(CommitError::Flooded),
                    },
                    Ok(Some(other)) if held.len() < max_held => held.push(other),
                    Ok(Some(_)) => return Err(CommitError::Flooded),
                    Ok(None) => return Err(CommitError::Closed),
                    Err(err) => return Err(CommitError::Receive(err)),
                }
            }
        })
        .await;
        match answer {
            Ok(Ok(Commit::Ack)) => return Ok(()),
            Ok(Ok(Commit::Nak)) => naks += 1,
            Ok(Err(err)) => return Err(err),
            Err(_) => {}
        }
        if attempts > MAX_RESENDS {
            return Err(if naks == attempts {
                CommitError::Refused(naks)
            } else {
                CommitError::Timeout {
                    per_attempt,
                    attempts,
                }
            });
        }
        tracing::debug!(
            attempt = attempts,
            nak = naks,
            "frame not committed by the peer; sending it again (MLLP release 2)"
        );
    }
}

/// Answers a received frame with a commit block.
pub async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Link<S>,
    commit: Commit,
) -> io::Result<()> {
    link.send_payload(commit.payload()).await
}

/// Towards a release-2 peer that sends: the frame our last commit ACK answered, while copies of
/// it may still arrive.
///
/// A peer whose wait for our commit block ran out (the message was still being delivered)
/// sends the same frame again; our ACK, when it comes, answers the copy it then has in flight.
/// So a copy that arrives after the ACK was sent, before the peer has moved on, is already
/// answered: it is neither delivered again nor given a second block, which the peer, waiting
/// on its next frame by then, would take for that one. The window closes when the peer sends
/// any other frame, or commits the HL7 ack that followed our ACK (it resends only until it
/// sees our ACK, which comes first, so no copy can follow that commit). Copies received before
/// a block was sent are the caller's to drop when it sends it (see
/// [`crate::wire::link::Link::remove_copies`]).
#[derive(Debug, Default)]
pub struct Resends {
    /// Boxed: a session carries this; only release-2 routes fill it.
    committed: Option<Box<Bytes>>,
}

impl Resends {
    /// A commit ACK was just sent for the frame whose payload is `payload`.
    pub fn committed(&mut self, payload: Bytes) {
        self.committed = Some(Box::new(payload));
    }

    /// Whether `payload` is a copy of the frame last committed, answered already. Any other
    /// frame closes the window.
    pub fn is_copy(&mut self, payload: &[u8]) -> bool {
        if self.matches(payload) {
            return true;
        }
        self.committed = None;
        false
    }

    /// Whether `payload` is a copy of the frame last committed (the window stays as it is).
    pub fn matches(&self, payload: &[u8]) -> bool {
        self.committed.as_deref().map(|b| &b[..]) == Some(payload)
    }

    /// No copy can come any more: the peer committed what followed our ACK, or our last block
    /// was a NAK (after which the same frame again is a new try, to be answered).
    pub fn settled(&mut self) {
        self.committed = None;
    }
}

/// Whether a decoded item is a commit block.
pub fn is_commit(item: &Decoded) -> bool {
    matches!(item, Decoded::Frame(frame) if Commit::of(frame.payload()).is_some())
}

/// A frame's commit meaning, if it is a commit block.
pub fn of_frame(frame: &Frame) -> Option<Commit> {
    Commit::of(frame.payload())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::codec::encode;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn commit_blocks_are_exactly_one_byte() {
        assert_eq!(Commit::of(&[ACK]), Some(Commit::Ack));
        assert_eq!(Commit::of(&[NAK]), Some(Commit::Nak));
        assert_eq!(Commit::of(&[ACK, ACK]), None);
        assert_eq!(Commit::of(b"MSH|"), None);
        assert_eq!(Commit::of(&[]), None);
    }

    /// A peer that NAKs twice, then ACKs: three sends, one success.
    #[tokio::test]
    async fn a_nak_is_answered_by_sending_again() {
        let (ours, mut theirs) = tokio::io::duplex(4096);
        let mut link = Link::new(ours, 1024);
        let peer = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut buf = [0u8; 64];
            for answer in [NAK, NAK, ACK] {
                let n = theirs.read(&mut buf).await.unwrap();
                seen.push(buf[..n].to_vec());
                theirs.write_all(&encode(&[answer])).await.unwrap();
            }
            seen
        });
        let mut held = Vec::new();
        send_committed(&mut link, b"MSH|x", Duration::from_secs(5), &mut held, 4)
            .await
            .unwrap();
        let seen = peer.await.unwrap();
        assert_eq!(seen, vec![encode(b"MSH|x").to_vec(); 3]);
        assert!(held.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn silence_is_bounded_by_max_resends() {
        let (ours, _theirs) = tokio::io::duplex(4096);
        let mut link = Link::new(ours, 1024);
        let mut held = Vec::new();
        let err = send_committed(&mut link, b"MSH|x", Duration::from_secs(2), &mut held, 4)
            .await
            .unwrap_err();
        assert!(
            matches!(err, CommitError::Timeout { attempts, .. } if attempts == MAX_RESENDS + 1),
            "{err}"
        );
    }

    #[tokio::test]
    async fn frames_before_the_commit_are_held_in_order() {
        let (ours, mut theirs) = tokio::io::duplex(4096);
        let mut link = Link::new(ours, 1024);
        let mut wire = encode(b"MSH|one").to_vec();
        wire.extend_from_slice(&encode(b"MSH|two"));
        wire.extend_from_slice(&encode(&[ACK]));
        theirs.write_all(&wire).await.unwrap();
        let mut held = Vec::new();
        send_committed(&mut link, b"MSH|x", Duration::from_secs(5), &mut held, 4)
            .await
            .unwrap();
        let payloads: Vec<Vec<u8>> = held
            .iter()
            .map(|d| match d {
                Decoded::Frame(f) => f.payload().to_vec(),
                Decoded::Oversize { .. } => Vec::new(),
            })
            .collect();
        assert_eq!(payloads, vec![b"MSH|one".to_vec(), b"MSH|two".to_vec()]);
    }

    /// A copy that crossed our ACK is answered by it; the window closes at the next other
    /// frame or when the peer commits what followed, and a NAK opens none.
    #[test]
    fn resends_recognise_copies_only_until_the_peer_moves_on() {
        let mut resends = Resends::default();
        assert!(!resends.is_copy(b"MSH|1"), "nothing committed yet");
        resends.committed(Bytes::from_static(b"MSH|1"));
        assert!(resends.matches(b"MSH|1"));
        assert!(resends.is_copy(b"MSH|1"));
        assert!(
            resends.is_copy(b"MSH|1"),
            "several copies may cross one ACK"
        );
        assert!(!resends.is_copy(b"MSH|2"), "another frame: a message");
        assert!(
            !resends.is_copy(b"MSH|1"),
            "the window closed at the other frame"
        );
        resends.committed(Bytes::from_static(b"MSH|3"));
        resends.settled();
        assert!(
            !resends.is_copy(b"MSH|3"),
            "sent again after the peer committed our ack: a new message"
        );
    }

    #[tokio::test]
    async fn all_naks_is_refused() {
        let (ours, mut theirs) = tokio::io::duplex(4096);
        let mut link = Link::new(ours, 1024);
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            for _ in 0..=MAX_RESENDS {
                let _ = theirs.read(&mut buf).await.unwrap();
                theirs.write_all(&encode(&[NAK])).await.unwrap();
            }
            // Keep the stream open until the sender gives up.
            let _ = theirs.read(&mut buf).await;
        });
        let mut held = Vec::new();
        let err = send_committed(&mut link, b"MSH|x", Duration::from_secs(5), &mut held, 4)
            .await
            .unwrap_err();
        assert!(
            matches!(err, CommitError::Refused(n) if n == MAX_RESENDS + 1),
            "{err}"
        );
    }
}
