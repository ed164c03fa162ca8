use super::stream::{message_id, stream_config};
use crate::config::JetStreamQueue;
use crate::wire::hl7::Header;
use async_nats::jetstream::stream;
use std::time::Duration;

#[test]
fn message_ids_escape_separators_and_non_printable_bytes() {
    let h = Header::parse(b"MSH|^~\\&|LAB%|F\xe9 X|R|F|2024||ADT^A01|C1|P|2.5\r").unwrap();
    assert_eq!(message_id(&h), "LAB%25|F%E9%20X|C1");
    let a = Header::parse(b"MSH|^~\\&|AB|C|R|F|2024||ADT^A01|X|P|2.5\r").unwrap();
    let b = Header::parse(b"MSH|^~\\&|A|BC|R|F|2024||ADT^A01|X|P|2.5\r").unwrap();
    assert_ne!(message_id(&a), message_id(&b));
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
