//! The relay end to end on loopback: the four plain/TLS combinations, access control, honest acks
//! and byte-exact payloads.

use std::sync::Arc;
use std::time::Duration;

use mllp_guard::wire::hl7::AckCode;

use crate::harness::*;

const LISTENER_TLS: &str = "    tls:\n      cert: guard.pem\n      key: guard.key\n";
const LISTENER_MTLS: &str =
    "    tls:\n      cert: guard.pem\n      key: guard.key\n      client_ca: ca.pem\n";
const UPSTREAM_TLS: &str = "      tls:\n        ca: ca.pem\n        server_name: ehr.example.org\n        cert: guard-client.pem\n        key: guard-client.key\n";

async fn relay_one_message(listener_tls: &str, upstream_tls: &str) {
    let dir = TestDir::new();
    let upstream_cfg = (!upstream_tls.is_empty()).then(|| dir.server_tls("ehr", Some("ca.pem")));
    let upstream = FakeUpstream::start_with_tls(Behaviour::Ack, upstream_cfg).await;
    let guard = dir
        .guard(&route_yaml(upstream.addr, "", listener_tls, upstream_tls))
        .await;
    let addr = guard.local_addr("test").unwrap();
    let mut client = if listener_tls.is_empty() {
        Client::plain(addr).await
    } else {
        Client::tls(addr, dir.client_tls("ca.pem", Some("lab")))
            .await
            .unwrap()
    };
    for (i, file) in [
        "01_adt_a01.hl7",
        "13_iso8859_1_names.hl7",
        "04_oru_r01_500_obx.hl7",
    ]
    .iter()
    .enumerate()
    {
        let payload = corpus_bytes(file);
        let ack = client.send(&payload).await;
        let (code, acked, _) = ack_of(&ack);
        assert_eq!(code, AckCode::AA, "{file}");
        let expected = mllp_guard::wire::hl7::Header::parse(&payload)
            .unwrap()
            .control_id()
            .to_vec();
        assert_eq!(acked.as_bytes(), &expected[..], "{file}");
        assert_eq!(
            upstream.received()[i],
            payload,
            "{file} must arrive byte-exact"
        );
    }
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_to_plain_relays_messages_and_acks_byte_exact() {
    relay_one_message("", "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_to_tls_relays_messages_and_acks_byte_exact() {
    relay_one_message("", UPSTREAM_TLS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_plain_relays_messages_and_acks_byte_exact() {
    relay_one_message(LISTENER_TLS, "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_tls_with_client_certificates_on_both_legs_relays_byte_exact() {
    relay_one_message(LISTENER_MTLS, UPSTREAM_TLS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_listener_refuses_a_client_without_a_certificate() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let guard = dir
        .guard(&route_yaml(upstream.addr, "", LISTENER_MTLS, ""))
        .await;
    let addr = guard.local_addr("test").unwrap();
    // TLS 1.3: the client may finish its side before the server rejects; the refusal shows on
    // the first exchange at the latest.
    match Client::tls(addr, dir.client_tls("ca.pem", None)).await {
        Err(_) => {}
        Ok(mut client) => {
            let _ = client
                .link
                .send(&mllp_guard::wire::codec::encode(&message("NOCERT1", 200)))
                .await;
            assert!(
                client.is_closed().await,
                "a client without a certificate must be refused"
            );
        }
    }
    assert!(upstream.received().is_empty());
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_listener_refuses_a_certificate_from_another_ca() {
    let dir = TestDir::new();
    let other = crate::pki::Pki::new("some other CA");
    other
        .leaf("lab.example.org", crate::pki::Usage::Client)
        .write(dir.dir.path(), "stranger");
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let guard = dir
        .guard(&route_yaml(upstream.addr, "", LISTENER_MTLS, ""))
        .await;
    let addr = guard.local_addr("test").unwrap();
    match Client::tls(addr, dir.client_tls("ca.pem", Some("stranger"))).await {
        Err(_) => {}
        Ok(mut client) => {
            let _ = client
                .link
                .send(&mllp_guard::wire::codec::encode(&message("STRANGER1", 200)))
                .await;
            assert!(
                client.is_closed().await,
                "a certificate from another CA must be refused"
            );
        }
    }
    assert!(upstream.received().is_empty());
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_outside_the_allowlist_is_refused_before_any_byte() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let guard = dir.guard(&route_yaml(upstream.addr, "", "", "")).await;
    let addr = guard.local_addr("test").unwrap();
    assert!(is_refused(Client::plain_from(addr, "127.0.0.2".parse().unwrap()).await).await);
    // The allowed address still gets through.
    let mut friend = Client::plain(addr).await;
    assert_eq!(
        ack_of(&friend.send(&message("ALLOWED1", 200)).await).0,
        AckCode::AA
    );
    assert_eq!(upstream.received().len(), 1);
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_max_connections_are_refused_and_a_freed_slot_is_reused() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let guard = dir
        .guard(&route_yaml(
            upstream.addr,
            "    max_connections: 2\n",
            "",
            "",
        ))
        .await;
    let addr = guard.local_addr("test").unwrap();
    let mut a = Client::plain(addr).await;
    let mut b = Client::plain(addr).await;
    assert_eq!(ack_of(&a.send(&message("CAP1", 200)).await).0, AckCode::AA);
    assert_eq!(ack_of(&b.send(&message("CAP2", 200)).await).0, AckCode::AA);
    assert!(
        is_refused(Client::plain_from(addr, "127.0.0.1".parse().unwrap()).await).await,
        "the third connection must be refused"
    );
    drop(a);
    // The slot frees once the guard notices the close; retry for a bounded time.
    let mut admitted = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Ok(mut d) = Client::plain_from(addr, "127.0.0.1".parse().unwrap()).await else {
            continue;
        };
        if d.link
            .send(&mllp_guard::wire::codec::encode(&message("CAP4", 200)))
            .await
            .is_ok()
        {
            if let Some(ack) = d.read_ack().await {
                assert_eq!(ack_of(&ack).0, AckCode::AA);
                admitted = true;
                break;
            }
        }
    }
    assert!(admitted, "a freed slot must admit a new connection");
    drop(b);
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_16_mib_message_arrives_byte_exact() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let guard = dir
        .guard(
            &route_yaml(upstream.addr, "    max_message_bytes: 16MiB\n", "", "")
                .replace("ack_timeout: 2s", "ack_timeout: 30s"),
        )
        .await;
    let addr = guard.local_addr("test").unwrap();
    let payload = message("BIG16", 16 * 1024 * 1024);
    assert_eq!(payload.len(), 16 * 1024 * 1024);
    let mut client = Client::plain(addr).await;
    assert_eq!(ack_of(&client.send(&payload).await).0, AckCode::AA);
    assert!(upstream.received()[0] == payload);
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_message_is_answered_ae_never_forwarded_and_the_connection_stays_open() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let guard = dir
        .guard(&route_yaml(
            upstream.addr,
            "    max_message_bytes: 64KiB\n",
            "",
            "",
        ))
        .await;
    let addr = guard.local_addr("test").unwrap();
    let mut client = Client::plain(addr).await;
    let (code, acked, text) = ack_of(&client.send(&message("HUGE1", 100_000)).await);
    assert_eq!((code, acked.as_str()), (AckCode::AE, "HUGE1"));
    assert_eq!(text, "message too large");
    assert_eq!(
        ack_of(&client.send(&message("SMALL1", 500)).await).0,
        AckCode::AA
    );
    assert_eq!(upstream.received().len(), 1);
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatched_ack_gives_the_sender_ae_not_the_upstreams_ack() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::WrongControlId).await;
    let guard = dir.guard(&route_yaml(upstream.addr, "", "", "")).await;
    let mut client = Client::plain(guard.local_addr("test").unwrap()).await;
    let (code, acked, text) = ack_of(&client.send(&message("MISMATCH1", 300)).await);
    assert_eq!((code, acked.as_str()), (AckCode::AE, "MISMATCH1"));
    assert_eq!(text, "invalid reply from receiver");
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_timeout_gives_ae_and_the_late_ack_never_answers_the_next_message() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::LateAck(Duration::from_millis(1500))).await;
    let yaml =
        route_yaml(upstream.addr, "", "", "").replace("ack_timeout: 2s", "ack_timeout: 500ms");
    let guard = dir.guard(&yaml).await;
    let mut client = Client::plain(guard.local_addr("test").unwrap()).await;
    let (code, acked, text) = ack_of(&client.send(&message("SLOW1", 300)).await);
    assert_eq!(
        (code, acked.as_str(), text.as_str()),
        (AckCode::AE, "SLOW1", "no reply from receiver")
    );
    // The late ack for SLOW1 arrives after ~1.5 s on the old (closed) connection: it must never
    // be taken as the answer to SLOW2.
    let (code2, acked2, _) = ack_of(&client.send(&message("SLOW2", 300)).await);
    assert_eq!(acked2, "SLOW2");
    assert_eq!(code2, AckCode::AE);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        upstream
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 2,
        "the timed-out connection was closed and a new one opened"
    );
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_gives_ae_with_a_fixed_text_that_names_nothing_inside() {
    let dir = TestDir::new();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let guard = dir.guard(&route_yaml(dead, "", "", "")).await;
    let mut client = Client::plain(guard.local_addr("test").unwrap()).await;
    let (code, acked, text) = ack_of(&client.send(&message("DOWN1", 300)).await);
    assert_eq!((code, acked.as_str()), (AckCode::AE, "DOWN1"));
    assert_eq!(text, "receiver unavailable");
    let whole = String::from_utf8_lossy(&client.send(&message("DOWN2", 300)).await).into_owned();
    assert!(
        !whole.contains(&dead.port().to_string()) && !whole.contains("os error"),
        "no address or OS error in the ack: {whole:?}"
    );
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_with_on_upstream_failure_close_closes_the_sender() {
    let dir = TestDir::new();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let guard = dir
        .guard(&route_yaml(
            dead,
            "    on_upstream_failure: close\n",
            "",
            "",
        ))
        .await;
    let mut client = Client::plain(guard.local_addr("test").unwrap()).await;
    client
        .send_raw(&mllp_guard::wire::codec::encode(&message("DOWN2", 300)))
        .await;
    assert!(client.is_closed().await);
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_that_closes_after_every_ack_is_invisible_to_the_sender() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::AckThenClose).await;
    let guard = dir.guard(&route_yaml(upstream.addr, "", "", "")).await;
    let mut client = Client::plain(guard.local_addr("test").unwrap()).await;
    for i in 0..5 {
        let id = format!("CLOSER{i}");
        // Give the upstream's FIN time to arrive, as it would between real messages.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (code, acked, _) = ack_of(&client.send(&message(&id, 300)).await);
        assert_eq!((code, acked), (AckCode::AA, id));
    }
    assert_eq!(
        upstream
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        5
    );
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_one_serializes_twenty_senders_with_every_ack_correct() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let guard = dir
        .guard(&route_yaml(upstream.addr, "", "", "      connections: 1\n"))
        .await;
    let addr = guard.local_addr("test").unwrap();
    let mut tasks = Vec::new();
    for s in 0..20 {
        tasks.push(tokio::spawn(async move {
            let mut client = Client::plain(addr).await;
            for m in 0..5 {
                let id = format!("POOL{s}-{m}");
                let (code, acked, _) = ack_of(&client.send(&message(&id, 300)).await);
                assert_eq!((code, acked), (AckCode::AA, id));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(upstream.received().len(), 100);
    assert_eq!(
        upstream
            .max_concurrent
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_connections_of_a_hundred_messages_all_get_their_own_ack() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let guard = dir.guard(&route_yaml(upstream.addr, "", "", "")).await;
    let addr = guard.local_addr("test").unwrap();
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for s in 0..100 {
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = Client::plain(addr).await;
            for m in 0..100 {
                let id = format!("L{s}-{m}");
                let (code, acked, _) = ack_of(&client.send(&message(&id, 200)).await);
                assert_eq!((code, acked), (AckCode::AA, id));
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(done.load(std::sync::atomic::Ordering::Relaxed), 10_000);
    assert_eq!(upstream.received().len(), 10_000);
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_without_a_header_is_rejected_ar_and_not_forwarded() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let guard = dir.guard(&route_yaml(upstream.addr, "", "", "")).await;
    let mut client = Client::plain(guard.local_addr("test").unwrap()).await;
    let (code, acked, _) = ack_of(&client.send(&corpus_bytes("malformed/no_msh.hl7")).await);
    assert_eq!((code, acked.as_str()), (AckCode::AR, ""));
    assert_eq!(
        ack_of(&client.send(&message("AFTER1", 200)).await).0,
        AckCode::AA
    );
    assert_eq!(upstream.received().len(), 1);
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_that_stalls_past_receive_timeout_closes_the_connection_unforwarded() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let guard = dir
        .guard(&route_yaml(
            upstream.addr,
            "    receive_timeout: 300ms\n",
            "",
            "",
        ))
        .await;
    let mut client = Client::plain(guard.local_addr("test").unwrap()).await;
    let frame = mllp_guard::wire::codec::encode(&message("STALL1", 300));
    client.send_raw(&frame[..100]).await;
    assert!(client.is_closed().await);
    assert!(upstream.received().is_empty());
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_corpus_frame_stream_forwards_exactly_the_recommended_messages() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let guard = dir.guard(&route_yaml(upstream.addr, "", "", "")).await;
    let addr = guard.local_addr("test").unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&corpus_bytes("frames/manifest.json")).unwrap();
    for entry in manifest.as_array().unwrap() {
        let file = entry["file"].as_str().unwrap();
        let bytes = corpus_bytes(&format!("frames/{file}"));
        let recommended: Vec<String> = entry["recommended"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        let before = upstream.received().len();
        let mut client = Client::plain(addr).await;
        let mut cuts: Vec<usize> = entry["chunks"]
            .as_array()
            .map(|c| c.iter().map(|v| v.as_u64().unwrap() as usize).collect())
            .unwrap_or_default();
        cuts.push(bytes.len());
        let mut start = 0;
        for cut in cuts {
            client.send_raw(&bytes[start..cut]).await;
            start = cut;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut acked = Vec::new();
        for _ in 0..recommended.len() {
            let ack = client
                .read_ack()
                .await
                .unwrap_or_else(|| panic!("{file}: connection closed early"));
            acked.push(ack_of(&ack).1);
        }
        assert_eq!(acked, recommended, "{file}: acks");
        client.link.shutdown().await;
        drop(client);
        // Anything wrongly forwarded after the last ack would show up within this pause.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let forwarded: Vec<String> = upstream.received()[before..]
            .iter()
            .map(|p| id_of(p))
            .collect();
        assert_eq!(forwarded, recommended, "{file}: forwarded");
    }
    guard.stop().await;
}

/// A refused connection is reset at once: the connect itself may fail, or the first exchange.
async fn is_refused(client: std::io::Result<Client>) -> bool {
    let Ok(mut client) = client else { return true };
    let _ = client
        .link
        .send(&mllp_guard::wire::codec::encode(&message("REFUSED1", 200)))
        .await;
    client.is_closed().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_the_message_in_flight_finish_then_refuses_new_connections() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::LateAck(Duration::from_millis(700))).await;
    let guard = dir.guard(&route_yaml(upstream.addr, "", "", "")).await;
    let addr = guard.local_addr("test").unwrap();
    let mut client = Client::plain(addr).await;
    client
        .send_raw(&mllp_guard::wire::codec::encode(&message("INFLIGHT1", 300)))
        .await;
    // Wait until the message is with the upstream, then ask the guard to stop.
    for _ in 0..100 {
        if !upstream.received().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stopping = tokio::spawn(guard.stop());
    let ack = client
        .read_ack()
        .await
        .expect("the in-flight message is answered before exit");
    assert_eq!(ack_of(&ack).0, AckCode::AA);
    assert!(
        client.is_closed().await,
        "after its ack the connection is closed"
    );
    assert!(stopping.await.unwrap(), "drained within the grace period");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_a_quiet_sender() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let guard = dir
        .guard(&route_yaml(
            upstream.addr,
            "    idle_timeout: 300ms\n",
            "",
            "",
        ))
        .await;
    let mut client = Client::plain(guard.local_addr("test").unwrap()).await;
    assert_eq!(
        ack_of(&client.send(&message("IDLE1", 300)).await).0,
        AckCode::AA
    );
    assert!(client.is_closed().await);
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_loopback_listener_admits_an_allowed_ipv6_sender() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 loopback on this machine");
        return;
    }
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let yaml = route_yaml(upstream.addr, "", "", "")
        .replace("listen: 127.0.0.1:0", "listen: \"[::1]:0\"")
        .replace("allow: [127.0.0.1/32]", "allow: [\"::1/128\"]");
    let guard = dir.guard(&yaml).await;
    let addr = guard.local_addr("test").unwrap();
    assert!(addr.is_ipv6());
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut client = Client {
        link: mllp_guard::wire::link::Link::new(mllp_guard::net::Stream::Plain(tcp), 1 << 20),
    };
    assert_eq!(
        ack_of(&client.send(&message("V6-1", 300)).await).0,
        AckCode::AA
    );
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_the_tls_handshake_is_closed_after_handshake_timeout() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let guard = dir
        .guard(&route_yaml(
            upstream.addr,
            "    handshake_timeout: 300ms\n",
            LISTENER_TLS,
            "",
        ))
        .await;
    let addr = guard.local_addr("test").unwrap();
    // A plain TCP client that says nothing: the guard waits for a ClientHello, then gives up.
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut stalled, &mut buf),
    )
    .await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "closed by the guard: {read:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
    // Meanwhile the listener kept serving others.
    let mut client = Client::tls(addr, dir.client_tls("ca.pem", None))
        .await
        .unwrap();
    assert_eq!(
        ack_of(&client.send(&message("AFTERSTALL", 200)).await).0,
        AckCode::AA
    );
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_on_a_plaintext_listener_is_closed_at_once() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let guard = dir.guard(&route_yaml(upstream.addr, "", "", "")).await;
    let addr = guard.local_addr("test").unwrap();
    let started = std::time::Instant::now();
    let result = Client::tls(addr, dir.client_tls("ca.pem", None)).await;
    assert!(result.is_err(), "the handshake cannot succeed");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed at once, not after receive_timeout"
    );
    assert!(upstream.received().is_empty());
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_sender_is_closed_at_receive_timeout_even_while_it_keeps_trickling() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let guard = dir
        .guard(&route_yaml(
            upstream.addr,
            "    receive_timeout: 500ms\n",
            "",
            "",
        ))
        .await;
    let mut client = Client::plain(guard.local_addr("test").unwrap()).await;
    let frame = mllp_guard::wire::codec::encode(&message("SLOWLORIS", 300));
    let mut closed = false;
    // One byte every 100 ms would take 30 s for this frame; the guard must cut it at ~0.5 s.
    for byte in frame.iter().take(60) {
        if client.link.send(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        closed || client.is_closed().await,
        "the trickling sender was cut off"
    );
    assert!(upstream.received().is_empty());
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_a_tls_listener_fails_the_handshake_and_closes() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let guard = dir
        .guard(&route_yaml(upstream.addr, "", LISTENER_TLS, ""))
        .await;
    let mut raw = Client::plain(guard.local_addr("test").unwrap()).await;
    raw.send_raw(&mllp_guard::wire::codec::encode(&message("NOTLS", 300)))
        .await;
    assert!(raw.is_closed().await);
    assert!(upstream.received().is_empty());
    guard.stop().await;
}

/// What the guard does with each malformed corpus payload sent in a correct frame (forward mode).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_corpus_payload_has_its_defined_outcome() {
    #[derive(Debug, PartialEq)]
    enum Outcome {
        /// Forwarded and the upstream's ack relayed (the header is readable).
        Relayed,
        /// Answered AR by the guard, not forwarded.
        RejectedAr,
        /// No message reached the decoder's output (framing bytes inside, or empty): no answer.
        NoMessage,
    }
    let cases = [
        ("binary_garbage.bin", Outcome::NoMessage),
        ("empty.hl7", Outcome::NoMessage),
        ("lowercase_msh.hl7", Outcome::RejectedAr),
        ("missing_encoding_chars.hl7", Outcome::RejectedAr),
        ("missing_field_separator.hl7", Outcome::RejectedAr),
        ("mllp_bytes_in_payload.hl7", Outcome::NoMessage),
        ("msh_without_msh10_12.hl7", Outcome::Relayed),
        ("no_msh.hl7", Outcome::RejectedAr),
        ("truncated_msh.hl7", Outcome::Relayed),
        ("whitespace_only.hl7", Outcome::RejectedAr),
    ];
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let guard = dir.guard(&route_yaml(upstream.addr, "", "", "")).await;
    let addr = guard.local_addr("test").unwrap();
    for (file, expected) in cases {
        let before = upstream.received().len();
        let mut client = Client::plain(addr).await;
        client
            .send_raw(&mllp_guard::wire::codec::encode(&corpus_bytes(&format!(
                "malformed/{file}"
            ))))
            .await;
        // A probe message after it: its ack tells whether anything else was answered first.
        client
            .send_raw(&mllp_guard::wire::codec::encode(&message("PROBE", 200)))
            .await;
        let mut acks = Vec::new();
        loop {
            let ack = client
                .read_ack()
                .await
                .expect("the probe is always answered");
            let (code, acked, _) = ack_of(&ack);
            if acked == "PROBE" {
                break;
            }
            acks.push(code);
        }
        let forwarded = upstream.received().len() - before - 1;
        let got = match (acks.as_slice(), forwarded) {
            ([AckCode::AA], 1) => Outcome::Relayed,
            ([AckCode::AR], 0) => Outcome::RejectedAr,
            ([], 0) => Outcome::NoMessage,
            other => panic!("{file}: unexpected acks/forwards {other:?}"),
        };
        assert_eq!(got, expected, "{file}");
    }
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_with_stx_etx_framing_is_bridged_to_a_standard_mllp_receiver() {
    use mllp_guard::wire::codec::{Decoded, Decoder, Framing};
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let yaml = route_yaml(
        upstream.addr,
        "    framing: { start: 0x02, end: [0x03] }\n",
        "",
        "",
    );
    let guard = dir.guard(&yaml).await;
    let framing = Framing::new(0x02, &[0x03]).unwrap();
    let mut tcp = tokio::net::TcpStream::connect(guard.local_addr("test").unwrap())
        .await
        .unwrap();
    let payload = corpus_bytes("13_iso8859_1_names.hl7");
    tokio::io::AsyncWriteExt::write_all(
        &mut tcp,
        &mllp_guard::wire::codec::encode_with(framing, &payload),
    )
    .await
    .unwrap();
    let mut decoder = Decoder::with_framing(1 << 20, framing);
    let mut buf = bytes::BytesMut::new();
    let ack = loop {
        if let Some(Decoded::Frame(frame)) = decoder.decode(&mut buf) {
            assert_eq!(
                frame.as_wire()[0],
                0x02,
                "the ack goes back in the sender's framing"
            );
            break frame.payload().to_vec();
        }
        let n = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read_buf(&mut tcp, &mut buf),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(n > 0, "closed without an ack");
    };
    assert_eq!(ack_of(&ack).0, AckCode::AA);
    assert!(
        upstream.received()[0] == payload,
        "arrives byte-exact in standard MLLP"
    );
    guard.stop().await;
}
