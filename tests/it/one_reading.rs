//! One reading, through the binary (issue 25, findings 1 and 2): a header a receiver
//! could read differently from the guard (a line feed ending MSH in a message that uses carriage
//! returns, a control byte inside MSH) is answered AR with the reason `ambiguous_header` and never
//! reaches the receiver, while messages consistent in CR LF or LF are relayed byte-exact; and a
//! second message in a frame (outside a batch) is refused, or with `multiple_messages: inspect`
//! meets the rules and the audit trail like the first.

use std::time::Duration;

use mllp_guard::wire::hl7::AckCode;

use crate::cli::{start_guard, start_saving_sink, start_sink};
use crate::harness::*;

/// `MSH|^~\&|LAB|FAC|EHR|HOSP|20240101||ADT^A01|<id>|<rest>` then `PID|1`, CR-terminated.
fn msh(id: &str, rest: &[u8]) -> Vec<u8> {
    let mut m = format!("MSH|^~\\&|LAB|FAC|EHR|HOSP|20240101||ADT^A01|{id}|").into_bytes();
    m.extend_from_slice(rest);
    m.extend_from_slice(b"\rPID|1\r");
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_a_receiver_could_read_differently_is_refused_and_never_forwarded() {
    let dir = TestDir::new();
    let (_sink, _guard, listen, logs) = guard_with_sink(&dir, "");
    let mut client = Client::plain(listen.parse().unwrap()).await;

    // The guard would end MSH at the LF and see no MSH-11; a CR-only parser reads MSH-11 = T.
    let hidden = msh("C20\n", b"T|2.5");
    // Control bytes inside MSH: NUL after the processing id, SOH in the sending application.
    let nul = msh("C21", b"P\x00|2.5");
    let soh = b"MSH|^~\\&|L\x01AB|FAC|EHR|HOSP|20240101||ADT^A01|C22|P|2.5\rPID|1\r".to_vec();
    for (payload, acked) in [(&hidden, "C20"), (&nul, ""), (&soh, "")] {
        let (code, id, text) = ack_of(&client.send(payload).await);
        assert_eq!(code, AckCode::AR, "{text}");
        assert_eq!(
            id, acked,
            "MSA-2 repeats MSH-10 only when the header holds no control byte"
        );
        assert!(text.contains("ambiguous header"), "{text}");
    }
    // The same connection goes on; consistent CR LF and LF messages are relayed unchanged.
    for file in ["14_crlf_terminators.hl7", "15_lf_terminators.hl7"] {
        let (code, _, _) = ack_of(&client.send(&corpus_bytes(file)).await);
        assert_eq!(code, AckCode::AA, "{file}");
    }
    let (code, _, text) = ack_of(&client.send(&msh("C23", b"T|2.5")).await);
    assert_eq!(
        (code, text.as_str()),
        (AckCode::AR, "rejected by rule no-test-messages")
    );

    let mut got = saved(&dir);
    got.sort();
    let mut expected = vec![
        corpus_bytes("14_crlf_terminators.hl7"),
        corpus_bytes("15_lf_terminators.hl7"),
    ];
    expected.sort();
    assert!(
        got == expected,
        "the receiver got only the two consistent messages, byte-exact"
    );

    // One audit line per refusal, with the reason (and no control byte in any line).
    let lines = audit_lines(&logs);
    let reasons: Vec<&str> = lines
        .iter()
        .filter(|(_, _, reason)| reason == "ambiguous_header")
        .map(|(_, outcome, _)| outcome.as_str())
        .collect();
    assert_eq!(reasons, ["rejected", "rejected", "rejected"]);
}

/// A guard (through the binary) in front of a sink that saves what it gets, with rules that
/// reject test messages (MSH-11 = T) and results (ORU^R01); `extra` adds route keys.
fn guard_with_sink(
    dir: &TestDir,
    extra: &str,
) -> (Proc, Proc, String, std::sync::mpsc::Receiver<String>) {
    let saved = dir.path("saved");
    let (sink, sink_addr) = start_saving_sink(&saved);
    let config = dir.path("guard.yaml");
    let rules = format!("{extra}    rules:\n      - name: no-test-messages\n        match: {{ processing_id: [T] }}\n        action: reject\n      - name: no-results\n        match: {{ message_type: [\"ORU^R01\"] }}\n        action: reject\n");
    std::fs::write(
        &config,
        route_yaml(sink_addr.parse().unwrap(), &rules, "", ""),
    )
    .unwrap();
    let (guard, listen, logs) = start_guard(&config);
    (sink, guard, listen, logs)
}

pub fn saved(dir: &TestDir) -> Vec<Vec<u8>> {
    std::fs::read_dir(dir.path("saved"))
        .map(|entries| {
            entries
                .map(|e| std::fs::read(e.unwrap().path()).unwrap())
                .collect()
        })
        .unwrap_or_default()
}

/// The audit lines (`message` == "message") read so far, as (control id, outcome, reason);
/// no log line may carry a control byte (a header's NUL or LF copied into the log).
pub fn audit_lines(logs: &std::sync::mpsc::Receiver<String>) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    while let Ok(line) = logs.recv_timeout(Duration::from_millis(500)) {
        assert!(
            !line.bytes().any(|b| b < 0x20),
            "a control byte in a log line: {line:?}"
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["message"] == "message" {
            let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            out.push((field("control_id"), field("outcome"), field("reason")));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_message_in_a_frame_is_refused_by_default() {
    let dir = TestDir::new();
    let (_sink, _guard, listen, logs) = guard_with_sink(&dir, "");
    let mut client = Client::plain(listen.parse().unwrap()).await;
    let mut two = msh("A1", b"P|2.5");
    two.extend_from_slice(&msh("B1", b"T|2.5"));
    let (code, id, text) = ack_of(&client.send(&two).await);
    assert_eq!((code, id.as_str()), (AckCode::AR, "A1"));
    assert!(text.contains("2 messages outside a batch"), "{text}");
    // A batch file is one unit (its messages are the batch's), and goes on.
    let (code, _, _) = ack_of(&client.send(&corpus_bytes("16_batch_file.hl7")).await);
    assert_eq!(code, AckCode::AA);
    assert!(
        saved(&dir) == [corpus_bytes("16_batch_file.hl7")],
        "only the batch reached the receiver"
    );
    let lines = audit_lines(&logs);
    assert!(
        lines.contains(&("A1".into(), "rejected".into(), "multiple_messages".into())),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_inspect_every_message_of_a_frame_meets_the_rules_and_is_audited() {
    let dir = TestDir::new();
    let (_sink, _guard, listen, logs) = guard_with_sink(&dir, "    multiple_messages: inspect\n");
    let mut client = Client::plain(listen.parse().unwrap()).await;
    // The second message is a test message: the whole frame is refused, nothing forwarded.
    let mut smuggled = msh("A2", b"P|2.5");
    smuggled.extend_from_slice(&msh("B2", b"T|2.5"));
    let (code, id, text) = ack_of(&client.send(&smuggled).await);
    assert_eq!((code, id.as_str()), (AckCode::AR, "A2"));
    assert!(
        text.contains("message 2 of the frame was rejected by rule no-test-messages"),
        "{text}"
    );
    // Two allowed messages go on together, one audit line each.
    let mut both = msh("A3", b"P|2.5");
    both.extend_from_slice(&msh("B3", b"P|2.5"));
    let (code, id, _) = ack_of(&client.send(&both).await);
    assert_eq!((code, id.as_str()), (AckCode::AA, "A3"));
    assert!(saved(&dir) == [both], "only the allowed frame, byte-exact");
    let lines = audit_lines(&logs);
    for expected in [
        ("B2", "rejected_by_rule", ""),
        ("A2", "rejected", "multiple_messages"),
        ("A3", "forwarded", ""),
        ("B3", "forwarded", ""),
    ] {
        let expected = (expected.0.into(), expected.1.into(), expected.2.into());
        assert!(lines.contains(&expected), "{expected:?} in {lines:?}");
    }
}

/// Sends `payload` framed as `framing` and reads one answer framed the same way.
async fn exchange_framed(
    tcp: &mut tokio::net::TcpStream,
    framing: mllp_guard::wire::codec::Framing,
    payload: &[u8],
) -> Vec<u8> {
    use mllp_guard::wire::codec::{encode_with, Decoded, Decoder};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(&encode_with(framing, payload)).await.unwrap();
    let mut decoder = Decoder::with_framing(1 << 20, framing);
    let mut buf = bytes::BytesMut::new();
    loop {
        if let Some(Decoded::Frame(frame)) = decoder.decode(&mut buf) {
            return frame.payload().to_vec();
        }
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read_buf(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed without an answer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_cannot_smuggle_a_frame_past_the_rules_across_two_framings() {
    use mllp_guard::wire::codec::Framing;
    let dir = TestDir::new();
    let (_sink, _guard, listen, logs) =
        guard_with_sink(&dir, "    framing: { start: 0x02, end: [0x03] }\n");
    let stx = Framing::new(0x02, &[0x03]).unwrap();
    let mut tcp = tokio::net::TcpStream::connect(&listen).await.unwrap();
    // STX M(A,P) PID 1C 0D 0B M(B,T) PID ETX: an MLLP receiver would see two frames, the
    // second never checked.
    let mut smuggler = msh("A4", b"P|2.5");
    smuggler.extend_from_slice(b"\x1c\r\x0b");
    smuggler.extend_from_slice(&msh("B4", b"T|2.5"));
    let (code, id, text) = ack_of(&exchange_framed(&mut tcp, stx, &smuggler).await);
    assert_eq!((code, id.as_str()), (AckCode::AR, "A4"));
    assert!(text.contains("0x1C"), "{text}");
    // A clean message on the same connection is bridged to MLLP byte-exact.
    let clean = msh("A5", b"P|2.5");
    let (code, _, _) = ack_of(&exchange_framed(&mut tcp, stx, &clean).await);
    assert_eq!(code, AckCode::AA);
    assert!(
        saved(&dir) == [clean],
        "only the clean message reached the receiver"
    );
    let lines = audit_lines(&logs);
    assert!(
        lines.contains(&("A4".into(), "rejected".into(), "framing_bytes".into())),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_tricks_do_not_get_a_forbidden_value_past_the_rules() {
    let dir = TestDir::new();
    let (_sink, _guard, listen, logs) = guard_with_sink(&dir, "");
    let mut client = Client::plain(listen.parse().unwrap()).await;
    let with = |msh9: &str, msh11: &str| {
        format!("MSH|^~\\&|LAB|FAC|EHR|HOSP|20240101||{msh9}|X|{msh11}|2.5\rPID|1\r").into_bytes()
    };
    // Read as T or ORU^R01 by some receiver: malformed (ERR-3 102) or caught by the rules.
    let malformed = [
        with("ADT^A01", "T~P"),
        with("ADT^A01", " T"),
        with("ADT^A01", "T "),
        with("ADT^A01", "\\T\\"),
        with("ADT^A01", "\\X54\\"),
        with("ADT^A01~ORU^R01", "P"),
        with("O\\X52\\U^R01", "P"),
    ];
    for payload in &malformed {
        let ack = client.send(payload).await;
        let (code, _, text) = ack_of(&ack);
        assert_eq!(code, AckCode::AR, "{text}");
        let err = String::from_utf8_lossy(&ack);
        assert!(
            err.contains("102^Data type error^HL70357"),
            "ERR-3 102 in {err:?}"
        );
    }
    for (payload, rule) in [
        (with("ADT^A01", "t"), "no-test-messages"),
        (with("oru^r01", "P"), "no-results"),
    ] {
        let (code, _, text) = ack_of(&client.send(&payload).await);
        assert_eq!(
            (code, text),
            (AckCode::AR, format!("rejected by rule {rule}"))
        );
    }
    assert!(saved(&dir).is_empty(), "nothing reached the receiver");
    let (code, _, _) = ack_of(&client.send(&with("ADT^A01", "P")).await);
    assert_eq!(code, AckCode::AA, "a clean message still goes on");
    let refused = audit_lines(&logs)
        .into_iter()
        .filter(|(_, _, reason)| reason == "malformed_header")
        .count();
    assert_eq!(refused, malformed.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sender_cannot_make_anothers_message_disappear_as_a_duplicate() {
    let dir = TestDir::new();
    let (_sink, sink_addr) = start_saving_sink(&dir.path("saved"));
    let config = dir.path("guard.yaml");
    std::fs::write(
        &config,
        format!(
            "state_dir: {}\nroutes:\n  - name: lab\n    listen: 127.0.0.1:0\n    allow: [127.0.0.0/8]\n    delivery: store-and-forward\n    duplicate_window: 10m\n    upstream:\n      address: {sink_addr}\n",
            dir.path("state").display()
        ),
    )
    .unwrap();
    let (_guard, listen, logs) = start_guard(&config);
    let addr = listen.parse().unwrap();
    let result = |value: &str| {
        format!("MSH|^~\\&|LAB|FAC|EHR|HOSP|20240101||ORU^R01|K1|P|2.5\rOBX|1|NM|K||{value}\r")
            .into_bytes()
    };
    // Another source sends a potassium result under the lab's control id first...
    let mut other = Client::plain_from(addr, "127.0.0.9".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(ack_of(&other.send(&result("4.1")).await).0, AckCode::AA);
    // ...the real lab's result is still taken, and its own resend is the duplicate.
    let mut lab = Client::plain(addr).await;
    assert_eq!(ack_of(&lab.send(&result("6.9")).await).0, AckCode::AA);
    assert_eq!(ack_of(&lab.send(&result("6.9")).await).0, AckCode::AA);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while saved(&dir).len() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut got = saved(&dir);
    got.sort();
    assert!(
        got == [result("4.1"), result("6.9")],
        "both results delivered, each once"
    );
    let outcomes: Vec<String> = audit_lines(&logs).into_iter().map(|l| l.1).collect();
    assert_eq!(outcomes, ["queued", "queued", "duplicate_answered"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_field_cannot_forge_a_key_in_the_text_log() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = TestDir::new();
    let (_sink, sink_addr) = start_sink(&["--listen", "127.0.0.1:0"]);
    let config = dir.path("guard.yaml");
    std::fs::write(&config, route_yaml(sink_addr.parse().unwrap(), "", "", "")).unwrap();
    let mut guard = Proc(
        Command::new(env!("CARGO_BIN_EXE_mllp-guard"))
            .args(["--log-format", "text", "run", "--config"])
            .arg(&config)
            .env_remove("MLLP_GUARD_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    let stderr = guard.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let listen = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("the guard reports its route");
        if let Some((_, rest)) = line.split_once("route listening") {
            let at = rest.find("listen=").unwrap() + "listen=".len();
            break rest[at..].split(' ').next().unwrap().to_string();
        }
    };
    let mut client = Client::plain(listen.parse().unwrap()).await;
    let forged = b"MSH|^~\\&|LAB outcome=\"rejected_by_rule\" ack=\"AR\"|FAC|EHR|HOSP|20240101||ADT^A01|F1|P|2.5\rPID|1\r";
    assert_eq!(ack_of(&client.send(forged).await).0, AckCode::AA);
    let audit = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(10))
            .expect("an audit line");
        if line.contains("mllp_guard::audit") {
            break line;
        }
    };
    assert!(
        audit.contains(r#"sending_application="LAB outcome=\"rejected_by_rule\" ack=\"AR\"""#),
        "{audit}"
    );
    assert!(audit.contains(r#" outcome="forwarded""#), "{audit}");
    assert!(!audit.contains(" outcome=\"rejected_by_rule\""), "{audit}");
}

#[test]
fn a_flood_of_refused_connections_logs_one_line_per_source_and_interval() {
    let dir = TestDir::new();
    let config = dir.path("guard.yaml");
    let yaml = route_yaml("127.0.0.1:9".parse().unwrap(), "", "", "")
        .replace("allow: [127.0.0.1/32]", "allow: [127.0.0.2/32]");
    std::fs::write(&config, yaml).unwrap();
    let (_guard, listen, logs) = start_guard(&config);
    for _ in 0..50 {
        // Refused (reset) before any byte: the connect itself may succeed or not.
        let _ = std::net::TcpStream::connect(&listen);
    }
    let mut refused = 0;
    while let Ok(line) = logs.recv_timeout(Duration::from_millis(1500)) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["message"] == "connection refused" {
            refused += 1;
            assert_eq!(v["reason"], "address not in allow list");
        }
    }
    assert_eq!(
        refused, 1,
        "the first refusal is logged, the rest of the interval counted"
    );
}
