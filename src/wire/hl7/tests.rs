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

#[test]
fn a_header_is_ambiguous_with_a_control_byte_or_mixed_terminators() {
    let ok = |p: &[u8]| assert_eq!(ambiguity(p), None, "{:?}", String::from_utf8_lossy(p));
    ok(b"MSH|^~\\&|A|B|C|D|2024||ADT^A01|1|P|2.5\rPID|1\r");
    ok(b"MSH|^~\\&|A|B|C|D|2024||ADT^A01|1|P|2.5\r\nPID|1\r\n");
    ok(b"MSH|^~\\&|A|B|C|D|2024||ADT^A01|1|P|2.5\nPID|1\n");
    ok(b"MSH|^~\\&|A|B|C|D|2024||ADT^A01|1|P|2.5");
    // A stray LF after the last CR segment is outside the header: still one reading of it.
    ok(b"MSH|^~\\&|A|B|C|D|2024||ADT^A01|1|P|2.5\rPID|1\r\n");
    assert_eq!(
        ambiguity(b"MSH|^~\\&|A|B|C|D|2024||ADT^A01|1\n|T|2.5\rPID|1\r"),
        Some(Ambiguity::MixedTerminators)
    );
    assert_eq!(
        ambiguity(b"MSH|^~\\&|A|B|C|D|2024||ADT^A01|1\nPID|1\rOBX|1\r"),
        Some(Ambiguity::MixedTerminators)
    );
    for b in [0x00u8, 0x01, 0x09, 0x0B, 0x1C, 0x1F, 0x7F] {
        let mut p = b"MSH|^~\\&|A|B|C|D|2024||ADT^A01|1|P".to_vec();
        p.push(b);
        p.extend_from_slice(b"|2.5\rPID|1\r");
        assert_eq!(ambiguity(&p), Some(Ambiguity::ControlByte(b)));
    }
    // Control bytes after the header are the payload's business, not the header's.
    ok(b"MSH|^~\\&|A|B|C|D|2024||ADT^A01|1|P|2.5\rOBX|1|TX|||a\x01b\r");
}

#[test]
fn later_messages_are_found_at_every_msh_segment_after_the_first() {
    let one = b"MSH|^~\\&|A|B|C|D|2024||ADT^A01|1|P|2.5\rPID|1|MSH|x\rOBX|1|TX|||MSHy\r";
    assert_eq!(later_messages(one).count(), 0);
    let two = b"MSH|^~\\&|A|B|C|D|2024||ADT^A01|A|P|2.5\rPID|1\rMSH|^~\\&|A|B|C|D|2024||ADT^A01|B|T|2.5\rPID|1\r";
    let later: Vec<&[u8]> = later_messages(two).collect();
    assert_eq!(
        later,
        [&b"MSH|^~\\&|A|B|C|D|2024||ADT^A01|B|T|2.5\rPID|1\r"[..]]
    );
    // LF terminators and another field separator per message; MSHX is not a header.
    let three = b"MSH|^~\\&|A|B|C|D|2024||ADT^A01|A|P|2.5\nMSHX|1\nMSH#^~\\&#A#B#C#D#2024##ADT^A01#B#P#2.5\nMSH|^~\\&|C\n";
    assert_eq!(later_messages(three).count(), 2);
    assert_eq!(later_messages(b"MSH").count(), 0);
    assert_eq!(later_messages(b"").count(), 0);
}

#[test]
fn coded_header_values_with_repetitions_escapes_or_blanks_are_malformed() {
    let h = |msh9: &str, msh11: &str, msh12: &str| {
        format!("MSH|^~\\&|A|B|C|D|2024||{msh9}|1|{msh11}|{msh12}\rPID|1\r").into_bytes()
    };
    let check = |p: Vec<u8>| Header::parse(&p).unwrap().malformed_coded_value();
    assert_eq!(check(h("ADT^A01", "P", "2.5")), None);
    assert_eq!(check(h("ADT^A01^ADT_A01", "P^T", "2.5.1^USA")), None);
    assert_eq!(
        check(h("ADT^A01", "T~P", "2.5")),
        Some(Malformed::Repetition("MSH-11 (processing id)"))
    );
    assert_eq!(
        check(h("ADT^A01~ORU^R01", "P", "2.5")),
        Some(Malformed::Repetition("MSH-9 (message type)"))
    );
    for msh11 in ["\\T\\", "\\X54\\"] {
        assert_eq!(
            check(h("ADT^A01", msh11, "2.5")),
            Some(Malformed::Escape("MSH-11 (processing id)"))
        );
    }
    for msh11 in [" T", "T ", "P^ T"] {
        assert_eq!(
            check(h("ADT^A01", msh11, "2.5")),
            Some(Malformed::Blanks("MSH-11 (processing id)"))
        );
    }
    assert_eq!(
        check(h("ADT^A01", "P", "2.5 ")),
        Some(Malformed::Blanks("MSH-12 (version id)"))
    );
    // A batch header has no such fields.
    let fhs = b"FHS|^~\\&|A|B|C|D|2024||x~y|F1\r";
    assert_eq!(Header::parse(fhs).unwrap().malformed_coded_value(), None);
}

#[test]
fn values_are_unescaped_as_a_parser_reads_them() {
    let msg = b"MSH|^~\\&|A|B|C|D|2024||ADT^A01|1|P|2.5\r";
    let h = Header::parse(msg).unwrap();
    let u = |v: &[u8]| unescaped(v, &h).into_owned();
    assert_eq!(u(b"LAB"), b"LAB");
    assert_eq!(u(b"L\\X41\\B"), b"LAB");
    assert_eq!(u(b"A\\F\\B\\S\\C\\T\\D\\R\\E\\E\\"), b"A|B^C&D~E\\");
    assert_eq!(u(b"\\X4C4142\\"), b"LAB");
    // Formatting escapes, odd hex and an unclosed escape stay as written.
    assert_eq!(u(b"a\\.br\\b"), b"a\\.br\\b");
    assert_eq!(u(b"\\X4\\"), b"\\X4\\");
    assert_eq!(u(b"ab\\F"), b"ab\\F");
    // Another escape character.
    let custom = b"MSH|:@$%|A|B|C|D|2024||ADT:A01|1|P|2.5\r";
    let h = Header::parse(custom).unwrap();
    assert_eq!(unescaped(b"L$X41$B$S$", &h).as_ref(), b"LAB:");
}

#[test]
fn leading_bytes_before_a_header_are_counted_only_when_a_header_follows() {
    assert_eq!(leading_bytes(b"\xEF\xBB\xBFMSH|^~\\&|A"), 3);
    assert_eq!(leading_bytes(b"\r\n \rMSH|^~\\&|A"), 4);
    assert_eq!(leading_bytes(b"\xEF\xBB\xBF\r\nFHS|^~\\&|A"), 5);
    assert_eq!(leading_bytes(b"MSH|^~\\&|A"), 0);
    assert_eq!(leading_bytes(b"\r\nPID|1"), 0);
    assert_eq!(leading_bytes(b"X\rMSH|^~\\&|A"), 0);
    assert_eq!(leading_bytes(b"\r\n"), 0);
    let h = find_header(b"\xEF\xBB\xBF\rMSH|^~\\&|A|B|C|D|T||ADT^A01|ID7|P|2.5\r").unwrap();
    assert_eq!(h.control_id(), b"ID7");
}

#[test]
fn a_batch_is_named_by_its_bhs_or_else_its_fhs() {
    let fhs_bhs = b"FHS|^~\\&|A|B|C|D|T||||F1\r\nBHS|^~\\&|A|B|C|D|T||||B1\r\nMSH|^~\\&|A\r\n";
    assert_eq!(batch_header(fhs_bhs).unwrap().control_id(), b"B1");
    let fhs_only = b"FHS|^~\\&|A|B|C|D|T||||F1\rMSH|^~\\&|A\r";
    assert_eq!(batch_header(fhs_only).unwrap().control_id(), b"F1");
    let bhs_only = b"BHS|^~\\&|A|B|C|D|T||||B2\rMSH|^~\\&|A\r";
    assert_eq!(batch_header(bhs_only).unwrap().control_id(), b"B2");
    assert!(batch_header(b"MSH|^~\\&|A\r").is_none());
    assert!(batch_header(b"FHS|^~\\&|A").is_some());
}

/// An answer has its MSA right after the header (SFT and UAC may come first); a message with
/// an MSA further down is no answer for `parse_response`, though `parse` finds it.
#[test]
fn parse_response_wants_the_msa_where_answers_have_it() {
    let ack = b"MSH|^~\\&|A|B|C|D|20240101||ACK|1|P|2.5\rSFT|x\rMSA|AA|M1\rERR|1\r";
    let view = AckView::parse_response(ack).unwrap();
    assert_eq!(view.acked_control_id(), b"M1");
    let crlf = b"MSH|^~\\&|A|B|C|D|20240101||ACK|1|P|2.5\r\nMSA|AE|M2\r\n";
    assert_eq!(AckView::parse_response(crlf).unwrap().code(), AckCode::AE);
    let message = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|2|P|2.5\rPID|1\rMSA|AA|M1\r";
    assert!(AckView::parse(message).is_ok());
    assert!(matches!(
        AckView::parse_response(message),
        Err(AckError::NoMsa)
    ));
    let msax = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|2|P|2.5\rMSAX|1\r";
    assert!(matches!(
        AckView::parse_response(msax),
        Err(AckError::NoMsa)
    ));
}
