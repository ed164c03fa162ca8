//! A borrowed, zero-copy view of an HL7 v2 message's header segment, and of an ack's MSA segment.
//!
//! # What this module owns
//! - Reading the first segment of a payload (`MSH`, or `FHS`/`BHS` for a batch file): its field
//!   separator, its encoding characters (MSH-2, which may be custom, e.g. `#` as the field separator
//!   or `:@$%` as encoding characters), and the header fields the rest of the program routes and
//!   acks on (MSH-3..6, 9..12, 15, 16, 18).
//! - Reading an ack: its header plus the MSA segment (MSA-1 code, MSA-2 acked control id, MSA-3
//!   text), wherever the MSA sits after the header.
//! - [`fuzz_header`], the library side of the `msh_view` fuzz target.
//!
//! # What it must not know
//! No I/O, no clock, no allocation on the parse path. It does not know MLLP framing, rules, or how
//! acks are built (that is `ack.rs`). It parses nothing past the header except the MSA segment of an
//! ack: payload bytes are relayed exactly, never decoded (legacy encodings such as ISO-8859-1 are
//! normal, so nothing here assumes UTF-8).
//!
//! # Tolerance
//! Segments end at `\r`, `\n` or `\r\n`. A header that stops early (no MSH-10..12) parses: missing
//! fields read as empty slices. Segment ids are case-sensitive (`msh` is not a header). Every input
//! is safe: parsing never panics, and every slice returned points into the parsed payload.
//!
//! # Patient data
//! Payloads carry patient data. The `Debug` impls here show only the header kind, MSH-9, MSH-10 and
//! MSH-12 (and for an ack its MSA-1 and MSA-2), escaped and capped; never any other payload byte.

use std::fmt;

/// Which segment a payload starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderKind {
    /// `MSH`: a single message.
    Msh,
    /// `FHS`: a batch file (FHS, BHS, messages, BTS, FTS).
    Fhs,
    /// `BHS`: a batch without a file header.
    Bhs,
}

/// Why a payload's first segment is not a usable header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// No bytes, or only segment terminators and blanks.
    #[error("the payload is empty (it holds no bytes other than segment terminators or blanks)")]
    Empty,
    /// The first segment is not `MSH`, `FHS` or `BHS`.
    #[error(
        "the first segment is not a header: it must start with MSH, FHS or BHS (upper case) \
         followed by the field separator"
    )]
    NotAHeader,
    /// The segment id is not followed by a field separator.
    #[error(
        "the header segment has no field separator after its segment id \
         (expected a punctuation character such as '|')"
    )]
    MissingSeparators,
    /// MSH-2 is not 2 to 5 distinct punctuation characters.
    #[error(
        "the encoding characters (MSH-2) are not 2 to 5 distinct punctuation characters \
         different from the field separator (usually ^~\\&)"
    )]
    BadEncodingCharacters,
}

/// A borrowed view of a payload's first segment (`MSH`, `FHS` or `BHS`).
///
/// Fields are found on demand by scanning the header segment, which is short; nothing is copied.
#[derive(Clone, Copy)]
pub struct Header<'a> {
    /// The first segment, without its terminator.
    segment: &'a [u8],
    kind: HeaderKind,
    field_separator: u8,
    /// MSH-2, 2..=5 bytes.
    encoding: &'a [u8],
}

/// Bytes allowed as separators: printable ASCII punctuation.
fn is_separator_byte(b: u8) -> bool {
    b.is_ascii_punctuation()
}

/// Blanks a payload may consist of and still count as empty.
fn is_blank(b: u8) -> bool {
    matches!(b, b'\r' | b'\n' | b' ' | b'\t')
}

/// The segment starting at the beginning of `bytes`, up to (not including) its `\r` or `\n`.
fn first_segment(bytes: &[u8]) -> &[u8] {
    let end = memchr::memchr2(b'\r', b'\n', bytes).unwrap_or(bytes.len());
    &bytes[..end]
}

/// The empty slice at the end of `s` (so that even an empty answer points into the payload).
fn empty_at_end(s: &[u8]) -> &[u8] {
    &s[s.len()..]
}

/// Component `index` (0-based) of `field`, split on `separator`; empty if absent.
fn component(field: &[u8], separator: u8, index: usize) -> &[u8] {
    field
        .split(|&b| b == separator)
        .nth(index)
        .unwrap_or(empty_at_end(field))
}

impl<'a> Header<'a> {
    /// Parses the first segment of `payload`: `MSH`, or `FHS`/`BHS` for a batch file.
    ///
    /// The segment ends at the first `\r` or `\n` (so `\r\n`, `\n` and `\r` terminators all work,
    /// as does no terminator at all). The field separator is the byte after the 3-letter segment
    /// id; the encoding characters are MSH-2, up to the next field separator: component,
    /// repetition, escape, subcomponent and the optional v2.7 truncation character, 2 to 5 distinct
    /// punctuation characters. A header that stops early parses; its missing fields are empty.
    ///
    /// # Errors
    /// - [`HeaderError::Empty`]: no bytes, or only `\r`, `\n`, space and tab.
    /// - [`HeaderError::NotAHeader`]: the payload does not start with `MSH`, `FHS` or `BHS` (case
    ///   sensitive), or the id continues with a letter or digit (`MSHX|`).
    /// - [`HeaderError::MissingSeparators`]: nothing after the segment id, or a byte that cannot be a
    ///   separator (control byte, blank, non-ASCII).
    /// - [`HeaderError::BadEncodingCharacters`]: MSH-2 is not 2 to 5 distinct punctuation
    ///   characters, all different from the field separator.
    pub fn parse(payload: &'a [u8]) -> Result<Header<'a>, HeaderError> {
        if payload.iter().all(|&b| is_blank(b)) {
            return Err(HeaderError::Empty);
        }
        let segment = first_segment(payload);
        let kind = match segment.get(..3) {
            Some(b"MSH") => HeaderKind::Msh,
            Some(b"FHS") => HeaderKind::Fhs,
            Some(b"BHS") => HeaderKind::Bhs,
            _ => return Err(HeaderError::NotAHeader),
        };
        let field_separator = match segment.get(3) {
            None => return Err(HeaderError::MissingSeparators),
            Some(b) if b.is_ascii_alphanumeric() => return Err(HeaderError::NotAHeader),
            Some(&b) if is_separator_byte(b) => b,
            Some(_) => return Err(HeaderError::MissingSeparators),
        };
        let rest = &segment[4..];
        let encoding = &rest[..rest
            .iter()
            .position(|&b| b == field_separator)
            .unwrap_or(rest.len())];
        if !valid_encoding_characters(encoding, field_separator) {
            return Err(HeaderError::BadEncodingCharacters);
        }
        Ok(Header {
            segment,
            kind,
            field_separator,
            encoding,
        })
    }

    /// Which segment the payload starts with.
    pub fn kind(&self) -> HeaderKind {
        self.kind
    }

    /// The field separator (MSH-1), usually `|`.
    pub fn field_separator(&self) -> u8 {
        self.field_separator
    }

    /// MSH-2 as written: 2 to 5 distinct punctuation bytes, usually `^~\&`.
    pub fn encoding_characters(&self) -> &'a [u8] {
        self.encoding
    }

    /// The component separator: the first encoding character, usually `^`.
    pub fn component_separator(&self) -> u8 {
        self.encoding[0]
    }

    /// Field `n` by its HL7 number: 1 is the field separator itself, 2 the encoding characters,
    /// 3 the sending application, and so on. Empty if the segment has no such field, and for `n = 0`
    /// (the segment id is not a field).
    pub fn field(&self, n: usize) -> &'a [u8] {
        match n {
            0 => empty_at_end(self.segment),
            1 => &self.segment[3..4],
            2 => self.encoding,
            _ => {
                let fields = &self.segment[4..];
                fields
                    .split(|&b| b == self.field_separator)
                    .nth(n - 2)
                    .unwrap_or(empty_at_end(fields))
            }
        }
    }

    /// The first component of field `n` (fields 1 and 2 are returned whole: they are separators).
    pub fn first_component(&self, n: usize) -> &'a [u8] {
        if n <= 2 {
            return self.field(n);
        }
        component(self.field(n), self.component_separator(), 0)
    }

    /// Field `n`, but only in an `MSH` header (the batch headers number their fields differently).
    fn msh_field(&self, n: usize) -> &'a [u8] {
        match self.kind {
            HeaderKind::Msh => self.field(n),
            HeaderKind::Fhs | HeaderKind::Bhs => empty_at_end(self.segment),
        }
    }

    /// MSH-3 / FHS-3 / BHS-3, the whole field.
    pub fn sending_application(&self) -> &'a [u8] {
        self.field(3)
    }

    /// MSH-4 / FHS-4 / BHS-4, the whole field.
    pub fn sending_facility(&self) -> &'a [u8] {
        self.field(4)
    }

    /// MSH-5 / FHS-5 / BHS-5, the whole field.
    pub fn receiving_application(&self) -> &'a [u8] {
        self.field(5)
    }

    /// MSH-6 / FHS-6 / BHS-6, the whole field.
    pub fn receiving_facility(&self) -> &'a [u8] {
        self.field(6)
    }

    /// MSH-9 as written (e.g. `ADT^A01^ADT_A01`); empty for FHS/BHS.
    pub fn message_type(&self) -> &'a [u8] {
        self.msh_field(9)
    }

    /// MSH-9.1, the message code (e.g. `ADT`); empty for FHS/BHS.
    pub fn message_code(&self) -> &'a [u8] {
        component(self.message_type(), self.component_separator(), 0)
    }

    /// MSH-9.2, the trigger event (e.g. `A01`); empty for FHS/BHS or when absent.
    pub fn trigger_event(&self) -> &'a [u8] {
        component(self.message_type(), self.component_separator(), 1)
    }

    /// The id an ack must echo in MSA-2: MSH-10; for a batch file FHS-11, for a batch BHS-11.
    /// Empty when the header has none.
    pub fn control_id(&self) -> &'a [u8] {
        match self.kind {
            HeaderKind::Msh => self.field(10),
            HeaderKind::Fhs | HeaderKind::Bhs => self.field(11),
        }
    }

    /// MSH-11, the processing id (e.g. `P`); empty for FHS/BHS.
    pub fn processing_id(&self) -> &'a [u8] {
        self.msh_field(11)
    }

    /// MSH-12, the version id (e.g. `2.5.1`); empty for FHS/BHS.
    pub fn version(&self) -> &'a [u8] {
        self.msh_field(12)
    }

    /// MSH-15, the accept acknowledgment type (`AL`, `NE`, `ER`, `SU`); empty for FHS/BHS.
    pub fn accept_ack_type(&self) -> &'a [u8] {
        self.msh_field(15)
    }

    /// MSH-16, the application acknowledgment type; empty for FHS/BHS.
    pub fn application_ack_type(&self) -> &'a [u8] {
        self.msh_field(16)
    }

    /// MSH-18, the character set (e.g. `UNICODE UTF-8`, `8859/1`); empty for FHS/BHS.
    pub fn character_set(&self) -> &'a [u8] {
        self.msh_field(18)
    }

    /// The first segment, without its terminator (`AckView` searches for the MSA after it).
    fn segment(&self) -> &'a [u8] {
        self.segment
    }
}

/// MSH-2 rules: 2..=5 bytes, punctuation, pairwise distinct, none equal to the field separator.
fn valid_encoding_characters(encoding: &[u8], field_separator: u8) -> bool {
    (2..=5).contains(&encoding.len())
        && encoding.iter().enumerate().all(|(i, &b)| {
            is_separator_byte(b) && b != field_separator && !encoding[..i].contains(&b)
        })
}

/// How many bytes of a header field `Debug` shows before cutting it short.
const DEBUG_FIELD_CAP: usize = 64;

/// Renders header bytes for `Debug`: quoted, ASCII-escaped, capped.
struct Shown<'a>(&'a [u8]);

impl fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cut = self.0.len().min(DEBUG_FIELD_CAP);
        write!(f, "\"{}", self.0[..cut].escape_ascii())?;
        if cut < self.0.len() {
            write!(f, "...({} bytes)", self.0.len())?;
        }
        f.write_str("\"")
    }
}

/// Redacted: shows the kind, MSH-9, the control id and MSH-12 only.
impl fmt::Debug for Header<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Header")
            .field("kind", &self.kind)
            .field("message_type", &Shown(self.message_type()))
            .field("control_id", &Shown(self.control_id()))
            .field("version", &Shown(self.version()))
            .finish()
    }
}

/// An ack code (MSA-1): original mode `AA`/`AE`/`AR`, enhanced mode commit `CA`/`CE`/`CR`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AckCode {
    /// Application accept.
    AA,
    /// Application error.
    AE,
    /// Application reject.
    AR,
    /// Commit accept.
    CA,
    /// Commit error.
    CE,
    /// Commit reject.
    CR,
}

impl AckCode {
    /// Every code, in declaration order.
    pub const ALL: [AckCode; 6] = [
        AckCode::AA,
        AckCode::AE,
        AckCode::AR,
        AckCode::CA,
        AckCode::CE,
        AckCode::CR,
    ];

    /// Reads MSA-1 exactly (upper case, no blanks); `None` for anything else.
    pub fn parse(b: &[u8]) -> Option<AckCode> {
        match b {
            b"AA" => Some(AckCode::AA),
            b"AE" => Some(AckCode::AE),
            b"AR" => Some(AckCode::AR),
            b"CA" => Some(AckCode::CA),
            b"CE" => Some(AckCode::CE),
            b"CR" => Some(AckCode::CR),
            _ => None,
        }
    }

    /// The two letters as written in MSA-1.
    pub fn as_str(&self) -> &'static str {
        match self {
            AckCode::AA => "AA",
            AckCode::AE => "AE",
            AckCode::AR => "AR",
            AckCode::CA => "CA",
            AckCode::CE => "CE",
            AckCode::CR => "CR",
        }
    }

    /// True for the accepting codes `AA` and `CA`.
    pub fn is_positive(&self) -> bool {
        matches!(self, AckCode::AA | AckCode::CA)
    }
}

impl fmt::Display for AckCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a payload is not a usable ack.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// The first segment is not a usable header.
    #[error("the ack's header is not valid: {0}")]
    BadHeader(HeaderError),
    /// No MSA segment after the header.
    #[error("the ack has no MSA segment after its header")]
    NoMsa,
    /// MSA-1 is not one of the six ack codes; holds at most its first 2 characters, with anything
    /// but ASCII letters and digits shown as `?`.
    #[error("the ack code (MSA-1) \"{0}\" is not one of AA, AE, AR, CA, CE, CR")]
    UnknownCode(String),
}

/// An acknowledgement: its header and its MSA segment.
#[derive(Clone, Copy)]
pub struct AckView<'a> {
    header: Header<'a>,
    code: AckCode,
    acked_control_id: &'a [u8],
    text: &'a [u8],
}

impl<'a> AckView<'a> {
    /// Parses an ack: a header (see [`Header::parse`]) and the first MSA segment after it,
    /// wherever it sits (other segments such as SFT or ERR may come before or after it).
    /// Segments split on `\r`, `\n` or `\r\n`; the last one needs no terminator. MSH-9 and MSH-10
    /// are not checked: acks are correlated on MSA-2 only.
    ///
    /// # Errors
    /// [`AckError::BadHeader`] when the header does not parse, [`AckError::NoMsa`] when no segment
    /// after it is `MSA`, [`AckError::UnknownCode`] when MSA-1 is not exactly one of the six codes.
    pub fn parse(payload: &'a [u8]) -> Result<AckView<'a>, AckError> {
        let header = Header::parse(payload).map_err(AckError::BadHeader)?;
        let fs = header.field_separator();
        let after = &payload[header.segment().len()..];
        let mut segments = after;
        let msa = loop {
            let segment = first_segment(segments);
            if segment.starts_with(b"MSA") && segment.get(3).is_none_or(|&b| b == fs) {
                break segment;
            }
            match segments.get(segment.len() + 1..) {
                Some(rest) => segments = rest,
                None => return Err(AckError::NoMsa),
            }
        };
        let field = |n: usize| msa.split(|&b| b == fs).nth(n).unwrap_or(empty_at_end(msa));
        let raw_code = field(1);
        let code = AckCode::parse(raw_code)
            .ok_or_else(|| AckError::UnknownCode(sanitize_code(raw_code)))?;
        Ok(AckView {
            header,
            code,
            acked_control_id: field(2),
            text: field(3),
        })
    }

    /// The ack's own header (its MSH-10 is often constant: do not correlate on it).
    pub fn header(&self) -> Header<'a> {
        self.header
    }

    /// MSA-1.
    pub fn code(&self) -> AckCode {
        self.code
    }

    /// MSA-2 as written, the whole field: the control id of the message this ack answers.
    pub fn acked_control_id(&self) -> &'a [u8] {
        self.acked_control_id
    }

    /// MSA-3 as written (may hold patient data: never log it).
    pub fn text(&self) -> &'a [u8] {
        self.text
    }
}

/// Redacted: the header's redacted view, MSA-1 and MSA-2; never MSA-3 or any other segment.
impl fmt::Debug for AckView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AckView")
            .field("header", &self.header)
            .field("code", &self.code)
            .field("acked_control_id", &Shown(self.acked_control_id))
            .finish_non_exhaustive()
    }
}

/// At most the first 2 bytes of an unknown MSA-1, ASCII letters and digits kept, others `?`.
fn sanitize_code(raw: &[u8]) -> String {
    raw.iter()
        .take(2)
        .map(|&b| {
            if b.is_ascii_alphanumeric() {
                b as char
            } else {
                '?'
            }
        })
        .collect()
}

/// Fuzz entry (the `msh_view` target calls this): parses `data` as a [`Header`] and as an
/// [`AckView`], touches every accessor and `Debug`, and asserts the invariants: no panic, every
/// returned slice lies within `data`, the separators are what the bytes say.
pub fn fuzz_header(data: &[u8]) {
    let within = |s: &[u8]| {
        let whole = data.as_ptr_range();
        let part = s.as_ptr_range();
        assert!(
            whole.start <= part.start && part.end <= whole.end,
            "a returned slice points outside the payload"
        );
    };
    let check_header = |h: &Header<'_>| {
        assert_eq!(h.field_separator(), data[3]);
        assert_eq!(h.field(1), &[h.field_separator()][..]);
        let enc = h.encoding_characters();
        assert!((2..=5).contains(&enc.len()));
        assert_eq!(h.component_separator(), enc[0]);
        assert!(!enc.contains(&h.field_separator()));
        for n in 0..=25 {
            let field = h.field(n);
            within(field);
            within(h.first_component(n));
            assert!(n == 1 || !field.contains(&h.field_separator()));
            assert!(!field.contains(&b'\r') && !field.contains(&b'\n'));
        }
        for s in [
            h.encoding_characters(),
            h.sending_application(),
            h.sending_facility(),
            h.receiving_application(),
            h.receiving_facility(),
            h.message_type(),
            h.message_code(),
            h.trigger_event(),
            h.control_id(),
            h.processing_id(),
            h.version(),
            h.accept_ack_type(),
            h.application_ack_type(),
            h.character_set(),
        ] {
            within(s);
        }
        let shown = format!("{h:?}");
        assert!(shown.len() < 1024, "Debug output must stay bounded");
    };
    if let Ok(h) = Header::parse(data) {
        let _ = h.kind();
        check_header(&h);
    }
    match AckView::parse(data) {
        Ok(ack) => {
            check_header(&ack.header());
            within(ack.acked_control_id());
            within(ack.text());
            assert_eq!(
                AckCode::parse(ack.code().as_str().as_bytes()),
                Some(ack.code())
            );
            assert!(format!("{ack:?}").len() < 2048);
        }
        Err(AckError::UnknownCode(code)) => assert!(code.chars().count() <= 2),
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// A header field made safe for a log line: control characters replaced, at most 64 characters.
/// Only header fields that identify a message (never patient data) are logged.
pub fn printable(field: &[u8]) -> String {
    Printable(field).to_string()
}

/// [`printable`] without the allocation: formats the field only if the log line is written.
#[derive(Clone, Copy)]
pub struct Printable<'a>(pub &'a [u8]);

impl std::fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let field = &self.0[..self.0.len().min(64)];
        // Runs of printable ASCII go out whole; each other byte becomes '?'.
        for run in field.split_inclusive(|b| !(0x20..0x7F).contains(b)) {
            let (text, odd) = match run.split_last() {
                Some((&last, rest)) if !(0x20..0x7F).contains(&last) => (rest, true),
                _ => (run, false),
            };
            f.write_str(std::str::from_utf8(text).map_err(|_| std::fmt::Error)?)?;
            if odd {
                f.write_str("?")?;
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for Printable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn printable_replaces_control_and_non_ascii_bytes_and_stops_at_64() {
        assert_eq!(Printable(b"ADT^A01").to_string(), "ADT^A01");
        assert_eq!(Printable(b"a\rb\x0bc\x1c").to_string(), "a?b?c?");
        assert_eq!(Printable("Zoë".as_bytes()).to_string(), "Zo??");
        assert_eq!(Printable(&[b'x'; 100]).to_string(), "x".repeat(64));
        assert_eq!(Printable(b"").to_string(), "");
        assert_eq!(printable(b"\x00ok"), "?ok");
    }

    /// The corpus: `$MLLP_GUARD_CORPUS`, else the copy vendored in `tests/corpus`.
    fn corpus_dir() -> PathBuf {
        std::env::var_os("MLLP_GUARD_CORPUS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus")))
    }

    fn corpus(name: &str) -> Vec<u8> {
        let path = corpus_dir().join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    /// Every file under the corpus directory, recursively, sorted.
    fn all_corpus_files() -> Vec<PathBuf> {
        fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).expect("corpus directory") {
                let path = entry.expect("corpus entry").path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
        let mut out = Vec::new();
        walk(&corpus_dir(), &mut out);
        out.sort();
        out
    }

    #[test]
    fn every_corpus_message_has_the_control_id_listed_in_the_manifest() {
        let manifest: serde_json::Value =
            serde_json::from_slice(&corpus("manifest.json")).expect("manifest.json is JSON");
        let entries = manifest.as_array().expect("manifest is a list");
        assert_eq!(entries.len(), 28);
        for entry in entries {
            let file = entry["file"].as_str().expect("file name");
            let expected = entry["control_id"].as_str().expect("control id");
            let bytes = corpus(file);
            let h = Header::parse(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(h.control_id(), expected.as_bytes(), "{file}");
        }
        let hl7_files = std::fs::read_dir(corpus_dir())
            .expect("corpus dir")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "hl7"))
            })
            .count();
        assert_eq!(
            hl7_files,
            entries.len(),
            "every corpus message is in the manifest"
        );
    }

    #[test]
    fn a_typical_adt_header_exposes_every_field_by_name() {
        let bytes = corpus("01_adt_a01.hl7");
        let h = Header::parse(&bytes).expect("parses");
        assert_eq!(h.kind(), HeaderKind::Msh);
        assert_eq!(h.field_separator(), b'|');
        assert_eq!(h.encoding_characters(), b"^~\\&");
        assert_eq!(h.component_separator(), b'^');
        assert_eq!(h.sending_application(), b"SYNTH_SEND");
        assert_eq!(h.sending_facility(), b"SYNTH_FAC");
        assert_eq!(h.receiving_application(), b"SYNTH_RECV");
        assert_eq!(h.receiving_facility(), b"SYNTH_DEST");
        assert_eq!(h.field(7), b"20240102030405");
        assert_eq!(h.field(8), b"");
        assert_eq!(h.message_type(), b"ADT^A01^ADT_A01");
        assert_eq!(h.message_code(), b"ADT");
        assert_eq!(h.trigger_event(), b"A01");
        assert_eq!(h.first_component(9), b"ADT");
        assert_eq!(h.control_id(), b"ADT0001");
        assert_eq!(h.processing_id(), b"P");
        assert_eq!(h.version(), b"2.5.1");
        assert_eq!(h.accept_ack_type(), b"");
        assert_eq!(h.application_ack_type(), b"");
        assert_eq!(h.character_set(), b"");
    }

    #[test]
    fn fields_are_numbered_as_in_the_standard_with_msh_1_the_separator_itself() {
        let bytes = corpus("01_adt_a01.hl7");
        let h = Header::parse(&bytes).expect("parses");
        assert_eq!(h.field(0), b"");
        assert_eq!(h.field(1), b"|");
        assert_eq!(h.field(2), b"^~\\&");
        assert_eq!(h.field(3), b"SYNTH_SEND");
        assert_eq!(h.field(12), b"2.5.1");
        assert_eq!(h.field(13), b"");
        assert_eq!(h.field(usize::MAX), b"");
        assert_eq!(h.first_component(1), b"|");
        assert_eq!(h.first_component(2), b"^~\\&");
        assert_eq!(h.first_component(40), b"");
    }

    #[test]
    fn message_type_and_version_are_read_across_versions() {
        for (file, message_type, code, trigger, version) in [
            ("02_adt_a04.hl7", "ADT^A04^ADT_A01", "ADT", "A04", "2.5.1"),
            (
                "04_oru_r01_500_obx.hl7",
                "ORU^R01^ORU_R01",
                "ORU",
                "R01",
                "2.5.1",
            ),
            ("05_orm_o01.hl7", "ORM^O01", "ORM", "O01", "2.3"),
            ("06_siu_s12.hl7", "SIU^S12^SIU_S12", "SIU", "S12", "2.5.1"),
            (
                "07_mdm_t02_2mb_base64.hl7",
                "MDM^T02^MDM_T02",
                "MDM",
                "T02",
                "2.5.1",
            ),
            ("17_ack_aa.hl7", "ACK^A01^ACK", "ACK", "A01", "2.5.1"),
            ("24_v2_3.hl7", "ADT^A01", "ADT", "A01", "2.3"),
            ("26_v2_8.hl7", "ADT^A01^ADT_A01", "ADT", "A01", "2.8"),
            ("28_64kib.hl7", "ORU^R01^ORU_R01", "ORU", "R01", "2.5.1"),
        ] {
            let bytes = corpus(file);
            let h = Header::parse(&bytes).expect("parses");
            assert_eq!(h.message_type(), message_type.as_bytes(), "{file}");
            assert_eq!(h.message_code(), code.as_bytes(), "{file}");
            assert_eq!(h.trigger_event(), trigger.as_bytes(), "{file}");
            assert_eq!(h.version(), version.as_bytes(), "{file}");
        }
    }

    #[test]
    fn a_v27_truncation_character_is_the_fifth_encoding_character() {
        let bytes = corpus("09_v27_truncation_char.hl7");
        let h = Header::parse(&bytes).expect("parses");
        assert_eq!(h.field_separator(), b'|');
        assert_eq!(h.encoding_characters(), b"^~\\&#");
        assert_eq!(h.component_separator(), b'^');
        assert_eq!(h.sending_application(), b"SYNTH_SEND");
        assert_eq!(h.control_id(), b"ENC0001");
        assert_eq!(h.version(), b"2.7");
    }

    #[test]
    fn a_hash_field_separator_is_read_from_the_byte_after_msh() {
        let bytes = corpus("10_hash_field_separator.hl7");
        let h = Header::parse(&bytes).expect("parses");
        assert_eq!(h.field_separator(), b'#');
        assert_eq!(h.field(1), b"#");
        assert_eq!(h.encoding_characters(), b"^~\\&");
        assert_eq!(h.sending_application(), b"SYNTH_SEND");
        assert_eq!(h.receiving_facility(), b"SYNTH_DEST");
        assert_eq!(h.message_type(), b"ADT^A04^ADT_A01");
        assert_eq!(h.trigger_event(), b"A04");
        assert_eq!(h.control_id(), b"ENC0002");
        assert_eq!(h.processing_id(), b"P");
        assert_eq!(h.version(), b"2.5.1");
    }

    #[test]
    fn custom_encoding_characters_split_components_on_their_own_separator() {
        let bytes = corpus("11_custom_encoding_chars.hl7");
        let h = Header::parse(&bytes).expect("parses");
        assert_eq!(h.field_separator(), b'|');
        assert_eq!(h.encoding_characters(), b":@$%");
        assert_eq!(h.component_separator(), b':');
        assert_eq!(h.message_type(), b"ADT:A08:ADT_A01");
        assert_eq!(h.message_code(), b"ADT");
        assert_eq!(h.trigger_event(), b"A08");
        assert_eq!(h.first_component(9), b"ADT");
        assert_eq!(h.control_id(), b"ENC0003");
    }

    #[test]
    fn enhanced_mode_ack_types_are_msh_15_and_msh_16() {
        for (file, accept, application) in [
            ("19_enhanced_ack_msh15_AL_msh16_AL.hl7", "AL", "AL"),
            ("20_enhanced_ack_msh15_AL_msh16_NE.hl7", "AL", "NE"),
            ("21_enhanced_ack_msh15_NE_msh16_NE.hl7", "NE", "NE"),
            ("22_enhanced_ack_msh15_ER_msh16_SU.hl7", "ER", "SU"),
            ("23_enhanced_ack_msh15_SU_msh16_ER.hl7", "SU", "ER"),
        ] {
            let bytes = corpus(file);
            let h = Header::parse(&bytes).expect("parses");
            assert_eq!(h.accept_ack_type(), accept.as_bytes(), "{file}");
            assert_eq!(h.application_ack_type(), application.as_bytes(), "{file}");
            assert_eq!(h.version(), b"2.5.1", "{file}");
        }
    }

    #[test]
    fn the_character_set_is_msh_18() {
        for (file, charset) in [
            ("12_utf8_names.hl7", "UNICODE UTF-8"),
            ("13_iso8859_1_names.hl7", "8859/1"),
            ("26_v2_8.hl7", "UNICODE UTF-8"),
            ("01_adt_a01.hl7", ""),
        ] {
            let bytes = corpus(file);
            let h = Header::parse(&bytes).expect("parses");
            assert_eq!(h.character_set(), charset.as_bytes(), "{file}");
        }
        let bytes = corpus("26_v2_8.hl7");
        let h = Header::parse(&bytes).expect("parses");
        assert_eq!(h.field(21), b"SYNTH_PROFILE^^2.16.840.1.113883.9.999^ISO");
        assert_eq!(h.first_component(21), b"SYNTH_PROFILE");
    }

    #[test]
    fn crlf_and_lf_terminated_headers_end_before_the_terminator() {
        for (file, control_id) in [
            ("14_crlf_terminators.hl7", "TRM0001"),
            ("15_lf_terminators.hl7", "TRM0002"),
        ] {
            let bytes = corpus(file);
            let h = Header::parse(&bytes).expect("parses");
            assert_eq!(h.control_id(), control_id.as_bytes(), "{file}");
            assert_eq!(h.version(), b"2.5.1", "{file}");
            assert_eq!(h.field(13), b"", "{file}");
        }
    }

    #[test]
    fn a_batch_file_starts_with_fhs_and_its_control_id_is_fhs_11() {
        let bytes = corpus("16_batch_file.hl7");
        let h = Header::parse(&bytes).expect("parses");
        assert_eq!(h.kind(), HeaderKind::Fhs);
        assert_eq!(h.sending_application(), b"SYNTH_SEND");
        assert_eq!(h.receiving_facility(), b"SYNTH_DEST");
        assert_eq!(h.field(9), b"synthetic.hl7");
        assert_eq!(h.control_id(), b"FILE0001");
        assert_eq!(h.message_type(), b"");
        assert_eq!(h.message_code(), b"");
        assert_eq!(h.trigger_event(), b"");
        assert_eq!(h.processing_id(), b"");
        assert_eq!(h.version(), b"");
        assert_eq!(h.character_set(), b"");
    }

    #[test]
    fn a_batch_without_file_header_starts_with_bhs_and_its_control_id_is_bhs_11() {
        let bytes = corpus("16_batch_file.hl7");
        let second = bytes
            .iter()
            .position(|&b| b == b'\r')
            .expect("two segments")
            + 1;
        let h = Header::parse(&bytes[second..]).expect("parses");
        assert_eq!(h.kind(), HeaderKind::Bhs);
        assert_eq!(h.control_id(), b"BATCH0001");
        assert_eq!(h.message_type(), b"");
    }

    #[test]
    fn each_malformed_corpus_file_has_its_exact_outcome() {
        for (file, expected) in [
            ("empty.hl7", Err(HeaderError::Empty)),
            ("whitespace_only.hl7", Err(HeaderError::Empty)),
            ("no_msh.hl7", Err(HeaderError::NotAHeader)),
            ("lowercase_msh.hl7", Err(HeaderError::NotAHeader)),
            ("binary_garbage.bin", Err(HeaderError::NotAHeader)),
            (
                "missing_field_separator.hl7",
                Err(HeaderError::MissingSeparators),
            ),
            (
                "missing_encoding_chars.hl7",
                Err(HeaderError::BadEncodingCharacters),
            ),
            ("truncated_msh.hl7", Ok("")),
            ("msh_without_msh10_12.hl7", Ok("")),
            ("mllp_bytes_in_payload.hl7", Ok("BAD0003")),
        ] {
            let bytes = corpus(&format!("malformed/{file}"));
            let got = Header::parse(&bytes).map(|h| h.control_id());
            assert_eq!(got, expected.map(str::as_bytes), "{file}");
        }
        let covered = std::fs::read_dir(corpus_dir().join("malformed"))
            .expect("malformed dir")
            .count();
        assert_eq!(
            covered, 10,
            "a new malformed file needs an expected outcome here"
        );
    }

    #[test]
    fn a_truncated_header_parses_with_its_missing_fields_empty() {
        let bytes = corpus("malformed/truncated_msh.hl7");
        let h = Header::parse(&bytes).expect("parses");
        assert_eq!(h.sending_application(), b"SYNTH_SEND");
        assert_eq!(h.sending_facility(), b"SYNTH_FA");
        assert_eq!(h.receiving_application(), b"");
        assert_eq!(h.message_type(), b"");
        assert_eq!(h.trigger_event(), b"");
        assert_eq!(h.version(), b"");

        let bytes = corpus("malformed/msh_without_msh10_12.hl7");
        let h = Header::parse(&bytes).expect("parses");
        assert_eq!(h.message_type(), b"ADT^A01");
        assert_eq!(h.trigger_event(), b"A01");
        assert_eq!(h.control_id(), b"");
        assert_eq!(h.processing_id(), b"");
        assert_eq!(h.version(), b"");
    }

    #[test]
    fn separators_must_be_punctuation_and_distinct() {
        for (input, expected) in [
            (&b"MS"[..], HeaderError::NotAHeader),
            (b"MSA|AA|X\r", HeaderError::NotAHeader),
            (b"MSHX|^~\\&|", HeaderError::NotAHeader),
            (b"\rMSH|^~\\&|A\r", HeaderError::NotAHeader),
            (b"MSH", HeaderError::MissingSeparators),
            (b"MSH\r\n", HeaderError::MissingSeparators),
            (b"MSH ^~\\&", HeaderError::MissingSeparators),
            (b"MSH\x1c^~\\&", HeaderError::MissingSeparators),
            (b"MSH\xc3^~\\&", HeaderError::MissingSeparators),
            (b"MSH|", HeaderError::BadEncodingCharacters),
            (b"MSH||A", HeaderError::BadEncodingCharacters),
            (b"MSH|^|A", HeaderError::BadEncodingCharacters),
            (b"MSH|^^|A", HeaderError::BadEncodingCharacters),
            (b"MSH|^~\\&#!|A", HeaderError::BadEncodingCharacters),
            (b"MSH|^~ &|A", HeaderError::BadEncodingCharacters),
            (b"MSH|^~1&|A", HeaderError::BadEncodingCharacters),
        ] {
            assert_eq!(
                Header::parse(input).map(|h| h.control_id()),
                Err(expected),
                "{}",
                input.escape_ascii()
            );
        }
        let two = Header::parse(b"MSH|^~|A|B|C|D|T||ADT^A01|X1").expect("two encoding characters");
        assert_eq!(two.encoding_characters(), b"^~");
        assert_eq!(two.trigger_event(), b"A01");
        assert_eq!(two.control_id(), b"X1");
    }

    #[test]
    fn debug_shows_only_kind_message_type_control_id_and_version() {
        let bytes = corpus("01_adt_a01.hl7");
        let h = Header::parse(&bytes).expect("parses");
        assert_eq!(
            format!("{h:?}"),
            r#"Header { kind: Msh, message_type: "ADT^A01^ADT_A01", control_id: "ADT0001", version: "2.5.1" }"#
        );
        let long = [
            &b"MSH|^~\\&|||||||ADT^A01|"[..],
            &[b'7'; 100][..],
            b"\x01\xff",
        ]
        .concat();
        let shown = format!("{:?}", Header::parse(&long).expect("parses"));
        assert_eq!(
            shown,
            format!(
                r#"Header {{ kind: Msh, message_type: "ADT^A01", control_id: "{}...(102 bytes)", version: "" }}"#,
                "7".repeat(64)
            )
        );
    }

    #[test]
    fn the_aa_ack_in_the_corpus_reads_its_code_and_msa_2() {
        let bytes = corpus("17_ack_aa.hl7");
        let ack = AckView::parse(&bytes).expect("parses");
        assert_eq!(ack.code(), AckCode::AA);
        assert_eq!(ack.acked_control_id(), b"ADT0001");
        assert_eq!(ack.text(), b"");
        assert_eq!(ack.header().control_id(), b"ACK0001");
        assert_eq!(ack.header().message_type(), b"ACK^A01^ACK");
    }

    #[test]
    fn the_ae_ack_with_an_err_segment_reads_its_code_msa_2_and_text() {
        let bytes = corpus("18_ack_ae_with_err.hl7");
        let ack = AckView::parse(&bytes).expect("parses");
        assert_eq!(ack.code(), AckCode::AE);
        assert_eq!(ack.acked_control_id(), b"ADT0002");
        assert_eq!(ack.text(), b"Synthetic application error");
    }

    #[test]
    fn acks_with_any_terminator_or_none_at_the_end_parse_alike() {
        for input in [
            &b"MSH|^~\\&|R|RF|S|SF|20240102030405||ACK|C1|P|2.5.1\rMSA|CA|MSG42"[..],
            b"MSH|^~\\&|R|RF|S|SF|20240102030405||ACK|C1|P|2.5.1\rMSA|CA|MSG42\r",
            b"MSH|^~\\&|R|RF|S|SF|20240102030405||ACK|C1|P|2.5.1\nMSA|CA|MSG42\n",
            b"MSH|^~\\&|R|RF|S|SF|20240102030405||ACK|C1|P|2.5.1\r\nMSA|CA|MSG42\r\n",
            b"MSH|^~\\&|R|RF|S|SF|20240102030405||ACK|C1|P|2.5.1\r\n\r\nMSA|CA|MSG42",
        ] {
            let ack = AckView::parse(input).expect("parses");
            assert_eq!(ack.code(), AckCode::CA, "{}", input.escape_ascii());
            assert_eq!(ack.acked_control_id(), b"MSG42", "{}", input.escape_ascii());
            assert_eq!(ack.header().version(), b"2.5.1", "{}", input.escape_ascii());
        }
    }

    #[test]
    fn the_msa_is_found_after_other_segments_and_msa_2_is_taken_whole() {
        let input = b"MSH#^~\\&#R#RF#S#SF#20240102030405##ACK#CONST#P#2.5.1\r\
            SFT#Vendor#1.0\rMSAX#AA#NOPE\rMSA#AR#MSG42^extra#Rejected\rERR###200\r";
        let ack = AckView::parse(input).expect("parses");
        assert_eq!(ack.code(), AckCode::AR);
        assert_eq!(ack.acked_control_id(), b"MSG42^extra");
        assert_eq!(ack.text(), b"Rejected");
    }

    #[test]
    fn a_reply_without_msa_or_with_an_unknown_code_is_not_an_ack() {
        let cases: [(&[u8], AckError); 7] = [
            (b"", AckError::BadHeader(HeaderError::Empty)),
            (b"MSA|AA|X", AckError::BadHeader(HeaderError::NotAHeader)),
            (b"MSH|^~\\&|A\rEVN|A01\r", AckError::NoMsa),
            (b"MSH|^~\\&|A|MSA|AA|X\r", AckError::NoMsa),
            (
                b"MSH|^~\\&|A\rMSA|aa|X\r",
                AckError::UnknownCode("aa".into()),
            ),
            (
                b"MSH|^~\\&|A\rMSA|XYZ|X\r",
                AckError::UnknownCode("XY".into()),
            ),
            (b"MSH|^~\\&|A\rMSA\r", AckError::UnknownCode(String::new())),
        ];
        for (input, expected) in cases {
            assert_eq!(
                AckView::parse(input).map(|a| a.code()),
                Err(expected),
                "{}",
                input.escape_ascii()
            );
        }
        assert_eq!(
            AckView::parse(b"MSH|^~\\&|A\rMSA|\xc3\x9c|X").map(|a| a.code()),
            Err(AckError::UnknownCode("??".into()))
        );
    }

    #[test]
    fn error_messages_say_what_is_wrong_in_words() {
        assert_eq!(
            AckError::BadHeader(HeaderError::NotAHeader).to_string(),
            "the ack's header is not valid: the first segment is not a header: it must start with \
             MSH, FHS or BHS (upper case) followed by the field separator"
        );
        assert_eq!(
            AckError::UnknownCode("XY".into()).to_string(),
            "the ack code (MSA-1) \"XY\" is not one of AA, AE, AR, CA, CE, CR"
        );
        assert_eq!(
            AckError::NoMsa.to_string(),
            "the ack has no MSA segment after its header"
        );
    }

    #[test]
    fn ack_debug_never_shows_the_msa_text() {
        let bytes = corpus("18_ack_ae_with_err.hl7");
        let ack = AckView::parse(&bytes).expect("parses");
        assert_eq!(
            format!("{ack:?}"),
            r#"AckView { header: Header { kind: Msh, message_type: "ACK^A01^ACK", control_id: "ACK0002", version: "2.5.1" }, code: AE, acked_control_id: "ADT0002", .. }"#
        );
    }

    #[test]
    fn ack_codes_round_trip_and_only_aa_and_ca_are_positive() {
        for code in AckCode::ALL {
            assert_eq!(AckCode::parse(code.as_str().as_bytes()), Some(code));
            assert_eq!(code.to_string(), code.as_str());
        }
        let positive: Vec<_> = AckCode::ALL
            .into_iter()
            .filter(AckCode::is_positive)
            .collect();
        assert_eq!(positive, [AckCode::AA, AckCode::CA]);
        assert_eq!(AckCode::parse(b"AA "), None);
        assert_eq!(AckCode::parse(b"A"), None);
    }

    #[test]
    fn fuzz_entry_holds_on_every_corpus_file() {
        let files = all_corpus_files();
        assert!(files.len() >= 60, "found only {} corpus files", files.len());
        for path in files {
            fuzz_header(&std::fs::read(&path).expect("corpus file"));
        }
    }

    #[test]
    fn fuzz_entry_holds_on_every_prefix_of_a_header_and_an_ack() {
        for name in [
            "01_adt_a01.hl7",
            "10_hash_field_separator.hl7",
            "18_ack_ae_with_err.hl7",
        ] {
            let bytes = corpus(name);
            for end in 0..=bytes.len() {
                fuzz_header(&bytes[..end]);
            }
        }
    }
}
