//! One open connection to the receiver and one round trip on it: send a frame (with MLLP
//! release 2's commit block when this side speaks it), wait for the ack under the ack timeout,
//! check that its MSA-2 answers the message, and set aside what a two-way receiver sends on its
//! own meanwhile. Must not know how the connection was made or which sender the message is from.

use std::io;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::time::timeout;

use super::error::UpstreamError;
use crate::config::MllpRelease;
use crate::net::Stream;
use crate::ops::metrics::AckDuration;
use crate::timing::deadline_timer::DeadlineTimer;
use crate::wire::ack::{self, AckMismatch};
use crate::wire::codec::{Decoded, Frame};
use crate::wire::commit::{self, Commit};
use crate::wire::hl7::{AckCode, AckError, AckView};
use crate::wire::link::{Link, MAX_SET_ASIDE};

/// The upstream's verified ack, ready to relay unchanged.
#[derive(Debug)]
pub struct VerifiedAck {
    pub code: AckCode,
    /// The ack's payload, byte for byte what the upstream sent (framing removed).
    pub ack: Bytes,
}

/// One open connection to the upstream.
pub struct UpstreamConn {
    pub(super) link: Link<Stream>,
    /// Whether it has carried no exchange yet (a failure on it is not worth retrying).
    pub(super) fresh: bool,
    /// When it last carried traffic (for `idle_reconnect`).
    pub(super) last_used: Instant,
    /// The release this side speaks.
    pub(super) release: MllpRelease,
    /// Release 2: how long each send waits for the receiver's commit block
    /// (`framing.commit_timeout`), so that resends happen within the ack timeout.
    pub(super) commit_timeout: Duration,
    /// The ack timeout's timer, kept from one exchange to the next.
    pub(super) ack_timer: DeadlineTimer,
    /// The upstream's reconnect generation when this connection was opened: one from before an
    /// operator's reconnect is closed instead of reused.
    pub(super) generation: u64,
}

impl UpstreamConn {
    /// The next message the receiver sent on its own (set aside during an exchange, or
    /// already buffered), without reading. Commit blocks nobody waits for are skipped.
    pub fn next_inbound(&mut self) -> Option<Decoded> {
        loop {
            let item = self
                .link
                .take_set_aside()
                .or_else(|| self.link.try_decode())?;
            if !commit::is_commit(&item) {
                return Some(item);
            }
        }
    }

    /// Waits for more bytes from the receiver (cancel-safe); 0 means it closed.
    pub async fn read_more(&mut self) -> io::Result<usize> {
        let n = self.link.read_more().await?;
        if n > 0 {
            self.last_used = Instant::now();
        }
        Ok(n)
    }

    /// Whether a frame from the receiver has started and not ended.
    pub fn in_frame(&self) -> bool {
        self.link.in_frame()
    }

    /// When this connection last carried traffic.
    pub fn last_used(&self) -> Instant {
        self.last_used
    }

    /// Answers a message the receiver sent: a commit block first when this side speaks
    /// release 2 (ACK when `committed`, NAK otherwise, and then nothing more), then the ack
    /// payload (waiting for its commit under release 2).
    pub async fn answer_inbound(
        &mut self,
        committed: bool,
        ack: &[u8],
        per_attempt: Duration,
    ) -> Result<(), UpstreamError> {
        self.last_used = Instant::now();
        if self.release == MllpRelease::One {
            return self
                .link
                .send_payload(ack)
                .await
                .map_err(UpstreamError::Send);
        }
        let commit = if committed { Commit::Ack } else { Commit::Nak };
        commit::answer(&mut self.link, commit)
            .await
            .map_err(UpstreamError::Send)?;
        if !committed {
            return Ok(());
        }
        let mut held = Vec::new();
        let result =
            commit::send_committed(&mut self.link, ack, per_attempt, &mut held, MAX_SET_ASIDE)
                .await
                .map_err(UpstreamError::NotCommitted);
        if !self.link.set_aside(held) {
            return Err(UpstreamError::Flooded);
        }
        result
    }

    /// Closes the connection cleanly (bounded: a stuck TLS close does not hold the caller).
    pub async fn close(mut self) {
        let _ = timeout(Duration::from_secs(1), self.link.shutdown()).await;
    }

    /// Sends `frame` and waits for no ack (MLLP release 2: only for the commit block, under
    /// `per_attempt`). What the receiver sends later is read as any other inbound frame.
    pub(super) async fn send_only(
        &mut self,
        frame: &Frame,
        per_attempt: Duration,
    ) -> Result<(), UpstreamError> {
        if self.release == MllpRelease::Two {
            let mut held = Vec::new();
            let result = commit::send_committed(
                &mut self.link,
                frame.payload(),
                per_attempt,
                &mut held,
                MAX_SET_ASIDE,
            )
            .await
            .map_err(UpstreamError::NotCommitted);
            if !self.link.set_aside(held) {
                return Err(UpstreamError::Flooded);
            }
            result?;
        } else {
            self.link
                .send_frame(frame)
                .await
                .map_err(UpstreamError::Send)?;
        }
        self.last_used = Instant::now();
        Ok(())
    }

    /// Sends `frame` and waits up to `ack_timeout` for the ack that answers `control_id`
    /// (MLLP release 2: the commit block first). On a two-way connection, messages the receiver
    /// sends meanwhile are set aside for the session. The time to the ack goes to
    /// `ack_duration`. On any error the caller drops the connection.
    pub(super) async fn round_trip(
        &mut self,
        frame: &Frame,
        control_id: &[u8],
        two_way: bool,
        ack_timeout: Duration,
        ack_duration: &AckDuration,
    ) -> Result<VerifiedAck, UpstreamError> {
        let conn = self;
        let mut held: Vec<Decoded> = Vec::new();
        let sent_at = Instant::now();
        // The exchange borrows the link; the ack timeout runs on the connection's own timer.
        let UpstreamConn {
            link,
            release,
            commit_timeout,
            ack_timer,
            ..
        } = conn;
        let release = *release;
        let per_attempt = *commit_timeout;
        let exchange = async {
            if release == MllpRelease::Two {
                commit::send_committed(
                    link,
                    frame.payload(),
                    per_attempt,
                    &mut held,
                    MAX_SET_ASIDE,
                )
                .await
                .map_err(UpstreamError::NotCommitted)?;
            } else {
                link.send_frame(frame).await.map_err(UpstreamError::Send)?;
            }
            // The ack may already be among the frames that came before the commit block.
            let mut earlier = std::mem::take(&mut held).into_iter();
            loop {
                let item = match earlier.next() {
                    Some(item) => item,
                    None => match link.next().await {
                        Ok(Some(item)) => item,
                        Ok(None) => return Err(UpstreamError::ClosedBeforeAck),
                        Err(err) => return Err(UpstreamError::Receive(err)),
                    },
                };
                let ack = match item {
                    Decoded::Frame(ack) => ack,
                    Decoded::Oversize { len, .. } if !two_way => {
                        return Err(UpstreamError::AckOversize(len))
                    }
                    oversize @ Decoded::Oversize { .. } => {
                        held.push(oversize);
                        continue;
                    }
                };
                if commit::of_frame(&ack).is_some() {
                    continue; // a stray commit block: nothing waits for it
                }
                // Parsed once: whether it answers our message, or (two-way) is not an ack.
                let verdict = ack::verify(ack.payload(), control_id);
                // On a two-way connection a frame with a header but no MSA is the receiver's
                // own message, and so is an enhanced-mode ack of another control id (an
                // application ack of an earlier message, itself a message with MSH-15 valued):
                // neither is our ack, both are set aside for the session to relay. An
                // original-mode ack of another control id is a wrong ack, as before.
                let theirs = match &verdict {
                    Err(AckMismatch::NotAnAck(AckError::NoMsa)) => true,
                    Err(AckMismatch::WrongControlId { .. }) => AckView::parse(ack.payload())
                        .is_ok_and(|a| !a.header().accept_ack_type().is_empty()),
                    _ => false,
                };
                if two_way && theirs {
                    if held.len() >= MAX_SET_ASIDE {
                        return Err(UpstreamError::Flooded);
                    }
                    held.push(Decoded::Frame(ack));
                    continue;
                }
                if release == MllpRelease::Two {
                    commit::answer(link, Commit::Ack)
                        .await
                        .map_err(UpstreamError::Send)?;
                }
                return Ok((ack, verdict));
            }
        };
        let deadline = tokio::time::Instant::from_std(sent_at + ack_timeout);
        let outcome = ack_timer.limit(deadline, exchange).await;
        if !conn.link.set_aside(held) {
            return Err(UpstreamError::Flooded);
        }
        let (ack, verdict) = outcome.map_err(|_| UpstreamError::AckTimeout(ack_timeout))??;
        let acked_at = Instant::now();
        conn.last_used = acked_at;
        ack_duration.observe(acked_at - sent_at);
        let code = verdict.map_err(UpstreamError::AckMismatch)?;
        Ok(VerifiedAck {
            code,
            ack: ack.payload_bytes(),
        })
    }
}
