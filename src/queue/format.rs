//! The bytes of a queue on disk (the layout is in the module documentation of `queue`): the
//! names of its files, the segment header, the record encoding and its checksum, the cursor
//! slots, the padding to 8 bytes. Pure: bytes in, bytes or values out. Must not know about
//! files or I/O, the log's state, its limits or its errors (what an unreadable record means is
//! for recovery and the log to decide).

/// Bytes of record header before the note.
pub const RECORD_HEADER_BYTES: u64 = 36;

pub(super) const SEG_MAGIC: [u8; 8] = *b"MGQSEG\0\x01";
pub(super) const SEG_HEADER: u64 = 32;
pub(super) const REC_HEADER: usize = RECORD_HEADER_BYTES as usize;
pub(super) const CURSOR_MAGIC: [u8; 4] = *b"MGQC";
pub(super) const CURSOR_SLOT_BYTES: usize = 40;
pub(super) const CURSOR_SLOT_OFFSET: [u64; 2] = [0, 4096];
pub(super) const CURSOR_FILE_BYTES: u64 = 8192;
pub(super) const CURSOR_NAME: &str = "cursor";
pub(super) const LOCK_NAME: &str = "LOCK";
/// The committed-through mark: rewritten in place (never fsync'd) after each successful sync.
pub(super) const MARK_NAME: &str = "synced";
pub(super) const MARK_MAGIC: [u8; 4] = *b"MGQM";
pub(super) const MARK_BYTES: usize = 24;
/// Where salvage puts damaged bytes, and builds a clean queue before swapping it in.
pub(super) const DAMAGED_DIR: &str = "damaged";
pub(super) const REBUILD_DIR: &str = "rebuild";

/// One cursor slot's content: its generation, how far the log was acknowledged and known
/// durable, and the queue id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Cursor {
    pub(super) gen: u64,
    pub(super) acked_through: u64,
    pub(super) synced_through: u64,
    pub(super) queue_id: u64,
}

pub(super) fn align8(n: u64) -> u64 {
    n.div_ceil(8) * 8
}

pub(super) fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

pub(super) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&n| n > 0)
}

pub(super) fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(super) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(super) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

pub(super) fn segment_header(queue_id: u64, first_seq: u64) -> [u8; SEG_HEADER as usize] {
    let mut h = [0u8; SEG_HEADER as usize];
    h[..8].copy_from_slice(&SEG_MAGIC);
    h[8..16].copy_from_slice(&queue_id.to_le_bytes());
    h[16..24].copy_from_slice(&first_seq.to_le_bytes());
    let crc = crc32fast::hash(&h[..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// `(queue_id, first_seq)` of a valid segment header.
pub(super) fn parse_segment_header(h: &[u8]) -> Option<(u64, u64)> {
    if h.len() < SEG_HEADER as usize
        || h[..8] != SEG_MAGIC
        || crc32fast::hash(&h[..24]) != u32_at(h, 24)
    {
        return None;
    }
    Some((u64_at(h, 8), u64_at(h, 16)))
}

pub(super) fn record_crc(queue_id: u64, rec: &[u8]) -> u32 {
    let mut c = crc32fast::Hasher::new();
    c.update(&queue_id.to_le_bytes());
    c.update(&rec[..4]);
    c.update(&rec[8..]);
    c.finalize()
}

/// Encodes one record into `buf` (padded to 8); returns its unpadded length. The caller has
/// checked that the note fits a u16 and the record a u32.
pub(super) fn encode_record(
    buf: &mut Vec<u8>,
    queue_id: u64,
    seq: u64,
    enqueued_at_ms: u64,
    synced_through: u64,
    note: &str,
    payload: &[u8],
) -> u32 {
    let len = REC_HEADER + note.len() + payload.len();
    buf.clear();
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&enqueued_at_ms.to_le_bytes());
    buf.extend_from_slice(&synced_through.to_le_bytes());
    buf.extend_from_slice(&(note.len() as u16).to_le_bytes());
    buf.extend_from_slice(&0u16.to_le_bytes());
    buf.extend_from_slice(note.as_bytes());
    buf.extend_from_slice(payload);
    let crc = record_crc(queue_id, &buf[..len]);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    buf.resize(align8(len as u64) as usize, 0);
    len as u32
}

#[derive(Clone, Copy, Debug)]
pub(super) struct RecHeader {
    pub(super) len: u32,
    pub(super) seq: u64,
    pub(super) enqueued_at_ms: u64,
    pub(super) synced_through: u64,
    pub(super) note_len: u16,
}

/// Parses and bounds-checks a record header; `room` is how many bytes the record may occupy.
pub(super) fn parse_record_header(h: &[u8], room: u64) -> Result<RecHeader, &'static str> {
    if h.len() < REC_HEADER {
        return Err("header cut short");
    }
    let hdr = RecHeader {
        len: u32_at(h, 0),
        seq: u64_at(h, 8),
        enqueued_at_ms: u64_at(h, 16),
        synced_through: u64_at(h, 24),
        note_len: u16_at(h, 32),
    };
    if hdr.len == 0 {
        return Err("zeros, the end of the written log");
    }
    if (hdr.len as usize) < REC_HEADER + hdr.note_len as usize {
        return Err("length too small");
    }
    if u64::from(hdr.len) > room {
        return Err("length runs past the end of the segment");
    }
    if u16_at(h, 34) != 0 {
        return Err("unknown flags");
    }
    if hdr.synced_through >= hdr.seq {
        return Err("inconsistent header");
    }
    Ok(hdr)
}

pub(super) fn check_record_crc(queue_id: u64, rec: &[u8]) -> bool {
    rec.len() >= REC_HEADER && record_crc(queue_id, rec) == u32_at(rec, 4)
}

pub(super) fn encode_cursor(c: &Cursor) -> [u8; CURSOR_SLOT_BYTES] {
    let mut s = [0u8; CURSOR_SLOT_BYTES];
    s[..4].copy_from_slice(&CURSOR_MAGIC);
    s[4..12].copy_from_slice(&c.gen.to_le_bytes());
    s[12..20].copy_from_slice(&c.acked_through.to_le_bytes());
    s[20..28].copy_from_slice(&c.synced_through.to_le_bytes());
    s[28..36].copy_from_slice(&c.queue_id.to_le_bytes());
    let crc = crc32fast::hash(&s[..36]);
    s[36..].copy_from_slice(&crc.to_le_bytes());
    s
}

pub(super) fn decode_cursor(s: &[u8]) -> Option<Cursor> {
    if s.len() < CURSOR_SLOT_BYTES
        || s[..4] != CURSOR_MAGIC
        || crc32fast::hash(&s[..36]) != u32_at(s, 36)
    {
        return None;
    }
    Some(Cursor {
        gen: u64_at(s, 4),
        acked_through: u64_at(s, 12),
        synced_through: u64_at(s, 20),
        queue_id: u64_at(s, 28),
    })
}

/// The committed-through mark: every record up to `synced_through` of queue `queue_id` was
/// fsync'd (and acknowledged to its sender).
pub(super) fn encode_mark(queue_id: u64, synced_through: u64) -> [u8; MARK_BYTES] {
    let mut m = [0u8; MARK_BYTES];
    m[..4].copy_from_slice(&MARK_MAGIC);
    m[4..12].copy_from_slice(&synced_through.to_le_bytes());
    m[12..20].copy_from_slice(&queue_id.to_le_bytes());
    let crc = crc32fast::hash(&m[..20]);
    m[20..].copy_from_slice(&crc.to_le_bytes());
    m
}

/// `(queue_id, synced_through)` of a valid mark.
pub(super) fn decode_mark(m: &[u8]) -> Option<(u64, u64)> {
    if m.len() < MARK_BYTES || m[..4] != MARK_MAGIC || crc32fast::hash(&m[..20]) != u32_at(m, 20) {
        return None;
    }
    Some((u64_at(m, 12), u64_at(m, 4)))
}
