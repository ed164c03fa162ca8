//! Where a running guard's log lines go: gathered in memory and written in large writes by a
//! thread of their own, so that the audit trail (a line per message) costs a `memcpy` per line
//! instead of a `write(2)` (about 8 us of kernel time to a file here, issue 22). Two such
//! writers exist: the log's, to stderr, and the audit trail's, to the file `audit.file` names
//! once [`set_audit_file`] has given it one.
//!
//! What it promises: no line is ever dropped (when [`MAX_PENDING`] bytes wait, the thread that
//! logs waits for the writer: backpressure, as a slow stderr gave before); lines come out in the
//! order they were logged; a line is written within [`FLUSH_INTERVAL`], sooner when
//! [`FLUSH_BYTES`] have gathered; [`flush`] writes everything now (a clean exit, a panic). What a
//! SIGKILL can lose is at most the last [`FLUSH_INTERVAL`] of lines. Write errors to stderr
//! (closed) are ignored, as tracing's own writer ignores them; a failing audit file (a full
//! disk) is retried every [`RETRY_INTERVAL`] with an ERROR on stderr, holding the lines (and,
//! once [`MAX_PENDING`] wait, the messages that would add more) until it takes them. Owns the
//! buffers, the threads and the audit file's handle; must not know what the lines say, how they
//! were formatted or which lines are audit lines.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Lines are written at the latest this long after they were logged.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Gathered lines are written at once when they reach this many bytes.
pub const FLUSH_BYTES: usize = 64 * 1024;
/// At most this many bytes wait; a thread that logs more waits until they are written.
pub const MAX_PENDING: usize = 1024 * 1024;
/// A failed write to the audit file is tried again after this long.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// At exit, how long a failing audit file is retried before its last lines are given up (with
/// an ERROR saying how many bytes).
const EXIT_RETRY: Duration = Duration::from_secs(5);

/// Where a writer's bytes go.
enum Dest {
    Stderr,
    /// The audit file; `None` before one is set (or after it was taken away): such bytes go
    /// to stderr rather than nowhere.
    Audit(Option<File>),
}

struct Shared {
    pending: Mutex<Vec<u8>>,
    /// Signalled when lines arrive in an empty buffer, or pass [`FLUSH_BYTES`].
    work: Condvar,
    /// Signalled when the pending bytes were taken for writing.
    room: Condvar,
    /// Held while bytes taken from `pending` are written, taken before `pending` is let go, so
    /// that two writes (the thread's and a [`flush`]) never swap their order.
    out: Mutex<Dest>,
    /// No thread could be started: each line writes itself.
    unbuffered: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

static STDERR: OnceLock<&'static Shared> = OnceLock::new();
static AUDIT: OnceLock<&'static Shared> = OnceLock::new();

fn start(
    cell: &'static OnceLock<&'static Shared>,
    dest: fn() -> Dest,
    name: &str,
) -> &'static Shared {
    cell.get_or_init(|| {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            pending: Mutex::new(Vec::with_capacity(FLUSH_BYTES)),
            work: Condvar::new(),
            room: Condvar::new(),
            out: Mutex::new(dest()),
            unbuffered: AtomicBool::new(false),
        }));
        let started = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || write_loop(shared));
        if started.is_err() {
            // No thread: lines still arrive; each one then writes itself (see `append`).
            eprintln!("warning: cannot start the {name} thread; logging unbuffered");
            shared.unbuffered.store(true, Ordering::Relaxed);
        }
        shared
    })
}

/// The log writer to give the formatter: batched (a buffer and thread, started on first use)
/// or direct (each line written to stderr at once, for the short-lived commands).
#[derive(Clone, Copy)]
pub struct LogWriter(Option<&'static Shared>);

impl LogWriter {
    /// Each line written to stderr as it is logged.
    pub fn direct() -> LogWriter {
        LogWriter(None)
    }

    /// The process's batched writer to stderr; its thread starts with the first call.
    pub fn batched() -> LogWriter {
        LogWriter(Some(start(&STDERR, || Dest::Stderr, "log-writer")))
    }

    /// The audit trail's batched writer: to the file [`set_audit_file`] gave it (stderr until
    /// then); its thread starts with the first call.
    pub fn audit() -> LogWriter {
        LogWriter(Some(start(&AUDIT, || Dest::Audit(None), "audit-writer")))
    }

    /// Hands over one whole line (or several), as the formatter's [`Line`] does.
    pub fn append(self, line: &[u8]) {
        let Some(shared) = self.0 else {
            let _ = std::io::stderr().write_all(line);
            return;
        };
        if shared.unbuffered.load(Ordering::Relaxed) {
            let mut out = lock(&shared.out);
            write_out(&mut out, line, None);
            return;
        }
        let mut pending = lock(&shared.pending);
        while pending.len() >= MAX_PENDING {
            pending = shared.room.wait(pending).unwrap_or_else(|e| e.into_inner());
        }
        let before = pending.len();
        pending.extend_from_slice(line);
        let wake = before == 0 || (before < FLUSH_BYTES && pending.len() >= FLUSH_BYTES);
        drop(pending);
        if wake {
            shared.work.notify_one();
        }
    }
}

/// Gives the audit writer its file (`None`: back to stderr). The lines gathered so far are
/// written to the old destination first, so a rotated file ends with every line logged before
/// the switch and the new one starts after it. Starts the audit writer if it was not running.
pub fn set_audit_file(file: Option<File>) {
    let shared = start(&AUDIT, || Dest::Audit(None), "audit-writer");
    let mut pending = lock(&shared.pending);
    let mut out = lock(&shared.out);
    let bytes = std::mem::take(&mut *pending);
    drop(pending);
    shared.room.notify_all();
    write_out(&mut out, &bytes, None);
    let mut old = std::mem::replace(&mut *out, Dest::Audit(file));
    if let Dest::Audit(Some(old)) = &mut old {
        let _ = old.flush();
    }
}

/// Writes every pending line now (before a clean exit, in a panic hook): the audit trail's,
/// then the log's. Does nothing for a writer that was never used. A failing audit file is
/// retried for a few seconds at most.
pub fn flush() {
    for cell in [&AUDIT, &STDERR] {
        if let Some(shared) = cell.get() {
            let mut pending = lock(&shared.pending);
            let mut out = lock(&shared.out);
            let bytes = std::mem::take(&mut *pending);
            drop(pending);
            write_out(&mut out, &bytes, Some(Instant::now() + EXIT_RETRY));
            drop(out);
            shared.room.notify_all();
        }
    }
}

/// The writer thread: waits for lines, gathers them for up to [`FLUSH_INTERVAL`] (or until
/// [`FLUSH_BYTES`]), writes them in one call, and gives the buffer back for reuse.
fn write_loop(shared: &'static Shared) {
    let mut spare: Vec<u8> = Vec::with_capacity(FLUSH_BYTES);
    loop {
        let mut pending = lock(&shared.pending);
        while pending.is_empty() {
            pending = shared.work.wait(pending).unwrap_or_else(|e| e.into_inner());
        }
        let deadline = Instant::now() + FLUSH_INTERVAL;
        while pending.len() < FLUSH_BYTES {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            pending = shared
                .work
                .wait_timeout(pending, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let mut out = lock(&shared.out);
        let bytes = std::mem::replace(&mut *pending, std::mem::take(&mut spare));
        drop(pending);
        shared.room.notify_all();
        write_out(&mut out, &bytes, None);
        drop(out);
        spare = bytes;
        spare.clear();
        // A burst once grew it past what is needed: let the memory go.
        if spare.capacity() > 4 * FLUSH_BYTES {
            spare = Vec::with_capacity(FLUSH_BYTES);
        }
    }
}

/// Writes `bytes` where `dest` says. An audit file that fails is retried every
/// [`RETRY_INTERVAL`] until it takes them all, or until `give_up_at`.
fn write_out(dest: &mut Dest, bytes: &[u8], give_up_at: Option<Instant>) {
    if bytes.is_empty() {
        return;
    }
    let Dest::Audit(Some(file)) = dest else {
        let _ = std::io::stderr().write_all(bytes);
        return;
    };
    let mut written = 0;
    let mut failing = false;
    while written < bytes.len() {
        let err = match file.write(&bytes[written..]) {
            Ok(0) => std::io::Error::from(std::io::ErrorKind::WriteZero),
            Ok(n) => {
                written += n;
                continue;
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => err,
        };
        if give_up_at.is_some_and(|at| Instant::now() >= at) {
            tracing::error!(error = %err, lost_bytes = bytes.len() - written, "cannot write the audit file at exit; its last lines are lost");
            return;
        }
        if !failing {
            failing = true;
            crate::ops::metrics::audit_write_failed();
            tracing::error!(error = %err, waiting_bytes = bytes.len() - written, "cannot write the audit file; retrying every second, holding its lines (messages wait once 1 MiB of lines wait)");
        }
        std::thread::sleep(RETRY_INTERVAL);
    }
    if failing {
        tracing::warn!("the audit file takes lines again; nothing was lost");
    }
}

/// One formatted event, handed over whole.
pub struct Line(LogWriter);

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line(*self)
    }
}
