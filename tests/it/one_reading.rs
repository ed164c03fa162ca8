//! One reading of the header, through the binary (issue 25, finding 1): a header a receiver
//! could read differently from the guard (a line feed ending MSH in a message that uses carriage
//! returns, a control byte inside MSH) is answered AR with the reason `ambiguous_header` and never
//! reaches the receiver, while messages consistent in CR LF or LF are relayed byte-exact.

use std::time::Duration;

use mllp_guard::wire::hl7::AckCode;

use crate::cli::{start_guard, start_sink};
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
    let saved = dir.path("saved");
    let (_sink, sink_addr) = start_sink(&[
        "--listen",
        "127.0.0.1:0",
        "--save-dir",
        saved.to_str().unwrap(),
    ]);
    let config = dir.path("guard.yaml");
    let rules = "    rules:\n      - name: no-test-messages\n        match: { processing_id: [T] }\n        action: reject\n";
    std::fs::write(
        &config,
        route_yaml(sink_addr.parse().unwrap(), rules, "", ""),
    )
    .unwrap();
    let (_guard, listen, logs) = start_guard(&config);
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

    let mut got: Vec<Vec<u8>> = std::fs::read_dir(&saved)
        .map(|entries| {
            entries
                .map(|e| std::fs::read(e.unwrap().path()).unwrap())
                .collect()
        })
        .unwrap_or_default();
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

    // One audit line per refusal, with the reason; no control byte in any line.
    let mut reasons = Vec::new();
    while let Ok(line) = logs.recv_timeout(Duration::from_millis(500)) {
        assert!(
            !line.bytes().any(|b| b < 0x20),
            "a control byte in a log line: {line:?}"
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["message"] == "message" && v["reason"] == "ambiguous_header" {
            reasons.push(v["outcome"].as_str().unwrap_or_default().to_string());
        }
    }
    assert_eq!(reasons, ["rejected", "rejected", "rejected"]);
}
