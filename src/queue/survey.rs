//! The survey of a queue's bytes when the disk may lie: every intact record (its checksum holds,
//! its seq follows the one before), wherever it lies, and every stretch of other bytes, with
//! the sequence numbers it stood for and how many of them were acknowledged and not yet
//! delivered. Salvage (`salvage.rs`) acts on it; `queue show`/`list`/`salvage` report it.
//!
//! Pure: the segment files' bytes, the cursor and the mark in, a [`Survey`] out. Must not know
//! about files, the log's state or what anyone does with damage. [`fuzz_survey`] is the
//! library side of the `queue_salvage` fuzz target.

use super::format::{
    align8, check_record_crc, parse_record_header, parse_segment_header, segment_name, Cursor,
    REC_HEADER, SEG_HEADER,
};

/// A record found intact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Intact {
    pub(super) seq: u64,
    /// Index of its segment in the survey's files.
    pub(super) seg: usize,
    pub(super) offset: u64,
    /// Unpadded length.
    pub(super) len: u32,
}

/// A stretch of bytes that is neither an intact record nor zeros, or records known durable
/// missing from the end of the log (`start == end`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Finding {
    /// The seqs it stood for, `first_seq..=last_seq` (empty when `last_seq < first_seq`).
    pub(super) first_seq: u64,
    pub(super) last_seq: u64,
    /// Those above the cursor: acknowledged to their senders, never delivered, lost.
    pub(super) lost: u64,
    pub(super) seg: usize,
    pub(super) start: u64,
    pub(super) end: u64,
    /// Where, in words.
    pub(super) place: String,
}

/// What [`survey`] found.
pub(super) struct Survey {
    pub(super) queue_id: u64,
    /// Every intact record, in log order (seqs strictly increasing).
    pub(super) intact: Vec<Intact>,
    /// Damage: every stretch that is not a torn tail and stands for a message not acknowledged
    /// before (an empty range: bytes damaged between records, no message in them).
    pub(super) findings: Vec<Finding>,
}

/// A stretch of bytes that is neither an intact record nor zeros.
struct Stretch {
    seg: usize,
    start: u64,
    /// One past its last non-zero byte.
    end: u64,
    /// Seq of the last intact record before it (0: none).
    after: u64,
}

const ZEROS: [u8; 4096] = [0; 4096];

/// Index of the first non-zero byte at or after `from` (whole zero blocks compared at once: a
/// preallocated segment is mostly zeros).
fn next_nonzero(bytes: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while at < bytes.len() {
        let end = (at + ZEROS.len()).min(bytes.len());
        if bytes[at..end] != ZEROS[..end - at] {
            return bytes[at..end].iter().position(|&b| b != 0).map(|n| at + n);
        }
        at = end;
    }
    None
}

/// Index of the last non-zero byte of `bytes`.
fn last_nonzero(bytes: &[u8]) -> Option<usize> {
    let mut end = bytes.len();
    while end > 0 {
        let start = end.saturating_sub(ZEROS.len());
        if bytes[start..end] != ZEROS[..end - start] {
            return bytes[start..end]
                .iter()
                .rposition(|&b| b != 0)
                .map(|n| start + n);
        }
        end = start;
    }
    None
}

/// `(seq, len, synced_through)` of an intact record at `pos`.
fn record_at(bytes: &[u8], pos: u64, queue_id: u64) -> Option<(u64, u32, u64)> {
    let room = (bytes.len() as u64).checked_sub(pos)?;
    let head = bytes.get(pos as usize..pos as usize + REC_HEADER)?;
    let hdr = parse_record_header(head, room).ok()?;
    let rec = &bytes[pos as usize..pos as usize + hdr.len as usize];
    check_record_crc(queue_id, rec).then_some((hdr.seq, hdr.len, hdr.synced_through))
}

/// Surveys the segments `files` (their first seqs, from their names, in `firsts`, ascending),
/// given the cursor and the committed-through mark `(queue_id, synced_through)`.
pub(super) fn survey(
    cursor: &Cursor,
    mark: Option<(u64, u64)>,
    firsts: &[u64],
    files: &[Vec<u8>],
) -> Survey {
    let queue_id = files
        .iter()
        .find_map(|bytes| parse_segment_header(bytes).map(|(id, _)| id))
        .unwrap_or(cursor.queue_id);

    // Every intact record (seqs strictly increasing), and every stretch of other bytes: records
    // lie back to back, so any bytes between two intact records (zeros too) are damage; after
    // the last record of a segment only zeros belong.
    let mut intact: Vec<Intact> = Vec::new();
    let mut stretches: Vec<Stretch> = Vec::new();
    let mut durable = cursor.synced_through;
    for (seg, bytes) in files.iter().enumerate() {
        let len = bytes.len() as u64;
        let mut gap_start = if len >= SEG_HEADER && parse_segment_header(bytes).is_some() {
            SEG_HEADER
        } else {
            0
        };
        let mut pos = SEG_HEADER;
        while pos + 8 <= len {
            let after = intact.last().map_or(0, |r| r.seq);
            match record_at(bytes, pos, queue_id) {
                Some((seq, rec_len, synced)) if seq > after => {
                    if pos > gap_start {
                        stretches.push(Stretch {
                            seg,
                            start: gap_start,
                            end: pos,
                            after,
                        });
                    }
                    intact.push(Intact {
                        seq,
                        seg,
                        offset: pos,
                        len: rec_len,
                    });
                    durable = durable.max(synced);
                    pos += align8(u64::from(rec_len));
                    gap_start = pos;
                }
                // Zeros (the preallocated rest of a segment, mostly): on to the next non-zero
                // word at once. No record starts with zeros (its length is never 0).
                _ if bytes[pos as usize..pos as usize + 8] == [0; 8] => {
                    match next_nonzero(bytes, pos as usize) {
                        Some(at) => pos = (at as u64) & !7,
                        None => break,
                    }
                }
                _ => pos += 8,
            }
        }
        // After the last record: only the non-zero part is damage (or a torn write).
        let tail = bytes.get(gap_start as usize..).unwrap_or(&[]);
        if let Some(last) = last_nonzero(tail) {
            stretches.push(Stretch {
                seg,
                start: gap_start,
                end: gap_start + last as u64 + 1,
                after: intact.last().map_or(0, |r| r.seq),
            });
        }
    }
    if let Some((_, synced)) = mark.filter(|&(id, _)| id == queue_id) {
        durable = durable.max(synced);
    }

    let acked_through = cursor.acked_through;
    let lost_of = |first: u64, last: u64| {
        last.saturating_add(1)
            .saturating_sub(first.max(acked_through.saturating_add(1)))
    };
    let mut findings = Vec::new();
    let last_seg = files.len().saturating_sub(1);
    let last_intact = intact.last().map_or(0, |r| r.seq);
    let mut trailing_reported = false;
    for stretch in &stretches {
        let after = stretch.after.max(firsts[stretch.seg].saturating_sub(1));
        let next_intact = intact.iter().find(|r| r.seq > stretch.after).map(|r| r.seq);
        let next_segment = firsts.get(stretch.seg + 1).copied();
        let next = match (next_intact, next_segment) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let (first_seq, last_seq) = match next {
            Some(next) => (after + 1, next - 1),
            // The end of the log: what is past the last write known durable is a torn write.
            None => {
                trailing_reported = true;
                (after + 1, durable)
            }
        };
        let torn_tail = next.is_none() && stretch.seg == last_seg && last_seq < first_seq;
        let acked_only = last_seq >= first_seq && last_seq <= acked_through;
        if torn_tail || acked_only {
            continue;
        }
        findings.push(Finding {
            first_seq,
            last_seq,
            lost: lost_of(first_seq, last_seq),
            seg: stretch.seg,
            start: stretch.start,
            end: stretch.end,
            place: format!(
                "segment {} offsets {}..{}",
                segment_name(firsts[stretch.seg]),
                stretch.start,
                stretch.end
            ),
        });
    }
    // Records known durable past the end of what is left (a truncated or zeroed end).
    if !trailing_reported && durable > last_intact.max(acked_through) {
        let first_seq = last_intact.max(acked_through) + 1;
        findings.push(Finding {
            first_seq,
            last_seq: durable,
            lost: lost_of(first_seq, durable),
            seg: last_seg,
            start: 0,
            end: 0,
            place: "missing from the end of the log (truncated or zeroed)".into(),
        });
    }
    Survey {
        queue_id,
        intact,
        findings,
    }
}

/// Fuzz entry (the `queue_salvage` target calls this): builds a queue of records from the
/// first bytes of `data` (their count, payload sizes and the segment they go to), damages its
/// segment bytes as the rest of `data` says (bytes overwritten or flipped, a segment cut short
/// or extended with garbage), and asserts what salvage relies on: every record whose bytes
/// are still intact (checksum valid where it was written) is found, no record is found that
/// was not written (same seq, same bytes), and the order is kept. Never panics otherwise.
pub fn fuzz_survey(data: &[u8]) {
    let mut input = data.iter().copied();
    let mut next = move || input.next();
    let queue_id = 0x5EED_0000_0000_0001u64;
    // The queue as written: 1..=4 segments of 0..=16 records each.
    let segments = usize::from(next().unwrap_or(0) % 4) + 1;
    let mut firsts = Vec::new();
    let mut files: Vec<Vec<u8>> = Vec::new();
    // (seq, seg, offset, record bytes unpadded)
    let mut written: Vec<(u64, usize, u64, Vec<u8>)> = Vec::new();
    let mut seq = 1u64;
    let mut buf = Vec::new();
    for seg in 0..segments {
        let count = next().unwrap_or(0) % 17;
        firsts.push(seq);
        let mut bytes = super::format::segment_header(queue_id, seq).to_vec();
        for _ in 0..count {
            let size = usize::from(next().unwrap_or(0) % 64);
            let payload: Vec<u8> = (0..size).map(|i| b"MSH|^~\\&|"[i % 9]).collect();
            let len = super::format::encode_record(
                &mut buf,
                queue_id,
                seq,
                seq * 1000,
                seq - 1,
                "",
                &payload,
            );
            written.push((seq, seg, bytes.len() as u64, buf[..len as usize].to_vec()));
            bytes.extend_from_slice(&buf);
            seq += 1;
        }
        // Preallocated zeros after the records.
        bytes.resize(bytes.len() + usize::from(next().unwrap_or(0) % 4) * 8, 0);
        files.push(bytes);
        // Seqs lost between segments (a failed sync) happen: skip one now and then.
        seq += u64::from(next().unwrap_or(0) % 2);
    }
    // The damage: (kind, segment, position, value) quadruples.
    while let (Some(kind), Some(seg), Some(hi), Some(lo)) = (next(), next(), next(), next()) {
        let file = &mut files[usize::from(seg) % segments];
        let at = ((usize::from(hi) << 8) | usize::from(lo)) % (file.len() + 1);
        let value = next().unwrap_or(0);
        match kind % 4 {
            0 if at < file.len() => file[at] = value,
            1 if at < file.len() => file[at] ^= 1 << (value % 8),
            2 => file.truncate(at),
            3 => file.extend(std::iter::repeat_n(value, usize::from(lo % 40))),
            _ => {}
        }
    }
    let cursor = Cursor {
        gen: 1,
        acked_through: 0,
        synced_through: 0,
        queue_id,
    };
    let found = survey(&cursor, None, &firsts, &files);
    let still_intact = |&(_, seg, offset, ref rec): &(u64, usize, u64, Vec<u8>)| {
        let file: &Vec<u8> = &files[seg];
        file.get(offset as usize..offset as usize + rec.len()) == Some(&rec[..])
    };
    // Found: never invented, in order.
    let mut prev = 0;
    for r in &found.intact {
        assert!(r.seq > prev, "order kept");
        prev = r.seq;
        let bytes = &files[r.seg][r.offset as usize..r.offset as usize + r.len as usize];
        assert!(
            written
                .iter()
                .any(|(seq, _, _, rec)| *seq == r.seq && rec[..] == *bytes),
            "seq {} found but never written with these bytes",
            r.seq
        );
    }
    // Every record still intact where it was written is found, unless a copy of a record with
    // a higher seq (garbage that happens to repeat one) came first: only bytes equal to a
    // written record can pass, and the order rule keeps the first.
    for w in written.iter().filter(|w| still_intact(w)) {
        assert!(
            found
                .intact
                .iter()
                .any(|r| r.seq == w.0 && r.seg == w.1 && r.offset == w.2),
            "intact record seq {} (segment {}, offset {}) was not found",
            w.0,
            w.1,
            w.2
        );
    }
    // Every finding stands for seqs no intact record holds.
    for f in &found.findings {
        assert!(
            !found
                .intact
                .iter()
                .any(|r| (f.first_seq..=f.last_seq).contains(&r.seq)),
            "damage {}..={} covers an intact record",
            f.first_seq,
            f.last_seq
        );
    }
    assert_eq!(found.queue_id, queue_id);
}

#[cfg(test)]
mod tests {
    use super::fuzz_survey;

    /// The fuzz entry's invariants hold on a spread of shapes and damage, so it never rots.
    #[test]
    fn fuzz_entry_holds_on_fixed_damage() {
        fuzz_survey(&[]);
        fuzz_survey(&[3, 16, 20, 1, 5, 7, 2, 9, 0, 16, 3]);
        let mut rng = 0x1234_5678u32;
        for _ in 0..500 {
            let len = (rng % 200) as usize;
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 17;
                    rng ^= rng << 5;
                    rng as u8
                })
                .collect();
            fuzz_survey(&data);
        }
    }
}
