//! MLLP release 2 resends through the binary (issue 28, findings 3 and 4): towards a receiver,
//! each send waits its own `framing.commit_timeout` (default `ack_timeout / 4`), so the
//! documented resends happen before the overall `ack_timeout`; towards a sender, a commit block
//! is only ever sent for the frame it has in flight, so a resent copy never earns a second
//! commit ACK that the sender would take for its next message.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mllp_guard::wire::codec;
use mllp_guard::wire::hl7::AckCode;
use tokio::net::TcpListener;

use crate::cli::start_guard;
use crate::harness::*;
use crate::roles::{accept_one, ack_payload, next_payload, COMMIT_ACK};

/// A release-2 receiver whose commit of the first copy is lost (it stays silent) commits and
/// acks the second: the sender gets that ack, and the receiver gets two copies, not three.
async fn resend_after_a_lost_commit(upstream_framing: &str, resent_within: Duration) {
    let dir = TestDir::new();
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let file = dir.path("guard.yaml");
    std::fs::write(
        &file,
        format!(
            "routes:\n  - name: test\n    listen: 127.0.0.1:0\n    allow: [127.0.0.1/32]\n    upstream:\n      address: {}\n      ack_timeout: 2s\n      framing: {upstream_framing}\n",
            upstream.local_addr().unwrap()
        ),
    )
    .unwrap();
    let (_guard, listen, _logs) = start_guard(&file);
    let listen: SocketAddr = listen.parse().unwrap();
    let mut client = Client::plain(listen).await;
    let reply = tokio::spawn(async move {
        let ack = client.send(&message("R2-LOST", 300)).await;
        (client, ack)
    });
    let mut receiver = accept_one(&upstream).await;
    assert_eq!(next_payload(&mut receiver).await, message("R2-LOST", 300));
    let first = Instant::now();
    // The commit of the first copy is lost: silence.
    assert_eq!(
        next_payload(&mut receiver).await,
        message("R2-LOST", 300),
        "sent again after the commit timeout"
    );
    let waited = first.elapsed();
    assert!(
        waited < resent_within,
        "resent after {waited:?}, not within {resent_within:?}"
    );
    receiver.send(&COMMIT_ACK).await.unwrap();
    receiver
        .send(&codec::encode(&ack_payload("R2-LOST", AckCode::AA)))
        .await
        .unwrap();
    assert_eq!(
        next_payload(&mut receiver).await,
        [0x06],
        "the ack is committed"
    );
    let (_client, ack) = reply.await.unwrap();
    assert_eq!(
        ack_of(&ack).0,
        AckCode::AA,
        "the sender gets the receiver's ack, not a NAK-born AE: {}",
        String::from_utf8_lossy(&ack)
    );
    // No third copy.
    let third = tokio::time::timeout(Duration::from_millis(700), receiver.next()).await;
    assert!(
        !matches!(third, Ok(Ok(Some(_)))),
        "a third copy reached the receiver"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_2_receiver_whose_first_commit_is_lost_gets_one_resend_within_the_default_commit_timeout(
) {
    // ack_timeout 2s: the default commit timeout is 500 ms.
    resend_after_a_lost_commit("{ release: 2 }", Duration::from_millis(1200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_commit_timeout_sets_the_wait_before_a_resend() {
    resend_after_a_lost_commit(
        "{ release: 2, commit_timeout: 200ms }",
        Duration::from_millis(600),
    )
    .await;
}

/// A release-2 sender whose commit timeout (100 ms) runs out while its message is being
/// delivered (the receiver acks after 250 ms) sends the message again. The guard's one commit
/// ACK answers the copy too: the copy is neither delivered again nor committed again, so the
/// sender's next message is committed only once it reached the receiver, and the ack that
/// follows a commit always answers the message just sent (issue 28, finding 4: 16 of 16).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_2_sender_that_resends_gets_no_commit_ack_meant_for_the_copy() {
    let dir = TestDir::new();
    let receiver = FakeUpstream::start(Behaviour::LateAck(Duration::from_millis(250))).await;
    let file = dir.path("guard.yaml");
    std::fs::write(
        &file,
        format!(
            "routes:\n  - name: test\n    listen: 127.0.0.1:0\n    allow: [127.0.0.1/32]\n    framing: {{ release: 2 }}\n    upstream:\n      address: {}\n      ack_timeout: 3s\n",
            receiver.addr
        ),
    )
    .unwrap();
    let (_guard, listen, logs) = start_guard(&file);
    let mut client = Client::plain(listen.parse().unwrap()).await;
    let rounds = 16;
    for i in 0..rounds {
        let id = format!("R2S-{i}");
        let sent_at = Instant::now();
        client
            .link
            .send(&codec::encode(&message(&id, 300)))
            .await
            .unwrap();
        // The sender's commit timeout runs out before the receiver acked: it sends again.
        let early = tokio::time::timeout(Duration::from_millis(100), client.link.next()).await;
        assert!(early.is_err(), "{id}: an answer within 100 ms: {early:?}");
        client
            .link
            .send(&codec::encode(&message(&id, 300)))
            .await
            .unwrap();
        assert_eq!(client.read_ack().await.unwrap(), [0x06], "{id}: commit ACK");
        let committed_after = sent_at.elapsed();
        assert!(
            committed_after >= Duration::from_millis(240),
            "{id}: committed after {committed_after:?}, before the receiver had it"
        );
        let ack = client.read_ack().await.unwrap();
        let (code, acked, _) = ack_of(&ack);
        assert_eq!(
            (code, acked.as_str()),
            (AckCode::AA, id.as_str()),
            "the ack after a commit answers the message just sent"
        );
        client.send_raw(&COMMIT_ACK).await;
    }
    // Nothing more: no commit block or ack for a copy.
    let stray = tokio::time::timeout(Duration::from_millis(800), client.link.next()).await;
    assert!(stray.is_err(), "after the last ack: {stray:?}");
    let ids: Vec<String> = receiver.received().iter().map(|p| id_of(p)).collect();
    let expected: Vec<String> = (0..rounds).map(|i| format!("R2S-{i}")).collect();
    assert_eq!(ids, expected, "each message delivered once, in order");
    // Each copy has its audit line.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut copies = 0;
    while copies < rounds && Instant::now() < deadline {
        if let Ok(line) = logs.recv_timeout(Duration::from_millis(100)) {
            if line.contains("\"outcome\":\"duplicate_resend\"") {
                copies += 1;
            }
        }
    }
    assert_eq!(copies, rounds, "one duplicate_resend audit line per copy");
}
