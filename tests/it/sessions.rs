//! Links that survive what networks do to them: a firewall that silently forgets a quiet
//! connection (no FIN, no RST), and a receiver that restarts again and again under load.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mllp_guard::wire::hl7::AckCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::*;

/// A loopback TCP forwarder that, once a connection has been quiet for `forget_after`, stops
/// forwarding it in both directions without telling either side: what a stateful firewall does
/// when its idle timer expires.
struct SilentFirewall {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    stop: tokio_util::sync::CancellationToken,
}

impl SilentFirewall {
    async fn start(target: SocketAddr, forget_after: Duration) -> SilentFirewall {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = tokio_util::sync::CancellationToken::new();
        let (count, token) = (connections.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (inside, _) = tokio::select! {
                    _ = token.cancelled() => return,
                    r = listener.accept() => match r { Ok(p) => p, Err(_) => continue },
                };
                count.fetch_add(1, Ordering::SeqCst);
                let Ok(outside) = TcpStream::connect(target).await else {
                    continue;
                };
                let last = Arc::new(Mutex::new(Instant::now()));
                let forgotten = Arc::new(AtomicBool::new(false));
                let (a_read, a_write) = inside.into_split();
                let (b_read, b_write) = outside.into_split();
                for (mut from, mut to) in [(a_read, b_write), (b_read, a_write)] {
                    let (last, forgotten, token) = (last.clone(), forgotten.clone(), token.clone());
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = tokio::select! {
                                _ = token.cancelled() => return,
                                r = from.read(&mut buf) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
                            };
                            let pass = {
                                let mut at = last.lock().unwrap();
                                if at.elapsed() >= forget_after {
                                    forgotten.store(true, Ordering::SeqCst);
                                }
                                let pass = !forgotten.load(Ordering::SeqCst);
                                if pass {
                                    *at = Instant::now();
                                }
                                pass
                            };
                            if !pass {
                                continue; // swallowed: no data, no FIN, no RST
                            }
                            if to.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        SilentFirewall {
            addr,
            connections,
            stop,
        }
    }
}

impl Drop for SilentFirewall {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn yaml_through(firewall: SocketAddr, upstream_extra: &str, route_extra: &str) -> String {
    route_yaml(firewall, route_extra, "", upstream_extra)
        .replace("ack_timeout: 2s", "ack_timeout: 500ms")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_reconnect_shorter_than_the_firewall_timeout_loses_nothing_after_long_pauses() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let firewall = SilentFirewall::start(upstream.addr, Duration::from_millis(400)).await;
    let guard = dir
        .guard(&yaml_through(
            firewall.addr,
            "      idle_reconnect: 200ms\n",
            "",
        ))
        .await;
    let mut client = Client::plain(guard.local_addr("test").unwrap()).await;
    for i in 0..3 {
        let id = format!("PAUSE{i}");
        let (code, acked, _) = ack_of(&client.send(&message(&id, 300)).await);
        assert_eq!(
            (code, acked),
            (AckCode::AA, id),
            "no sender-visible error after a long pause"
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    assert_eq!(upstream.received().len(), 3);
    assert_eq!(
        firewall.connections.load(Ordering::SeqCst),
        3,
        "a fresh connection after each pause"
    );
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_idle_reconnect_the_ack_timeout_detects_the_dead_link_and_the_next_message_goes_through(
) {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let firewall = SilentFirewall::start(upstream.addr, Duration::from_millis(300)).await;
    let guard = dir.guard(&yaml_through(firewall.addr, "", "")).await;
    let mut client = Client::plain(guard.local_addr("test").unwrap()).await;
    assert_eq!(
        ack_of(&client.send(&message("HALF1", 300)).await).0,
        AckCode::AA
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The firewall forgot the link: the message vanishes, the ack never comes, the sender is told.
    let (code, acked, text) = ack_of(&client.send(&message("HALF2", 300)).await);
    assert_eq!(
        (code, acked.as_str(), text.as_str()),
        (AckCode::AE, "HALF2", "no reply from receiver")
    );
    // The sender's connection stayed up; the next message goes out on a fresh upstream connection.
    let (code, acked, _) = ack_of(&client.send(&message("HALF3", 300)).await);
    assert_eq!((code, acked.as_str()), (AckCode::AA, "HALF3"));
    assert_eq!(firewall.connections.load(Ordering::SeqCst), 2);
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_custody_a_message_lost_in_a_forgotten_link_is_delivered_after_reconnecting() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let firewall = SilentFirewall::start(upstream.addr, Duration::from_millis(300)).await;
    let yaml = format!(
        "state_dir: {}\n{}",
        dir.path("state").display(),
        yaml_through(
            firewall.addr,
            "",
            "    delivery: store-and-forward\n    retry: { initial: 50ms, max: 200ms }\n"
        )
    );
    let guard = dir.guard(&yaml).await;
    let mut client = Client::plain(guard.local_addr("test").unwrap()).await;
    assert_eq!(
        ack_of(&client.send(&message("KEEP1", 300)).await).0,
        AckCode::AA
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        ack_of(&client.send(&message("KEEP2", 300)).await).0,
        AckCode::AA
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while upstream.received().len() < 2 {
        assert!(Instant::now() < deadline, "KEEP2 never delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ids: Vec<Vec<u8>> = upstream
        .received()
        .iter()
        .map(|p| {
            mllp_guard::wire::hl7::Header::parse(p)
                .unwrap()
                .control_id()
                .to_vec()
        })
        .collect();
    assert_eq!(ids, [b"KEEP1".to_vec(), b"KEEP2".to_vec()]);
    guard.stop().await;
}

/// Ten senders while the receiver restarts twenty times. Returns the ids that got a positive ack
/// and everything the receiver instances received.
async fn senders_through_restarts(
    extra_top: &str,
    route_extra: &str,
) -> (Vec<String>, Vec<String>) {
    let dir = TestDir::new();
    let received = Arc::new(Mutex::new(Vec::new()));
    let mut upstream = Some(
        FakeUpstream::start_at(
            "127.0.0.1:0".parse().unwrap(),
            Behaviour::Ack,
            received.clone(),
        )
        .await,
    );
    let addr = upstream.as_ref().unwrap().addr;
    let yaml = format!(
        "{extra_top}{}",
        route_yaml(
            addr,
            route_extra,
            "",
            "      reconnect: { initial: 20ms, max: 100ms }\n"
        )
        .replace("ack_timeout: 2s", "ack_timeout: 1s")
    );
    let guard = dir.guard(&yaml).await;
    let listen = guard.local_addr("test").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut senders = Vec::new();
    for s in 0..10 {
        let (stop, acked) = (stop.clone(), acked.clone());
        senders.push(tokio::spawn(async move {
            let mut client = Client::plain(listen).await;
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("R{s}-{n}");
                let (code, got, _) = ack_of(&client.send(&message(&id, 300)).await);
                // Never a wrong or stale ack: every answer names the message just sent.
                assert_eq!(got, id, "an ack for another message was relayed");
                if code.is_positive() {
                    acked.lock().unwrap().push(id);
                    n += 1;
                }
            }
        }));
    }
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        drop(upstream.take());
        tokio::time::sleep(Duration::from_millis(30)).await;
        upstream = Some(FakeUpstream::start_at(addr, Behaviour::Ack, received.clone()).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.await.unwrap();
    }
    // Custody keeps delivering after the senders stop.
    let deadline = Instant::now() + Duration::from_secs(20);
    let acked = acked.lock().unwrap().clone();
    let ids = loop {
        let ids: Vec<String> = received.lock().unwrap().iter().map(|p| id_of(p)).collect();
        if acked.iter().all(|a| ids.contains(a)) || Instant::now() > deadline {
            break ids;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    guard.stop().await;
    (acked, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_mode_never_relays_a_wrong_ack_while_the_receiver_restarts_twenty_times() {
    let (acked, received) = senders_through_restarts("", "").await;
    assert!(
        acked.len() >= 100,
        "the senders made progress: {}",
        acked.len()
    );
    for id in &acked {
        assert!(
            received.contains(id),
            "{id} was acked AA but the receiver never got it"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custody_loses_nothing_while_the_receiver_restarts_twenty_times() {
    let state = tempfile::tempdir().unwrap();
    let (acked, received) = senders_through_restarts(
        &format!("state_dir: {}\n", state.path().display()),
        "    delivery: store-and-forward\n    retry: { initial: 20ms, max: 100ms }\n",
    )
    .await;
    assert!(
        acked.len() >= 100,
        "the senders made progress: {}",
        acked.len()
    );
    let missing: Vec<&String> = acked.iter().filter(|id| !received.contains(id)).collect();
    assert!(missing.is_empty(), "acked but never delivered: {missing:?}");
}
