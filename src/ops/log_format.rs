//! How log lines are written: the text format's lines as `TIME LEVEL target: message
//! key=value key="text"`, the JSON format's flat objects, and the time as RFC 3339 UTC with
//! microseconds. Each is
//! byte-for-byte what tracing-subscriber's own formatter writes (text without colours, JSON
//! with `flatten_event`), at a fraction of the cost.
//!
//! Why it exists (issue 7): at the default level every message writes an audit line, and
//! tracing-subscriber's formatters cost more than relaying the message itself (callgrind,
//! 1 KiB messages: ~20k instructions per text line and ~27k per JSON line, against ~16k for
//! the relay). The text visitor styles every name and `=` even with colours off; the JSON one
//! goes through serde for every field. These write plain strings and numbers straight through
//! and format through `fmt` only the values that need it.
//!
//! Like the default, control characters that could drive a terminal (ESC, BEL, BS, FF, DEL and
//! C1 codes) are written escaped in a text line's message and, unlike the default, in values
//! shown with `%` (Display) too. Text strings are quoted and escaped as `{:?}` does; JSON
//! strings as serde_json does.
//!
//! Unlike the default, a text line cannot be forged from what a value holds (issue 25): line
//! breaks are written as `\n` and `\r` everywhere, and a Display or error value holding a
//! blank, `=`, `"` or `\` (which could pose as another key or `key=value`) is quoted and
//! escaped like a string, as logfmt does. Values without them are written bare, exactly as the
//! default writes them (`peer=[::1]:4000`, `control_id=ADT0001`). A JSON line inside a span, or from the `log` crate, is handed
//! to tracing-subscriber's formatter, which knows how to show those. Must not know what any
//! field means.

use std::fmt::{self, Write};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{self as sub_format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The field formatter of the text log format.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlainFields;

impl<'writer> FormatFields<'writer> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = PlainVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

/// The timestamp of the text and JSON log formats: `2026-11-22T13:45:00.123456Z`.
#[derive(Debug, Default, Clone, Copy)]
pub struct UtcMicros;

impl FormatTime for UtcMicros {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        write_timestamp(w, std::time::SystemTime::now())
    }
}

thread_local! {
    /// The second last written on this thread and its `2026-11-22T13:45:00` text.
    static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
}

/// `now` as humantime's `format_rfc3339_micros` writes it, with the date and time of day
/// worked out once per second per thread (an audit line per message wrote the whole calendar
/// arithmetic through `fmt` each time: ~630 instructions of a line's ~12,800, callgrind).
fn write_timestamp(w: &mut impl Write, now: std::time::SystemTime) -> fmt::Result {
    // Before 1970 (a clock set wrong): an error, which the text line writes as
    // `<unknown time>`, where humantime would panic.
    let since = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| fmt::Error)?;
    let secs = since.as_secs();
    let (cached, mut prefix) = SECOND.get();
    if cached != secs {
        let text = humantime::format_rfc3339_seconds(now).to_string();
        let Some(date_time) = text.as_bytes().get(..19) else {
            return w.write_str(&text);
        };
        prefix.copy_from_slice(date_time);
        SECOND.set((secs, prefix));
    }
    let mut line = [0u8; 27];
    line[..19].copy_from_slice(&prefix);
    line[19] = b'.';
    let mut micros = since.subsec_micros();
    for at in (20..26).rev() {
        line[at] = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    line[26] = b'Z';
    // Only ASCII was written.
    w.write_str(std::str::from_utf8(&line).map_err(|_| fmt::Error)?)
}

/// The text log line, `TIME LEVEL target: fields`, byte for byte what tracing-subscriber's
/// default (`Full`) format writes without colours, through less machinery: that format styles
/// the level and target through `nu_ansi_term` and `write!` even with colours off (~1,000
/// instructions of an audit line's ~12,800, callgrind). A line inside a span, from the `log`
/// crate, or for a terminal (colours) is handed to that format, which knows how to show those.
pub struct PlainLine<T = UtcMicros> {
    timer: T,
    general: sub_format::Format<sub_format::Full, T>,
}

impl<T: FormatTime + Clone> PlainLine<T> {
    pub fn new(timer: T) -> PlainLine<T> {
        PlainLine {
            general: sub_format::format().with_timer(timer.clone()),
            timer,
        }
    }
}

impl<S, N, T> FormatEvent<S, N> for PlainLine<T>
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
    N: for<'writer> FormatFields<'writer> + 'static,
    T: FormatTime,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if writer.has_ansi_escapes() || !is_plain(ctx, event) {
            return self.general.format_event(ctx, writer, event);
        }
        let meta = event.metadata();
        write_text_head(&mut writer, &self.timer, meta.level(), meta.target())?;
        ctx.format_fields(writer.by_ref(), event)?;
        writer.write_char('\n')
    }
}

/// A text line's `TIME LEVEL target: `.
fn write_text_head(
    writer: &mut Writer<'_>,
    timer: &impl FormatTime,
    level: &tracing::Level,
    target: &str,
) -> fmt::Result {
    // As `Full` does: a clock that cannot be read does not lose the line.
    if timer.format_time(writer).is_err() {
        writer.write_str("<unknown time>")?;
    }
    writer.write_str(match *level {
        tracing::Level::TRACE => " TRACE ",
        tracing::Level::DEBUG => " DEBUG ",
        tracing::Level::INFO => "  INFO ",
        tracing::Level::WARN => "  WARN ",
        tracing::Level::ERROR => " ERROR ",
    })?;
    writer.write_str(target)?;
    writer.write_str(": ")
}

/// Whether our own line writers take `event`: not inside a span, and not a record from the
/// `log` crate (whose target and place are in `log.*` fields); tracing-subscriber's formats
/// know how to show those.
fn is_plain<S, N>(ctx: &FmtContext<'_, S, N>, event: &Event<'_>) -> bool
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
    N: for<'writer> FormatFields<'writer> + 'static,
{
    let in_span = event.parent().is_some() || ctx.lookup_current().is_some();
    !in_span && event.metadata().fields().field("log.target").is_none()
}

/// The JSON log line: one flat object per event, `{"timestamp":..,"level":..,<fields>,
/// "target":..}`, as tracing-subscriber's `json().flatten_event(true)` writes it. Its field
/// formatter must be [`JsonFields`] (span fields are kept as JSON).
pub struct JsonLine<T = UtcMicros> {
    timer: T,
    /// For lines inside a span or from the `log` crate.
    general: sub_format::Format<Json, T>,
}

impl<T: FormatTime + Clone> JsonLine<T> {
    pub fn new(timer: T) -> JsonLine<T> {
        JsonLine {
            general: sub_format::format()
                .json()
                .flatten_event(true)
                .with_timer(timer.clone()),
            timer,
        }
    }
}

impl<S, T> FormatEvent<S, JsonFields> for JsonLine<T>
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
    T: FormatTime,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if !is_plain(ctx, event) {
            return self.general.format_event(ctx, writer, event);
        }
        let meta = event.metadata();
        write_json_head(&mut writer, &self.timer, meta.level())?;
        let mut visitor = JsonVisitor {
            writer: writer.by_ref(),
            result: Ok(()),
        };
        event.record(&mut visitor);
        visitor.result?;
        write_json_tail(&mut writer, meta.target())
    }
}

/// A JSON line's `{"timestamp":"TIME","level":"LEVEL"`.
fn write_json_head(
    writer: &mut Writer<'_>,
    timer: &impl FormatTime,
    level: &tracing::Level,
) -> fmt::Result {
    writer.write_str("{\"timestamp\":\"")?;
    // A clock that cannot be read does not lose the line (as in the text line).
    if timer.format_time(writer).is_err() {
        writer.write_str("<unknown time>")?;
    }
    writer.write_str("\",\"level\":\"")?;
    writer.write_str(level.as_str())?;
    writer.write_char('"')
}

/// A JSON line's `,"target":"TARGET"}` and line end.
fn write_json_tail(writer: &mut Writer<'_>, target: &str) -> fmt::Result {
    writer.write_str(",\"target\":")?;
    json_string(writer, target)?;
    writer.write_str("}\n")
}

/// A line written straight from values known where it is logged, without tracing's dispatch
/// and field visiting: for the audit line, one per message (issue 22: its sixteen fields through
/// tracing cost ~8,700 instructions of the line's ~10,500, callgrind, 1 KiB messages).
///
/// Byte for byte what [`PlainLine`] or [`JsonLine`] write for `tracing::event!(target: TARGET,
/// LEVEL, name = value, .., "MESSAGE")` with the same values in the same order (the audit
/// module's tests compare the two). Values that need nothing quoted or escaped, which is every
/// value of an ordinary audit line, are appended to the line as they are: through `fmt`'s
/// `dyn Write` each piece cost ~60 instructions, ~370 per field. Any other value is handed to
/// the visitor code that writes tracing's lines. A field that is `None` is left out, as tracing
/// leaves it out; a `%` (Display) value is given as its text. Field names must be plain
/// identifiers (they are written as they are).
pub struct DirectLine<'w> {
    out: &'w mut String,
    json: bool,
    target: &'w str,
    result: fmt::Result,
}

/// Printable ASCII other than `"` and `\`: written inside quotes as it is in both formats.
fn quotable(text: &str) -> bool {
    text.bytes().all(|b| CLASS[usize::from(b)] != 0)
}

/// Also without a blank or `=`: a text line's `%` value written bare, as it is.
fn bare(text: &str) -> bool {
    text.bytes().all(|b| CLASS[usize::from(b)] == BARE)
}

/// [`quotable`] bytes, and which of them a bare text value may hold ([`BARE`]): one look-up a
/// byte, where two tests in a row cost ~240 instructions a field (callgrind).
const CLASS: [u8; 256] = {
    let mut class = [0u8; 256];
    let mut b = 0x20;
    while b < 0x7f {
        class[b] = match b as u8 {
            b'"' | b'\\' => 0,
            b' ' | b'=' => QUOTABLE,
            _ => BARE,
        };
        b += 1;
    }
    class
};
const QUOTABLE: u8 = 1;
const BARE: u8 = 2;

impl<'w> DirectLine<'w> {
    /// Starts a line at the end of `out`: the time, level and (text) target, then `message`.
    pub fn start(
        out: &'w mut String,
        json: bool,
        level: &tracing::Level,
        target: &'w str,
        message: &str,
    ) -> DirectLine<'w> {
        let mut writer = Writer::new(out);
        let result = if json {
            write_json_head(&mut writer, &UtcMicros, level)
        } else {
            write_text_head(&mut writer, &UtcMicros, level, target)
        };
        let mut line = DirectLine {
            out,
            json,
            target,
            result,
        };
        if json {
            line.str("message", message);
        } else if quotable(message) {
            // Nothing a terminal acts on, and no line break.
            line.out.push_str(message);
        } else {
            line.visit(
                |_| {},
                |v| {
                    v.first = true;
                    v.text_value("message", message)
                },
            );
        }
        line
    }

    /// Hands one field to the visitor code of the line's format.
    fn visit(
        &mut self,
        json: impl FnOnce(&mut JsonVisitor<'_>),
        text: impl FnOnce(&mut PlainVisitor<'_>),
    ) {
        let result = std::mem::replace(&mut self.result, Ok(()));
        let writer = Writer::new(self.out);
        self.result = if self.json {
            let mut visitor = JsonVisitor { writer, result };
            json(&mut visitor);
            visitor.result
        } else {
            let mut visitor = PlainVisitor {
                writer,
                first: false,
                result,
            };
            text(&mut visitor);
            visitor.result
        };
    }

    /// ` name=` or `,"name":`.
    fn name(&mut self, name: &str) {
        if self.json {
            self.out.push_str(",\"");
            self.out.push_str(name);
            self.out.push_str("\":");
        } else {
            self.out.push(' ');
            self.out.push_str(name);
            self.out.push('=');
        }
    }

    /// `name = value` (a string).
    pub fn str(&mut self, name: &str, value: &str) {
        if !quotable(value) {
            return self.visit(|v| v.str_value(name, value), |v| v.str_value(name, value));
        }
        self.name(name);
        self.out.push('"');
        self.out.push_str(value);
        self.out.push('"');
    }

    /// `name = %value` (Display), whose text is `text`.
    pub fn shown(&mut self, name: &str, text: &str) {
        // Text: written bare unless it holds a blank or `=` (which `write_text` quotes).
        let as_it_is = if self.json {
            quotable(text)
        } else {
            bare(text)
        };
        if !as_it_is {
            // JSON: `record_debug` of a Display value is its text as a JSON string.
            return self.visit(|v| v.str_value(name, text), |v| v.text_value(name, text));
        }
        self.name(name);
        if self.json {
            self.out.push('"');
            self.out.push_str(text);
            self.out.push('"');
        } else {
            self.out.push_str(text);
        }
    }

    pub fn u64(&mut self, name: &str, value: u64) {
        self.name(name);
        self.out.push_str(itoa(value, &mut [0; 20]));
    }

    /// A number of thousandths (a latency in milliseconds) is written as both formats write it
    /// (`{:?}`, and serde_json's, the same text there: a unit test holds them to it).
    pub fn f64(&mut self, name: &str, value: f64) {
        let mut text = [0u8; 32];
        match thousandths(value, &mut text) {
            Some(text) => {
                self.name(name);
                self.out.push_str(text);
            }
            None => self.visit(|v| v.f64_value(name, value), |v| v.f64_value(name, value)),
        }
    }

    /// Ends the line (a JSON line with its target); `Err` if any of it could not be written.
    pub fn finish(mut self) -> fmt::Result {
        if self.json {
            // `,"target":"TARGET"`, as `write_json_tail` writes it.
            let target = self.target;
            self.str("target", target);
        }
        self.result?;
        self.out.push_str(if self.json { "}\n" } else { "\n" });
        Ok(())
    }
}

/// Writes each field as `,"name":value`.
struct JsonVisitor<'writer> {
    writer: Writer<'writer>,
    result: fmt::Result,
}

impl JsonVisitor<'_> {
    fn entry(&mut self, name: &str, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_ok() {
            let w = &mut self.writer;
            self.result = w
                .write_char(',')
                .and_then(|_| json_string(w, name))
                .and_then(|_| w.write_char(':'))
                .and_then(|_| value(w));
        }
    }

    fn str_value(&mut self, name: &str, value: &str) {
        self.entry(name, |w| json_string(w, value));
    }

    fn u64_value(&mut self, name: &str, value: u64) {
        self.entry(name, |w| write_integer(w, false, value));
    }

    fn f64_value(&mut self, name: &str, value: f64) {
        // serde_json's own number format (`null` for NaN and infinities).
        self.entry(name, |w| {
            let mut buf = [0u8; 32];
            let mut out = &mut buf[..];
            serde_json::to_writer(&mut out, &value).map_err(|_| fmt::Error)?;
            let len = 32 - out.len();
            w.write_str(std::str::from_utf8(&buf[..len]).map_err(|_| fmt::Error)?)
        });
    }
}

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.str_value(field.name(), value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.u64_value(field.name(), value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field.name(), |w| {
            write_integer(w, value < 0, value.unsigned_abs())
        });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.f64_value(field.name(), value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field.name(), |w| {
            w.write_str(if value { "true" } else { "false" })
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field.name(), |w| {
            w.write_char('"')?;
            write!(JsonEscaping(w), "{value:?}")?;
            w.write_char('"')
        });
    }
}

/// `text` as a JSON string, quoted and escaped as serde_json does.
fn json_string(w: &mut Writer<'_>, text: &str) -> fmt::Result {
    w.write_char('"')?;
    JsonEscaping(w).write_str(text)?;
    w.write_char('"')
}

/// Writes through, escaping what a JSON string cannot hold as itself (serde_json's choice of
/// escapes).
struct JsonEscaping<'a, 'writer>(&'a mut Writer<'writer>);

impl Write for JsonEscaping<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let bytes = s.as_bytes();
        let mut start = 0;
        for (at, &b) in bytes.iter().enumerate() {
            let escape = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0x00..=0x1f => "",
                _ => continue,
            };
            // Everything before `at` is whole UTF-8: `b` is ASCII.
            self.0.write_str(&s[start..at])?;
            if escape.is_empty() {
                write!(self.0, "\\u{:04x}", b)?;
            } else {
                self.0.write_str(escape)?;
            }
            start = at + 1;
        }
        self.0.write_str(&s[start..])
    }
}

struct PlainVisitor<'writer> {
    writer: Writer<'writer>,
    first: bool,
    result: fmt::Result,
}

impl PlainVisitor<'_> {
    /// Starts a field: the separating space and `name=` (nothing for the message). `None`
    /// when the field is not written at all.
    fn start(&mut self, name: &str) -> Option<bool> {
        if self.result.is_err() {
            return None;
        }
        // Metadata of records from the `log` crate, already shown as the line's target.
        if name.starts_with("log.") {
            return None;
        }
        if !std::mem::replace(&mut self.first, false) {
            self.result = self.writer.write_char(' ');
        }
        if name == "message" {
            return Some(true);
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.result = self
            .result
            .and_then(|_| self.writer.write_str(name))
            .and_then(|_| self.writer.write_char('='));
        Some(false)
    }

    fn finish(&mut self, written: fmt::Result) {
        self.result = self.result.and(written);
    }

    fn str_value(&mut self, name: &str, value: &str) {
        let Some(is_message) = self.start(name) else {
            return;
        };
        let written = if is_message {
            Escaping(&mut self.writer).write_str(value)
        } else if quotable(value) {
            // What `{:?}` writes for a printable ASCII string without quotes or backslashes.
            self.writer
                .write_char('"')
                .and_then(|_| self.writer.write_str(value))
                .and_then(|_| self.writer.write_char('"'))
        } else {
            write!(self.writer, "{value:?}")
        };
        self.finish(written);
    }

    fn u64_value(&mut self, name: &str, value: u64) {
        if self.start(name).is_some() {
            let written = write_integer(&mut self.writer, false, value);
            self.finish(written);
        }
    }

    fn f64_value(&mut self, name: &str, value: f64) {
        // What the default (`record_debug`) writes: `{:?}` of a float (`0.25`, `3.0`, `1e-7`,
        // `NaN`) holds nothing to quote or escape, so it goes straight to the line.
        if self.start(name).is_some() {
            let mut text = [0u8; 32];
            let written = match thousandths(value, &mut text) {
                Some(text) => self.writer.write_str(text),
                None => write!(self.writer, "{value:?}"),
            };
            self.finish(written);
        }
    }

    /// A value shown with `%` (Display) whose text is `text`.
    fn text_value(&mut self, name: &str, text: &str) {
        let Some(is_message) = self.start(name) else {
            return;
        };
        let mut out = Escaping(&mut self.writer);
        let written = if is_message {
            out.write_str(text)
        } else {
            write_text(&mut out, text)
        };
        self.finish(written);
    }
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.str_value(field.name(), value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.u64_value(field.name(), value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.start(field.name()).is_some() {
            let written = write_integer(&mut self.writer, value < 0, value.unsigned_abs());
            self.finish(written);
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.start(field.name()).is_some() {
            let written = self.writer.write_str(if value { "true" } else { "false" });
            self.finish(written);
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.f64_value(field.name(), value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.start(field.name()).is_none() {
            return;
        }
        let mut out = Escaping(&mut self.writer);
        let mut written = write_value(&mut out, format_args!("{value}"));
        if let Some(source) = value.source() {
            let name = field.name();
            let name = name.strip_prefix("r#").unwrap_or(name);
            written = written.and_then(|_| write!(out, " {name}.sources=["));
            let mut next = Some(source);
            let mut first = true;
            while let Some(err) = next {
                if !std::mem::replace(&mut first, false) {
                    written = written.and_then(|_| out.write_str(", "));
                }
                written = written.and_then(|_| write_value(&mut out, format_args!("{err}")));
                next = err.source();
            }
            written = written.and_then(|_| out.write_char(']'));
        }
        self.finish(written);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let Some(is_message) = self.start(field.name()) else {
            return;
        };
        let mut out = Escaping(&mut self.writer);
        let written = if is_message {
            write!(out, "{value:?}")
        } else {
            write_value(&mut out, format_args!("{value:?}"))
        };
        self.finish(written);
    }
}

/// Writes a field value bare, or, when it holds a blank, `=`, `"` or `\` (it could pose as
/// another key, a `key=value`, or end a quoted one), quoted with `"` and `\` escaped (logfmt).
/// The value is formatted once into a stack buffer and looked at there; only a value longer
/// than the buffer is formatted twice (once to look, once to write).
fn write_value(out: &mut Escaping<'_, '_>, value: fmt::Arguments<'_>) -> fmt::Result {
    let mut buf = StackBuf::default();
    let text = match buf.write_fmt(value) {
        Ok(()) => Some(buf.as_str()),
        Err(_) => None,
    };
    if let Some(text) = text {
        return write_text(out, text);
    }
    let mut scan = NeedsQuotes(false);
    let _ = scan.write_fmt(value);
    if scan.0 {
        out.0.write_char('"')?;
        Quoting(out).write_fmt(value)?;
        out.0.write_char('"')
    } else {
        out.write_fmt(value)
    }
}

/// [`write_value`] of a value whose text is known.
fn write_text(out: &mut Escaping<'_, '_>, text: &str) -> fmt::Result {
    if needs_quotes(text) {
        out.0.write_char('"')?;
        Quoting(out).write_str(text)?;
        out.0.write_char('"')
    } else {
        out.write_str(text)
    }
}

fn needs_quotes(s: &str) -> bool {
    s.bytes()
        .any(|b| matches!(b, b' ' | b'\t' | b'=' | b'"' | b'\\'))
}

/// A value formatted on the stack; `Err` once it would not fit.
struct StackBuf {
    buf: [u8; 256],
    len: usize,
}

impl Default for StackBuf {
    fn default() -> Self {
        StackBuf {
            buf: [0; 256],
            len: 0,
        }
    }
}

impl StackBuf {
    fn as_str(&self) -> &str {
        // Only whole `&str`s were copied in.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl Write for StackBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let room = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
        room.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Whether what is written through it holds a byte that needs quotes.
struct NeedsQuotes(bool);

impl Write for NeedsQuotes {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0 = self.0 || needs_quotes(s);
        Ok(())
    }
}

/// Escapes `"` and `\` inside a quoted value, then what [`Escaping`] escapes.
struct Quoting<'a, 'b, 'writer>(&'a mut Escaping<'b, 'writer>);

impl Write for Quoting<'_, '_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut start = 0;
        for (at, b) in s.bytes().enumerate() {
            if b == b'"' || b == b'\\' {
                self.0.write_str(&s[start..at])?;
                self.0 .0.write_char('\\')?;
                self.0 .0.write_char(char::from(b))?;
                start = at + 1;
            }
        }
        self.0.write_str(&s[start..])
    }
}

/// An integer in decimal, as both formats write it: `-` if `negative`, then the digits of
/// `magnitude`.
fn write_integer(w: &mut Writer<'_>, negative: bool, magnitude: u64) -> fmt::Result {
    if negative {
        w.write_char('-')?;
    }
    w.write_str(itoa(magnitude, &mut [0; 20]))
}

/// The decimal digits of `n`, written into `buf` (also the audit line's IPv4 addresses).
pub(crate) fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&buf[at..]).unwrap_or("?")
}

/// `{:?}` of `value` when it is a whole number of thousandths from 0.001 to 10^12 (an audit
/// line's `latency_ms`, whole microseconds): `12.0`, `0.25`, `1234.567`. Written from the
/// integer instead of through the float formatter (~600 instructions per audit line,
/// callgrind). Exact: the decimal `m/1000` rounds to `value`, and no decimal with fewer
/// digits can, since any two with at most three decimals are 0.001 apart, more than the
/// float's spacing below 10^12; `{:?}` switches to exponents only below 10^-4 or from 10^16.
/// `None` for anything else, which goes to the float formatter.
fn thousandths(value: f64, text: &mut [u8; 32]) -> Option<&str> {
    if !(0.001..1e12).contains(&value) {
        return None;
    }
    let scaled = (value * 1000.0).round();
    if scaled / 1000.0 != value {
        return None;
    }
    let scaled = scaled as u64;
    let (whole, mut frac) = (scaled / 1000, scaled % 1000);
    let mut digits = [0u8; 20];
    let whole = itoa(whole, &mut digits).as_bytes();
    text[..whole.len()].copy_from_slice(whole);
    let mut len = whole.len();
    text[len] = b'.';
    len += 1;
    if frac == 0 {
        text[len] = b'0';
        len += 1;
    } else {
        let mut places = 3;
        while frac % 10 == 0 {
            frac /= 10;
            places -= 1;
        }
        for at in (len..len + places).rev() {
            text[at] = b'0' + (frac % 10) as u8;
            frac /= 10;
        }
        len += places;
    }
    std::str::from_utf8(&text[..len]).ok()
}

/// Writes through to the line, escaping the control characters a terminal would act on, and
/// line breaks (a value must never start a line of its own).
struct Escaping<'a, 'writer>(&'a mut Writer<'writer>);

impl Write for Escaping<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // 0xC2 starts the UTF-8 encoding of every C1 control (U+0080..U+009F).
        if !s
            .bytes()
            .any(|b| matches!(b, 0x07 | 0x08 | 0x0a | 0x0c | 0x0d | 0x1b | 0x7f | 0xc2))
        {
            return self.0.write_str(s);
        }
        for ch in s.chars() {
            match ch {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\x07' | '\x08' | '\x0c' | '\x1b' | '\x7f' => {
                    write!(self.0, "\\x{:02x}", ch as u32)?
                }
                '\u{80}'..='\u{9f}' => write!(self.0, "\\u{{{:x}}}", ch as u32)?,
                _ => self.0.write_char(ch)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests;
