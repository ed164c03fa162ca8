use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;

use super::*;

/// Where a test subscriber's lines go (also the audit module's tests).
#[derive(Clone, Default)]
pub(crate) struct Captured(pub(crate) Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// The line `emit` writes through a subscriber built like the guard's (`plain`) or with
/// tracing-subscriber's default field formatter, without time or colours.
fn line(plain: bool, emit: impl FnOnce()) -> String {
    let out = Captured::default();
    let builder = tracing_subscriber::fmt()
        .with_writer(out.clone())
        .with_ansi(false)
        .without_time()
        .with_max_level(tracing::Level::TRACE);
    if plain {
        tracing::subscriber::with_default(builder.fmt_fields(PlainFields).finish(), emit);
    } else {
        tracing::subscriber::with_default(builder.finish(), emit);
    }
    let bytes = out.0.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}

#[derive(Debug)]
struct Outer(std::io::Error);
impl fmt::Display for Outer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("outer failed")
    }
}
impl std::error::Error for Outer {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Events with every kind of field value, as our modules and dependencies write them.
fn emit_every_kind_of_field(control_id: &str) {
    let peer: std::net::SocketAddr = "[::1]:4000".parse().unwrap();
    let none: Option<&str> = None;
    let err = Outer(std::io::Error::other("inner \"cause\""));
    let source: &(dyn std::error::Error + 'static) = &err;
    tracing::info!(
        target: "mllp_guard::audit",
        route = "adt",
        peer = %peer,
        identity = none,
        control_id,
        bytes = 1024u64,
        delta = -5i64,
        zero = 0u64,
        latency_ms = 0.25f64,
        whole = 3.0f64,
        tiny = 1e-7f64,
        huge = 1e300f64,
        nan = f64::NAN,
        tls = true,
        r#type = "ADT^A01",
        debug = ?Some("quoted"),
        error = source,
        "message"
    );
    tracing::warn!(
        count = u64::MAX,
        min = i64::MIN,
        "closed after {} frames",
        3
    );
    let span = tracing::info_span!("session", peer = %peer);
    let _inside = span.enter();
    tracing::debug!(bytes = 7u64, "inside a span");
}

#[test]
fn writes_what_the_default_formatter_writes_without_colours() {
    let emit = || emit_every_kind_of_field("ID \"7\" \\ é\t");
    let ours = line(true, emit);
    // The one difference: a Display, Debug or error value holding a blank, `"`, `=` or `\` is
    // quoted (logfmt).
    let theirs = line(false, emit)
        .replace(r#"debug=Some("quoted")"#, r#"debug="Some(\"quoted\")""#)
        .replace(
            r#"error=outer failed error.sources=[inner "cause"]"#,
            r#"error="outer failed" error.sources=["inner \"cause\""]"#,
        );
    assert_eq!(ours, theirs);
    assert_eq!(ours.lines().count(), 3, "{ours}");
    assert!(ours.contains(r#"control_id="ID \"7\" \\ é\t""#), "{ours}");
    assert!(
        ours.contains(r#"error="outer failed" error.sources=["inner \"cause\""]"#),
        "{ours}"
    );
}

#[derive(Clone)]
struct Fixed;
impl FormatTime for Fixed {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        w.write_str("2026-11-22T13:45:00.123456Z")
    }
}

/// The lines `emit` writes through our JSON line (`ours`) or tracing-subscriber's.
fn json_lines(ours: bool, emit: impl FnOnce()) -> String {
    let out = Captured::default();
    let builder = tracing_subscriber::fmt()
        .with_writer(out.clone())
        .with_max_level(tracing::Level::TRACE);
    if ours {
        let subscriber = builder
            .fmt_fields(JsonFields::new())
            .event_format(JsonLine::new(Fixed))
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
    } else {
        let subscriber = builder
            .json()
            .flatten_event(true)
            .with_timer(Fixed)
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
    }
    let bytes = out.0.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}

#[test]
fn json_lines_are_what_the_json_formatter_writes() {
    let emit = || emit_every_kind_of_field("ID \"7\" \\ é\t\r\n\x08\x0c\x01\x1b\x7f\u{9b}");
    let ours = json_lines(true, emit);
    assert_eq!(ours, json_lines(false, emit));
    assert_eq!(ours.lines().count(), 3, "{ours}");
    for line in ours.lines() {
        serde_json::from_str::<serde_json::Value>(line).expect(line);
    }
}

#[test]
fn records_from_the_log_crate_are_written_as_tracing_subscriber_writes_them() {
    // Installed once for the test binary; records go to the thread's current subscriber.
    let _ = tracing_log::LogTracer::init();
    let emit = || log::warn!(target: "rustls::conn", "peer sent {} alerts", 2);
    let ours = json_lines(true, emit);
    assert_eq!(ours, json_lines(false, emit));
    assert!(ours.contains(r#""target":"rustls::conn""#), "{ours}");
    let text = line(true, emit);
    assert_eq!(text, line(false, emit));
    assert!(text.contains("rustls::conn: peer sent 2 alerts"), "{text}");
}

#[test]
fn terminal_control_characters_are_escaped_in_messages_and_displayed_values() {
    struct Shown(&'static str);
    impl fmt::Display for Shown {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }
    let ours = line(true, || {
        tracing::info!(
            detail = %Shown("a\x1b[31mred\x07\u{9b}"),
            text = "b\x1b",
            "bell\x07 {}",
            "\x1b[2J"
        )
    });
    assert!(!ours.contains('\x1b') && !ours.contains('\x07'), "{ours:?}");
    assert!(ours.contains(r"bell\x07 \x1b[2J"), "{ours}");
    assert!(ours.contains(r"detail=a\x1b[31mred\x07\u{9b}"), "{ours}");
    assert!(ours.contains(r#"text="b\u{1b}""#), "{ours}");
}

#[test]
fn the_timestamp_is_rfc3339_utc_with_microseconds() {
    let mut text = String::new();
    UtcMicros.format_time(&mut Writer::new(&mut text)).unwrap();
    assert_eq!(text.len(), "2026-11-22T13:45:00.123456Z".len(), "{text}");
    assert!(text.ends_with('Z') && text.as_bytes()[10] == b'T', "{text}");
    assert!(humantime::parse_rfc3339(&text).is_ok(), "{text}");
}

#[test]
fn numbers_are_written_in_full() {
    assert_eq!(itoa(0, &mut [0; 20]), "0");
    assert_eq!(itoa(u64::MAX, &mut [0; 20]), "18446744073709551615");
    assert_eq!(itoa(1024, &mut [0; 20]), "1024");
}

#[test]
fn a_value_cannot_forge_a_key_or_a_line_in_the_text_format() {
    struct Shown(&'static str);
    impl fmt::Display for Shown {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }
    let ours = line(true, || {
        tracing::warn!(
            sending_application = %Shown(r#"LAB outcome="rejected_by_rule" ack="AR""#),
            identity = %Shown("lab.example.org\n2026-01-01T00:00:00Z  INFO forged"),
            error = %Shown("a\\b=c"),
            outcome = "forwarded",
            "TLS handshake failed\r\nINFO forged"
        )
    });
    assert_eq!(ours.lines().count(), 1, "{ours}");
    assert!(
        ours.contains(r#"sending_application="LAB outcome=\"rejected_by_rule\" ack=\"AR\"""#),
        "{ours}"
    );
    assert!(
        ours.contains(r#"identity="lab.example.org\n2026-01-01T00:00:00Z  INFO forged""#),
        "{ours}"
    );
    assert!(ours.contains(r#"error="a\\b=c""#), "{ours}");
    assert!(
        ours.contains(r"TLS handshake failed\r\nINFO forged"),
        "{ours}"
    );
    // The only `outcome=` outside quotes is the real one, at the end.
    assert!(
        ours.trim_end().ends_with(r#"" outcome="forwarded""#),
        "{ours}"
    );
}

/// The lines `emit` writes through our text line (`ours`) or tracing-subscriber's `Full`
/// format, both with our field formatter, a fixed time and no colours.
fn text_lines(ours: bool, emit: impl FnOnce()) -> String {
    let out = Captured::default();
    let builder = tracing_subscriber::fmt()
        .with_writer(out.clone())
        .with_ansi(false)
        .with_timer(Fixed)
        .with_max_level(tracing::Level::TRACE)
        .fmt_fields(PlainFields);
    if ours {
        let subscriber = builder.event_format(PlainLine::new(Fixed)).finish();
        tracing::subscriber::with_default(subscriber, emit);
    } else {
        tracing::subscriber::with_default(builder.finish(), emit);
    }
    let bytes = out.0.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}

#[test]
fn text_lines_are_what_the_full_format_writes_without_colours() {
    let emit = || {
        emit_every_kind_of_field("ID \"7\" \\ é\t\r\n\x1b");
        tracing::trace!(target: "a::b", n = 1u64, "trace");
        tracing::debug!("debug");
        tracing::error!(target: "mllp_guard::x", reason = "r", "error");
    };
    let ours = text_lines(true, emit);
    assert_eq!(ours, text_lines(false, emit));
    assert_eq!(ours.lines().count(), 6, "{ours}");
    assert!(
        ours.starts_with(
            "2026-11-22T13:45:00.123456Z  INFO mllp_guard::audit: message route=\"adt\""
        ),
        "{ours}"
    );
    // A clock that fails: the line is still written, as `Full` writes it.
    #[derive(Clone)]
    struct Broken;
    impl FormatTime for Broken {
        fn format_time(&self, _: &mut Writer<'_>) -> fmt::Result {
            Err(fmt::Error)
        }
    }
    let out = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(out.clone())
        .with_ansi(false)
        .fmt_fields(PlainFields)
        .event_format(PlainLine::new(Broken))
        .finish();
    tracing::subscriber::with_default(subscriber, || tracing::warn!(k = 1u64, "late"));
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.ends_with("<unknown time>  WARN mllp_guard::ops::log_format::tests: late k=1\n"),
        "{text}"
    );
}

#[test]
fn the_cached_timestamp_is_humantimes() {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    let base = UNIX_EPOCH + Duration::from_secs(1_796_600_000);
    let times = [
        base,
        base + Duration::from_micros(1),
        base + Duration::from_micros(999_999),
        base + Duration::from_secs(1),
        base + Duration::from_secs(86_400 * 366) + Duration::from_micros(120_034),
        base + Duration::from_micros(1),
        UNIX_EPOCH,
        SystemTime::now(),
    ];
    for t in times {
        let mut ours = String::new();
        write_timestamp(&mut ours, t).unwrap();
        assert_eq!(ours, humantime::format_rfc3339_micros(t).to_string());
    }
    // Before 1970: an error (written as `<unknown time>`), not humantime's panic.
    let before = UNIX_EPOCH - Duration::from_secs(1);
    assert!(write_timestamp(&mut String::new(), before).is_err());
}

#[test]
fn thousandths_are_written_as_the_float_formatter_and_serde_json_write_them() {
    let mut checked = 0;
    let mut check = |value: f64| {
        let mut text = [0u8; 32];
        if let Some(ours) = thousandths(value, &mut text) {
            assert_eq!(ours, format!("{value:?}"), "{value}");
            // serde_json's number (a JSON line's) is the same text.
            assert_eq!(ours, serde_json::to_string(&value).unwrap(), "{value}");
            checked += 1;
        }
    };
    for micros in (0..200_000u64).chain([999_999, 1_000_000, 1_000_001, 59_999_999_999]) {
        check(micros as f64 / 1000.0);
    }
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..200_000 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        check((state >> 24) as f64 / 1000.0);
        check(f64::from_bits(state));
    }
    for value in [
        0.0,
        -1.0,
        1e-7,
        0.0005,
        1e12,
        1e13,
        0.1 + 0.2,
        f64::NAN,
        f64::INFINITY,
    ] {
        check(value);
    }
    assert!(checked > 399_000, "{checked}");
}
