//! Opening a log: the lock (none for the read-only view), the cursor, reading and validating
//! every segment, the known-durable watermark, cutting a torn tail, deleting segments a crash
//! left behind, and handing the state over to the log (`log.rs`). The rules are "Recovery" in
//! the module documentation. Must not know how the log appends, syncs or acknowledges later.

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::format::{
    align8, check_record_crc, decode_cursor, decode_mark, parse_record_header,
    parse_segment_header, parse_segment_name, segment_name, u64_at, Cursor, RecHeader,
    CURSOR_FILE_BYTES, CURSOR_NAME, CURSOR_SLOT_OFFSET, LOCK_NAME, MARK_NAME, REC_HEADER,
    SEG_HEADER,
};
use super::log::{
    fsync_dir, io_err, persist_cursor, Entry, Limits, Segment, SegmentLog, Writer,
    MIN_SEGMENT_BYTES,
};
use super::salvage;
use super::store::{Damage, QueueError};

const SCAN_CHUNK: usize = 1 << 20;

/// What [`SegmentLog::open`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Pending (unacknowledged) records recovered.
    pub records: u64,
    /// Bytes of torn tail cut off: from the end of the last good record to the last non-zero byte.
    pub torn_tail_bytes: u64,
    /// Segment files after recovery.
    pub segments: usize,
    /// The cursor file had no valid slot, or was missing while segments existed: every record
    /// still on disk is delivered again.
    pub cursor_lost: bool,
    /// Media damage found and set aside (salvage): every intact record was kept.
    pub damaged: Vec<Damage>,
}

fn new_queue_id() -> u64 {
    let mut h = RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(now);
    h.write_u32(std::process::id());
    h.finish()
}

/// Reads the newest valid cursor slot. `Ok(None)`: no file; `Ok(Some(None))`: no valid slot.
fn read_cursor(path: &Path) -> Result<Option<Option<Cursor>>, QueueError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    let best = CURSOR_SLOT_OFFSET
        .iter()
        .filter_map(|&off| bytes.get(off as usize..).and_then(decode_cursor))
        .max_by_key(|c| c.gen);
    Ok(Some(best))
}

/// What the record scan of one segment found.
struct SegmentScan {
    /// Offset of the first byte after the last valid record.
    end: u64,
    /// Seq of the last valid record, if any.
    last_seq: Option<u64>,
    /// Why the scan stopped at `end` (None: it reached the end of the file).
    stop: Option<&'static str>,
    max_synced_through: u64,
}

/// Reads valid records from `SEG_HEADER` on, calling `found` for each, until the first record
/// that does not decode.
fn scan_records(
    file: &File,
    path: &Path,
    queue_id: u64,
    file_len: u64,
    mut found: impl FnMut(&RecHeader, u64) -> Result<(), QueueError>,
) -> Result<SegmentScan, QueueError> {
    let mut pos = SEG_HEADER;
    let mut scan = SegmentScan {
        end: pos,
        last_seq: None,
        stop: None,
        max_synced_through: 0,
    };
    let mut rec = Vec::new();
    let mut header = [0u8; REC_HEADER];
    while pos < file_len {
        if file_len - pos < REC_HEADER as u64 {
            scan.stop = Some("header cut short");
            break;
        }
        file.read_exact_at(&mut header, pos).map_err(io_err(path))?;
        let hdr = match parse_record_header(&header, file_len - pos) {
            Ok(h) => h,
            Err(why) => {
                scan.stop = Some(why);
                break;
            }
        };
        rec.resize(hdr.len as usize, 0);
        file.read_exact_at(&mut rec, pos).map_err(io_err(path))?;
        if !check_record_crc(queue_id, &rec) {
            scan.stop = Some("checksum mismatch");
            break;
        }
        found(&hdr, pos)?;
        scan.last_seq = Some(hdr.seq);
        scan.max_synced_through = scan.max_synced_through.max(hdr.synced_through);
        pos += align8(u64::from(hdr.len));
        scan.end = pos.min(file_len);
    }
    Ok(scan)
}

/// What the scan of the region after the last valid record found.
struct TailScan {
    /// End of the last non-zero byte (the region start if all zero).
    nonzero_end: u64,
    /// Highest `synced_through` of a valid record (seq above `after_seq`) in the region.
    max_synced_through: u64,
}

/// Scans `[start, file_len)` (`start` 8-aligned) for non-zero bytes and for valid records at
/// 8-aligned offsets (records written after a damaged one, whose `synced_through` tells whether
/// it was durable). All-zero chunks, the common case, cost one comparison.
fn scan_tail(
    file: &File,
    path: &Path,
    queue_id: u64,
    start: u64,
    file_len: u64,
    after_seq: u64,
) -> Result<TailScan, QueueError> {
    let mut out = TailScan {
        nonzero_end: start,
        max_synced_through: 0,
    };
    let cap = SCAN_CHUNK.min(file_len.saturating_sub(start) as usize);
    let zeros = vec![0u8; cap];
    let mut chunk = vec![0u8; cap];
    let mut rec = Vec::new();
    let mut header = [0u8; REC_HEADER];
    // Offsets below this are inside a valid record already found.
    let mut skip_until = start;
    let mut base = start;
    while base < file_len {
        let n = ((file_len - base) as usize).min(cap);
        file.read_exact_at(&mut chunk[..n], base)
            .map_err(io_err(path))?;
        if chunk[..n] == zeros[..n] {
            base += n as u64;
            continue;
        }
        for (k, word) in chunk[..n].chunks(8).enumerate() {
            let at = base + 8 * k as u64;
            let Some(last) = word.iter().rposition(|&b| b != 0) else {
                continue;
            };
            out.nonzero_end = at + last as u64 + 1;
            if at < skip_until || word.len() < 4 || word[..4] == [0; 4] {
                continue;
            }
            if file_len - at < REC_HEADER as u64 {
                continue;
            }
            let i = 8 * k;
            let hdr_bytes = if i + REC_HEADER <= n {
                &chunk[i..i + REC_HEADER]
            } else {
                file.read_exact_at(&mut header, at).map_err(io_err(path))?;
                &header[..]
            };
            let Ok(hdr) = parse_record_header(hdr_bytes, file_len - at) else {
                continue;
            };
            if hdr.seq <= after_seq {
                continue;
            }
            rec.resize(hdr.len as usize, 0);
            file.read_exact_at(&mut rec, at).map_err(io_err(path))?;
            if check_record_crc(queue_id, &rec) {
                out.max_synced_through = out.max_synced_through.max(hdr.synced_through);
                skip_until = at + align8(u64::from(hdr.len));
            }
        }
        base += n as u64;
    }
    Ok(out)
}

fn all_zero(file: &File, path: &Path, start: u64, end: u64) -> Result<bool, QueueError> {
    let cap = SCAN_CHUNK.min((end - start) as usize);
    let zeros = vec![0u8; cap];
    let mut buf = vec![0u8; cap];
    let mut pos = start;
    while pos < end {
        let n = ((end - pos) as usize).min(cap);
        file.read_exact_at(&mut buf[..n], pos)
            .map_err(io_err(path))?;
        if buf[..n] != zeros[..n] {
            return Ok(false);
        }
        pos += n as u64;
    }
    Ok(true)
}

/// How the scan of the last segment ended.
struct LastSegment {
    /// End of the last valid record (the header end if none, 0 if the header is invalid).
    end: u64,
    stop: Option<&'static str>,
    file_len: u64,
    header_ok: bool,
    /// The queue id to check records with (from a valid header, or read from a damaged one).
    queue_id: u64,
}

impl SegmentLog {
    /// Opens (creating the directory if needed) with an exclusive lock on `<dir>/LOCK`
    /// ([`QueueError::Locked`] if held), and recovers (see the module documentation).
    pub fn open(dir: &Path, limits: Limits) -> Result<(SegmentLog, Recovery), QueueError> {
        Self::open_with(dir, limits, false)
    }

    /// Opens like [`Self::open`], but first rebuilds the queue from its intact records whether
    /// or not recovery would call it damaged (`queue salvage`): every stretch of damage the
    /// survey finds is set aside and reported in [`Recovery::damaged`], a torn tail is dropped.
    pub fn open_salvaged(dir: &Path, limits: Limits) -> Result<(SegmentLog, Recovery), QueueError> {
        Self::open_with(dir, limits, true)
    }

    fn open_with(
        dir: &Path,
        limits: Limits,
        force_salvage: bool,
    ) -> Result<(SegmentLog, Recovery), QueueError> {
        if limits.segment_bytes < MIN_SEGMENT_BYTES {
            return Err(QueueError::InvalidLimits {
                reason: format!(
                    "segment_bytes {} is below the minimum {MIN_SEGMENT_BYTES}",
                    limits.segment_bytes
                ),
            });
        }
        if limits.max_messages == 0 || limits.max_bytes == 0 {
            return Err(QueueError::InvalidLimits {
                reason: "max_messages and max_bytes must be at least 1".into(),
            });
        }
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock_path = dir.join(LOCK_NAME);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(QueueError::Locked {
                    dir: dir.to_path_buf(),
                })
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }
        // Who holds it, for an operator's command that finds it locked ([`Self::held_by`]).
        let _ = lock
            .set_len(0)
            .and_then(|()| lock.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0));
        salvage::finish_swap(dir)?;
        if force_salvage {
            let damaged = salvage::salvage(dir, limits.segment_bytes)?;
            let (log, recovery) = Self::load(dir, Some((lock, limits)))?;
            return Ok((
                log,
                Recovery {
                    damaged,
                    ..recovery
                },
            ));
        }
        let first_try = lock.try_clone().map_err(io_err(&lock_path))?;
        match Self::load(dir, Some((first_try, limits))) {
            // Records known durable are unreadable or missing: media damage. Keep every intact
            // record, set the damaged bytes aside, and open the clean queue salvage built.
            Err(QueueError::Corrupt { .. }) => {
                let damaged = salvage::salvage(dir, limits.segment_bytes)?;
                let (log, recovery) = Self::load(dir, Some((lock, limits)))?;
                Ok((
                    log,
                    Recovery {
                        damaged,
                        ..recovery
                    },
                ))
            }
            opened => opened,
        }
    }

    /// The process holding the queue in `dir` (its pid, 0 when it did not say), or `None` when
    /// no process holds it (or there is no queue). Takes and releases the lock to find out.
    pub fn held_by(dir: &Path) -> Option<u32> {
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join(LOCK_NAME))
            .ok()?;
        match lock.try_lock() {
            Err(fs::TryLockError::WouldBlock) => {
                let pid = fs::read_to_string(dir.join(LOCK_NAME)).unwrap_or_default();
                Some(pid.trim().parse().unwrap_or(0))
            }
            _ => None,
        }
    }

    /// Read-only view for operators while a guard may be running: no lock, no repair; a torn
    /// tail is just not shown. A snapshot of the moment it was opened (reopen to refresh);
    /// append, sync, ack and purge return [`QueueError::ReadOnly`].
    pub fn open_read_only(dir: &Path) -> Result<SegmentLog, QueueError> {
        fs::metadata(dir).map_err(io_err(dir))?;
        Self::load(dir, None).map(|(log, _)| log)
    }

    fn load(
        dir: &Path,
        writable: Option<(File, Limits)>,
    ) -> Result<(SegmentLog, Recovery), QueueError> {
        let repair = writable.is_some();
        let cursor_path = dir.join(CURSOR_NAME);
        let cursor_read = read_cursor(&cursor_path)?;
        let cursor = cursor_read.flatten().unwrap_or_default();

        let mut names = Vec::new();
        for item in fs::read_dir(dir).map_err(io_err(dir))? {
            let item = item.map_err(io_err(dir))?;
            if let Some(first) = item.file_name().to_str().and_then(parse_segment_name) {
                names.push(first);
            }
        }
        names.sort_unstable();
        let mut recovery = Recovery {
            cursor_lost: match &cursor_read {
                Some(None) => true,
                None => !names.is_empty(),
                Some(Some(_)) => false,
            },
            ..Recovery::default()
        };

        let mut queue_id: Option<u64> = None;
        let mut segments: VecDeque<Segment> = VecDeque::new();
        let mut entries: VecDeque<Entry> = VecDeque::new();
        // D: the known-durable watermark (invariant 5).
        let mut durable_mark = cursor.synced_through;
        // Seq of the last valid record seen (0: none).
        let mut last_real = 0u64;
        // Sealed segments: (path, last record seq up to and including it, next segment's first).
        let mut sealed_ends: Vec<(PathBuf, u64, u64)> = Vec::new();
        let mut last: Option<LastSegment> = None;

        for (i, &first) in names.iter().enumerate() {
            let next_first = names.get(i + 1).copied();
            let path = dir.join(segment_name(first));
            let file = match OpenOptions::new().read(true).write(repair).open(&path) {
                Ok(f) => f,
                // A read-only view races with the guard deleting acknowledged segments.
                Err(e) if !repair && e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&path)(e)),
            };
            let file_len = file.metadata().map_err(io_err(&path))?.len();
            let mut header = [0u8; SEG_HEADER as usize];
            let header_ok = file_len >= SEG_HEADER
                && file.read_exact_at(&mut header, 0).is_ok()
                && match parse_segment_header(&header) {
                    Some((id, f)) if f == first && queue_id.is_none_or(|q| q == id) => {
                        queue_id = Some(id);
                        true
                    }
                    _ => false,
                };
            if !header_ok {
                if next_first.is_some() {
                    return Err(QueueError::Corrupt {
                        seq: first,
                        path,
                        reason: "invalid segment header in a sealed segment".into(),
                    });
                }
                last = Some(LastSegment {
                    end: 0,
                    stop: Some("invalid segment header"),
                    file_len,
                    header_ok: false,
                    queue_id: queue_id
                        .or(cursor_read.flatten().map(|c| c.queue_id))
                        .unwrap_or_else(|| u64_at(&header, 8)),
                });
                segments.push_back(Segment {
                    first_seq: first,
                    path,
                    file,
                    size: file_len,
                });
                continue;
            }
            let qid = queue_id.unwrap_or_default();
            let mut prev = last_real.max(first - 1);
            let scan = scan_records(&file, &path, qid, file_len, |h, off| {
                if h.seq <= prev || next_first.is_some_and(|n| h.seq >= n) {
                    return Err(QueueError::Corrupt {
                        seq: h.seq,
                        path: path.clone(),
                        reason: format!(
                            "seq out of order at offset {off} (previous {prev}, segment {first})"
                        ),
                    });
                }
                prev = h.seq;
                if h.seq > cursor.acked_through {
                    entries.push_back(Entry {
                        seq: h.seq,
                        seg: first,
                        offset: off,
                        len: h.len,
                        enqueued_at_ms: h.enqueued_at_ms,
                    });
                }
                Ok(())
            })?;
            durable_mark = durable_mark.max(scan.max_synced_through);
            last_real = scan.last_seq.unwrap_or(last_real);
            if let Some(next) = next_first {
                if scan.end < file_len && !all_zero(&file, &path, scan.end, file_len)? {
                    return Err(QueueError::Corrupt {
                        seq: last_real + 1,
                        path,
                        reason: format!(
                            "unreadable record at offset {} in a sealed segment ({})",
                            scan.end,
                            scan.stop.unwrap_or("damaged")
                        ),
                    });
                }
                sealed_ends.push((path.clone(), last_real, next));
            } else {
                last = Some(LastSegment {
                    end: scan.end,
                    stop: scan.stop,
                    file_len,
                    header_ok: true,
                    queue_id: qid,
                });
            }
            segments.push_back(Segment {
                first_seq: first,
                path,
                file,
                size: file_len,
            });
        }

        // The committed-through mark (rewritten after each sync, never fsync'd): after a crash
        // of the process it says how far the last group commits reached the disk.
        let mark = fs::read(dir.join(MARK_NAME))
            .ok()
            .and_then(|bytes| decode_mark(&bytes))
            .filter(|&(id, _)| queue_id.or(cursor_read.flatten().map(|c| c.queue_id)) == Some(id));
        if let Some((_, synced)) = mark {
            durable_mark = durable_mark.max(synced);
        }
        if let (Some(ls), Some(seg)) = (&last, segments.back()) {
            // With a damaged header the whole file is tail, and its records still count for D.
            let tail = if repair && ls.end < ls.file_len {
                scan_tail(
                    &seg.file,
                    &seg.path,
                    ls.queue_id,
                    ls.end,
                    ls.file_len,
                    last_real,
                )?
            } else {
                TailScan {
                    nonzero_end: ls.end,
                    max_synced_through: 0,
                }
            };
            durable_mark = durable_mark.max(tail.max_synced_through);
            let floor = last_real.max(seg.first_seq - 1);
            if repair && durable_mark > floor {
                return Err(QueueError::Corrupt {
                    seq: floor + 1,
                    path: seg.path.clone(),
                    reason: format!(
                        "the log ends at offset {} ({}) after seq {floor}, but records up to \
                         seq {durable_mark} were durable",
                        ls.end,
                        ls.stop.unwrap_or("end of file")
                    ),
                });
            }
            recovery.torn_tail_bytes = tail.nonzero_end - ls.end;
        }
        for (path, last_seq, next) in &sealed_ends {
            if durable_mark > *last_seq && durable_mark < *next {
                return Err(QueueError::Corrupt {
                    seq: last_seq + 1,
                    path: path.clone(),
                    reason: format!(
                        "the sealed segment ends after seq {last_seq}, but seq {durable_mark} \
                         was durable"
                    ),
                });
            }
        }

        let last_name = segments.back().map_or(0, |s| s.first_seq);
        let next_seq = (last_real + 1)
            .max(last_name)
            .max(cursor.acked_through + 1)
            .max(cursor.synced_through + 1);
        let bytes = entries.iter().map(Entry::size).sum();
        let mut log = SegmentLog {
            dir: dir.to_path_buf(),
            queue_id: queue_id
                .or(cursor_read.flatten().map(|c| c.queue_id))
                .unwrap_or_else(new_queue_id),
            segments,
            entries,
            bytes,
            next_seq,
            synced_seq: last_real,
            visible_seq: last_real,
            acked_through: cursor.acked_through,
            front_cache: None,
            writer: None,
            closed: false,
            #[cfg(test)]
            crashed: false,
        };
        let Some((lock, limits)) = writable else {
            recovery.records = log.entries.len() as u64;
            recovery.segments = log.segments.len();
            return Ok((log, recovery));
        };

        // Repair, and make what was found durable before anything is appended after it.
        let mut dir_dirty = false;
        let mut write_pos = SEG_HEADER;
        match &last {
            Some(ls) if ls.header_ok => {
                let seg = log.segments.back_mut().expect("last segment");
                let size = seg.size.max(limits.segment_bytes);
                if recovery.torn_tail_bytes > 0 {
                    seg.file.set_len(ls.end).map_err(io_err(&seg.path))?;
                }
                seg.file.set_len(size).map_err(io_err(&seg.path))?;
                seg.size = size;
                write_pos = ls.end;
            }
            Some(_) => {
                // The header never reached the disk: nothing in the segment was durable.
                let seg = log.segments.pop_back().expect("last segment");
                fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
                let seg = log.create_segment(seg.first_seq, limits.segment_bytes)?;
                log.segments.push_back(seg);
                dir_dirty = true;
            }
            None => {
                let seg = log.create_segment(next_seq, limits.segment_bytes)?;
                log.segments.push_back(seg);
                dir_dirty = true;
            }
        }
        {
            let seg = log.segments.back().expect("last segment");
            seg.file.sync_all().map_err(io_err(&seg.path))?;
        }
        // Segments whose records are all acknowledged (a crash came before their deletion).
        let keep_from = log.entries.front().map(|e| e.seg);
        while log.segments.len() > 1 && keep_from.is_none_or(|k| log.segments[0].first_seq < k) {
            let seg = log.segments.pop_front().expect("segment");
            fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
            dir_dirty = true;
        }

        let cursor_exists = cursor_read.is_some();
        let cursor_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&cursor_path)
            .map_err(io_err(&cursor_path))?;
        if !cursor_exists {
            cursor_file
                .set_len(CURSOR_FILE_BYTES)
                .and_then(|()| cursor_file.sync_all())
                .map_err(io_err(&cursor_path))?;
            dir_dirty = true;
        }
        let mut writer = Writer::new(
            lock,
            cursor_file,
            Cursor {
                queue_id: log.queue_id,
                ..cursor
            },
            limits,
            write_pos,
            last_real,
        );
        if !cursor_exists || recovery.cursor_lost {
            persist_cursor(&mut writer, &cursor_path, log.acked_through, last_real)?;
        }
        let mark_path = dir.join(MARK_NAME);
        writer.mark = Some(
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&mark_path)
                .map_err(io_err(&mark_path))?,
        );
        if dir_dirty {
            fsync_dir(dir)?;
        }
        log.writer = Some(writer);
        recovery.records = log.entries.len() as u64;
        recovery.segments = log.segments.len();
        Ok((log, recovery))
    }
}
