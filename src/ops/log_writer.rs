//! Where a running guard's log lines go: gathered in memory and written to stderr in large
//! writes by a thread of their own, so that the audit trail (a line per message) costs a
//! `memcpy` per line instead of a `write(2)` (about 8 us of kernel time to a file here, issue 22).
//!
//! What it promises: no line is ever dropped (when [`MAX_PENDING`] bytes wait, the thread that
//! logs waits for the writer: backpressure, as a slow stderr gave before); lines come out in the
//! order they were logged; a line is written within [`FLUSH_INTERVAL`], sooner when
//! [`FLUSH_BYTES`] have gathered; [`flush`] writes everything now (a clean exit, a panic). What a
//! SIGKILL can lose is at most the last [`FLUSH_INTERVAL`] of lines. Write errors (stderr
//! closed) are ignored, as tracing's own writer ignores them. Owns the buffer and the thread;
//! must not know what the lines say or how they were formatted.

use std::io::Write;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Lines are written at the latest this long after they were logged.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Gathered lines are written at once when they reach this many bytes.
pub const FLUSH_BYTES: usize = 64 * 1024;
/// At most this many bytes wait; a thread that logs more waits until they are written.
pub const MAX_PENDING: usize = 1024 * 1024;

struct Shared {
    pending: Mutex<Vec<u8>>,
    /// Signalled when lines arrive in an empty buffer, or pass [`FLUSH_BYTES`].
    work: Condvar,
    /// Signalled when the pending bytes were taken for writing.
    room: Condvar,
    /// Held while bytes taken from `pending` are written, taken before `pending` is let go, so
    /// that two writes (the thread's and a [`flush`]) never swap their order.
    out: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

static SHARED: OnceLock<&'static Shared> = OnceLock::new();

/// The log writer to give the formatter: batched (the process's buffer and thread, started on
/// first use) or direct (each line written to stderr at once, for the short-lived commands).
#[derive(Clone, Copy)]
pub struct LogWriter(Option<&'static Shared>);

impl LogWriter {
    /// Each line written to stderr as it is logged.
    pub fn direct() -> LogWriter {
        LogWriter(None)
    }

    /// The process's batched writer; its thread starts with the first call.
    pub fn batched() -> LogWriter {
        LogWriter(Some(SHARED.get_or_init(|| {
            let shared: &'static Shared = Box::leak(Box::new(Shared {
                pending: Mutex::new(Vec::with_capacity(FLUSH_BYTES)),
                work: Condvar::new(),
                room: Condvar::new(),
                out: Mutex::new(()),
            }));
            let started = std::thread::Builder::new()
                .name("log-writer".into())
                .spawn(move || write_loop(shared));
            if started.is_err() {
                // No thread: lines still arrive; each one then writes itself (see `append`).
                eprintln!("warning: cannot start the log writer thread; logging unbuffered");
                UNBUFFERED.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            shared
        })))
    }

    fn append(self, line: &[u8]) {
        let Some(shared) = self.0 else {
            let _ = std::io::stderr().write_all(line);
            return;
        };
        if UNBUFFERED.load(std::sync::atomic::Ordering::Relaxed) {
            let _guard = lock(&shared.out);
            let _ = std::io::stderr().write_all(line);
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

static UNBUFFERED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Writes every pending line now (before a clean exit, in a panic hook). Does nothing when the
/// writer was never used.
pub fn flush() {
    if let Some(shared) = SHARED.get() {
        let mut pending = lock(&shared.pending);
        let out = lock(&shared.out);
        let bytes = std::mem::take(&mut *pending);
        drop(pending);
        let _ = std::io::stderr().write_all(&bytes);
        drop(out);
        shared.room.notify_all();
    }
}

/// The writer thread: waits for lines, gathers them for up to [`FLUSH_INTERVAL`] (or until
/// [`FLUSH_BYTES`]), writes them in one call, and gives the buffer back for reuse.
fn write_loop(shared: &'static Shared) {
    let mut spare: Vec<u8> = Vec::with_capacity(FLUSH_BYTES);
    let mut stderr = std::io::stderr();
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
        let out = lock(&shared.out);
        let bytes = std::mem::replace(&mut *pending, std::mem::take(&mut spare));
        drop(pending);
        shared.room.notify_all();
        let _ = stderr.write_all(&bytes);
        drop(out);
        spare = bytes;
        spare.clear();
        // A burst once grew it past what is needed: let the memory go.
        if spare.capacity() > 4 * FLUSH_BYTES {
            spare = Vec::with_capacity(FLUSH_BYTES);
        }
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
