//! The HL7-aware firewall end to end: rules on TLS identity and MSH fields, reject/drop/route
//! actions, per-source rate limits and connection caps, and a legitimate sender that keeps
//! getting every ack while others attack.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mllp_guard::wire::hl7::AckCode;

use crate::harness::*;

const MTLS: &str =
    "    tls:\n      cert: guard.pem\n      key: guard.key\n      client_ca: ca.pem\n";

fn with_type(id: &str, msg_type: &str, processing: &str) -> Vec<u8> {
    let mut m = String::from_utf8(message(id, 300)).unwrap();
    m = m.replacen("ADT^A01^ADT_A01", msg_type, 1).replacen(
        "|P|2.5.1",
        &format!("|{processing}|2.5.1"),
        1,
    );
    m.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_whose_certificate_does_not_match_gets_ar_and_nothing_reaches_the_upstream() {
    let dir = TestDir::new();
    dir.pki_leaf("stranger.example.org", "stranger");
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let rules = "    rules:\n      - name: lab-only\n        match: { tls_identity: [\"lab.example.org\"] }\n        action: allow\n      - name: default\n        action: reject\n";
    let guard = dir.guard(&route_yaml(upstream.addr, rules, MTLS, "")).await;
    let addr = guard.local_addr("test").unwrap();
    let mut stranger = Client::tls(addr, dir.client_tls("ca.pem", Some("stranger")))
        .await
        .unwrap();
    let (code, acked, text) = ack_of(&stranger.send(&message("STRANGER1", 300)).await);
    assert_eq!(
        (code, acked.as_str(), text.as_str()),
        (AckCode::AR, "STRANGER1", "rejected by rule default")
    );
    assert!(
        upstream.received().is_empty(),
        "nothing reached the upstream"
    );
    let mut lab = Client::tls(addr, dir.client_tls("ca.pem", Some("lab")))
        .await
        .unwrap();
    assert_eq!(
        ack_of(&lab.send(&message("LAB1", 300)).await).0,
        AckCode::AA
    );
    assert_eq!(upstream.received().len(), 1);
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_messages_are_rejected_and_a_drop_rule_closes_the_connection() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let rules = "    rules:\n      - name: no-test-messages\n        match: { processing_id: [T, D] }\n        action: reject\n      - name: no-orders-here\n        match: { message_type: [\"ORM^*\"] }\n        action: drop\n";
    let guard = dir.guard(&route_yaml(upstream.addr, rules, "", "")).await;
    let mut client = Client::plain(guard.local_addr("test").unwrap()).await;
    let (code, _, text) = ack_of(&client.send(&with_type("TEST1", "ADT^A01", "T")).await);
    assert_eq!(
        (code, text.as_str()),
        (AckCode::AR, "rejected by rule no-test-messages")
    );
    assert_eq!(
        ack_of(&client.send(&with_type("PROD1", "ADT^A01", "P")).await).0,
        AckCode::AA,
        "the connection stays open after a reject"
    );
    client
        .send_raw(&mllp_guard::wire::codec::encode(&with_type(
            "ORDER1", "ORM^O01", "P",
        )))
        .await;
    assert!(client.is_closed().await, "a drop closes the connection");
    assert_eq!(upstream.received().len(), 1);
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_routed_to_their_own_upstream_by_message_type() {
    let dir = TestDir::new();
    let ehr = FakeUpstream::start(Behaviour::Ack).await;
    let results = FakeUpstream::start(Behaviour::Ack).await;
    let yaml = format!(
        "upstreams:\n  results:\n    address: {}\n    connections: 1\n{}",
        results.addr,
        route_yaml(ehr.addr, "    rules:\n      - name: results\n        match: { message_type: [\"ORU^R01\"] }\n        action: { route: results }\n", "", "")
    );
    let guard = dir.guard(&yaml).await;
    let mut client = Client::plain(guard.local_addr("test").unwrap()).await;
    for i in 0..3 {
        assert_eq!(
            ack_of(
                &client
                    .send(&with_type(&format!("ORU{i}"), "ORU^R01", "P"))
                    .await
            )
            .0,
            AckCode::AA
        );
        assert_eq!(
            ack_of(
                &client
                    .send(&with_type(&format!("ADT{i}"), "ADT^A01", "P"))
                    .await
            )
            .0,
            AckCode::AA
        );
    }
    let ids = |u: &FakeUpstream| u.received().iter().map(|p| id_of(p)).collect::<Vec<_>>();
    assert_eq!(ids(&results), ["ORU0", "ORU1", "ORU2"]);
    assert_eq!(ids(&ehr), ["ADT0", "ADT1", "ADT2"]);
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_source_gets_rate_limited_acks_while_another_source_is_not() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let limits = "    limits: { messages_per_second: 5, burst: 5, on_limit: reject }\n";
    let guard = dir
        .guard(
            &route_yaml(upstream.addr, limits, "", "")
                .replace("allow: [127.0.0.1/32]", "allow: [127.0.0.0/8]"),
        )
        .await;
    let addr = guard.local_addr("test").unwrap();
    let mut flooder = Client::plain_from(addr, "127.0.0.3".parse().unwrap())
        .await
        .unwrap();
    let mut codes = Vec::new();
    for i in 0..12 {
        let (code, acked, text) = ack_of(&flooder.send(&message(&format!("FLOOD{i}"), 200)).await);
        assert_eq!(acked, format!("FLOOD{i}"));
        if code == AckCode::AE {
            assert_eq!(text, "rate limit");
        }
        codes.push(code);
    }
    assert!(
        codes[..5].iter().all(|c| *c == AckCode::AA),
        "the burst passes: {codes:?}"
    );
    assert!(
        codes.iter().filter(|c| **c == AckCode::AE).count() >= 5,
        "the rest is limited: {codes:?}"
    );
    let mut other = Client::plain_from(addr, "127.0.0.2".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(
        ack_of(&other.send(&message("CALM1", 200)).await).0,
        AckCode::AA,
        "another source has its own budget"
    );
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_limit_delay_slows_a_source_down_without_refusing_anything() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let limits = "    limits: { messages_per_second: 20, burst: 1, on_limit: delay }\n";
    let guard = dir.guard(&route_yaml(upstream.addr, limits, "", "")).await;
    let mut client = Client::plain(guard.local_addr("test").unwrap()).await;
    let started = Instant::now();
    for i in 0..11 {
        assert_eq!(
            ack_of(&client.send(&message(&format!("SLOW{i}"), 200)).await).0,
            AckCode::AA
        );
    }
    // 10 waits of 1/20 s each at the least: the source was held back, not refused.
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_per_source_refuses_the_extra_connection_of_that_source_only() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let yaml = route_yaml(
        upstream.addr,
        "    limits: { max_connections_per_source: 2 }\n",
        "",
        "",
    )
    .replace("allow: [127.0.0.1/32]", "allow: [127.0.0.0/8]");
    let guard = dir.guard(&yaml).await;
    let addr = guard.local_addr("test").unwrap();
    let from = |ip: &str| ip.parse::<IpAddr>().unwrap();
    let mut a = Client::plain_from(addr, from("127.0.0.4")).await.unwrap();
    let mut b = Client::plain_from(addr, from("127.0.0.4")).await.unwrap();
    assert_eq!(ack_of(&a.send(&message("PS1", 200)).await).0, AckCode::AA);
    assert_eq!(ack_of(&b.send(&message("PS2", 200)).await).0, AckCode::AA);
    let third = Client::plain_from(addr, from("127.0.0.4")).await;
    let refused = match third {
        Err(_) => true,
        Ok(mut c) => {
            let _ = c
                .link
                .send(&mllp_guard::wire::codec::encode(&message("PS3", 200)))
                .await;
            c.is_closed().await
        }
    };
    assert!(
        refused,
        "a third connection from the same source is refused"
    );
    let mut elsewhere = Client::plain_from(addr, from("127.0.0.5")).await.unwrap();
    assert_eq!(
        ack_of(&elsewhere.send(&message("PS4", 200)).await).0,
        AckCode::AA
    );
    guard.stop().await;
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// A legitimate sender's ack latencies for `n` messages (within the per-source rate limit).
async fn legit_latencies(addr: SocketAddr, source: &str, n: usize) -> Vec<Duration> {
    let mut client = Client::plain_from(addr, source.parse().unwrap())
        .await
        .unwrap();
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("LEGIT{i}");
        let t = Instant::now();
        let (code, acked, _) = ack_of(&client.send(&message(&id, 500)).await);
        lat.push(t.elapsed());
        assert_eq!(
            (code, acked),
            (AckCode::AA, id),
            "the legitimate sender gets every ack"
        );
        // A paced sender, as interfaces are: the attack runs for the whole measurement.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lat.sort();
    lat
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legitimate_sender_gets_every_ack_under_500_slowloris_connections_and_a_flood() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let yaml = route_yaml(
        upstream.addr,
        "    max_connections: 1024\n    limits: { messages_per_second: 50, burst: 50, max_connections_per_source: 16, on_limit: reject }\n",
        "",
        "",
    )
    .replace("allow: [127.0.0.1/32]", "allow: [127.0.0.0/8]");
    let guard = dir.guard(&yaml).await;
    let addr = guard.local_addr("test").unwrap();
    let quiet = legit_latencies(addr, "127.0.0.2", 40).await;

    // 500 slowloris connections from 50 sources (10 each): a frame start, then a byte now and then.
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let mut attackers = Vec::new();
    for s in 0..50u8 {
        let (stop, opened) = (stop.clone(), opened.clone());
        attackers.push(tokio::spawn(async move {
            let mut conns = Vec::new();
            for _ in 0..10 {
                if let Ok(mut c) = Client::plain_from(addr, IpAddr::from([127, 0, 1, s + 1])).await
                {
                    let _ = c.link.send(b"\x0bMSH|^~\\&|").await;
                    opened.fetch_add(1, Ordering::Relaxed);
                    conns.push(c);
                }
            }
            for _ in 0..100 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                for c in &mut conns {
                    let _ = c.link.send(b"x").await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
    }
    // One source flooding as fast as it can.
    let flooded = Arc::new(AtomicUsize::new(0));
    let limited = Arc::new(AtomicUsize::new(0));
    let flooder = {
        let (stop, flooded, limited) = (stop.clone(), flooded.clone(), limited.clone());
        tokio::spawn(async move {
            let mut c = Client::plain_from(addr, "127.0.0.3".parse().unwrap())
                .await
                .unwrap();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && i < 20_000 {
                let (code, _, _) = ack_of(&c.send(&message(&format!("F{i}"), 300)).await);
                flooded.fetch_add(1, Ordering::Relaxed);
                if code == AckCode::AE {
                    limited.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while opened.load(Ordering::Relaxed) < 500 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        opened.load(Ordering::Relaxed),
        500,
        "all slowloris connections are open"
    );
    let attacked = legit_latencies(addr, "127.0.0.6", 40).await;
    stop.store(true, Ordering::Relaxed);
    flooder.await.unwrap();
    for a in attackers {
        a.await.unwrap();
    }
    let (sent, refused) = (
        flooded.load(Ordering::Relaxed),
        limited.load(Ordering::Relaxed),
    );
    assert!(
        refused > 0 && refused < sent,
        "the flooder was limited: {refused} of {sent} refused"
    );
    eprintln!(
        "legitimate sender ack latency: quiet p50 {:?} p99 {:?}; under attack (500 slowloris + flood of {sent}, {refused} rate limited) p50 {:?} p99 {:?}",
        percentile(&quiet, 0.5), percentile(&quiet, 0.99), percentile(&attacked, 0.5), percentile(&attacked, 0.99)
    );
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_on_a_tls_identity_holds_whatever_the_case_of_the_certificate() {
    let dir = TestDir::new();
    dir.pki_leaf("BAD.Example.org", "bad");
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let rules = "    rules:\n      - name: not-bad\n        match: { tls_identity: [\"bad.example.org.\"] }\n        action: reject\n";
    let guard = dir.guard(&route_yaml(upstream.addr, rules, MTLS, "")).await;
    let addr = guard.local_addr("test").unwrap();
    let mut bad = Client::tls(addr, dir.client_tls("ca.pem", Some("bad")))
        .await
        .unwrap();
    let (code, _, text) = ack_of(&bad.send(&message("BAD1", 300)).await);
    assert_eq!(
        (code, text.as_str()),
        (AckCode::AR, "rejected by rule not-bad")
    );
    let mut lab = Client::tls(addr, dir.client_tls("ca.pem", Some("lab")))
        .await
        .unwrap();
    assert_eq!(
        ack_of(&lab.send(&message("LAB1", 300)).await).0,
        AckCode::AA
    );
    assert_eq!(
        upstream.received().len(),
        1,
        "only the lab's message went on"
    );
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_that_does_not_read_its_acks_is_closed_after_send_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let guard = dir
        .guard(&route_yaml(upstream.addr, "    send_timeout: 1s\n", "", ""))
        .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket
        .connect(guard.local_addr("test").unwrap())
        .await
        .unwrap();
    // 60,000 frames without a header, each answered AR by the guard itself (~200 bytes): far
    // more acks than the kernel's buffers hold while nobody reads them.
    let frames = mllp_guard::wire::codec::encode(b"x").repeat(60_000);
    let (mut rx, mut tx) = tcp.split();
    let write = async {
        let _ = tx.write_all(&frames).await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), write).await;
    // Not reading until the guard has closed it (a write then fails): on a loaded machine it
    // takes a while to answer enough frames to stall on our full window (bounded).
    let deadline = Instant::now() + Duration::from_secs(45);
    while Instant::now() < deadline {
        match tx.try_write(b"\x0bx\x1c\r") {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Now read: what was buffered comes out, then the end of a connection the guard closed.
    let mut sink = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(20), rx.read_to_end(&mut sink)).await;
    assert!(ended.is_ok(), "the guard still held the connection open");
    assert!(upstream.received().is_empty());
    guard.stop().await;
}

/// Through the binary, at the shipped defaults (`max_connections: 256`, no limits block): one
/// address that opens idle connections gets three quarters of the slots (192), the next is refused and
/// counted, and a sender from another address is still served. A sender that never reads its
/// acks is closed after `send_timeout` and counted.
#[tokio::test]
async fn one_address_cannot_take_every_slot_at_the_shipped_defaults() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = TestDir::new();
    let (_sink, sink_addr) = crate::cli::start_sink(&["--listen", "127.0.0.1:0"]);
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = dir.path("guard.yaml");
    std::fs::write(
        &config,
        format!(
            "admin:\n  listen: {admin}\n{}",
            route_yaml(sink_addr.parse().unwrap(), "    send_timeout: 1s\n", "", "")
                .replace("allow: [127.0.0.1/32]", "allow: [127.0.0.0/8]")
        ),
    )
    .unwrap();
    let (_guard, listen, _logs) = crate::cli::start_guard(&config);
    let listen: SocketAddr = listen.parse().unwrap();

    let mut hog = Vec::new();
    for _ in 0..192 {
        hog.push(Client::plain(listen).await);
    }
    // Refused (reset) as soon as it is accepted, which its connect may already see.
    let refused = match Client::plain_from(listen, "127.0.0.1".parse().unwrap()).await {
        Err(_) => true,
        Ok(mut one_more) => one_more.is_closed().await,
    };
    assert!(refused, "the 193rd connection of one address is refused");
    let mut other = Client::plain_from(listen, "127.0.0.2".parse().unwrap())
        .await
        .unwrap();
    other
        .send_raw(&mllp_guard::wire::codec::encode(&message("FAIR-1", 200)))
        .await;
    let ack = other.read_ack().await.expect("the other sender is served");
    assert_eq!(ack_of(&ack).0, AckCode::AA);
    // The hog's connections are still open (it was capped, not cut off).
    hog[0]
        .send_raw(&mllp_guard::wire::codec::encode(&message("HOG-1", 200)))
        .await;
    assert_eq!(ack_of(&hog[0].read_ack().await.unwrap()).0, AckCode::AA);

    // A sender from a third address that never reads its acks.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.3:0".parse().unwrap()).unwrap();
    let mut tcp = socket.connect(listen).await.unwrap();
    let frames = mllp_guard::wire::codec::encode(b"x").repeat(60_000);
    let (mut rx, mut tx) = tcp.split();
    let _ = tokio::time::timeout(Duration::from_secs(5), tx.write_all(&frames)).await;
    // Not reading until the guard has given up on it: its acks (60,000 of them, far more than
    // the buffers hold) stall its writes, and `send_timeout` closes it. Waited for by the
    // metric, not a fixed sleep: a loaded machine answers the frames slowly.
    let closed_for_send_timeout = |metrics: &str| {
        metrics.lines().any(|l| {
            l.starts_with("mllp_guard_connections_closed_total")
                && l.contains("reason=\"send_timeout\"")
                && !l.ends_with(" 0")
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, metrics) = crate::admin::get(admin, "/metrics")
            .await
            .expect("/metrics");
        if closed_for_send_timeout(&metrics) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not closed for send_timeout within 60 s: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut drained = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(20), rx.read_to_end(&mut drained)).await;
    assert!(ended.is_ok(), "the guard still held the connection open");

    let (status, metrics) = crate::admin::get(admin, "/metrics")
        .await
        .expect("/metrics");
    assert_eq!(status, 200);
    let count = |reason: &str, family: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(family) && l.contains(&format!("reason=\"{reason}\"")))
            .and_then(|l| l.rsplit(' ').next())
            .map(|v| v.parse::<f64>().unwrap())
    };
    assert_eq!(
        count("source_limit", "mllp_guard_connections_refused_total"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        count("send_timeout", "mllp_guard_connections_closed_total"),
        Some(1.0),
        "{metrics}"
    );
}
