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
         ERR|||200^Unsupported message type^HL70357|E||||message type ADT\\S\\A01 is not allowed \\F\\ route lab\r"
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
            // MSA-3 is withdrawn from 2.7: the text is in ERR-8 there.
            let v27 = [&b"2.7"[..], b"2.8"]
                .iter()
                .any(|v| h.version().starts_with(v));
            let text: &[u8] = if v27 { b"" } else { b"upstream unavailable" };
            assert_eq!(view.text(), text, "{file}");
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
         ERR###207^Application internal error^HL70357#E####bad \\F\\ here\r"
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
         ERR|||200:Unsupported message type:HL70357|E||||a$F$b$S$c$R$d$E$e$T$f^g\r"
    );
}

#[test]
fn reason_text_is_escaped_stripped_of_controls_and_limited_to_ascii() {
    let h = Header::parse(b"MSH|^~\\&#|A|B|C|D|T||ADT^A01|X1|P|2.6\r").expect("parses");
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
         ERR|||207^Application internal error^HL70357|E||||a b c d\r"
    );
}

#[test]
fn a_batch_file_is_acked_with_plain_ack_and_its_fhs_11() {
    let msg = corpus("16_batch_file.hl7");
    let h = Header::parse(&msg).expect("parses");
    assert_eq!(
        String::from_utf8_lossy(&build(&h, AckCode::AA, "", "MG7", TS)),
        "MSH|^~\\&|SYNTH_RECV|SYNTH_DEST|SYNTH_SEND|SYNTH_FAC|20250101120000||ACK|MG7|P|2.5.1\r\
         MSA|AA|FILE0001\r"
    );
}

#[test]
fn a_batch_ack_names_its_bhs_and_takes_version_and_trigger_from_its_first_message() {
    let batch = b"FHS|^~\\&|LAB|FAC|EHR|HOSP|20240101||||F1\rBHS|^~\\&|LAB|FAC|EHR|HOSP|20240101||||B1\r\
                  MSH|^~\\&|LAB|FAC|EHR|HOSP|20240101||ADT^A08|M1|T|2.3||||||8859/1\rPID|1\rBTS|1\rFTS|1\r";
    let bhs = crate::wire::hl7::batch_header(batch).expect("a batch");
    let first = crate::wire::hl7::later_messages(batch).next().unwrap();
    let first = Header::parse(first).unwrap();
    let says = Says::refused(ErrorCode::UnsupportedProcessingId, "rejected by rule t").at(1, None);
    assert_eq!(
        String::from_utf8_lossy(&build_for(&bhs, Some(&first), &says, "MG7", TS)),
        "MSH|^~\\&|EHR|HOSP|LAB|FAC|20250101120000||ACK^A08|MG7|T|2.3||||||8859/1\r\
         MSA|AR|B1|rejected by rule t\r\
         ERR|MSH^1^^202&Unsupported processing id&HL70357\r"
    );
}

#[test]
fn msh_9_msa_and_err_follow_the_version_of_the_message() {
    let says = Says::not_now("receiver unavailable");
    let ack = |version: &str| {
        let msg = format!("MSH|^~\\&|LAB|FAC|EHR|HOSP|20240101||ADT^A01|C1|P|{version}\r");
        let h = Header::parse(msg.as_bytes()).unwrap();
        let ack = String::from_utf8(build_for(&h, None, &says, "MG1", TS)).unwrap();
        ack.split_once("||").unwrap().1.to_string()
    };
    assert_eq!(
        ack("2.3"),
        "ACK^A01|MG1|P|2.3\rMSA|AE|C1|receiver unavailable\r\
         ERR|^^^207&Application internal error&HL70357\r"
    );
    assert_eq!(
        ack("2.4"),
        "ACK^A01^ACK|MG1|P|2.4\rMSA|AE|C1|receiver unavailable\r\
         ERR|^^^207&Application internal error&HL70357\r"
    );
    assert_eq!(
        ack("2.6"),
        "ACK^A01^ACK|MG1|P|2.6\rMSA|AE|C1|receiver unavailable\r\
         ERR|||207^Application internal error^HL70357|E||||receiver unavailable\r"
    );
    assert_eq!(
        ack("2.8"),
        "ACK^A01^ACK|MG1|P|2.8\rMSA|AE|C1\r\
         ERR|||207^Application internal error^HL70357|E||||receiver unavailable\r"
    );
    // Unknown versions take the 2.5.1 layout and keep their MSH-12.
    assert!(ack("3.0").ends_with(
        "|P|3.0\rMSA|AE|C1|receiver unavailable\r\
         ERR|||207^Application internal error^HL70357|E||||receiver unavailable\r"
    ));
    assert_eq!(Version::of(b"2.5.1^DEU", b'^'), Version(5, 1));
    assert_eq!(Version::of(b"2.10", b'^'), Version::FALLBACK);
}

#[test]
fn texts_are_cut_to_80_characters_and_enhanced_mode_gets_commit_codes() {
    let h = Header::parse(b"MSH|^~\\&|A|B|C|D|T||ADT^A01|X1|P|2.5|||AL|AL\r").unwrap();
    let long = "x".repeat(200);
    let ack = build_for(&h, None, &Says::not_now(&long), "MG1", TS);
    let view = AckView::parse(&ack).unwrap();
    assert_eq!(view.text().len(), MAX_TEXT_CHARS);
    assert_eq!(code_for(Some(&h), AckCode::AE), AckCode::CE);
    assert_eq!(code_for(Some(&h), AckCode::AR), AckCode::CR);
    assert_eq!(code_for(Some(&h), AckCode::AA), AckCode::CA);
    let original = Header::parse(b"MSH|^~\\&|A|B|C|D|T||ADT^A01|X1|P|2.5\r").unwrap();
    assert_eq!(code_for(Some(&original), AckCode::AE), AckCode::AE);
    let (ack, code) = own_ack(Some(&h), Says::ACCEPTED);
    assert_eq!(
        (AckView::parse(&ack).unwrap().code(), code),
        (AckCode::CA, AckCode::CA)
    );
}

#[test]
fn a_message_with_empty_control_id_and_no_version_is_acked_with_empty_msa_2() {
    let msg = corpus("malformed/msh_without_msh10_12.hl7");
    let h = Header::parse(&msg).expect("parses");
    let says = Says::refused(ErrorCode::RequiredFieldMissing, "control id missing").at(1, Some(10));
    assert_eq!(
        String::from_utf8_lossy(&build_for(&h, None, &says, "MG8", TS)),
        "MSH|^~\\&|SYNTH_RECV|SYNTH_DEST|SYNTH_SEND|SYNTH_FAC|20250101120000||ACK^A01^ACK|MG8|P|2.5.1\r\
         MSA|AR||control id missing\r\
         ERR||MSH^1^10|101^Required field missing^HL70357|E||||control id missing\r"
    );
}

#[test]
fn framing_bytes_in_the_message_header_never_reach_the_ack() {
    let h =
        Header::parse(b"MSH|^~\\&|A\x0bB|F\x1c|R|RF|T||ADT^A01|ID\x0b1|P|2.5.1\r").expect("parses");
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
            &Says::refused(ErrorCode::SegmentSequence, "no message header"),
            "MG10",
            TS
        )),
        "MSH|^~\\&|||||20250101120000||ACK|MG10|P|2.5.1\r\
         MSA|AR||no message header\r\
         ERR|||100^Segment sequence error^HL70357|E||||no message header\r"
    );
    assert_eq!(
        verify(&build_without_header(&Says::not_now(""), "MG11", TS), b""),
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
fn timestamps_of_known_instants_are_utc_civil_time_with_the_offset_written() {
    let at = |secs: u64| timestamp(UNIX_EPOCH + Duration::from_secs(secs));
    assert_eq!(timestamp(UNIX_EPOCH), "19700101000000+0000");
    assert_eq!(at(951_827_696), "20000229123456+0000");
    assert_eq!(at(1_735_689_599), "20241231235959+0000");
    assert_eq!(at(1_709_164_800), "20240229000000+0000");
    assert_eq!(at(4_102_444_800), "21000101000000+0000");
    assert_eq!(
        timestamp(UNIX_EPOCH + Duration::from_millis(1_735_689_599_999)),
        "20241231235959+0000"
    );
    assert_eq!(
        timestamp(UNIX_EPOCH - Duration::from_secs(1)),
        "19691231235959+0000"
    );
    assert_eq!(
        timestamp(UNIX_EPOCH - Duration::from_millis(1)),
        "19691231235959+0000"
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

#[test]
fn fuzz_ack_holds_on_real_acks_and_on_what_is_not_one() {
    fuzz_ack(b"MSH|^~\\&|RCV|F|SND|F|20240101||ACK^A01|A1|P|2.5\rMSA|AA|MSG1|fine\r");
    fuzz_ack(b"MSH|^~\\&|RCV|F|SND|F|20240101||ACK|A1|P|2.3\nERR|x\nMSA|AE|MSG1");
    fuzz_ack(b"MSH|^~\\&|RCV|F|SND|F|20240101||ACK|A1|P|2.3\rMSA|ZZ|MSG1");
    fuzz_ack(b"MSH|^~\\&|RCV\rMSA");
    fuzz_ack(b"MSA|AA|1");
    fuzz_ack(&corpus("01_adt_a01.hl7"));
}
