use super::stream::{dead_stream_config, message_id, stream_config};
use crate::config::{DeadLetterLimits, JetStreamQueue};
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

fn lab() -> JetStreamQueue {
    JetStreamQueue {
        servers: vec!["nats://127.0.0.1:4222".into()],
        stream: "MLLP_LAB".into(),
        replicas: 3,
        max_bytes: 10 << 30,
        duplicate_window: Duration::from_secs(600),
        tls: None,
        credentials: None,
        takeover: Duration::from_secs(30),
        publish_timeout: Duration::from_secs(5),
    }
}

#[test]
fn the_stream_refuses_when_full_and_removes_what_is_acked() {
    let s = stream_config(&lab(), 1000);
    assert_eq!(s.discard, stream::DiscardPolicy::New);
    assert_eq!(s.retention, stream::RetentionPolicy::WorkQueue);
    assert_eq!(s.subjects, vec!["MLLP_LAB.queue"], "dead letters are apart");
    assert_eq!(
        (s.num_replicas, s.max_bytes, s.max_messages),
        (3, 10 << 30, 1000)
    );
}

#[test]
fn dead_letters_have_a_stream_of_their_own_with_their_own_limits() {
    let limits = DeadLetterLimits {
        max_messages: 7,
        max_bytes: 2 << 20,
    };
    let d = dead_stream_config(&lab(), limits);
    assert_eq!(d.name, "MLLP_LAB_DEAD");
    assert_eq!(d.subjects, vec!["MLLP_LAB.dead"]);
    assert_eq!(d.discard, stream::DiscardPolicy::New, "full = refused");
    assert_eq!(d.retention, stream::RetentionPolicy::Limits, "kept");
    assert_eq!(
        (d.num_replicas, d.max_bytes, d.max_messages),
        (3, 2 << 20, 7)
    );
}

#[test]
fn full_dead_letters_clear_once_a_read_finds_fewer_of_them() {
    use super::{Depth, Limits, Nats};
    use crate::custody::counters::Counters;
    use std::sync::atomic::Ordering::Relaxed;

    let limits = Limits {
        max_messages: 10,
        dead: DeadLetterLimits {
            max_messages: 2,
            max_bytes: 1 << 20,
        },
    };
    let nats = Nats::new("lab".into(), lab(), limits);
    let counters = Counters::default();
    let read = |dead, dead_bytes| Depth {
        dead,
        dead_bytes,
        ..Depth::default()
    };
    nats.notice_room(&counters, &read(0, 0));
    counters.dead_letters_full.store(true, Relaxed);
    // The first read while full is the base; the same, or more (another guard stored a
    // smaller one), is no room.
    for (dead, bytes) in [(2, 900), (2, 900), (3, 1000)] {
        nats.notice_room(&counters, &read(dead, bytes));
        assert!(counters.dead_letters_full.load(Relaxed), "{dead} {bytes}");
    }
    // Someone replayed or purged: room.
    nats.notice_room(&counters, &read(1, 450));
    assert!(!counters.dead_letters_full.load(Relaxed));
    // Found full again; emptied before any read while full (no mark to compare with): room.
    counters.dead_letters_full.store(true, Relaxed);
    nats.notice_room(&counters, &read(0, 0));
    assert!(!counters.dead_letters_full.load(Relaxed));
}
