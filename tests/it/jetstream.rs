//! Custody on NATS JetStream (issue 8), against real nats-server processes on loopback.
//!
//! The queue contract (order after the upstream was down, AE retries, AR dead letters with
//! `queue list/show/replay`, purge, duplicates, SIGKILL recovery) runs as the same test bodies
//! against both backends; then what only a shared, replicated store can do: NATS down gives
//! negative acks, a resend to another guard is deduplicated, a dead guard's message is taken
//! over, and two guards on a three-node cluster lose nothing when one guard and then one NATS
//! node are SIGKILLed under load. Skipped (with a message) when `nats-server` is not on PATH.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mllp_guard::config::Config;
use mllp_guard::wire::codec::Decoder;
use mllp_guard::wire::hl7::AckCode;

use crate::custody::{
    control_ids, custody_yaml, eventually, exchange, free_addr, sink_at, spawn_guard,
};
use crate::harness::*;
use crate::nats::{self, Nats};

/// Where a contract test keeps custody.
pub(crate) enum Backend {
    Embedded,
    JetStream(Nats),
}

impl Backend {
    /// A fresh single-node JetStream (the test fails, saying how to install it, without
    /// nats-server).
    pub(crate) fn jetstream() -> Backend {
        nats::require();
        Backend::JetStream(Nats::single())
    }

    /// `backend` as `queue list --json` names it.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::JetStream(_) => "jetstream",
        }
    }

    /// Route keys selecting this backend (`extra_queue` adds keys to the `queue:` block).
    pub(crate) fn yaml(&self, extra_queue: &str) -> String {
        match self {
            Backend::Embedded if extra_queue.is_empty() => String::new(),
            Backend::Embedded => format!("    queue:\n{extra_queue}"),
            Backend::JetStream(nats) => {
                format!("{}{extra_queue}", nats.queue_yaml("MLLP_LAB", 1, "2s"))
            }
        }
    }
}

// ---- The contract, both backends -----------------------------------------------------------

async fn acks_while_the_upstream_is_down_then_delivery_in_order(backend: Backend) {
    let dir = TestDir::new();
    let upstream = free_addr();
    let guard = dir
        .guard(&custody_yaml(
            &dir,
            upstream,
            "127.0.0.1:0",
            &backend.yaml(""),
        ))
        .await;
    let mut client = Client::plain(guard.local_addr("lab").unwrap()).await;
    let ids: Vec<String> = (0..20).map(|i| format!("DOWN{i:03}")).collect();
    for id in &ids {
        let (code, acked, text) = ack_of(&client.send(&message(id, 400)).await);
        assert_eq!((code, acked.as_str()), (AckCode::AA, id.as_str()), "{text}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let saved = dir.path("saved");
    let sink = sink_at(upstream, Some(saved.clone())).await;
    eventually("all 20 delivered", || sink.received() >= 20).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(control_ids(&saved), ids, "delivered in order, each once");
    guard.stop().await;
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_acks_while_the_upstream_is_down_then_delivery_in_order() {
    acks_while_the_upstream_is_down_then_delivery_in_order(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server: apt-get install nats-server"]
async fn jetstream_acks_while_the_upstream_is_down_then_delivery_in_order() {
    let backend = Backend::jetstream();
    acks_while_the_upstream_is_down_then_delivery_in_order(backend).await;
}

async fn ae_replies_are_retried_in_order(backend: Backend) {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::CodeFirst(AckCode::AE, 2)).await;
    let guard = dir
        .guard(&custody_yaml(
            &dir,
            upstream.addr,
            "127.0.0.1:0",
            &backend.yaml(""),
        ))
        .await;
    let mut client = Client::plain(guard.local_addr("lab").unwrap()).await;
    for id in ["RETRY1", "RETRY2"] {
        assert_eq!(ack_of(&client.send(&message(id, 300)).await).0, AckCode::AA);
    }
    eventually("AE twice, then AA for both", || {
        upstream.received().len() >= 4
    })
    .await;
    let got: Vec<String> = upstream.received().iter().map(|p| id_of(p)).collect();
    assert_eq!(got, ["RETRY1", "RETRY1", "RETRY1", "RETRY2"]);
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_ae_replies_are_retried_in_order() {
    ae_replies_are_retried_in_order(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server: apt-get install nats-server"]
async fn jetstream_ae_replies_are_retried_in_order() {
    let backend = Backend::jetstream();
    ae_replies_are_retried_in_order(backend).await;
}

/// Runs a `queue` command's library function on the test's runtime, as the CLI does on its own.
async fn operator(config: &Config, op: &str) -> String {
    let mut out = Vec::new();
    match op {
        "list" => mllp_guard::tools::operator::list(config, None, false, &mut out)
            .await
            .unwrap(),
        "show" => mllp_guard::tools::operator::show(config, Some("lab"), false, 10, &mut out)
            .await
            .unwrap(),
        "replay" => mllp_guard::tools::operator::replay(config, None, &mut out)
            .await
            .unwrap(),
        "purge" => mllp_guard::tools::operator::purge(
            config,
            None,
            false,
            true,
            &mut std::io::empty(),
            &mut out,
        )
        .await
        .unwrap(),
        _ => unreachable!(),
    }
    String::from_utf8(out).unwrap()
}

async fn ar_replies_are_dead_lettered_listed_shown_and_replayed(backend: Backend) {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::CodeFirst(AckCode::AR, 1)).await;
    let yaml = custody_yaml(&dir, upstream.addr, "127.0.0.1:0", &backend.yaml(""));
    let guard = dir.guard(&yaml).await;
    let mut client = Client::plain(guard.local_addr("lab").unwrap()).await;
    for id in ["DEAD1", "LIVE1"] {
        assert_eq!(ack_of(&client.send(&message(id, 300)).await).0, AckCode::AA);
    }
    eventually("AR for DEAD1, AA for LIVE1", || {
        upstream.received().len() >= 2
    })
    .await;
    drop(client);
    assert!(guard.stop().await);

    let config = Config::load(&dir.path("guard.yaml")).unwrap();
    let listed = operator(&config, "list").await;
    assert!(
        listed.starts_with("route lab: 0 pending") && listed.contains(" 1 dead letters"),
        "{listed}"
    );
    let shown = operator(&config, "show").await;
    assert!(shown.contains("route lab: pending: 0\n"), "{shown}");
    assert!(shown.contains("route lab: dead letters: 1\n"), "{shown}");
    assert!(
        shown.contains("DEAD1\tADT^A01^ADT_A01\t300 bytes"),
        "{shown}"
    );
    assert!(
        shown.contains("reason: upstream replied AR: answered by the test upstream"),
        "{shown}"
    );
    assert!(!shown.contains("TEST^PATIENT"), "no payload: {shown}");
    assert_eq!(
        operator(&config, "replay").await,
        "route lab: 1 dead letters replayed into the queue\n"
    );
    let guard = dir.guard(&yaml).await;
    eventually("the replayed DEAD1 is delivered", || {
        upstream.received().len() >= 3
    })
    .await;
    let last = upstream.received().last().unwrap().clone();
    assert_eq!(id_of(&last), "DEAD1");
    assert!(guard.stop().await);
    let listed = operator(&config, "list").await;
    assert!(
        listed.starts_with("route lab: 0 pending") && listed.contains(" 0 dead letters"),
        "{listed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_ar_replies_are_dead_lettered_listed_shown_and_replayed() {
    ar_replies_are_dead_lettered_listed_shown_and_replayed(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server: apt-get install nats-server"]
async fn jetstream_ar_replies_are_dead_lettered_listed_shown_and_replayed() {
    let backend = Backend::jetstream();
    ar_replies_are_dead_lettered_listed_shown_and_replayed(backend).await;
}

async fn purge_removes_pending_messages_which_are_never_delivered(backend: Backend) {
    let dir = TestDir::new();
    let upstream = free_addr();
    let yaml = custody_yaml(&dir, upstream, "127.0.0.1:0", &backend.yaml(""));
    let guard = dir.guard(&yaml).await;
    let mut client = Client::plain(guard.local_addr("lab").unwrap()).await;
    for id in ["GONE1", "GONE2", "GONE3"] {
        assert_eq!(ack_of(&client.send(&message(id, 300)).await).0, AckCode::AA);
    }
    drop(client);
    assert!(guard.stop().await);
    let config = Config::load(&dir.path("guard.yaml")).unwrap();
    assert!(
        operator(&config, "list")
            .await
            .starts_with("route lab: 3 pending"),
        "{}",
        operator(&config, "list").await
    );
    assert_eq!(
        operator(&config, "purge").await,
        "route lab: 3 pending messages purged\n"
    );
    let saved = dir.path("saved");
    let sink = sink_at(upstream, Some(saved.clone())).await;
    let guard = dir.guard(&yaml).await;
    let mut client = Client::plain(guard.local_addr("lab").unwrap()).await;
    assert_eq!(
        ack_of(&client.send(&message("AFTER1", 300)).await).0,
        AckCode::AA
    );
    eventually("the message after the purge arrives", || {
        sink.received() >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(control_ids(&saved), ["AFTER1"]);
    guard.stop().await;
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_purge_removes_pending_messages_which_are_never_delivered() {
    purge_removes_pending_messages_which_are_never_delivered(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server: apt-get install nats-server"]
async fn jetstream_purge_removes_pending_messages_which_are_never_delivered() {
    let backend = Backend::jetstream();
    purge_removes_pending_messages_which_are_never_delivered(backend).await;
}

async fn a_resent_message_gets_the_same_ack_and_is_queued_once(backend: Backend) {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let guard = dir
        .guard(&custody_yaml(
            &dir,
            upstream.addr,
            "127.0.0.1:0",
            &backend.yaml(""),
        ))
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
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(upstream.received().len(), 2);
    assert_eq!(
        upstream.connections.load(Ordering::Relaxed),
        1,
        "the drainer reuses its upstream connection"
    );
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_a_resent_message_gets_the_same_ack_and_is_queued_once() {
    a_resent_message_gets_the_same_ack_and_is_queued_once(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server: apt-get install nats-server"]
async fn jetstream_a_resent_message_gets_the_same_ack_and_is_queued_once() {
    let backend = Backend::jetstream();
    a_resent_message_gets_the_same_ack_and_is_queued_once(backend).await;
}

// ---- Senders and checks shared by the process-level tests ------------------------------------

/// Sends S{id}-0, S{id}-1, ... one at a time to the first guard address that answers, resending
/// a message until it gets a positive ack, and records what was acked positively (and how many
/// negative acks it saw).
fn sender(
    id: usize,
    addrs: Vec<SocketAddr>,
    pace: Duration,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    negative: Arc<std::sync::atomic::AtomicUsize>,
) {
    let mut n = 0;
    let mut which = 0;
    let mut conn: Option<(TcpStream, Decoder, bytes::BytesMut)> = None;
    let deadline = Instant::now() + Duration::from_secs(90);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        if conn.is_none() {
            let addr = addrs[which % addrs.len()];
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
                    conn = Some((s, Decoder::new(1 << 20), bytes::BytesMut::new()));
                }
                Err(_) => {
                    which += 1;
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
                std::thread::sleep(pace);
            }
            Ok(_) => {
                negative.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(_) => {
                which += 1;
                conn = None;
            }
        }
    }
}

/// The control ids saved by the sink in arrival order, or None while a file is still being
/// written (the sink creates it, then writes it).
fn saved_ids(dir: &Path) -> Option<Vec<String>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .map(|f| {
            let bytes = std::fs::read(f).ok()?;
            mllp_guard::wire::hl7::Header::parse(&bytes)
                .ok()
                .map(|h| String::from_utf8_lossy(h.control_id()).into_owned())
        })
        .collect()
}

/// Waits (bounded by `patience`) until every acked id is in `saved`; checks that per sender
/// the first arrivals are in send order; returns (delivered, duplicates).
fn all_acked_arrive_in_order(saved: &Path, acked: &[String], patience: Duration) -> (usize, usize) {
    let deadline = Instant::now() + patience;
    let delivered = loop {
        let Some(delivered) = saved_ids(saved) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let have: HashSet<&String> = delivered.iter().collect();
        let missing = acked.iter().filter(|id| !have.contains(id)).count();
        if missing == 0 {
            break delivered;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} positively acked messages never reached the upstream",
            acked.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut next: HashMap<String, usize> = HashMap::new();
    let mut duplicates = 0;
    let mut seen = HashSet::new();
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
    (delivered.len(), duplicates)
}

fn spawn_sink(addr: SocketAddr, saved: &Path) -> Proc {
    Proc(
        Command::new(BIN)
            .args(["sink", "--listen", &addr.to_string(), "--save-dir"])
            .arg(saved)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Records when the number of delivered messages changes, to measure delivery stalls.
struct Timeline {
    stop: Arc<AtomicBool>,
    changes: Arc<Mutex<Vec<Instant>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Timeline {
    fn watch(saved: std::path::PathBuf) -> Timeline {
        let stop = Arc::new(AtomicBool::new(false));
        let changes = Arc::new(Mutex::new(Vec::new()));
        let (s, c) = (stop.clone(), changes.clone());
        let thread = std::thread::spawn(move || {
            let mut last = 0;
            let deadline = Instant::now() + Duration::from_secs(180);
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                let n = std::fs::read_dir(&saved).map(|d| d.count()).unwrap_or(0);
                if n != last {
                    last = n;
                    c.lock().unwrap().push(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Timeline {
            stop,
            changes,
            thread: Some(thread),
        }
    }

    /// How long after `at` the next delivery came.
    fn stall_after(&self, at: Instant) -> Option<Duration> {
        self.changes
            .lock()
            .unwrap()
            .iter()
            .find(|t| **t > at)
            .map(|t| *t - at)
    }
}

impl Drop for Timeline {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// SIGKILLs the real guard binary `kills` times under 4 concurrent senders (restarting it each
/// time); every positively acked message must reach the sink, in order per sender.
fn every_positively_acked_message_survives_sigkill(backend: Backend, kills: usize, pace: Duration) {
    let dir = TestDir::new();
    let saved = dir.path("saved");
    let sink_addr = free_addr();
    let listen = free_addr();
    let config = dir.path("custody.yaml");
    std::fs::write(
        &config,
        custody_yaml(&dir, sink_addr, &listen.to_string(), &backend.yaml("")),
    )
    .unwrap();
    let _sink = spawn_sink(sink_addr, &saved);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let negative = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut guard = spawn_guard(&config);
    let senders: Vec<_> = (0..4)
        .map(|i| {
            let (stop, acked, negative) = (stop.clone(), acked.clone(), negative.clone());
            std::thread::spawn(move || sender(i, vec![listen], pace, stop, acked, negative))
        })
        .collect();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..kills {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(300 + seed % 500));
        guard.0.kill().unwrap(); // SIGKILL
        guard.0.wait().unwrap();
        guard = spawn_guard(&config);
    }
    std::thread::sleep(Duration::from_millis(800));
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 40, "progress: {} acked", acked.len());
    let (delivered, duplicates) =
        all_acked_arrive_in_order(&saved, &acked, Duration::from_secs(120));
    eprintln!(
        "custody under SIGKILL ({}): {} acked, {} delivered, {duplicates} duplicates",
        backend.name(),
        acked.len(),
        delivered
    );
    drop(guard);
}

#[test]
fn embedded_every_positively_acked_message_survives_sigkill() {
    every_positively_acked_message_survives_sigkill(Backend::Embedded, 4, Duration::ZERO);
}

#[test]
#[ignore = "needs nats-server: apt-get install nats-server"]
fn jetstream_every_positively_acked_message_survives_sigkill() {
    let backend = Backend::jetstream();
    // Paced: JetStream delivers one message per round trip to NATS, far slower than it acks.
    every_positively_acked_message_survives_sigkill(backend, 4, Duration::from_millis(5));
}

// ---- What only JetStream does ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server: apt-get install nats-server"]
async fn jetstream_down_gives_negative_acks_and_nothing_unstored_is_acked() {
    nats::require();
    let mut nats = Nats::single();
    let dir = TestDir::new();
    let upstream = free_addr();
    let yaml = custody_yaml(
        &dir,
        upstream,
        "127.0.0.1:0",
        &nats.queue_yaml("MLLP_DOWN", 1, "2s"),
    );
    let guard = dir.guard(&yaml).await;
    let mut client = Client::plain(guard.local_addr("lab").unwrap()).await;
    assert_eq!(
        ack_of(&client.send(&message("UP1", 300)).await).0,
        AckCode::AA
    );
    nats.nodes[0].kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..5 {
        let id = format!("LOST{i}");
        let started = Instant::now();
        let (code, acked, text) = ack_of(&client.send(&message(&id, 300)).await);
        assert_eq!((code, acked.as_str()), (AckCode::AE, id.as_str()), "{text}");
        assert_eq!(text, "message not queued");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "answered in time"
        );
    }
    nats.nodes[0].start();
    nats.nodes[0].wait_healthy();
    let mut answered = None;
    for attempt in 0..100 {
        let id = format!("UP2-{attempt}");
        let (code, _, _) = ack_of(&client.send(&message(&id, 300)).await);
        if code == AckCode::AA {
            answered = Some(id);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let up2 = answered.expect("acks resume once NATS is back");
    let saved = dir.path("saved");
    let sink = sink_at(upstream, Some(saved.clone())).await;
    eventually("the two stored messages arrive", || sink.received() >= 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        control_ids(&saved),
        ["UP1".to_string(), up2],
        "only what was acked positively is delivered"
    );
    guard.stop().await;
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server: apt-get install nats-server"]
async fn jetstream_a_resend_to_another_guard_is_deduplicated_by_the_stream() {
    nats::require();
    let nats = Nats::single();
    let dir = TestDir::new();
    let upstream = free_addr();
    let yaml = custody_yaml(
        &dir,
        upstream,
        "127.0.0.1:0",
        &nats.queue_yaml("MLLP_DEDUP", 1, "2s"),
    );
    let first = dir.guard(&yaml).await;
    let mut client = Client::plain(first.local_addr("lab").unwrap()).await;
    assert_eq!(
        ack_of(&client.send(&message("TWICE1", 300)).await).0,
        AckCode::AA
    );
    drop(client);
    first.stop().await;
    // A fresh guard has no memory of TWICE1; the stream's duplicate window has.
    let second = dir.guard(&yaml).await;
    let mut client = Client::plain(second.local_addr("lab").unwrap()).await;
    assert_eq!(
        ack_of(&client.send(&message("TWICE1", 300)).await).0,
        AckCode::AA
    );
    assert_eq!(
        ack_of(&client.send(&message("NEXT1", 300)).await).0,
        AckCode::AA
    );
    let saved = dir.path("saved");
    let sink = sink_at(upstream, Some(saved.clone())).await;
    eventually("both arrive", || sink.received() >= 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(control_ids(&saved), ["TWICE1", "NEXT1"]);
    second.stop().await;
    sink.stop().await;
}

#[test]
#[ignore = "needs nats-server: apt-get install nats-server"]
fn jetstream_another_guard_takes_over_within_the_takeover_time_when_the_holder_dies() {
    nats::require();
    let nats = Nats::single();
    let dir = TestDir::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Every delivery takes 1.5 s, so the holder is mid-delivery when it is killed.
    let upstream = rt.block_on(FakeUpstream::start(Behaviour::LateAck(
        Duration::from_millis(1500),
    )));
    let listen_a = free_addr();
    let listen_b = free_addr();
    let queue = nats.queue_yaml("MLLP_TAKEOVER", 1, "2s");
    let (config_a, config_b) = (dir.path("a.yaml"), dir.path("b.yaml"));
    std::fs::write(
        &config_a,
        custody_yaml(&dir, upstream.addr, &listen_a.to_string(), &queue),
    )
    .unwrap();
    std::fs::write(
        &config_b,
        custody_yaml(&dir, upstream.addr, &listen_b.to_string(), &queue),
    )
    .unwrap();
    let mut a = spawn_guard(&config_a);
    // Three messages through guard A.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stream = loop {
        if let Ok(s) = TcpStream::connect_timeout(&listen_a, Duration::from_secs(1)) {
            break s;
        }
        assert!(Instant::now() < deadline, "guard A listens");
        std::thread::sleep(Duration::from_millis(20));
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(8)))
        .unwrap();
    let (mut decoder, mut buf) = (Decoder::new(1 << 20), bytes::BytesMut::new());
    for n in 0..3 {
        let id = format!("S0-{n}");
        loop {
            let (code, _) =
                exchange(&mut stream, &mut decoder, &mut buf, &message(&id, 700)).unwrap();
            if code == AckCode::AA {
                break;
            }
            assert!(Instant::now() < deadline, "guard A acks {id}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(20);
    while upstream.received().is_empty() {
        assert!(Instant::now() < deadline, "A starts delivering");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(200));
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    let killed = Instant::now();
    let _b = spawn_guard(&config_b);
    let deadline = Instant::now() + Duration::from_secs(20);
    while upstream.received().len() < 2 {
        assert!(Instant::now() < deadline, "B takes over");
        std::thread::sleep(Duration::from_millis(5));
    }
    let taken_over = killed.elapsed();
    let deadline = Instant::now() + Duration::from_secs(30);
    while upstream.received().len() < 4 {
        assert!(Instant::now() < deadline, "B delivers the rest");
        std::thread::sleep(Duration::from_millis(20));
    }
    let got: Vec<String> = upstream.received().iter().map(|p| id_of(p)).collect();
    assert_eq!(
        got,
        ["S0-0", "S0-0", "S0-1", "S0-2"],
        "B resumes from the first unacknowledged message"
    );
    assert!(
        taken_over < Duration::from_secs(5),
        "taken over within takeover (2s) plus slack: {taken_over:?}"
    );
    eprintln!("jetstream takeover after SIGKILL of the holder: {taken_over:?} (takeover: 2s)");
    drop(upstream);
}

#[test]
#[ignore = "needs nats-server: apt-get install nats-server"]
fn jetstream_two_guards_on_a_three_node_cluster_lose_nothing_when_a_guard_then_a_node_dies() {
    nats::require();
    let mut nats = Nats::cluster();
    let dir = TestDir::new();
    let saved = dir.path("saved");
    let sink_addr = free_addr();
    let _sink = spawn_sink(sink_addr, &saved);
    let listens = [free_addr(), free_addr()];
    let queue = nats.queue_yaml("MLLP_HA", 3, "2s");
    let configs: Vec<_> = listens
        .iter()
        .enumerate()
        .map(|(i, listen)| {
            let path = dir.path(&format!("guard{i}.yaml"));
            std::fs::write(
                &path,
                custody_yaml(&dir, sink_addr, &listen.to_string(), &queue),
            )
            .unwrap();
            path
        })
        .collect();
    let mut guards: Vec<Option<Proc>> = configs.iter().map(|c| Some(spawn_guard(c))).collect();
    let timeline = Timeline::watch(saved.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let negative = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Four senders, spread over both guards (each fails over to the other one, like behind a
    // load balancer).
    let senders: Vec<_> = (0..4)
        .map(|i| {
            let (stop, acked, negative) = (stop.clone(), acked.clone(), negative.clone());
            let addrs = vec![listens[i % 2], listens[(i + 1) % 2]];
            // Paced (about 100 msgs/s each), so the backlog stays within what one drainer
            // delivers in a debug build on a busy machine.
            std::thread::spawn(move || {
                sender(i, addrs, Duration::from_millis(10), stop, acked, negative)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(2000));
    let before_guard_kill = acked.lock().unwrap().len();
    guards[0] = None; // SIGKILL guard 0, not restarted
    let guard_killed = Instant::now();
    std::thread::sleep(Duration::from_millis(3000));
    nats.nodes[0].kill(); // SIGKILL one NATS node
    let node_killed = Instant::now();
    std::thread::sleep(Duration::from_millis(4000));
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > before_guard_kill,
        "senders kept getting acks after a guard died"
    );
    let (delivered, duplicates) =
        all_acked_arrive_in_order(&saved, &acked, Duration::from_secs(120));
    eprintln!(
        "two guards, 3-node JetStream R3: {} acked ({} negative acks seen), {delivered} delivered, {duplicates} duplicates; delivery resumed {:?} after the guard SIGKILL and {:?} after the NATS node SIGKILL (takeover 2s)",
        acked.len(),
        negative.load(Ordering::Relaxed),
        timeline.stall_after(guard_killed),
        timeline.stall_after(node_killed),
    );
    drop(guards);
}

/// The `queue.jetstream.tls` block against a nats-server that requires TLS with client
/// certificates: with the guard's client certificate messages are stored and delivered; without
/// one the server refuses the guard and senders get negative acks, never a positive one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server: apt-get install nats-server"]
async fn jetstream_over_mutual_tls() {
    nats::require();
    let dir = TestDir::new();
    let port = free_addr().port();
    let store = dir.path("nats-store");
    let conf = dir.path("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{port}\njetstream {{ store_dir: \"{}\" }}\ntls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n  timeout: 2\n}}\n",
            store.display(),
            dir.path("ehr.pem").display(),
            dir.path("ehr.key").display(),
            dir.path("ca.pem").display()
        ),
    )
    .unwrap();
    let _server = Proc(
        Command::new("nats-server")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually("nats-server listening", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let queue = |tls: &str| {
        format!("    queue:\n      backend: jetstream\n      jetstream:\n        servers: [\"nats://localhost:{port}\"]\n        stream: MLLP_TLS\n        replicas: 1\n        publish_timeout: 2s\n        tls: {tls}\n")
    };
    let with_cert = queue("{ ca: ca.pem, cert: guard-client.pem, key: guard-client.key }");
    let guard = dir
        .guard(&custody_yaml(
            &dir,
            upstream.addr,
            "127.0.0.1:0",
            &with_cert,
        ))
        .await;
    let mut client = Client::plain(guard.local_addr("lab").unwrap()).await;
    for i in 0..3 {
        let id = format!("TLS-{i}");
        assert_eq!(
            ack_of(&client.send(&message(&id, 300)).await).0,
            AckCode::AA
        );
    }
    eventually("three delivered through NATS over TLS", || {
        upstream.received().len() >= 3
    })
    .await;
    guard.stop().await;

    let without_cert = queue("{ ca: ca.pem }");
    let guard = dir
        .guard(&custody_yaml(
            &dir,
            upstream.addr,
            "127.0.0.1:0",
            &without_cert,
        ))
        .await;
    let mut client = Client::plain(guard.local_addr("lab").unwrap()).await;
    let (code, _, _) = ack_of(&client.send(&message("NOCERT", 300)).await);
    assert!(!code.is_positive(), "never acked without a store: {code}");
    guard.stop().await;
}

// ---- A recycled control id (issue 24, finding 4), through the binary ------------------------

/// A sender whose counter restarted sends another message under a control id it used minutes
/// ago: it is a new message (queued, delivered, acked), with a warning that carries both
/// digests and the `mllp_guard_control_id_reused` metric; a true resend is still answered once.
async fn a_recycled_control_id_with_another_body_is_delivered_and_warned_about(backend: Backend) {
    let dir = TestDir::new();
    let saved = dir.path("saved");
    let (_sink, sink_addr) = crate::cli::start_sink(&[
        "--listen",
        "127.0.0.1:0",
        "--save-dir",
        saved.to_str().unwrap(),
    ]);
    let admin = free_addr();
    let yaml = format!(
        "admin: {{ listen: {admin} }}\n{}",
        custody_yaml(
            &dir,
            sink_addr.parse().unwrap(),
            "127.0.0.1:0",
            &format!("    duplicate_window: 10m\n{}", backend.yaml("")),
        )
    );
    let config = dir.path("guard.yaml");
    std::fs::write(&config, yaml).unwrap();
    let (_guard, listen, logs) = crate::cli::start_guard(&config);
    let result = |value: &str| {
        format!("MSH|^~\\&|LAB|FAC|EHR|HOSP|20240101||ORU^R01|R1|P|2.5\rOBX|1|NM|K||{value}\r")
            .into_bytes()
    };
    let mut client = Client::plain(listen.parse().unwrap()).await;
    for payload in [result("4.1"), result("6.9"), result("6.9")] {
        let (code, acked, _) = ack_of(&client.send(&payload).await);
        assert_eq!((code, acked.as_str()), (AckCode::AA, "R1"));
    }
    let saved_now = || {
        std::fs::read_dir(&saved)
            .map(|e| {
                e.map(|f| std::fs::read(f.unwrap().path()).unwrap())
                    .collect()
            })
            .unwrap_or_else(|_| Vec::new())
    };
    eventually("both results delivered", || saved_now().len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut got: Vec<Vec<u8>> = saved_now();
    got.sort();
    assert!(
        got == [result("4.1"), result("6.9")],
        "each body delivered once"
    );
    let mut warned = Vec::new();
    while let Ok(line) = logs.recv_timeout(Duration::from_millis(500)) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("control id reused"))
        {
            warned.push(v);
        }
    }
    assert_eq!(
        warned.len(),
        1,
        "one warning, for the other body: {warned:?}"
    );
    let (earlier, now) = (&warned[0]["earlier_sha256"], &warned[0]["sha256"]);
    assert!(
        earlier.as_str().unwrap().len() == 64 && earlier != now,
        "{warned:?}"
    );
    let metrics = crate::admin::wait_for(admin, "/metrics", 200).await;
    assert!(
        metrics.contains("mllp_guard_control_id_reused_total{route=\"lab\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_a_recycled_control_id_with_another_body_is_delivered_and_warned_about() {
    a_recycled_control_id_with_another_body_is_delivered_and_warned_about(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server: apt-get install nats-server"]
async fn jetstream_a_recycled_control_id_with_another_body_is_delivered_and_warned_about() {
    let backend = Backend::jetstream();
    a_recycled_control_id_with_another_body_is_delivered_and_warned_about(backend).await;
}
