//! Roles and directions (issue 4): the guard dials a sender that is an MLLP server, accepts a
//! receiver that connects in, carries messages the receiver sends on a paired connection, speaks
//! MLLP release 2 on either side, and reopens an idle upstream connection at once when asked.

use std::time::Duration;

use mllp_guard::net::Stream;
use mllp_guard::wire::codec::{self, Decoded};
use mllp_guard::wire::hl7::{AckCode, AckView};
use mllp_guard::wire::link::Link;
use tokio::net::{TcpListener, TcpStream};

use crate::harness::*;

pub const COMMIT_ACK: [u8; 4] = [0x0B, 0x06, 0x1C, 0x0D];
const COMMIT_NAK: [u8; 4] = [0x0B, 0x15, 0x1C, 0x0D];

/// An ack payload answering `control_id` with `code`.
pub fn ack_payload(control_id: &str, code: AckCode) -> Vec<u8> {
    format!("MSH|^~\\&|PEER|FAC|GUARD|FAC|20240102030405||ACK^A01^ACK|A-{control_id}|P|2.5.1\rMSA|{}|{control_id}\r", code.as_str()).into_bytes()
}

/// A message without MSA from the receiver's side (an ORU^R01 result) with this control id.
pub fn result_message(control_id: &str) -> Vec<u8> {
    format!("MSH|^~\\&|LAB|FAC|SEND_APP|SEND_FAC|20240102030405||ORU^R01^ORU_R01|{control_id}|P|2.5.1\rPID|1||MRN1\rOBX|1|NM|GLU||5.5|mmol/L\r").into_bytes()
}

pub async fn next_payload(link: &mut Link<Stream>) -> Vec<u8> {
    match tokio::time::timeout(Duration::from_secs(10), link.next()).await {
        Ok(Ok(Some(Decoded::Frame(frame)))) => frame.payload().to_vec(),
        other => panic!("expected a frame, got {other:?}"),
    }
}

fn link_of(tcp: TcpStream) -> Link<Stream> {
    tcp.set_nodelay(true).unwrap();
    Link::new(Stream::Plain(tcp), 16 * 1024 * 1024)
}

/// The receiver sends its result `id`; the sender gets it byte-exact.
pub async fn receiver_sends(receiver: &mut Link<Stream>, client: &mut Client, id: &str) {
    receiver
        .send(&codec::encode(&result_message(id)))
        .await
        .unwrap();
    assert_eq!(client.read_ack().await.unwrap(), result_message(id));
}

/// The sender answers the receiver's `id` with `code`; the receiver gets that ack unchanged.
pub async fn sender_answers(
    client: &mut Client,
    receiver: &mut Link<Stream>,
    id: &str,
    code: AckCode,
) {
    client
        .link
        .send(&codec::encode(&ack_payload(id, code)))
        .await
        .unwrap();
    assert_eq!(next_payload(receiver).await, ack_payload(id, code));
}

/// The sender sends message `id`; the receiver gets it and acks AA; the sender gets that ack.
pub async fn sender_sends(client: &mut Client, receiver: &mut Link<Stream>, id: &str) {
    client
        .link
        .send(&codec::encode(&message(id, 200)))
        .await
        .unwrap();
    assert_eq!(next_payload(receiver).await, message(id, 200));
    receiver
        .send(&codec::encode(&ack_payload(id, AckCode::AA)))
        .await
        .unwrap();
    assert_eq!(
        client.read_ack().await.unwrap(),
        ack_payload(id, AckCode::AA)
    );
}

/// The next frame the receiver gets is the guard's own AE for its message `id`.
pub async fn receiver_gets_guards_ae(receiver: &mut Link<Stream>, id: &str) {
    let ae = next_payload(receiver).await;
    let view = AckView::parse(&ae).unwrap();
    assert_eq!(
        (view.code(), view.acked_control_id()),
        (AckCode::AE, id.as_bytes())
    );
}

pub async fn accept_one(listener: &TcpListener) -> Link<Stream> {
    let (tcp, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("the guard connects within 10 s")
        .unwrap();
    link_of(tcp)
}

fn yaml(sender: &str, receiver: &str, upstream_extra: &str, extra: &str) -> String {
    format!("routes:\n  - name: test\n    {sender}\n    allow: [127.0.0.1/32]\n{extra}    upstream:\n      {receiver}\n      ack_timeout: 2s\n      connect_timeout: 2s\n      reconnect: {{ initial: 100ms, max: 400ms }}\n{upstream_extra}")
}

/// The sender is an MLLP server: the guard dials it, relays what it sends, and dials again
/// (with backoff) when the sender drops the connection.
#[tokio::test]
async fn dial_mode_connects_out_to_a_sender_and_reconnects_after_it_drops() {
    let dir = TestDir::new();
    let receiver = FakeUpstream::start(Behaviour::Ack).await;
    let sender = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sender_addr = sender.local_addr().unwrap();
    let guard = dir
        .guard(&yaml(
            &format!("dial: {sender_addr}"),
            &format!("address: {}", receiver.addr),
            "",
            "",
        ))
        .await;
    assert_eq!(
        guard.local_addr("test"),
        None,
        "a dialing route binds nothing"
    );
    for round in 0..2 {
        let mut link = accept_one(&sender).await;
        for i in 0..3 {
            let id = format!("DIAL-{round}-{i}");
            link.send(&codec::encode(&message(&id, 300))).await.unwrap();
            let ack = next_payload(&mut link).await;
            assert_eq!(
                ack_of(&ack),
                (AckCode::AA, id, "answered by the test upstream".into())
            );
        }
        // The sender restarts: the guard must come back on its own.
        drop(link);
    }
    assert_eq!(receiver.received().len(), 6);
    guard.stop().await;
}

/// The receiver connects in to `accept`: a message sent before it is there waits (within
/// connect_timeout) and is delivered over the receiver's connection once it arrives; with no
/// receiver at all the sender gets a negative ack saying so.
#[tokio::test]
async fn accept_mode_sends_over_the_connection_the_receiver_opened() {
    let dir = TestDir::new();
    let guard = dir
        .guard(&yaml(
            "listen: 127.0.0.1:0",
            "accept: 127.0.0.1:0",
            "      allow: [127.0.0.1]\n",
            "",
        ))
        .await;
    let listen = guard.local_addr("test").unwrap();
    let accept_at = guard
        .receiver_addr("test")
        .expect("the accept address is bound");

    // Nobody connected in: AE after connect_timeout, never a positive ack.
    let mut client = Client::plain(listen).await;
    let ack = client.send(&message("NOBODY-1", 200)).await;
    let (code, id, text) = ack_of(&ack);
    assert_eq!((code, id.as_str()), (AckCode::AE, "NOBODY-1"));
    assert_eq!(text, "receiver unavailable");

    // The sender's message waits while the receiver connects.
    let send = tokio::spawn(async move {
        let ack = client.send(&message("WAIT-1", 200)).await;
        (client, ack)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut receiver = link_of(TcpStream::connect(accept_at).await.unwrap());
    let got = next_payload(&mut receiver).await;
    assert_eq!(got, message("WAIT-1", 200), "relayed byte-exact");
    receiver
        .send(&codec::encode(&ack_payload("WAIT-1", AckCode::AA)))
        .await
        .unwrap();
    let (mut client, ack) = send.await.unwrap();
    assert_eq!(
        ack,
        ack_payload("WAIT-1", AckCode::AA),
        "the receiver's ack, unchanged"
    );

    // The same receiver connection carries the next messages.
    for i in 0..3 {
        let id = format!("NEXT-{i}");
        let reply = tokio::spawn(async move {
            let ack = client.send(&message(&id, 200)).await;
            (client, ack)
        });
        let got = next_payload(&mut receiver).await;
        let id = String::from_utf8_lossy(&got)
            .split('|')
            .nth(9)
            .unwrap()
            .to_string();
        receiver
            .send(&codec::encode(&ack_payload(&id, AckCode::AA)))
            .await
            .unwrap();
        let (back, ack) = reply.await.unwrap();
        client = back;
        assert_eq!(ack_of(&ack).0, AckCode::AA);
    }
    guard.stop().await;
}

/// A receiver address outside `upstream.allow` is refused.
#[tokio::test]
async fn accept_mode_refuses_receivers_outside_its_allow_list() {
    let dir = TestDir::new();
    let guard = dir
        .guard(&yaml(
            "listen: 127.0.0.1:0",
            "accept: 127.0.0.1:0",
            "      allow: [127.0.0.9]\n",
            "",
        ))
        .await;
    let accept_at = guard.receiver_addr("test").unwrap();
    let mut stranger = link_of(TcpStream::connect(accept_at).await.unwrap());
    let closed = tokio::time::timeout(Duration::from_secs(5), stranger.next()).await;
    assert!(
        matches!(closed, Ok(Ok(None)) | Ok(Err(_))),
        "refused: {closed:?}"
    );
    guard.stop().await;
}

/// A guard in front of a receiver that also sends: the receiver's own messages on the paired
/// connection reach the sender, the sender's ack reaches the receiver, and a message that
/// crosses an awaited ack is neither taken for that ack nor held back until it comes.
#[tokio::test]
async fn the_receiver_can_send_on_a_paired_connection() {
    let dir = TestDir::new();
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let guard = dir
        .guard(&yaml(
            "listen: 127.0.0.1:0",
            &format!("address: {}", upstream.local_addr().unwrap()),
            "",
            "",
        ))
        .await;
    let mut client = Client::plain(guard.local_addr("test").unwrap()).await;

    // 1. A first message opens the paired connection.
    client
        .link
        .send(&codec::encode(&message("S-1", 200)))
        .await
        .unwrap();
    let mut receiver = accept_one(&upstream).await;
    assert_eq!(next_payload(&mut receiver).await, message("S-1", 200));
    // 2. Before acking it, the receiver sends a result of its own: it must not be taken for
    //    the ack of S-1.
    receiver
        .send(&codec::encode(&result_message("R-1")))
        .await
        .unwrap();
    receiver
        .send(&codec::encode(&ack_payload("S-1", AckCode::AA)))
        .await
        .unwrap();
    // The receiver's message does not wait for the ack in flight: the sender gets both, in the
    // order the receiver sent them.
    let first = client.read_ack().await.unwrap();
    assert_eq!(first, result_message("R-1"), "relayed byte-exact");
    let second = client.read_ack().await.unwrap();
    assert_eq!(second, ack_payload("S-1", AckCode::AA));
    sender_answers(&mut client, &mut receiver, "R-1", AckCode::AA).await;

    // 3. On an idle connection the receiver sends again; the sender answers AE, relayed as is.
    receiver_sends(&mut receiver, &mut client, "R-2").await;
    sender_answers(&mut client, &mut receiver, "R-2", AckCode::AE).await;

    // 4. A sender that does not ack: the receiver gets an AE built by the guard, not silence
    //    and never an AA; the link stays usable for the next message.
    receiver_sends(&mut receiver, &mut client, "R-3").await;
    receiver_gets_guards_ae(&mut receiver, "R-3").await;
    sender_sends(&mut client, &mut receiver, "S-2").await;
    guard.stop().await;
}

/// A release-2 sender through the guard to a release-1 receiver: each message is committed
/// (ACK block) once the receiver has it, then the receiver's ack follows and is committed by
/// the sender; a refused message gets a NAK block.
#[tokio::test]
async fn a_release_2_sender_is_bridged_to_a_release_1_receiver() {
    let dir = TestDir::new();
    let receiver = FakeUpstream::start(Behaviour::Ack).await;
    let guard = dir
        .guard(&yaml(
            "listen: 127.0.0.1:0",
            &format!("address: {}", receiver.addr),
            "",
            "    max_message_bytes: 2KiB\n    framing: { release: 2 }\n",
        ))
        .await;
    let mut client = Client::plain(guard.local_addr("test").unwrap()).await;
    for i in 0..3 {
        let id = format!("R2-{i}");
        client
            .link
            .send(&codec::encode(&message(&id, 300)))
            .await
            .unwrap();
        assert_eq!(client.read_ack().await.unwrap(), [0x06], "commit ACK first");
        let ack = client.read_ack().await.unwrap();
        assert_eq!(ack_of(&ack).0, AckCode::AA);
        assert_eq!(ack_of(&ack).1, id);
        client.send_raw(&COMMIT_ACK).await;
    }
    // Oversize: refused, so NAK and nothing more.
    client
        .link
        .send(&codec::encode(&message("BIG", 4096)))
        .await
        .unwrap();
    assert_eq!(
        client.read_ack().await.unwrap(),
        [0x15],
        "NAK for a refused message"
    );
    // The link goes on.
    client
        .link
        .send(&codec::encode(&message("R2-AFTER", 300)))
        .await
        .unwrap();
    assert_eq!(client.read_ack().await.unwrap(), [0x06]);
    assert_eq!(ack_of(&client.read_ack().await.unwrap()).1, "R2-AFTER");
    client.send_raw(&COMMIT_ACK).await;
    assert_eq!(
        receiver.received().len(),
        4,
        "the oversize message never reached the receiver"
    );
    guard.stop().await;
}

/// A release-1 sender through the guard to a release-2 receiver that NAKs the first send: the
/// guard sends again, waits for the ACK block, commits the receiver's ack, and relays it.
#[tokio::test]
async fn a_release_1_sender_is_bridged_to_a_release_2_receiver() {
    let dir = TestDir::new();
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let guard = dir
        .guard(&yaml(
            "listen: 127.0.0.1:0",
            &format!("address: {}", upstream.local_addr().unwrap()),
            "      framing: { release: 2 }\n",
            "",
        ))
        .await;
    let mut client = Client::plain(guard.local_addr("test").unwrap()).await;
    let reply = tokio::spawn(async move {
        let ack = client.send(&message("TO-R2", 300)).await;
        (client, ack)
    });
    let mut receiver = accept_one(&upstream).await;
    assert_eq!(next_payload(&mut receiver).await, message("TO-R2", 300));
    receiver.send(&COMMIT_NAK).await.unwrap();
    assert_eq!(
        next_payload(&mut receiver).await,
        message("TO-R2", 300),
        "sent again after a NAK"
    );
    receiver.send(&COMMIT_ACK).await.unwrap();
    receiver
        .send(&codec::encode(&ack_payload("TO-R2", AckCode::AA)))
        .await
        .unwrap();
    assert_eq!(
        next_payload(&mut receiver).await,
        [0x06],
        "the guard commits the receiver's ack"
    );
    let (_client, ack) = reply.await.unwrap();
    assert_eq!(ack, ack_payload("TO-R2", AckCode::AA));
    guard.stop().await;
}

/// `idle_reopen: at-once`: a paired upstream connection quiet for idle_reconnect is replaced
/// without waiting for a message, so the next message does not pay for a connect.
#[tokio::test]
async fn idle_reopen_at_once_replaces_a_quiet_connection_before_the_next_message() {
    let dir = TestDir::new();
    let receiver = FakeUpstream::start(Behaviour::Ack).await;
    let guard = dir
        .guard(&yaml(
            "listen: 127.0.0.1:0",
            &format!("address: {}", receiver.addr),
            "      idle_reconnect: 300ms\n      idle_reopen: at-once\n",
            "",
        ))
        .await;
    let mut client = Client::plain(guard.local_addr("test").unwrap()).await;
    assert_eq!(
        ack_of(&client.send(&message("E-1", 200)).await).0,
        AckCode::AA
    );
    assert_eq!(
        receiver
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    // Quiet for more than three idle periods: at least two reopens, no message.
    let reopened = async {
        while receiver
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
            < 3
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), reopened)
        .await
        .expect("the idle connection is reopened at once, repeatedly");
    assert_eq!(
        ack_of(&client.send(&message("E-2", 200)).await).0,
        AckCode::AA
    );
    assert_eq!(receiver.received().len(), 2);
    guard.stop().await;
}

/// The same for a store-and-forward route: its drainer replaces its quiet connection too.
#[tokio::test]
async fn idle_reopen_at_once_also_keeps_a_custody_drainer_connection_fresh() {
    let dir = TestDir::new();
    let receiver = FakeUpstream::start(Behaviour::Ack).await;
    let yaml = format!(
        "state_dir: {}\n{}",
        dir.path("state").display(),
        yaml(
            "listen: 127.0.0.1:0",
            &format!("address: {}", receiver.addr),
            "      idle_reconnect: 300ms\n      idle_reopen: at-once\n",
            "    delivery: store-and-forward\n    ack_mode: always\n",
        )
    );
    let guard = dir.guard(&yaml).await;
    let mut client = Client::plain(guard.local_addr("test").unwrap()).await;
    assert_eq!(
        ack_of(&client.send(&message("Q-1", 200)).await).0,
        AckCode::AA
    );
    let reopened = async {
        while receiver
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
            < 3
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), reopened)
        .await
        .expect("the drainer reopens its idle connection at once, repeatedly");
    assert_eq!(receiver.received().len(), 1, "reopening sends nothing");
    guard.stop().await;
}
