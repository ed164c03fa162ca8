//! The memory budget (`max_buffered_bytes`) through the binary: senders that each start a large
//! frame and never end it cannot take the guard's memory beyond the budget, while a sender on
//! another connection keeps getting its acks, and a large message waits for room rather than
//! being dropped or cut.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mllp_guard::wire::codec;
use mllp_guard::wire::hl7::AckCode;

use crate::admin::{free_port, get, sample};
use crate::harness::*;

/// The process's resident set in bytes, from `/proc/PID/status`.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

/// Opens a connection and pushes the start of a frame of `bytes` (never ending it), from a
/// thread, for at most `limit`: returns the socket (kept open) and how much the kernel took.
fn stall_frame(to: SocketAddr, bytes: usize, limit: Duration) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut tcp = std::net::TcpStream::connect(to).unwrap();
        tcp.set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let chunk = {
            let mut c = vec![b'A'; 64 * 1024];
            c[0] = 0x0b;
            c
        };
        let mut sent = 0;
        let deadline = Instant::now() + limit;
        while sent < bytes && Instant::now() < deadline {
            let part = if sent == 0 { &chunk[..] } else { &chunk[1..] };
            match tcp.write(part) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => break,
            }
        }
        // Keep the frame open (and the connection) until the guard cuts it.
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        drop(tcp);
        sent
    })
}

/// 40 connections each pushing 4 MiB of a frame they never end (160 MiB unbudgeted) against a
/// budget of 8 MiB: the bytes lent stay within it, the guard's resident memory stays far below
/// what the senders pushed, reads wait (counted), a sender on its own connection gets every ack
/// within 2 s, and once `receive_timeout` has cut the stalled frames a 1 MiB message goes
/// through whole.
#[tokio::test]
async fn senders_that_stall_large_frames_cannot_take_memory_beyond_the_budget() {
    let dir = TestDir::new();
    let (_sink, sink_addr) = crate::cli::start_sink(&["--listen", "127.0.0.1:0"]);
    let admin = free_port();
    let config = dir.path("guard.yaml");
    std::fs::write(
        &config,
        format!(
            "admin:\n  listen: {admin}\nmax_buffered_bytes: 8MiB\n{}",
            route_yaml(
                sink_addr.parse().unwrap(),
                "    receive_timeout: 6s\n    max_message_bytes: 6MiB\n",
                "",
                ""
            )
        ),
    )
    .unwrap();
    let (guard, listen, _logs) = crate::cli::start_guard(&config);
    let listen: SocketAddr = listen.parse().unwrap();
    let before = rss_bytes(guard.0.id());

    let stallers: Vec<_> = (0..40)
        .map(|_| stall_frame(listen, 4 * 1024 * 1024, Duration::from_secs(5)))
        .collect();
    // While they push: a legitimate sender's small messages are answered promptly.
    let mut client = Client::plain(listen).await;
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let started = Instant::now();
        let ack = client.send(&message(&format!("SMALL{i}"), 2_000)).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(ack_of(&ack).0, AckCode::AA);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, metrics) = get(admin, "/metrics").await.unwrap();
    let lent = sample(&metrics, "mllp_guard_buffered_bytes").unwrap();
    let waits = sample(&metrics, "mllp_guard_buffer_waits_total").unwrap();
    let during = rss_bytes(guard.0.id());
    let pushed: usize = stallers.into_iter().map(|t| t.join().unwrap()).sum();

    eprintln!(
        "budget 8 MiB: senders pushed {pushed} bytes, RSS {before} -> {during}, lent {lent}, waits {waits}, slowest small ack {slowest:?}"
    );
    assert!(slowest < Duration::from_secs(2), "slowest ack {slowest:?}");
    assert!(lent <= 8.0 * 1024.0 * 1024.0, "lent {lent}");
    assert!(waits >= 1.0, "no read waited: {metrics}");
    assert!(
        pushed > 40 * 1024 * 1024,
        "the senders pushed only {pushed} bytes"
    );
    // The budget, 40 allowances of 64 KiB and some slack; far from the bytes pushed.
    let grew = during.saturating_sub(before);
    assert!(
        grew < 48 * 1024 * 1024,
        "RSS grew by {grew} bytes (from {before}) while senders pushed {pushed}"
    );

    // The stalled frames are cut at receive_timeout; then a large message fits again, whole.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = get(admin, "/metrics").await.unwrap();
        if sample(&metrics, "mllp_guard_buffered_bytes") == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "the budget never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let large = message("LARGE1", 1024 * 1024);
    let ack = client.send(&large).await;
    assert_eq!(ack_of(&ack).0, AckCode::AA);
}

/// A message of about `size` bytes whose body is a pattern of its own (`seed`), so a message
/// whose bytes were written over by another's would not compare equal.
fn patterned(control_id: &str, size: usize, seed: u8) -> Vec<u8> {
    let mut msg = message(control_id, 200);
    msg.extend_from_slice(b"OBX|1|ED|PDF||");
    let body = size.saturating_sub(msg.len() + 1);
    msg.extend((0..body).map(|i| b'A' + ((i / 997 + usize::from(seed)) % 26) as u8));
    msg.push(b'\r');
    msg
}

/// Large messages one after another on three connections at once, and two sent back to back
/// without waiting: the guard reuses large frames' buffers across messages and connections
/// (`wire::warm_buffers`), and every message still reaches the receiver byte for byte, acked AA.
#[tokio::test]
async fn large_messages_in_a_row_arrive_whole_while_their_buffers_are_reused() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let config = dir.path("guard.yaml");
    let admin = free_port();
    std::fs::write(
        &config,
        format!(
            "admin:\n  listen: {admin}\n{}",
            route_yaml(upstream.addr, "    max_message_bytes: 8MiB\n", "", "")
        ),
    )
    .unwrap();
    let (_guard, listen, _logs) = crate::cli::start_guard(&config);
    let listen: SocketAddr = listen.parse().unwrap();
    let sizes = [
        300 * 1024,
        1024 * 1024,
        700 * 1024,
        2 * 1024 * 1024,
        1024 * 1024,
        3_600_000,
    ];
    let mut sent = Vec::new();
    let mut senders = Vec::new();
    for c in 0..3u8 {
        let messages: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(n, &size)| patterned(&format!("BIG{c}-{n}"), size, c * 7 + n as u8))
            .collect();
        sent.extend(messages.clone());
        senders.push(tokio::spawn(async move {
            let mut client = Client::plain(listen).await;
            for m in &messages {
                let ack = client.send(m).await;
                assert_eq!(ack_of(&ack).0, AckCode::AA, "{}", id_of(m));
            }
        }));
    }
    for sender in senders {
        sender.await.unwrap();
    }
    // Two large frames in one write: the second's first bytes arrive with the first's end.
    let pair = [
        patterned("PAIR-0", 1024 * 1024, 1),
        patterned("PAIR-1", 1024 * 1024, 2),
    ];
    let mut client = Client::plain(listen).await;
    client
        .send_raw(&[codec::encode(&pair[0]), codec::encode(&pair[1])].concat())
        .await;
    for m in &pair {
        let ack = client.read_ack().await.expect("an ack");
        let (code, acked, _) = ack_of(&ack);
        assert_eq!((code, acked), (AckCode::AA, id_of(m)));
    }
    sent.extend(pair);

    let mut received = upstream.received();
    assert_eq!(received.len(), sent.len());
    received.sort();
    sent.sort();
    for (got, want) in received.iter().zip(&sent) {
        assert!(got == want, "{} arrived altered", id_of(want));
    }
    // Buffers are kept for the next large messages, within their bound, and shown.
    let (_, metrics) = get(admin, "/metrics").await.unwrap();
    let kept = sample(&metrics, "mllp_guard_kept_buffer_bytes").expect("the gauge");
    assert!(
        (256.0 * 1024.0..=16.0 * 1024.0 * 1024.0).contains(&kept),
        "kept {kept}"
    );
}

/// `check` refuses a budget smaller than a route's largest message, naming both.
#[test]
fn a_budget_smaller_than_a_message_is_refused_by_check() {
    let (_, stderr) = crate::cli::check_fails(&format!(
        "max_buffered_bytes: 1MiB\n{}",
        route_yaml(
            "127.0.0.1:9".parse().unwrap(),
            "    max_message_bytes: 2MiB\n",
            "",
            ""
        )
    ));
    assert!(
        stderr.contains("guard.yaml:1:21: max_buffered_bytes: must be at least the largest max_message_bytes (2097152 bytes, route \"test\")"),
        "{stderr}"
    );
}
