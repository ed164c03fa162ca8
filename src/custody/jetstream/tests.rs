use super::stream::{message_id, stream_config};
use crate::config::JetStreamQueue;
use crate::custody::SenderId;
use crate::wire::hl7::Header;
use async_nats::jetstream::stream;
use std::time::Duration;

#[test]
fn message_ids_escape_separators_and_non_printable_bytes() {
    let p = b"MSH|^~\\&|LAB%|F\xe9 X|R|F|2024||ADT^A01|C1|P|2.5\r";
    let h = Header::parse(p).unwrap();
    let lab = SenderId::Identity("lab|x.example.org");
    let id = message_id(&h, lab, p);
    let (ids, digest) = id.rsplit_once('|').unwrap();
    assert_eq!(ids, "tls:lab%7Cx.example.org|LAB%25|F%E9%20X|C1");
    assert_eq!(digest.len(), 32, "{digest}");
    let (a, b) = (
        &b"MSH|^~\\&|AB|C|R|F|2024||ADT^A01|X|P|2.5\r"[..],
        &b"MSH|^~\\&|A|BC|R|F|2024||ADT^A01|X|P|2.5\r"[..],
    );
    let ip = SenderId::Address("127.0.0.1".parse().unwrap());
    let of = |p: &[u8], s| message_id(&Header::parse(p).unwrap(), s, p);
    assert_ne!(of(a, ip), of(b, ip));
    assert_eq!(of(a, ip), of(a, ip), "a resend is the same message");
    assert_ne!(of(a, ip), of(a, lab), "another sender's never is");
}

#[test]
fn the_stream_refuses_when_full_and_removes_what_is_acked() {
    let cfg = JetStreamQueue {
        servers: vec!["nats://127.0.0.1:4222".into()],
        stream: "MLLP_LAB".into(),
        replicas: 3,
        max_bytes: 10 << 30,
        duplicate_window: Duration::from_secs(600),
        tls: None,
        credentials: None,
        takeover: Duration::from_secs(30),
        publish_timeout: Duration::from_secs(5),
    };
    let s = stream_config(&cfg, 1000);
    assert_eq!(s.discard, stream::DiscardPolicy::New);
    assert_eq!(s.retention, stream::RetentionPolicy::WorkQueue);
    assert_eq!(s.subjects, vec!["MLLP_LAB.queue", "MLLP_LAB.dead"]);
    assert_eq!(
        (s.num_replicas, s.max_bytes, s.max_messages),
        (3, 10 << 30, 1000)
    );
}
