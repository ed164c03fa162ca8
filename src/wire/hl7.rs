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
//! acks are built (that is [`crate::wire::ack`]). It parses nothing past the header except the MSA segment of an
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

use std::borrow::Cow;
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

/// Why a coded header value is malformed (see [`Header::malformed_coded_value`]); the text
/// names the field, never its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("{0} holds a repetition separator; HL7 allows one value there")]
    Repetition(&'static str),
    #[error("{0} holds an escape sequence; a coded value is written plainly")]
    Escape(&'static str),
    #[error("{0} has blanks around a value; write it without them")]
    Blanks(&'static str),
}

/// A value as an HL7 parser reads it: the escape sequences `\F\ \S\ \T\ \R\ \E\ \P\` (written
/// with the message's own escape character) become the separators they stand for and `\Xhh..\`
/// the bytes it spells; any other escape (formatting, character sets) stays as written.
/// Borrowed when the value holds no escape character.
pub fn unescaped<'v>(value: &'v [u8], header: &Header<'_>) -> Cow<'v, [u8]> {
    let Some(escape) = header.escape_character() else {
        return Cow::Borrowed(value);
    };
    if !value.contains(&escape) {
        return Cow::Borrowed(value);
    }
    let encoding = header.encoding_characters();
    let mut out = Vec::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.iter().position(|&b| b == escape) {
        out.extend_from_slice(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(len) = after.iter().position(|&b| b == escape) else {
            out.extend_from_slice(&rest[start..]);
            return Cow::Owned(out);
        };
        let name = &after[..len];
        let meant = match name {
            b"F" => Some(vec![header.field_separator()]),
            b"S" | b"R" | b"E" | b"T" | b"P" => {
                let i = b"SRETP".iter().position(|c| *c == name[0]).unwrap_or(0);
                encoding.get(i).map(|&c| vec![c])
            }
            [b'X', hex @ ..] if !hex.is_empty() && hex.len() % 2 == 0 => hex
                .chunks(2)
                .map(|pair| {
                    std::str::from_utf8(pair)
                        .ok()
                        .and_then(|s| u8::from_str_radix(s, 16).ok())
                })
                .collect(),
            _ => None,
        };
        match meant {
            Some(bytes) => out.extend_from_slice(&bytes),
            None => out.extend_from_slice(&rest[start..start + len + 2]),
        }
        rest = &after[len + 1..];
    }
    out.extend_from_slice(rest);
    Cow::Owned(out)
}

/// Why a message's header could be read two ways: the guard's rules would judge one reading
/// while a receiver acts on another, so such a message is refused, never forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Ambiguity {
    /// A control byte (NUL, VT, FS, TAB, ...) inside the header segment: receivers disagree on
    /// whether it ends the field, the segment, the frame or nothing.
    #[error("ambiguous header: control byte 0x{0:02X} inside the header segment")]
    ControlByte(u8),
    /// The header segment ends at a line feed while the message also uses carriage returns: a
    /// receiver that ends segments only at CR reads the fields after the LF as part of the
    /// header.
    #[error(
        "ambiguous header: the header segment ends at a line feed but the message also uses \
         carriage returns (one segment terminator throughout: CR, CR LF or LF)"
    )]
    MixedTerminators,
}

/// Whether the header of `payload` (its first segment, as [`Header::parse`] reads it) could be
/// read differently by a receiver. `None` for every message that uses one segment terminator
/// throughout (CR, CR LF or LF) and has no control byte in its header.
pub fn ambiguity(payload: &[u8]) -> Option<Ambiguity> {
    let segment = first_segment(payload);
    if let Some(&b) = segment.iter().find(|&&b| b < 0x20 || b == 0x7F) {
        return Some(Ambiguity::ControlByte(b));
    }
    let rest = &payload[segment.len()..];
    if rest.first() == Some(&b'\n') && memchr::memchr(b'\r', rest).is_some() {
        return Some(Ambiguity::MixedTerminators);
    }
    None
}

/// How many bytes come before the header of `payload`: a UTF-8 byte order mark at the start,
/// then any carriage returns, line feeds and spaces, when a header segment id (`MSH`, `FHS`,
/// `BHS`) follows them; else 0. The header is read after them; the payload is relayed as is.
pub fn leading_bytes(payload: &[u8]) -> usize {
    let bom = if payload.starts_with(b"\xEF\xBB\xBF") {
        3
    } else {
        0
    };
    let blanks = payload[bom..]
        .iter()
        .take_while(|&&b| matches!(b, b'\r' | b'\n' | b' '))
        .count();
    let at = bom + blanks;
    let id = payload.get(at..at + 3);
    if at > 0 && matches!(id, Some(b"MSH" | b"FHS" | b"BHS")) {
        at
    } else {
        0
    }
}

/// The header of `payload` read after its [`leading_bytes`] (how a stored message's control id
/// is found again).
pub fn find_header(payload: &[u8]) -> Result<Header<'_>, HeaderError> {
    Header::parse(&payload[leading_bytes(payload)..])
}

/// The header that names a batch: its `BHS` (the first segment, or the one right after the
/// `FHS`), else the `FHS`. `None` when `payload` does not start with a batch header.
pub fn batch_header(payload: &[u8]) -> Option<Header<'_>> {
    let first = Header::parse(payload).ok()?;
    match first.kind() {
        HeaderKind::Msh => None,
        HeaderKind::Bhs => Some(first),
        HeaderKind::Fhs => {
            let rest = &payload[first.segment().len()..];
            let rest = rest
                .strip_prefix(b"\r\n")
                .or_else(|| rest.get(1..))
                .unwrap_or(rest);
            match Header::parse(rest) {
                Ok(bhs) if bhs.kind() == HeaderKind::Bhs => Some(bhs),
                _ => Some(first),
            }
        }
    }
}

/// The messages after the first in `payload`: every later segment that starts a message header
/// (`MSH` and a separator byte, right after a segment terminator) begins one, which runs up to
/// the next. Nothing for a single message. A batch's messages are found the same way; whether a
/// batch header (FHS/BHS) makes them legitimate is the caller's call.
pub fn later_messages(payload: &[u8]) -> LaterMessages<'_> {
    LaterMessages {
        payload,
        next: message_start_after(payload, 1),
    }
}

/// The iterator of [`later_messages`].
pub struct LaterMessages<'p> {
    payload: &'p [u8],
    next: Option<usize>,
}

impl<'p> Iterator for LaterMessages<'p> {
    type Item = &'p [u8];

    fn next(&mut self) -> Option<&'p [u8]> {
        let start = self.next?;
        self.next = message_start_after(self.payload, start + 3);
        Some(&self.payload[start..self.next.unwrap_or(self.payload.len())])
    }
}

/// Where the first message header at or after `from` starts (never at 0: that is the first).
fn message_start_after(payload: &[u8], from: usize) -> Option<usize> {
    static MSH: std::sync::OnceLock<memchr::memmem::Finder<'static>> = std::sync::OnceLock::new();
    let rest = payload.get(from..)?;
    MSH.get_or_init(|| memchr::memmem::Finder::new(b"MSH"))
        .find_iter(rest)
        .map(|i| from + i)
        .find(|&at| {
            at > 0
                && matches!(payload[at - 1], b'\r' | b'\n')
                && payload
                    .get(at + 3)
                    .is_some_and(|&b| !b.is_ascii_alphanumeric())
        })
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

    /// The repetition separator: the second encoding character, usually `~`.
    pub fn repetition_separator(&self) -> u8 {
        self.encoding[1]
    }

    /// The escape character: the third encoding character (usually a backslash), if MSH-2 names
    /// one.
    pub fn escape_character(&self) -> Option<u8> {
        self.encoding.get(2).copied()
    }

    /// A coded value of MSH (MSH-9 message type, MSH-11 processing id, MSH-12 version) that
    /// lenient receivers read in different ways: one with a repetition (read as its first
    /// repetition by some, as the whole text by others), an escape sequence (unescaped or not)
    /// or blanks around a component (trimmed or not). `None` for a batch header.
    pub fn malformed_coded_value(&self) -> Option<Malformed> {
        if self.kind != HeaderKind::Msh {
            return None;
        }
        let (repetition, escape) = (self.repetition_separator(), self.escape_character());
        // Fast path: MSH-9 .. MSH-12 as one span (separators found with memchr), free of every
        // byte that could make one of them malformed.
        let fields = &self.segment[4..];
        let mut separators = memchr::memchr_iter(self.field_separator, fields);
        let start = separators.nth(6).map_or(fields.len(), |at| at + 1);
        let end = separators.nth(3).unwrap_or(fields.len());
        let span = &fields[start.min(end)..end];
        if memchr::memchr3(repetition, escape.unwrap_or(repetition), b' ', span).is_none()
            && !span.contains(&b'\t')
        {
            return None;
        }
        let component = self.component_separator();
        let blank = |b: Option<&u8>| matches!(b, Some(b' ' | b'\t'));
        // One pass over the fields; MSH-3 is the first after the encoding characters.
        let fields = self.segment[4..].split(|&b| b == self.field_separator);
        for (n, value) in (2..=12).zip(fields) {
            let name = match n {
                9 => "MSH-9 (message type)",
                11 => "MSH-11 (processing id)",
                12 => "MSH-12 (version id)",
                _ => continue,
            };
            if value.contains(&repetition) {
                return Some(Malformed::Repetition(name));
            }
            if escape.is_some_and(|e| value.contains(&e)) {
                return Some(Malformed::Escape(name));
            }
            if value
                .split(|&b| b == component)
                .any(|c| blank(c.first()) || blank(c.last()))
            {
                return Some(Malformed::Blanks(name));
            }
        }
        None
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
        AckView::parse_with(payload, false)
    }

    /// Like [`AckView::parse`], to tell an answer from a message without reading the whole
    /// message: the MSA must be the first segment after the header other than SFT and UAC,
    /// where every acknowledgement and response structure of the standard puts it. A frame
    /// with another segment there is no answer ([`AckError::NoMsa`]).
    pub fn parse_response(payload: &'a [u8]) -> Result<AckView<'a>, AckError> {
        AckView::parse_with(payload, true)
    }

    fn parse_with(payload: &'a [u8], leading: bool) -> Result<AckView<'a>, AckError> {
        let header = Header::parse(payload).map_err(AckError::BadHeader)?;
        let fs = header.field_separator();
        let after = &payload[header.segment().len()..];
        let mut segments = after;
        let is = |segment: &[u8], id: &[u8]| {
            segment.starts_with(id) && segment.get(3).is_none_or(|&b| b == fs)
        };
        let msa = loop {
            let segment = first_segment(segments);
            if is(segment, b"MSA") {
                break segment;
            }
            let before_msa = segment.is_empty() || is(segment, b"SFT") || is(segment, b"UAC");
            if leading && !before_msa {
                return Err(AckError::NoMsa);
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
/// returned slice lies within `data`, the separators are what the bytes say, and a header
/// without [`ambiguity`] is the one a CR-only reader sees.
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
        // One reading: a header the guard accepts as unambiguous is, byte for byte, the header
        // a receiver that ends segments only at CR reads (whenever the message uses CR at all),
        // and holds no control byte.
        if ambiguity(data).is_none() {
            assert!(!h.segment().iter().any(|&b| b < 0x20 || b == 0x7F));
            if let Some(cr) = memchr::memchr(b'\r', data) {
                assert_eq!(h.segment(), &data[..cr], "two readings of one header");
            }
        }
        let _ = h.malformed_coded_value();
        // Unescaping only ever shortens a value (or keeps it as written).
        for n in 3..=12 {
            assert!(unescaped(h.field(n), &h).len() <= h.field(n).len());
        }
    }
    // Leading bytes are only skipped before a header id; a batch's name points into the payload.
    let skip = leading_bytes(data);
    assert!(
        skip == 0
            || data[skip..].starts_with(b"MSH")
            || data[skip..].starts_with(b"FHS")
            || data[skip..].starts_with(b"BHS")
    );
    if let Ok(h) = find_header(data) {
        within(h.control_id());
    }
    if let Some(batch) = batch_header(data) {
        assert!(batch.kind() != HeaderKind::Msh);
        within(batch.control_id());
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

/// How many bytes of a field [`Printable`] shows.
pub const PRINTABLE_BYTES: usize = 64;

impl Printable<'_> {
    /// What it shows, written into `text`: the field's first [`PRINTABLE_BYTES`] bytes, each
    /// one outside printable ASCII as `?` (the audit line takes it without `fmt`).
    pub fn text<'t>(&self, text: &'t mut [u8; PRINTABLE_BYTES]) -> &'t str {
        let field = &self.0[..self.0.len().min(PRINTABLE_BYTES)];
        for (to, &b) in text.iter_mut().zip(field) {
            *to = if (0x20..0x7F).contains(&b) { b } else { b'?' };
        }
        // Only printable ASCII was written.
        std::str::from_utf8(&text[..field.len()]).unwrap_or_default()
    }
}

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text(&mut [0; PRINTABLE_BYTES]))
    }
}

impl fmt::Debug for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

#[cfg(test)]
mod tests;
