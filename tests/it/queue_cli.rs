//! Custody as an operator meets it, through the binary (issue 17): `mllp-guard queue
//! list|show|replay|purge` on both backends with the guard running and stopped, `list --json`
//! accurate within a second of a delivery (and after a SIGKILL), `duplicate_window` across a
//! restart and a SIGKILL, `retry.max_attempts` and `retry.max_age` on both backends, and the
//! `ae-only` / `ar-only` ack modes. The guard is the real binary; the receiver a fake upstream in
//! this process. JetStream cases skip (saying so) when `nats-server` is missing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mllp_guard::wire::codec::{self, Decoded, Decoder};
use mllp_guard::wire::hl7::AckCode;

use crate::cli::start_guard;
use crate::custody::free_addr;
use crate::harness::*;
use crate::jetstream::Backend;

/// Writes a config with one store-and-forward route `lab` (listening on a free port) to
/// `upstream`; `route` adds route keys (it must hold `retry`).
fn config(dir: &TestDir, upstream: SocketAddr, route: &str) -> PathBuf {
    let file = dir.path("guard.yaml");
    let yaml = format!(
        "state_dir: {}\nshutdown_grace: 5s\nroutes:\n  - name: lab\n    listen: 127.0.0.1:0\n    allow: [127.0.0.1/32]\n    delivery: store-and-forward\n{route}    upstream:\n      address: {upstream}\n      ack_timeout: 2s\n      connect_timeout: 1s\n      reconnect: {{ initial: 50ms, max: 200ms }}\n",
        dir.path("state").display()
    );
    std::fs::write(&file, yaml).unwrap();
    file
}

/// `mllp-guard queue ARGS --config FILE`: (exit 0, stdout, stderr).
fn queue(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("queue")
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `queue list --json`: the one route's object, checked to have exactly the contract's keys.
fn listed(config: &Path) -> serde_json::Value {
    let (ok, out, err) = queue(config, &["list", "--json"]);
    assert!(ok, "queue list --json failed: {err}");
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
    let rows = v
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {out}"));
    assert_eq!(rows.len(), 1, "{out}");
    let mut keys: Vec<&str> = rows[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "backend",
            "bytes",
            "dead_letters",
            "oldest_age_s",
            "pending",
            "route"
        ]
    );
    rows[0].clone()
}

fn counts(row: &serde_json::Value) -> (u64, u64) {
    (
        row["pending"].as_u64().unwrap(),
        row["dead_letters"].as_u64().unwrap(),
    )
}

/// Sends one message on a new connection: the ack's payload, or None when no ack came within
/// `wait` (the guard stayed silent).
pub(crate) fn send(addr: &str, payload: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    stream.write_all(&codec::encode(payload)).unwrap();
    let mut decoder = Decoder::new(1 << 20);
    let mut buf = bytes::BytesMut::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(Decoded::Frame(frame)) = decoder.decode(&mut buf) {
            return Some(frame.payload().to_vec());
        }
        match stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(e) => panic!("reading the ack: {e}"),
        }
    }
}

/// Sends until the guard acks positively (a JetStream guard may still be connecting to NATS);
/// returns that ack's payload.
pub(crate) fn queued(addr: &str, id: &str) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ack = send(addr, &message(id, 300), Duration::from_secs(5));
        if let Some(ack) = ack.filter(|a| ack_of(a).0.is_positive()) {
            assert_eq!(ack_of(&ack).1, id);
            return ack;
        }
        assert!(Instant::now() < deadline, "{id} was never acked positively");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A fake receiver on `addr` (on its own runtime, so the test's thread may block), and what it
/// received.
struct Receiver {
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    _upstream: FakeUpstream,
    _rt: tokio::runtime::Runtime,
}

impl Receiver {
    fn start(addr: SocketAddr, behaviour: Behaviour) -> Receiver {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let upstream = rt.block_on(FakeUpstream::start_at(addr, behaviour, received.clone()));
        Receiver {
            received,
            _upstream: upstream,
            _rt: rt,
        }
    }

    fn ids(&self) -> Vec<String> {
        let received = self.received.lock().unwrap();
        received.iter().map(|p| id_of(p)).collect()
    }

    fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

/// A config for `route` with a receiver behind it.
fn config_with_receiver(dir: &TestDir, behaviour: Behaviour, route: &str) -> (PathBuf, Receiver) {
    let upstream = free_addr();
    let receiver = Receiver::start(upstream, behaviour);
    (config(dir, upstream, route), receiver)
}

/// Waits (bounded) until `check` holds.
fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sigterm(guard: &mut Proc) {
    Command::new("kill")
        .args(["-TERM", &guard.0.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while guard.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the guard ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sigkill(guard: &mut Proc) {
    guard.0.kill().unwrap();
    guard.0.wait().unwrap();
}

// ---- queue list|show|replay|purge, guard running and stopped ------------------------------

fn queue_commands_tell_the_truth(backend: Backend) {
    let dir = TestDir::new();
    let upstream = free_addr();
    let config = config(
        &dir,
        upstream,
        &format!(
            "    retry: {{ initial: 50ms, max: 200ms }}\n{}",
            backend.yaml("")
        ),
    );
    // Before any guard ran the route, its queue (directory or stream) reads as empty.
    assert_eq!(counts(&listed(&config)), (0, 0));
    let (ok, out, err) = queue(&config, &["purge", "--yes"]);
    assert!(ok, "{err}");
    assert_eq!(out, "route lab: no pending messages\n");
    let (mut guard, addr, _logs) = start_guard(&config);

    // Running, receiver down: four messages wait.
    let sent = ["DEAD1", "Q1", "Q2", "Q3"];
    for id in sent {
        queued(&addr, id);
    }
    let row = listed(&config);
    assert_eq!(row["route"], "lab");
    assert_eq!(row["backend"], backend.name());
    assert_eq!(counts(&row), (4, 0), "{row}");
    assert!(row["bytes"].as_u64().unwrap() >= 4 * 300, "{row}");
    assert!(row["oldest_age_s"].is_u64(), "{row}");
    let (ok, shown, err) = queue(&config, &["show", "--route", "lab"]);
    assert!(ok, "{err}");
    assert!(shown.contains("route lab: pending: 4"), "{shown}");
    let order: Vec<usize> = sent.iter().map(|id| shown.find(id).unwrap()).collect();
    assert!(order.is_sorted(), "in queue order: {shown}");
    let (ok, text, err) = queue(&config, &["list"]);
    assert!(ok, "{err}");
    assert!(text.starts_with("route lab: 4 pending"), "{text}");
    let (ok, _, err) = queue(&config, &["list", "--route", "nope"]);
    assert!(!ok && err.contains("no route named nope"), "{err}");

    // The receiver comes back: DEAD1 is refused for good (AR: a dead letter), the rest delivered.
    let receiver = Receiver::start(upstream, Behaviour::CodeFor(AckCode::AR, "DEAD"));
    until("all four reached the receiver", || receiver.count() >= 4);
    let delivered_at = Instant::now();
    loop {
        let row = listed(&config);
        if counts(&row) == (0, 1) {
            break;
        }
        assert!(
            delivered_at.elapsed() < Duration::from_secs(1),
            "queue list still says {row} a second after the last delivery"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "{}: queue list showed the deliveries {} ms after the receiver had the last one",
        backend.name(),
        delivered_at.elapsed().as_millis()
    );
    assert_eq!(receiver.ids(), sent);

    match backend {
        Backend::Embedded => {
            // Replay and purge need the guard stopped, the dead letters too (which the guard
            // may write any moment), and say so before any prompt.
            for args in [
                &["replay"][..],
                &["purge", "--yes"],
                &["purge"],
                &["purge", "--dead-letters"],
            ] {
                let (ok, out, err) = queue(&config, args);
                assert!(
                    !ok && err.contains("the guard is running (pid ")
                        && err.contains("stop it first"),
                    "{args:?}: {err}"
                );
                assert!(
                    !out.contains("Type the route name"),
                    "{args:?}: prompted: {out}"
                );
            }
        }
        Backend::JetStream(_) => {
            // With guards running: the dead letter goes back, is refused again, and is purged.
            let (ok, out, err) = queue(&config, &["replay", "--route", "lab"]);
            assert!(ok, "{err}");
            assert_eq!(out, "route lab: 1 dead letters replayed into the queue\n");
            until("the replayed DEAD1 is delivered again", || {
                receiver.count() >= 5
            });
            until("DEAD1 is a dead letter again", || {
                counts(&listed(&config)) == (0, 1)
            });
            let (ok, out, err) = queue(&config, &["purge", "--dead-letters", "--yes"]);
            assert!(ok, "{err}");
            assert_eq!(out, "route lab: 1 dead letters purged\n");
            assert_eq!(counts(&listed(&config)), (0, 0));
            queued(&addr, "DEAD2");
            until("DEAD2 is a dead letter", || {
                counts(&listed(&config)) == (0, 1)
            });
        }
    }

    // Stopped by SIGKILL: what the drainer delivered stays delivered on disk too.
    sigkill(&mut guard);
    let row = listed(&config);
    assert_eq!(counts(&row), (0, 1), "after SIGKILL: {row}");
    assert!(row["oldest_age_s"].is_null(), "{row}");
    let (ok, shown, err) = queue(&config, &["show"]);
    assert!(ok, "{err}");
    assert!(shown.contains("route lab: dead letters: 1"), "{shown}");
    assert!(
        shown.contains("reason: upstream replied AR: answered by the test upstream"),
        "{shown}"
    );
    assert!(
        !shown.contains("TEST^PATIENT"),
        "no payload unasked: {shown}"
    );
    let (ok, shown, err) = queue(&config, &["show", "--payload"]);
    assert!(ok && shown.contains("TEST^PATIENT"), "{err}{shown}");
    let (ok, out, err) = queue(&config, &["replay"]);
    assert!(ok, "{err}");
    assert_eq!(out, "route lab: 1 dead letters replayed into the queue\n");
    assert_eq!(counts(&listed(&config)), (1, 0));
    let (ok, out, err) = queue(&config, &["purge", "--yes", "--route", "lab"]);
    assert!(ok, "{err}");
    assert_eq!(out, "route lab: 1 pending messages purged\n");
    assert_eq!(counts(&listed(&config)), (0, 0));
    let (ok, out, err) = queue(&config, &["purge", "--dead-letters", "--yes"]);
    assert!(ok, "{err}");
    assert_eq!(out, "route lab: no dead letters\n");
}

#[test]
fn embedded_queue_commands_tell_the_truth_with_the_guard_running_and_stopped() {
    queue_commands_tell_the_truth(Backend::Embedded);
}

#[test]
#[ignore = "needs nats-server: apt-get install nats-server"]
fn jetstream_queue_commands_tell_the_truth_with_the_guard_running_and_stopped() {
    let backend = Backend::jetstream();
    queue_commands_tell_the_truth(backend);
}

// ---- duplicate_window across restarts (embedded) --------------------------------------------

#[test]
fn a_resend_after_a_restart_or_a_sigkill_gets_the_same_ack_and_is_not_queued_again() {
    let dir = TestDir::new();
    let (config, receiver) = config_with_receiver(
        &dir,
        Behaviour::Ack,
        "    retry: { initial: 50ms, max: 200ms }\n    duplicate_window: 10m\n",
    );
    let (mut guard, addr, _logs) = start_guard(&config);
    let first = queued(&addr, "ONCE1");
    until("ONCE1 delivered", || receiver.count() == 1);

    sigterm(&mut guard);
    let (mut guard, addr, _logs) = start_guard(&config);
    let again = queued(&addr, "ONCE1");
    assert_eq!(again, first, "after a restart: the very same ack");

    sigkill(&mut guard);
    let (_guard, addr, _logs) = start_guard(&config);
    let third = queued(&addr, "ONCE1");
    assert_eq!(third, first, "after a SIGKILL: the very same ack");
    queued(&addr, "ONCE2");
    until("ONCE2 delivered", || receiver.count() >= 2);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        receiver.ids(),
        ["ONCE1", "ONCE2"],
        "the resends were not queued"
    );
    let journal = dir.path("state/lab/duplicates");
    assert!(journal.exists(), "the journal lives in the queue directory");
}

#[test]
fn a_remembered_message_is_forgotten_when_its_window_has_passed_across_a_restart() {
    let dir = TestDir::new();
    let (config, receiver) = config_with_receiver(
        &dir,
        Behaviour::Ack,
        "    retry: { initial: 50ms, max: 200ms }\n    duplicate_window: 1s\n",
    );
    let (mut guard, addr, _logs) = start_guard(&config);
    let at = Instant::now();
    queued(&addr, "LATE1");
    // Delivered, and its delivery settled to disk (else the SIGKILL redelivers it: a third copy).
    until("LATE1 delivered", || receiver.count() >= 1);
    std::thread::sleep(Duration::from_millis(600));
    sigkill(&mut guard);
    let (_guard, addr, _logs) = start_guard(&config);
    if let Some(left) = Duration::from_millis(1800).checked_sub(at.elapsed()) {
        std::thread::sleep(left);
    }
    queued(&addr, "LATE1");
    until("LATE1 delivered twice", || receiver.count() >= 2);
    assert_eq!(receiver.ids(), ["LATE1", "LATE1"]);
}

// ---- retry.max_attempts and retry.max_age, both backends ------------------------------------

fn a_message_always_answered_ae_is_given_up_after_max_attempts(backend: Backend) {
    let dir = TestDir::new();
    let (config, receiver) = config_with_receiver(
        &dir,
        Behaviour::CodeFor(AckCode::AE, "POISON"),
        &format!(
            "    retry: {{ initial: 50ms, max: 100ms, max_attempts: 3 }}\n{}",
            backend.yaml("")
        ),
    );
    let (_guard, addr, _logs) = start_guard(&config);
    queued(&addr, "POISON1");
    queued(&addr, "NEXT1");
    until("NEXT1 delivered", || {
        receiver.ids().contains(&"NEXT1".to_string())
    });
    assert_eq!(receiver.ids(), ["POISON1", "POISON1", "POISON1", "NEXT1"]);
    until("POISON1 is a dead letter", || {
        counts(&listed(&config)) == (0, 1)
    });
    let (ok, shown, err) = queue(&config, &["show"]);
    assert!(ok, "{err}");
    assert!(
        shown.contains("POISON1")
            && shown.contains("reason: gave up after 3 attempts (retry.max_attempts 3)")
            && shown.contains("last: upstream replied AE: answered by the test upstream"),
        "{shown}"
    );
}

#[test]
fn embedded_a_message_always_answered_ae_is_given_up_after_max_attempts() {
    a_message_always_answered_ae_is_given_up_after_max_attempts(Backend::Embedded);
}

#[test]
#[ignore = "needs nats-server: apt-get install nats-server"]
fn jetstream_a_message_always_answered_ae_is_given_up_after_max_attempts() {
    let backend = Backend::jetstream();
    a_message_always_answered_ae_is_given_up_after_max_attempts(backend);
}

fn a_message_older_than_max_age_is_given_up_and_the_next_one_delivered(backend: Backend) {
    let dir = TestDir::new();
    let upstream = free_addr();
    let config = config(
        &dir,
        upstream,
        &format!(
            "    retry: {{ initial: 50ms, max: 200ms, max_age: 1s }}\n{}",
            backend.yaml("")
        ),
    );
    let (_guard, addr, _logs) = start_guard(&config);
    // The receiver is down: AGED1 fails until it is a second old, then it is given up.
    queued(&addr, "AGED1");
    until("AGED1 is a dead letter", || {
        counts(&listed(&config)) == (0, 1)
    });
    let (ok, shown, err) = queue(&config, &["show"]);
    assert!(ok, "{err}");
    assert!(
        shown.contains("AGED1") && shown.contains("(retry.max_age 1s)") && shown.contains("last: "),
        "{shown}"
    );
    let receiver = Receiver::start(upstream, Behaviour::Ack);
    queued(&addr, "FRESH1");
    until("FRESH1 delivered", || receiver.count() > 0);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        receiver.ids(),
        ["FRESH1"],
        "the given-up message is not sent"
    );
}

#[test]
fn embedded_a_message_older_than_max_age_is_given_up_and_the_next_one_delivered() {
    a_message_older_than_max_age_is_given_up_and_the_next_one_delivered(Backend::Embedded);
}

#[test]
#[ignore = "needs nats-server: apt-get install nats-server"]
fn jetstream_a_message_older_than_max_age_is_given_up_and_the_next_one_delivered() {
    let backend = Backend::jetstream();
    a_message_older_than_max_age_is_given_up_and_the_next_one_delivered(backend);
}

// ---- ack_mode: ae-only and ar-only ------------------------------------------------------------

/// With the receiver down and room for one message: what a queued message, a message the queue
/// has no room for, a message without MSH-10 and a resend of the queued one get under `mode`.
fn answers_under(mode: &str) -> [Option<AckCode>; 4] {
    let dir = TestDir::new();
    let config = config(
        &dir,
        free_addr(),
        &format!(
            "    retry: {{ initial: 50ms, max: 200ms }}\n    ack_mode: {mode}\n    queue:\n      max_messages: 1\n"
        ),
    );
    let (_guard, addr, _logs) = start_guard(&config);
    let wait = Duration::from_millis(1500);
    let code = |ack: Option<Vec<u8>>| ack.map(|a| ack_of(&a).0);
    let answers = [
        code(send(&addr, &message("MODE1", 300), wait)),
        code(send(&addr, &message("MODE2", 300), wait)),
        code(send(&addr, &message("", 300), wait)),
        code(send(&addr, &message("MODE1", 300), wait)),
    ];
    assert_eq!(
        counts(&listed(&config)),
        (1, 0),
        "MODE1 alone was queued, once"
    );
    answers
}

#[test]
fn ae_only_sends_only_the_acks_that_say_not_queued_now() {
    assert_eq!(
        answers_under("ae-only"),
        [None, Some(AckCode::AE), None, None]
    );
}

#[test]
fn ar_only_sends_only_the_acks_that_refuse_for_good() {
    assert_eq!(
        answers_under("ar-only"),
        [None, None, Some(AckCode::AR), None]
    );
}

// ---- operator errors --------------------------------------------------------------------------

#[test]
fn a_queue_command_without_its_nats_fails_with_a_clear_error_and_no_panic() {
    let dir = TestDir::new();
    let nowhere = free_addr();
    let queue_yaml = format!(
        "    queue:\n      backend: jetstream\n      jetstream:\n        servers: [\"nats://{nowhere}\"]\n        stream: MLLP_LAB\n"
    );
    let config = config(
        &dir,
        free_addr(),
        &format!("    retry: {{ initial: 50ms, max: 200ms }}\n{queue_yaml}"),
    );
    for args in [
        &["list", "--json"][..],
        &["show"],
        &["replay"],
        &["purge", "--yes"],
    ] {
        let started = Instant::now();
        let (ok, out, err) = queue(&config, args);
        assert!(!ok, "{args:?} succeeded: {out}");
        assert!(
            err.starts_with("error: ") && err.contains("NATS") && !err.contains("panicked"),
            "{args:?}: {err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{args:?} took {:?}",
            started.elapsed()
        );
    }
}
