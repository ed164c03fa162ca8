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
    fn msa_and_err(&mut self, code: AckCode, acked_control_id: &[u8], text: &str) -> &mut Self {
        self.segment(b"MSA")
            .next()
            .raw(code.as_str().as_bytes())
            .next()
            .raw(acked_control_id)
            .next()
            .text(text)
            .end();
        if let Some((number, name)) = error_code(code) {
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
        .msa_and_err(code, msg.control_id(), text);
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
        .msa_and_err(code, b"", text);
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
    let id = own_control_id();
    let now = timestamp(std::time::SystemTime::now());
    let payload = match header {
        Some(header) => build(header, code, text, &id, &now),
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
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() & 0xFFFF_FFFF)
            .unwrap_or(0)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xFFFF_FFFF;
    format!("MG{start:08X}{n:08X}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    /// The corpus: `$MLLP_GUARD_CORPUS`, else the copy vendored in `tests/corpus`.
    fn corpus(name: &str) -> Vec<u8> {
        let dir = std::env::var_os("MLLP_GUARD_CORPUS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus")));
        let path = dir.join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    const TS: &str = "20250101120000";

    #[test]
    fn an_aa_for_the_typical_adt_is_exactly_the_expected_bytes() {
        let msg = corpus("01_adt_a01.hl7");
        let h = Header::parse(&msg).expect("parses");
        assert_eq!(
            build(&h, AckCode::AA, "", "MG0001", TS),
            b"MSH|^~\\&|SYNTH_RECV|SYNTH_DEST|SYNTH_SEND|SYNTH_FAC|20250101120000||ACK^A01^ACK|MG0001|P|2.5.1\r\
              MSA|AA|ADT0001\r"
        );
    }

    #[test]
    fn an_ar_for_the_typical_adt_carries_the_escaped_reason_and_an_err_segment() {
        let msg = corpus("01_adt_a01.hl7");
        let h = Header::parse(&msg).expect("parses");
        let text = "message type ADT^A01 is not allowed | route lab";
        assert_eq!(
            String::from_utf8_lossy(&build(&h, AckCode::AR, text, "MG0002", TS)),
            "MSH|^~\\&|SYNTH_RECV|SYNTH_DEST|SYNTH_SEND|SYNTH_FAC|20250101120000||ACK^A01^ACK|MG0002|P|2.5.1\r\
             MSA|AR|ADT0001|message type ADT\\S\\A01 is not allowed \\F\\ route lab\r\
             ERR|||200^Unsupported message type^HL70357|E|||message type ADT\\S\\A01 is not allowed \\F\\ route lab\r"
        );
    }

    #[test]
    fn each_negative_code_gets_its_table_0357_error_and_positive_codes_get_none() {
        let msg = corpus("02_adt_a04.hl7");
        let h = Header::parse(&msg).expect("parses");
        for (code, err) in [
            (AckCode::AA, None),
            (AckCode::CA, None),
            (
                AckCode::AE,
                Some("ERR|||207^Application internal error^HL70357|E\r"),
            ),
            (
                AckCode::CE,
                Some("ERR|||207^Application internal error^HL70357|E\r"),
            ),
            (
                AckCode::AR,
                Some("ERR|||200^Unsupported message type^HL70357|E\r"),
            ),
            (
                AckCode::CR,
                Some("ERR|||200^Unsupported message type^HL70357|E\r"),
            ),
        ] {
            let ack = String::from_utf8(build(&h, code, "", "MG1", TS)).expect("ascii");
            let msa_then_rest = ack.split_once("MSA|").expect("has MSA").1;
            let expected = format!("{code}|ADT0002\r{}", err.unwrap_or(""));
            assert_eq!(msa_then_rest, expected, "{code}");
        }
    }

    #[test]
    fn every_corpus_message_gets_an_ack_that_parses_back_with_its_control_id_and_swapped_peers() {
        let files = [
            "01_adt_a01.hl7",
            "02_adt_a04.hl7",
            "03_adt_a08.hl7",
            "04_oru_r01_500_obx.hl7",
            "05_orm_o01.hl7",
            "06_siu_s12.hl7",
            "07_mdm_t02_2mb_base64.hl7",
            "08_escape_sequences.hl7",
            "09_v27_truncation_char.hl7",
            "10_hash_field_separator.hl7",
            "11_custom_encoding_chars.hl7",
            "12_utf8_names.hl7",
            "13_iso8859_1_names.hl7",
            "14_crlf_terminators.hl7",
            "15_lf_terminators.hl7",
            "16_batch_file.hl7",
            "17_ack_aa.hl7",
            "18_ack_ae_with_err.hl7",
            "19_enhanced_ack_msh15_AL_msh16_AL.hl7",
            "24_v2_3.hl7",
            "26_v2_8.hl7",
            "27_empty_msh10.hl7",
            "28_64kib.hl7",
        ];
        for file in files {
            let msg = corpus(file);
            let h = Header::parse(&msg).expect("parses");
            for code in AckCode::ALL {
                let ack = build(&h, code, "upstream unavailable", "MG9", TS);
                let view = AckView::parse(&ack).unwrap_or_else(|e| panic!("{file} {code}: {e}"));
                assert_eq!(view.code(), code, "{file}");
                assert_eq!(view.acked_control_id(), h.control_id(), "{file}");
                assert_eq!(verify(&ack, h.control_id()), Ok(code), "{file}");
                let a = view.header();
                assert_eq!(a.sending_application(), h.receiving_application(), "{file}");
                assert_eq!(a.sending_facility(), h.receiving_facility(), "{file}");
                assert_eq!(a.receiving_application(), h.sending_application(), "{file}");
                assert_eq!(a.receiving_facility(), h.sending_facility(), "{file}");
                assert_eq!(a.control_id(), b"MG9", "{file}");
                assert_eq!(a.field(7), TS.as_bytes(), "{file}");
                assert_eq!(a.message_code(), b"ACK", "{file}");
                assert_eq!(view.text(), b"upstream unavailable", "{file}");
            }
        }
    }

    #[test]
    fn an_ack_for_a_hash_separated_message_uses_the_hash_separator() {
        let msg = corpus("10_hash_field_separator.hl7");
        let h = Header::parse(&msg).expect("parses");
        assert_eq!(
            String::from_utf8_lossy(&build(&h, AckCode::AE, "bad # here", "MG3", TS)),
            "MSH#^~\\&#SYNTH_RECV#SYNTH_DEST#SYNTH_SEND#SYNTH_FAC#20250101120000##ACK^A04^ACK#MG3#P#2.5.1\r\
             MSA#AE#ENC0002#bad \\F\\ here\r\
             ERR###207^Application internal error^HL70357#E###bad \\F\\ here\r"
        );
    }

    #[test]
    fn an_ack_for_custom_encoding_characters_uses_them_for_components_and_escapes() {
        let msg = corpus("11_custom_encoding_chars.hl7");
        let h = Header::parse(&msg).expect("parses");
        assert_eq!(
            String::from_utf8_lossy(&build(&h, AckCode::AR, "a|b:c@d$e%f^g", "MG4", TS)),
            "MSH|:@$%|SYNTH_RECV|SYNTH_DEST|SYNTH_SEND|SYNTH_FAC|20250101120000||ACK:A08:ACK|MG4|P|2.5.1\r\
             MSA|AR|ENC0003|a$F$b$S$c$R$d$E$e$T$f^g\r\
             ERR|||200:Unsupported message type:HL70357|E|||a$F$b$S$c$R$d$E$e$T$f^g\r"
        );
    }

    #[test]
    fn reason_text_is_escaped_stripped_of_controls_and_limited_to_ascii() {
        let msg = corpus("09_v27_truncation_char.hl7");
        let h = Header::parse(&msg).expect("parses");
        let ack = build(
            &h,
            AckCode::AE,
            "a|b^c~d\\e&f#g\r\nh\u{b}i\u{1c}j\tkü",
            "MG5",
            TS,
        );
        let view = AckView::parse(&ack).expect("parses");
        assert_eq!(view.text(), b"a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f\\P\\ghijk?");
        assert_eq!(view.header().encoding_characters(), b"^~\\&#");
    }

    #[test]
    fn without_an_escape_character_separators_in_the_text_become_blanks() {
        let h = Header::parse(b"MSH|^~|A|B|C|D|T||ADT^A01|X1|P|2.5\r").expect("parses");
        assert_eq!(
            String::from_utf8_lossy(&build(&h, AckCode::AE, "a|b^c~d", "MG6", TS)),
            "MSH|^~|C|D|A|B|20250101120000||ACK^A01^ACK|MG6|P|2.5\r\
             MSA|AE|X1|a b c d\r\
             ERR|||207^Application internal error^HL70357|E|||a b c d\r"
        );
    }

    #[test]
    fn a_batch_file_is_acked_with_plain_ack_and_its_fhs_11() {
        let msg = corpus("16_batch_file.hl7");
        let h = Header::parse(&msg).expect("parses");
        assert_eq!(
            String::from_utf8_lossy(&build(&h, AckCode::AA, "", "MG7", TS)),
            "MSH|^~\\&|SYNTH_RECV|SYNTH_DEST|SYNTH_SEND|SYNTH_FAC|20250101120000||ACK|MG7||2.5.1\r\
             MSA|AA|FILE0001\r"
        );
    }

    #[test]
    fn a_message_with_empty_control_id_and_no_version_is_acked_with_empty_msa_2() {
        let msg = corpus("malformed/msh_without_msh10_12.hl7");
        let h = Header::parse(&msg).expect("parses");
        assert_eq!(
            String::from_utf8_lossy(&build(&h, AckCode::AR, "no control id", "MG8", TS)),
            "MSH|^~\\&|SYNTH_RECV|SYNTH_DEST|SYNTH_SEND|SYNTH_FAC|20250101120000||ACK^A01^ACK|MG8||2.5.1\r\
             MSA|AR||no control id\r\
             ERR|||200^Unsupported message type^HL70357|E|||no control id\r"
        );
    }

    #[test]
    fn framing_bytes_in_the_message_header_never_reach_the_ack() {
        let h = Header::parse(b"MSH|^~\\&|A\x0bB|F\x1c|R|RF|T||ADT^A01|ID\x0b1|P|2.5.1\r")
            .expect("parses");
        let ack = build(&h, AckCode::AA, "", "MG1", TS);
        assert!(!ack.contains(&0x0B) && !ack.contains(&0x1C));
        assert_eq!(
            AckView::parse(&ack).map(|a| a.acked_control_id()),
            Ok(&b"ID1"[..])
        );
    }

    #[test]
    fn an_ack_without_header_uses_standard_separators_and_empty_fields() {
        assert_eq!(
            String::from_utf8_lossy(&build_without_header(
                AckCode::AR,
                "the payload is not an HL7 message",
                "MG10",
                TS
            )),
            "MSH|^~\\&|||||20250101120000||ACK|MG10||2.5.1\r\
             MSA|AR||the payload is not an HL7 message\r\
             ERR|||200^Unsupported message type^HL70357|E|||the payload is not an HL7 message\r"
        );
        assert_eq!(
            verify(&build_without_header(AckCode::AE, "", "MG11", TS), b""),
            Ok(AckCode::AE)
        );
    }

    #[test]
    fn verify_accepts_an_ack_whose_msa_2_matches_and_returns_its_code() {
        assert_eq!(
            verify(&corpus("17_ack_aa.hl7"), b"ADT0001"),
            Ok(AckCode::AA)
        );
        assert_eq!(
            verify(&corpus("18_ack_ae_with_err.hl7"), b"ADT0002"),
            Ok(AckCode::AE)
        );
        // No trailing terminator, constant MSH-10, LF terminators: still correlated on MSA-2.
        assert_eq!(
            verify(
                b"MSH|^~\\&|R||S||20240101||ACK|1|P|2.3\nMSA|CA|ADT0001",
                b"ADT0001"
            ),
            Ok(AckCode::CA)
        );
    }

    #[test]
    fn verify_rejects_an_ack_for_another_control_id_with_both_ids_in_the_error() {
        let err = verify(&corpus("17_ack_aa.hl7"), b"ADT0002");
        assert_eq!(
            err,
            Err(AckMismatch::WrongControlId {
                got: "ADT0001".into(),
                expected: "ADT0002".into()
            })
        );
        assert_eq!(
            err.unwrap_err().to_string(),
            "the ack answers control id \"ADT0001\" but the message was \"ADT0002\""
        );
        // Byte equality: no trimming, no case folding.
        assert_eq!(
            verify(&corpus("17_ack_aa.hl7"), b"adt0001"),
            Err(AckMismatch::WrongControlId {
                got: "ADT0001".into(),
                expected: "adt0001".into()
            })
        );
    }

    #[test]
    fn control_ids_in_a_mismatch_are_rendered_lossily_and_capped() {
        let long = "9".repeat(100);
        let ack = format!("MSH|^~\\&|R\rMSA|AA|{long}\r");
        assert_eq!(
            verify(ack.as_bytes(), b"\xffA\tB"),
            Err(AckMismatch::WrongControlId {
                got: format!("{}...", "9".repeat(64)),
                expected: "\u{fffd}A?B".into()
            })
        );
    }

    #[test]
    fn verify_says_when_the_reply_is_not_an_ack() {
        assert_eq!(
            verify(&corpus("01_adt_a01.hl7"), b"ADT0001"),
            Err(AckMismatch::NotAnAck(AckError::NoMsa))
        );
        let err = verify(b"", b"ADT0001");
        assert_eq!(
            err,
            Err(AckMismatch::NotAnAck(AckError::BadHeader(
                crate::wire::hl7::HeaderError::Empty
            )))
        );
        assert_eq!(
            verify(b"MSH|^~\\&|R\rMSA|OK|ADT0001", b"ADT0001")
                .unwrap_err()
                .to_string(),
            "the reply is not an ack: the ack code (MSA-1) \"OK\" is not one of AA, AE, AR, CA, CE, CR"
        );
    }

    #[test]
    fn timestamps_of_known_instants_are_utc_civil_time() {
        let at = |secs: u64| timestamp(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(timestamp(UNIX_EPOCH), "19700101000000");
        assert_eq!(at(951_827_696), "20000229123456");
        assert_eq!(at(1_735_689_599), "20241231235959");
        assert_eq!(at(1_709_164_800), "20240229000000");
        assert_eq!(at(4_102_444_800), "21000101000000");
        assert_eq!(
            timestamp(UNIX_EPOCH + Duration::from_millis(1_735_689_599_999)),
            "20241231235959"
        );
        assert_eq!(
            timestamp(UNIX_EPOCH - Duration::from_secs(1)),
            "19691231235959"
        );
        assert_eq!(
            timestamp(UNIX_EPOCH - Duration::from_millis(1)),
            "19691231235959"
        );
    }

    #[test]
    fn civil_from_days_matches_a_day_by_day_walk_over_four_centuries() {
        let (mut y, mut m, mut d) = (1900_i64, 1_u32, 1_u32);
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        for days in -25_567..(-25_567 + 146_097 + 10) {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            let month_len = match m {
                2 if leap(y) => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            d += 1;
            if d > month_len {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn fuzz_build_holds_on_the_corpus_and_edge_inputs() {
        for name in [
            "01_adt_a01.hl7",
            "09_v27_truncation_char.hl7",
            "10_hash_field_separator.hl7",
            "11_custom_encoding_chars.hl7",
            "16_batch_file.hl7",
            "27_empty_msh10.hl7",
            "malformed/truncated_msh.hl7",
            "malformed/mllp_bytes_in_payload.hl7",
            "malformed/binary_garbage.bin",
            "malformed/empty.hl7",
        ] {
            fuzz_build(&corpus(name));
        }
        fuzz_build(b"MSH|^~|\x0b|\x1c");
        fuzz_build(b"BHS|^~\\&#|A|B|C|D|E||||||ID");
    }
}
