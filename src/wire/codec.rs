//! MLLP framing: decoding a byte stream into frames and encoding payloads into frames.
//!
//! An MLLP frame is `0x0B payload 0x1C 0x0D` (HL7 v2 Transport, MLLP release 1). Some legacy
//! peers frame with other bytes; a [`Framing`] names them (a start byte and a one- or two-byte
//! end block, validated by [`Framing::new`]) and [`Framing::MLLP`] is the standard one, used
//! by every function without a framing argument. This module owns:
//!
//! - [`Decoder`]: an incremental, tolerant receiver. It takes bytes as they arrive (any
//!   split, down to one byte per read), keeps a resumable scan index so a slow
//!   multi-megabyte frame is scanned once, not from byte 0 on every read, bounds memory
//!   by `max_payload_bytes` (plus one read and [`HEAD_KEEP`]) and gives every malformed
//!   input one defined outcome (table below).
//! - [`Frame`]: one complete, canonical frame, held as a zero-copy slice of the read
//!   buffer so it can be forwarded in one write without re-encoding.
//! - [`encode`] / [`encode_into`] (and [`encode_with`] / [`encode_into_with`] for another
//!   framing): build a canonical frame around a payload.
//! - [`fuzz_decode`] / [`fuzz_decode_framed`]: the fuzz entry points; they assert the
//!   decoder's invariants.
//!
//! It must not know about sockets, timers or clocks (the caller reads, and runs its
//! receive timeout while [`Decoder::in_frame`] is true) nor about HL7 fields: a payload is
//! opaque bytes here. Everything is pure and synchronous.
//!
//! # Defined outcomes
//!
//! `VT` = 0x0B (start block), `FS` = 0x1C (end block), `CR` = 0x0D. "Noise" is counted in
//! [`DecodeStats::noise_bytes`]; the other counters are named in the last column.
//!
//! | input | outcome | counted in |
//! |---|---|---|
//! | `VT payload FS CR`, 1 <= payload length <= limit | [`Decoded::Frame`] | - |
//! | bytes outside a frame (before the first `VT`, between frames, CR/LF, `\n` after `FS CR`) | skipped up to the next `VT` | `noise_bytes` |
//! | `VT` inside a frame (`VT abc VT def FS CR`) | the partial frame is dropped, the second `VT` starts a new frame (`def` is delivered) | `restarted_frames` |
//! | `FS VT` (end block without `CR`, then a new start) | the unfinished frame is dropped, `VT` starts a new frame | `restarted_frames` |
//! | `FS` followed by any byte other than `CR` or `VT` | the frame is dropped; the decoder resyncs to the next `VT` (the byte after `FS` counts as noise) | `malformed_frames` |
//! | `VT FS CR` (empty payload) | dropped, not delivered | `empty_frames` |
//! | payload longer than the limit, ended by `FS CR` | its bytes are discarded as they arrive (only the first [`HEAD_KEEP`] are kept); one [`Decoded::Oversize`] when its end block arrives | `oversize_frames` |
//! | payload longer than the limit, then `VT` or `FS` + other byte | as the rows above (restart / malformed); no `Oversize` is emitted | as above |
//! | end of input inside a frame (including after a lone `FS`) | nothing is emitted; [`Decoder::in_frame`] stays true and the caller decides (timeout / close) | - |
//!
//! Never emitted: a payload containing `VT` or `FS`, a partial payload, a payload longer
//! than the limit. The outcome does not depend on how the input was split into reads.
//! A split between `FS` and `CR` is handled (the decoder waits for the next byte).
//!
//! With another [`Framing`] the table is the same with `VT` read as its start byte, `FS` as
//! the first byte of its end block and `CR` as the second. A one-byte end block has no second
//! byte: that byte alone ends the frame, so the rows about what follows `FS` do not apply
//! (`VT abc FS VT def FS` delivers `abc` and `def`, and anything after `FS` is outside the
//! frame).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use memchr::{memchr, memchr2};

/// MLLP start block (VT).
pub const START_BLOCK: u8 = 0x0B;
/// MLLP end block, first byte (FS).
pub const END_BLOCK: u8 = 0x1C;
/// MLLP end block, second byte (CR).
pub const CARRIAGE_RETURN: u8 = 0x0D;
/// How many leading payload bytes of an oversize frame are kept (enough for an MSH
/// header), so the caller can still answer it with a negative acknowledgement.
pub const HEAD_KEEP: usize = 4096;

/// The bytes that frame a message on the wire: a start byte, then the payload, then an end
/// block of one or two bytes. [`Framing::MLLP`] (`0x0B`, `0x1C 0x0D`) is the standard; other
/// values come from [`Framing::new`], which refuses any framing the decoder could not tell
/// apart from message text.
///
/// The start byte and the first end byte never occur inside a payload (the decoder scans for
/// them); the second end byte may (CR does, in every message).
/// `Debug` shows the bytes in hex: `Framing { start: 0x0B, end: [0x1C, 0x0D] }`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    start: u8,
    /// `end[..end_len]` is the end block; `end[1]` is 0 when `end_len` is 1.
    end: [u8; 2],
    /// 1 or 2.
    end_len: u8,
}

impl Framing {
    /// Standard MLLP: `0x0B payload 0x1C 0x0D`.
    pub const MLLP: Framing = Framing {
        start: START_BLOCK,
        end: [END_BLOCK, CARRIAGE_RETURN],
        end_len: 2,
    };

    /// A framing with this start byte and this end block (1 or 2 bytes), if the decoder can
    /// frame HL7 with it. Refused, with a sentence saying why:
    ///
    /// - an end block that is not 1 or 2 bytes long;
    /// - any printable ASCII byte (0x20 to 0x7E): it occurs in message text;
    /// - a start byte or first end byte that is CR (0x0D) or LF (0x0A), which end HL7 segments
    ///   (so a one-byte end block cannot be CR or LF), or that is not ASCII (0x80 to 0xFF),
    ///   which occurs in UTF-8 and ISO 8859 text: these two bytes must never occur in a payload;
    /// - a start byte equal to the (first) end byte, or a second end byte repeating the start
    ///   byte.
    pub fn new(start: u8, end: &[u8]) -> Result<Framing, String> {
        let framing = match *end {
            [e] => Framing {
                start,
                end: [e, 0],
                end_len: 1,
            },
            [e0, e1] => Framing {
                start,
                end: [e0, e1],
                end_len: 2,
            },
            _ => {
                return Err(format!(
                    "the end block must be 1 or 2 bytes, not {}",
                    end.len()
                ))
            }
        };
        let one = framing.end_len == 1;
        let first_end = if one {
            "the end byte"
        } else {
            "the first end byte"
        };
        let mut roles = vec![("the start byte", start), (first_end, end[0])];
        if !one {
            roles.push(("the second end byte", end[1]));
        }
        for (role, b) in roles {
            if (0x20..=0x7E).contains(&b) {
                return Err(format!(
                    "{role} {} is the printable character '{}', which occurs in message text; use a control byte (0x00 to 0x1F)",
                    hex(b),
                    char::from(b)
                ));
            }
        }
        // The two bytes the decoder scans for must never occur inside a payload.
        let segment_end = |b: u8| match b {
            CARRIAGE_RETURN => Some("0x0D: CR ends every HL7 segment"),
            b'\n' => Some("0x0A: LF ends HL7 segments for many senders"),
            _ => None,
        };
        if let Some(why) = segment_end(start) {
            return Err(format!(
                "the start byte may not be {why}, so every segment would restart the frame"
            ));
        }
        if let Some(why) = segment_end(end[0]) {
            let advice = if one {
                "use e.g. [0x1C] or [0x1C, 0x0D]"
            } else {
                "it may only come second, as in [0x1C, 0x0D]"
            };
            return Err(format!(
                "{first_end} may not be {why}, so every message would be cut at its first segment; {advice}"
            ));
        }
        for (role, b) in [("the start byte", start), (first_end, end[0])] {
            if b >= 0x80 {
                return Err(format!(
                    "{role} {} is not ASCII and occurs in UTF-8 and ISO 8859 message text; use a control byte (0x00 to 0x1F)",
                    hex(b)
                ));
            }
        }
        if start == end[0] {
            return Err(format!(
                "the start byte and {first_end} are both {}; they must differ",
                hex(start)
            ));
        }
        if !one && end[1] == start {
            return Err(format!(
                "the second end byte {} repeats the start byte; it must differ",
                hex(start)
            ));
        }
        Ok(framing)
    }

    /// The start byte (0x0B for MLLP).
    pub fn start(&self) -> u8 {
        self.start
    }

    /// The end block, one or two bytes (`[0x1C, 0x0D]` for MLLP).
    pub fn end(&self) -> &[u8] {
        &self.end[..usize::from(self.end_len)]
    }

    /// Bytes a frame adds around its payload (3 for MLLP).
    fn overhead(&self) -> usize {
        1 + usize::from(self.end_len)
    }
}

impl std::fmt::Debug for Framing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let end: Vec<String> = self.end().iter().map(|&b| hex(b)).collect();
        write!(
            f,
            "Framing {{ start: {}, end: [{}] }}",
            hex(self.start),
            end.join(", ")
        )
    }
}

impl Default for Framing {
    /// [`Framing::MLLP`].
    fn default() -> Self {
        Framing::MLLP
    }
}

/// `0x0B`, as written in messages and in the config file.
fn hex(b: u8) -> String {
    format!("0x{b:02X}")
}

/// One complete, canonical frame: `0x0B payload 0x1C 0x0D` in standard MLLP, or the same in
/// the [`Framing`] it was decoded with, with a non-empty payload that contains neither the
/// start byte nor the first end byte.
///
/// Holds the whole frame bytes (a zero-copy slice of the read buffer) so it can be
/// forwarded in one write without re-encoding. Its `Debug` output shows only the payload
/// length: payloads are patient data.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    /// Invariant: `raw = [start] payload end`, payload non-empty, `end` being `end_len` bytes.
    raw: Bytes,
    /// Length of the end block (2 for MLLP).
    end_len: u8,
}

impl Frame {
    /// The payload, without the framing bytes.
    pub fn payload(&self) -> &[u8] {
        &self.raw[1..self.payload_end()]
    }

    /// The payload as a zero-copy `Bytes` (shares the frame's buffer).
    pub fn payload_bytes(&self) -> Bytes {
        self.raw.slice(1..self.payload_end())
    }

    /// The full canonical frame bytes, ready to write (in the framing it was decoded with).
    pub fn as_wire(&self) -> &[u8] {
        &self.raw
    }

    /// Wraps a payload that was decoded earlier (e.g. read back from the custody queue) as a
    /// frame again. `None` if it is empty or contains 0x0B or 0x1C, which no decoded payload does.
    pub fn from_payload(payload: &[u8]) -> Option<Frame> {
        Frame::from_payload_with(Framing::MLLP, payload)
    }

    /// [`Frame::from_payload`] in another framing: `None` if the payload is empty or contains
    /// the framing's start byte or first end byte.
    pub fn from_payload_with(framing: Framing, payload: &[u8]) -> Option<Frame> {
        if payload.is_empty() || memchr2(framing.start, framing.end[0], payload).is_some() {
            return None;
        }
        Some(Frame {
            raw: encode_with(framing, payload),
            end_len: framing.end_len,
        })
    }

    /// The full canonical frame bytes, ready to write, without copying.
    pub fn into_wire(self) -> Bytes {
        self.raw
    }

    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        self.payload_end() - 1
    }

    /// Always false for a decoded frame (empty frames are dropped); kept for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn payload_end(&self) -> usize {
        self.raw.len() - usize::from(self.end_len)
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame").field("len", &self.len()).finish()
    }
}

/// Builds a canonical frame around `payload`, in one contiguous buffer.
///
/// The payload must not contain 0x0B or 0x1C (not checked: a decoded payload never does,
/// and acknowledgements built by this program never do).
pub fn encode(payload: &[u8]) -> Bytes {
    encode_with(Framing::MLLP, payload)
}

/// Appends a canonical frame around `payload` to `dst` (same contract as [`encode`]).
pub fn encode_into(payload: &[u8], dst: &mut BytesMut) {
    encode_into_with(Framing::MLLP, payload, dst);
}

/// [`encode`] in another framing. The payload must not contain the framing's start byte or
/// first end byte (not checked; a payload decoded with the same framing never does).
pub fn encode_with(framing: Framing, payload: &[u8]) -> Bytes {
    let mut dst = BytesMut::with_capacity(payload.len() + framing.overhead());
    encode_into_with(framing, payload, &mut dst);
    dst.freeze()
}

/// [`encode_into`] in another framing (same contract as [`encode_with`]).
pub fn encode_into_with(framing: Framing, payload: &[u8], dst: &mut BytesMut) {
    dst.reserve(payload.len() + framing.overhead());
    dst.put_u8(framing.start);
    dst.extend_from_slice(payload);
    dst.put_slice(framing.end());
}

/// What the decoder hands out.
///
/// `Debug` is redacting: it never prints payload bytes.
#[derive(PartialEq, Eq)]
pub enum Decoded {
    /// A complete frame with a non-empty payload.
    Frame(Frame),
    /// A frame whose payload grew beyond the limit; its bytes were discarded up to its end
    /// block (it is reported when its end arrives, so the caller can answer it). `head` is
    /// the first up-to-[`HEAD_KEEP`] payload bytes, so the caller can still read the MSH
    /// header and answer with a negative ack; `len` is the full payload length seen.
    Oversize { head: Bytes, len: u64 },
}

impl std::fmt::Debug for Decoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decoded::Frame(frame) => f.debug_tuple("Frame").field(frame).finish(),
            Decoded::Oversize { head, len } => f
                .debug_struct("Oversize")
                .field("head_len", &head.len())
                .field("len", len)
                .finish(),
        }
    }
}

/// Monotonic counters of what the decoder tolerated (see the module's outcome table; the
/// bytes named here are those of standard MLLP, read them as the decoder's framing).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DecodeStats {
    /// Bytes outside any frame that were skipped (before 0x0B, `\n` after 0x1C 0x0D,
    /// garbage between frames, the byte after a malformed end block).
    pub noise_bytes: u64,
    /// Partial frames dropped because a new 0x0B arrived inside them (also after a lone 0x1C).
    pub restarted_frames: u64,
    /// Frames dropped because 0x1C was followed by something other than 0x0D or 0x0B.
    pub malformed_frames: u64,
    /// `0x0B 0x1C 0x0D` with nothing inside: dropped, not forwarded.
    pub empty_frames: u64,
    /// Oversize frames reported (one per [`Decoded::Oversize`]).
    pub oversize_frames: u64,
}

/// Where the decoder is in the stream.
enum State {
    /// Outside any frame: everything up to the next start block is noise.
    Idle,
    /// `buf[0]` is the frame's start block and `buf[1..scanned]` holds no start or first end
    /// byte (except possibly a lone first end byte at `scanned`, waiting for its next byte).
    InFrame { scanned: usize },
    /// An oversize frame whose bytes are being discarded until its end block. `head` keeps
    /// the first payload bytes (at most `HEAD_KEEP`), `len` counts every payload byte seen.
    /// `after_end_block`: the first byte of a two-byte end block was the last byte seen.
    Discarding {
        head: Vec<u8>,
        len: u64,
        after_end_block: bool,
    },
}

/// Incremental, tolerant MLLP decoder. See the module docs for the outcome of each input.
///
/// Usage: append what the socket read to a `BytesMut`, then call [`Decoder::decode`] until
/// it returns `None`; repeat. The caller must only append to the buffer between calls
/// (if it removes bytes, the decoder resyncs to the next start block).
pub struct Decoder {
    max_payload: usize,
    framing: Framing,
    state: State,
    stats: DecodeStats,
    /// Bytes handed to memchr, to prove the scan is linear.
    #[cfg(test)]
    scanned_bytes: u64,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Idle => "idle",
            State::InFrame { .. } => "in_frame",
            State::Discarding { .. } => "discarding_oversize",
        };
        f.debug_struct("Decoder")
            .field("max_payload_bytes", &self.max_payload)
            .field("framing", &self.framing)
            .field("state", &state)
            .field("stats", &self.stats)
            .finish()
    }
}

impl Decoder {
    /// A standard MLLP decoder that delivers payloads of at most `max_payload_bytes` bytes
    /// and reports longer ones as [`Decoded::Oversize`].
    pub fn new(max_payload_bytes: usize) -> Decoder {
        Decoder::with_framing(max_payload_bytes, Framing::MLLP)
    }

    /// [`Decoder::new`] for another framing; the frames it delivers are in that framing.
    pub fn with_framing(max_payload_bytes: usize, framing: Framing) -> Decoder {
        Decoder {
            max_payload: max_payload_bytes,
            framing,
            state: State::Idle,
            stats: DecodeStats::default(),
            #[cfg(test)]
            scanned_bytes: 0,
        }
    }

    /// The payload limit this decoder was built with.
    pub fn max_payload_bytes(&self) -> usize {
        self.max_payload
    }

    /// The framing this decoder was built with.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Takes the next frame out of `buf`, consuming the bytes it used (including skipped
    /// noise and dropped frames). `None` = need more bytes: a partial frame stays in `buf`
    /// (at most `max_payload_bytes + 2` bytes) and the scan resumes where it stopped.
    /// Never panics, whatever the input.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Option<Decoded> {
        loop {
            match std::mem::replace(&mut self.state, State::Idle) {
                State::Idle => {
                    if buf.is_empty() {
                        return None;
                    }
                    match memchr(self.framing.start, buf) {
                        Some(i) => {
                            self.note_scanned(i + 1);
                            self.stats.noise_bytes += i as u64;
                            buf.advance(i);
                            self.state = State::InFrame { scanned: 1 };
                        }
                        None => {
                            self.note_scanned(buf.len());
                            self.stats.noise_bytes += buf.len() as u64;
                            buf.clear();
                            return None;
                        }
                    }
                }
                State::InFrame { scanned } => {
                    if let Some(out) = self.scan_frame(buf, scanned) {
                        return out;
                    }
                }
                State::Discarding {
                    head,
                    len,
                    after_end_block,
                } => {
                    if let Some(out) = self.discard(buf, head, len, after_end_block) {
                        return out;
                    }
                }
            }
        }
    }

    /// True while a frame has started (0x0B seen) and has not ended: the caller runs its
    /// receive timeout only then.
    pub fn in_frame(&self) -> bool {
        !matches!(self.state, State::Idle)
    }

    /// Counters (monotonic) of what was tolerated.
    pub fn stats(&self) -> DecodeStats {
        self.stats
    }

    /// One step inside a frame. `Some(x)` = return `x` from `decode`; `None` = state
    /// changed, keep looping.
    fn scan_frame(&mut self, buf: &mut BytesMut, scanned: usize) -> Option<Option<Decoded>> {
        let Framing {
            start,
            end: [end0, end1],
            end_len,
        } = self.framing;
        if scanned == 0 || buf.first() != Some(&start) || scanned > buf.len() {
            // The caller removed bytes behind our back: resync to the next start block.
            return None;
        }
        let tail = &buf[scanned..];
        let found = memchr2(start, end0, tail);
        self.note_scanned(found.map_or(tail.len(), |off| off + 1));
        let Some(off) = found else {
            let payload_len = buf.len() - 1;
            if payload_len > self.max_payload {
                let head = buf[1..1 + payload_len.min(HEAD_KEEP)].to_vec();
                buf.clear();
                self.state = State::Discarding {
                    head,
                    len: payload_len as u64,
                    after_end_block: false,
                };
            } else {
                self.state = State::InFrame { scanned: buf.len() };
            }
            return Some(None);
        };
        let i = scanned + off;
        if buf[i] == start {
            self.stats.restarted_frames += 1;
            buf.advance(i);
            self.state = State::InFrame { scanned: 1 };
            return None;
        }
        // buf[i] is the (first) end byte.
        let payload_len = i - 1;
        if payload_len > self.max_payload {
            let head = buf[1..1 + payload_len.min(HEAD_KEEP)].to_vec();
            buf.advance(i + 1);
            if end_len == 1 {
                return Some(Some(self.oversize(head, payload_len as u64)));
            }
            self.state = State::Discarding {
                head,
                len: payload_len as u64,
                after_end_block: true,
            };
            return None;
        }
        if end_len == 1 {
            if payload_len == 0 {
                self.stats.empty_frames += 1;
                buf.advance(i + 1);
                return None;
            }
            let raw = buf.split_to(i + 1).freeze();
            return Some(Some(Decoded::Frame(Frame { raw, end_len })));
        }
        match buf.get(i + 1) {
            None => {
                // Split between the two end bytes: look at the first again next time.
                self.state = State::InFrame { scanned: i };
                Some(None)
            }
            Some(&b) if b == end1 && payload_len == 0 => {
                self.stats.empty_frames += 1;
                buf.advance(i + 2);
                None
            }
            Some(&b) if b == end1 => {
                let raw = buf.split_to(i + 2).freeze();
                Some(Some(Decoded::Frame(Frame { raw, end_len })))
            }
            Some(&b) if b == start => {
                self.stats.restarted_frames += 1;
                buf.advance(i + 1);
                self.state = State::InFrame { scanned: 1 };
                None
            }
            Some(_) => {
                self.stats.malformed_frames += 1;
                buf.advance(i + 1);
                None
            }
        }
    }

    /// One step while discarding an oversize frame (same return convention as `scan_frame`).
    fn discard(
        &mut self,
        buf: &mut BytesMut,
        mut head: Vec<u8>,
        mut len: u64,
        after_end_block: bool,
    ) -> Option<Option<Decoded>> {
        let Framing {
            start,
            end: [end0, end1],
            end_len,
        } = self.framing;
        if after_end_block {
            return match buf.first() {
                None => {
                    self.state = State::Discarding {
                        head,
                        len,
                        after_end_block,
                    };
                    Some(None)
                }
                Some(&b) if b == end1 => {
                    buf.advance(1);
                    Some(Some(self.oversize(head, len)))
                }
                Some(&b) if b == start => {
                    self.stats.restarted_frames += 1;
                    self.state = State::InFrame { scanned: 1 };
                    None
                }
                Some(_) => {
                    self.stats.malformed_frames += 1;
                    None
                }
            };
        }
        let found = memchr2(start, end0, buf);
        self.note_scanned(found.map_or(buf.len(), |i| i + 1));
        let Some(i) = found else {
            keep_head(&mut head, buf);
            len += buf.len() as u64;
            buf.clear();
            self.state = State::Discarding {
                head,
                len,
                after_end_block: false,
            };
            return Some(None);
        };
        keep_head(&mut head, &buf[..i]);
        len += i as u64;
        if buf[i] == start {
            self.stats.restarted_frames += 1;
            buf.advance(i);
            self.state = State::InFrame { scanned: 1 };
            return None;
        }
        buf.advance(i + 1);
        if end_len == 1 {
            return Some(Some(self.oversize(head, len)));
        }
        self.state = State::Discarding {
            head,
            len,
            after_end_block: true,
        };
        None
    }

    /// Reports an oversize frame whose end block has just been consumed.
    fn oversize(&mut self, head: Vec<u8>, len: u64) -> Decoded {
        self.stats.oversize_frames += 1;
        Decoded::Oversize {
            head: Bytes::from(head),
            len,
        }
    }

    #[inline]
    fn note_scanned(&mut self, _n: usize) {
        #[cfg(test)]
        {
            self.scanned_bytes += _n as u64;
        }
    }

    /// Bytes held inside the decoder (the kept head of an oversize frame).
    #[cfg(test)]
    fn retained_bytes(&self) -> usize {
        match &self.state {
            State::Discarding { head, .. } => head.capacity(),
            _ => 0,
        }
    }
}

/// Appends to `head` as much of `bytes` as fits under `HEAD_KEEP`.
fn keep_head(head: &mut Vec<u8>, bytes: &[u8]) {
    let room = HEAD_KEEP.saturating_sub(head.len());
    head.extend_from_slice(&bytes[..room.min(bytes.len())]);
}

/// Payload limit used by [`fuzz_decode`]: small, so the oversize paths are reached.
const FUZZ_LIMIT: usize = 1024;

/// Fuzz entry: decodes `data` (a) whole and (b) fed in chunks whose sizes are derived from
/// the data itself, and asserts the decoder's invariants: it never panics, both runs give
/// identical outputs and counters, no payload contains 0x0B or 0x1C, no frame payload
/// exceeds the limit, every frame's wire form is canonical, oversize heads are at most
/// [`HEAD_KEEP`] bytes, and the buffer left between reads stays within the limit.
pub fn fuzz_decode(data: &[u8]) {
    fuzz_decode_with(Framing::MLLP, data);
}

/// Fuzz entry for other framings: the first bytes of `data` choose a framing (byte 0 is the
/// start byte, byte 1's low bit the end block's length, bytes 2 and 3 the end bytes), the rest
/// is the stream. Inputs whose framing [`Framing::new`] refuses are skipped. Asserts the
/// invariants of [`fuzz_decode`] for that framing and, for a two-byte end block of three
/// distinct bytes, that the decoder behaves exactly as the standard MLLP decoder on the stream
/// with the framing bytes swapped for MLLP's (same outputs, counters and state).
pub fn fuzz_decode_framed(data: &[u8]) {
    let [start, len, e0, e1, stream @ ..] = data else {
        return;
    };
    let end: &[u8] = if len & 1 == 0 { &[*e0] } else { &[*e0, *e1] };
    let Ok(framing) = Framing::new(*start, end) else {
        return;
    };
    let outcome = fuzz_decode_with(framing, stream);
    if framing.end_len == 2 && framing.end[0] != framing.end[1] {
        // A byte permutation taking this framing to MLLP's turns the decoder into the
        // standard one: nothing else depends on byte values.
        let to_mllp = permutation(
            [framing.start, framing.end[0], framing.end[1]],
            [START_BLOCK, END_BLOCK, CARRIAGE_RETURN],
        );
        let mapped: Vec<u8> = stream.iter().map(|&b| to_mllp[usize::from(b)]).collect();
        let (out, stats, in_frame) =
            fuzz_run(Framing::MLLP, &mapped, std::iter::once(mapped.len()));
        let translate = |b: &[u8]| {
            b.iter()
                .map(|&b| to_mllp[usize::from(b)])
                .collect::<Vec<u8>>()
        };
        let expected: Vec<Decoded> = outcome
            .0
            .iter()
            .map(|d| match d {
                Decoded::Frame(f) => Decoded::Frame(Frame {
                    raw: Bytes::from(translate(f.as_wire())),
                    end_len: 2,
                }),
                Decoded::Oversize { head, len } => Decoded::Oversize {
                    head: Bytes::from(translate(head)),
                    len: *len,
                },
            })
            .collect();
        assert_eq!(out, expected, "outputs differ from standard MLLP's");
        assert_eq!(stats, outcome.1, "counters differ from standard MLLP's");
        assert_eq!(in_frame, outcome.2, "state differs from standard MLLP's");
    }
}

/// A byte permutation mapping each `from[k]` to `to[k]` (both without repeats) by swapping
/// bytes, so that bytes in neither list map to themselves.
fn permutation<const N: usize>(from: [u8; N], to: [u8; N]) -> [u8; 256] {
    let mut map: [u8; 256] = std::array::from_fn(|b| b as u8);
    let mut inverse = map;
    for (&a, &b) in from.iter().zip(&to) {
        // Swap the images of `a` and of the byte currently mapped to `b`; earlier pairs are
        // untouched since their images differ from `b` and their sources from `a`.
        let (c, d) = (inverse[usize::from(b)], map[usize::from(a)]);
        map[usize::from(a)] = b;
        inverse[usize::from(b)] = a;
        map[usize::from(c)] = d;
        inverse[usize::from(d)] = c;
    }
    map
}

type FuzzOutcome = (Vec<Decoded>, DecodeStats, bool);

/// Decodes `data` whole and in data-derived chunks with `framing`; both must agree.
fn fuzz_decode_with(framing: Framing, data: &[u8]) -> FuzzOutcome {
    let whole = fuzz_run(framing, data, std::iter::once(data.len()));
    let sizes = (0..).map(|k: usize| match data.get(k % data.len().max(1)) {
        // 1..=64 bytes per read, and sometimes a TCP-segment-sized one.
        Some(&b) if b & 0xC0 == 0xC0 => 1460,
        Some(&b) => 1 + usize::from(b & 0x3F),
        None => 1,
    });
    let chunked = fuzz_run(framing, data, sizes);
    assert_eq!(whole, chunked, "outcome depends on how the input was split");
    whole
}

/// Decodes `data` fed in reads of the given sizes; checks per-output invariants.
fn fuzz_run(framing: Framing, data: &[u8], sizes: impl Iterator<Item = usize>) -> FuzzOutcome {
    let mut decoder = Decoder::with_framing(FUZZ_LIMIT, framing);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut rest = data;
    for size in sizes {
        if rest.is_empty() {
            break;
        }
        let (read, tail) = rest.split_at(size.clamp(1, rest.len()));
        rest = tail;
        buf.extend_from_slice(read);
        while let Some(decoded) = decoder.decode(&mut buf) {
            fuzz_check(framing, &decoded);
            out.push(decoded);
        }
        // A partial frame: start byte, payload up to the limit, a lone first end byte.
        assert!(
            buf.len() <= FUZZ_LIMIT + 2,
            "buffer kept {} bytes",
            buf.len()
        );
    }
    (out, decoder.stats(), decoder.in_frame())
}

fn fuzz_check(framing: Framing, decoded: &Decoded) {
    let has_delimiter = |b: &[u8]| memchr2(framing.start, framing.end[0], b).is_some();
    match decoded {
        Decoded::Frame(frame) => {
            let wire = frame.as_wire();
            let payload = frame.payload();
            assert!(!payload.is_empty() && payload.len() <= FUZZ_LIMIT);
            assert!(!frame.is_empty() && frame.len() == payload.len());
            assert_eq!(wire.len(), payload.len() + framing.overhead());
            assert_eq!(wire.first(), Some(&framing.start));
            assert!(wire.ends_with(framing.end()));
            assert!(!has_delimiter(payload), "payload contains a framing byte");
            assert_eq!(&frame.payload_bytes()[..], payload);
        }
        Decoded::Oversize { head, len } => {
            assert!(*len > FUZZ_LIMIT as u64);
            assert_eq!(head.len() as u64, (*len).min(HEAD_KEEP as u64));
            assert!(
                !has_delimiter(head),
                "oversize head contains a framing byte"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus");
    const BIG_LIMIT: usize = 4 << 20;

    fn corpus(rel: &str) -> PathBuf {
        Path::new(CORPUS).join(rel)
    }

    /// Feeds `data` split at `offsets` (ascending), returns every output.
    fn feed_split_at(decoder: &mut Decoder, data: &[u8], offsets: &[usize]) -> Vec<Decoded> {
        let mut bounds = vec![0];
        bounds.extend(offsets.iter().copied().filter(|&o| o > 0 && o < data.len()));
        bounds.push(data.len());
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for w in bounds.windows(2) {
            buf.extend_from_slice(&data[w[0]..w[1]]);
            while let Some(d) = decoder.decode(&mut buf) {
                out.push(d);
            }
        }
        out
    }

    fn feed_in_reads(decoder: &mut Decoder, data: &[u8], read: usize) -> Vec<Decoded> {
        let offsets: Vec<usize> = (read..data.len()).step_by(read).collect();
        feed_split_at(decoder, data, &offsets)
    }

    /// MSH-10: the 10th field of the first segment, split on the field separator.
    fn msh10(payload: &[u8]) -> String {
        let end = memchr2(b'\r', b'\n', payload).unwrap_or(payload.len());
        let segment = &payload[..end];
        assert!(
            segment.starts_with(b"MSH") && segment.len() > 3,
            "not an MSH"
        );
        let field = segment
            .split(|&b| b == segment[3])
            .nth(9)
            .expect("MSH-10 present");
        String::from_utf8(field.to_vec()).expect("ascii control id")
    }

    fn control_ids(out: &[Decoded]) -> Vec<String> {
        out.iter()
            .map(|d| match d {
                Decoded::Frame(f) => msh10(f.payload()),
                Decoded::Oversize { .. } => panic!("unexpected oversize: {d:?}"),
            })
            .collect()
    }

    fn frame(out: &Decoded) -> &Frame {
        match out {
            Decoded::Frame(f) => f,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    fn stats(noise: u64, restarted: u64, malformed: u64, empty: u64) -> DecodeStats {
        DecodeStats {
            noise_bytes: noise,
            restarted_frames: restarted,
            malformed_frames: malformed,
            empty_frames: empty,
            oversize_frames: 0,
        }
    }

    /// Counters each corpus stream must produce, and whether it ends inside a frame.
    fn expected_stats(file: &str) -> (DecodeStats, bool) {
        let prefix = &file[..2];
        match prefix {
            "10" => (stats(11, 0, 0, 0), false), // "GARBAGE\r\n\0\xff"
            "11" => (stats(2, 0, 0, 0), false),  // "\r\n"
            "12" => (stats(1, 0, 0, 0), false),  // "\n" after the first frame
            "13" => (stats(0, 0, 0, 0), true),   // lone 0x1C at EOF: still waiting
            "14" => (stats(0, 1, 0, 0), false),
            "15" => (stats(0, 1, 0, 0), false),
            "16" => (stats(0, 0, 0, 1), false),
            "17" => (stats(0, 0, 0, 0), true),
            "18" => (stats(0, 1, 0, 0), false),
            "19" => (stats(5, 0, 0, 0), false), // "NOISE"
            "22" => (stats(0, 0, 0, 0), true),
            _ => (stats(0, 0, 0, 0), false),
        }
    }

    #[test]
    fn every_corpus_stream_yields_the_recommended_control_ids_however_it_is_split() {
        let manifest = std::fs::read(corpus("frames/manifest.json")).expect("manifest");
        let manifest: serde_json::Value = serde_json::from_slice(&manifest).expect("json");
        let entries = manifest.as_array().expect("array");
        assert_eq!(entries.len(), 22);
        for entry in entries {
            let file = entry["file"].as_str().expect("file");
            let data = std::fs::read(corpus(&format!("frames/{file}"))).expect("stream");
            let chunks: Vec<usize> = entry["chunks"]
                .as_array()
                .map(|a| a.iter().map(|v| v.as_u64().unwrap() as usize).collect())
                .unwrap_or_default();
            let recommended: Vec<String> = entry["recommended"]
                .as_array()
                .expect("recommended")
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect();
            let (want_stats, want_in_frame) = expected_stats(file);
            for (mode, offsets) in [
                ("manifest chunks", chunks.clone()),
                ("whole", Vec::new()),
                ("byte by byte", (1..data.len()).collect()),
            ] {
                let mut decoder = Decoder::new(BIG_LIMIT);
                let out = feed_split_at(&mut decoder, &data, &offsets);
                assert_eq!(control_ids(&out), recommended, "{file} fed {mode}");
                assert_eq!(decoder.stats(), want_stats, "{file} fed {mode}");
                assert_eq!(decoder.in_frame(), want_in_frame, "{file} fed {mode}");
                for d in &out {
                    let f = frame(d);
                    // Forwarded byte-identical: the wire form is a slice of the input.
                    assert!(data.windows(f.as_wire().len()).any(|w| w == f.as_wire()));
                }
            }
        }
    }

    #[test]
    fn a_frame_split_between_fs_and_cr_waits_for_the_cr() {
        let wire = encode(b"MSH|^~\\&|A");
        let mut decoder = Decoder::new(1024);
        let mut buf = BytesMut::from(&wire[..wire.len() - 1]);
        assert_eq!(decoder.decode(&mut buf), None);
        assert!(decoder.in_frame());
        assert_eq!(buf.len(), wire.len() - 1, "partial frame is kept");
        buf.put_u8(CARRIAGE_RETURN);
        let out = decoder.decode(&mut buf).expect("frame");
        assert_eq!(frame(&out).as_wire(), &wire[..]);
        assert!(!decoder.in_frame());
        assert!(buf.is_empty());
    }

    #[test]
    fn vt_inside_a_frame_restarts_it_and_drops_the_partial() {
        let mut decoder = Decoder::new(1024);
        let mut buf = BytesMut::from(&b"\x0babc\x0bdef\x1c\x0d"[..]);
        let out = decoder.decode(&mut buf).expect("frame");
        assert_eq!(frame(&out).payload(), b"def");
        assert_eq!(decoder.stats(), stats(0, 1, 0, 0));
    }

    #[test]
    fn fs_followed_by_vt_drops_the_unfinished_frame_and_starts_a_new_one() {
        let mut decoder = Decoder::new(1024);
        let out = feed_in_reads(&mut decoder, b"\x0babc\x1c\x0bdef\x1c\x0d", 1);
        assert_eq!(out.len(), 1);
        assert_eq!(frame(&out[0]).payload(), b"def");
        assert_eq!(decoder.stats(), stats(0, 1, 0, 0));
    }

    #[test]
    fn fs_followed_by_another_byte_is_malformed_and_the_decoder_resyncs_to_the_next_vt() {
        let data = b"\x0babc\x1cXYZ\x0bdef\x1c\x0d";
        for read in [1, 3, data.len()] {
            let mut decoder = Decoder::new(1024);
            let out = feed_in_reads(&mut decoder, data, read);
            assert_eq!(out.len(), 1, "read size {read}");
            assert_eq!(frame(&out[0]).payload(), b"def");
            // The byte after 0x1C and the rest up to 0x0B are noise.
            assert_eq!(decoder.stats(), stats(3, 0, 1, 0), "read size {read}");
        }
    }

    #[test]
    fn empty_frames_are_dropped_and_counted() {
        let mut decoder = Decoder::new(1024);
        let mut buf = BytesMut::from(&b"\x0b\x1c\x0d\x0b\x1c\x0d"[..]);
        assert_eq!(decoder.decode(&mut buf), None);
        assert_eq!(decoder.stats(), stats(0, 0, 0, 2));
        assert!(buf.is_empty());
        assert!(!decoder.in_frame());
    }

    #[test]
    fn noise_outside_frames_is_consumed_so_the_buffer_does_not_grow() {
        let mut decoder = Decoder::new(1024);
        let mut buf = BytesMut::from(&b"hello\r\n"[..]);
        assert_eq!(decoder.decode(&mut buf), None);
        assert!(buf.is_empty());
        assert!(!decoder.in_frame());
        assert_eq!(decoder.stats().noise_bytes, 7);
    }

    #[test]
    fn in_frame_is_true_only_between_a_start_block_and_its_end() {
        let mut decoder = Decoder::new(1024);
        let mut buf = BytesMut::new();
        assert!(!decoder.in_frame());
        buf.extend_from_slice(b"\r\n\x0bMSH");
        assert_eq!(decoder.decode(&mut buf), None);
        assert!(decoder.in_frame());
        buf.extend_from_slice(b"|x\x1c\x0d");
        assert!(decoder.decode(&mut buf).is_some());
        assert!(!decoder.in_frame());
    }

    #[test]
    fn payload_at_the_limit_is_delivered_and_one_byte_more_is_oversize() {
        let limit = 100;
        let at_limit = vec![b'a'; limit];
        let over = vec![b'b'; limit + 1];
        for read in [1, 7, 1000] {
            let mut decoder = Decoder::new(limit);
            let mut data = encode(&at_limit).to_vec();
            data.extend_from_slice(&encode(&over));
            let out = feed_in_reads(&mut decoder, &data, read);
            assert_eq!(out.len(), 2, "read size {read}");
            assert_eq!(frame(&out[0]).payload(), &at_limit[..]);
            assert_eq!(
                out[1],
                Decoded::Oversize {
                    head: Bytes::from(over.clone()),
                    len: (limit + 1) as u64
                }
            );
        }
    }

    #[test]
    fn an_oversize_frame_is_reported_once_with_its_head_and_length_then_decoding_goes_on() {
        let limit = 100;
        let big: Vec<u8> = (0..5000u32).map(|i| b'A' + (i % 26) as u8).collect();
        let mut data = encode(&big).to_vec();
        data.extend_from_slice(&encode(b"MSH|^~\\&|next"));
        for read in [1, 13, 1460, data.len()] {
            let mut decoder = Decoder::new(limit);
            let out = feed_in_reads(&mut decoder, &data, read);
            assert_eq!(out.len(), 2, "read size {read}");
            assert_eq!(
                out[0],
                Decoded::Oversize {
                    head: Bytes::copy_from_slice(&big[..HEAD_KEEP]),
                    len: 5000
                },
                "read size {read}"
            );
            assert_eq!(frame(&out[1]).payload(), b"MSH|^~\\&|next");
            assert_eq!(decoder.stats().oversize_frames, 1);
            assert!(!decoder.in_frame());
        }
    }

    #[test]
    fn an_oversize_frame_interrupted_by_a_new_start_block_is_dropped_not_reported() {
        let mut data = vec![START_BLOCK];
        data.extend_from_slice(&[b'x'; 500]);
        data.extend_from_slice(&encode(b"ok"));
        for read in [1, 64, data.len()] {
            let mut decoder = Decoder::new(100);
            let out = feed_in_reads(&mut decoder, &data, read);
            assert_eq!(out.len(), 1, "read size {read}");
            assert_eq!(frame(&out[0]).payload(), b"ok");
            assert_eq!(decoder.stats(), stats(0, 1, 0, 0), "read size {read}");
        }
    }

    #[test]
    fn an_oversize_frame_with_a_malformed_end_is_dropped_and_counted_as_malformed() {
        let mut data = vec![START_BLOCK];
        data.extend_from_slice(&[b'x'; 500]);
        data.extend_from_slice(b"\x1cZ");
        data.extend_from_slice(&encode(b"ok"));
        for read in [1, 64, data.len()] {
            let mut decoder = Decoder::new(100);
            let out = feed_in_reads(&mut decoder, &data, read);
            assert_eq!(out.len(), 1, "read size {read}");
            assert_eq!(frame(&out[0]).payload(), b"ok");
            assert_eq!(decoder.stats(), stats(1, 0, 1, 0), "read size {read}");
        }
    }

    #[test]
    fn memory_stays_bounded_while_a_huge_frame_trickles_in() {
        let limit = 64 * 1024;
        let read = 1024;
        let mut decoder = Decoder::new(limit);
        let mut buf = BytesMut::new();
        buf.put_u8(START_BLOCK);
        let chunk = vec![b'z'; read];
        let total = 8 << 20;
        let mut max_cap = 0;
        for _ in 0..total / read {
            buf.extend_from_slice(&chunk);
            assert_eq!(decoder.decode(&mut buf), None);
            assert!(buf.len() <= limit + 2);
            assert!(decoder.retained_bytes() <= HEAD_KEEP);
            max_cap = max_cap.max(buf.capacity());
        }
        assert!(
            max_cap <= 2 * (limit + read),
            "buffer capacity grew to {max_cap}"
        );
        buf.extend_from_slice(&[END_BLOCK, CARRIAGE_RETURN]);
        match decoder.decode(&mut buf) {
            Some(Decoded::Oversize { head, len }) => {
                assert_eq!(len, total as u64);
                assert_eq!(head.len(), HEAD_KEEP);
            }
            other => panic!("expected oversize, got {other:?}"),
        }
    }

    #[test]
    fn a_16_mib_frame_trickled_in_1_kib_reads_is_scanned_in_linear_time() {
        let len = 16 << 20;
        let payload: Vec<u8> = (0..len).map(|i| b'0' + (i % 10) as u8).collect();
        let wire = encode(&payload);
        let mut decoder = Decoder::new(32 << 20);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for read in wire.chunks(1024) {
            buf.extend_from_slice(read);
            while let Some(d) = decoder.decode(&mut buf) {
                out.push(d);
            }
        }
        assert_eq!(out.len(), 1);
        assert_eq!(frame(&out[0]).payload(), &payload[..]);
        assert!(
            decoder.scanned_bytes < 2 * wire.len() as u64,
            "scanned {} bytes for a {} byte frame",
            decoder.scanned_bytes,
            wire.len()
        );
    }

    #[test]
    fn many_frames_in_one_buffer_are_split_off_without_copying() {
        let data = std::fs::read(corpus("frames/03_hundred_frames_one_buffer.bin")).unwrap();
        let mut buf = BytesMut::from(&data[..]);
        let base = buf.as_ptr() as usize;
        let mut decoder = Decoder::new(BIG_LIMIT);
        let mut offset = 0;
        while let Some(d) = decoder.decode(&mut buf) {
            let f = frame(&d);
            assert_eq!(
                f.as_wire().as_ptr() as usize,
                base + offset,
                "zero-copy slice"
            );
            offset += f.as_wire().len();
        }
        assert_eq!(offset, data.len());
    }

    #[test]
    fn encoded_corpus_messages_decode_to_the_same_payload() {
        let mut count = 0;
        for path in corpus_files(Path::new(CORPUS), "hl7") {
            let payload = std::fs::read(&path).unwrap();
            let wire = encode(&payload);
            let mut appended = BytesMut::from(&b"noise"[..]);
            encode_into(&payload, &mut appended);
            assert_eq!(&appended[5..], &wire[..]);
            for read in [1460, wire.len()] {
                let mut decoder = Decoder::new(BIG_LIMIT);
                let out = feed_in_reads(&mut decoder, &wire, read);
                assert_eq!(out.len(), 1, "{}", path.display());
                let f = frame(&out[0]);
                assert_eq!(f.payload(), &payload[..], "{}", path.display());
                assert_eq!(f.as_wire(), &wire[..]);
                assert_eq!(f.len(), payload.len());
                assert_eq!(f.clone().into_wire(), wire);
            }
            count += 1;
        }
        assert_eq!(count, 28);
    }

    #[test]
    fn debug_output_never_shows_payload_bytes() {
        let out = Decoder::new(1024)
            .decode(&mut BytesMut::from(&encode(b"SECRET-PATIENT")[..]))
            .unwrap();
        let shown = format!("{out:?}");
        assert_eq!(shown, "Frame(Frame { len: 14 })");
        let oversize = Decoded::Oversize {
            head: Bytes::from_static(b"SECRET"),
            len: 9,
        };
        assert_eq!(format!("{oversize:?}"), "Oversize { head_len: 6, len: 9 }");
        let mut decoder = Decoder::new(4);
        decoder.decode(&mut BytesMut::from(&b"\x0bSECRET-PATIENT"[..]));
        assert!(!format!("{decoder:?}").contains("SECRET"));
    }

    #[test]
    fn a_caller_that_drops_buffered_bytes_does_not_make_the_decoder_panic() {
        let mut decoder = Decoder::new(1024);
        let mut buf = BytesMut::from(&b"\x0bpartial"[..]);
        assert_eq!(decoder.decode(&mut buf), None);
        buf.clear();
        buf.extend_from_slice(b"x");
        assert_eq!(decoder.decode(&mut buf), None);
        buf.extend_from_slice(&encode(b"ok"));
        let out = decoder.decode(&mut buf).expect("frame after resync");
        assert_eq!(frame(&out).payload(), b"ok");
    }

    /// Files under `dir` (recursively) with the given extension (`None` = all).
    fn corpus_files_any(dir: &Path, ext: Option<&str>) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.extend(corpus_files_any(&path, ext));
            } else if ext.is_none_or(|e| path.extension().is_some_and(|x| x == e)) {
                files.push(path);
            }
        }
        files.sort();
        files
    }

    fn corpus_files(dir: &Path, ext: &str) -> Vec<PathBuf> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == ext))
            .collect();
        files.sort();
        files
    }

    #[test]
    fn fuzz_decode_holds_on_every_corpus_file_raw_and_framed() {
        let files = corpus_files_any(Path::new(CORPUS), None);
        assert!(files.len() > 50);
        for path in files {
            let data = std::fs::read(&path).unwrap();
            fuzz_decode(&data);
            fuzz_decode(&encode(&data));
            // Two framed copies back to back, with a newline between them.
            let mut twice = encode(&data).to_vec();
            twice.push(b'\n');
            twice.extend_from_slice(&encode(&data));
            fuzz_decode(&twice);
        }
        fuzz_decode(&[]);
    }

    #[test]
    fn fuzz_decode_holds_on_adversarial_delimiter_soup() {
        // Deterministic pseudo-random streams dense in 0x0B/0x1C/0x0D.
        let alphabet = [START_BLOCK, END_BLOCK, CARRIAGE_RETURN, b'\n', b'M', b'|'];
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        for round in 0..200 {
            let len = 1 + round * 37;
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let sparse = state % (2 + round as u64 % 700);
                    if sparse == 0 {
                        alphabet[(state >> 8) as usize % alphabet.len()]
                    } else {
                        b'a' + (state >> 16) as u8 % 26
                    }
                })
                .collect();
            fuzz_decode(&data);
        }
    }

    // ---- Other framings ----------------------------------------------------------------

    const STX: u8 = 0x02;
    const ETX: u8 = 0x03;

    fn framing(start: u8, end: &[u8]) -> Framing {
        Framing::new(start, end).expect("valid framing")
    }

    /// Framings unlike MLLP: one-byte ends, other bytes, and MLLP's bytes in swapped roles.
    fn custom_framings() -> Vec<Framing> {
        vec![
            framing(STX, &[ETX]),
            framing(START_BLOCK, &[END_BLOCK]),
            framing(STX, &[ETX, CARRIAGE_RETURN]),
            framing(END_BLOCK, &[START_BLOCK, b'\n']),
        ]
    }

    /// Feeds `data` whole, byte by byte and, when it is small, in two reads split at every
    /// offset; asserts every run gives the same outputs, counters and state, and returns them.
    fn decode_every_split(framing: Framing, data: &[u8]) -> (Vec<Decoded>, DecodeStats, bool) {
        let run = |offsets: &[usize]| {
            let mut decoder = Decoder::with_framing(BIG_LIMIT, framing);
            let out = feed_split_at(&mut decoder, data, offsets);
            (out, decoder.stats(), decoder.in_frame())
        };
        let whole = run(&[]);
        let byte_by_byte: Vec<usize> = (1..data.len()).collect();
        assert!(run(&byte_by_byte) == whole, "byte by byte differs");
        if data.len() <= 2048 {
            for at in 1..data.len() {
                assert!(run(&[at]) == whole, "split at {at} differs");
            }
        }
        whole
    }

    #[test]
    fn framing_mllp_is_the_default_and_shows_its_bytes() {
        assert_eq!(Framing::default(), Framing::MLLP);
        assert_eq!(Framing::MLLP.start(), 0x0B);
        assert_eq!(Framing::MLLP.end(), &[0x1C, 0x0D]);
        assert_eq!(framing(0x0B, &[0x1C, 0x0D]), Framing::MLLP);
        let stx = framing(STX, &[ETX]);
        assert_eq!((stx.start(), stx.end()), (STX, &[ETX][..]));
        assert_eq!(Decoder::new(10).framing(), Framing::MLLP);
        assert_eq!(Decoder::with_framing(10, stx).framing(), stx);
        assert_eq!(
            format!("{:?}", Framing::MLLP),
            "Framing { start: 0x0B, end: [0x1C, 0x0D] }"
        );
        assert_eq!(format!("{stx:?}"), "Framing { start: 0x02, end: [0x03] }");
    }

    #[test]
    fn framings_the_decoder_could_confuse_with_message_text_are_refused_with_the_reason() {
        let cases: [(u8, &[u8], &str); 14] = [
            (0x0B, &[], "the end block must be 1 or 2 bytes, not 0"),
            (0x0B, &[0x1C, 0x0D, 0x0A], "the end block must be 1 or 2 bytes, not 3"),
            (b'A', &[0x1C], "the start byte 0x41 is the printable character 'A', which occurs in message text; use a control byte (0x00 to 0x1F)"),
            (0x0B, &[0x20], "the end byte 0x20 is the printable character ' ', which occurs in message text; use a control byte (0x00 to 0x1F)"),
            (0x0B, &[b'|', 0x0D], "the first end byte 0x7C is the printable character '|', which occurs in message text; use a control byte (0x00 to 0x1F)"),
            (0x0B, &[0x1C, b'~'], "the second end byte 0x7E is the printable character '~', which occurs in message text; use a control byte (0x00 to 0x1F)"),
            (0x0B, &[0x0D], "the end byte may not be 0x0D: CR ends every HL7 segment, so every message would be cut at its first segment; use e.g. [0x1C] or [0x1C, 0x0D]"),
            (0x0B, &[0x0A], "the end byte may not be 0x0A: LF ends HL7 segments for many senders, so every message would be cut at its first segment; use e.g. [0x1C] or [0x1C, 0x0D]"),
            (0x0D, &[0x1C, 0x0D], "the start byte may not be 0x0D: CR ends every HL7 segment, so every segment would restart the frame"),
            (0x0B, &[0x0A, 0x0D], "the first end byte may not be 0x0A: LF ends HL7 segments for many senders, so every message would be cut at its first segment; it may only come second, as in [0x1C, 0x0D]"),
            (0xE9, &[0x1C], "the start byte 0xE9 is not ASCII and occurs in UTF-8 and ISO 8859 message text; use a control byte (0x00 to 0x1F)"),
            (0x0B, &[0x0B], "the start byte and the end byte are both 0x0B; they must differ"),
            (0x1C, &[0x1C, 0x0D], "the start byte and the first end byte are both 0x1C; they must differ"),
            (0x0B, &[0x1C, 0x0B], "the second end byte 0x0B repeats the start byte; it must differ"),
        ];
        for (start, end, message) in cases {
            assert_eq!(
                Framing::new(start, end),
                Err(message.to_string()),
                "start {start:#04x}, end {end:02x?}"
            );
        }
        // The second end byte may be anything but printable or the start byte: CR, LF, the
        // first end byte again, a non-ASCII byte.
        for end in [[0x1C, 0x0A], [0x1C, 0x1C], [0x1C, 0xFF], [0x1C, 0x00]] {
            assert!(Framing::new(0x0B, &end).is_ok(), "{end:02x?}");
        }
        assert!(Framing::new(0x7F, &[0x00]).is_ok());
    }

    #[test]
    fn encode_with_and_from_payload_with_use_the_framing_bytes() {
        let stx = framing(STX, &[ETX]);
        assert_eq!(&encode_with(stx, b"MSH|x")[..], b"\x02MSH|x\x03");
        assert_eq!(encode_with(Framing::MLLP, b"MSH|x"), encode(b"MSH|x"));
        let mut dst = BytesMut::from(&b"noise"[..]);
        encode_into_with(stx, b"ab", &mut dst);
        assert_eq!(&dst[..], b"noise\x02ab\x03");

        // MLLP's bytes are plain payload bytes in another framing, and the reverse.
        let f = Frame::from_payload_with(stx, b"a\x0bb\x1cc").expect("frame");
        assert_eq!(f.as_wire(), b"\x02a\x0bb\x1cc\x03");
        assert_eq!(f.payload(), b"a\x0bb\x1cc");
        assert_eq!(&f.payload_bytes()[..], b"a\x0bb\x1cc");
        assert_eq!(f.len(), 5);
        assert_eq!(Frame::from_payload_with(stx, b"a\x02b"), None);
        assert_eq!(Frame::from_payload_with(stx, b"a\x03b"), None);
        assert_eq!(Frame::from_payload_with(stx, b""), None);
        assert_eq!(
            Frame::from_payload(b"a\x02\x03b").expect("mllp").as_wire(),
            b"\x0ba\x02\x03b\x1c\x0d"
        );
        let two = framing(STX, &[ETX, b'\n']);
        let f = Frame::from_payload_with(two, b"MSH\r").expect("frame");
        assert_eq!(f.clone().into_wire(), encode_with(two, b"MSH\r"));
        assert_eq!((f.payload(), f.len()), (&b"MSH\r"[..], 4));
    }

    #[test]
    fn every_corpus_stream_reframed_by_byte_swapping_decodes_identically_with_a_two_byte_end() {
        // Swapping MLLP's three bytes for the framing's three bytes (and back) leaves every
        // other byte alone, so malformed streams stay malformed in the same way.
        let manifest = std::fs::read(corpus("frames/manifest.json")).expect("manifest");
        let manifest: serde_json::Value = serde_json::from_slice(&manifest).expect("json");
        let twos: Vec<Framing> = custom_framings()
            .into_iter()
            .filter(|f| f.end().len() == 2)
            .collect();
        assert_eq!(twos.len(), 2);
        for framing in twos {
            let [e0, e1] = [framing.end()[0], framing.end()[1]];
            let to_custom = permutation(
                [START_BLOCK, END_BLOCK, CARRIAGE_RETURN],
                [framing.start(), e0, e1],
            );
            for entry in manifest.as_array().expect("array") {
                let file = entry["file"].as_str().expect("file");
                let mllp = std::fs::read(corpus(&format!("frames/{file}"))).expect("stream");
                let data: Vec<u8> = mllp.iter().map(|&b| to_custom[usize::from(b)]).collect();
                let recommended: Vec<String> = entry["recommended"]
                    .as_array()
                    .expect("recommended")
                    .iter()
                    .map(|v| v.as_str().unwrap().to_owned())
                    .collect();
                let (out, stats, in_frame) = decode_every_split(framing, &data);
                let ctx = format!("{file} in {framing:?}");
                assert_eq!(control_ids(&out), recommended, "{ctx}");
                assert_eq!((stats, in_frame), expected_stats(file), "{ctx}");
                let mut standard = Decoder::new(BIG_LIMIT);
                let want = feed_split_at(&mut standard, &mllp, &[]);
                assert_eq!(out.len(), want.len(), "{ctx}");
                for (got, want) in out.iter().zip(&want) {
                    let (got, want) = (frame(got), frame(want));
                    let back: Vec<u8> = got
                        .payload()
                        .iter()
                        .map(|&b| to_custom[usize::from(b)])
                        .collect();
                    assert_eq!(
                        back,
                        want.payload(),
                        "{ctx}: the swap is its own inverse here"
                    );
                    assert!(got.as_wire().starts_with(&[framing.start()]));
                    assert!(got.as_wire().ends_with(&[e0, e1]));
                    assert!(data
                        .windows(got.as_wire().len())
                        .any(|w| w == got.as_wire()));
                }
            }
        }
    }

    #[test]
    fn corpus_frames_reframed_with_a_custom_framing_decode_identically_however_split() {
        let manifest = std::fs::read(corpus("frames/manifest.json")).expect("manifest");
        let manifest: serde_json::Value = serde_json::from_slice(&manifest).expect("json");
        for framing in custom_framings() {
            for entry in manifest.as_array().expect("array") {
                let file = entry["file"].as_str().expect("file");
                let mllp = std::fs::read(corpus(&format!("frames/{file}"))).expect("stream");
                let mut standard = Decoder::new(BIG_LIMIT);
                let payloads: Vec<Vec<u8>> = feed_split_at(&mut standard, &mllp, &[])
                    .iter()
                    .map(|d| frame(d).payload().to_vec())
                    .collect();
                // The same frames in the custom framing, with CR LF noise between them.
                let mut data = Vec::new();
                for p in &payloads {
                    data.extend_from_slice(b"\r\n");
                    data.extend_from_slice(&encode_with(framing, p));
                }
                let (out, counters, in_frame) = decode_every_split(framing, &data);
                let ctx = format!("{file} in {framing:?}");
                let got: Vec<&[u8]> = out.iter().map(|d| frame(d).payload()).collect();
                let want: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
                assert_eq!(got, want, "{ctx}");
                for (d, p) in out.iter().zip(&payloads) {
                    assert_eq!(frame(d).as_wire(), &encode_with(framing, p)[..], "{ctx}");
                }
                let noise = 2 * payloads.len() as u64;
                assert_eq!(counters, stats(noise, 0, 0, 0), "{ctx}");
                assert!(!in_frame, "{ctx}");
            }
        }
    }

    #[test]
    fn encoded_corpus_messages_decode_to_the_same_payload_in_custom_framings() {
        for framing in custom_framings() {
            for path in corpus_files(Path::new(CORPUS), "hl7") {
                let payload = std::fs::read(&path).unwrap();
                let Some(expected) = Frame::from_payload_with(framing, &payload) else {
                    panic!("{} contains a byte of {framing:?}", path.display());
                };
                let wire = encode_with(framing, &payload);
                for read in [1460, wire.len()] {
                    let mut decoder = Decoder::with_framing(BIG_LIMIT, framing);
                    let out = feed_in_reads(&mut decoder, &wire, read);
                    assert_eq!(
                        out,
                        vec![Decoded::Frame(expected.clone())],
                        "{}",
                        path.display()
                    );
                }
            }
        }
    }

    #[test]
    fn with_a_one_byte_end_the_end_byte_alone_ends_the_frame() {
        let stx = framing(STX, &[ETX]);
        type Case<'a> = (&'a [u8], &'a [&'a [u8]], DecodeStats, bool);
        let cases: [Case; 6] = [
            // What follows the end byte is outside the frame: noise, or a new start.
            (
                b"\x02abc\x03X\x02def\x03",
                &[b"abc", b"def"],
                stats(1, 0, 0, 0),
                false,
            ),
            (
                b"\x02abc\x03\x02def\x03\r\n",
                &[b"abc", b"def"],
                stats(2, 0, 0, 0),
                false,
            ),
            // A start inside a frame restarts it, as in MLLP.
            (b"\x02abc\x02def\x03", &[b"def"], stats(0, 1, 0, 0), false),
            // Empty frames are dropped; MLLP's bytes are payload.
            (
                b"\x02\x03\x02\x0bx\x1c\x0d\x03",
                &[b"\x0bx\x1c\x0d"],
                stats(0, 0, 0, 1),
                false,
            ),
            // End of input inside a frame: still waiting.
            (b"\x02abc", &[], stats(0, 0, 0, 0), true),
            (b"noise\x03\x02", &[], stats(6, 0, 0, 0), true),
        ];
        for (data, payloads, want_stats, want_in_frame) in cases {
            let (out, stats, in_frame) = decode_every_split(stx, data);
            let got: Vec<&[u8]> = out.iter().map(|d| frame(d).payload()).collect();
            assert_eq!(got, payloads, "{data:02x?}");
            assert_eq!(
                (stats, in_frame),
                (want_stats, want_in_frame),
                "{data:02x?}"
            );
        }
    }

    #[test]
    fn an_oversize_frame_with_a_one_byte_end_is_reported_at_its_end_byte() {
        let limit = 100;
        let vt_fs = framing(START_BLOCK, &[END_BLOCK]);
        let big: Vec<u8> = (0..5000u32).map(|i| b'A' + (i % 26) as u8).collect();
        let at_limit = vec![b'a'; limit];
        let mut data = encode_with(vt_fs, &big).to_vec();
        data.extend_from_slice(&encode_with(vt_fs, &at_limit));
        data.extend_from_slice(&encode_with(vt_fs, &[b'b'; 101]));
        // Oversize, then interrupted by a start: dropped, not reported.
        data.push(START_BLOCK);
        data.extend_from_slice(&[b'x'; 500]);
        data.extend_from_slice(&encode_with(vt_fs, b"ok"));
        for read in [1, 13, 1460, data.len()] {
            let mut decoder = Decoder::with_framing(limit, vt_fs);
            let out = feed_in_reads(&mut decoder, &data, read);
            assert_eq!(out.len(), 4, "read size {read}");
            assert_eq!(
                out[0],
                Decoded::Oversize {
                    head: Bytes::copy_from_slice(&big[..HEAD_KEEP]),
                    len: 5000
                }
            );
            assert_eq!(frame(&out[1]).payload(), &at_limit[..]);
            assert_eq!(
                out[2],
                Decoded::Oversize {
                    head: Bytes::from(vec![b'b'; 101]),
                    len: 101
                }
            );
            assert_eq!(frame(&out[3]).payload(), b"ok");
            let s = decoder.stats();
            assert_eq!(
                (s.oversize_frames, s.restarted_frames),
                (2, 1),
                "read size {read}"
            );
            assert!(!decoder.in_frame());
        }
    }

    #[test]
    fn a_custom_two_byte_end_split_between_its_bytes_waits_for_the_second() {
        let f = framing(STX, &[ETX, b'\n']);
        let wire = encode_with(f, b"MSH|^~\\&|A");
        let mut decoder = Decoder::with_framing(1024, f);
        let mut buf = BytesMut::from(&wire[..wire.len() - 1]);
        assert_eq!(decoder.decode(&mut buf), None);
        assert!(decoder.in_frame());
        buf.put_u8(b'\n');
        let out = decoder.decode(&mut buf).expect("frame");
        assert_eq!(frame(&out).as_wire(), &wire[..]);
        // ETX followed by CR (MLLP's second byte) is malformed here.
        let mut decoder = Decoder::with_framing(1024, f);
        let out = feed_in_reads(&mut decoder, b"\x02abc\x03\r\x02ok\x03\n", 1);
        assert_eq!(out.len(), 1);
        assert_eq!(frame(&out[0]).payload(), b"ok");
        assert_eq!(decoder.stats(), stats(1, 0, 1, 0));
    }

    #[test]
    fn a_custom_framing_decodes_many_frames_without_copying() {
        let f = framing(STX, &[ETX]);
        let data: Vec<u8> = (0..100)
            .flat_map(|i| encode_with(f, format!("MSH|^~\\&|{i}").as_bytes()).to_vec())
            .collect();
        let mut buf = BytesMut::from(&data[..]);
        let base = buf.as_ptr() as usize;
        let mut decoder = Decoder::with_framing(BIG_LIMIT, f);
        let mut offset = 0;
        while let Some(d) = decoder.decode(&mut buf) {
            assert_eq!(frame(&d).as_wire().as_ptr() as usize, base + offset);
            offset += frame(&d).as_wire().len();
        }
        assert_eq!(offset, data.len());
    }

    #[test]
    fn the_framing_permutation_swaps_only_the_named_bytes() {
        let map = permutation(
            [STX, ETX, CARRIAGE_RETURN],
            [START_BLOCK, END_BLOCK, CARRIAGE_RETURN],
        );
        let mut seen = [false; 256];
        for (b, &m) in map.iter().enumerate() {
            assert!(!seen[usize::from(m)], "not a permutation");
            seen[usize::from(m)] = true;
            let expected = match b as u8 {
                STX => START_BLOCK,
                START_BLOCK => STX,
                ETX => END_BLOCK,
                END_BLOCK => ETX,
                other => other,
            };
            assert_eq!(m, expected, "byte {b:#04x}");
        }
    }

    /// `fuzz_decode_framed` input: the framing header, then the stream.
    fn framed_input(start: u8, end: &[u8], stream: &[u8]) -> Vec<u8> {
        let mut data = vec![start, (end.len() == 2) as u8, end[0], *end.last().unwrap()];
        data.extend_from_slice(stream);
        data
    }

    #[test]
    fn fuzz_decode_framed_holds_on_corpus_files_in_custom_framings() {
        for f in custom_framings() {
            for path in corpus_files_any(Path::new(CORPUS), None) {
                let data = std::fs::read(&path).unwrap();
                fuzz_decode_framed(&framed_input(f.start(), f.end(), &data));
                let mut twice = encode_with(f, &data).to_vec();
                twice.push(b'\n');
                twice.extend_from_slice(&encode_with(f, &data));
                fuzz_decode_framed(&framed_input(f.start(), f.end(), &twice));
            }
        }
        // Too short, or a refused framing: skipped, no panic.
        fuzz_decode_framed(&[]);
        fuzz_decode_framed(b"MSH|");
        fuzz_decode_framed(&framed_input(0x0B, &[0x0D], b"\x0bMSH\r\x0d"));
    }

    #[test]
    fn fuzz_decode_framed_holds_on_adversarial_delimiter_soup() {
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for (start, end) in [
            (STX, &[ETX][..]),
            (STX, &[ETX, CARRIAGE_RETURN][..]),
            (START_BLOCK, &[END_BLOCK, END_BLOCK][..]),
            (END_BLOCK, &[START_BLOCK, b'\n'][..]),
        ] {
            let mut alphabet = vec![start, START_BLOCK, END_BLOCK, CARRIAGE_RETURN, b'\n', b'M'];
            alphabet.extend_from_slice(end);
            for round in 0..100 {
                let len = 1 + round * 53;
                let stream: Vec<u8> = (0..len)
                    .map(|_| {
                        let r = next();
                        if r % (2 + round as u64 % 300) == 0 {
                            alphabet[(r >> 8) as usize % alphabet.len()]
                        } else {
                            b'a' + (r >> 16) as u8 % 26
                        }
                    })
                    .collect();
                fuzz_decode_framed(&framed_input(start, end, &stream));
            }
        }
    }

    mod split_streams {
        use super::super::*;
        use proptest::prelude::*;

        /// Everything a decoder hands out for `input` fed in the given chunk sizes.
        fn decode_in_chunks(
            input: &[u8],
            chunks: &[usize],
        ) -> (Vec<Vec<u8>>, Vec<u64>, DecodeStats) {
            let mut decoder = Decoder::new(64);
            let mut buf = BytesMut::new();
            let (mut frames, mut oversize) = (Vec::new(), Vec::new());
            let mut rest = input;
            let mut sizes = chunks.iter().cycle();
            while !rest.is_empty() {
                let n = (*sizes.next().unwrap()).clamp(1, rest.len());
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                while let Some(item) = decoder.decode(&mut buf) {
                    match item {
                        Decoded::Frame(f) => frames.push(f.payload().to_vec()),
                        Decoded::Oversize { len, .. } => oversize.push(len),
                    }
                }
            }
            (frames, oversize, decoder.stats())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            /// Random streams dense in framing bytes, split at random points, decode exactly as
            /// when they arrive in one read.
            #[test]
            fn random_streams_split_at_random_points_decode_the_same_as_unsplit(
                stream in proptest::collection::vec(prop_oneof![
                    4 => any::<u8>(),
                    1 => Just(START_BLOCK),
                    1 => Just(END_BLOCK),
                    1 => Just(CARRIAGE_RETURN),
                ], 0..600),
                chunks in proptest::collection::vec(1usize..40, 1..8),
            ) {
                let whole = decode_in_chunks(&stream, &[usize::MAX]);
                let split = decode_in_chunks(&stream, &chunks);
                prop_assert_eq!(&whole, &split);
                for payload in &whole.0 {
                    prop_assert!(!payload.contains(&START_BLOCK) && !payload.contains(&END_BLOCK));
                }
            }
        }
    }
}
