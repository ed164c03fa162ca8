//! The acks mllp-guard sends itself, and the check of an upstream's ack against its message.
//!
//! # What this module owns
//! - [`build_for`] (and [`build`]): the ack answering a message whose header parsed (AA/AE/AR,
//!   CA/CE/CR), written in the message's own field separator and encoding characters, sender
//!   and receiver swapped, valid HL7 in the message's version (MSH-12; unknown or missing: the
//!   rules of [`FALLBACK_VERSION`]): MSH-9 with two components up to 2.3 and three from 2.3.1,
//!   ERR-1 (ELD) before 2.5 and ERR-2/3/4/8 from 2.5, MSA-3 (at most 80 characters) up to 2.6
//!   and none from 2.7, MSH-7 with its UTC offset, MSH-11/12/18 copied, the error from HL7 table
//!   0357 by cause ([`ErrorCode`]). A batch's ack names its BHS (or FHS) and takes the version
//!   of its first message.
//! - [`Says`]: what an ack says, with short fixed texts that name nothing of the inside.
//! - [`code_for`]: commit codes when the message asks for enhanced mode (MSH-15 valued).
//! - [`build_without_header`]: the negative ack for a payload whose header did not parse.
//! - [`verify`]: an upstream's ack answers a message only if its MSA-2 equals the message's
//!   control id byte for byte (MSH-10; FHS-11/BHS-11 for batches). The ack's own MSH-10 is ignored
//!   (many receivers send a constant).
//! - [`timestamp`]: HL7 `YYYYMMDDHHMMSS+0000` (UTC) from a `SystemTime`, so callers own the
//!   clock.
//!
//! # What it must not know
//! No I/O, no clock of its own, no queue, no framing: callers pass the timestamp and our ack
//! control id, and frame the returned payload. Reason texts are our own PHI-free words; nothing
//! from the message goes into an ack except its header fields (MSH-3..6, 9.2, 10, 11, 12, 18).
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

/// The version whose rules an ack follows when the message states none (or one we do not
/// know): MSH-12 of headerless acks, and the layout of MSH-9, MSA and ERR.
pub const FALLBACK_VERSION: &str = "2.5.1";

/// MSH-11 written when the message states none (a payload without a readable header).
const FALLBACK_PROCESSING_ID: &[u8] = b"P";

/// MSA-3 (ST, up to 2.6) and ERR-8 (TX) hold at most this many characters.
pub const MAX_TEXT_CHARS: usize = 80;

/// An error condition of HL7 table 0357, written in ERR-3 (from 2.5) or ERR-1.4 (before).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// 100: no header where one must be, a second message outside a batch.
    SegmentSequence,
    /// 101: a required field is empty (MSH-10).
    RequiredFieldMissing,
    /// 102: a value not written as its data type allows (a repetition, an escape or blanks in a
    /// coded header value, a control byte or line feed inside the header, framing bytes).
    DataType,
    /// 200: a message type (or a batch) this route does not take.
    UnsupportedMessageType,
    /// 202: a processing id (MSH-11) this route does not take.
    UnsupportedProcessingId,
    /// 203: a version (MSH-12) this route does not take.
    UnsupportedVersionId,
    /// 207: the message could not be taken now (receiver, queue, limits, internal).
    ApplicationInternal,
}

impl ErrorCode {
    /// The code and its name as table 0357 writes them.
    pub fn code(self) -> (&'static str, &'static str) {
        match self {
            ErrorCode::SegmentSequence => ("100", "Segment sequence error"),
            ErrorCode::RequiredFieldMissing => ("101", "Required field missing"),
            ErrorCode::DataType => ("102", "Data type error"),
            ErrorCode::UnsupportedMessageType => ("200", "Unsupported message type"),
            ErrorCode::UnsupportedProcessingId => ("202", "Unsupported processing id"),
            ErrorCode::UnsupportedVersionId => ("203", "Unsupported version id"),
            ErrorCode::ApplicationInternal => ("207", "Application internal error"),
        }
    }
}

/// What one of the guard's own acks says: the code (original mode; [`own_ack`] turns it into
/// the commit code when the message asks for enhanced mode), a short fixed text in our own
/// words (never an address, an OS error or payload bytes: those go to the log line with the
/// same MSH-10), the table 0357 error for a negative code, and where in the frame it lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Says<'t> {
    pub code: AckCode,
    pub text: &'t str,
    pub error: Option<ErrorCode>,
    /// (MSH segment's position in the frame, 1 for a single message; field number), for
    /// ERR-2 (ERR-1 before 2.5): the first refused message of a batch, a missing MSH-10.
    pub location: Option<(usize, Option<u8>)>,
}

impl<'t> Says<'t> {
    /// AA (CA in enhanced mode), no text.
    pub const ACCEPTED: Says<'static> = Says {
        code: AckCode::AA,
        text: "",
        error: None,
        location: None,
    };

    /// A negative ack: AE (the message could not be taken now) or AR (the message is refused),
    /// with its text and table 0357 error.
    pub fn negative(code: AckCode, error: ErrorCode, text: &'t str) -> Says<'t> {
        Says {
            code,
            text,
            error: Some(error),
            location: None,
        }
    }

    /// AE, 207: the message could not be taken now (`receiver unavailable`, `queue full`, ...).
    pub fn not_now(text: &'t str) -> Says<'t> {
        Says::negative(AckCode::AE, ErrorCode::ApplicationInternal, text)
    }

    /// AR with the given error: the guard refuses the message itself.
    pub fn refused(error: ErrorCode, text: &'t str) -> Says<'t> {
        Says::negative(AckCode::AR, error, text)
    }

    /// The same, pointing ERR at message `n` of the frame (1 = the first) and a field of it.
    pub fn at(self, n: usize, field: Option<u8>) -> Says<'t> {
        Says {
            location: Some((n, field)),
            ..self
        }
    }

    /// A code as [`build`] takes it, with the error its kind implies (207 for AE/CE, 200 for
    /// AR/CR); used by the `sink` test peer.
    pub fn code(code: AckCode, text: &'t str) -> Says<'t> {
        let error = match code {
            AckCode::AA | AckCode::CA => None,
            AckCode::AE | AckCode::CE => Some(ErrorCode::ApplicationInternal),
            AckCode::AR | AckCode::CR => Some(ErrorCode::UnsupportedMessageType),
        };
        Says {
            code,
            text,
            error,
            location: None,
        }
    }
}

/// An HL7 version as the ack rules need it: (minor, patch) of `2.minor[.patch]`; anything else
/// (missing, `3.0`, `2.x`) reads as [`FALLBACK_VERSION`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Version(u8, u8);

impl Version {
    const FALLBACK: Version = Version(5, 1);

    /// The first component of MSH-12.
    fn of(msh12: &[u8], component: u8) -> Version {
        let first = msh12.split(|&b| b == component).next().unwrap_or_default();
        let digit = |s: &[u8]| match s {
            [d @ b'0'..=b'9'] => Some(d - b'0'),
            _ => None,
        };
        let mut parts = first.split(|&b| b == b'.');
        let (Some(b"2"), Some(minor), patch, None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Version::FALLBACK;
        };
        match (digit(minor), patch.map(digit)) {
            (Some(minor @ 1..=9), None) => Version(minor, 0),
            (Some(minor @ 1..=9), Some(Some(patch))) => Version(minor, patch),
            _ => Version::FALLBACK,
        }
    }

    /// MSH-9 has a third component (the message structure) from 2.3.1.
    fn has_structure(self) -> bool {
        self >= Version(3, 1)
    }

    /// ERR-3/ERR-4 (and ERR-2, ERR-8) replace ERR-1 from 2.5.
    fn err3(self) -> bool {
        self >= Version(5, 0)
    }

    /// MSA-3 is withdrawn from 2.7.
    fn msa3(self) -> bool {
        self < Version(7, 0)
    }

    /// ERR-1 is a plain code (ID) in 2.1; from 2.2 a location with a coded element.
    fn err1_is_code(self) -> bool {
        self < Version(2, 0)
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

    /// Starts the next subcomponent (a blank when the message declares no subcomponent
    /// separator: never reached for the standard `^~\&`).
    fn subcomponent(&mut self) -> &mut Self {
        self.out.push(self.encoding.get(3).copied().unwrap_or(b' '));
        self
    }

    /// Bytes copied from the message header: already in its encoding, never holding a separator
    /// or terminator; control bytes (e.g. a stray `0x0B`/`0x1C`) are dropped so the ack frames.
    fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.out
            .extend(bytes.iter().copied().filter(|&b| !is_control(b)));
        self
    }

    /// Our own text, at most `max` characters: ASCII only (others become `?`), control
    /// characters removed, separator and encoding characters escaped with the escape character
    /// (or replaced by a blank when the message declares none).
    fn text(&mut self, text: &str, max: usize) -> &mut Self {
        let escape = self.encoding.get(2).copied();
        for c in text
            .chars()
            .filter(|&c| !(c.is_ascii() && is_control(c as u8)))
            .take(max)
        {
            let Some(b) = c.is_ascii().then_some(c as u8) else {
                self.out.push(b'?');
                continue;
            };
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

    /// A location (`MSH^<n>^<field>`) as ERR-2 (ERL) or the first components of ERR-1 (ELD).
    fn location(&mut self, location: Option<(usize, Option<u8>)>) -> &mut Self {
        if let Some((n, field)) = location {
            self.raw(b"MSH").component().raw(n.to_string().as_bytes());
            if let Some(field) = field {
                self.component().raw(field.to_string().as_bytes());
            }
        }
        self
    }

    /// The MSA and (for negative codes) ERR segments, shaped by `version`.
    fn msa_and_err(
        &mut self,
        code: AckCode,
        says: &Says<'_>,
        acked_control_id: &[u8],
        version: Version,
    ) -> &mut Self {
        self.segment(b"MSA")
            .next()
            .raw(code.as_str().as_bytes())
            .next()
            .raw(acked_control_id);
        if version.msa3() {
            self.next().text(says.text, MAX_TEXT_CHARS);
        }
        self.end();
        let Some(error) = says.error.filter(|_| !code.is_positive()) else {
            return self;
        };
        let (number, name) = error.code();
        self.segment(b"ERR").next();
        if version.err1_is_code() {
            self.raw(number.as_bytes());
        } else if !version.err3() {
            // ERR-1 (ELD): segment ^ sequence ^ field ^ code&text&HL70357.
            let (n, field) = says.location.unwrap_or((0, None));
            if n > 0 {
                self.raw(b"MSH").component().raw(n.to_string().as_bytes());
            } else {
                self.component();
            }
            self.component();
            if let Some(field) = field {
                self.raw(field.to_string().as_bytes());
            }
            self.component()
                .raw(number.as_bytes())
                .subcomponent()
                .raw(name.as_bytes())
                .subcomponent()
                .raw(b"HL70357");
        } else {
            // ERR-2 location, ERR-3 code, ERR-4 severity, ERR-8 user message.
            self.next()
                .location(says.location)
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
                .next()
                .text(says.text, MAX_TEXT_CHARS);
        }
        self.end()
    }
}

/// C0 controls and DEL.
fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7F
}

/// The code a message asking for enhanced mode (MSH-15 valued) gets: the commit code
/// (CA/CE/CR) for AA/AE/AR; otherwise `code` as given.
pub fn code_for(message: Option<&Header<'_>>, code: AckCode) -> AckCode {
    let enhanced = message.is_some_and(|m| !m.accept_ack_type().is_empty());
    match (enhanced, code) {
        (true, AckCode::AA) => AckCode::CA,
        (true, AckCode::AE) => AckCode::CE,
        (true, AckCode::AR) => AckCode::CR,
        (_, code) => code,
    }
}

/// Builds the ack payload (no MLLP framing) answering the message whose header is `msg`, with
/// `code` as given. See [`build_for`].
pub fn build(
    msg: &Header<'_>,
    code: AckCode,
    text: &str,
    ack_control_id: &str,
    timestamp: &str,
) -> Vec<u8> {
    build_for(
        msg,
        None,
        &Says::code(code, text),
        ack_control_id,
        timestamp,
    )
}

/// Builds the ack payload (no MLLP framing) answering `answered`: a message's MSH, or a batch's
/// BHS (FHS without one), whose sender and receiver are swapped and whose control id MSA-2
/// echoes. `message` is the MSH whose MSH-9 trigger, MSH-11, MSH-12 and MSH-18 the ack takes:
/// `answered` itself for a message (pass `None`), the batch's first message for a batch.
///
/// Written with the message's own field separator and encoding characters, in the layout of its
/// version (MSH-12; unknown or missing: [`FALLBACK_VERSION`]):
/// ```text
/// MSH|^~\&|<5>|<6>|<3>|<4>|<timestamp>||ACK^<trigger>[^ACK]|<ack id>|<11>|<12>|||||<18>
/// MSA|<code>|<control id>[|<text>]                    (MSA-3 up to 2.6, at most 80 characters)
/// ERR|^^^<0357 code>&<name>&HL70357                   (negative, up to 2.4: ERR-1)
/// ERR||<location>|<0357 code>^<name>^HL70357|E||||<text>   (negative, from 2.5)
/// ```
/// MSH-9 has two components up to 2.3 and the structure `ACK` from 2.3.1 (`ACK` alone when no
/// trigger is known). `code` is written as given (see [`code_for`]).
pub fn build_for(
    answered: &Header<'_>,
    message: Option<&Header<'_>>,
    says: &Says<'_>,
    ack_control_id: &str,
    timestamp: &str,
) -> Vec<u8> {
    let message = match (answered.kind(), message) {
        (HeaderKind::Msh, _) => Some(answered),
        (_, message) => message,
    };
    // Coded values are copied up to a repetition separator: a message refused for a repeated
    // MSH-9/11/12 still gets an ack whose own fields are valid.
    let first = |m: &Header<'_>, v: &'_ [u8]| -> usize {
        let r = m.repetition_separator();
        v.iter().position(|&b| b == r).unwrap_or(v.len())
    };
    let (trigger, processing_id, version, character_set) = match message {
        Some(m) => (
            &m.trigger_event()[..first(m, m.trigger_event())],
            &m.processing_id()[..first(m, m.processing_id())],
            &m.version()[..first(m, m.version())],
            m.character_set(),
        ),
        None => (&b""[..], &b""[..], &b""[..], &b""[..]),
    };
    let mut w = Writer::new(
        answered.field_separator(),
        answered.encoding_characters(),
        256,
    );
    let version = match version {
        b"" => FALLBACK_VERSION.as_bytes(),
        v => v,
    };
    let rules = Version::of(version, answered.component_separator());
    w.segment(b"MSH")
        .next()
        .raw(answered.receiving_application())
        .next()
        .raw(answered.receiving_facility())
        .next()
        .raw(answered.sending_application())
        .next()
        .raw(answered.sending_facility());
    header_tail(
        &mut w,
        timestamp,
        trigger,
        ack_control_id,
        match processing_id {
            b"" => FALLBACK_PROCESSING_ID,
            p => p,
        },
        version,
        character_set,
        rules,
    );
    w.msa_and_err(says.code, says, answered.control_id(), rules);
    w.out
}

/// MSH-7 to MSH-18 of an ack.
#[allow(clippy::too_many_arguments)]
fn header_tail(
    w: &mut Writer<'_>,
    timestamp: &str,
    trigger: &[u8],
    ack_control_id: &str,
    processing_id: &[u8],
    version: &[u8],
    character_set: &[u8],
    rules: Version,
) {
    w.next().text(timestamp, 32).next().next().raw(b"ACK");
    if !trigger.is_empty() {
        w.component().raw(trigger);
        if rules.has_structure() {
            w.component().raw(b"ACK");
        }
    }
    w.next()
        .text(ack_control_id, 20)
        .next()
        .raw(processing_id)
        .next()
        .raw(version);
    if !character_set.is_empty() {
        w.next()
            .next()
            .next()
            .next()
            .next()
            .next()
            .raw(character_set);
    }
    w.end();
}

/// Builds the ack for a payload whose header could not be parsed: standard separators `|^~\&`,
/// empty sender and receiver fields, MSH-9 = `ACK`, MSH-11 = `P`, MSH-12 = [`FALLBACK_VERSION`],
/// and an empty MSA-2 (there is no control id to echo). Otherwise as [`build_for`].
pub fn build_without_header(says: &Says<'_>, ack_control_id: &str, timestamp: &str) -> Vec<u8> {
    let mut w = Writer::new(b'|', b"^~\\&", 192);
    w.segment(b"MSH").next().next().next().next();
    header_tail(
        &mut w,
        timestamp,
        b"",
        ack_control_id,
        FALLBACK_PROCESSING_ID,
        FALLBACK_VERSION.as_bytes(),
        b"",
        Version::FALLBACK,
    );
    w.msa_and_err(says.code, says, b"", Version::FALLBACK);
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

/// `t` as an HL7 timestamp `YYYYMMDDHHMMSS+0000` in UTC (sub-second part truncated toward the
/// past). The offset is written: HL7 reads a time without one as the sender's local time.
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
        "{year:04}{month:02}{day:02}{:02}{:02}{:02}+0000",
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
        let says = Says::refused(ErrorCode::SegmentSequence, "not HL7 | \r\n");
        let ack = build_without_header(&says, "MG1", "20240101000000+0000");
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
            "20240101000000+0000",
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

/// Fuzz entry (the `ack` target): the ack parser as the upstream side uses it, on any bytes: no
/// panic; an ack that parses verifies against its own MSA-2 with its own code and against any
/// other control id as a mismatch; MSA-2 and MSA-3 lie within the payload and hold no segment
/// break; and the guard's own acks for the same bytes read as a message ([`fuzz_build`]) hold.
pub fn fuzz_ack(data: &[u8]) {
    if let Ok(view) = AckView::parse(data) {
        let within = |s: &[u8]| {
            let (whole, part) = (data.as_ptr_range(), s.as_ptr_range());
            assert!(whole.start <= part.start && part.end <= whole.end);
            assert!(!s.contains(&b'\r') && !s.contains(&b'\n'));
        };
        within(view.acked_control_id());
        within(view.text());
        assert_eq!(verify(data, view.acked_control_id()), Ok(view.code()));
        let mut other = view.acked_control_id().to_vec();
        other.push(b'X');
        assert!(matches!(
            verify(data, &other),
            Err(AckMismatch::WrongControlId { .. })
        ));
        let shown = format!("{view:?}");
        assert!(shown.len() < 2048, "Debug output must stay bounded");
    } else {
        assert!(matches!(verify(data, b""), Err(AckMismatch::NotAnAck(_))));
    }
    fuzz_build(data);
}

/// An ack payload built by the guard itself and the code it carries: sender and receiver
/// swapped, MSA-2 = the message's control id, in the message's version, the commit code when the
/// message asks for enhanced mode ([`code_for`]); or, when the message has no readable header,
/// one with an empty MSA-2. The session frames it for its side.
pub fn own_ack(header: Option<&Header<'_>>, says: Says<'_>) -> (Bytes, AckCode) {
    own_ack_for(header, None, says)
}

/// [`own_ack`] answering `answered` (a batch's BHS or FHS, or a message's MSH) whose version,
/// processing id, trigger and character set come from `message` (a batch's first message).
pub fn own_ack_for(
    answered: Option<&Header<'_>>,
    message: Option<&Header<'_>>,
    says: Says<'_>,
) -> (Bytes, AckCode) {
    let id = own_control_id();
    let now = timestamp(SystemTime::now());
    let model = match answered {
        Some(h) if h.kind() == HeaderKind::Msh => Some(h),
        _ => message,
    };
    let code = code_for(model, says.code);
    let says = Says { code, ..says };
    let payload = match answered {
        Some(header) => build_for(header, message, &says, &id, &now),
        None => build_without_header(&says, &id, &now),
    };
    (Bytes::from(payload), code)
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
