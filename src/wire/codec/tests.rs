use super::*;
use std::path::{Path, PathBuf};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus");
const BIG_LIMIT: usize = 4 << 20;

impl Decoder {
    /// Bytes held inside the decoder (the kept head of an oversize frame).
    fn retained_bytes(&self) -> usize {
        match &self.state {
            State::Discarding { head, .. } => head.capacity(),
            _ => 0,
        }
    }
}

fn corpus(rel: &str) -> PathBuf {
    Path::new(CORPUS).join(rel)
}

/// Feeds `data` split at `offsets` (ascending), returns every output.
fn feed_split_at(decoder: &mut Decoder, data: &[u8], offsets: &[usize]) -> Vec<Decoded> {
    let mut bounds = vec![0];
    bounds.extend(offsets.iter().copied().filter(|&o| o > 0 && o < data.len()));
    bounds.push(data.len());
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for w in bounds.windows(2) {
        buf.extend_from_slice(&data[w[0]..w[1]]);
        while let Some(d) = decoder.decode(&mut buf) {
            out.push(d);
        }
    }
    out
}

fn feed_in_reads(decoder: &mut Decoder, data: &[u8], read: usize) -> Vec<Decoded> {
    let offsets: Vec<usize> = (read..data.len()).step_by(read).collect();
    feed_split_at(decoder, data, &offsets)
}

/// MSH-10: the 10th field of the first segment, split on the field separator.
fn msh10(payload: &[u8]) -> String {
    let end = memchr2(b'\r', b'\n', payload).unwrap_or(payload.len());
    let segment = &payload[..end];
    assert!(
        segment.starts_with(b"MSH") && segment.len() > 3,
        "not an MSH"
    );
    let field = segment
        .split(|&b| b == segment[3])
        .nth(9)
        .expect("MSH-10 present");
    String::from_utf8(field.to_vec()).expect("ascii control id")
}

fn control_ids(out: &[Decoded]) -> Vec<String> {
    out.iter()
        .map(|d| match d {
            Decoded::Frame(f) => msh10(f.payload()),
            Decoded::Oversize { .. } => panic!("unexpected oversize: {d:?}"),
        })
        .collect()
}

fn frame(out: &Decoded) -> &Frame {
    match out {
        Decoded::Frame(f) => f,
        other => panic!("expected a frame, got {other:?}"),
    }
}

fn stats(noise: u64, restarted: u64, malformed: u64, empty: u64) -> DecodeStats {
    DecodeStats {
        noise_bytes: noise,
        restarted_frames: restarted,
        malformed_frames: malformed,
        empty_frames: empty,
        oversize_frames: 0,
    }
}

/// Counters each corpus stream must produce, and whether it ends inside a frame.
fn expected_stats(file: &str) -> (DecodeStats, bool) {
    let prefix = &file[..2];
    match prefix {
        "10" => (stats(11, 0, 0, 0), false), // "GARBAGE\r\n\0\xff"
        "11" => (stats(2, 0, 0, 0), false),  // "\r\n"
        "12" => (stats(1, 0, 0, 0), false),  // "\n" after the first frame
        "13" => (stats(0, 0, 0, 0), true),   // lone 0x1C at EOF: still waiting
        "14" => (stats(0, 1, 0, 0), false),
        "15" => (stats(0, 1, 0, 0), false),
        "16" => (stats(0, 0, 0, 1), false),
        "17" => (stats(0, 0, 0, 0), true),
        "18" => (stats(0, 1, 0, 0), false),
        "19" => (stats(5, 0, 0, 0), false), // "NOISE"
        "22" => (stats(0, 0, 0, 0), true),
        _ => (stats(0, 0, 0, 0), false),
    }
}

#[test]
fn every_corpus_stream_yields_the_recommended_control_ids_however_it_is_split() {
    let manifest = std::fs::read(corpus("frames/manifest.json")).expect("manifest");
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).expect("json");
    let entries = manifest.as_array().expect("array");
    assert_eq!(entries.len(), 22);
    for entry in entries {
        let file = entry["file"].as_str().expect("file");
        let data = std::fs::read(corpus(&format!("frames/{file}"))).expect("stream");
        let chunks: Vec<usize> = entry["chunks"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_u64().unwrap() as usize).collect())
            .unwrap_or_default();
        let recommended: Vec<String> = entry["recommended"]
            .as_array()
            .expect("recommended")
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        let (want_stats, want_in_frame) = expected_stats(file);
        for (mode, offsets) in [
            ("manifest chunks", chunks.clone()),
            ("whole", Vec::new()),
            ("byte by byte", (1..data.len()).collect()),
        ] {
            let mut decoder = Decoder::new(BIG_LIMIT);
            let out = feed_split_at(&mut decoder, &data, &offsets);
            assert_eq!(control_ids(&out), recommended, "{file} fed {mode}");
            assert_eq!(decoder.stats(), want_stats, "{file} fed {mode}");
            assert_eq!(decoder.in_frame(), want_in_frame, "{file} fed {mode}");
            for d in &out {
                let f = frame(d);
                // Forwarded byte-identical: the wire form is a slice of the input.
                assert!(data.windows(f.as_wire().len()).any(|w| w == f.as_wire()));
            }
        }
    }
}

#[test]
fn a_frame_split_between_fs_and_cr_waits_for_the_cr() {
    let wire = encode(b"MSH|^~\\&|A");
    let mut decoder = Decoder::new(1024);
    let mut buf = BytesMut::from(&wire[..wire.len() - 1]);
    assert_eq!(decoder.decode(&mut buf), None);
    assert!(decoder.in_frame());
    assert_eq!(buf.len(), wire.len() - 1, "partial frame is kept");
    buf.put_u8(CARRIAGE_RETURN);
    let out = decoder.decode(&mut buf).expect("frame");
    assert_eq!(frame(&out).as_wire(), &wire[..]);
    assert!(!decoder.in_frame());
    assert!(buf.is_empty());
}

#[test]
fn vt_inside_a_frame_restarts_it_and_drops_the_partial() {
    let mut decoder = Decoder::new(1024);
    let mut buf = BytesMut::from(&b"\x0babc\x0bdef\x1c\x0d"[..]);
    let out = decoder.decode(&mut buf).expect("frame");
    assert_eq!(frame(&out).payload(), b"def");
    assert_eq!(decoder.stats(), stats(0, 1, 0, 0));
}

#[test]
fn fs_followed_by_vt_drops_the_unfinished_frame_and_starts_a_new_one() {
    let mut decoder = Decoder::new(1024);
    let out = feed_in_reads(&mut decoder, b"\x0babc\x1c\x0bdef\x1c\x0d", 1);
    assert_eq!(out.len(), 1);
    assert_eq!(frame(&out[0]).payload(), b"def");
    assert_eq!(decoder.stats(), stats(0, 1, 0, 0));
}

#[test]
fn fs_followed_by_another_byte_is_malformed_and_the_decoder_resyncs_to_the_next_vt() {
    let data = b"\x0babc\x1cXYZ\x0bdef\x1c\x0d";
    for read in [1, 3, data.len()] {
        let mut decoder = Decoder::new(1024);
        let out = feed_in_reads(&mut decoder, data, read);
        assert_eq!(out.len(), 1, "read size {read}");
        assert_eq!(frame(&out[0]).payload(), b"def");
        // The byte after 0x1C and the rest up to 0x0B are noise.
        assert_eq!(decoder.stats(), stats(3, 0, 1, 0), "read size {read}");
    }
}

#[test]
fn empty_frames_are_dropped_and_counted() {
    let mut decoder = Decoder::new(1024);
    let mut buf = BytesMut::from(&b"\x0b\x1c\x0d\x0b\x1c\x0d"[..]);
    assert_eq!(decoder.decode(&mut buf), None);
    assert_eq!(decoder.stats(), stats(0, 0, 0, 2));
    assert!(buf.is_empty());
    assert!(!decoder.in_frame());
}

#[test]
fn noise_outside_frames_is_consumed_so_the_buffer_does_not_grow() {
    let mut decoder = Decoder::new(1024);
    let mut buf = BytesMut::from(&b"hello\r\n"[..]);
    assert_eq!(decoder.decode(&mut buf), None);
    assert!(buf.is_empty());
    assert!(!decoder.in_frame());
    assert_eq!(decoder.stats().noise_bytes, 7);
}

#[test]
fn in_frame_is_true_only_between_a_start_block_and_its_end() {
    let mut decoder = Decoder::new(1024);
    let mut buf = BytesMut::new();
    assert!(!decoder.in_frame());
    buf.extend_from_slice(b"\r\n\x0bMSH");
    assert_eq!(decoder.decode(&mut buf), None);
    assert!(decoder.in_frame());
    buf.extend_from_slice(b"|x\x1c\x0d");
    assert!(decoder.decode(&mut buf).is_some());
    assert!(!decoder.in_frame());
}

#[test]
fn payload_at_the_limit_is_delivered_and_one_byte_more_is_oversize() {
    let limit = 100;
    let at_limit = vec![b'a'; limit];
    let over = vec![b'b'; limit + 1];
    for read in [1, 7, 1000] {
        let mut decoder = Decoder::new(limit);
        let mut data = encode(&at_limit).to_vec();
        data.extend_from_slice(&encode(&over));
        let out = feed_in_reads(&mut decoder, &data, read);
        assert_eq!(out.len(), 2, "read size {read}");
        assert_eq!(frame(&out[0]).payload(), &at_limit[..]);
        assert_eq!(
            out[1],
            Decoded::Oversize {
                head: Bytes::from(over.clone()),
                len: (limit + 1) as u64
            }
        );
    }
}

#[test]
fn an_oversize_frame_is_reported_once_with_its_head_and_length_then_decoding_goes_on() {
    let limit = 100;
    let big: Vec<u8> = (0..5000u32).map(|i| b'A' + (i % 26) as u8).collect();
    let mut data = encode(&big).to_vec();
    data.extend_from_slice(&encode(b"MSH|^~\\&|next"));
    for read in [1, 13, 1460, data.len()] {
        let mut decoder = Decoder::new(limit);
        let out = feed_in_reads(&mut decoder, &data, read);
        assert_eq!(out.len(), 2, "read size {read}");
        assert_eq!(
            out[0],
            Decoded::Oversize {
                head: Bytes::copy_from_slice(&big[..HEAD_KEEP]),
                len: 5000
            },
            "read size {read}"
        );
        assert_eq!(frame(&out[1]).payload(), b"MSH|^~\\&|next");
        assert_eq!(decoder.stats().oversize_frames, 1);
        assert!(!decoder.in_frame());
    }
}

#[test]
fn an_oversize_frame_interrupted_by_a_new_start_block_is_dropped_not_reported() {
    let mut data = vec![START_BLOCK];
    data.extend_from_slice(&[b'x'; 500]);
    data.extend_from_slice(&encode(b"ok"));
    for read in [1, 64, data.len()] {
        let mut decoder = Decoder::new(100);
        let out = feed_in_reads(&mut decoder, &data, read);
        assert_eq!(out.len(), 1, "read size {read}");
        assert_eq!(frame(&out[0]).payload(), b"ok");
        assert_eq!(decoder.stats(), stats(0, 1, 0, 0), "read size {read}");
    }
}

#[test]
fn an_oversize_frame_with_a_malformed_end_is_dropped_and_counted_as_malformed() {
    let mut data = vec![START_BLOCK];
    data.extend_from_slice(&[b'x'; 500]);
    data.extend_from_slice(b"\x1cZ");
    data.extend_from_slice(&encode(b"ok"));
    for read in [1, 64, data.len()] {
        let mut decoder = Decoder::new(100);
        let out = feed_in_reads(&mut decoder, &data, read);
        assert_eq!(out.len(), 1, "read size {read}");
        assert_eq!(frame(&out[0]).payload(), b"ok");
        assert_eq!(decoder.stats(), stats(1, 0, 1, 0), "read size {read}");
    }
}

#[test]
fn memory_stays_bounded_while_a_huge_frame_trickles_in() {
    let limit = 64 * 1024;
    let read = 1024;
    let mut decoder = Decoder::new(limit);
    let mut buf = BytesMut::new();
    buf.put_u8(START_BLOCK);
    let chunk = vec![b'z'; read];
    let total = 8 << 20;
    let mut max_cap = 0;
    for _ in 0..total / read {
        buf.extend_from_slice(&chunk);
        assert_eq!(decoder.decode(&mut buf), None);
        assert!(buf.len() <= limit + 2);
        assert!(decoder.retained_bytes() <= HEAD_KEEP);
        max_cap = max_cap.max(buf.capacity());
    }
    assert!(
        max_cap <= 2 * (limit + read),
        "buffer capacity grew to {max_cap}"
    );
    buf.extend_from_slice(&[END_BLOCK, CARRIAGE_RETURN]);
    match decoder.decode(&mut buf) {
        Some(Decoded::Oversize { head, len }) => {
            assert_eq!(len, total as u64);
            assert_eq!(head.len(), HEAD_KEEP);
        }
        other => panic!("expected oversize, got {other:?}"),
    }
}

#[test]
fn a_16_mib_frame_trickled_in_1_kib_reads_is_scanned_in_linear_time() {
    let len = 16 << 20;
    let payload: Vec<u8> = (0..len).map(|i| b'0' + (i % 10) as u8).collect();
    let wire = encode(&payload);
    let mut decoder = Decoder::new(32 << 20);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for read in wire.chunks(1024) {
        buf.extend_from_slice(read);
        while let Some(d) = decoder.decode(&mut buf) {
            out.push(d);
        }
    }
    assert_eq!(out.len(), 1);
    assert_eq!(frame(&out[0]).payload(), &payload[..]);
    assert!(
        decoder.scanned_bytes < 2 * wire.len() as u64,
        "scanned {} bytes for a {} byte frame",
        decoder.scanned_bytes,
        wire.len()
    );
}

#[test]
fn many_frames_in_one_buffer_are_split_off_without_copying() {
    let data = std::fs::read(corpus("frames/03_hundred_frames_one_buffer.bin")).unwrap();
    let mut buf = BytesMut::from(&data[..]);
    let base = buf.as_ptr() as usize;
    let mut decoder = Decoder::new(BIG_LIMIT);
    let mut offset = 0;
    while let Some(d) = decoder.decode(&mut buf) {
        let f = frame(&d);
        assert_eq!(
            f.as_wire().as_ptr() as usize,
            base + offset,
            "zero-copy slice"
        );
        offset += f.as_wire().len();
    }
    assert_eq!(offset, data.len());
}

#[test]
fn encoded_corpus_messages_decode_to_the_same_payload() {
    let mut count = 0;
    for path in corpus_files(Path::new(CORPUS), "hl7") {
        let payload = std::fs::read(&path).unwrap();
        let wire = encode(&payload);
        let mut appended = BytesMut::from(&b"noise"[..]);
        encode_into(&payload, &mut appended);
        assert_eq!(&appended[5..], &wire[..]);
        for read in [1460, wire.len()] {
            let mut decoder = Decoder::new(BIG_LIMIT);
            let out = feed_in_reads(&mut decoder, &wire, read);
            assert_eq!(out.len(), 1, "{}", path.display());
            let f = frame(&out[0]);
            assert_eq!(f.payload(), &payload[..], "{}", path.display());
            assert_eq!(f.as_wire(), &wire[..]);
            assert_eq!(f.len(), payload.len());
            assert_eq!(f.clone().into_wire(), wire);
        }
        count += 1;
    }
    assert_eq!(count, 28);
}

#[test]
fn debug_output_never_shows_payload_bytes() {
    let out = Decoder::new(1024)
        .decode(&mut BytesMut::from(&encode(b"SECRET-PATIENT")[..]))
        .unwrap();
    let shown = format!("{out:?}");
    assert_eq!(shown, "Frame(Frame { len: 14 })");
    let oversize = Decoded::Oversize {
        head: Bytes::from_static(b"SECRET"),
        len: 9,
    };
    assert_eq!(format!("{oversize:?}"), "Oversize { head_len: 6, len: 9 }");
    let mut decoder = Decoder::new(4);
    decoder.decode(&mut BytesMut::from(&b"\x0bSECRET-PATIENT"[..]));
    assert!(!format!("{decoder:?}").contains("SECRET"));
}

#[test]
fn a_caller_that_drops_buffered_bytes_does_not_make_the_decoder_panic() {
    let mut decoder = Decoder::new(1024);
    let mut buf = BytesMut::from(&b"\x0bpartial"[..]);
    assert_eq!(decoder.decode(&mut buf), None);
    buf.clear();
    buf.extend_from_slice(b"x");
    assert_eq!(decoder.decode(&mut buf), None);
    buf.extend_from_slice(&encode(b"ok"));
    let out = decoder.decode(&mut buf).expect("frame after resync");
    assert_eq!(frame(&out).payload(), b"ok");
}

/// Files under `dir` (recursively) with the given extension (`None` = all).
fn corpus_files_any(dir: &Path, ext: Option<&str>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(corpus_files_any(&path, ext));
        } else if ext.is_none_or(|e| path.extension().is_some_and(|x| x == e)) {
            files.push(path);
        }
    }
    files.sort();
    files
}

fn corpus_files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == ext))
        .collect();
    files.sort();
    files
}

#[test]
fn fuzz_decode_holds_on_every_corpus_file_raw_and_framed() {
    let files = corpus_files_any(Path::new(CORPUS), None);
    assert!(files.len() > 50);
    for path in files {
        let data = std::fs::read(&path).unwrap();
        fuzz_decode(&data);
        fuzz_decode(&encode(&data));
        // Two framed copies back to back, with a newline between them.
        let mut twice = encode(&data).to_vec();
        twice.push(b'\n');
        twice.extend_from_slice(&encode(&data));
        fuzz_decode(&twice);
    }
    fuzz_decode(&[]);
}

#[test]
fn fuzz_decode_holds_on_adversarial_delimiter_soup() {
    // Deterministic pseudo-random streams dense in 0x0B/0x1C/0x0D.
    let alphabet = [START_BLOCK, END_BLOCK, CARRIAGE_RETURN, b'\n', b'M', b'|'];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for round in 0..200 {
        let len = 1 + round * 37;
        let data: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let sparse = state % (2 + round as u64 % 700);
                if sparse == 0 {
                    alphabet[(state >> 8) as usize % alphabet.len()]
                } else {
                    b'a' + (state >> 16) as u8 % 26
                }
            })
            .collect();
        fuzz_decode(&data);
    }
}

// ---- Other framings ----------------------------------------------------------------

const STX: u8 = 0x02;
const ETX: u8 = 0x03;

fn framing(start: u8, end: &[u8]) -> Framing {
    Framing::new(start, end).expect("valid framing")
}

/// Framings unlike MLLP: one-byte ends, other bytes, and MLLP's bytes in swapped roles.
fn custom_framings() -> Vec<Framing> {
    vec![
        framing(STX, &[ETX]),
        framing(START_BLOCK, &[END_BLOCK]),
        framing(STX, &[ETX, CARRIAGE_RETURN]),
        framing(END_BLOCK, &[START_BLOCK, b'\n']),
    ]
}

/// Feeds `data` whole, byte by byte and, when it is small, in two reads split at every
/// offset; asserts every run gives the same outputs, counters and state, and returns them.
fn decode_every_split(framing: Framing, data: &[u8]) -> (Vec<Decoded>, DecodeStats, bool) {
    let run = |offsets: &[usize]| {
        let mut decoder = Decoder::with_framing(BIG_LIMIT, framing);
        let out = feed_split_at(&mut decoder, data, offsets);
        (out, decoder.stats(), decoder.in_frame())
    };
    let whole = run(&[]);
    let byte_by_byte: Vec<usize> = (1..data.len()).collect();
    assert!(run(&byte_by_byte) == whole, "byte by byte differs");
    if data.len() <= 2048 {
        for at in 1..data.len() {
            assert!(run(&[at]) == whole, "split at {at} differs");
        }
    }
    whole
}

#[test]
fn framing_mllp_is_the_default_and_shows_its_bytes() {
    assert_eq!(Framing::default(), Framing::MLLP);
    assert_eq!(Framing::MLLP.start(), 0x0B);
    assert_eq!(Framing::MLLP.end(), &[0x1C, 0x0D]);
    assert_eq!(framing(0x0B, &[0x1C, 0x0D]), Framing::MLLP);
    let stx = framing(STX, &[ETX]);
    assert_eq!((stx.start(), stx.end()), (STX, &[ETX][..]));
    assert_eq!(Decoder::new(10).framing(), Framing::MLLP);
    assert_eq!(Decoder::with_framing(10, stx).framing(), stx);
    assert_eq!(
        format!("{:?}", Framing::MLLP),
        "Framing { start: 0x0B, end: [0x1C, 0x0D] }"
    );
    assert_eq!(format!("{stx:?}"), "Framing { start: 0x02, end: [0x03] }");
}

#[test]
fn framings_the_decoder_could_confuse_with_message_text_are_refused_with_the_reason() {
    let cases: [(u8, &[u8], &str); 14] = [
        (0x0B, &[], "the end block must be 1 or 2 bytes, not 0"),
        (0x0B, &[0x1C, 0x0D, 0x0A], "the end block must be 1 or 2 bytes, not 3"),
        (b'A', &[0x1C], "the start byte 0x41 is the printable character 'A', which occurs in message text; use a control byte (0x00 to 0x1F)"),
        (0x0B, &[0x20], "the end byte 0x20 is the printable character ' ', which occurs in message text; use a control byte (0x00 to 0x1F)"),
        (0x0B, &[b'|', 0x0D], "the first end byte 0x7C is the printable character '|', which occurs in message text; use a control byte (0x00 to 0x1F)"),
        (0x0B, &[0x1C, b'~'], "the second end byte 0x7E is the printable character '~', which occurs in message text; use a control byte (0x00 to 0x1F)"),
        (0x0B, &[0x0D], "the end byte may not be 0x0D: CR ends every HL7 segment, so every message would be cut at its first segment; use e.g. [0x1C] or [0x1C, 0x0D]"),
        (0x0B, &[0x0A], "the end byte may not be 0x0A: LF ends HL7 segments for many senders, so every message would be cut at its first segment; use e.g. [0x1C] or [0x1C, 0x0D]"),
        (0x0D, &[0x1C, 0x0D], "the start byte may not be 0x0D: CR ends every HL7 segment, so every segment would restart the frame"),
        (0x0B, &[0x0A, 0x0D], "the first end byte may not be 0x0A: LF ends HL7 segments for many senders, so every message would be cut at its first segment; it may only come second, as in [0x1C, 0x0D]"),
        (0xE9, &[0x1C], "the start byte 0xE9 is not ASCII and occurs in UTF-8 and ISO 8859 message text; use a control byte (0x00 to 0x1F)"),
        (0x0B, &[0x0B], "the start byte and the end byte are both 0x0B; they must differ"),
        (0x1C, &[0x1C, 0x0D], "the start byte and the first end byte are both 0x1C; they must differ"),
        (0x0B, &[0x1C, 0x0B], "the second end byte 0x0B repeats the start byte; it must differ"),
    ];
    for (start, end, message) in cases {
        assert_eq!(
            Framing::new(start, end),
            Err(message.to_string()),
            "start {start:#04x}, end {end:02x?}"
        );
    }
    // The second end byte may be anything but printable or the start byte: CR, LF, the
    // first end byte again, a non-ASCII byte.
    for end in [[0x1C, 0x0A], [0x1C, 0x1C], [0x1C, 0xFF], [0x1C, 0x00]] {
        assert!(Framing::new(0x0B, &end).is_ok(), "{end:02x?}");
    }
    assert!(Framing::new(0x7F, &[0x00]).is_ok());
}

#[test]
fn encode_with_and_from_payload_with_use_the_framing_bytes() {
    let stx = framing(STX, &[ETX]);
    assert_eq!(&encode_with(stx, b"MSH|x")[..], b"\x02MSH|x\x03");
    assert_eq!(encode_with(Framing::MLLP, b"MSH|x"), encode(b"MSH|x"));
    let mut dst = BytesMut::from(&b"noise"[..]);
    encode_into_with(stx, b"ab", &mut dst);
    assert_eq!(&dst[..], b"noise\x02ab\x03");

    // MLLP's bytes are plain payload bytes in another framing, and the reverse.
    let f = Frame::from_payload_with(stx, b"a\x0bb\x1cc").expect("frame");
    assert_eq!(f.as_wire(), b"\x02a\x0bb\x1cc\x03");
    assert_eq!(f.payload(), b"a\x0bb\x1cc");
    assert_eq!(&f.payload_bytes()[..], b"a\x0bb\x1cc");
    assert_eq!(f.len(), 5);
    assert_eq!(Frame::from_payload_with(stx, b"a\x02b"), None);
    assert_eq!(Frame::from_payload_with(stx, b"a\x03b"), None);
    assert_eq!(Frame::from_payload_with(stx, b""), None);
    assert_eq!(
        Frame::from_payload(b"a\x02\x03b").expect("mllp").as_wire(),
        b"\x0ba\x02\x03b\x1c\x0d"
    );
    let two = framing(STX, &[ETX, b'\n']);
    let f = Frame::from_payload_with(two, b"MSH\r").expect("frame");
    assert_eq!(f.clone().into_wire(), encode_with(two, b"MSH\r"));
    assert_eq!((f.payload(), f.len()), (&b"MSH\r"[..], 4));
}

#[test]
fn every_corpus_stream_reframed_by_byte_swapping_decodes_identically_with_a_two_byte_end() {
    // Swapping MLLP's three bytes for the framing's three bytes (and back) leaves every
    // other byte alone, so malformed streams stay malformed in the same way.
    let manifest = std::fs::read(corpus("frames/manifest.json")).expect("manifest");
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).expect("json");
    let twos: Vec<Framing> = custom_framings()
        .into_iter()
        .filter(|f| f.end().len() == 2)
        .collect();
    assert_eq!(twos.len(), 2);
    for framing in twos {
        let [e0, e1] = [framing.end()[0], framing.end()[1]];
        let to_custom = permutation(
            [START_BLOCK, END_BLOCK, CARRIAGE_RETURN],
            [framing.start(), e0, e1],
        );
        for entry in manifest.as_array().expect("array") {
            let file = entry["file"].as_str().expect("file");
            let mllp = std::fs::read(corpus(&format!("frames/{file}"))).expect("stream");
            let data: Vec<u8> = mllp.iter().map(|&b| to_custom[usize::from(b)]).collect();
            let recommended: Vec<String> = entry["recommended"]
                .as_array()
                .expect("recommended")
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect();
            let (out, stats, in_frame) = decode_every_split(framing, &data);
            let ctx = format!("{file} in {framing:?}");
            assert_eq!(control_ids(&out), recommended, "{ctx}");
            assert_eq!((stats, in_frame), expected_stats(file), "{ctx}");
            let mut standard = Decoder::new(BIG_LIMIT);
            let want = feed_split_at(&mut standard, &mllp, &[]);
            assert_eq!(out.len(), want.len(), "{ctx}");
            for (got, want) in out.iter().zip(&want) {
                let (got, want) = (frame(got), frame(want));
                let back: Vec<u8> = got
                    .payload()
                    .iter()
                    .map(|&b| to_custom[usize::from(b)])
                    .collect();
                assert_eq!(
                    back,
                    want.payload(),
                    "{ctx}: the swap is its own inverse here"
                );
                assert!(got.as_wire().starts_with(&[framing.start()]));
                assert!(got.as_wire().ends_with(&[e0, e1]));
                assert!(data
                    .windows(got.as_wire().len())
                    .any(|w| w == got.as_wire()));
            }
        }
    }
}

#[test]
fn corpus_frames_reframed_with_a_custom_framing_decode_identically_however_split() {
    let manifest = std::fs::read(corpus("frames/manifest.json")).expect("manifest");
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).expect("json");
    for framing in custom_framings() {
        for entry in manifest.as_array().expect("array") {
            let file = entry["file"].as_str().expect("file");
            let mllp = std::fs::read(corpus(&format!("frames/{file}"))).expect("stream");
            let mut standard = Decoder::new(BIG_LIMIT);
            let payloads: Vec<Vec<u8>> = feed_split_at(&mut standard, &mllp, &[])
                .iter()
                .map(|d| frame(d).payload().to_vec())
                .collect();
            // The same frames in the custom framing, with CR LF noise between them.
            let mut data = Vec::new();
            for p in &payloads {
                data.extend_from_slice(b"\r\n");
                data.extend_from_slice(&encode_with(framing, p));
            }
            let (out, counters, in_frame) = decode_every_split(framing, &data);
            let ctx = format!("{file} in {framing:?}");
            let got: Vec<&[u8]> = out.iter().map(|d| frame(d).payload()).collect();
            let want: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
            assert_eq!(got, want, "{ctx}");
            for (d, p) in out.iter().zip(&payloads) {
                assert_eq!(frame(d).as_wire(), &encode_with(framing, p)[..], "{ctx}");
            }
            let noise = 2 * payloads.len() as u64;
            assert_eq!(counters, stats(noise, 0, 0, 0), "{ctx}");
            assert!(!in_frame, "{ctx}");
        }
    }
}

#[test]
fn encoded_corpus_messages_decode_to_the_same_payload_in_custom_framings() {
    for framing in custom_framings() {
        for path in corpus_files(Path::new(CORPUS), "hl7") {
            let payload = std::fs::read(&path).unwrap();
            let Some(expected) = Frame::from_payload_with(framing, &payload) else {
                panic!("{} contains a byte of {framing:?}", path.display());
            };
            let wire = encode_with(framing, &payload);
            for read in [1460, wire.len()] {
                let mut decoder = Decoder::with_framing(BIG_LIMIT, framing);
                let out = feed_in_reads(&mut decoder, &wire, read);
                assert_eq!(
                    out,
                    vec![Decoded::Frame(expected.clone())],
                    "{}",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn with_a_one_byte_end_the_end_byte_alone_ends_the_frame() {
    let stx = framing(STX, &[ETX]);
    type Case<'a> = (&'a [u8], &'a [&'a [u8]], DecodeStats, bool);
    let cases: [Case<'_>; 6] = [
        // What follows the end byte is outside the frame: noise, or a new start.
        (
            b"\x02abc\x03X\x02def\x03",
            &[b"abc", b"def"],
            stats(1, 0, 0, 0),
            false,
        ),
        (
            b"\x02abc\x03\x02def\x03\r\n",
            &[b"abc", b"def"],
            stats(2, 0, 0, 0),
            false,
        ),
        // A start inside a frame restarts it, as in MLLP.
        (b"\x02abc\x02def\x03", &[b"def"], stats(0, 1, 0, 0), false),
        // Empty frames are dropped; MLLP's bytes are payload.
        (
            b"\x02\x03\x02\x0bx\x1c\x0d\x03",
            &[b"\x0bx\x1c\x0d"],
            stats(0, 0, 0, 1),
            false,
        ),
        // End of input inside a frame: still waiting.
        (b"\x02abc", &[], stats(0, 0, 0, 0), true),
        (b"noise\x03\x02", &[], stats(6, 0, 0, 0), true),
    ];
    for (data, payloads, want_stats, want_in_frame) in cases {
        let (out, stats, in_frame) = decode_every_split(stx, data);
        let got: Vec<&[u8]> = out.iter().map(|d| frame(d).payload()).collect();
        assert_eq!(got, payloads, "{data:02x?}");
        assert_eq!(
            (stats, in_frame),
            (want_stats, want_in_frame),
            "{data:02x?}"
        );
    }
}

#[test]
fn an_oversize_frame_with_a_one_byte_end_is_reported_at_its_end_byte() {
    let limit = 100;
    let vt_fs = framing(START_BLOCK, &[END_BLOCK]);
    let big: Vec<u8> = (0..5000u32).map(|i| b'A' + (i % 26) as u8).collect();
    let at_limit = vec![b'a'; limit];
    let mut data = encode_with(vt_fs, &big).to_vec();
    data.extend_from_slice(&encode_with(vt_fs, &at_limit));
    data.extend_from_slice(&encode_with(vt_fs, &[b'b'; 101]));
    // Oversize, then interrupted by a start: dropped, not reported.
    data.push(START_BLOCK);
    data.extend_from_slice(&[b'x'; 500]);
    data.extend_from_slice(&encode_with(vt_fs, b"ok"));
    for read in [1, 13, 1460, data.len()] {
        let mut decoder = Decoder::with_framing(limit, vt_fs);
        let out = feed_in_reads(&mut decoder, &data, read);
        assert_eq!(out.len(), 4, "read size {read}");
        assert_eq!(
            out[0],
            Decoded::Oversize {
                head: Bytes::copy_from_slice(&big[..HEAD_KEEP]),
                len: 5000
            }
        );
        assert_eq!(frame(&out[1]).payload(), &at_limit[..]);
        assert_eq!(
            out[2],
            Decoded::Oversize {
                head: Bytes::from(vec![b'b'; 101]),
                len: 101
            }
        );
        assert_eq!(frame(&out[3]).payload(), b"ok");
        let s = decoder.stats();
        assert_eq!(
            (s.oversize_frames, s.restarted_frames),
            (2, 1),
            "read size {read}"
        );
        assert!(!decoder.in_frame());
    }
}

#[test]
fn a_custom_two_byte_end_split_between_its_bytes_waits_for_the_second() {
    let f = framing(STX, &[ETX, b'\n']);
    let wire = encode_with(f, b"MSH|^~\\&|A");
    let mut decoder = Decoder::with_framing(1024, f);
    let mut buf = BytesMut::from(&wire[..wire.len() - 1]);
    assert_eq!(decoder.decode(&mut buf), None);
    assert!(decoder.in_frame());
    buf.put_u8(b'\n');
    let out = decoder.decode(&mut buf).expect("frame");
    assert_eq!(frame(&out).as_wire(), &wire[..]);
    // ETX followed by CR (MLLP's second byte) is malformed here.
    let mut decoder = Decoder::with_framing(1024, f);
    let out = feed_in_reads(&mut decoder, b"\x02abc\x03\r\x02ok\x03\n", 1);
    assert_eq!(out.len(), 1);
    assert_eq!(frame(&out[0]).payload(), b"ok");
    assert_eq!(decoder.stats(), stats(1, 0, 1, 0));
}

#[test]
fn a_custom_framing_decodes_many_frames_without_copying() {
    let f = framing(STX, &[ETX]);
    let data: Vec<u8> = (0..100)
        .flat_map(|i| encode_with(f, format!("MSH|^~\\&|{i}").as_bytes()).to_vec())
        .collect();
    let mut buf = BytesMut::from(&data[..]);
    let base = buf.as_ptr() as usize;
    let mut decoder = Decoder::with_framing(BIG_LIMIT, f);
    let mut offset = 0;
    while let Some(d) = decoder.decode(&mut buf) {
        assert_eq!(frame(&d).as_wire().as_ptr() as usize, base + offset);
        offset += frame(&d).as_wire().len();
    }
    assert_eq!(offset, data.len());
}

#[test]
fn the_framing_permutation_swaps_only_the_named_bytes() {
    let map = permutation(
        [STX, ETX, CARRIAGE_RETURN],
        [START_BLOCK, END_BLOCK, CARRIAGE_RETURN],
    );
    let mut seen = [false; 256];
    for (b, &m) in map.iter().enumerate() {
        assert!(!seen[usize::from(m)], "not a permutation");
        seen[usize::from(m)] = true;
        let expected = match b as u8 {
            STX => START_BLOCK,
            START_BLOCK => STX,
            ETX => END_BLOCK,
            END_BLOCK => ETX,
            other => other,
        };
        assert_eq!(m, expected, "byte {b:#04x}");
    }
}

/// `fuzz_decode_framed` input: the framing header, then the stream.
fn framed_input(start: u8, end: &[u8], stream: &[u8]) -> Vec<u8> {
    let mut data = vec![start, (end.len() == 2) as u8, end[0], *end.last().unwrap()];
    data.extend_from_slice(stream);
    data
}

#[test]
fn fuzz_decode_framed_holds_on_corpus_files_in_custom_framings() {
    for f in custom_framings() {
        for path in corpus_files_any(Path::new(CORPUS), None) {
            let data = std::fs::read(&path).unwrap();
            fuzz_decode_framed(&framed_input(f.start(), f.end(), &data));
            let mut twice = encode_with(f, &data).to_vec();
            twice.push(b'\n');
            twice.extend_from_slice(&encode_with(f, &data));
            fuzz_decode_framed(&framed_input(f.start(), f.end(), &twice));
        }
    }
    // Too short, or a refused framing: skipped, no panic.
    fuzz_decode_framed(&[]);
    fuzz_decode_framed(b"MSH|");
    fuzz_decode_framed(&framed_input(0x0B, &[0x0D], b"\x0bMSH\r\x0d"));
}

#[test]
fn fuzz_decode_framed_holds_on_adversarial_delimiter_soup() {
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for (start, end) in [
        (STX, &[ETX][..]),
        (STX, &[ETX, CARRIAGE_RETURN][..]),
        (START_BLOCK, &[END_BLOCK, END_BLOCK][..]),
        (END_BLOCK, &[START_BLOCK, b'\n'][..]),
    ] {
        let mut alphabet = vec![start, START_BLOCK, END_BLOCK, CARRIAGE_RETURN, b'\n', b'M'];
        alphabet.extend_from_slice(end);
        for round in 0..100 {
            let len = 1 + round * 53;
            let stream: Vec<u8> = (0..len)
                .map(|_| {
                    let r = next();
                    if r % (2 + round as u64 % 300) == 0 {
                        alphabet[(r >> 8) as usize % alphabet.len()]
                    } else {
                        b'a' + (r >> 16) as u8 % 26
                    }
                })
                .collect();
            fuzz_decode_framed(&framed_input(start, end, &stream));
        }
    }
}

mod split_streams {
    use super::super::*;
    use proptest::prelude::*;

    /// Everything a decoder hands out for `input` fed in the given chunk sizes.
    fn decode_in_chunks(input: &[u8], chunks: &[usize]) -> (Vec<Vec<u8>>, Vec<u64>, DecodeStats) {
        let mut decoder = Decoder::new(64);
        let mut buf = BytesMut::new();
        let (mut frames, mut oversize) = (Vec::new(), Vec::new());
        let mut rest = input;
        let mut sizes = chunks.iter().cycle();
        while !rest.is_empty() {
            let n = (*sizes.next().unwrap()).clamp(1, rest.len());
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            while let Some(item) = decoder.decode(&mut buf) {
                match item {
                    Decoded::Frame(f) => frames.push(f.payload().to_vec()),
                    Decoded::Oversize { len, .. } => oversize.push(len),
                }
            }
        }
        (frames, oversize, decoder.stats())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// Random streams dense in framing bytes, split at random points, decode exactly as
        /// when they arrive in one read.
        #[test]
        fn random_streams_split_at_random_points_decode_the_same_as_unsplit(
            stream in proptest::collection::vec(prop_oneof![
                4 => any::<u8>(),
                1 => Just(START_BLOCK),
                1 => Just(END_BLOCK),
                1 => Just(CARRIAGE_RETURN),
            ], 0..600),
            chunks in proptest::collection::vec(1usize..40, 1..8),
        ) {
            let whole = decode_in_chunks(&stream, &[usize::MAX]);
            let split = decode_in_chunks(&stream, &chunks);
            prop_assert_eq!(&whole, &split);
            for payload in &whole.0 {
                prop_assert!(!payload.contains(&START_BLOCK) && !payload.contains(&END_BLOCK));
            }
        }
    }
}

#[test]
fn a_payload_with_either_sides_framing_bytes_is_caught_only_when_the_sides_differ() {
    let stx = Framing::new(0x02, &[0x03]).unwrap();
    let mllp = Framing::MLLP;
    let clean = b"MSH|^~\\&|A\rPID|1\r";
    assert_eq!(Framing::smuggled_byte(clean, stx, mllp), None);
    assert_eq!(
        Framing::smuggled_byte(b"MSH|A\x1c\r\x0bMSH|B", stx, mllp),
        Some(SmuggledByte(0x1C))
    );
    assert_eq!(
        Framing::smuggled_byte(b"MSH|A\x0bB", stx, mllp),
        Some(SmuggledByte(0x0B))
    );
    assert_eq!(
        Framing::smuggled_byte(b"MSH|A\x03B\x02", mllp, stx),
        Some(SmuggledByte(0x03))
    );
    assert_eq!(
        Framing::smuggled_byte(b"MSH|A\x02B", mllp, stx),
        Some(SmuggledByte(0x02))
    );
    // Alike on both sides: nothing to smuggle past (the decoder keeps them out).
    assert_eq!(Framing::smuggled_byte(b"MSH|A\x1cB", mllp, mllp), None);
}
