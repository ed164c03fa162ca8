//! JetStream dead letters in a stream of their own (issue 27, finding 6), through the binary
//! against a real nats-server: a receiver that answers AR to everything fills the dead letters
//! (`queue.dead_letters`), not the route's queue; then the rejected message stays first with the
//! retry backoff and is not sent again, new messages get AE, `/readyz` and the metric say why,
//! until `queue purge --dead-letters` or the console's replay makes room. And a stream of the
//! older layout (one stream for the queue and the dead letters) is brought up to the new one at
//! start, its dead letters moved, none lost or doubled.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use mllp_guard::wire::hl7::AckCode;

use crate::admin::{get, sample, wait_for};
use crate::custody::{control_ids, free_addr, saved_count};
use crate::damage::queue_cmd;
use crate::harness::*;
use crate::nats::{self, Nats};
use crate::queue_cli::{queued, send};

const TOKEN: &str = "dead-stream-test-token";

/// Retries of the tests: fast, so a tight loop and a backoff differ within seconds.
const FAST: &str = "{ initial: 50ms, max: 400ms }";

/// A guard whose route `lab` keeps custody on `nats` (stream `stream`, at most `dead` dead
/// letters, `retry` as given) in front of `receiver`, with an admin endpoint (token `TOKEN`).
fn config(
    dir: &TestDir,
    nats: &Nats,
    (stream, dead, retry): (&str, u64, &str),
    receiver: &str,
) -> (PathBuf, String, SocketAddr) {
    let (listen, admin) = (free_addr(), free_addr());
    std::fs::write(dir.path("token"), format!("{TOKEN}\n")).unwrap();
    let config = dir.path("guard.yaml");
    std::fs::write(
        &config,
        format!(
            "state_dir: {}\nshutdown_grace: 5s\nadmin:\n  listen: {admin}\n  token_file: token\nroutes:\n  - name: lab\n    listen: {listen}\n    allow: [127.0.0.1/32]\n    delivery: store-and-forward\n    retry: {retry}\n{}      dead_letters: {{ max_messages: {dead} }}\n    upstream:\n      address: {receiver}\n      ack_timeout: 2s\n      connect_timeout: 1s\n",
            dir.path("state").display(),
            nats.queue_yaml(stream, 1, "2s"),
        ),
    )
    .unwrap();
    (config, listen.to_string(), admin)
}

/// A receiver (`mllp-guard sink`) answering `ack` to everything, saving what it gets.
pub(crate) fn receiver(listen: &str, ack: &str, saved: &std::path::Path) -> (Proc, String) {
    crate::cli::start_sink(&[
        "--listen",
        listen,
        "--ack",
        ack,
        "--save-dir",
        saved.to_str().unwrap(),
    ])
}

/// A running guard whose dead letters are full.
struct Filled {
    dir: TestDir,
    _nats: Nats,
    config: PathBuf,
    listen: String,
    admin: SocketAddr,
    receiver: String,
    sink: Proc,
    guard: Proc,
    logs: Receiver<String>,
}

/// REJ-1..3 queued in front of a receiver that answers AR: REJ-1 and REJ-2 fill the dead
/// letters (at most two), REJ-3 cannot be dead-lettered. Returns once `/readyz` says so.
async fn fill(stream: &str, retry: &str) -> Filled {
    nats::require();
    let nats = Nats::single();
    let dir = TestDir::new();
    let (sink, receiver) = receiver("127.0.0.1:0", "AR", &dir.path("saved"));
    let (config, listen, admin) = config(&dir, &nats, (stream, 2, retry), &receiver);
    let (guard, _, logs) = crate::cli::start_guard(&config);
    for id in ["REJ-1", "REJ-2", "REJ-3"] {
        queued(&listen, id);
    }
    let body = wait_for(admin, "/readyz", 503).await;
    assert!(body.contains("dead letters are full"), "{body}");
    Filled {
        dir,
        _nats: nats,
        config,
        listen,
        admin,
        receiver,
        sink,
        guard,
        logs,
    }
}

/// `mllp_guard_queue_dead_letters_full` of the route.
async fn full_metric(admin: SocketAddr) -> Option<f64> {
    let (_, metrics) = get(admin, "/metrics").await.unwrap();
    sample(
        &metrics,
        "mllp_guard_queue_dead_letters_full{route=\"lab\"}",
    )
}

/// Log lines (JSON) that arrive within `window`.
fn lines_within(logs: &Receiver<String>, window: Duration) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + window;
    let mut out = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if let Ok(line) = logs.recv_timeout(left.min(Duration::from_millis(200))) {
            out.push(serde_json::from_str(&line).unwrap());
        }
    }
    out
}

/// `queue list --json` of the route: (pending, dead letters).
fn depth(config: &std::path::Path) -> (u64, u64) {
    let (ok, out, err) = queue_cmd(&["list", "--json", "--config", config.to_str().unwrap()]);
    assert!(ok, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let row = &rows[0];
    assert_eq!(row["route"], "lab", "{out}");
    (
        row["pending"].as_u64().unwrap(),
        row["dead_letters"].as_u64().unwrap(),
    )
}

/// Polls `what` until it holds (bounded).
fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server: apt-get install nats-server"]
async fn jetstream_full_dead_letters_hold_the_rejected_message_with_backoff_until_purged() {
    let mut f = fill("MLLP_FULL", FAST).await;
    let saved = f.dir.path("saved");
    // Over three more seconds the held REJ-3 is not sent again; its dead-lettering is retried
    // with the backoff (50 ms doubling to 400 ms, jittered), not in a tight loop.
    let window = lines_within(&f.logs, Duration::from_secs(3));
    assert_eq!(
        control_ids(&saved),
        ["REJ-1", "REJ-2", "REJ-3"],
        "no resend"
    );
    let full_errors = |lines: &[serde_json::Value]| {
        lines
            .iter()
            .filter(|v| {
                v["level"] == "ERROR"
                    && v["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("the dead letters are full"))
            })
            .count()
    };
    let tries = full_errors(&window);
    assert!(
        (1..=25).contains(&tries),
        "{tries} tries to dead-letter REJ-3 in about 3.5 s: bounded by the backoff"
    );
    eprintln!("tries to dead-letter the held message while full, in about 3.5 s: {tries}");
    // New messages get AE, worded as on the embedded queue.
    let ack = send(&f.listen, &message("NEW-1", 300), Duration::from_secs(10)).expect("an ack");
    let (code, id, text) = ack_of(&ack);
    assert_eq!((code, id.as_str()), (AckCode::AE, "NEW-1"));
    assert!(text.contains("dead letters full"), "{text}");
    let (status, body) = get(f.admin, "/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(full_metric(f.admin).await, Some(1.0));
    // They are in their own stream: the queue holds only REJ-3.
    let (ok, listed, err) = queue_cmd(&["list", "--config", f.config.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        listed.starts_with("route lab: 1 pending") && listed.contains(" 2 dead letters ("),
        "{listed}"
    );
    assert!(listed.contains(" in MLLP_FULL_DEAD)"), "{listed}");
    // "moved to the dead letters" only for the two that were stored (the window holds every
    // line since the guard started).
    let moved = window
        .iter()
        .filter(|v| v["message"] == "queued message moved to the dead letters")
        .count();
    assert_eq!(moved, 2, "written only for a dead letter that was stored");

    // The guard stopped, the dead letters purged: the next guard has room again.
    f.guard.0.kill().unwrap();
    f.guard.0.wait().unwrap();
    let cfg = f.config.to_str().unwrap();
    let (ok, out, err) = queue_cmd(&["purge", "--dead-letters", "--yes", "--config", cfg]);
    assert!(ok, "{err}");
    assert_eq!(out, "route lab: 2 dead letters purged\n");
    let (_guard, _, logs) = crate::cli::start_guard(&f.config);
    wait_for(f.admin, "/readyz", 200).await;
    queued(&f.listen, "NEW-2");
    // REJ-3 (sent once more by the new guard) and NEW-2 are refused and dead-lettered.
    until("REJ-3 and NEW-2 dead-lettered", || {
        depth(&f.config) == (0, 2)
    });
    let moved = lines_within(&logs, Duration::from_millis(500))
        .iter()
        .filter(|v| v["message"] == "queued message moved to the dead letters")
        .count();
    assert_eq!(moved, 2);
    assert_eq!(
        control_ids(&saved),
        ["REJ-1", "REJ-2", "REJ-3", "REJ-3", "NEW-2"]
    );
    assert_eq!(full_metric(f.admin).await, Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server: apt-get install nats-server"]
async fn jetstream_full_dead_letters_clear_when_the_console_replays_them() {
    let mut f = fill("MLLP_REPLAY", FAST).await;
    // The receiver takes messages again (a new one on the same address).
    f.sink.0.kill().unwrap();
    f.sink.0.wait().unwrap();
    let accepted = f.dir.path("accepted");
    let (_sink, _) = receiver(&f.receiver, "AA", &accepted);
    let path = "/api/v1/routes/lab/dead-letters/replay";
    let bearer = format!("Bearer {TOKEN}");
    let (status, body) =
        crate::console::http(f.admin, "POST", path, &[("Authorization", &bearer)], b"").await;
    assert_eq!(status, 200, "{body}");
    let replayed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(replayed["replayed"], 2, "{body}");
    assert_eq!(full_metric(f.admin).await, Some(0.0));
    wait_for(f.admin, "/readyz", 200).await;
    queued(&f.listen, "NEW-2");
    // REJ-3 was refused before: at its next try it is dead-lettered (there is room now), not
    // sent again; the replayed two and the new one are delivered, in order.
    until("the replayed letters and NEW-2 delivered", || {
        saved_count(&accepted) >= 3
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(control_ids(&accepted), ["REJ-1", "REJ-2", "NEW-2"]);
    until("REJ-3 dead-lettered", || depth(&f.config) == (0, 1));
    let moved: Vec<serde_json::Value> = lines_within(&f.logs, Duration::from_millis(500))
        .into_iter()
        .filter(|v| v["message"] == "queued message moved to the dead letters")
        .collect();
    // Two at the start (REJ-1, REJ-2), then REJ-3 once there was room.
    assert_eq!(moved.len(), 3, "{moved:?}");
    assert_eq!(moved[2]["control_id"], "REJ-3");
}

/// `queue replay` while the guard runs (JetStream allows it) empties the dead letters; the guard
/// notices at its next depth read (every 5 s), long before the held message's next try (the
/// retry backoff here starts at 60 s), and takes new messages again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server: apt-get install nats-server"]
async fn jetstream_full_dead_letters_clear_when_they_are_replayed_from_the_command_line() {
    let f = fill("MLLP_CLI", "{ initial: 60s, max: 120s }").await;
    let cfg = f.config.to_str().unwrap();
    let (ok, out, err) = queue_cmd(&["replay", "--config", cfg]);
    assert!(ok, "{err}");
    assert_eq!(out, "route lab: 2 dead letters replayed into the queue\n");
    let started = Instant::now();
    wait_for(f.admin, "/readyz", 200).await;
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(full_metric(f.admin).await, Some(0.0));
    queued(&f.listen, "NEW-2");
    // REJ-3 still waits for its next try; the replayed two and NEW-2 queue behind it.
    assert_eq!(depth(&f.config), (4, 0));
    let logs: Vec<serde_json::Value> = lines_within(&f.logs, Duration::from_millis(300));
    assert!(
        logs.iter().any(|v| v["message"]
            == "the dead letters take messages again; new messages are queued again"),
        "an INFO line says so"
    );
}

/// A route stream as the older layout made it: one stream taking `<S>.queue` and `<S>.dead`,
/// with `pending` messages queued and `dead` dead letters.
async fn old_layout(
    nats: &Nats,
    name: &str,
    pending: &[&str],
    dead: &[&str],
) -> jetstream::Context {
    let js = nats.js().await;
    js.create_stream(stream::Config {
        name: name.into(),
        subjects: vec![format!("{name}.queue"), format!("{name}.dead")],
        retention: stream::RetentionPolicy::WorkQueue,
        discard: stream::DiscardPolicy::New,
        storage: stream::StorageType::File,
        max_messages: 1000,
        duplicate_window: Duration::from_secs(600),
        ..Default::default()
    })
    .await
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    for (subject, ids) in [("queue", pending), ("dead", dead)] {
        for id in ids {
            let mut headers = HeaderMap::new();
            headers.insert("Mllp-Enqueued-Ms", now.as_str());
            if subject == "dead" {
                headers.insert("Mllp-Reason", "upstream replied AR: before the move");
            }
            js.publish_with_headers(
                format!("{name}.{subject}"),
                headers,
                message(id, 300).into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
    }
    js
}

/// The subjects of a stream, and how many messages it holds.
async fn stream_state(js: &jetstream::Context, name: &str) -> (Vec<String>, u64) {
    let mut stream = js.get_stream(name).await.unwrap();
    let info = stream.info().await.unwrap();
    (info.config.subjects.clone(), info.state.messages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server: apt-get install nats-server"]
async fn jetstream_a_stream_of_the_older_layout_has_its_dead_letters_moved_at_start() {
    nats::require();
    let nats = Nats::single();
    let dir = TestDir::new();
    let js = old_layout(&nats, "MLLP_OLDL", &["P-1", "P-2"], &["D-1", "D-2", "D-3"]).await;
    let accepted = dir.path("accepted");
    let (_sink, addr) = receiver("127.0.0.1:0", "AA", &accepted);
    let (config, _, _) = config(&dir, &nats, ("MLLP_OLDL", 10, FAST), &addr);
    // Read before any new guard ran: the dead letters of the older layout are counted.
    assert_eq!(depth(&config), (2, 3));

    let (_guard, _, logs) = crate::cli::start_guard(&config);
    until("P-1 and P-2 delivered", || saved_count(&accepted) >= 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    let moved = loop {
        assert!(Instant::now() < deadline, "no line about the move");
        let Ok(line) = logs.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["message"] == "dead letters moved from the route's stream to its dead-letter stream" {
            break v;
        }
    };
    assert_eq!(moved["moved"], 3, "{moved}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        control_ids(&accepted),
        ["P-1", "P-2"],
        "pending delivered in order"
    );
    let (subjects, held) = stream_state(&js, "MLLP_OLDL").await;
    assert_eq!((subjects, held), (vec!["MLLP_OLDL.queue".to_string()], 0));
    let (subjects, held) = stream_state(&js, "MLLP_OLDL_DEAD").await;
    assert_eq!((subjects, held), (vec!["MLLP_OLDL.dead".to_string()], 3));
    let cfg = config.to_str().unwrap();
    let (ok, shown, err) = queue_cmd(&["show", "--config", cfg]);
    assert!(ok, "{err}");
    assert!(shown.contains("route lab: dead letters: 3\n"), "{shown}");
    let order: Vec<&str> = ["D-1", "D-2", "D-3"]
        .into_iter()
        .filter(|id| shown.contains(&format!("\t{id}\t")))
        .collect();
    assert_eq!(order, ["D-1", "D-2", "D-3"], "{shown}");
    assert!(
        shown.contains("reason: upstream replied AR: before the move"),
        "{shown}"
    );
    // They replay from their new stream like any dead letter.
    let (ok, out, err) = queue_cmd(&["replay", "--config", cfg]);
    assert!(ok, "{err}");
    assert_eq!(out, "route lab: 3 dead letters replayed into the queue\n");
    until("the replayed letters delivered", || {
        saved_count(&accepted) >= 5
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(control_ids(&accepted), ["P-1", "P-2", "D-1", "D-2", "D-3"]);
}

/// A move interrupted after the subjects changed and one letter was copied but not deleted
/// (a crash in between) finishes at the next start: each letter once in the new stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server: apt-get install nats-server"]
async fn jetstream_an_interrupted_move_of_old_dead_letters_finishes_without_doubling_one() {
    nats::require();
    let nats = Nats::single();
    let dir = TestDir::new();
    let name = "MLLP_HALF";
    let js = old_layout(&nats, name, &[], &["D-1", "D-2", "D-3"]).await;
    // Step 1 done: the route's stream no longer takes `.dead`.
    let mut route = js.get_stream(name).await.unwrap();
    let mut updated = route.info().await.unwrap().config.clone();
    updated.subjects = vec![format!("{name}.queue")];
    js.update_stream(&updated).await.unwrap();
    // Step 2 done, step 3 half done: D-1 (sequence 1) copied, not yet deleted.
    js.create_stream(stream::Config {
        name: format!("{name}_DEAD"),
        subjects: vec![format!("{name}.dead")],
        discard: stream::DiscardPolicy::New,
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(600),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("mllp-guard-moved|{name}|1").as_str());
    headers.insert("Mllp-Reason", "upstream replied AR: before the move");
    js.publish_with_headers(format!("{name}.dead"), headers, message("D-1", 300).into())
        .await
        .unwrap()
        .await
        .unwrap();

    let (_sink, addr) = receiver("127.0.0.1:0", "AA", &dir.path("accepted"));
    let (config, _, _) = config(&dir, &nats, (name, 10, FAST), &addr);
    let (_guard, _, _logs) = crate::cli::start_guard(&config);
    until("the move finished", || depth(&config) == (0, 3));
    let (_, held) = stream_state(&js, name).await;
    assert_eq!(held, 0, "nothing left under .dead in the route's stream");
    let (_, held) = stream_state(&js, &format!("{name}_DEAD")).await;
    assert_eq!(held, 3, "D-1 is not there twice");
    // The limits follow queue.dead_letters (made by hand without them).
    let mut dead = js.get_stream(format!("{name}_DEAD")).await.unwrap();
    assert_eq!(dead.info().await.unwrap().config.max_messages, 10);
}
