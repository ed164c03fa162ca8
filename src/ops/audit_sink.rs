//! Where the audit trail goes: stderr with the rest of the log (the default), or the file
//! `audit.file` names, as JSON lines, reopened on SIGHUP (logrotate's `postrotate kill -HUP`).
//!
//! Owns the switch between the two (a flag the two log layers read: [`AuditOnly`] passes the
//! audit lines to the file's writer while it is set, [`NotDiverted`] keeps them off stderr
//! meanwhile), opening and reopening the file, and the file's JSON layer. The audit file takes
//! every audit line whatever stderr's level (`MLLP_GUARD_LOG`, `PUT /api/v1/log-level`): stderr
//! keeps the rest of the log.
//!
//! Also owns the direct path ([`write`]): once the binary's log set-up has called
//! [`write_directly`], audit lines are written straight to the writer they belong to, as
//! [`DirectLine`]s, instead of through tracing's dispatch (issue 22: most of an audit line's
//! cost). The same choices hold on both paths: the file (JSON) while one is set, else stderr in
//! its format if stderr's filter passes the line's level. That filter is asked once per change
//! ([`stderr_filter_changed`]) with a probe of the audit target, not once per line. Without the
//! set-up (a terminal with colours, tests, other programs using this library) [`write`] says so
//! and the caller logs through tracing. Must not know what an audit line says
//! ([`super::audit`]) or how the bytes are buffered ([`super::log_writer`]).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Filter, Layer};
use tracing_subscriber::registry::LookupSpan;

use super::log_format::{DirectLine, JsonLine, UtcMicros};
use super::log_writer::{self, LogWriter};

/// The target of every audit line.
pub const TARGET: &str = "mllp_guard::audit";

/// Set while an audit file takes the audit lines.
static DIVERTED: AtomicBool = AtomicBool::new(false);
/// The file they go to (for SIGHUP's reopen).
static PATH: Mutex<Option<PathBuf>> = Mutex::new(None);

/// How audit lines reach stderr on the direct path: its writer, and whether its lines are JSON.
struct Direct {
    stderr: LogWriter,
    json: bool,
}

static DIRECT: std::sync::OnceLock<Direct> = std::sync::OnceLock::new();
/// Whether stderr's filter passes audit lines at INFO (forwarded, queued...) and at WARN
/// (refused, not delivered).
static STDERR_PASSES_INFO: AtomicBool = AtomicBool::new(false);
static STDERR_PASSES_WARN: AtomicBool = AtomicBool::new(false);

/// Sends audit lines on the direct path from now on: to `stderr` (JSON lines if `json`) while
/// no audit file takes them and the stderr filter `directives` (an `EnvFilter`, as
/// `MLLP_GUARD_LOG` gives it) passes them. Only for a log written as [`super::log_format`]
/// writes it without colours; a second call changes nothing.
pub fn write_directly(stderr: LogWriter, json: bool, directives: &str) {
    stderr_filter_changed(directives);
    let _ = DIRECT.set(Direct { stderr, json });
}

/// The stderr filter is now `directives` (`PUT /api/v1/log-level`): asks it once whether it
/// passes audit lines at INFO and at WARN.
pub fn stderr_filter_changed(directives: &str) {
    let (info, warn) = passes(directives);
    STDERR_PASSES_INFO.store(info, Ordering::SeqCst);
    STDERR_PASSES_WARN.store(warn, Ordering::SeqCst);
}

/// Whether the filter `directives` passes an audit line at INFO, and at WARN: the answer
/// tracing's own dispatch gets from it (audit lines are never inside a span).
fn passes(directives: &str) -> (bool, bool) {
    use tracing::Subscriber as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    let filter = tracing_subscriber::EnvFilter::new(directives);
    let probe = tracing_subscriber::registry().with(filter);
    (probe.enabled(&probe::INFO), probe.enabled(&probe::WARN))
}

/// Writes one audit line at `level` on the direct path, its fields written by `fields`.
/// `false` when there is no direct path: the caller logs the line through tracing instead.
pub fn write(level: tracing::Level, fields: impl FnOnce(&mut DirectLine<'_>)) -> bool {
    let Some(direct) = DIRECT.get() else {
        return false;
    };
    let (writer, json) = if DIVERTED.load(Ordering::Relaxed) {
        (LogWriter::audit(), true)
    } else {
        let passes = if level == tracing::Level::INFO {
            &STDERR_PASSES_INFO
        } else {
            &STDERR_PASSES_WARN
        };
        if !passes.load(Ordering::Relaxed) {
            return true;
        }
        (direct.stderr, direct.json)
    };
    LINE.with(|line| {
        // Taken, not borrowed: nothing here logs, but a line is never lost to a re-entry.
        let mut text = line.take();
        text.clear();
        let mut written = DirectLine::start(&mut text, json, &level, TARGET, "message");
        fields(&mut written);
        if written.finish().is_ok() {
            writer.append(text.as_bytes());
        }
        line.set(text);
    });
    true
}

thread_local! {
    /// The line being written on this thread, kept for its capacity.
    static LINE: std::cell::Cell<String> = const { std::cell::Cell::new(String::new()) };
}

/// What the stderr filter is asked about: an event on the audit target at INFO and at WARN.
mod probe {
    use tracing::{Level, Metadata};
    use tracing_core::callsite::Callsite;
    use tracing_core::field::FieldSet;
    use tracing_core::metadata::Kind;
    use tracing_core::subscriber::Interest;

    pub struct Site;

    impl Callsite for Site {
        fn set_interest(&self, _: Interest) {}

        fn metadata(&self) -> &Metadata<'_> {
            &INFO
        }
    }

    static SITE: Site = Site;

    const fn audit_event(level: Level) -> Metadata<'static> {
        Metadata::new(
            "audit line",
            super::TARGET,
            level,
            None,
            None,
            None,
            FieldSet::new(&[], tracing_core::identify_callsite!(&SITE)),
            Kind::EVENT,
        )
    }

    pub static INFO: Metadata<'static> = audit_event(Level::INFO);
    pub static WARN: Metadata<'static> = audit_event(Level::WARN);
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_reads_the_filter_as_tracing_does() {
        for (directives, expected) in [
            ("info", (true, true)),
            ("warn", (false, true)),
            ("error", (false, false)),
            ("trace", (true, true)),
            ("off", (false, false)),
            ("mllp_guard=debug", (true, true)),
            ("mllp_guard::audit=warn,info", (false, true)),
            ("info,mllp_guard::audit=off", (false, false)),
            ("warn,mllp_guard::audit=info", (true, true)),
            ("other_crate=trace", (false, false)),
            ("mllp_guard::audit::deeper=trace", (false, false)),
        ] {
            assert_eq!(passes(directives), expected, "{directives}");
        }
    }
}
