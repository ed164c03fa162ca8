//! The audit trail: exactly one structured line per message, in either direction, saying who
//! sent what to whom and what became of it, never what it said.
//!
//! Each line (target `mllp_guard::audit`, message "message") carries: route, direction
//! (`from_sender` or `to_sender`), peer address (and the balancer's, `proxy`, when a PROXY
//! header named the peer), TLS identity, MSH-3 and MSH-4 (sending
//! application and facility), MSH-9 (message type), MSH-10 (control id), size in bytes,
//! outcome, ack code (absent when no ack went out), latency, and for refusals the rule or the
//! reason. The timestamp comes from the log formatter. In a running guard each line is written
//! straight to where audit lines go ([`audit_sink::write`]: stderr or the audit file, through
//! the batching [`crate::ops::log_writer`], which slows the guard down under load rather than
//! drop a line); elsewhere (a terminal with colours, tests) it is a `tracing` event, which the
//! same formatters turn into the same bytes. Header fields are shown as [`Printable`] shows
//! them, so control characters and anything beyond the field cannot leak; message bodies are
//! never logged, except at trace level on target `mllp_guard::payload` when `log_payloads:
//! true` is set explicitly. Also counts the message in [`crate::ops::metrics`]. Must not know
//! how messages are delivered.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tracing::field::display;

use crate::ops::audit_sink;
use crate::ops::log_format::DirectLine;
use crate::ops::metrics::RouteMetrics;
use crate::wire::hl7::{AckCode, Header, Printable, PRINTABLE_BYTES};

/// One message's fate.
pub struct Entry<'a> {
    /// The route: its name for the line, its metric handles for the count.
    pub route: &'a RouteMetrics,
    /// `from_sender` (the usual direction) or `to_sender` (a receiver's own message on a
    /// paired connection).
    pub direction: &'static str,
    /// The peer the message came from (the client a PROXY header named, when proxied).
    pub peer: SocketAddr,
    /// The load balancer a proxied connection really came from.
    pub proxy: Option<SocketAddr>,
    pub identity: Option<&'a str>,
    /// `None` when the message has no readable header.
    pub header: Option<&'a Header<'a>>,
    pub bytes: u64,
    pub outcome: &'static str,
    /// The ack code sent back, `None` when no ack went out.
    pub ack: Option<AckCode>,
    pub started: Instant,
    /// The rule that rejected or dropped it.
    pub rule: Option<&'a str>,
    /// Why it was refused or not delivered: a stable reason label and the details (PHI-free).
    pub problem: Option<(&'static str, &'a str)>,
}

static LOG_PAYLOADS: AtomicBool = AtomicBool::new(false);

/// `log_payloads`: whether message bodies go to the trace-level payload log.
pub fn set_log_payloads(on: bool) {
    LOG_PAYLOADS.store(on, Ordering::Relaxed);
}

/// Writes the audit line for one message and counts it.
pub fn record<'a>(entry: &Entry<'a>, payload: &[u8]) {
    let took = entry.started.elapsed();
    // Whole microseconds: `0.210773`, not the float noise of `0.21077300000000002`.
    let latency_ms = took.as_micros() as f64 / 1000.0;
    let refused = entry.problem.is_some() || entry.rule.is_some();
    let level = if refused {
        tracing::Level::WARN
    } else {
        tracing::Level::INFO
    };
    if !audit_sink::write(level, |line| write_fields(line, entry, latency_ms)) {
        log_through_tracing(entry, latency_ms, refused);
    }
    let h = entry.header;
    if refused {
        let shown = |pick: fn(&Header<'a>) -> &'a [u8]| h.map(|h| Printable(pick(h)).to_string());
        let tag = match (entry.problem.map(|(reason, _)| reason), entry.rule) {
            (Some(reason), Some(rule)) => format!("{reason} (rule {rule})"),
            (Some(reason), None) => reason.to_string(),
            (None, Some(rule)) => format!("{} (rule {rule})", entry.outcome),
            (None, None) => entry.outcome.to_string(),
        };
        crate::ops::recent::note(
            entry.route.name(),
            &entry.peer.to_string(),
            shown(Header::control_id),
            shown(Header::message_type),
            &tag,
        );
    }
    if LOG_PAYLOADS.load(Ordering::Relaxed) {
        let control_id = h.map(|h| display(HeaderField(h, Header::control_id)));
        tracing::trace!(target: "mllp_guard::payload", route = entry.route.name(), control_id, payload = %String::from_utf8_lossy(payload).escape_debug(), "payload (log_payloads: true)");
    }
    // Out: what went on towards the other side (forwarded, queued or relayed).
    let passed_on = matches!(entry.outcome, "forwarded" | "queued" | "relayed_to_sender");
    let ack = entry.ack.map(|code| code.as_str());
    entry.route.message(
        entry.direction,
        entry.outcome,
        ack.unwrap_or("none"),
        entry.bytes as usize,
        if passed_on { entry.bytes as usize } else { 0 },
        took,
    );
}

/// The audit line as a `tracing` event, where there is no direct path ([`audit_sink::write`]):
/// on a terminal, in tests, in other programs using this library.
fn log_through_tracing<'a>(entry: &Entry<'a>, latency_ms: f64, refused: bool) {
    let h = entry.header;
    // Found and formatted only if the line is written (not at all below its level).
    let field = |h: &'a Header<'a>, pick| display(HeaderField(h, pick));
    let sending_application = h.map(|h| field(h, Header::sending_application));
    let sending_facility = h.map(|h| field(h, Header::sending_facility));
    let message_type = h.map(|h| field(h, Header::message_type));
    let control_id = h.map(|h| field(h, Header::control_id));
    let ack = entry.ack.map(|code| code.as_str());
    let (reason, error) = match entry.problem {
        Some((reason, error)) => (Some(reason), Some(error)),
        None => (None, None),
    };
    macro_rules! line {
        ($level:ident) => {
            tracing::$level!(
                target: "mllp_guard::audit",
                route = entry.route.name(),
                direction = entry.direction,
                peer = %AddrText(entry.peer),
                proxy = entry.proxy.map(|proxy| display(AddrText(proxy))),
                identity = entry.identity,
                sending_application,
                sending_facility,
                message_type,
                control_id,
                bytes = entry.bytes,
                outcome = entry.outcome,
                ack,
                latency_ms,
                rule = entry.rule,
                reason,
                error,
                "message"
            )
        };
    }
    if refused {
        line!(warn);
    } else {
        line!(info);
    }
}

/// The audit line's fields on the direct path ([`audit_sink::write`]): the same names, values
/// and order as the `tracing` event in [`record`] (a test holds the two to the same bytes).
fn write_fields(line: &mut DirectLine<'_>, entry: &Entry<'_>, latency_ms: f64) {
    line.str("route", entry.route.name());
    line.str("direction", entry.direction);
    let mut addr = [0u8; ADDR_TEXT];
    line.shown("peer", AddrText(entry.peer).text(&mut addr).as_ref());
    if let Some(proxy) = entry.proxy {
        line.shown("proxy", AddrText(proxy).text(&mut addr).as_ref());
    }
    if let Some(identity) = entry.identity {
        line.str("identity", identity);
    }
    if let Some(h) = entry.header {
        let mut text = [0u8; PRINTABLE_BYTES];
        let mut shown = |name, field| line.shown(name, Printable(field).text(&mut text));
        shown("sending_application", h.sending_application());
        shown("sending_facility", h.sending_facility());
        shown("message_type", h.message_type());
        shown("control_id", h.control_id());
    }
    line.u64("bytes", entry.bytes);
    line.str("outcome", entry.outcome);
    if let Some(ack) = entry.ack {
        line.str("ack", ack.as_str());
    }
    line.f64("latency_ms", latency_ms);
    if let Some(rule) = entry.rule {
        line.str("rule", rule);
    }
    if let Some((reason, error)) = entry.problem {
        line.str("reason", reason);
        line.str("error", error);
    }
}

/// Room for an IPv4 socket address's text: "255.255.255.255:65535".
const ADDR_TEXT: usize = 21;

/// A socket address exactly as `SocketAddr`'s `Display` writes it without a width
/// (`192.0.2.7:4000`, `[::1]:4000`), an IPv4 one digit by digit into one string: std's goes
/// through `fmt` for each octet and the port (~1,250 instructions of an audit line's ~12,800,
/// callgrind, 1 KiB messages). IPv6 addresses are left to std (its compression rules).
struct AddrText(SocketAddr);

impl AddrText {
    /// The text, written into `text` for an IPv4 address, by std for an IPv6 one.
    fn text<'t>(&self, text: &'t mut [u8; ADDR_TEXT]) -> std::borrow::Cow<'t, str> {
        let SocketAddr::V4(v4) = self.0 else {
            return self.0.to_string().into();
        };
        let mut len = 0;
        for (i, octet) in v4.ip().octets().into_iter().enumerate() {
            if i > 0 {
                text[len] = b'.';
                len += 1;
            }
            // Digit by digit, without leading zeros.
            if octet >= 100 {
                text[len] = b'0' + octet / 100;
                len += 1;
            }
            if octet >= 10 {
                text[len] = b'0' + octet / 10 % 10;
                len += 1;
            }
            text[len] = b'0' + octet % 10;
            len += 1;
        }
        text[len] = b':';
        len += 1;
        len += put_decimal(u64::from(v4.port()), &mut text[len..]);
        // Only ASCII digits, dots and a colon were written.
        std::str::from_utf8(&text[..len]).unwrap_or_default().into()
    }
}

impl std::fmt::Display for AddrText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text(&mut [0; ADDR_TEXT]))
    }
}

/// Copies the decimal digits of `n` to the start of `out` (which has room), returning how many.
fn put_decimal(n: u64, out: &mut [u8]) -> usize {
    let mut buf = [0; 20];
    let digits = crate::ops::log_format::itoa(n, &mut buf).as_bytes();
    out[..digits.len()].copy_from_slice(digits);
    digits.len()
}

/// A header field, looked up and shown through [`Printable`] only when a line is written.
struct HeaderField<'a>(&'a Header<'a>, fn(&Header<'a>) -> &'a [u8]);

impl std::fmt::Display for HeaderField<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Printable((self.1)(self.0)).fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::log_format::tests::Captured;
    use crate::ops::log_format::{JsonLine, PlainFields, PlainLine, UtcMicros};

    /// The line as the direct path writes it.
    fn direct(entry: &Entry<'_>, latency_ms: f64, json: bool, level: tracing::Level) -> String {
        let mut out = String::new();
        let mut line = DirectLine::start(&mut out, json, &level, audit_sink::TARGET, "message");
        write_fields(&mut line, entry, latency_ms);
        line.finish().unwrap();
        out
    }

    /// The line as tracing writes it through the guard's formatters.
    fn traced(entry: &Entry<'_>, latency_ms: f64, json: bool, refused: bool) -> String {
        let out = Captured::default();
        let builder = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::TRACE);
        let emit = || log_through_tracing(entry, latency_ms, refused);
        if json {
            let subscriber = builder
                .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                .event_format(JsonLine::new(UtcMicros))
                .finish();
            tracing::subscriber::with_default(subscriber, emit);
        } else {
            let subscriber = builder
                .fmt_fields(PlainFields)
                .event_format(PlainLine::new(UtcMicros))
                .finish();
            tracing::subscriber::with_default(subscriber, emit);
        }
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    /// A line without its timestamp (the first 27 characters of its text, or of its JSON
    /// string), which differs between two lines written a moment apart.
    fn timeless(line: &str) -> String {
        let at = line.find("20").expect("a timestamp");
        format!("{}{}", &line[..at], &line[at + 27..])
    }

    #[test]
    fn the_direct_line_is_byte_for_byte_the_traced_one() {
        let route = RouteMetrics::new("adt".into());
        let odd_route = RouteMetrics::new("r\u{e9} \"x\"".into());
        let plain =
            b"MSH|^~\\&|LAB|NORTH|EHR|HQ|20260101||ADT^A01^ADT_A01|MSG-0001|P|2.5\r".to_vec();
        let mut odd = b"MSH|^~\\&|A B=C|\"q\"\\z\x1b\xc3\xa9|E|F|2026||OR=M O01|".to_vec();
        odd.extend_from_slice(&[b'9'; 80]);
        odd.extend_from_slice(b"|P|2.5\r");
        let plain = Header::parse(&plain).unwrap();
        let odd = Header::parse(&odd).unwrap();
        let v4: SocketAddr = "10.20.255.7:2575".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::7]:40000".parse().unwrap();
        let base = Entry {
            route: &route,
            direction: "from_sender",
            peer: v4,
            proxy: None,
            identity: None,
            header: Some(&plain),
            bytes: 1024,
            outcome: "forwarded",
            ack: Some(AckCode::AA),
            started: Instant::now(),
            rule: None,
            problem: None,
        };
        let entries = [
            Entry { ..base },
            Entry {
                peer: v6,
                proxy: Some(v4),
                identity: Some("lab.example.org"),
                ..base
            },
            Entry {
                route: &odd_route,
                identity: Some("cn=\"a b\"\\\u{1b}"),
                header: Some(&odd),
                outcome: "rejected_by_rule",
                ack: Some(AckCode::AR),
                rule: Some("no orders"),
                ..base
            },
            Entry {
                header: None,
                outcome: "not_delivered",
                ack: None,
                problem: Some(("upstream_down", "connect: refused\n\"again\"\t\u{9b}")),
                ..base
            },
        ];
        let mut compared = 0;
        for entry in &entries {
            let refused = entry.problem.is_some() || entry.rule.is_some();
            let level = if refused {
                tracing::Level::WARN
            } else {
                tracing::Level::INFO
            };
            for latency_ms in [0.25, 3.0, 1234.567, 0.0, 1e-7, 0.1 + 0.2] {
                for json in [false, true] {
                    let ours = direct(entry, latency_ms, json, level);
                    let theirs = traced(entry, latency_ms, json, refused);
                    assert_eq!(timeless(&ours), timeless(&theirs), "json: {json}");
                    assert!(ours.ends_with('\n') && ours.lines().count() == 1, "{ours}");
                    compared += 1;
                }
            }
        }
        assert_eq!(compared, 48);
        // The odd values took the visitor's way: quoted, escaped, cut at 64 and shown as `?`.
        let odd_line = direct(&entries[2], 0.25, false, tracing::Level::WARN);
        assert!(
            odd_line.contains(r#"sending_application="A B=C""#),
            "{odd_line}"
        );
        assert!(
            odd_line.contains(r#"sending_facility="\"q\"\\z???""#),
            "{odd_line}"
        );
        assert!(
            odd_line.contains("route=\"r\u{e9} \\\"x\\\"\""),
            "{odd_line}"
        );
        assert!(
            odd_line.contains(&format!("control_id={}", "9".repeat(64))),
            "{odd_line}"
        );
    }

    #[test]
    fn addresses_are_written_as_std_writes_them() {
        for addr in [
            "0.0.0.0:0",
            "127.0.0.1:2575",
            "10.0.0.9:80",
            "255.255.255.255:65535",
            "192.168.100.7:9",
            "[::1]:4000",
            "[2001:db8::7]:2575",
            "[::ffff:10.0.0.1]:1",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(AddrText(addr).to_string(), addr.to_string());
        }
    }
}
