//! An MLLP link: a byte stream plus the frame decoder that reads it.
//!
//! Owns buffering and the read/write loop over one connection; the same type reads messages on
//! the downstream leg and acks on the upstream leg. Must not know what the frames mean.

use std::io;

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
}

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
