//! Enhanced acknowledgement mode (MSH-15/16) on a forward route, through the binary (issue 24,
//! findings 2 and 3): a receiver that answers CA and then sends its application ack on the same
//! connection has both relayed to the sender, is never acked by the guard, and does not hold up
//! the sender's next message; a message with MSH-15 NE or ER gets no false AE from the guard.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mllp_guard::wire::codec::{self, Decoded, Decoder};
use mllp_guard::wire::hl7::{AckCode, AckView, Header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cli::start_guard;
use crate::harness::*;

/// An enhanced-mode receiver: for each message, CA when its MSH-15 is AL (or SU), then (MSH-16
/// AL) its application ack, a message of its own with MSH-15/16 NE. Records every payload the
/// guard sends it. Serves for at most 60 s.
async fn enhanced_receiver() -> (std::net::SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let record = got.clone();
    tokio::spawn(tokio::time::timeout(Duration::from_secs(60), async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut decoder = Decoder::new(1 << 20);
                let mut buf = BytesMut::new();
                let mut n = 0;
                loop {
                    while let Some(Decoded::Frame(frame)) = decoder.decode(&mut buf) {
                        let payload = frame.payload().to_vec();
                        record.lock().unwrap().push(payload.clone());
                        let Ok(h) = Header::parse(&payload) else {
                            continue;
                        };
                        if AckView::parse(&payload).is_ok() {
                            continue; // an ack of our application ack: never expected
                        }
                        let id = String::from_utf8_lossy(h.control_id()).into_owned();
                        n += 1;
                        let mut out = Vec::new();
                        if matches!(h.accept_ack_type(), b"AL" | b"SU") {
                            let ca = format!("MSH|^~\\&|EHR|HOSP|LAB|FAC|20240101||ACK^A01^ACK|CA{n}|P|2.5.1\rMSA|CA|{id}\r");
                            out.extend_from_slice(&codec::encode(ca.as_bytes()));
                        }
                        if h.application_ack_type() == b"AL" {
                            let aa = format!("MSH|^~\\&|EHR|HOSP|LAB|FAC|20240101||ACK^A01^ACK|APP{n}|P|2.5.1|||NE|NE\rMSA|AA|{id}\r");
                            out.extend_from_slice(&codec::encode(aa.as_bytes()));
                        }
                        if tcp.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                    match tcp.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            });
        }
    }));
    (addr, got)
}

fn message(id: &str, msh15: &str, msh16: &str) -> Vec<u8> {
    format!("MSH|^~\\&|LAB|FAC|EHR|HOSP|20240101||ADT^A01|{id}|P|2.5.1|||{msh15}|{msh16}\rPID|1\r")
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_ack_is_relayed_never_acked_and_holds_nothing_up() {
    let dir = TestDir::new();
    let (receiver, got) = enhanced_receiver().await;
    let config = dir.path("guard.yaml");
    std::fs::write(&config, route_yaml(receiver, "", "", "")).unwrap();
    let (_guard, listen, _logs) = start_guard(&config);
    let mut client = Client::plain(listen.parse().unwrap()).await;

    // AL/AL: the receiver's CA, then its application ack, both relayed as they came.
    let started = Instant::now();
    let (code, acked, _) = ack_of(&client.send(&message("E1", "AL", "AL")).await);
    assert_eq!((code, acked.as_str()), (AckCode::CA, "E1"));
    let app = client.read_ack().await.expect("the application ack");
    let view = AckView::parse(&app).unwrap();
    assert_eq!(
        (view.code(), view.acked_control_id()),
        (AckCode::AA, &b"E1"[..])
    );
    assert_eq!(view.header().control_id(), b"APP1", "relayed unchanged");
    // The sender does not answer an ack that asks for none; its next message goes on at once.
    let (code, acked, _) = ack_of(&client.send(&message("E2", "AL", "AL")).await);
    assert_eq!((code, acked.as_str()), (AckCode::CA, "E2"));
    client.read_ack().await.expect("the second application ack");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "nothing waited for an ack timeout: {:?}",
        started.elapsed()
    );

    // NE/AL: no accept ack from the receiver, none from the guard; the application ack comes.
    let mut ne = Client::plain(listen.parse().unwrap()).await;
    ne.send_raw(&codec::encode(&message("E3", "NE", "AL")))
        .await;
    let app = ne.read_ack().await.expect("the application ack of E3");
    let view = AckView::parse(&app).unwrap();
    assert_eq!(
        (
            view.code(),
            view.acked_control_id(),
            view.header().control_id()
        ),
        (AckCode::AA, &b"E3"[..], &b"APP1"[..]),
        "the receiver's application ack, not an AE of the guard"
    );
    // ER/NE: nothing comes back at all (no error), and the next message is answered at once.
    ne.send_raw(&codec::encode(&message("E4", "ER", "NE")))
        .await;
    let (code, acked, _) = ack_of(&ne.send(&message("E5", "AL", "NE")).await);
    assert_eq!(
        (code, acked.as_str()),
        (AckCode::CA, "E5"),
        "E4 got no answer"
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = got.lock().unwrap().clone();
    let ids: Vec<String> = got
        .iter()
        .map(|p| String::from_utf8_lossy(Header::parse(p).unwrap().control_id()).into_owned())
        .collect();
    assert_eq!(
        ids,
        ["E1", "E2", "E3", "E4", "E5"],
        "every message, and no ack of an ack"
    );
    assert!(
        got.iter().all(|p| AckView::parse(p).is_err()),
        "the guard never sent the receiver an ack"
    );
}
