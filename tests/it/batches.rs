//! Batches through the binary (issue 24, finding 1): with `batches: inspect` (the default) every
//! message inside FHS/BHS meets the rules and the limits and gets its audit line; one refused
//! message refuses the whole batch (AR naming the batch in MSA-2 and the message in ERR) and
//! nothing of it reaches the receiver, which records every frame it gets; `batches: refuse`
//! answers AR to every batch; a batch whose messages all pass is relayed unchanged. And leading
//! bytes (a BOM, CR LF, spaces) before MSH: the header is found for rules and acks, the message
//! relayed as it came.

use mllp_guard::wire::hl7::AckCode;

use crate::cli::{start_guard, start_sink};
use crate::harness::*;
use crate::one_reading::{audit_lines, saved};

fn msh(id: &str, processing: &str, version: &str) -> String {
    format!("MSH|^~\\&|LAB|FAC|EHR|HOSP|20240101120000||ADT^A01|{id}|{processing}|{version}\rPID|1||{id}\r")
}

/// `FHS`, optionally `BHS`, the messages, then `BTS`/`FTS`.
fn batch(with_bhs: bool, messages: &[String]) -> Vec<u8> {
    let mut b = String::from("FHS|^~\\&|LAB|FAC|EHR|HOSP|20240101120000||||FH1\r");
    if with_bhs {
        b += "BHS|^~\\&|LAB|FAC|EHR|HOSP|20240101120000||||BH1\r";
    }
    for m in messages {
        b += m;
    }
    if with_bhs {
        b += &format!("BTS|{}\r", messages.len());
    }
    b += "FTS|1\r";
    b.into_bytes()
}

/// A guard (the binary) before a sink that saves every frame it gets; rules refuse test
/// messages (MSH-11 = T) and drop version 2.2.
fn guard(dir: &TestDir, extra: &str) -> (Proc, Proc, String, std::sync::mpsc::Receiver<String>) {
    let saved = dir.path("saved");
    let (sink, sink_addr) = start_sink(&[
        "--listen",
        "127.0.0.1:0",
        "--save-dir",
        saved.to_str().unwrap(),
    ]);
    let rules = format!("{extra}    rules:\n      - name: no-test\n        match: {{ processing_id: [T] }}\n        action: reject\n      - name: no-v22\n        match: {{ version: [\"2.2\"] }}\n        action: drop\n");
    let config = dir.path("guard.yaml");
    std::fs::write(
        &config,
        route_yaml(sink_addr.parse().unwrap(), &rules, "", ""),
    )
    .unwrap();
    let (guard, listen, logs) = start_guard(&config);
    (sink, guard, listen, logs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_one_refused_message_is_refused_whole_and_nothing_of_it_arrives() {
    let dir = TestDir::new();
    let (_sink, _guard, listen, logs) = guard(&dir, "");
    let mut client = Client::plain(listen.parse().unwrap()).await;

    // The finding: two test messages in a batch went past a processing-id rule.
    let smuggled = batch(true, &[msh("M1", "P", "2.5.1"), msh("M2", "T", "2.5.1")]);
    let ack = client.send(&smuggled).await;
    let (code, acked, text) = ack_of(&ack);
    assert_eq!(
        (code, acked.as_str()),
        (AckCode::AR, "BH1"),
        "MSA-2 = BHS-11"
    );
    assert!(
        text.contains("message 2 (M2)") && text.contains("no-test"),
        "{text}"
    );
    let ack_text = String::from_utf8_lossy(&ack);
    assert!(
        ack_text.contains("\rERR||MSH^2|202^Unsupported processing id^HL70357|E|"),
        "ERR names the second message: {ack_text:?}"
    );
    // Without a BHS the batch is named by FHS-11; a drop rule inside refuses the batch too.
    let dropped = batch(false, &[msh("M3", "P", "2.2"), msh("M4", "P", "2.5.1")]);
    let (code, acked, text) = ack_of(&client.send(&dropped).await);
    assert_eq!((code, acked.as_str()), (AckCode::AR, "FH1"), "{text}");
    assert!(text.contains("message 1 (M3)"), "{text}");

    // An all-pass batch goes on unchanged, and so does the connection.
    let clean = batch(true, &[msh("M5", "P", "2.5.1"), msh("M6", "P", "2.5.1")]);
    let (code, _, _) = ack_of(&client.send(&clean).await);
    assert_eq!(code, AckCode::AA);
    assert!(
        saved(&dir) == [clean],
        "the receiver got only the clean batch, byte-exact"
    );
    let lines = audit_lines(&logs);
    for expected in [
        ("M2", "rejected_by_rule", ""),
        ("FH1", "rejected", "batch"),
        ("M3", "dropped_by_rule", ""),
        ("M5", "forwarded", ""),
        ("M6", "forwarded", ""),
        ("FH1", "forwarded", ""),
    ] {
        let expected = (expected.0.into(), expected.1.into(), expected.2.into());
        assert!(lines.contains(&expected), "{expected:?} in {lines:?}");
    }
    assert!(
        !lines.iter().any(|l| l.0 == "M1" || l.0 == "M4"),
        "messages after the first refused one are not judged: {lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_ack_follows_the_version_of_the_batchs_messages() {
    let dir = TestDir::new();
    let (_sink, _guard, listen, _logs) = guard(&dir, "");
    let mut client = Client::plain(listen.parse().unwrap()).await;
    let old = batch(true, &[msh("M7", "T", "2.3")]);
    let ack = String::from_utf8(client.send(&old).await).unwrap();
    let msh_fields: Vec<&str> = ack.split('\r').next().unwrap().split('|').collect();
    assert_eq!(
        msh_fields[8], "ACK^A01",
        "MSH-9 has two components in 2.3: {ack:?}"
    );
    assert_eq!((msh_fields[10], msh_fields[11]), ("T", "2.3"), "{ack:?}");
    assert!(ack.contains("\rMSA|AR|BH1|"), "{ack:?}");
    assert!(
        ack.contains("\rERR|MSH^1^^202&Unsupported processing id&HL70357\r"),
        "ERR-1 before 2.5: {ack:?}"
    );
    let verdicts = crate::conformance::hl7apy(&[ack.into_bytes()]);
    assert_eq!(verdicts, [Ok(())]);
    assert!(saved(&dir).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_batches_refuse_every_batch_is_answered_ar_and_single_messages_go_on() {
    let dir = TestDir::new();
    let (_sink, _guard, listen, logs) = guard(&dir, "    batches: refuse\n");
    let mut client = Client::plain(listen.parse().unwrap()).await;
    let clean = batch(true, &[msh("M8", "P", "2.5.1")]);
    let ack = client.send(&clean).await;
    let (code, acked, text) = ack_of(&ack);
    assert_eq!(
        (code, acked.as_str(), text.as_str()),
        (AckCode::AR, "BH1", "batches not accepted")
    );
    assert!(String::from_utf8_lossy(&ack).contains("|200^Unsupported message type^HL70357|E|"));
    let single = msh("M9", "P", "2.5.1").into_bytes();
    assert_eq!(ack_of(&client.send(&single).await).0, AckCode::AA);
    assert!(saved(&dir) == [single], "only the single message arrived");
    let lines = audit_lines(&logs);
    assert!(
        lines.contains(&("FH1".into(), "rejected".into(), "batch".into())),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leading_bytes_before_msh_are_skipped_for_rules_and_acks_and_relayed_unchanged() {
    let dir = TestDir::new();
    let (_sink, _guard, listen, _logs) = guard(&dir, "");
    let mut client = Client::plain(listen.parse().unwrap()).await;
    let with = |lead: &[u8], id: &str, processing: &str| {
        let mut m = lead.to_vec();
        m.extend_from_slice(msh(id, processing, "2.5.1").as_bytes());
        m
    };
    // Allowed: relayed as it came (BOM and all); the receiver's ack answers it.
    let bom = with(b"\xEF\xBB\xBF", "L1", "P");
    let (code, acked, _) = ack_of(&client.send(&bom).await);
    assert_eq!((code, acked.as_str()), (AckCode::AA, "L1"));
    let breaks = with(b"\r\n  ", "L2", "P");
    let (code, acked, _) = ack_of(&client.send(&breaks).await);
    assert_eq!((code, acked.as_str()), (AckCode::AA, "L2"));
    // Refused by a rule: the guard's own ack correlates (MSA-2 = MSH-10).
    let test = with(b"\xEF\xBB\xBF\n", "L3", "T");
    let (code, acked, text) = ack_of(&client.send(&test).await);
    assert_eq!(
        (code, acked.as_str(), text.as_str()),
        (AckCode::AR, "L3", "rejected by rule no-test")
    );
    // Ambiguity inside MSH is still refused, leading bytes or not.
    let hidden =
        b"\xEF\xBB\xBFMSH|^~\\&|LAB|FAC|EHR|HOSP|20240101||ADT^A01|L4\nT|2.5\rPID|1\r".to_vec();
    let (code, _, text) = ack_of(&client.send(&hidden).await);
    assert_eq!(code, AckCode::AR);
    assert!(text.contains("ambiguous header"), "{text}");
    let mut got = saved(&dir);
    got.sort();
    let mut expected = vec![bom, breaks];
    expected.sort();
    assert!(
        got == expected,
        "the two allowed messages, byte-exact with their leading bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_receiver_cannot_take_gets_an_ack_in_its_messages_version() {
    let dir = TestDir::new();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = dir.path("guard.yaml");
    std::fs::write(&config, route_yaml(dead, "", "", "")).unwrap();
    let (_guard, listen, _logs) = start_guard(&config);
    let mut client = Client::plain(listen.parse().unwrap()).await;
    let old = batch(false, &[msh("M10", "P", "2.3"), msh("M11", "P", "2.3")]);
    let ack = String::from_utf8(client.send(&old).await).unwrap();
    let fields: Vec<&str> = ack.split('\r').next().unwrap().split('|').collect();
    assert_eq!(
        (fields[8], fields[10], fields[11]),
        ("ACK^A01", "P", "2.3"),
        "MSH-9, 11 and 12 from the batch's messages: {ack:?}"
    );
    assert!(
        ack.contains("\rMSA|AE|FH1|receiver unavailable\rERR|^^^207&"),
        "{ack:?}"
    );
    assert_eq!(crate::conformance::hl7apy(&[ack.into_bytes()]), [Ok(())]);
}
