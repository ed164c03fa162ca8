//! The audit trail: exactly one structured line per message, in either direction, saying who
//! sent what to whom and what became of it, never what it said.
//!
//! Each line (target `mllp_guard::audit`, message "message") carries: route, direction
//! (`from_sender` or `to_sender`), peer address (and the balancer's, `proxy`, when a PROXY
//! header named the peer), TLS identity, MSH-3 and MSH-4 (sending
//! application and facility), MSH-9 (message type), MSH-10 (control id), size in bytes,
//! outcome, ack code (absent when no ack went out), latency, and for refusals the rule or the
//! reason. The timestamp comes from the log formatter. Lines go to the process's log writer,
//! which writes synchronously to stderr: under load it slows the guard down rather than
//! dropping a line. Header fields are shown through [`Printable`], so control characters and
//! anything beyond the field cannot leak; message bodies are never logged, except at trace
//! level on target `mllp_guard::payload` when `log_payloads: true` is set explicitly. Also
//! counts the message in [`crate::ops::metrics`]. Must not know how messages are delivered.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tracing::field::display;

use crate::ops::metrics::RouteMetrics;
use crate::wire::hl7::{AckCode, Header, Printable};

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
    if entry.problem.is_some() || entry.rule.is_some() {
        line!(warn);
        let shown = |pick: fn(&Header<'a>) -> &'a [u8]| h.map(|h| Printable(pick(h)).to_string());
        let tag = match (reason, entry.rule) {
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
    } else {
        line!(info);
    }
    if LOG_PAYLOADS.load(Ordering::Relaxed) {
        tracing::trace!(target: "mllp_guard::payload", route = entry.route.name(), control_id, payload = %String::from_utf8_lossy(payload).escape_debug(), "payload (log_payloads: true)");
    }
    // Out: what went on towards the other side (forwarded, queued or relayed).
    let passed_on = matches!(entry.outcome, "forwarded" | "queued" | "relayed_to_sender");
    entry.route.message(
        entry.direction,
        entry.outcome,
        ack.unwrap_or("none"),
        entry.bytes as usize,
        if passed_on { entry.bytes as usize } else { 0 },
        took,
    );
}

/// A socket address exactly as `SocketAddr`'s `Display` writes it without a width
/// (`192.0.2.7:4000`, `[::1]:4000`), an IPv4 one digit by digit into one string: std's goes
/// through `fmt` for each octet and the port (~1,250 instructions of an audit line's ~12,800,
/// callgrind, 1 KiB messages). IPv6 addresses are left to std (its compression rules).
struct AddrText(SocketAddr);

impl std::fmt::Display for AddrText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let SocketAddr::V4(v4) = self.0 else {
            return self.0.fmt(f);
        };
        // "255.255.255.255:65535"
        let mut text = [0u8; 21];
        let mut len = 0;
        for (i, octet) in v4.ip().octets().into_iter().enumerate() {
            if i > 0 {
                text[len] = b'.';
                len += 1;
            }
            len += put_decimal(u64::from(octet), &mut text[len..]);
        }
        text[len] = b':';
        len += 1;
        len += put_decimal(u64::from(v4.port()), &mut text[len..]);
        // Only ASCII digits, dots and a colon were written.
        f.write_str(std::str::from_utf8(&text[..len]).map_err(|_| std::fmt::Error)?)
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
