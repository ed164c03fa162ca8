//! An MLLP link: a byte stream plus the frame decoder that reads it.
//!
//! Owns buffering and the read/write loop over one connection; the same type reads messages on
//! the downstream leg and acks on the upstream leg. It also holds frames set aside while
//! something else was awaited (a message that crossed an ack on a two-way connection), so they
//! are handled next, in order. Must not know what the frames mean.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::codec::{self, DecodeStats, Decoded, Decoder, Frame, Framing};

/// How much room a read asks for at least; large frames grow the buffer as they arrive.
const READ_CHUNK: usize = 16 * 1024;

/// A stream read as MLLP frames.
pub struct Link<S> {
    stream: S,
    decoder: Decoder,
    buf: BytesMut,
    /// Frames read while waiting for something else, to be handled before new ones.
    set_aside: VecDeque<Decoded>,
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
            buf: BytesMut::with_capacity(READ_CHUNK),
            set_aside: VecDeque::new(),
        }
    }

    /// The next frame (or oversize report), reading as needed. `Ok(None)` means the peer closed
    /// the connection; a frame it left unfinished is dropped (see [`Link::in_frame`] before).
    ///
    /// Cancel-safe: bytes already read stay buffered if the future is dropped, so it can race a
    /// timeout or a shutdown signal.
    pub async fn next(&mut self) -> io::Result<Option<Decoded>> {
        loop {
            if let Some(item) = self.try_decode() {
                return Ok(Some(item));
            }
            if self.read_more().await? == 0 {
                return Ok(None);
            }
        }
    }

    /// The next frame already buffered, without reading.
    pub fn try_decode(&mut self) -> Option<Decoded> {
        self.decoder.decode(&mut self.buf)
    }

    /// One read from the stream into the buffer; returns the byte count, 0 at end of stream.
    /// Cancel-safe.
    pub async fn read_more(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK {
            self.buf.reserve(READ_CHUNK);
        }
        self.stream.read_buf(&mut self.buf).await
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

    /// Whether frames are set aside.
    pub fn has_set_aside(&self) -> bool {
        !self.set_aside.is_empty()
    }

    /// Reads whatever the peer already sent, without waiting: a connection about to carry a
    /// message is checked this way (a FIN or RST waiting means it is closed).
    pub fn read_ready(&mut self) -> Ready {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK {
            self.buf.reserve(READ_CHUNK);
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), &mut cx, &mut self.buf) {
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

    /// Frames `payload` in this link's framing and sends it in one write.
    pub async fn send_payload(&mut self, payload: &[u8]) -> io::Result<()> {
        let wire = codec::encode_with(self.decoder.framing(), payload);
        self.send(&wire).await
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
