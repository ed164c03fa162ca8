//! Two directions on one paired connection, through the binary (issue 28, finding 2): a
//! receiver that sends its own messages while the sender sends. Messages that cross are both
//! delivered at once, each ack reaches the side whose message it answers, the guard answers AE
//! for nothing that was delivered, never forwards an ack as a message and never acks an ack.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mllp_guard::net::Stream;
use mllp_guard::wire::codec::{self, Decoded};
use mllp_guard::wire::hl7::{AckCode, AckView};
use mllp_guard::wire::link::Link;
use tokio::net::TcpListener;

use crate::cli::start_guard;
use crate::harness::*;
use crate::roles::{
    accept_one, ack_payload, next_payload, receiver_gets_guards_ae, receiver_sends, result_message,
    sender_answers, sender_sends,
};

/// How a test peer interleaves its own messages with its answers to the other side's.
#[derive(Clone, Copy, Debug)]
struct Policy {
    /// It sends its first message at once and the next as soon as the last one is acked.
    starts: bool,
    /// A message from the other side makes it send its own next message (before it acks the
    /// one that arrived): the crossing of the issue.
    sends_on_arrival: bool,
    /// It acks the other side's messages only while none of its own is in flight (a serial
    /// peer, which would deadlock against another serial peer even without a guard).
    holds_acks: bool,
}

/// What a peer saw: its own messages acked, the other side's messages received.
#[derive(Debug, Default)]
struct Report {
    acked: usize,
    received: usize,
}

/// One side of a two-way conversation: sends `n` messages `me-0..` (one in flight, built by
/// `build`), acks the other side's `n` messages `theirs-0..` with AA, and checks everything it
/// gets: each ack answers its message in flight with AA, each message is the other side's next.
/// A read that waits longer than `per_read` is a stuck conversation.
async fn converse(
    link: &mut Link<Stream>,
    me: &str,
    theirs: &str,
    build: fn(&str) -> Vec<u8>,
    policy: Policy,
    n: usize,
    per_read: Duration,
) -> Result<Report, String> {
    let mut report = Report::default();
    let mut sent = 0;
    let mut in_flight: Option<String> = None;
    let mut ready = policy.starts;
    let mut to_ack: VecDeque<String> = VecDeque::new();
    loop {
        if in_flight.is_none() && ready && sent < n {
            let id = format!("{me}-{sent}");
            link.send(&codec::encode(&build(&id)))
                .await
                .map_err(|e| format!("{me}: send failed: {e}"))?;
            in_flight = Some(id);
            sent += 1;
            ready = false;
        }
        if !(policy.holds_acks && in_flight.is_some()) {
            while let Some(id) = to_ack.pop_front() {
                link.send(&codec::encode(&ack_payload(&id, AckCode::AA)))
                    .await
                    .map_err(|e| format!("{me}: ack failed: {e}"))?;
            }
        }
        if report.acked == n && report.received == n && to_ack.is_empty() {
            return Ok(report);
        }
        let payload = match tokio::time::timeout(per_read, link.next()).await {
            Ok(Ok(Some(Decoded::Frame(frame)))) => frame.payload().to_vec(),
            Ok(other) => return Err(format!("{me}: the guard closed or failed: {other:?}")),
            Err(_) => {
                return Err(format!(
                "{me}: stuck for {per_read:?} with {in_flight:?} in flight, {} acked, {} received",
                report.acked, report.received
            ))
            }
        };
        match AckView::parse(&payload) {
            Ok(ack) => {
                let answered = String::from_utf8_lossy(ack.acked_control_id()).into_owned();
                let text = String::from_utf8_lossy(ack.text()).into_owned();
                let Some(id) = in_flight.take() else {
                    return Err(format!("{me}: an ack ({} for {answered}: {text}) with nothing in flight: an ack forwarded as a message, or an ack of an ack", ack.code().as_str()));
                };
                if answered != id {
                    return Err(format!("{me}: {id} in flight, got an ack for {answered}"));
                }
                if ack.code() != AckCode::AA {
                    return Err(format!(
                        "{me}: {} for {id} ({text}), which the other side got",
                        ack.code().as_str()
                    ));
                }
                report.acked += 1;
                ready = policy.starts;
            }
            Err(_) => {
                let id = id_of(&payload);
                let expected = format!("{theirs}-{}", report.received);
                if id != expected {
                    return Err(format!("{me}: got message {id}, expected {expected}"));
                }
                report.received += 1;
                to_ack.push_back(id);
                if policy.sends_on_arrival {
                    ready = true;
                }
            }
        }
    }
}

/// A guard with one paired route to `upstream`, ack timeout `ack_timeout`.
fn two_way_config(dir: &TestDir, upstream: SocketAddr, ack_timeout: &str) -> std::path::PathBuf {
    let file = dir.path("guard.yaml");
    std::fs::write(
        &file,
        format!(
            "routes:\n  - name: test\n    listen: 127.0.0.1:0\n    allow: [127.0.0.1/32]\n    upstream:\n      address: {upstream}\n      ack_timeout: {ack_timeout}\n      connect_timeout: 2s\n"
        ),
    )
    .unwrap();
    file
}

/// The guard's process and its log lines, kept alive for a test.
type Running = (Proc, std::sync::mpsc::Receiver<String>);

/// A guard with a paired route whose first message `OPEN` has been delivered and acked: the
/// sender and the receiver's end of the paired connection.
async fn opened(ack_timeout: &str) -> (TestDir, Running, Client, Link<Stream>) {
    let dir = TestDir::new();
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = two_way_config(&dir, upstream.local_addr().unwrap(), ack_timeout);
    let (guard, listen, logs) = start_guard(&config);
    let mut client = Client::plain(listen.parse().unwrap()).await;
    client
        .link
        .send(&codec::encode(&message("OPEN", 200)))
        .await
        .unwrap();
    let mut receiver = accept_one(&upstream).await;
    assert_eq!(next_payload(&mut receiver).await, message("OPEN", 200));
    receiver
        .send(&codec::encode(&ack_payload("OPEN", AckCode::AA)))
        .await
        .unwrap();
    assert_eq!(ack_of(&client.read_ack().await.unwrap()).0, AckCode::AA);
    (dir, (guard, logs), client, receiver)
}

/// Runs `rounds` messages each way between a sender and a receiver with these policies,
/// through a guard whose ack timeout (5 s) is far above the peers' patience (2 s per read), so
/// a message held behind the other direction's ack shows as a stuck peer, not as a late AE.
async fn crossing(sender: Policy, receiver: Policy, rounds: usize) {
    let (_dir, _running, mut client, mut receiver_link) = opened("5s").await;

    let per_read = Duration::from_secs(2);
    let started = Instant::now();
    let sender_side = async {
        let build = |id: &str| message(id, 300);
        converse(&mut client.link, "S", "R", build, sender, rounds, per_read).await
    };
    let receiver_side = converse(
        &mut receiver_link,
        "R",
        "S",
        result_message,
        receiver,
        rounds,
        per_read,
    );
    let both = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(sender_side, receiver_side)
    })
    .await
    .expect("the conversation ends within 60 s");
    match both {
        (Ok(s), Ok(r)) => {
            assert_eq!((s.acked, s.received), (rounds, rounds));
            assert_eq!((r.acked, r.received), (rounds, rounds));
        }
        (s, r) => panic!("sender: {s:?}\nreceiver: {r:?}"),
    }
    // Every message crossed another: none waited for an ack timeout.
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "{rounds} rounds took {took:?}"
    );
}

/// The case: the receiver sends R; the sender sends its own M before it acks R and acks
/// R only once M is acked. M reaches the receiver at once, its ack comes back, then R's ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_message_that_crosses_the_receivers_message_is_not_held_behind_its_ack() {
    let sender = Policy {
        starts: false,
        sends_on_arrival: true,
        holds_acks: true,
    };
    let receiver = Policy {
        starts: true,
        sends_on_arrival: false,
        holds_acks: false,
    };
    crossing(sender, receiver, 100).await;
}

/// The mirror: the sender sends M; the receiver sends R before it acks M and acks M only once
/// R is acked. R reaches the sender at once although M's ack is pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_message_that_crosses_the_senders_message_is_not_held_behind_its_ack() {
    let sender = Policy {
        starts: true,
        sends_on_arrival: false,
        holds_acks: false,
    };
    let receiver = Policy {
        starts: false,
        sends_on_arrival: true,
        holds_acks: true,
    };
    crossing(sender, receiver, 100).await;
}

/// Both sides send whenever they are free and answer at once: messages cross in both
/// directions, in every order the timing gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_sending_freely_cross_many_times_without_a_wrong_or_missing_ack() {
    let both = Policy {
        starts: true,
        sends_on_arrival: true,
        holds_acks: false,
    };
    crossing(both, both, 300).await;
}

/// A sender that acks the receiver's message after the ack timeout: the receiver got the
/// guard's AE (the sender did not answer in time) and never the late ack as a message; the
/// sender gets no ack of its ack; the next messages go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_ack_from_the_sender_is_dropped_not_forwarded_as_a_message() {
    let (_dir, (_guard, logs), mut client, mut receiver) = opened("1s").await;

    // The sender does not answer within the ack timeout: the guard answers AE.
    receiver_sends(&mut receiver, &mut client, "R-0").await;
    receiver_gets_guards_ae(&mut receiver, "R-0").await;
    // Its ack comes late: not forwarded, not acked.
    client
        .link
        .send(&codec::encode(&ack_payload("R-0", AckCode::AA)))
        .await
        .unwrap();
    let quiet = Duration::from_millis(1500);
    let to_receiver = tokio::time::timeout(quiet, receiver.next()).await;
    assert!(
        to_receiver.is_err(),
        "the late ack reached the receiver: {to_receiver:?}"
    );
    let to_sender = tokio::time::timeout(Duration::from_millis(300), client.link.next()).await;
    assert!(
        to_sender.is_err(),
        "the sender got an answer to its ack: {to_sender:?}"
    );
    // Both directions go on.
    sender_sends(&mut client, &mut receiver, "S-1").await;
    receiver_sends(&mut receiver, &mut client, "R-1").await;
    sender_answers(&mut client, &mut receiver, "R-1", AckCode::AA).await;
    // The audit trail says what became of the late ack.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = false;
    while !seen && Instant::now() < deadline {
        if let Ok(line) = logs.recv_timeout(Duration::from_millis(100)) {
            seen = line.contains("\"outcome\":\"stray_ack\"") && line.contains("R-0");
        }
    }
    assert!(seen, "no stray_ack audit line for the late ack of R-0");
}

/// A sender that pipelines (a hundred messages in one write, then its ack of the receiver's
/// message in flight): every message is delivered, one at a time and in order, each ack comes
/// back, and the ack behind them reaches the receiver; nothing is refused as a flood because
/// frames were already read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_that_pipelines_while_the_receivers_message_is_in_flight_is_served_in_order() {
    let (_dir, _running, mut client, mut receiver) = opened("10s").await;
    receiver_sends(&mut receiver, &mut client, "R-0").await;
    let n = 100;
    let mut burst = Vec::new();
    for i in 0..n {
        burst.extend(codec::encode(&message(&format!("M-{i}"), 300)));
    }
    burst.extend(codec::encode(&ack_payload("R-0", AckCode::AA)));
    client.send_raw(&burst).await;

    // The receiver answers each message at once and notes where the ack of R-0 came.
    let receiver_side = async {
        let mut got = Vec::new();
        let mut r0_acked = None;
        while got.len() < n || r0_acked.is_none() {
            let payload = next_payload(&mut receiver).await;
            match AckView::parse(&payload) {
                Ok(ack) => {
                    assert_eq!(ack.acked_control_id(), b"R-0", "only R-0 is acked");
                    assert_eq!(
                        ack.code(),
                        AckCode::AA,
                        "the sender's own ack, not the guard's"
                    );
                    r0_acked = Some(got.len());
                }
                Err(_) => {
                    let id = id_of(&payload);
                    assert_eq!(id, format!("M-{}", got.len()), "in order, one at a time");
                    receiver
                        .send(&codec::encode(&ack_payload(&id, AckCode::AA)))
                        .await
                        .unwrap();
                    got.push(id);
                }
            }
        }
        got.len()
    };
    let sender_side = async {
        for i in 0..n {
            let ack = client
                .read_ack()
                .await
                .expect("an ack, not a closed connection");
            let (code, acked, _) = ack_of(&ack);
            assert_eq!((code, acked), (AckCode::AA, format!("M-{i}")));
        }
    };
    let (delivered, ()) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(receiver_side, sender_side)
    })
    .await
    .expect("a hundred pipelined messages within 60 s");
    assert_eq!(delivered, n);
}

/// An ack from the sender that answers nothing the receiver sent (an ACK message of its own,
/// as the corpus has) is a message: forwarded and acked, as on any route. Only an ack of the
/// receiver's own message, after the guard answered it, is dropped as a stray.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_from_the_sender_that_names_no_message_of_the_receiver_is_forwarded() {
    let (_dir, _running, mut client, mut receiver) = opened("5s").await;
    let own = ack_payload("SOMETHING-ELSE", AckCode::AA);
    client.link.send(&codec::encode(&own)).await.unwrap();
    assert_eq!(next_payload(&mut receiver).await, own);
    let answer = ack_payload("A-SOMETHING-ELSE", AckCode::AA);
    receiver.send(&codec::encode(&answer)).await.unwrap();
    assert_eq!(client.read_ack().await.unwrap(), answer);
}
