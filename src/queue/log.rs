//! An open segment log and its operations: append, sync (and the rewind that discards a failed
//! batch, or poisons the log when that fails too), reading the front and the pending records,
//! ack with the cursor policy, purge, close, segment roll-over and the deletion of acknowledged
//! segments. Holds the log's in-memory state (`SegmentLog`, its writer, segments and index) and
//! the cursor write both it and recovery use. Must not know how a log is opened or recovered
//! (`recovery.rs`): it continues from the state recovery hands over. The bytes are `format.rs`.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::format::{
    align8, check_record_crc, encode_cursor, encode_mark, encode_record, parse_record_header,
    segment_header, segment_name, u16_at, Cursor, CURSOR_NAME, CURSOR_SLOT_OFFSET,
    RECORD_HEADER_BYTES, REC_HEADER, SEG_HEADER,
};
use super::salvage;
use super::store::{Damage, QueueError, QueueStats, Record, Store};

/// The cursor is fsync'd at least once every this many acks.
pub const ACK_PERSIST_EVERY: u64 = 64;
/// The cursor is fsync'd at the first ack after this long since its last write.
pub const ACK_PERSIST_INTERVAL: Duration = Duration::from_millis(250);
/// How soon after a delivery its ack should be in the cursor on disk: the drainer calls
/// [`Store::persist_acks`] this long after the first ack not yet persisted (one fsync for all
/// acks in between), so `queue list` on a running guard is accurate within about this long.
pub const ACK_SETTLE: Duration = Duration::from_millis(200);
/// The smallest accepted [`Limits::segment_bytes`].
pub const MIN_SEGMENT_BYTES: u64 = 256;

/// Limits of one queue.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Encoded bytes of unacknowledged records (see [`QueueStats::bytes`]).
    pub max_bytes: u64,
    /// Unacknowledged records.
    pub max_messages: u64,
    /// Preallocated size of a segment file (default 64 MiB, at least [`MIN_SEGMENT_BYTES`]); a
    /// record larger than a segment gets a segment of its own.
    pub segment_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 1 << 30,
            max_messages: 1_000_000,
            segment_bytes: 64 << 20,
        }
    }
}

/// Where one pending record lives.
#[derive(Clone, Copy, Debug)]
pub(super) struct Entry {
    pub(super) seq: u64,
    /// `first_seq` of its segment.
    pub(super) seg: u64,
    pub(super) offset: u64,
    pub(super) len: u32,
    pub(super) enqueued_at_ms: u64,
}

impl Entry {
    pub(super) fn size(&self) -> u64 {
        align8(u64::from(self.len))
    }
}

pub(super) struct Segment {
    pub(super) first_seq: u64,
    pub(super) path: PathBuf,
    pub(super) file: File,
    /// Preallocated length.
    pub(super) size: u64,
}

/// Injected failures, so the error paths run in tests.
#[cfg(test)]
#[derive(Default)]
pub(super) struct Faults {
    /// Fail this many upcoming fsyncs of segment data.
    pub(super) sync: u32,
    /// Fail this many upcoming record writes.
    pub(super) write: u32,
    /// Fail this many upcoming repairs (rewinds after a failure).
    pub(super) repair: u32,
}

/// State only a writable log has.
pub(super) struct Writer {
    /// Held locked; dropping it releases the flock.
    lock: File,
    cursor_file: File,
    cursor: Cursor,
    limits: Limits,
    /// Next write offset in the active (last) segment.
    write_pos: u64,
    /// Offset up to which the active segment is durable.
    durable_pos: u64,
    /// Data written to the active segment since the last fsync.
    dirty: bool,
    /// The active segment's size or existence changed since the last fsync (needs `sync_all`).
    meta_dirty: bool,
    /// The active segment was created since the last fsync (a failure removes it).
    pub(super) active_new: bool,
    /// A segment file was created since the last directory fsync.
    dir_dirty: bool,
    /// Seq of the last record written to the log.
    last_appended: u64,
    /// An append failed since the last sync: the next sync reports this.
    failed: Option<(PathBuf, io::ErrorKind, String)>,
    poisoned: Option<String>,
    unpersisted_acks: u64,
    last_persist: Instant,
    pub(super) persist_every: u64,
    pub(super) persist_interval: Duration,
    buf: Vec<u8>,
    /// The committed-through mark file (`synced`), rewritten after each successful sync.
    pub(super) mark: Option<File>,
    #[cfg(test)]
    pub(super) faults: Faults,
}

impl Writer {
    /// The writer of a log that recovery found durable up to `write_pos` of the active segment,
    /// after the record `last_appended`; the cursor policy starts from the defaults.
    pub(super) fn new(
        lock: File,
        cursor_file: File,
        cursor: Cursor,
        limits: Limits,
        write_pos: u64,
        last_appended: u64,
    ) -> Writer {
        Writer {
            lock,
            cursor_file,
            cursor,
            limits,
            write_pos,
            durable_pos: write_pos,
            dirty: false,
            meta_dirty: false,
            active_new: false,
            dir_dirty: false,
            last_appended,
            failed: None,
            poisoned: None,
            unpersisted_acks: 0,
            last_persist: Instant::now(),
            persist_every: ACK_PERSIST_EVERY,
            persist_interval: ACK_PERSIST_INTERVAL,
            buf: Vec::new(),
            mark: None,
            #[cfg(test)]
            faults: Faults::default(),
        }
    }
}

/// The segmented-log [`Store`]. See the module documentation for the layout and invariants.
pub struct SegmentLog {
    pub(super) dir: PathBuf,
    pub(super) queue_id: u64,
    pub(super) segments: VecDeque<Segment>,
    /// Appended, unacknowledged records in seq order.
    pub(super) entries: VecDeque<Entry>,
    pub(super) bytes: u64,
    pub(super) next_seq: u64,
    /// Seq of the last record known durable (fsync'd); 0 if none.
    pub(super) synced_seq: u64,
    /// Highest seq that front/pending may show (confirmed by a successful sync, or recovered).
    pub(super) visible_seq: u64,
    pub(super) acked_through: u64,
    pub(super) front_cache: Option<Record>,
    /// `None` for a read-only view.
    pub(super) writer: Option<Writer>,
    pub(super) closed: bool,
    #[cfg(test)]
    pub(super) crashed: bool,
}

impl std::fmt::Debug for SegmentLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentLog")
            .field("dir", &self.dir)
            .field("segments", &self.segments.len())
            .field("pending", &self.entries.len())
            .field("next_seq", &self.next_seq)
            .field("read_only", &self.writer.is_none())
            .finish()
    }
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> QueueError + '_ {
    move |source| QueueError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn fsync_dir(dir: &Path) -> Result<(), QueueError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Writes the next cursor slot in place and fdatasyncs it.
pub(super) fn persist_cursor(
    w: &mut Writer,
    path: &Path,
    acked_through: u64,
    synced_through: u64,
) -> Result<(), QueueError> {
    let next = Cursor {
        gen: w.cursor.gen + 1,
        acked_through,
        synced_through,
        queue_id: w.cursor.queue_id,
    };
    let slot = CURSOR_SLOT_OFFSET[(next.gen % 2) as usize];
    w.cursor_file
        .write_all_at(&encode_cursor(&next), slot)
        .and_then(|()| w.cursor_file.sync_data())
        .map_err(io_err(path))?;
    w.cursor = next;
    w.unpersisted_acks = 0;
    w.last_persist = Instant::now();
    Ok(())
}

impl SegmentLog {
    /// Creates a segment file with its header, preallocated to `size` (not yet fsync'd).
    pub(super) fn create_segment(&self, first_seq: u64, size: u64) -> Result<Segment, QueueError> {
        let path = self.dir.join(segment_name(first_seq));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let header = segment_header(self.queue_id, first_seq);
        let written = file
            .write_all_at(&header, 0)
            .and_then(|()| file.set_len(size));
        if let Err(e) = written {
            let _ = fs::remove_file(&path);
            return Err(io_err(&path)(e));
        }
        Ok(Segment {
            first_seq,
            path,
            file,
            size,
        })
    }

    fn cursor_path(&self) -> PathBuf {
        self.dir.join(CURSOR_NAME)
    }

    /// The writer, if this log may write now.
    fn check_writable(&self, op: &'static str) -> Result<(), QueueError> {
        if self.closed {
            return Err(QueueError::Closed);
        }
        let w = self.writer.as_ref().ok_or(QueueError::ReadOnly { op })?;
        match &w.poisoned {
            Some(reason) => Err(QueueError::Poisoned {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    pub(super) fn w(&mut self) -> &mut Writer {
        self.writer.as_mut().expect("checked writable")
    }

    /// Fsyncs everything written since the last fsync; advances `synced_seq`.
    fn flush(&mut self) -> Result<(), QueueError> {
        let seg = self.segments.back().expect("active segment");
        let w = self.writer.as_mut().expect("writable");
        if w.meta_dirty || w.dirty {
            #[cfg(test)]
            if w.faults.sync > 0 {
                w.faults.sync -= 1;
                return Err(io_err(&seg.path)(io::Error::other(
                    "injected fdatasync failure",
                )));
            }
            let r = if w.meta_dirty {
                seg.file.sync_all()
            } else {
                seg.file.sync_data()
            };
            r.map_err(io_err(&seg.path))?;
        }
        if w.dir_dirty {
            fsync_dir(&self.dir)?;
        }
        w.dirty = false;
        w.meta_dirty = false;
        w.dir_dirty = false;
        w.active_new = false;
        w.durable_pos = w.write_pos;
        if let Some(mark) = w
            .mark
            .as_ref()
            .filter(|_| w.last_appended > self.synced_seq)
        {
            // No fsync: a crash of the process leaves it in the page cache, which is when it
            // tells damage in the last group commit from a torn write. Best effort: recovery
            // without it falls back to the records' own marks.
            let _ = mark.write_all_at(&encode_mark(self.queue_id, w.last_appended), 0);
        }
        self.synced_seq = w.last_appended;
        Ok(())
    }

    /// Discards every append since the last fsync (see "Sync errors"); poisons on failure.
    fn rewind(&mut self) {
        while self.entries.back().is_some_and(|e| e.seq > self.synced_seq) {
            let e = self.entries.pop_back().expect("entry");
            self.bytes -= e.size();
        }
        self.visible_seq = self.synced_seq;
        let synced = self.synced_seq;
        let w = self.writer.as_mut().expect("writable");
        w.last_appended = synced;
        w.failed = None;
        let result = (|| -> Result<(), QueueError> {
            #[cfg(test)]
            if w.faults.repair > 0 {
                w.faults.repair -= 1;
                return Err(io_err(&self.dir)(io::Error::other(
                    "injected repair failure",
                )));
            }
            if w.active_new && self.segments.len() > 1 {
                let seg = self.segments.pop_back().expect("active segment");
                fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
                fsync_dir(&self.dir)?;
                // The previous segment is sealed: the next append rolls over again.
                w.write_pos = self.segments.back().expect("sealed segment").size;
            } else {
                let seg = self.segments.back().expect("active segment");
                seg.file
                    .set_len(w.durable_pos)
                    .and_then(|()| seg.file.set_len(seg.size))
                    .and_then(|()| seg.file.sync_all())
                    .map_err(io_err(&seg.path))?;
                w.write_pos = w.durable_pos;
            }
            w.durable_pos = w.write_pos;
            w.dirty = false;
            w.meta_dirty = false;
            w.dir_dirty = false;
            w.active_new = false;
            Ok(())
        })();
        if let Err(e) = result {
            w.poisoned = Some(e.to_string());
        }
    }

    /// Rewinds after an I/O error in `append`; the next `sync` reports it.
    fn fail_append(&mut self, err: QueueError) -> QueueError {
        self.rewind();
        if let QueueError::Io { path, source } = &err {
            self.w().failed = Some((path.clone(), source.kind(), source.to_string()));
        }
        err
    }

    /// Seals the active segment (fsync) and starts a new one for a record of `padded` bytes.
    fn roll_over(&mut self, padded: u64) -> Result<(), QueueError> {
        self.flush()?;
        let size = self.w().limits.segment_bytes.max(SEG_HEADER + padded);
        let seg = self.create_segment(self.next_seq, size)?;
        self.segments.push_back(seg);
        let w = self.w();
        w.write_pos = SEG_HEADER;
        w.durable_pos = SEG_HEADER;
        w.active_new = true;
        w.meta_dirty = true;
        w.dir_dirty = true;
        Ok(())
    }

    /// The oldest pending entry that a sync has covered.
    fn durable_front(&self) -> Option<Entry> {
        self.entries
            .front()
            .copied()
            .filter(|e| e.seq <= self.visible_seq)
    }

    fn read_entry(&self, e: &Entry, with_payload: bool) -> Result<Record, QueueError> {
        let seg = self
            .segments
            .iter()
            .find(|s| s.first_seq == e.seg)
            .expect("the segment of a pending entry exists");
        let corrupt = |reason: &str| QueueError::Corrupt {
            seq: e.seq,
            path: seg.path.clone(),
            reason: format!("{reason} at offset {}", e.offset),
        };
        let want = if with_payload {
            e.len as usize
        } else {
            let mut h = [0u8; REC_HEADER];
            seg.file
                .read_exact_at(&mut h, e.offset)
                .map_err(io_err(&seg.path))?;
            (REC_HEADER + u16_at(&h, 32) as usize).min(e.len as usize)
        };
        let mut buf = vec![0u8; want];
        seg.file
            .read_exact_at(&mut buf, e.offset)
            .map_err(io_err(&seg.path))?;
        let hdr = parse_record_header(&buf, u64::from(e.len)).map_err(corrupt)?;
        if hdr.seq != e.seq || hdr.len != e.len {
            return Err(corrupt("record changed on disk"));
        }
        if with_payload && !check_record_crc(self.queue_id, &buf) {
            return Err(corrupt("checksum mismatch on read"));
        }
        let note_end = REC_HEADER + hdr.note_len as usize;
        let note = std::str::from_utf8(&buf[REC_HEADER..note_end])
            .map_err(|_| corrupt("note is not UTF-8"))?
            .to_owned();
        let payload = if with_payload {
            Bytes::from(buf).slice(note_end..)
        } else {
            Bytes::new()
        };
        Ok(Record {
            seq: e.seq,
            enqueued_at_ms: e.enqueued_at_ms,
            note,
            payload,
        })
    }

    /// Deletes leading segments whose records are all acknowledged (never the active one).
    fn delete_acked_segments(&mut self) -> Result<(), QueueError> {
        let keep_from = self.entries.front().map(|e| e.seg);
        while self.segments.len() > 1 && keep_from.is_none_or(|k| self.segments[0].first_seq < k) {
            let path = self.segments[0].path.clone();
            fs::remove_file(&path).map_err(io_err(&path))?;
            self.segments.pop_front();
        }
        Ok(())
    }

    /// A full disk with nothing pending: the active segment holds only delivered records, yet
    /// keeps their space until a roll-over, which itself needs space. Once the cursor says
    /// durably that every record is acknowledged, a fresh segment (its header is all it takes)
    /// replaces every old one. Crash-safe at each step: recovery deletes segments whose records
    /// are all acknowledged, and starts after the cursor when none is left. On error nothing
    /// was given up (the old segments stay until the new one exists).
    fn reclaim_delivered(&mut self) -> Result<(), QueueError> {
        debug_assert!(self.entries.is_empty());
        let (cursor_path, acked, synced) =
            (self.cursor_path(), self.acked_through, self.synced_seq);
        persist_cursor(self.w(), &cursor_path, acked, synced)?;
        let size = self.w().limits.segment_bytes;
        let fresh = self.create_segment(self.next_seq, size)?;
        fresh.file.sync_all().map_err(io_err(&fresh.path))?;
        let old = std::mem::replace(&mut self.segments, VecDeque::from([fresh]));
        for seg in old {
            fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
        }
        fsync_dir(&self.dir)?;
        self.front_cache = None;
        let w = self.w();
        w.write_pos = SEG_HEADER;
        w.durable_pos = SEG_HEADER;
        w.dirty = false;
        w.meta_dirty = false;
        w.dir_dirty = false;
        w.active_new = false;
        w.failed = None;
        Ok(())
    }

    fn append_once(
        &mut self,
        payload: &[u8],
        note: &str,
        enqueued_at_ms: u64,
    ) -> Result<u64, QueueError> {
        self.check_writable("append")?;
        let limits = self.w().limits;
        if note.len() > usize::from(u16::MAX) {
            return Err(QueueError::TooLarge {
                reason: format!("note of {} bytes exceeds 65535", note.len()),
            });
        }
        let len = RECORD_HEADER_BYTES + note.len() as u64 + payload.len() as u64;
        if len > u64::from(u32::MAX) {
            return Err(QueueError::TooLarge {
                reason: format!("record of {len} bytes exceeds 4 GiB"),
            });
        }
        let padded = align8(len);
        if padded > limits.max_bytes {
            return Err(QueueError::TooLarge {
                reason: format!(
                    "record of {padded} bytes exceeds max_bytes {}",
                    limits.max_bytes
                ),
            });
        }
        if self.entries.len() as u64 >= limits.max_messages {
            return Err(QueueError::Full {
                reason: format!("max_messages {} reached", limits.max_messages),
            });
        }
        if self.bytes + padded > limits.max_bytes {
            return Err(QueueError::Full {
                reason: format!("max_bytes {} reached", limits.max_bytes),
            });
        }
        let active_size = self.segments.back().expect("active segment").size;
        let (write_pos, dirty) = (self.w().write_pos, self.w().dirty);
        if write_pos + padded > active_size {
            if write_pos == SEG_HEADER && !dirty {
                // An empty active segment grows instead of leaving an empty sealed one behind.
                let seg = self.segments.back_mut().expect("active segment");
                if let Err(e) = seg.file.set_len(SEG_HEADER + padded) {
                    let err = io_err(&seg.path)(e);
                    return Err(self.fail_append(err));
                }
                seg.size = SEG_HEADER + padded;
                self.w().meta_dirty = true;
            } else if let Err(e) = self.roll_over(padded) {
                return Err(self.fail_append(e));
            }
        }
        let (seq, synced, queue_id) = (self.next_seq, self.synced_seq, self.queue_id);
        let seg = self.segments.back().expect("active segment");
        let w = self.writer.as_mut().expect("writable");
        let rec_len = encode_record(
            &mut w.buf,
            queue_id,
            seq,
            enqueued_at_ms,
            synced,
            note,
            payload,
        );
        let pos = w.write_pos;
        #[cfg(test)]
        let injected = (w.faults.write > 0).then(|| {
            w.faults.write -= 1;
            io::Error::other("injected write failure")
        });
        #[cfg(not(test))]
        let injected: Option<io::Error> = None;
        let written = match injected {
            Some(e) => Err(e),
            None => seg.file.write_all_at(&w.buf, pos),
        };
        // Whatever part was written lies past the write position: a rewind zeroes it.
        w.dirty = true;
        if let Err(e) = written {
            let err = io_err(&seg.path)(e);
            return Err(self.fail_append(err));
        }
        w.write_pos = pos + padded;
        w.last_appended = seq;
        let seg = seg.first_seq;
        self.entries.push_back(Entry {
            seq,
            seg,
            offset: pos,
            len: rec_len,
            enqueued_at_ms,
        });
        self.bytes += padded;
        self.next_seq += 1;
        Ok(seq)
    }
}

impl Store for SegmentLog {
    /// Policy on a full disk: when nothing is pending (every record delivered, nothing of this
    /// batch written yet), the space of delivered records is reclaimed and the append tried
    /// once more; otherwise the error stands (the batch is discarded, see "Sync errors").
    fn append(
        &mut self,
        payload: &[u8],
        note: &str,
        enqueued_at_ms: u64,
    ) -> Result<u64, QueueError> {
        let nothing_pending = self.entries.is_empty();
        match self.append_once(payload, note, enqueued_at_ms) {
            Err(QueueError::Io { source, .. })
                if nothing_pending
                    && source.kind() == io::ErrorKind::StorageFull
                    && self.w().poisoned.is_none() =>
            {
                self.reclaim_delivered()?;
                self.append_once(payload, note, enqueued_at_ms)
            }
            other => other,
        }
    }

    /// Policy on error: see "Sync errors" in the module documentation (rewind to the last
    /// synced offset; poison only if that fails).
    fn sync(&mut self) -> Result<(), QueueError> {
        self.check_writable("sync")?;
        if let Some((path, kind, msg)) = self.w().failed.take() {
            self.rewind();
            return Err(QueueError::Io {
                path,
                source: io::Error::new(
                    kind,
                    format!("an append of this batch failed ({msg}); the batch was discarded"),
                ),
            });
        }
        match self.flush() {
            Ok(()) => {
                self.visible_seq = self.synced_seq;
                Ok(())
            }
            Err(e) => {
                self.rewind();
                Err(e)
            }
        }
    }

    fn front(&mut self) -> Result<Option<Record>, QueueError> {
        if self.closed {
            return Err(QueueError::Closed);
        }
        let Some(e) = self.durable_front() else {
            return Ok(None);
        };
        if let Some(r) = self.front_cache.as_ref().filter(|r| r.seq == e.seq) {
            return Ok(Some(r.clone()));
        }
        let r = self.read_entry(&e, true)?;
        self.front_cache = Some(r.clone());
        Ok(Some(r))
    }

    /// Policy: see "Cursor" in the module documentation. On `Err` nothing changed (the cursor
    /// write failed before the ack was applied); the caller may retry.
    fn ack(&mut self, seq: u64) -> Result<(), QueueError> {
        self.check_writable("ack")?;
        let front = self
            .entries
            .front()
            .filter(|e| e.seq <= self.visible_seq)
            .map(|e| e.seq);
        if front != Some(seq) {
            return Err(QueueError::NotFront { seq, front });
        }
        // Does this ack leave leading segments without a pending record? Then the cursor must
        // be durable before they are deleted.
        let will_delete = self.segments.len() > 1
            && self
                .entries
                .get(1)
                .is_none_or(|next| self.segments[0].first_seq < next.seg);
        let (cursor_path, synced) = (self.cursor_path(), self.synced_seq);
        let w = self.w();
        if will_delete
            || w.unpersisted_acks + 1 >= w.persist_every
            || w.last_persist.elapsed() >= w.persist_interval
        {
            persist_cursor(w, &cursor_path, seq, synced)?;
        } else {
            w.unpersisted_acks += 1;
        }
        let e = self.entries.pop_front().expect("front entry");
        self.bytes -= e.size();
        self.acked_through = seq;
        if self.front_cache.as_ref().is_some_and(|r| r.seq == seq) {
            self.front_cache = None;
        }
        if will_delete {
            // A failed deletion is retried at the next ack and at close.
            let _ = self.delete_acked_segments();
        }
        Ok(())
    }

    fn set_aside_front(&mut self) -> Result<Option<Damage>, QueueError> {
        self.check_writable("set_aside_front")?;
        let Some(e) = self.durable_front() else {
            return Ok(None);
        };
        if self.read_entry(&e, true).is_ok() {
            return Ok(None);
        }
        let seg = self
            .segments
            .iter()
            .find(|s| s.first_seq == e.seg)
            .expect("the segment of a pending entry exists");
        // Whatever can be read of it: the evidence, and any MSH-10 still in it.
        let mut bytes = vec![0u8; e.len as usize];
        let read = seg.file.read_at(&mut bytes, e.offset).unwrap_or(0);
        bytes.truncate(read);
        let place = format!("{} offset {}", seg.path.display(), e.offset);
        let damage = salvage::set_aside(&self.dir, e.seq, &bytes, &place)?;
        self.front_cache = None;
        self.ack(e.seq)?;
        Ok(Some(damage))
    }

    fn persist_acks(&mut self) -> Result<bool, QueueError> {
        self.check_writable("persist_acks")?;
        let (cursor_path, acked, synced) =
            (self.cursor_path(), self.acked_through, self.synced_seq);
        let w = self.w();
        if w.unpersisted_acks == 0 {
            return Ok(false);
        }
        persist_cursor(w, &cursor_path, acked, synced)?;
        Ok(true)
    }

    fn pending(&mut self, with_payload: bool, limit: usize) -> Result<Vec<Record>, QueueError> {
        if self.closed {
            return Err(QueueError::Closed);
        }
        self.entries
            .iter()
            .take_while(|e| e.seq <= self.visible_seq)
            .take(limit)
            .map(|e| self.read_entry(e, with_payload))
            .collect()
    }

    /// Acknowledges every durable pending record (appends not yet synced stay) and fsyncs the
    /// cursor at once (also when nothing was pending, persisting earlier acks).
    fn purge(&mut self) -> Result<u64, QueueError> {
        self.check_writable("purge")?;
        let visible = self.visible_seq;
        let count = self.entries.iter().take_while(|e| e.seq <= visible).count();
        let last = match count {
            0 => self.acked_through,
            n => self.entries[n - 1].seq,
        };
        let (cursor_path, synced) = (self.cursor_path(), self.synced_seq);
        persist_cursor(self.w(), &cursor_path, last, synced)?;
        for e in self.entries.drain(..count) {
            self.bytes -= e.size();
        }
        self.acked_through = last;
        self.front_cache = None;
        // A failed deletion is retried at the next ack and at close.
        let _ = self.delete_acked_segments();
        Ok(count as u64)
    }

    fn stats(&self) -> QueueStats {
        QueueStats {
            messages: self.entries.len() as u64,
            bytes: self.bytes,
            oldest_enqueued_ms: self.entries.front().map(|e| e.enqueued_at_ms),
            next_seq: self.next_seq,
        }
    }

    /// Syncs appends not yet synced (a clean shutdown loses nothing appended), persists the
    /// cursor, deletes fully acknowledged segments and releases the lock. Idempotent; later
    /// calls other than `stats` and `close` return [`QueueError::Closed`].
    fn close(&mut self) -> Result<(), QueueError> {
        if self.closed {
            return Ok(());
        }
        if self.writer.is_none() {
            self.closed = true;
            return Ok(());
        }
        let synced = self.check_writable("close").and_then(|()| self.sync());
        let (cursor_path, acked, durable) =
            (self.cursor_path(), self.acked_through, self.synced_seq);
        let persisted = persist_cursor(self.w(), &cursor_path, acked, durable);
        let deleted = match persisted {
            Ok(()) => self.delete_acked_segments(),
            Err(_) => Ok(()),
        };
        self.closed = true;
        if let Some(w) = self.writer.take() {
            let _ = w.lock.unlock();
        }
        synced.and(persisted).and(deleted)
    }
}

impl Drop for SegmentLog {
    fn drop(&mut self) {
        #[cfg(test)]
        if self.crashed {
            return;
        }
        let _ = self.close();
    }
}
