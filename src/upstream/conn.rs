//! One open connection to the receiver and one round trip on it: send a frame (with MLLP
//! release 2's commit block when this side speaks it), wait for the ack under the ack timeout,
//! check that its MSA-2 answers the message, and keep apart what a two-way receiver sends on
//! its own meanwhile: handed to the session at once over the [`ExchangeEnd`], whose answers
//! the round trip writes while it waits. Must not know how the connection was made or which
//! sender the message is from.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::time::timeout;

use super::crossing::{ExchangeEnd, NotHanded, ToReceiver};
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
    /// Which connection this is ([`UpstreamConn::serial`]).
    pub(super) serial: u64,
}

/// The serial of the next connection opened.
static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

/// A serial no other connection of this process has had.
pub(super) fn next_serial() -> u64 {
    NEXT_SERIAL.fetch_add(1, Ordering::Relaxed)
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

    /// Which connection this is: unique in the process, so an answer to what the receiver sent
    /// is written only on the connection it came on.
    pub fn serial(&self) -> u64 {
        self.serial
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
        let mut held = Vec::new();
        let result = answer_on(
            &mut self.link,
            self.release,
            (committed, ack),
            per_attempt,
            &mut held,
        )
        .await;
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
    /// (MLLP release 2: the commit block first). On a two-way connection (`crossing`), what the
    /// receiver sends on its own meanwhile is handed to the session at once, and the session's
    /// answers to it are written while the ack is awaited: neither direction waits for the
    /// other's ack. The time to the ack goes to `ack_duration`. On any error the caller drops
    /// the connection.
    pub(super) async fn round_trip(
        &mut self,
        frame: &Frame,
        control_id: &[u8],
        mut crossing: Option<&mut ExchangeEnd>,
        ack_timeout: Duration,
        ack_duration: &AckDuration,
    ) -> Result<VerifiedAck, UpstreamError> {
        let conn = self;
        let mut held: Vec<Decoded> = Vec::new();
        let sent_at = Instant::now();
        let two_way = crossing.is_some();
        // The exchange borrows the link; the ack timeout runs on the connection's own timer.
        let UpstreamConn {
            link,
            release,
            commit_timeout,
            ack_timer,
            serial,
            ..
        } = conn;
        let (release, per_attempt, serial) = (*release, *commit_timeout, *serial);
        let exchange = async {
            // What the receiver sent before (set aside when the connection was checked) goes
            // to the session first, in order.
            while let Some(earlier) = link.take_set_aside() {
                keep(crossing.as_deref(), serial, &mut held, earlier)?;
            }
            // Frames read while something else was awaited (a commit block), in order.
            let mut pending: VecDeque<Decoded> = VecDeque::new();
            if release == MllpRelease::Two {
                let mut before = Vec::new();
                let sent = commit::send_committed(
                    link,
                    frame.payload(),
                    per_attempt,
                    &mut before,
                    MAX_SET_ASIDE,
                )
                .await;
                pending.extend(before);
                sent.map_err(UpstreamError::NotCommitted)?;
            } else {
                link.send_frame(frame).await.map_err(UpstreamError::Send)?;
            }
            loop {
                let item = match (pending.pop_front(), crossing.as_deref_mut()) {
                    (Some(item), _) => item,
                    (None, None) => read(link.next().await)?,
                    (None, Some(end)) => {
                        // The receiver's next frame, or an answer the session has for it: a
                        // poll function, so that an exchange carries no select's state.
                        let woke = std::future::poll_fn(|cx| {
                            if let Poll::Ready(next) = link.poll_next(cx) {
                                return Poll::Ready(Woke::Read(next));
                            }
                            end.poll_answer(cx).map(Woke::Answer)
                        })
                        .await;
                        match woke {
                            Woke::Read(next) => read(next)?,
                            Woke::Answer(answer) => {
                                let mut before = Vec::new();
                                // Boxed: rare, and it would otherwise size every exchange.
                                let written = answer_crossing(
                                    link,
                                    release,
                                    per_attempt,
                                    serial,
                                    answer,
                                    &mut before,
                                );
                                Box::pin(written).await?;
                                pending.extend(before);
                                continue;
                            }
                        }
                    }
                };
                let ack = match item {
                    Decoded::Frame(ack) => ack,
                    Decoded::Oversize { len, .. } if !two_way => {
                        return Err(UpstreamError::AckOversize(len))
                    }
                    oversize @ Decoded::Oversize { .. } => {
                        keep(crossing.as_deref(), serial, &mut held, oversize)?;
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
                // neither is our ack. An original-mode ack of another control id is a wrong
                // ack, as before.
                let theirs = match &verdict {
                    Err(AckMismatch::NotAnAck(AckError::NoMsa)) => true,
                    Err(AckMismatch::WrongControlId { .. }) => AckView::parse(ack.payload())
                        .is_ok_and(|a| !a.header().accept_ack_type().is_empty()),
                    _ => false,
                };
                if two_way && theirs {
                    keep(crossing.as_deref(), serial, &mut held, Decoded::Frame(ack))?;
                    continue;
                }
                if release == MllpRelease::Two {
                    commit::answer(link, Commit::Ack)
                        .await
                        .map_err(UpstreamError::Send)?;
                }
                // Anything read after the ack stays for the session, in order.
                held.extend(pending);
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

/// What woke an exchange on a two-way connection.
enum Woke {
    /// A read of the receiver.
    Read(io::Result<Option<Decoded>>),
    /// An answer of the session's for the receiver.
    Answer(ToReceiver),
}

/// The frame a read of the receiver gave, or why there is none.
fn read(next: io::Result<Option<Decoded>>) -> Result<Decoded, UpstreamError> {
    match next {
        Ok(Some(item)) => Ok(item),
        Ok(None) => Err(UpstreamError::ClosedBeforeAck),
        Err(err) => Err(UpstreamError::Receive(err)),
    }
}

/// Keeps a frame the receiver sent on its own during an exchange: handed to the session at
/// once on a two-way connection, else (or when the session is gone) set aside in `held` for
/// after the exchange. Either way at most [`MAX_SET_ASIDE`] wait.
fn keep(
    crossing: Option<&ExchangeEnd>,
    serial: u64,
    held: &mut Vec<Decoded>,
    item: Decoded,
) -> Result<(), UpstreamError> {
    let item = match crossing {
        None => item,
        Some(end) => match end.hand_over(serial, item) {
            Ok(()) => return Ok(()),
            Err(NotHanded::Flooded) => return Err(UpstreamError::Flooded),
            Err(NotHanded::Gone(item)) => item,
        },
    };
    if held.len() >= MAX_SET_ASIDE {
        return Err(UpstreamError::Flooded);
    }
    held.push(item);
    Ok(())
}

/// Answers a message the receiver sent, on `link`: the ack (release 1); a commit block first
/// (release 2: ACK when `committed`, NAK otherwise and then nothing more), then the ack until
/// the receiver commits it, frames read meanwhile going to `held`.
async fn answer_on(
    link: &mut Link<Stream>,
    release: MllpRelease,
    (committed, ack): (bool, &[u8]),
    per_attempt: Duration,
    held: &mut Vec<Decoded>,
) -> Result<(), UpstreamError> {
    if release == MllpRelease::One {
        return link.send_payload(ack).await.map_err(UpstreamError::Send);
    }
    let commit = if committed { Commit::Ack } else { Commit::Nak };
    commit::answer(link, commit)
        .await
        .map_err(UpstreamError::Send)?;
    if !committed {
        return Ok(());
    }
    commit::send_committed(link, ack, per_attempt, held, MAX_SET_ASIDE)
        .await
        .map_err(UpstreamError::NotCommitted)
}

/// Writes, during an exchange, the session's answer to a message the receiver sent on the
/// connection `serial` (an answer for a connection since closed is dropped). A failed write
/// fails the exchange (the connection is broken); a receiver that does not commit the answer
/// (release 2) is logged, and the exchange goes on.
async fn answer_crossing(
    link: &mut Link<Stream>,
    release: MllpRelease,
    per_attempt: Duration,
    serial: u64,
    answer: ToReceiver,
    held: &mut Vec<Decoded>,
) -> Result<(), UpstreamError> {
    if answer.conn != serial {
        tracing::debug!(
            "the receiver's connection closed before the answer to its message could be written"
        );
        return Ok(());
    }
    let written = answer_on(
        link,
        release,
        (answer.committed, &answer.ack),
        per_attempt,
        held,
    )
    .await;
    match written {
        Err(UpstreamError::NotCommitted(err)) => {
            tracing::warn!(error = %err, "the receiver did not commit the answer to its message (MLLP release 2)");
            Ok(())
        }
        other => other,
    }
}
