//! The acks mllp-guard sends itself, and the check of an upstream's ack against its message.
//!
//! # What this module owns
//! - [`build`]: the ack answering a message whose header parsed (AA/AE/AR, CA/CE/CR), written in
//!   the message's own field separator and encoding characters, sender and receiver swapped, with
//!   an ERR segment (HL7 table 0357 code) for the negative codes.
//! - [`build_without_header`]: the negative ack for a payload whose header did not parse.
//! - [`verify`]: an upstream's ack answers a message only if its MSA-2 equals the message's
//!   control id byte for byte (MSH-10; FHS-11/BHS-11 for batches). The ack's own MSH-10 is ignored
//!   (many receivers send a constant).
//! - [`timestamp`]: HL7 `YYYYMMDDHHMMSS` (UTC) from a `SystemTime`, so callers own the clock.
//!
//! # What it must not know
//! No I/O, no clock of its own, no queue, no framing: callers pass the timestamp and our ack
//! control id, and frame the returned payload. Reason texts are our own PHI-free words; nothing
//! from the message goes into an ack except its header fields (MSH-3..6, 10, 11, 12).
//!
//! # Output guarantees
//! Every payload built here parses back with [`AckView::parse`] to the code given and to MSA-2 =
//! the message's control id, and never holds `0x0B`, `0x1C` or a segment break inside a field:
//! texts are escaped (`\F\ \S\ \R\ \E\ \T\ \P\` with the message's escape character), stripped of
//! control characters, and limited to ASCII; control bytes copied from the message header are
//! dropped. Trailing empty fields are omitted, as HL7 recommends.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::wire::hl7::{AckCode, AckError, AckView, Header, HeaderKind};

/// MSH-12 written when the message states no version (batch headers, unparsable payloads):
/// the version whose ERR layout we write.
pub const FALLBACK_VERSION: &str = "2.5.1";

/// Why we answer negatively: the ack code, and the reason that becomes MSA-3 and ERR-7.
///
/// The text must be PHI-free: our own words (e.g. "message type not allowed on this route"),
/// never bytes from the payload. Pass both to [`build`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nack<'r> {
    /// The negative code to send (AE/AR, or CE/CR in enhanced mode).
    pub code: AckCode,
    /// The reason, in our own words.
    pub text: &'r str,
}

/// The HL7 table 0357 error (code, text) written in ERR-3 for a negative ack code.
/// An error condition (HL7 table 0357) for ERR-3 when the default of the ack code does not fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// 102, Data type error: a value is not written as its data type allows (a repetition,
    /// an escape or spaces in a coded header value).
    DataTypeError,
}

impl Condition {
    fn code(self) -> (&'static str, &'static str) {
        match self {
            Condition::DataTypeError => ("102", "Data type error"),
        }
    }
}

fn error_code(code: AckCode) -> Option<(&'static str, &'static str)> {
    match code {
        AckCode::AA | AckCode::CA => None,
        AckCode::AE | AckCode::CE => Some(("207", "Application internal error")),
        AckCode::AR | AckCode::CR => Some(("200", "Unsupported message type")),
    }
}

/// Writes one payload, segment by segment, in a given set of separators.
struct Writer<'e> {
    out: Vec<u8>,
    field_separator: u8,
    /// MSH-2: component, repetition, then optionally escape, subcomponent, truncation.
    encoding: &'e [u8],
    segment_start: usize,
}

impl<'e> Writer<'e> {
    fn new(field_separator: u8, encoding: &'e [u8], capacity: usize) -> Self {
        Writer {
            out: Vec::with_capacity(capacity),
            field_separator,
            encoding,
            segment_start: 0,
        }
    }

    /// Starts a segment with its id (`MSH` is followed by MSH-1 and MSH-2, as the standard says).
    fn segment(&mut self, id: &[u8]) -> &mut Self {
        self.segment_start = self.out.len();
        self.out.extend_from_slice(id);
        if id == b"MSH" {
            self.out.push(self.field_separator);
            self.out.extend_from_slice(self.encoding);
        }
        self
    }

    /// Starts the next field.
    fn next(&mut self) -> &mut Self {
        self.out.push(self.field_separator);
        self
    }

    /// Starts the next component.
    fn component(&mut self) -> &mut Self {
        self.out.push(self.encoding[0]);
        self
    }

    /// Bytes copied from the message header: already in its encoding, never holding a separator
    /// or terminator; control bytes (e.g. a stray `0x0B`/`0x1C`) are dropped so the ack frames.
    fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.out
            .extend(bytes.iter().copied().filter(|&b| !is_control(b)));
        self
    }

    /// Our own text: ASCII only (others become `?`), control characters removed, separator and
    /// encoding characters escaped with the escape character (or replaced by a blank when the
    /// message declares none).
    fn text(&mut self, text: &str) -> &mut Self {
        let escape = self.encoding.get(2).copied();
        for c in text.chars() {
            let Some(b) = c.is_ascii().then_some(c as u8) else {
                self.out.push(b'?');
                continue;
            };
            if is_control(b) {
                // Removed: a CR/LF would end the segment, 0x0B/0x1C would break the frame.
                continue;
            }
            match (self.escape_name(b), escape) {
                (Some(name), Some(e)) => self.out.extend_from_slice(&[e, name, e]),
                (Some(_), None) => self.out.push(b' '),
                (None, _) => self.out.push(b),
            }
        }
        self
    }

    /// The escape sequence letter (`F`, `S`, `R`, `E`, `T`, `P`) for a separator or encoding
    /// character, if `b` is one.
    fn escape_name(&self, b: u8) -> Option<u8> {
        const NAMES: [u8; 5] = [b'S', b'R', b'E', b'T', b'P'];
        if b == self.field_separator {
            return Some(b'F');
        }
        self.encoding.iter().position(|&e| e == b).map(|i| NAMES[i])
    }

    /// Ends the segment: trailing empty fields are dropped, then the `\r`.
    fn end(&mut self) -> &mut Self {
        let keep = self.segment_start + 4;
        while self.out.len() > keep && self.out.last() == Some(&self.field_separator) {
            self.out.pop();
        }
        self.out.push(b'\r');
        self
    }

    /// The MSA and (for negative codes) ERR segments.
    fn msa_and_err(
        &mut self,
        code: AckCode,
        condition: Option<Condition>,
        acked_control_id: &[u8],
        text: &str,
    ) -> &mut Self {
        self.segment(b"MSA")
            .next()
            .raw(code.as_str().as_bytes())
            .next()
            .raw(acked_control_id)
            .next()
            .text(text)
            .end();
        let error = match (error_code(code), condition) {
            (Some(_), Some(condition)) => Some(condition.code()),
            (default, _) => default,
        };
        if let Some((number, name)) = error {
            self.segment(b"ERR")
                .next()
                .next()
                .next()
                .raw(number.as_bytes())
                .component()
                .raw(name.as_bytes())
                .component()
                .raw(b"HL70357")
                .next()
                .raw(b"E")
                .next()
                .next()
                .next()
                .text(text)
                .end();
        }
        self
    }
}

/// C0 controls and DEL.
fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7F
}

/// Builds the ack payload (no MLLP framing) answering the message whose header is `msg`.
///
/// Written with the message's own field separator and encoding characters:
/// ```text
/// MSH|^~\&|<MSH-5>|<MSH-6>|<MSH-3>|<MSH-4>|<timestamp>||ACK^<MSH-9.2>^ACK|<ack_control_id>|<MSH-11>|<MSH-12>\r
/// MSA|<code>|<control id>|<text>\r
/// ERR|||<table 0357 code>^<name>^HL70357|E|||<text>\r        (AE/CE: 207, AR/CR: 200; none for AA/CA)
/// ```
/// Sender and receiver are swapped. The control id echoed in MSA-2 is [`Header::control_id`]
/// (FHS-11/BHS-11 for a batch, whose ack has MSH-9 = plain `ACK`; so does a message without a
/// trigger event). MSH-12 falls back to [`FALLBACK_VERSION`] when the message has none.
/// `text` (our PHI-free words; may be empty), `ack_control_id` and `timestamp` are escaped as
/// described in the module doc. Trailing empty fields are omitted.
pub fn build(
    msg: &Header<'_>,
    code: AckCode,
    text: &str,
    ack_control_id: &str,
    timestamp: &str,
) -> Vec<u8> {
    build_with(msg, code, None, text, ack_control_id, timestamp)
}

/// [`build`] with an explicit ERR-3 condition (negative codes only).
pub fn build_with(
    msg: &Header<'_>,
    code: AckCode,
    condition: Option<Condition>,
    text: &str,
    ack_control_id: &str,
    timestamp: &str,
) -> Vec<u8> {
    let mut w = Writer::new(msg.field_separator(), msg.encoding_characters(), 256);
    let trigger = match msg.kind() {
        HeaderKind::Msh => msg.trigger_event(),
        HeaderKind::Fhs | HeaderKind::Bhs => b"",
    };
    let version = match msg.version() {
        b"" => FALLBACK_VERSION.as_bytes(),
        v => v,
    };
    w.segment(b"MSH")
        .next()
        .raw(msg.receiving_application())
        .next()
        .raw(msg.receiving_facility())
        .next()
        .raw(msg.sending_application())
        .next()
        .raw(msg.sending_facility())
        .next()
        .text(timestamp)
        .next()
        .next()
        .raw(b"ACK");
    if !trigger.is_empty() {
        w.component().raw(trigger).component().raw(b"ACK");
    }
    w.next()
        .text(ack_control_id)
        .next()
        .raw(msg.processing_id())
        .next()
        .raw(version)
        .end()
        .msa_and_err(code, condition, msg.control_id(), text);
    w.out
}

/// Builds the ack for a payload whose header could not be parsed: standard separators `|^~\&`,
/// empty sender and receiver fields, MSH-9 = `ACK`, empty MSH-11, MSH-12 = [`FALLBACK_VERSION`],
/// and an empty MSA-2 (there is no control id to echo). Otherwise as [`build`].
pub fn build_without_header(
    code: AckCode,
    text: &str,
    ack_control_id: &str,
    timestamp: &str,
) -> Vec<u8> {
    let mut w = Writer::new(b'|', b"^~\\&", 192);
    w.segment(b"MSH")
        .next()
        .next()
        .next()
        .next()
        .next()
        .text(timestamp)
        .next()
        .next()
        .raw(b"ACK")
        .next()
        .text(ack_control_id)
        .next()
        .next()
        .raw(FALLBACK_VERSION.as_bytes())
        .end()
        .msa_and_err(code, None, b"", text);
    w.out
}

/// Why an upstream's reply does not answer the message we sent.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum AckMismatch {
    /// The reply does not parse as an ack.
    #[error("the reply is not an ack: {0}")]
    NotAnAck(AckError),
    /// The reply acks another message. Control ids are not PHI; both are rendered lossily
    /// (control characters as `?`) and capped at 64 characters.
    #[error("the ack answers control id \"{got}\" but the message was \"{expected}\"")]
    WrongControlId {
        /// MSA-2 of the ack.
        got: String,
        /// The control id of the message we sent.
        expected: String,
    },
}

/// How many characters of a control id an [`AckMismatch`] keeps.
const SHOWN_ID_CHARS: usize = 64;

/// A control id for an error message: lossy UTF-8, control characters as `?`, capped.
fn shown_id(id: &[u8]) -> String {
    // 4 bytes per char at most: enough bytes for the cap, without decoding megabytes.
    let head = &id[..id.len().min(SHOWN_ID_CHARS * 4)];
    let mut out = String::new();
    for (i, c) in String::from_utf8_lossy(head).chars().enumerate() {
        if i == SHOWN_ID_CHARS {
            out.push_str("...");
            break;
        }
        out.push(if c.is_control() { '?' } else { c });
    }
    out
}

/// Verifies an upstream's ack against the message it answers: MSA-2 must equal
/// `expected_control_id` byte for byte (no trimming, no case folding). Returns the ack code,
/// which may be negative: relaying it is the caller's decision.
///
/// # Errors
/// [`AckMismatch::NotAnAck`] when the reply does not parse as an ack (see [`AckView::parse`]),
/// [`AckMismatch::WrongControlId`] when it acks another control id.
pub fn verify(ack_payload: &[u8], expected_control_id: &[u8]) -> Result<AckCode, AckMismatch> {
    let ack = AckView::parse(ack_payload).map_err(AckMismatch::NotAnAck)?;
    if ack.acked_control_id() == expected_control_id {
        Ok(ack.code())
    } else {
        Err(AckMismatch::WrongControlId {
            got: shown_id(ack.acked_control_id()),
            expected: shown_id(expected_control_id),
        })
    }
}

/// `t` as an HL7 timestamp `YYYYMMDDHHMMSS` in UTC (sub-second part truncated toward the past).
pub fn timestamp(t: SystemTime) -> String {
    let secs: i64 = match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => {
            let d = before.duration();
            let whole = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            -whole - i64::from(d.subsec_nanos() > 0)
        }
    };
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let of_day = secs.rem_euclid(86_400);
    format!(
        "{year:04}{month:02}{day:02}{:02}{:02}{:02}",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// (year, month, day) of the proleptic Gregorian calendar for days since 1970-01-01
/// (Howard Hinnant's `civil_from_days`: eras of 400 years, years starting in March).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era, [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of (March-based) year, [0, 365]
    let mp = (5 * doy + 2) / 153; // March-based month, [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Both are in range by construction (1..=31, 1..=12).
    (year, month as u32, day as u32)
}

/// Fuzz entry (callable from a fuzz target): for any payload whose header parses, the ack built
/// for each code parses back with that code, MSA-2 = the control id, the message's separators and
/// swapped sender/receiver, and holds no MLLP framing byte.
pub fn fuzz_build(data: &[u8]) {
    let Ok(msg) = Header::parse(data) else {
        let ack = build_without_header(AckCode::AR, "not HL7 | \r\n", "MG1", "20240101000000");
        assert_eq!(verify(&ack, b""), Ok(AckCode::AR));
        return;
    };
    let dropped = |b: &[u8]| -> Vec<u8> { b.iter().copied().filter(|&b| !is_control(b)).collect() };
    for code in AckCode::ALL {
        let ack = build(
            &msg,
            code,
            "reason |^~\\&# \r\n\u{b}\u{1c}é",
            "MG1",
            "20240101000000",
        );
        assert!(!ack.contains(&0x0B) && !ack.contains(&0x1C));
        let view = AckView::parse(&ack).expect("a built ack parses back");
        assert_eq!(view.code(), code);
        assert_eq!(view.acked_control_id(), dropped(msg.control_id()));
        let h = view.header();
        assert_eq!(h.field_separator(), msg.field_separator());
        assert_eq!(h.encoding_characters(), msg.encoding_characters());
        assert_eq!(
            h.sending_application(),
            dropped(msg.receiving_application())
        );
        assert_eq!(h.receiving_facility(), dropped(msg.sending_facility()));
        assert_eq!(h.control_id(), b"MG1");
        assert!(!view.text().contains(&b'\r'));
    }
}

/// An ack payload built by the guard itself (sender and receiver swapped, MSA-2 = the message's
/// control id, ERR with `text` when negative), or, when the message has no readable header, one
/// with an empty MSA-2. The session frames it for its side.
pub fn own_ack(header: Option<&Header<'_>>, code: AckCode, text: &str) -> Bytes {
    own_ack_for(header, code, None, text)
}

/// [`own_ack`] with an explicit ERR-3 condition for a message whose header was read.
pub fn own_ack_for(
    header: Option<&Header<'_>>,
    code: AckCode,
    condition: Option<Condition>,
    text: &str,
) -> Bytes {
    let id = own_control_id();
    let now = timestamp(SystemTime::now());
    let payload = match header {
        Some(header) => build_with(header, code, condition, text, &id, &now),
        None => build_without_header(code, text, &id, &now),
    };
    Bytes::from(payload)
}

/// A unique control id for acks we build: "MG", the process start time, and a counter, in hex
/// (at most 20 characters, the v2.3 limit of MSH-10).
fn own_control_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static START: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let start = *START.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() & 0xFFFF_FFFF)
            .unwrap_or(0)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xFFFF_FFFF;
    format!("MG{start:08X}{n:08X}")
}

#[cfg(test)]
mod tests;
