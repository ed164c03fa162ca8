//! An MLLP link: a byte stream plus the frame decoder that reads it.
//!
//! Owns buffering and the read/write loop over one connection; the same type reads messages on
//! the downstream leg and acks on the upstream leg. A link between frames holds no read buffer:
//! while it waits, a read lands in its worker thread's scratch buffer and only the bytes that
//! arrived are copied into a buffer of their own (see [`Link::read_more`]), so ten thousand
//! quiet connections cost ten thousand empty `BytesMut`s, not ten thousand 16 KiB buffers. It
//! also holds frames set aside while something else was awaited (a message that crossed an ack
//! on a two-way connection), so they are handled next, in order. Must not know what the frames
//! mean.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::wire::budget::{Budget, Share};
use crate::wire::codec::{self, DecodeStats, Decoded, Decoder, Frame, Framing};
use crate::wire::warm_buffers;

/// How much room a read into a started frame asks for at least; large frames grow the buffer as
/// they arrive.
const READ_CHUNK: usize = 16 * 1024;

/// The per-thread buffer reads between frames land in (see [`poll_read_between_frames`]).
const SCRATCH_BYTES: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice());
}

/// A stream read as MLLP frames.
pub struct Link<S> {
    stream: S,
    decoder: Decoder,
    buf: BytesMut,
    /// How long the last frame was on the wire: a large frame (one already past [`READ_CHUNK`]
    /// and still unfinished) makes room for this much at once, so a stream of large messages
    /// does not grow (and copy) a new buffer step by step for each of them, while small frames
    /// that happen to need two reads never reserve a large message's size.
    last_frame_len: usize,
    /// The size of `buf`'s allocation when the budget grew it (0 otherwise): between frames
    /// the emptied buffer goes to [`warm_buffers`], which keeps a large one for the next large
    /// frame to reuse.
    grown_to: usize,
    /// Frames read while waiting for something else, to be handled before new ones.
    set_aside: VecDeque<Decoded>,
    /// The process's memory budget; `None`: unbudgeted (acks from a receiver, the tools).
    budget: Option<Budget>,
    /// What this link holds of it, made when a frame first outgrows the allowance (boxed: an
    /// idle link, the common case, carries a pointer, not the semaphore's waiting state).
    share: Option<Box<Share>>,
}

/// What a look at the stream without waiting found (see [`Link::read_ready`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Ready {
    /// Nothing was waiting.
    Nothing,
    /// This many bytes were waiting and are now buffered.
    Bytes(usize),
    /// The peer closed the connection (or it failed).
    Closed,
}

/// At most this many frames are set aside on one link; a peer that sends more without waiting
/// for answers is misbehaving.
pub const MAX_SET_ASIDE: usize = 32;

impl<S: AsyncRead + AsyncWrite + Unpin> Link<S> {
    /// Wraps `stream`; frames whose payload exceeds `max_payload_bytes` come out as
    /// [`Decoded::Oversize`] and are never buffered whole.
    pub fn new(stream: S, max_payload_bytes: usize) -> Link<S> {
        Link::with_framing(stream, max_payload_bytes, Framing::MLLP)
    }

    /// Like [`Link::new`], with other framing bytes for this side.
    pub fn with_framing(stream: S, max_payload_bytes: usize, framing: Framing) -> Link<S> {
        Link {
            stream,
            decoder: Decoder::with_framing(max_payload_bytes, framing),
            buf: BytesMut::new(),
            last_frame_len: 0,
            grown_to: 0,
            set_aside: VecDeque::new(),
            budget: None,
            share: None,
        }
    }

    /// Makes this link take the bytes of a frame beyond [`crate::wire::budget::ALLOWANCE`] from `budget`
    /// before reading them: while the budget is spent, the link does not read.
    pub fn with_budget(mut self, budget: Budget) -> Link<S> {
        self.budget = Some(budget);
        self
    }

    /// The next frame (or oversize report), reading as needed. `Ok(None)` means the peer closed
    /// the connection; a frame it left unfinished is dropped (see [`Link::in_frame`] before).
    ///
    /// Cancel-safe: bytes already read stay buffered if the future is dropped, so it can race a
    /// timeout or a shutdown signal.
    pub async fn next(&mut self) -> io::Result<Option<Decoded>> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// [`Link::next`] as a poll function, for waiting on it beside something else without a
    /// future's state.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Decoded>>> {
        loop {
            if let Some(item) = self.try_decode() {
                return Poll::Ready(Ok(Some(item)));
            }
            match std::task::ready!(self.poll_read_more(cx)) {
                Ok(0) => return Poll::Ready(Ok(None)),
                Ok(_) => {}
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }

    /// The next frame already buffered, without reading.
    pub fn try_decode(&mut self) -> Option<Decoded> {
        let item = self.decoder.decode(&mut self.buf);
        if let Some(Decoded::Frame(frame)) = &item {
            self.last_frame_len = frame.as_wire().len();
        }
        item
    }

    /// One read from the stream into the buffer; returns the byte count, 0 at end of stream.
    /// Cancel-safe: what a read returned is in the buffer before this yields.
    ///
    /// Between frames (nothing buffered) the link first lets go of its old buffer, whose bytes
    /// now belong to the frames handed out, and waits holding nothing; see
    /// [`poll_read_between_frames`]. Inside a frame it reads straight into its buffer.
    pub async fn read_more(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_more(cx)).await
    }

    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.is_empty() {
            // Emptied: its bytes belong to the frames handed out. A large frame's buffer is
            // left for the next large frame to reuse once those frames are let go.
            warm_buffers::give(
                std::mem::take(&mut self.buf),
                std::mem::take(&mut self.grown_to),
            );
            // The frames handed out are answered by now: their bytes go back to the budget.
            if let Some(share) = &mut self.share {
                share.release();
            }
            return poll_read_between_frames(Pin::new(&mut self.stream), cx, &mut self.buf);
        }
        let spare = self.buf.capacity() - self.buf.len();
        // A buffer made for a frame like the last large one reads its last few KiB as they are:
        // the frame most likely ends there, and growing it by half again would copy the whole
        // frame (a 1 MiB memcpy for about every other 1 MiB message in the bench, issue 22). It
        // grows only once full, for a frame larger than the last.
        let sized_for_frame =
            self.buf.len() >= READ_CHUNK && self.buf.capacity() >= self.last_frame_len;
        if spare == 0 || (spare < READ_CHUNK && !sized_for_frame) {
            let room = if self.buf.len() >= READ_CHUNK {
                // A large frame: room for the rest of one like the last, at once.
                self.last_frame_len.saturating_sub(self.buf.len())
            } else {
                0
            };
            match &self.budget {
                None => self.buf.reserve(room.max(READ_CHUNK)),
                Some(budget) => {
                    let share = self
                        .share
                        .get_or_insert_with(|| Box::new(Share::new(budget.clone())));
                    // Grown to an exact, budgeted size (by half again, or to the last frame's
                    // size), so what the budget lends is what is allocated; not doubled, which
                    // would lend up to twice the bytes a stalled frame holds (a third more
                    // copying on a frame's first growth is the price).
                    let len = self.buf.len();
                    // Never beyond the largest frame (and one read) the decoder keeps: an
                    // oversize one is dropped as it arrives, not buffered.
                    let ceiling = self.decoder.max_payload_bytes() + READ_CHUNK + 8;
                    let capacity = (len + room.max(READ_CHUNK))
                        .max(self.buf.capacity() + self.buf.capacity() / 2)
                        .min(ceiling)
                        .max(len + READ_CHUNK);
                    // A large buffer that held an earlier frame, no longer held by it, is
                    // reused whole: its pages are already the process's (see warm_buffers).
                    let warm =
                        warm_buffers::take(capacity, warm_buffers::most_for(capacity, ceiling));
                    let size = warm.as_ref().map_or(capacity, |(_, size)| *size);
                    if share.poll_cover(cx, size).is_pending() {
                        if let Some((buf, size)) = warm {
                            warm_buffers::give(buf, size);
                        }
                        return Poll::Pending;
                    }
                    let mut grown = match warm {
                        Some((buf, _)) => buf,
                        None => BytesMut::with_capacity(capacity),
                    };
                    grown.extend_from_slice(&self.buf);
                    let mut outgrown = std::mem::replace(&mut self.buf, grown);
                    // The buffer outgrown (a large frame that grew again, or one whose end came
                    // with the next frame's first bytes, now copied) is left for reuse too.
                    outgrown.clear();
                    warm_buffers::give(outgrown, std::mem::replace(&mut self.grown_to, size));
                }
            }
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf)
    }

    /// Bytes this link holds of the memory budget (0 when unbudgeted).
    pub fn budget_held(&self) -> usize {
        self.share.as_ref().map_or(0, |share| share.held())
    }

    /// Keeps `items` (in order) to be returned by [`Link::take_set_aside`] before anything else.
    /// Returns false, keeping none of the excess, when that would exceed [`MAX_SET_ASIDE`].
    pub fn set_aside(&mut self, items: impl IntoIterator<Item = Decoded>) -> bool {
        for item in items {
            if self.set_aside.len() >= MAX_SET_ASIDE {
                return false;
            }
            self.set_aside.push_back(item);
        }
        true
    }

    /// The oldest frame set aside, if any.
    pub fn take_set_aside(&mut self) -> Option<Decoded> {
        self.set_aside.pop_front()
    }

    /// Takes out the first frame `wanted` picks among those set aside and those complete in the
    /// buffer, which are decoded and set aside on the way (in order, up to [`MAX_SET_ASIDE`]);
    /// every other frame stays where it was, to come out of [`Link::take_set_aside`] in order.
    /// Nothing is read from the stream. For looking past frames that must wait their turn for
    /// one that must not (a two-way sender's ack behind its own pipelined messages).
    pub fn take_ahead(&mut self, mut wanted: impl FnMut(&Decoded) -> bool) -> Option<Decoded> {
        if let Some(at) = self.set_aside.iter().position(&mut wanted) {
            return self.set_aside.remove(at);
        }
        while self.set_aside.len() < MAX_SET_ASIDE {
            let item = self.try_decode()?;
            if wanted(&item) {
                return Some(item);
            }
            self.set_aside.push_back(item);
        }
        None
    }

    /// How many frames are set aside (at most [`MAX_SET_ASIDE`]).
    pub fn set_aside_len(&self) -> usize {
        self.set_aside.len()
    }

    /// Removes every frame whose payload is `payload` from the frames set aside and those
    /// complete in the buffer (decoded and set aside first, up to [`MAX_SET_ASIDE`], keeping
    /// their order); returns how many. MLLP release 2: copies a peer sent before our commit
    /// block for the frame are answered by that block.
    pub fn remove_copies(&mut self, payload: &[u8]) -> usize {
        while self.set_aside.len() < MAX_SET_ASIDE {
            match self.try_decode() {
                Some(item) => self.set_aside.push_back(item),
                None => break,
            }
        }
        let before = self.set_aside.len();
        self.set_aside
            .retain(|item| !matches!(item, Decoded::Frame(frame) if frame.payload() == payload));
        before - self.set_aside.len()
    }

    /// Whether frames are set aside.
    pub fn has_set_aside(&self) -> bool {
        !self.set_aside.is_empty()
    }

    /// Reads whatever the peer already sent, without waiting: a connection about to carry a
    /// message is checked this way (a FIN or RST waiting means it is closed).
    pub fn read_ready(&mut self) -> Ready {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.poll_read_more(&mut cx) {
            Poll::Pending => Ready::Nothing,
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Ready::Closed,
            Poll::Ready(Ok(n)) => Ready::Bytes(n),
        }
    }

    /// Writes one whole frame (already encoded) in a single write call and flushes it.
    pub async fn send(&mut self, wire: &[u8]) -> io::Result<()> {
        self.stream.write_all(wire).await?;
        self.stream.flush().await
    }

    /// Frames `payload` in this link's framing and sends it in one write: a vectored one of
    /// the start byte, the payload and the end bytes where the stream takes those (TCP, TLS),
    /// so nothing is allocated or copied; else one encoded copy (a plain write of the first
    /// slice alone would split the frame over several writes).
    pub async fn send_payload(&mut self, payload: &[u8]) -> io::Result<()> {
        let framing = self.decoder.framing();
        if !self.stream.is_write_vectored() {
            let wire = codec::encode_with(framing, payload);
            return self.send(&wire).await;
        }
        let start = [framing.start()];
        let mut wire = Buf::chain(Buf::chain(&start[..], payload), framing.end());
        self.stream.write_all_buf(&mut wire).await?;
        self.stream.flush().await
    }

    /// Sends a decoded frame: as received when it is already in this link's framing (no copy),
    /// re-framed otherwise.
    pub async fn send_frame(&mut self, frame: &Frame) -> io::Result<()> {
        let framing = self.decoder.framing();
        let wire = frame.as_wire();
        if wire.first() == Some(&framing.start()) && wire.ends_with(framing.end()) {
            self.send(wire).await
        } else {
            self.send_payload(frame.payload()).await
        }
    }

    /// True while a frame has started and not ended.
    pub fn in_frame(&self) -> bool {
        self.decoder.in_frame()
    }

    /// The bytes read but not yet taken by the decoder.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Whether bytes are buffered that have not been decoded into a frame yet.
    pub fn has_buffered_bytes(&self) -> bool {
        !self.buf.is_empty()
    }

    /// What the decoder tolerated so far on this link.
    pub fn stats(&self) -> DecodeStats {
        self.decoder.stats()
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Closes the write side cleanly (TLS close_notify, then FIN).
    pub async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}

/// One read into this thread's scratch buffer, copying what arrived into `buf` (empty): an idle
/// link waits without a buffer of its own and allocates exactly what a read brought. The scratch
/// buffer is borrowed only inside this synchronous poll, never across an await. The copy is one
/// `memcpy` of the bytes read (about 30 ns for a 1 KiB message, against the 4 system calls
/// each message costs anyway); idle memory per connection is what it buys (issue 7,
/// BENCHMARKS.md).
fn poll_read_between_frames<S: AsyncRead>(
    stream: Pin<&mut S>,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    SCRATCH.with(|scratch| {
        let Ok(mut scratch) = scratch.try_borrow_mut() else {
            // Only reachable if a stream's own read re-entered a link on this thread; read
            // into a buffer of our own instead of failing.
            buf.reserve(READ_CHUNK);
            return tokio_util::io::poll_read_buf(stream, cx, buf);
        };
        let mut read = ReadBuf::new(&mut scratch[..]);
        match stream.poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) => {
                let got = read.filled();
                buf.extend_from_slice(got);
                Poll::Ready(Ok(got.len()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => Poll::Pending,
        }
    })
}

#[cfg(test)]
mod tests;
