//! The queue's unit tests: limits, the files a queue makes, roll-over, corruption and torn tails,
//! locking and the read-only view, sync errors and poisoning, the cursor policy, purge and close.
//! The model-based test is in `tests/model.rs`. The hooks below reach into the log's state: the
//! tests may know how the log is built, the shipped files never depend on them.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;

use super::{
    Limits, QueueError, QueueStats, Record, Recovery, SegmentLog, Store, ACK_PERSIST_EVERY,
};

mod model;

const SMALL_SEGMENT: u64 = 512;

fn limits(segment_bytes: u64, max_messages: u64, max_bytes: u64) -> Limits {
    Limits {
        max_bytes,
        max_messages,
        segment_bytes,
    }
}

fn small() -> Limits {
    limits(SMALL_SEGMENT, 1_000_000, 1 << 30)
}

/// The encoded size of a record, computed independently of the module.
fn encoded(note_len: usize, payload_len: usize) -> u64 {
    ((36 + note_len + payload_len) as u64).div_ceil(8) * 8
}

fn payload(n: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (n as usize * 31 + i * 7 + 1) as u8)
        .collect()
}

fn seqs(records: &[Record]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

fn open(dir: &Path, l: Limits) -> (SegmentLog, Recovery) {
    SegmentLog::open(dir, l).expect("open")
}

fn append_n(log: &mut SegmentLog, from: u64, n: u64, len: usize) -> Vec<u64> {
    (from..from + n)
        .map(|i| log.append(&payload(i, len), "", 1000 + i).expect("append"))
        .collect()
}

/// `(first_seq, last_seq, lost)` of each damage a recovery set aside.
fn lost(rec: &Recovery) -> Vec<(u64, u64, u64)> {
    rec.damaged
        .iter()
        .map(|d| (d.first_seq, d.last_seq, d.lost))
        .collect()
}

/// A log of `n` records of 50 bytes, each synced on its own (its own group commit).
fn synced_one_by_one(dir: &Path, n: u64) -> SegmentLog {
    let (mut log, _) = open(dir, Limits::default());
    for i in 1..=n {
        append_n(&mut log, i, 1, 50);
        log.sync().unwrap();
    }
    log
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = File::open(path).unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}

// ---------------------------------------------------------------- hooks into the log

impl SegmentLog {
    fn set_ack_persist_policy(&mut self, every: u64, interval: Duration) {
        let w = self.w();
        w.persist_every = every;
        w.persist_interval = interval;
    }

    /// Simulates a crash: drops the handles without syncing, persisting or closing anything
    /// (the flock goes with the file descriptor, as it does when a process dies).
    fn crash(mut self) {
        self.crashed = true;
    }

    /// Where the pending records are: (seq, segment path, offset, unpadded length).
    fn extents(&self) -> Vec<(u64, PathBuf, u64, u64)> {
        self.entries
            .iter()
            .map(|e| {
                let seg = self.segments.iter().find(|s| s.first_seq == e.seg).unwrap();
                (e.seq, seg.path.clone(), e.offset, u64::from(e.len))
            })
            .collect()
    }

    /// The appends since the last fsync (what a crash may tear).
    fn unsynced_extents(&self) -> Vec<(u64, PathBuf, u64, u64)> {
        let synced = self.synced_seq;
        self.extents()
            .into_iter()
            .filter(|x| x.0 > synced)
            .collect()
    }

    /// Whether the active segment was created since the last fsync.
    fn active_is_new(&self) -> bool {
        self.writer.as_ref().unwrap().active_new
    }

    fn segment_files(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".seg"))
            .collect();
        v.sort();
        v
    }
}

// ---------------------------------------------------------------- limits

#[test]
fn max_messages_refuses_with_full_then_accepts_again_after_an_ack() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), limits(4096, 3, 1 << 20));
    append_n(&mut log, 1, 3, 10);
    let err = log.append(b"x", "", 0).unwrap_err();
    assert!(
        matches!(&err, QueueError::Full { reason } if reason == "max_messages 3 reached"),
        "{err}"
    );
    assert_eq!(err.to_string(), "queue is full (max_messages 3 reached)");
    log.sync().unwrap();
    log.ack(1).unwrap();
    assert_eq!(log.append(b"x", "", 0).unwrap(), 4);
    assert_eq!(log.stats().messages, 3);
}

#[test]
fn max_bytes_refuses_with_full_then_accepts_again_after_an_ack() {
    let tmp = tempfile::tempdir().unwrap();
    // Three records of 100 payload bytes are 3 * 136 = 408 bytes.
    let (mut log, _) = open(tmp.path(), limits(4096, 1000, 408));
    append_n(&mut log, 1, 3, 100);
    assert_eq!(log.stats().bytes, 3 * encoded(0, 100));
    let err = log.append(&[0u8; 1], "", 0).unwrap_err();
    assert!(
        matches!(&err, QueueError::Full { reason } if reason == "max_bytes 408 reached"),
        "{err}"
    );
    log.sync().unwrap();
    log.ack(1).unwrap();
    assert_eq!(log.append(&payload(4, 100), "", 0).unwrap(), 4);
    // A record that could never fit is not "full" but too large.
    let err = log.append(&[0u8; 400], "", 0).unwrap_err();
    assert!(
        matches!(&err, QueueError::TooLarge { reason } if reason == "record of 440 bytes exceeds max_bytes 408"),
        "{err}"
    );
}

#[test]
fn invalid_limits_are_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let err = SegmentLog::open(tmp.path(), limits(100, 1, 1)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid queue limits: segment_bytes 100 is below the minimum 256"
    );
}

// ---------------------------------------------------------------- layout and segments

#[test]
fn a_fresh_directory_gets_a_lock_a_cursor_and_one_preallocated_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let (log, rec) = open(&dir, small());
    assert_eq!(
        rec,
        Recovery {
            records: 0,
            torn_tail_bytes: 0,
            segments: 1,
            cursor_lost: false,
            damaged: Vec::new(),
        }
    );
    let mut names: Vec<(String, u64)> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            ("00000000000000000001.seg".to_string(), SMALL_SEGMENT),
            (
                "LOCK".to_string(),
                format!("{}\n", std::process::id()).len() as u64
            ),
            ("cursor".to_string(), 8192),
            ("synced".to_string(), 0),
        ]
    );
    assert_eq!(
        log.stats(),
        QueueStats {
            messages: 0,
            bytes: 0,
            oldest_enqueued_ms: None,
            next_seq: 1
        }
    );
}

#[test]
fn records_roll_over_into_new_segment_files_and_acking_them_all_deletes_the_old_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), small());
    // 136-byte records: three fit in the 480 bytes after a segment's header.
    append_n(&mut log, 1, 20, 100);
    log.sync().unwrap();
    let names = |firsts: &[u64]| -> Vec<String> {
        firsts.iter().map(|&f| format!("{f:020}.seg")).collect()
    };
    assert_eq!(log.segment_files(), names(&[1, 4, 7, 10, 13, 16, 19]));
    for seq in 1..=6 {
        assert_eq!(log.front().unwrap().unwrap().seq, seq);
        log.ack(seq).unwrap();
    }
    assert_eq!(log.segment_files(), names(&[7, 10, 13, 16, 19]));
    for seq in 7..=20 {
        log.ack(seq).unwrap();
    }
    assert_eq!(log.segment_files(), names(&[19]));
    assert_eq!(log.front().unwrap(), None);
    log.close().unwrap();
    let (log, rec) = open(tmp.path(), small());
    assert_eq!(
        rec,
        Recovery {
            records: 0,
            torn_tail_bytes: 0,
            segments: 1,
            cursor_lost: false,
            damaged: Vec::new(),
        }
    );
    assert_eq!(log.stats().next_seq, 21);
}

#[test]
fn a_record_larger_than_a_segment_gets_a_segment_of_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), small());
    append_n(&mut log, 1, 1, 10);
    let big = payload(2, 2000);
    assert_eq!(log.append(&big, "big", 5).unwrap(), 2);
    append_n(&mut log, 3, 1, 10);
    log.sync().unwrap();
    let big_seg = tmp.path().join("00000000000000000002.seg");
    assert_eq!(fs::metadata(&big_seg).unwrap().len(), 32 + encoded(3, 2000));
    assert_eq!(
        log.segment_files(),
        vec![
            "00000000000000000001.seg",
            "00000000000000000002.seg",
            "00000000000000000003.seg"
        ]
    );
    log.close().unwrap();
    let (mut log, rec) = open(tmp.path(), small());
    assert_eq!(rec.records, 3);
    let got = log.pending(true, 10).unwrap();
    assert_eq!(
        got[1],
        Record {
            seq: 2,
            enqueued_at_ms: 5,
            note: "big".into(),
            payload: Bytes::from(big)
        }
    );
}

#[test]
fn an_empty_segment_grows_for_a_large_first_record_instead_of_leaving_an_empty_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), small());
    log.append(&payload(1, 1000), "", 1).unwrap();
    log.sync().unwrap();
    assert_eq!(log.segment_files(), vec!["00000000000000000001.seg"]);
    assert_eq!(
        fs::metadata(tmp.path().join("00000000000000000001.seg"))
            .unwrap()
            .len(),
        32 + encoded(0, 1000)
    );
}

// ---------------------------------------------------------------- corruption and tails

#[test]
fn a_corrupt_record_in_the_middle_of_the_log_is_set_aside_and_every_other_record_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let log = synced_one_by_one(tmp.path(), 6);
    let (_, path, off, len) = log.extents()[3].clone();
    log.crash();
    // One flipped payload byte in record 4; records 5 and 6 prove it had been synced.
    let byte = read_at(&path, off + 40, 1)[0];
    write_at(&path, off + 40, &[byte ^ 0x10]);
    let (mut log, rec) = open(tmp.path(), Limits::default());
    assert_eq!(rec.damaged.len(), 1, "{rec:?}");
    let d = &rec.damaged[0];
    assert_eq!((d.first_seq, d.last_seq, d.lost), (4, 4, 1));
    assert!(d.file.starts_with(tmp.path().join("damaged")));
    assert_eq!(fs::read(&d.file).unwrap().len() as u64, len.div_ceil(8) * 8);
    assert_eq!(seqs(&log.pending(false, 10).unwrap()), vec![1, 2, 3, 5, 6]);
    assert_eq!(log.pending(true, 10).unwrap()[3].payload, payload(5, 50));
    // The clean queue goes on: appends after the salvaged records, and a reopen finds no damage.
    assert_eq!(log.append(b"after", "", 9).unwrap(), 7);
    log.sync().unwrap();
    log.close().unwrap();
    let (mut log, rec) = open(tmp.path(), Limits::default());
    assert!(rec.damaged.is_empty(), "{rec:?}");
    assert_eq!(
        seqs(&log.pending(false, 10).unwrap()),
        vec![1, 2, 3, 5, 6, 7]
    );
}

#[test]
fn damage_in_the_last_synced_batch_is_set_aside_when_the_cursor_proves_it_durable() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), Limits::default());
    append_n(&mut log, 1, 5, 50);
    let (_, path, off, _) = log.extents()[4].clone();
    log.close().unwrap(); // syncs, and the cursor records that seq 5 is durable
    write_at(&path, off + 45, b"XX");
    let (mut log, rec) = open(tmp.path(), Limits::default());
    assert_eq!(lost(&rec), vec![(5, 5, 1)]);
    assert_eq!(seqs(&log.pending(false, 10).unwrap()), vec![1, 2, 3, 4]);
}

#[test]
fn damage_in_the_last_group_commit_is_told_from_a_torn_write_by_the_committed_mark() {
    let tmp = tempfile::tempdir().unwrap();
    let log = synced_one_by_one(tmp.path(), 20);
    let (_, path, off, _) = log.extents()[19].clone();
    let (_, _, off11, _) = log.extents()[10].clone();
    log.crash(); // no cursor write: only the mark says that seq 20 was durable
    write_at(&path, off + 45, b"XX");
    let (log2, rec) = open(tmp.path(), Limits::default());
    assert_eq!(lost(&rec), vec![(20, 20, 1)], "{rec:?}");
    assert_eq!(rec.torn_tail_bytes, 0);
    assert_eq!(rec.records, 19);
    drop(log2);
    // A segment cut in the middle of record 11: 1-10 kept, 11-19 reported lost, not "torn".
    let tmp = tempfile::tempdir().unwrap();
    let log = synced_one_by_one(tmp.path(), 20);
    let path = log.extents()[0].1.clone();
    log.crash();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(off11 + 20)
        .unwrap();
    let (mut log, rec) = open(tmp.path(), Limits::default());
    assert_eq!(lost(&rec), vec![(11, 20, 10)], "{rec:?}");
    assert_eq!(
        seqs(&log.pending(false, 30).unwrap()),
        (1..=10).collect::<Vec<_>>()
    );
}

#[test]
fn damage_in_a_sealed_segment_is_set_aside_and_the_records_after_it_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), small());
    append_n(&mut log, 1, 5, 100); // segments 1 (seqs 1-3) and 4 (seqs 4-5)
    log.sync().unwrap();
    let (_, path, off, _) = log.extents()[2].clone();
    log.close().unwrap();
    write_at(&path, off + 8, &[0xFF]); // the seq field of record 3
    let (mut log, rec) = open(tmp.path(), small());
    assert_eq!(lost(&rec), vec![(3, 3, 1)]);
    assert_eq!(seqs(&log.pending(false, 10).unwrap()), vec![1, 2, 4, 5]);
}

#[test]
fn a_torn_tail_is_cut_counted_and_appending_continues_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), Limits::default());
    append_n(&mut log, 1, 3, 20);
    log.sync().unwrap();
    append_n(&mut log, 4, 2, 20);
    let ext = log.unsynced_extents();
    log.crash();
    // Record 4 reached the disk; record 5 is garbage (a torn write).
    let (_, path, off5, len5) = ext[1].clone();
    write_at(&path, off5, &vec![0xEE; len5 as usize]);
    let (mut log, rec) = open(tmp.path(), Limits::default());
    assert_eq!(
        rec,
        Recovery {
            records: 4,
            torn_tail_bytes: len5,
            segments: 1,
            cursor_lost: false,
            damaged: Vec::new(),
        }
    );
    assert_eq!(
        read_at(&path, off5, len5 as usize),
        vec![0u8; len5 as usize]
    );
    assert_eq!(seqs(&log.pending(false, 10).unwrap()), vec![1, 2, 3, 4]);
    // Seq 5 was never durable, so it is handed out again.
    assert_eq!(log.append(b"after", "", 9).unwrap(), 5);
    log.sync().unwrap();
    log.close().unwrap();
    let (mut log, rec) = open(tmp.path(), Limits::default());
    assert_eq!(rec.torn_tail_bytes, 0);
    assert_eq!(
        log.pending(true, 10).unwrap()[4].payload,
        Bytes::from_static(b"after")
    );
}

#[test]
fn records_that_reached_the_disk_after_a_missing_unsynced_one_are_cut_as_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), Limits::default());
    append_n(&mut log, 1, 2, 20);
    log.sync().unwrap();
    append_n(&mut log, 3, 3, 20);
    let ext = log.unsynced_extents();
    log.crash();
    // A power loss wrote the pages of records 4 and 5 but not record 3's.
    let (_, path, off3, len3) = ext[0].clone();
    write_at(&path, off3, &vec![0u8; len3 as usize]);
    let (mut log, rec) = open(tmp.path(), Limits::default());
    assert_eq!(rec.records, 2);
    // From the end of record 2 to the end of record 5.
    assert_eq!(rec.torn_tail_bytes, ext[2].2 + ext[2].3 - off3);
    assert_eq!(seqs(&log.pending(false, 10).unwrap()), vec![1, 2]);
}

#[test]
fn a_missing_record_followed_by_records_written_after_its_sync_is_reported_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), Limits::default());
    append_n(&mut log, 1, 3, 20);
    log.sync().unwrap();
    append_n(&mut log, 4, 1, 20);
    let ext = log.extents();
    log.crash();
    let (_, path, off3, len3) = ext[2].clone();
    write_at(&path, off3, &vec![0u8; len3 as usize]);
    let (mut log, rec) = open(tmp.path(), Limits::default());
    assert_eq!(lost(&rec), vec![(3, 3, 1)]);
    assert_eq!(seqs(&log.pending(false, 10).unwrap()), vec![1, 2, 4]);
}

#[test]
fn a_damaged_header_of_the_last_segment_loses_none_of_its_synced_records() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), Limits::default());
    append_n(&mut log, 1, 1, 20);
    log.sync().unwrap();
    append_n(&mut log, 2, 1, 20); // written after seq 1 was durable, and says so
    log.sync().unwrap();
    log.crash();
    let path = tmp.path().join("00000000000000000001.seg");
    write_at(&path, 0, &[0u8; 32]);
    let (mut log, rec) = open(tmp.path(), Limits::default());
    assert_eq!(
        rec.damaged.iter().map(|d| d.lost).sum::<u64>(),
        0,
        "{rec:?}"
    );
    assert_eq!(seqs(&log.pending(false, 10).unwrap()), vec![1, 2]);
}

#[test]
fn a_segment_log_can_move_to_the_committer_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<SegmentLog>();
    assert_send::<Box<dyn Store>>();
}

// ---------------------------------------------------------------- lock and read-only view

#[test]
fn a_second_open_is_locked_and_a_read_only_view_shows_the_pending_records() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), small());
    append_n(&mut log, 1, 5, 100);
    log.sync().unwrap();
    log.ack(1).unwrap();
    let err = SegmentLog::open(tmp.path(), small()).unwrap_err();
    assert!(matches!(&err, QueueError::Locked { dir } if dir == tmp.path()));
    assert_eq!(
        err.to_string(),
        format!(
            "queue directory {} is in use by another mllp-guard process",
            tmp.path().display()
        )
    );

    // The cursor may lag (acks are persisted in batches): the view shows from there.
    let mut view = SegmentLog::open_read_only(tmp.path()).unwrap();
    let shown = view.pending(true, 100).unwrap();
    assert_eq!(seqs(&shown), vec![1, 2, 3, 4, 5]);
    assert_eq!(shown[2].payload, Bytes::from(payload(3, 100)));
    assert_eq!(view.front().unwrap().unwrap().seq, 1);
    for (op, err) in [
        ("append", view.append(b"x", "", 0).unwrap_err()),
        ("sync", view.sync().unwrap_err()),
        ("ack", view.ack(1).unwrap_err()),
        ("purge", view.purge().unwrap_err()),
    ] {
        assert!(matches!(err, QueueError::ReadOnly { op: o } if o == op));
    }
    view.close().unwrap();

    log.close().unwrap();
    let view = SegmentLog::open_read_only(tmp.path()).unwrap();
    assert_eq!(view.stats().messages, 4);
    let (mut log, _) = open(tmp.path(), small());
    assert_eq!(log.front().unwrap().unwrap().seq, 2);
}

#[test]
fn persist_acks_makes_every_unpersisted_ack_visible_to_a_reader_in_one_write() {
    let tmp = tempfile::tempdir().unwrap();
    // One segment: no deletion forces the cursor out.
    let one_segment = limits(1 << 20, 1000, 1 << 30);
    let (mut log, _) = open(tmp.path(), one_segment);
    log.set_ack_persist_policy(1000, Duration::from_secs(3600));
    append_n(&mut log, 1, 5, 100);
    log.sync().unwrap();
    assert!(!log.persist_acks().unwrap(), "nothing to write yet");
    for seq in 1..=3 {
        log.ack(seq).unwrap();
    }
    let pending = |dir: &Path| SegmentLog::open_read_only(dir).unwrap().stats().messages;
    assert_eq!(pending(tmp.path()), 5, "the acks are in memory only");
    assert!(log.persist_acks().unwrap());
    assert_eq!(pending(tmp.path()), 2, "a reader sees the deliveries");
    assert!(!log.persist_acks().unwrap(), "written once");
    // A crash now re-delivers nothing that was acked before persist_acks.
    log.crash();
    let (mut log, _) = open(tmp.path(), one_segment);
    assert_eq!(log.front().unwrap().unwrap().seq, 4);
}

#[test]
fn a_read_only_view_does_not_show_or_repair_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), Limits::default());
    append_n(&mut log, 1, 2, 20);
    log.sync().unwrap();
    append_n(&mut log, 3, 1, 20);
    let ext = log.unsynced_extents();
    log.crash();
    let (_, path, off, len) = ext[0].clone();
    write_at(&path, off + 4, &[0xAB; 4]);
    let mut view = SegmentLog::open_read_only(tmp.path()).unwrap();
    assert_eq!(seqs(&view.pending(false, 10).unwrap()), vec![1, 2]);
    // Still there: only a writable open repairs.
    assert_eq!(read_at(&path, off + 4, 4), vec![0xAB; 4]);
    let (_, rec) = open(tmp.path(), Limits::default());
    assert_eq!(rec.torn_tail_bytes, len);
}

// ---------------------------------------------------------------- sync errors

#[test]
fn a_failed_sync_discards_the_batch_and_the_queue_stays_usable() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), Limits::default());
    append_n(&mut log, 1, 2, 20);
    log.sync().unwrap();
    append_n(&mut log, 3, 2, 20);
    let path = log.unsynced_extents()[0].1.clone();
    log.w().faults.sync = 1;
    let err = log.sync().unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "queue I/O error on {}: injected fdatasync failure",
            path.display()
        )
    );
    assert_eq!(log.stats().messages, 2);
    assert_eq!(seqs(&log.pending(false, 10).unwrap()), vec![1, 2]);
    // Seqs 3 and 4 are not reused; the bytes they had are zeros again.
    assert_eq!(log.append(&payload(5, 20), "", 5).unwrap(), 5);
    log.sync().unwrap();
    log.crash();
    let (mut log, rec) = open(tmp.path(), Limits::default());
    assert_eq!(rec.torn_tail_bytes, 0);
    assert_eq!(seqs(&log.pending(false, 10).unwrap()), vec![1, 2, 5]);
    assert_eq!(log.stats().next_seq, 6);
}

#[test]
fn a_failed_append_discards_its_batch_and_the_next_sync_reports_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), Limits::default());
    append_n(&mut log, 1, 1, 20);
    log.sync().unwrap();
    append_n(&mut log, 2, 1, 20);
    log.w().faults.write = 1;
    let err = log.append(b"three", "", 3).unwrap_err();
    assert!(err.to_string().ends_with("injected write failure"), "{err}");
    // The failed append got no seq; seq 2, handed out and discarded, is not reused.
    assert_eq!(log.append(b"four", "", 4).unwrap(), 3);
    let err = log.sync().unwrap_err();
    assert!(
        err.to_string()
            .contains("an append of this batch failed (injected write failure)"),
        "{err}"
    );
    assert_eq!(log.stats().messages, 1);
    assert_eq!(log.append(b"five", "", 5).unwrap(), 4);
    log.sync().unwrap();
    assert_eq!(seqs(&log.pending(false, 10).unwrap()), vec![1, 4]);
    log.close().unwrap();
    let (mut log, _) = open(tmp.path(), Limits::default());
    assert_eq!(seqs(&log.pending(false, 10).unwrap()), vec![1, 4]);
}

#[test]
fn a_failed_sync_after_a_roll_over_removes_the_new_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), small());
    append_n(&mut log, 1, 3, 100);
    log.sync().unwrap();
    append_n(&mut log, 4, 2, 100); // seals segment 1, creates segment 4
    assert_eq!(log.segment_files().len(), 2);
    log.w().faults.sync = 1;
    log.sync().unwrap_err();
    assert_eq!(log.segment_files(), vec!["00000000000000000001.seg"]);
    assert_eq!(log.append(&payload(6, 100), "", 6).unwrap(), 6);
    log.sync().unwrap();
    assert_eq!(
        log.segment_files(),
        vec!["00000000000000000001.seg", "00000000000000000006.seg"]
    );
    log.close().unwrap();
    let (mut log, _) = open(tmp.path(), small());
    assert_eq!(seqs(&log.pending(false, 10).unwrap()), vec![1, 2, 3, 6]);
}

#[test]
fn a_failed_repair_poisons_the_queue_until_it_is_reopened() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), Limits::default());
    append_n(&mut log, 1, 1, 20);
    log.sync().unwrap();
    append_n(&mut log, 2, 1, 20);
    log.w().faults.sync = 1;
    log.w().faults.repair = 1;
    let err = log.sync().unwrap_err();
    assert!(
        err.to_string().ends_with("injected fdatasync failure"),
        "{err}"
    );
    let err = log.append(b"x", "", 0).unwrap_err();
    assert!(
        matches!(&err, QueueError::Poisoned { reason } if reason.ends_with("injected repair failure")),
        "{err}"
    );
    assert!(matches!(log.sync(), Err(QueueError::Poisoned { .. })));
    assert!(matches!(log.ack(1), Err(QueueError::Poisoned { .. })));
    assert!(matches!(log.close(), Err(QueueError::Poisoned { .. })));
    // Record 2 was written in full before the failed sync, so recovery finds it: it is
    // delivered although its sender was answered negatively (a duplicate, never a loss).
    let (mut log, rec) = open(tmp.path(), Limits::default());
    assert_eq!(rec.records, 2);
    assert_eq!(seqs(&log.pending(false, 10).unwrap()), vec![1, 2]);
}

// ---------------------------------------------------------------- front, ack, cursor

#[test]
fn front_never_shows_an_appended_record_before_its_sync() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), Limits::default());
    append_n(&mut log, 1, 2, 20);
    assert_eq!(log.front().unwrap(), None);
    assert_eq!(log.pending(true, 10).unwrap(), vec![]);
    assert!(matches!(
        log.ack(1),
        Err(QueueError::NotFront {
            seq: 1,
            front: None
        })
    ));
    log.sync().unwrap();
    append_n(&mut log, 3, 1, 20);
    assert_eq!(seqs(&log.pending(false, 10).unwrap()), vec![1, 2]);
    assert_eq!(
        log.front().unwrap().unwrap(),
        Record {
            seq: 1,
            enqueued_at_ms: 1001,
            note: String::new(),
            payload: Bytes::from(payload(1, 20))
        }
    );
}

#[test]
fn ack_of_a_seq_that_is_not_the_front_is_refused_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), Limits::default());
    append_n(&mut log, 1, 3, 20);
    log.sync().unwrap();
    let err = log.ack(2).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot acknowledge seq 2: the front of the queue is seq 1"
    );
    assert_eq!(log.stats().messages, 3);
    assert_eq!(log.front().unwrap().unwrap().seq, 1);
}

#[test]
fn acks_are_persisted_every_64_so_a_crash_redelivers_at_most_63() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), Limits::default());
    log.set_ack_persist_policy(ACK_PERSIST_EVERY, Duration::MAX);
    append_n(&mut log, 1, 200, 10);
    log.sync().unwrap();
    for seq in 1..=63 {
        log.ack(seq).unwrap();
    }
    log.crash();
    let (mut log, rec) = open(tmp.path(), Limits::default());
    assert_eq!(rec.records, 200);
    assert_eq!(log.front().unwrap().unwrap().seq, 1);
    log.set_ack_persist_policy(ACK_PERSIST_EVERY, Duration::MAX);
    for seq in 1..=(64 + 63) {
        log.ack(seq).unwrap();
    }
    log.crash();
    let (mut log, rec) = open(tmp.path(), Limits::default());
    assert_eq!(rec.records, 200 - 64);
    assert_eq!(log.front().unwrap().unwrap().seq, 65);
}

#[test]
fn acks_are_persisted_at_the_first_ack_after_the_interval() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), Limits::default());
    log.set_ack_persist_policy(1000, Duration::from_millis(30));
    append_n(&mut log, 1, 5, 10);
    log.sync().unwrap();
    log.ack(1).unwrap(); // more than 30 ms after open? Not necessarily: sleep first.
    std::thread::sleep(Duration::from_millis(40));
    log.ack(2).unwrap();
    log.ack(3).unwrap();
    log.crash();
    let (mut log, _) = open(tmp.path(), Limits::default());
    assert_eq!(log.front().unwrap().unwrap().seq, 3);
}

#[test]
fn a_torn_cursor_slot_falls_back_to_the_older_slot() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), Limits::default());
    log.set_ack_persist_policy(1, Duration::MAX);
    append_n(&mut log, 1, 3, 10);
    log.sync().unwrap();
    log.ack(1).unwrap(); // generation 2, slot at 0
    log.ack(2).unwrap(); // generation 3, slot at 4096
    log.crash();
    write_at(&tmp.path().join("cursor"), 4096 + 10, &[0x77]);
    let (mut log, rec) = open(tmp.path(), Limits::default());
    assert!(!rec.cursor_lost);
    assert_eq!(log.front().unwrap().unwrap().seq, 2);
}

#[test]
fn a_cursor_without_a_valid_slot_redelivers_every_record_still_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), Limits::default());
    append_n(&mut log, 1, 3, 10);
    log.sync().unwrap();
    log.ack(1).unwrap();
    log.close().unwrap();
    fs::write(tmp.path().join("cursor"), vec![0x55u8; 8192]).unwrap();
    let (mut log, rec) = open(tmp.path(), Limits::default());
    assert_eq!(
        rec,
        Recovery {
            records: 3,
            torn_tail_bytes: 0,
            segments: 1,
            cursor_lost: true,
            damaged: Vec::new(),
        }
    );
    assert_eq!(log.front().unwrap().unwrap().seq, 1);
    assert_eq!(log.append(b"x", "", 0).unwrap(), 4);
}

#[test]
fn seqs_keep_increasing_across_restarts_even_after_everything_was_purged() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), small());
    append_n(&mut log, 1, 5, 100);
    log.sync().unwrap();
    assert_eq!(log.purge().unwrap(), 5);
    assert_eq!(log.segment_files(), vec!["00000000000000000004.seg"]);
    log.close().unwrap();
    let (mut log, rec) = open(tmp.path(), small());
    assert_eq!(rec.records, 0);
    assert_eq!(log.append(b"x", "", 0).unwrap(), 6);
    assert_eq!(log.stats().next_seq, 7);
}

#[test]
fn purge_removes_the_durable_records_and_keeps_appends_not_yet_synced() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), Limits::default());
    append_n(&mut log, 1, 3, 10);
    log.sync().unwrap();
    append_n(&mut log, 4, 1, 10);
    assert_eq!(log.purge().unwrap(), 3);
    assert_eq!(log.stats().messages, 1);
    log.sync().unwrap();
    assert_eq!(seqs(&log.pending(false, 10).unwrap()), vec![4]);
    log.crash();
    let (mut log, _) = open(tmp.path(), Limits::default());
    assert_eq!(seqs(&log.pending(false, 10).unwrap()), vec![4]);
}

#[test]
fn close_syncs_pending_appends_and_later_calls_say_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), Limits::default());
    append_n(&mut log, 1, 2, 10);
    log.close().unwrap();
    log.close().unwrap();
    assert!(matches!(log.append(b"x", "", 0), Err(QueueError::Closed)));
    assert!(matches!(log.front(), Err(QueueError::Closed)));
    let (mut log, rec) = open(tmp.path(), Limits::default());
    assert_eq!(rec.records, 2);
    assert_eq!(seqs(&log.pending(false, 10).unwrap()), vec![1, 2]);
}
