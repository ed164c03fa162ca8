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
use memchr::{memchr, memchr2, memchr3};

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

    /// When the two sides of a link frame differently: the first byte of `payload` that is the
    /// start byte or the first end byte of either framing. Such a payload would be cut into
    /// other frames by the side that reads those bytes as framing (one frame checked, two
    /// delivered), so it must not cross. `None` when both sides frame alike: the decoder that
    /// produced the payload already never leaves these bytes inside one.
    pub fn smuggled_byte(
        payload: &[u8],
        sender: Framing,
        receiver: Framing,
    ) -> Option<SmuggledByte> {
        if sender == receiver {
            return None;
        }
        let (a, b) = (
            [sender.start, sender.end[0]],
            [receiver.start, receiver.end[0]],
        );
        let hit = memchr3(a[0], a[1], b[0], payload);
        let hit = match (hit, memchr(b[1], payload)) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        };
        hit.map(|i| SmuggledByte(payload[i]))
    }

    /// Bytes a frame adds around its payload (3 for MLLP).
    fn overhead(&self) -> usize {
        1 + usize::from(self.end_len)
    }
}

/// A byte inside a payload that frames messages on one side of a link (see
/// [`Framing::smuggled_byte`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the message holds the byte 0x{0:02X}, which frames messages on one side of this route; \
     the other side would cut the message there"
)]
pub struct SmuggledByte(pub u8);

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
mod tests;
