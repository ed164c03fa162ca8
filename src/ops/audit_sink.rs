//! Where the audit trail goes: stderr with the rest of the log (the default), or the file
//! `audit.file` names, as JSON lines, reopened on SIGHUP (logrotate's `postrotate kill -HUP`).
//!
//! Owns the switch between the two (a flag the two log layers read: [`AuditOnly`] passes the
//! audit lines to the file's writer while it is set, [`NotDiverted`] keeps them off stderr
//! meanwhile), opening and reopening the file, and the file's JSON layer. The audit file takes
//! every audit line whatever stderr's level (`MLLP_GUARD_LOG`, `PUT /api/v1/log-level`): stderr
//! keeps the rest of the log. Must not know what an audit line says ([`super::audit`]) or how
//! the bytes are buffered ([`super::log_writer`]).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Filter, Layer};
use tracing_subscriber::registry::LookupSpan;

use super::log_format::{JsonLine, UtcMicros};
use super::log_writer::{self, LogWriter};

/// The target of every audit line.
pub const TARGET: &str = "mllp_guard::audit";

/// Set while an audit file takes the audit lines.
static DIVERTED: AtomicBool = AtomicBool::new(false);
/// The file they go to (for SIGHUP's reopen).
static PATH: Mutex<Option<PathBuf>> = Mutex::new(None);

fn is_audit(meta: &Metadata<'_>) -> bool {
    meta.target() == TARGET
}

/// Opens (or creates) the audit file for appending, readable by the guard's group only.
pub fn open(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    File::options()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
}

/// Sends the audit trail to `file` (opened from `path` by [`open`]), or back to stderr with
/// `None`. Lines logged before the switch are written where they were headed first.
pub fn install(target: Option<(PathBuf, File)>) {
    let mut current = PATH.lock().unwrap_or_else(|e| e.into_inner());
    match target {
        Some((path, file)) => {
            log_writer::set_audit_file(Some(file));
            DIVERTED.store(true, Ordering::SeqCst);
            *current = Some(path);
        }
        None => {
            DIVERTED.store(false, Ordering::SeqCst);
            log_writer::set_audit_file(None);
            *current = None;
        }
    }
}

/// SIGHUP: opens the audit file's path again (a rotated file was renamed away), whatever
/// becomes of the config reload the signal also asks for. On failure the old file stays in use
/// and an ERROR says why.
pub fn reopen() {
    let path = PATH.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let Some(path) = path else { return };
    match open(&path) {
        Ok(file) => {
            log_writer::set_audit_file(Some(file));
            tracing::info!(file = %path.display(), "audit file reopened");
        }
        Err(err) => {
            tracing::error!(file = %path.display(), error = %err, "cannot reopen the audit file; still writing to the one open before")
        }
    }
}

/// The layer that writes audit lines to the audit file, as JSON lines, while one is set.
pub fn file_layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
        .event_format(JsonLine::new(UtcMicros))
        .with_writer(LogWriter::audit())
        .with_filter(AuditOnly)
}

/// Passes only audit lines, and only while an audit file takes them.
pub struct AuditOnly;

impl<S> Filter<S> for AuditOnly {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        is_audit(meta) && DIVERTED.load(Ordering::Relaxed)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if is_audit(meta) {
            Interest::sometimes()
        } else {
            Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        // Audit lines are INFO (passed) or WARN (refused, not delivered).
        Some(LevelFilter::INFO)
    }
}

/// Passes every line except the audit lines an audit file takes.
pub struct NotDiverted;

impl<S> Filter<S> for NotDiverted {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        !(is_audit(meta) && DIVERTED.load(Ordering::Relaxed))
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if is_audit(meta) {
            Interest::sometimes()
        } else {
            Interest::always()
        }
    }
}
