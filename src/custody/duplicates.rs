//! Duplicate suppression: the acks already given, by sender, MSH-3, MSH-4, MSH-10 and the
//! message's digest, for `duplicate_window`, so that a sender's resend is answered with the same
//! ack and not queued twice, and one sender can never make another's message disappear by
//! reusing its control id. Bounded (at most [`MAX_REMEMBERED`] keys, oldest forgotten first,
//! each forgotten when the window has passed).
//!
//! On the embedded queue the memory survives restarts and crashes through a journal, the file
//! `duplicates` in the route's queue directory (guarded by the queue's lock): the committer
//! writes the keys of a batch once the batch is durable and before any of its acks leaves, so a
//! resend after a restart or a SIGKILL is recognised (the kernel has the write). The journal is
//! fdatasync'd at most every [`SYNC_EVERY`] (with a batch, never an fsync per message): a power
//! loss may forget the keys of the last moments, and a resend of those is queued again (a
//! visible duplicate, never a loss). Keys are only journalled for messages that were stored.
//!
//! ```text
//! journal    0 magic "MGDUP\0\0\x01", then entries back to back
//! entry      0 len u32 (= 48 + ack_len) | 4 crc u32 (CRC-32 of bytes 8..len)
//!            8 at_ms u64 (wall clock when remembered) | 16 key [32] (SHA-256 of the key parts)
//!           48 ack bytes (the ack the sender got)
//! ```
//!
//! Opening reads the journal up to its first unreadable entry (a torn tail is cut), keeps what
//! is younger than the window (the newest [`MAX_REMEMBERED`]), and rewrites the file when it holds
//! more than twice what is live. Must not know the queue's records.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

use crate::wire::hl7::Header;

/// Remembered acks for duplicate detection, at most (oldest forgotten first).
pub const MAX_REMEMBERED: usize = 100_000;
/// The journal is fdatasync'd with the first batch after this long since its last sync.
pub const SYNC_EVERY: Duration = Duration::from_secs(1);
/// The journal's file name in the route's queue directory.
pub const JOURNAL_NAME: &str = "duplicates";
const MAGIC: &[u8; 8] = b"MGDUP\0\0\x01";
const ENTRY_HEADER: usize = 48;
/// The journal is rewritten with only the live keys once it holds more entries than twice
/// those, plus this many.
const COMPACT_SLACK: usize = 4096;

/// Who sent a message, as duplicate suppression tells senders apart: the TLS identity when the
/// sender presented a certificate, else its address (the PROXY protocol's client when the route
/// reads one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SenderId<'a> {
    Identity(&'a str),
    Address(IpAddr),
}

impl fmt::Display for SenderId<'_> {
    /// `tls:<identity>` or `ip:<address>`: the two can never be mistaken for each other.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SenderId::Identity(identity) => write!(f, "tls:{identity}"),
            SenderId::Address(ip) => write!(f, "ip:{}", ip.to_canonical()),
        }
    }
}

/// SHA-256 of a message payload: what makes two messages with the same ids different.
pub(super) fn digest(payload: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, payload).as_ref());
    out
}

/// Which message a resend is: the SHA-256 of [`MessageIdentity`]'s two digests.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct DuplicateKey([u8; 32]);

#[cfg(test)]
impl DuplicateKey {
    fn of(header: &Header<'_>, sender: SenderId<'_>, payload: &[u8]) -> DuplicateKey {
        MessageIdentity::of(header, sender, payload).key()
    }
}

/// A message as duplicate suppression sees it: the SHA-256 of its sender, MSH-3, MSH-4 and
/// MSH-10 (each length-prefixed, so fields cannot shift into each other), and the SHA-256 of its
/// payload. The same ids with another payload are another message (a recycled control id).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct MessageIdentity {
    ids: [u8; 32],
    digest: [u8; 32],
}

impl MessageIdentity {
    pub(super) fn of(header: &Header<'_>, sender: SenderId<'_>, payload: &[u8]) -> MessageIdentity {
        let mut ids = Vec::with_capacity(128);
        let sender = sender.to_string();
        for part in [
            sender.as_bytes(),
            header.sending_application(),
            header.sending_facility(),
            header.control_id(),
        ] {
            ids.extend_from_slice(&(part.len() as u32).to_le_bytes());
            ids.extend_from_slice(part);
        }
        MessageIdentity {
            ids: digest(&ids),
            digest: digest(payload),
        }
    }

    pub(super) fn key(&self) -> DuplicateKey {
        let mut both = [0u8; 64];
        both[..32].copy_from_slice(&self.ids);
        both[32..].copy_from_slice(&self.digest);
        DuplicateKey(digest(&both))
    }

    /// The payload's SHA-256.
    pub(super) fn digest(&self) -> &[u8; 32] {
        &self.digest
    }
}

/// A digest in lower-case hex, for a log line.
pub(super) fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// One remembered ack.
#[derive(Clone)]
struct Remembered {
    /// Wall clock (ms since the epoch), for the journal.
    at_ms: u64,
    ack: Bytes,
}

/// Positive acks recently sent, by message, so a resend gets the same ack and is not queued
/// twice. Bounded in time (the window) and size.
#[derive(Default)]
pub(super) struct Duplicates {
    acks: HashMap<DuplicateKey, Remembered>,
    order: VecDeque<(Instant, DuplicateKey)>,
    /// Per sender and ids, the payload digest of the last message taken and when: the same ids
    /// with another body within the window are worth a warning (this process only).
    taken: HashMap<[u8; 32], (Instant, [u8; 32])>,
    /// Messages being committed now: a resend that arrives meanwhile (on another connection)
    /// waits for the first one's outcome instead of being committed a second time.
    in_flight: HashMap<DuplicateKey, Arc<Notify>>,
}

/// What to do with a message, by its duplicate key.
pub(super) enum Seen {
    /// Answered before, within the window: this ack again.
    Answered(Bytes),
    /// Being committed now: wait for this, then look again.
    InFlight(Arc<Notify>),
    /// New: reserved until the returned value is dropped (after the commit, whatever its outcome).
    New,
}

/// A key reserved while its message is committed; dropping it releases the key and wakes the
/// resends that wait on it (also when the commit's future is dropped half-way).
pub(super) struct Reserved<'a> {
    duplicates: &'a Mutex<Duplicates>,
    key: DuplicateKey,
    notify: Arc<Notify>,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        let mut d = self.duplicates.lock().unwrap_or_else(|e| e.into_inner());
        if d.in_flight
            .get(&self.key)
            .is_some_and(|n| Arc::ptr_eq(n, &self.notify))
        {
            d.in_flight.remove(&self.key);
        }
        drop(d);
        self.notify.notify_waiters();
    }
}

/// Looks `key` up and, when it is new, reserves it (see [`Seen`]).
pub(super) fn check_and_reserve<'a>(
    duplicates: &'a Mutex<Duplicates>,
    key: DuplicateKey,
    window: Duration,
) -> (Seen, Option<Reserved<'a>>) {
    let mut d = duplicates.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(ack) = d.find(&key, window) {
        return (Seen::Answered(ack), None);
    }
    if let Some(notify) = d.in_flight.get(&key) {
        return (Seen::InFlight(notify.clone()), None);
    }
    let notify = Arc::new(Notify::new());
    d.in_flight.insert(key, notify.clone());
    (
        Seen::New,
        Some(Reserved {
            duplicates,
            key,
            notify,
        }),
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Duplicates {
    pub(super) fn find(&mut self, key: &DuplicateKey, window: Duration) -> Option<Bytes> {
        self.expire(window);
        self.acks.get(key).map(|r| r.ack.clone())
    }

    /// The payload digest of an earlier message within the window with the same sender and ids
    /// as `id` but another body (a recycled control id), if there is one.
    pub(super) fn reused(&self, id: &MessageIdentity, window: Duration) -> Option<[u8; 32]> {
        match self.taken.get(&id.ids) {
            Some((at, earlier)) if at.elapsed() < window && *earlier != id.digest => Some(*earlier),
            _ => None,
        }
    }

    /// `id` was taken (queued): a later message with its ids and another body is a reuse.
    /// Bounded like the acks: expired entries go first, and past the cap everything.
    pub(super) fn taken(&mut self, id: &MessageIdentity, window: Duration) {
        if self.taken.len() >= MAX_REMEMBERED {
            self.taken.retain(|_, (at, _)| at.elapsed() < window);
            if self.taken.len() >= MAX_REMEMBERED {
                self.taken.clear();
            }
        }
        self.taken.insert(id.ids, (Instant::now(), id.digest));
    }

    pub(super) fn remember(&mut self, key: DuplicateKey, ack: Bytes, window: Duration) {
        self.insert(key, Instant::now(), now_ms(), ack, window);
    }

    fn insert(&mut self, key: DuplicateKey, at: Instant, at_ms: u64, ack: Bytes, window: Duration) {
        self.expire(window);
        if self.acks.insert(key, Remembered { at_ms, ack }).is_none() {
            self.order.push_back((at, key));
        }
        while self.order.len() > MAX_REMEMBERED {
            if let Some((_, old)) = self.order.pop_front() {
                self.acks.remove(&old);
            }
        }
    }

    fn expire(&mut self, window: Duration) {
        while let Some((at, _)) = self.order.front() {
            if at.elapsed() < window {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                self.acks.remove(&key);
            }
        }
    }

    /// What is remembered, oldest first (for rewriting the journal).
    fn live(&self) -> Vec<(u64, DuplicateKey, Bytes)> {
        self.order
            .iter()
            .filter_map(|(_, key)| self.acks.get(key).map(|r| (r.at_ms, *key, r.ack.clone())))
            .collect()
    }
}

/// The duplicate memory's journal on disk (embedded queue only). Owned by the committer thread.
pub(super) struct Journal {
    path: PathBuf,
    file: File,
    /// Entries in the file (live or not).
    entries: usize,
    window: Duration,
    last_sync: Instant,
    buf: Vec<u8>,
}

fn encode(buf: &mut Vec<u8>, at_ms: u64, key: &DuplicateKey, ack: &[u8]) {
    let len = (ENTRY_HEADER + ack.len()) as u32;
    let start = buf.len();
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&at_ms.to_le_bytes());
    buf.extend_from_slice(&key.0);
    buf.extend_from_slice(ack);
    let crc = crc32fast::hash(&buf[start + 8..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The readable entries of a journal's bytes and where they end (a torn tail starts there).
fn decode(bytes: &[u8]) -> (Vec<(u64, DuplicateKey, Bytes)>, usize) {
    let mut out = Vec::new();
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return (out, 0);
    }
    let mut pos = MAGIC.len();
    while bytes.len() - pos >= ENTRY_HEADER {
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let len = u32_at(pos) as usize;
        if len < ENTRY_HEADER || len > bytes.len() - pos {
            break;
        }
        let entry = &bytes[pos..pos + len];
        if crc32fast::hash(&entry[8..]) != u32_at(pos + 4) {
            break;
        }
        let at_ms = u64::from_le_bytes(entry[8..16].try_into().expect("8 bytes"));
        let key = DuplicateKey(entry[16..48].try_into().expect("32 bytes"));
        out.push((at_ms, key, Bytes::copy_from_slice(&entry[ENTRY_HEADER..])));
        pos += len;
    }
    (out, pos)
}

impl Journal {
    /// Opens (or creates) the journal in `dir` and loads what it remembers within `window`
    /// into `into`. Rewrites the file when it was torn or mostly expired.
    pub(super) fn open(dir: &Path, window: Duration, into: &mut Duplicates) -> io::Result<Journal> {
        let path = dir.join(JOURNAL_NAME);
        let mut bytes = Vec::new();
        match File::open(&path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let (entries, end) = decode(&bytes);
        let (now, now_ms) = (Instant::now(), now_ms());
        for (at_ms, key, ack) in &entries {
            let age = Duration::from_millis(now_ms.saturating_sub(*at_ms));
            if age >= window {
                continue;
            }
            let at = now.checked_sub(age).unwrap_or(now);
            into.insert(*key, at, *at_ms, ack.clone(), window);
        }
        let file = OpenOptions::new().append(true).create(true).open(&path)?;
        let mut journal = Journal {
            path,
            file,
            entries: entries.len(),
            window,
            last_sync: Instant::now(),
            buf: Vec::new(),
        };
        if end != bytes.len() || end == 0 || journal.entries > 2 * into.acks.len() + COMPACT_SLACK {
            journal.rewrite(into)?;
        }
        Ok(journal)
    }

    /// Appends the keys of a durable batch (fdatasync'd when [`SYNC_EVERY`] has passed since
    /// the last sync) and remembers them in `memory`; rewrites the journal when it has grown to
    /// more than twice what `memory` holds. Call before the batch's acks leave.
    pub(super) fn append(
        &mut self,
        batch: &[(DuplicateKey, Bytes)],
        memory: &Mutex<Duplicates>,
    ) -> io::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let at_ms = now_ms();
        self.buf.clear();
        for (key, ack) in batch {
            encode(&mut self.buf, at_ms, key, ack);
        }
        self.file.write_all(&self.buf)?;
        if self.last_sync.elapsed() >= SYNC_EVERY {
            self.file.sync_data()?;
            self.last_sync = Instant::now();
        }
        self.entries += batch.len();
        let live = {
            let mut memory = memory.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            for (key, ack) in batch {
                memory.insert(*key, now, at_ms, ack.clone(), self.window);
            }
            memory.acks.len()
        };
        if self.entries > 2 * live + COMPACT_SLACK {
            let memory = memory.lock().unwrap_or_else(|e| e.into_inner());
            let live = memory.live();
            drop(memory);
            self.rewrite_from(&live)?;
        }
        Ok(())
    }

    fn rewrite(&mut self, memory: &Duplicates) -> io::Result<()> {
        self.rewrite_from(&memory.live())
    }

    /// Replaces the journal with exactly `live` (write a new file, fsync, rename, fsync the
    /// directory: a crash leaves either the old journal or the new one).
    fn rewrite_from(&mut self, live: &[(u64, DuplicateKey, Bytes)]) -> io::Result<()> {
        let tmp = self.path.with_extension("new");
        self.buf.clear();
        self.buf.extend_from_slice(MAGIC);
        for (at_ms, key, ack) in live {
            encode(&mut self.buf, *at_ms, key, ack);
        }
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&self.buf)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.entries = live.len();
        Ok(())
    }
}

impl Drop for Journal {
    /// A clean stop leaves the journal durable.
    fn drop(&mut self) {
        let _ = self.file.sync_data();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::hl7::Header;

    #[test]
    fn duplicates_are_found_within_the_window_and_forgotten_after() {
        let mut d = Duplicates::default();
        let key = DuplicateKey([7; 32]);
        d.remember(key, Bytes::from_static(b"ack"), Duration::from_secs(60));
        assert_eq!(
            d.find(&key, Duration::from_secs(60)),
            Some(Bytes::from_static(b"ack"))
        );
        assert_eq!(d.find(&key, Duration::ZERO), None);
        assert!(d.acks.is_empty() && d.order.is_empty());
    }

    #[test]
    fn a_reused_control_id_with_another_body_is_told_apart_with_both_digests() {
        let h = Header::parse(b"MSH|^~\\&|LAB|FAC|R|F|2024||ORU^R01|K1|P|2.5\r").unwrap();
        let sender = SenderId::Address("127.0.0.1".parse().unwrap());
        let first = MessageIdentity::of(&h, sender, b"potassium 4.1");
        let other = MessageIdentity::of(&h, sender, b"potassium 6.9");
        let window = Duration::from_secs(60);
        let mut d = Duplicates::default();
        assert_eq!(d.reused(&first, window), None);
        d.taken(&first, window);
        d.remember(first.key(), Bytes::from_static(b"ack"), window);
        assert_eq!(d.reused(&first, window), None, "a resend is not a reuse");
        assert_eq!(d.reused(&other, window), Some(*first.digest()));
        assert_eq!(d.find(&other.key(), window), None, "and not a duplicate");
        assert_eq!(d.reused(&other, Duration::ZERO), None, "past the window");
        assert_eq!(hex(&[0x0a, 0xff]), "0aff");
    }

    #[test]
    fn the_journal_brings_back_what_was_remembered_within_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let window = Duration::from_secs(600);
        let memory = Mutex::new(Duplicates::default());
        let mut journal = Journal::open(dir.path(), window, &mut Duplicates::default()).unwrap();
        let (a, b) = (DuplicateKey([1; 32]), DuplicateKey([2; 32]));
        journal
            .append(&[(a, Bytes::from_static(b"ack-a"))], &memory)
            .unwrap();
        journal
            .append(&[(b, Bytes::from_static(b"ack-b"))], &memory)
            .unwrap();
        assert_eq!(
            memory.lock().unwrap().find(&a, window).as_deref(),
            Some(&b"ack-a"[..])
        );
        drop(journal);
        // A torn entry at the end (a crash mid-write) is cut; the rest comes back.
        let path = dir.path().join(JOURNAL_NAME);
        let mut torn = fs::read(&path).unwrap();
        torn.extend_from_slice(&[60, 0, 0, 0, 1, 2, 3]);
        fs::write(&path, &torn).unwrap();
        let mut restored = Duplicates::default();
        let _journal = Journal::open(dir.path(), window, &mut restored).unwrap();
        assert_eq!(restored.find(&a, window).as_deref(), Some(&b"ack-a"[..]));
        assert_eq!(restored.find(&b, window).as_deref(), Some(&b"ack-b"[..]));
        assert_eq!(
            fs::read(&path).unwrap().len(),
            torn.len() - 7,
            "torn tail cut"
        );
        // Past the window, nothing is remembered.
        std::thread::sleep(Duration::from_millis(5));
        let mut expired = Duplicates::default();
        let _journal = Journal::open(dir.path(), Duration::from_millis(1), &mut expired).unwrap();
        assert!(expired.acks.is_empty());
    }

    #[test]
    fn the_journal_is_rewritten_once_it_holds_mostly_forgotten_keys() {
        let dir = tempfile::tempdir().unwrap();
        let window = Duration::from_secs(600);
        let memory = Mutex::new(Duplicates::default());
        let mut journal = Journal::open(dir.path(), window, &mut Duplicates::default()).unwrap();
        for i in 0..(COMPACT_SLACK + 10) as u32 {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_le_bytes());
            journal
                .append(&[(DuplicateKey(k), Bytes::from_static(b"ack"))], &memory)
                .unwrap();
            // Everything but the last key is forgotten (as if expired or capped).
            let mut m = memory.lock().unwrap();
            m.acks.retain(|key, _| key.0 == k);
            m.order.retain(|(_, key)| key.0 == k);
        }
        assert!(
            journal.entries < COMPACT_SLACK,
            "{} entries",
            journal.entries
        );
    }

    #[test]
    fn duplicate_keys_do_not_collide_across_field_boundaries() {
        let (a, b) = (
            &b"MSH|^~\\&|AB|C|R|F|2024||ADT^A01|X|P|2.5\r"[..],
            &b"MSH|^~\\&|A|BC|R|F|2024||ADT^A01|X|P|2.5\r"[..],
        );
        let lab = SenderId::Address("127.0.0.1".parse().unwrap());
        let key = |p: &[u8], s| DuplicateKey::of(&Header::parse(p).unwrap(), s, p);
        assert!(key(a, lab) != key(b, lab));
        assert!(key(a, lab) == key(a, lab));
    }

    #[test]
    fn another_sender_or_other_content_is_never_a_duplicate() {
        let lab = SenderId::Address("10.0.0.5".parse().unwrap());
        let other = SenderId::Address("127.0.0.9".parse().unwrap());
        let named = SenderId::Identity("lab.example.org");
        let k41 = b"MSH|^~\\&|LAB|F|R|F|2024||ORU^R01|C1|P|2.5\rOBX|1|NM|K||4.1\r";
        let k69 = b"MSH|^~\\&|LAB|F|R|F|2024||ORU^R01|C1|P|2.5\rOBX|1|NM|K||6.9\r";
        let key = |p: &[u8], s| DuplicateKey::of(&Header::parse(p).unwrap(), s, p);
        assert!(
            key(k41, lab) != key(k41, other),
            "same message, another sender"
        );
        assert!(key(k41, lab) != key(k69, lab), "same ids, other content");
        assert!(key(k41, lab) != key(k41, named));
        // An IPv4-mapped IPv6 peer is the IPv4 sender.
        let mapped = SenderId::Address("::ffff:10.0.0.5".parse().unwrap());
        assert!(key(k41, lab) == key(k41, mapped));
    }
}
