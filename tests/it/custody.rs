//! Custody (store-and-forward) end to end: acks answered by the guard, delivery in order after
//! the upstream comes back, AE/AR handling, dead letters and replay, enhanced-mode acks,
//! duplicates, a full queue; and the promise itself, checked against SIGKILL of the real binary.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mllp_guard::config::Config;
use mllp_guard::tools::peer::sink::{Sink, SinkOptions};
use mllp_guard::wire::codec::{self, Decoded, Decoder};
use mllp_guard::wire::hl7::AckCode;

use crate::harness::*;

/// A store-and-forward route to `upstream` with fast retries; `extra` adds route keys.
pub(crate) fn custody_yaml(
    dir: &TestDir,
    upstream: SocketAddr,
    listen: &str,
    extra: &str,
) -> String {
    format!(
        "state_dir: {}\nshutdown_grace: 5s\nroutes:\n  - name: lab\n    listen: {listen}\n    allow: [127.0.0.1/32]\n    delivery: store-and-forward\n    retry: {{ initial: 50ms, max: 400ms }}\n{extra}    upstream:\n      address: {upstream}\n      ack_timeout: 2s\n      connect_timeout: 1s\n",
        dir.path("state").display()
    )
}

pub(crate) fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

pub(crate) async fn sink_at(addr: SocketAddr, save: Option<std::path::PathBuf>) -> Sink {
    Sink::start(SinkOptions {
        listen: addr,
        tls: None,
        ack: AckCode::AA,
        save_dir: save,
        max_message_bytes: 1 << 26,
        verbose: false,
    })
    .await
    .unwrap()
}

/// Waits (bounded) until `check` holds.
pub(crate) async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many files the sink has saved in `dir` so far (each may still be being written: read them
/// with [`control_ids`] once the count is reached and the sink had a moment).
pub(crate) fn saved_count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

pub(crate) fn control_ids(dir: &Path) -> Vec<String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .map(|f| {
            let bytes = std::fs::read(f).unwrap();
            id_of(&bytes)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_get_acks_while_the_upstream_is_down_and_everything_arrives_in_order_later() {
    let dir = TestDir::new();
    let upstream = free_addr();
    let guard = dir
        .guard(&custody_yaml(&dir, upstream, "127.0.0.1:0", ""))
        .await;
    let mut client = Client::plain(guard.local_addr("lab").unwrap()).await;
    let ids: Vec<String> = (0..20).map(|i| format!("DOWN{i:03}")).collect();
    for id in &ids {
        let (code, acked, _) = ack_of(&client.send(&message(id, 400)).await);
        assert_eq!((code, acked.as_str()), (AckCode::AA, id.as_str()));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let saved = dir.path("saved");
    let sink = sink_at(upstream, Some(saved.clone())).await;
    eventually("all 20 delivered", || sink.received() >= 20).await;
    assert_eq!(control_ids(&saved), ids, "delivered in order, each once");
    guard.stop().await;
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ae_replies_are_retried_until_accepted() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::CodeFirst(AckCode::AE, 2)).await;
    let guard = dir
        .guard(&custody_yaml(&dir, upstream.addr, "127.0.0.1:0", ""))
        .await;
    let mut client = Client::plain(guard.local_addr("lab").unwrap()).await;
    assert_eq!(
        ack_of(&client.send(&message("RETRY1", 300)).await).0,
        AckCode::AA
    );
    assert_eq!(
        ack_of(&client.send(&message("RETRY2", 300)).await).0,
        AckCode::AA
    );
    eventually("AE twice, then AA for both", || {
        upstream.received().len() >= 4
    })
    .await;
    let got: Vec<String> = upstream.received().iter().map(|p| id_of(p)).collect();
    assert_eq!(
        got,
        ["RETRY1", "RETRY1", "RETRY1", "RETRY2"],
        "the same message is retried, in order"
    );
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ar_replies_go_to_the_dead_letters_and_replay_delivers_them() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::CodeFirst(AckCode::AR, 1)).await;
    let yaml = custody_yaml(&dir, upstream.addr, "127.0.0.1:0", "");
    let guard = dir.guard(&yaml).await;
    let mut client = Client::plain(guard.local_addr("lab").unwrap()).await;
    assert_eq!(
        ack_of(&client.send(&message("DEAD1", 300)).await).0,
        AckCode::AA
    );
    assert_eq!(
        ack_of(&client.send(&message("LIVE1", 300)).await).0,
        AckCode::AA
    );
    eventually("AR for DEAD1, AA for LIVE1", || {
        upstream.received().len() >= 2
    })
    .await;
    drop(client);
    assert!(guard.stop().await);

    let config = Config::load(&dir.path("guard.yaml")).unwrap();
    let mut out = Vec::new();
    mllp_guard::tools::operator::list(&config, None, false, &mut out)
        .await
        .unwrap();
    let listed = String::from_utf8(out).unwrap();
    assert!(
        listed.starts_with("route lab: 0 pending (0 bytes), oldest -, 1 dead letters"),
        "{listed}"
    );
    let mut out = Vec::new();
    mllp_guard::tools::operator::show(&config, Some("lab"), false, 10, &mut out)
        .await
        .unwrap();
    let shown = String::from_utf8(out).unwrap();
    assert!(
        shown.contains("DEAD1\tADT^A01^ADT_A01\t300 bytes"),
        "{shown}"
    );
    assert!(
        shown.contains("reason: upstream replied AR: answered by the test upstream"),
        "{shown}"
    );
    assert!(
        !shown.contains("TEST^PATIENT"),
        "no payload without --payload: {shown}"
    );

    let mut out = Vec::new();
    mllp_guard::tools::operator::replay(&config, None, &mut out)
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "route lab: 1 dead letters replayed into the queue\n"
    );
    let guard = dir.guard(&yaml).await;
    eventually("the replayed DEAD1 is delivered", || {
        upstream.received().len() >= 3
    })
    .await;
    let last = upstream.received().last().unwrap().clone();
    assert_eq!(
        mllp_guard::wire::hl7::Header::parse(&last)
            .unwrap()
            .control_id(),
        b"DEAD1"
    );
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enhanced_mode_messages_get_the_commit_ack_table_0155_asks_for_or_none() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let guard = dir
        .guard(&custody_yaml(&dir, upstream.addr, "127.0.0.1:0", ""))
        .await;
    let mut client = Client::plain(guard.local_addr("lab").unwrap()).await;
    // (file, expected commit ack or None). A silent one is proven by the next message's ack
    // being the next thing on the connection.
    let cases = [
        ("19_enhanced_ack_msh15_AL_msh16_AL.hl7", Some(AckCode::CA)),
        ("20_enhanced_ack_msh15_AL_msh16_NE.hl7", Some(AckCode::CA)),
        ("21_enhanced_ack_msh15_NE_msh16_NE.hl7", None),
        ("22_enhanced_ack_msh15_ER_msh16_SU.hl7", None),
        ("23_enhanced_ack_msh15_SU_msh16_ER.hl7", Some(AckCode::CA)),
        ("01_adt_a01.hl7", Some(AckCode::AA)),
    ];
    for (file, expected) in cases {
        client.send_raw(&codec::encode(&corpus_bytes(file))).await;
        if let Some(code) = expected {
            let (got, acked, _) = ack_of(&client.read_ack().await.unwrap());
            let id = String::from_utf8_lossy(
                mllp_guard::wire::hl7::Header::parse(&corpus_bytes(file))
                    .unwrap()
                    .control_id(),
            )
            .into_owned();
            assert_eq!((got, acked), (code, id), "{file}");
        }
    }
    eventually("all six delivered", || upstream.received().len() >= 6).await;
    // Never a positive ack for what cannot be correlated, and never queued.
    for file in [
        "27_empty_msh10.hl7",
        "malformed/no_msh.hl7",
        "malformed/truncated_msh.hl7",
        "malformed/msh_without_msh10_12.hl7",
        "malformed/lowercase_msh.hl7",
        "malformed/binary_garbage.bin",
        "malformed/missing_encoding_chars.hl7",
    ] {
        let payload = corpus_bytes(file);
        if codec::Frame::from_payload(&payload).is_none() {
            continue; // contains MLLP bytes: the decoder never delivers it as one message
        }
        let ack = client.send(&payload).await;
        let (code, _, _) = ack_of(&ack);
        assert!(!code.is_positive(), "{file} got {code}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        upstream.received().len(),
        6,
        "nothing uncorrelatable was queued"
    );
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_message_gets_the_same_ack_and_is_queued_once() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let guard = dir
        .guard(&custody_yaml(&dir, upstream.addr, "127.0.0.1:0", ""))
        .await;
    let mut client = Client::plain(guard.local_addr("lab").unwrap()).await;
    let first = client.send(&message("ONCE1", 300)).await;
    let again = client.send(&message("ONCE1", 300)).await;
    assert_eq!(first, again, "the very same ack bytes");
    assert_eq!(
        ack_of(&client.send(&message("ONCE2", 300)).await).0,
        AckCode::AA
    );
    eventually("two delivered", || upstream.received().len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(upstream.received().len(), 2);
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_with_ae_and_drops_nothing() {
    let dir = TestDir::new();
    let upstream = free_addr();
    let guard = dir
        .guard(&custody_yaml(
            &dir,
            upstream,
            "127.0.0.1:0",
            "    queue: { max_messages: 2 }\n",
        ))
        .await;
    let mut client = Client::plain(guard.local_addr("lab").unwrap()).await;
    assert_eq!(
        ack_of(&client.send(&message("FULL1", 300)).await).0,
        AckCode::AA
    );
    assert_eq!(
        ack_of(&client.send(&message("FULL2", 300)).await).0,
        AckCode::AA
    );
    let (code, acked, text) = ack_of(&client.send(&message("FULL3", 300)).await);
    assert_eq!((code, acked.as_str()), (AckCode::AE, "FULL3"));
    assert_eq!(text, "queue full");
    let saved = dir.path("saved");
    let sink = sink_at(upstream, Some(saved.clone())).await;
    eventually("the two queued messages arrive", || sink.received() >= 2).await;
    assert_eq!(control_ids(&saved), ["FULL1", "FULL2"]);
    guard.stop().await;
    sink.stop().await;
}

// ---- The promise under SIGKILL, with the real binaries -------------------------------------

pub(crate) fn spawn_guard(config: &Path) -> Proc {
    Proc(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .env("MLLP_GUARD_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// One blocking exchange: Ok(ack code and MSA-2) or Err when the connection failed.
pub(crate) fn exchange(
    stream: &mut TcpStream,
    decoder: &mut Decoder,
    buf: &mut bytes::BytesMut,
    payload: &[u8],
) -> std::io::Result<(AckCode, String)> {
    stream.write_all(&codec::encode(payload))?;
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(Decoded::Frame(frame)) = decoder.decode(buf) {
            let (code, acked, _) = ack_of(frame.payload());
            return Ok((code, acked));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A sender that sends S{id}-0, S{id}-1, ... one at a time, resending a message until it gets a
/// positive ack (reconnecting after the guard is killed), and records what was acked.
fn sender(
    id: usize,
    addr: SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
) {
    let mut n = 0;
    let mut conn: Option<(TcpStream, Decoder, bytes::BytesMut)> = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
        if conn.is_none() {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    conn = Some((s, Decoder::new(1 << 20), bytes::BytesMut::new()));
                }
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            }
        }
        let (stream, decoder, buf) = conn.as_mut().unwrap();
        let msg_id = format!("S{id}-{n}");
        match exchange(stream, decoder, buf, &message(&msg_id, 700)) {
            Ok((code, got)) if code.is_positive() && got == msg_id => {
                acked.lock().unwrap().push(msg_id);
                n += 1;
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => conn = None,
        }
    }
}

#[test]
fn every_positively_acked_message_survives_sigkill_and_arrives_in_order() {
    let dir = TestDir::new();
    let saved = dir.path("saved");
    let sink_addr = free_addr();
    let listen = free_addr();
    let config = dir.path("custody.yaml");
    std::fs::write(
        &config,
        custody_yaml(&dir, sink_addr, &listen.to_string(), ""),
    )
    .unwrap();
    let _sink = Proc(
        Command::new(BIN)
            .args(["sink", "--listen", &sink_addr.to_string(), "--save-dir"])
            .arg(&saved)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut guard = spawn_guard(&config);
    let senders: Vec<_> = (0..4)
        .map(|i| {
            let (stop, acked) = (stop.clone(), acked.clone());
            std::thread::spawn(move || sender(i, listen, stop, acked))
        })
        .collect();
    // Kill the guard at (pseudo-)random moments, six times, restarting it each time.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..6 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(150 + seed % 450));
        guard.0.kill().unwrap(); // SIGKILL
        guard.0.wait().unwrap();
        guard = spawn_guard(&config);
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 50,
        "the senders made progress: {} acked",
        acked.len()
    );

    // Everything acked must reach the sink (the last guard keeps draining).
    let deadline = Instant::now() + Duration::from_secs(30);
    let delivered = loop {
        let delivered = control_ids(&saved);
        let missing = acked.iter().filter(|id| !delivered.contains(id)).count();
        if missing == 0 {
            break delivered;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} acked messages never reached the sink"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // Per sender, first arrivals are in send order; duplicates are allowed, and counted.
    let mut next: HashMap<String, usize> = HashMap::new();
    let mut duplicates = 0;
    let mut seen = std::collections::HashSet::new();
    for id in &delivered {
        if !seen.insert(id.clone()) {
            duplicates += 1;
            continue;
        }
        let (sender, n) = id.split_once('-').unwrap();
        let n: usize = n.parse().unwrap();
        let expected = next.entry(sender.to_string()).or_insert(0);
        assert_eq!(
            n, *expected,
            "{sender}: first arrivals out of order at {id}"
        );
        *expected += 1;
    }
    eprintln!(
        "custody under SIGKILL: {} acked, {} delivered, {} duplicates",
        acked.len(),
        delivered.len(),
        duplicates
    );
}

/// Issue 27, finding 5: the same message sent at the same moment on two connections (a sender
/// that timed out on a slow fsync and resent) is committed once: the second waits for the
/// first's outcome and gets the same ack. 20 pairs, through the binary.
#[test]
fn concurrent_resends_are_queued_once_and_get_the_same_ack() {
    let dir = TestDir::new();
    let saved = dir.path("saved");
    let (_sink, sink_addr) = crate::cli::start_saving_sink(&saved);
    let listen = free_addr();
    let config = dir.path("custody.yaml");
    std::fs::write(
        &config,
        custody_yaml(&dir, sink_addr.parse().unwrap(), &listen.to_string(), ""),
    )
    .unwrap();
    let _guard = spawn_guard(&config);
    let connect = || {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(s) = TcpStream::connect(listen) {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                return s;
            }
            assert!(Instant::now() < deadline, "the guard never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let ids: Vec<String> = (0..20).map(|i| format!("PAIR-{i:02}")).collect();
    for id in &ids {
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let sends: Vec<_> = (0..2)
            .map(|_| {
                let (mut stream, barrier, id) = (connect(), barrier.clone(), id.clone());
                std::thread::spawn(move || {
                    let (mut decoder, mut buf) = (Decoder::new(1 << 20), bytes::BytesMut::new());
                    barrier.wait();
                    exchange(&mut stream, &mut decoder, &mut buf, &message(&id, 500)).unwrap()
                })
            })
            .collect();
        let acks: Vec<(AckCode, String)> = sends.into_iter().map(|t| t.join().unwrap()).collect();
        for (code, got) in &acks {
            assert!(code.is_positive() && got == id, "{id}: {acks:?}");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while saved_count(&saved) < ids.len() {
        assert!(
            Instant::now() < deadline,
            "delivered: {:?}",
            control_ids(&saved)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        control_ids(&saved),
        ids,
        "each message delivered once, in order"
    );
}
