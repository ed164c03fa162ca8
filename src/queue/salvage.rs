//! Salvage: what opening a queue does when the disk lies. Recovery calls it only when records
//! known to be durable (and so acknowledged to their senders) are unreadable or missing: media
//! damage, not a torn write. Salvage then keeps every record whose checksum holds, before and
//! after the damage, in order; moves the damaged bytes aside to `<dir>/damaged/` with the
//! sequence range they stood for and any MSH-10 still readable in them; and swaps in a clean
//! queue built from the intact records. The swap is crash-safe: the clean queue is built and
//! fsync'd in `<dir>/rebuild/`, marked `COMPLETE`, then the old files are removed (marked
//! `OLD_GONE`) and the new ones moved in; [`finish_swap`] completes an interrupted swap at the
//! next open. Also sets aside one record found damaged while the guard runs.
//!
//! Must not know about custody, metrics or logs: it returns [`Damage`], and the caller tells
//! people.

use std::collections::hash_map::RandomState;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::format::{
    decode_cursor, decode_mark, encode_cursor, encode_record, parse_segment_name, segment_header,
    segment_name, Cursor, CURSOR_FILE_BYTES, CURSOR_NAME, CURSOR_SLOT_OFFSET, DAMAGED_DIR,
    MARK_NAME, REBUILD_DIR, REC_HEADER, SEG_HEADER,
};
use super::store::{Damage, QueueError, Record};
use super::survey::{survey, Intact};

const COMPLETE: &str = "COMPLETE";
const OLD_GONE: &str = "OLD_GONE";
/// Control ids listed per damaged stretch, at most.
const MAX_CONTROL_IDS: usize = 100;

/// Completes a swap that a crash interrupted (see the module documentation); a rebuild that
/// never reached `COMPLETE` is removed, and the old queue stays as it was.
pub(super) fn finish_swap(dir: &Path) -> Result<(), QueueError> {
    let rebuild = dir.join(REBUILD_DIR);
    if !rebuild.exists() {
        return Ok(());
    }
    if !rebuild.join(COMPLETE).exists() {
        fs::remove_dir_all(&rebuild).map_err(io_err(&rebuild))?;
        return fsync_dir(dir);
    }
    if !rebuild.join(OLD_GONE).exists() {
        for item in fs::read_dir(dir).map_err(io_err(dir))? {
            let item = item.map_err(io_err(dir))?;
            if is_queue_file(&item.file_name().to_string_lossy()) {
                fs::remove_file(item.path()).map_err(io_err(&item.path()))?;
            }
        }
        fsync_dir(dir)?;
        write_durably(&rebuild.join(OLD_GONE), b"")?;
        fsync_dir(&rebuild)?;
    }
    for item in fs::read_dir(&rebuild).map_err(io_err(&rebuild))? {
        let item = item.map_err(io_err(&rebuild))?;
        let name = item.file_name();
        if is_queue_file(&name.to_string_lossy()) {
            let to = dir.join(&name);
            fs::rename(item.path(), &to).map_err(io_err(&to))?;
        }
    }
    fsync_dir(dir)?;
    fs::remove_dir_all(&rebuild).map_err(io_err(&rebuild))?;
    fsync_dir(dir)
}

fn is_queue_file(name: &str) -> bool {
    name == CURSOR_NAME || name == MARK_NAME || parse_segment_name(name).is_some()
}

/// A queue's files as read for a survey.
struct QueueBytes {
    cursor: Cursor,
    mark: Option<(u64, u64)>,
    firsts: Vec<u64>,
    files: Vec<Vec<u8>>,
}

/// Reads the cursor and the mark, then every segment (in that order, so that a guard appending
/// meanwhile can make the segments newer than the mark, never older). `exclusive`: the caller
/// holds the lock; otherwise a segment deleted meanwhile (all acknowledged) is skipped.
fn read_queue(dir: &Path, exclusive: bool) -> Result<QueueBytes, QueueError> {
    let cursor = fs::read(dir.join(CURSOR_NAME))
        .ok()
        .and_then(|bytes| {
            CURSOR_SLOT_OFFSET
                .iter()
                .filter_map(|&off| bytes.get(off as usize..).and_then(decode_cursor))
                .max_by_key(|c| c.gen)
        })
        .unwrap_or_default();
    let mark = fs::read(dir.join(MARK_NAME))
        .ok()
        .and_then(|bytes| decode_mark(&bytes));
    let mut names: Vec<u64> = Vec::new();
    for item in fs::read_dir(dir).map_err(io_err(dir))? {
        let item = item.map_err(io_err(dir))?;
        if let Some(first) = item.file_name().to_str().and_then(parse_segment_name) {
            names.push(first);
        }
    }
    names.sort_unstable();
    let (mut firsts, mut files) = (Vec::new(), Vec::new());
    for first in names {
        let path = dir.join(segment_name(first));
        match fs::read(&path) {
            Ok(bytes) => {
                firsts.push(first);
                files.push(bytes);
            }
            Err(e) if !exclusive && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
    }
    Ok(QueueBytes {
        cursor,
        mark,
        firsts,
        files,
    })
}

/// Damage found in a queue by [`inspect`]: not set aside yet (the guard does it at its next
/// start, or `queue salvage`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DamageFound {
    /// The sequence numbers the damaged bytes stood for (empty when `last_seq < first_seq`).
    pub first_seq: u64,
    pub last_seq: u64,
    /// Acknowledged messages among them not yet delivered: lost.
    pub lost: u64,
    /// MSH-10 control ids still readable in the bytes.
    pub control_ids: Vec<String>,
    /// Where, in words (segment and offsets).
    pub place: String,
}

/// Damage set aside earlier, as `damaged/<first>-<last>-<ms>.bin` (and its `.txt`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetAside {
    pub first_seq: u64,
    pub last_seq: u64,
    /// As its `.txt` says (0 when it cannot be read).
    pub lost: u64,
    pub file: PathBuf,
}

/// What a look at a queue directory finds, changing nothing; works while a guard runs (a
/// record being written at that moment is neither shown nor reported).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inspection {
    /// Every intact pending record (above the cursor), in order, with its payload: what the
    /// guard delivers after setting the damage aside.
    pub records: Vec<Record>,
    /// Damage in the queue now.
    pub damage: Vec<DamageFound>,
    /// Damage set aside before, oldest first.
    pub set_aside: Vec<SetAside>,
}

/// Surveys the queue in `dir` without a lock and without changing it (see [`Inspection`]).
pub fn inspect(dir: &Path) -> Result<Inspection, QueueError> {
    let found = read_queue(dir, false)?;
    let survey = survey(&found.cursor, found.mark, &found.firsts, &found.files);
    let mut out = Inspection::default();
    for r in survey
        .intact
        .iter()
        .filter(|r| r.seq > found.cursor.acked_through)
    {
        let rec = &found.files[r.seg][r.offset as usize..(r.offset + u64::from(r.len)) as usize];
        let note_len = u16::from_le_bytes([rec[32], rec[33]]) as usize;
        out.records.push(Record {
            seq: r.seq,
            enqueued_at_ms: u64::from_le_bytes(rec[16..24].try_into().unwrap_or([0; 8])),
            note: String::from_utf8_lossy(&rec[REC_HEADER..REC_HEADER + note_len]).into_owned(),
            payload: bytes::Bytes::copy_from_slice(&rec[REC_HEADER + note_len..]),
        });
    }
    for f in &survey.findings {
        let bytes = &found.files[f.seg][f.start as usize..f.end as usize];
        out.damage.push(DamageFound {
            first_seq: f.first_seq,
            last_seq: f.last_seq,
            lost: f.lost,
            control_ids: control_ids(bytes),
            place: f.place.clone(),
        });
    }
    let damaged = dir.join(DAMAGED_DIR);
    if let Ok(items) = fs::read_dir(&damaged) {
        for item in items.flatten() {
            let path = item.path();
            let name = item.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".bin") else {
                continue;
            };
            let mut parts = stem.split('-').map(str::parse::<u64>);
            let (Some(Ok(first_seq)), Some(Ok(last_seq))) = (parts.next(), parts.next()) else {
                continue;
            };
            let lost = fs::read_to_string(path.with_extension("txt"))
                .ok()
                .and_then(|text| {
                    text.lines().find_map(|l| {
                        l.strip_prefix("acknowledged messages lost: ")
                            .and_then(|n| n.trim().parse().ok())
                    })
                })
                .unwrap_or(0);
            out.set_aside.push(SetAside {
                first_seq,
                last_seq,
                lost,
                file: path,
            });
        }
    }
    out.set_aside.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(out)
}

/// Keeps every intact record, sets the damaged bytes aside, and swaps in a clean queue (the
/// module documentation). `segment_bytes`: the size of the clean queue's segment at least.
pub(super) fn salvage(dir: &Path, segment_bytes: u64) -> Result<Vec<Damage>, QueueError> {
    let found = read_queue(dir, true)?;
    let (cursor, files) = (&found.cursor, &found.files);
    let survey = survey(cursor, found.mark, &found.firsts, files);
    let (queue_id, intact) = (survey.queue_id, &survey.intact);
    let mut damage = Vec::new();
    for f in &survey.findings {
        let bytes = &files[f.seg][f.start as usize..f.end as usize];
        damage.push(set_aside_range(
            dir,
            f.first_seq,
            f.last_seq,
            cursor.acked_through,
            bytes,
            &f.place,
        )?);
    }

    // The clean queue: the pending intact records, with their seqs, under a new queue id (so
    // that no mark or byte of the old queue can pass as one of it).
    let rebuild = dir.join(REBUILD_DIR);
    if rebuild.exists() {
        fs::remove_dir_all(&rebuild).map_err(io_err(&rebuild))?;
    }
    fs::create_dir(&rebuild).map_err(io_err(&rebuild))?;
    let new_id = new_queue_id(queue_id);
    let pending: Vec<&Intact> = intact
        .iter()
        .filter(|r| r.seq > cursor.acked_through)
        .collect();
    if let Some(first) = pending.first() {
        let path = rebuild.join(segment_name(first.seq));
        let seg = File::create(&path).map_err(io_err(&path))?;
        seg.write_all_at(&segment_header(new_id, first.seq), 0)
            .map_err(io_err(&path))?;
        let mut pos = SEG_HEADER;
        let mut buf = Vec::new();
        for r in &pending {
            let rec = &files[r.seg][r.offset as usize..(r.offset + u64::from(r.len)) as usize];
            let note_len = u16::from_le_bytes([rec[32], rec[33]]) as usize;
            let enqueued_at_ms = u64::from_le_bytes(rec[16..24].try_into().unwrap_or([0; 8]));
            let note = std::str::from_utf8(&rec[REC_HEADER..REC_HEADER + note_len]).unwrap_or("");
            encode_record(
                &mut buf,
                new_id,
                r.seq,
                enqueued_at_ms,
                r.seq - 1,
                note,
                &rec[REC_HEADER + note_len..],
            );
            seg.write_all_at(&buf, pos).map_err(io_err(&path))?;
            pos += buf.len() as u64;
        }
        seg.set_len(pos.max(segment_bytes)).map_err(io_err(&path))?;
        seg.sync_all().map_err(io_err(&path))?;
    }
    let synced_through = pending.last().map_or(cursor.acked_through, |r| r.seq);
    let mut cursor_bytes = vec![0u8; CURSOR_FILE_BYTES as usize];
    let slot = encode_cursor(&Cursor {
        gen: 1,
        acked_through: cursor.acked_through,
        synced_through,
        queue_id: new_id,
    });
    cursor_bytes[..slot.len()].copy_from_slice(&slot);
    write_durably(&rebuild.join(CURSOR_NAME), &cursor_bytes)?;
    fsync_dir(&rebuild)?;
    write_durably(&rebuild.join(COMPLETE), b"")?;
    fsync_dir(&rebuild)?;
    finish_swap(dir)?;
    Ok(damage)
}

/// Sets aside the bytes of one record found damaged while the guard runs; the caller then
/// acknowledges it (it can never be delivered).
pub(super) fn set_aside(
    dir: &Path,
    seq: u64,
    bytes: &[u8],
    where_: &str,
) -> Result<Damage, QueueError> {
    set_aside_range(dir, seq, seq, seq - 1, bytes, where_)
}

/// Sets aside `bytes` that stood for seqs `first_seq..=last_seq`; those above `acked_through`
/// are the acknowledged messages lost.
fn set_aside_range(
    dir: &Path,
    first_seq: u64,
    last_seq: u64,
    acked_through: u64,
    bytes: &[u8],
    place: &str,
) -> Result<Damage, QueueError> {
    let lost = (last_seq + 1).saturating_sub(first_seq.max(acked_through + 1));
    let file = write_evidence(dir, first_seq, last_seq, lost, bytes, place)?;
    Ok(Damage {
        first_seq,
        last_seq,
        lost,
        control_ids: control_ids(bytes),
        file,
    })
}

/// Writes `bytes` to `damaged/<first>-<last>-<ms>.bin` and a description beside it, durably.
fn write_evidence(
    dir: &Path,
    first_seq: u64,
    last_seq: u64,
    lost: u64,
    bytes: &[u8],
    where_: &str,
) -> Result<PathBuf, QueueError> {
    let damaged = dir.join(DAMAGED_DIR);
    fs::create_dir_all(&damaged).map_err(io_err(&damaged))?;
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let stem = format!("{first_seq:020}-{last_seq:020}-{ms}");
    let bin = damaged.join(format!("{stem}.bin"));
    write_durably(&bin, bytes)?;
    let ids = control_ids(bytes);
    let text = format!(
        "damaged queue bytes, set aside by mllp-guard\nsequence numbers: {first_seq}..={last_seq}\nacknowledged messages lost: {lost}\nfound at: {where_}\nbytes: {}\nMSH-10 still readable: {}\n",
        bytes.len(),
        if ids.is_empty() { "none".to_string() } else { ids.join(", ") }
    );
    write_durably(&damaged.join(format!("{stem}.txt")), text.as_bytes())?;
    fsync_dir(&damaged)?;
    fsync_dir(dir)?;
    Ok(bin)
}

fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), QueueError> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_err(path))
}

/// MSH-10 of every `MSH` segment still readable in `bytes` (printable ASCII, at most 64
/// characters each, at most [`MAX_CONTROL_IDS`]).
fn control_ids(bytes: &[u8]) -> Vec<String> {
    let mut ids = Vec::new();
    let mut from = 0;
    while let Some(at) = bytes[from..].windows(3).position(|w| w == b"MSH") {
        let start = from + at;
        from = start + 3;
        let Some(&sep) = bytes.get(start + 3) else {
            break;
        };
        if !sep.is_ascii_punctuation() {
            continue;
        }
        let segment_end = bytes[start..]
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .map_or(bytes.len(), |n| start + n);
        let id = bytes[start..segment_end].split(|&b| b == sep).nth(9);
        if let Some(id) = id.filter(|id| {
            !id.is_empty() && id.len() <= 64 && id.iter().all(|b| b.is_ascii_graphic())
        }) {
            ids.push(String::from_utf8_lossy(id).into_owned());
            if ids.len() == MAX_CONTROL_IDS {
                break;
            }
        }
    }
    ids
}

fn new_queue_id(old: u64) -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(old);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let id = h.finish();
    if id == old {
        id.wrapping_add(1)
    } else {
        id
    }
}

// Its own two I/O helpers (the log's twins), so that the log can use salvage without a circle.
fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> QueueError + '_ {
    move |source| QueueError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn fsync_dir(dir: &Path) -> Result<(), QueueError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}
