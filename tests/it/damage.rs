//! Custody when the disk lies, through the binary: bytes flipped inside an acknowledged record
//! (found by its content) after a SIGKILL lose that record only, and say so; a route whose queue
//! cannot be opened is down while the other routes serve; a renamed route's queue is named and
//! can be moved to the new name.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::admin::get;
use crate::cli::{start_guard_logged, start_saving_sink};
use crate::custody::{control_ids, custody_yaml, free_addr, saved_count};
use crate::harness::*;
use crate::queue_cli::{queued, send};

/// The segment file holding `needle`, and where.
fn find_in_segments(queue: &Path, needle: &[u8]) -> (std::path::PathBuf, usize) {
    for entry in std::fs::read_dir(queue).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "seg") {
            let bytes = std::fs::read(&path).unwrap();
            if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
                return (path, at);
            }
        }
    }
    panic!("{} not found in the queue", String::from_utf8_lossy(needle));
}

/// Queues `ids` through a guard of `config` listening on `listen` (its receiver down), kills it
/// with SIGKILL (no clean close, no cursor write), and flips a few bytes inside the record of
/// `victim`, past its MSH segment (so its MSH-10 stays readable). Returns route lab's queue
/// directory under `state`.
pub(crate) fn queue_kill_and_flip(
    config: &Path,
    listen: std::net::SocketAddr,
    ids: &[String],
    victim: &str,
    state: &Path,
) -> std::path::PathBuf {
    {
        let (mut guard, _, _logs) = crate::cli::start_guard(config);
        for id in ids {
            queued(&listen.to_string(), id);
        }
        guard.0.kill().unwrap();
        guard.0.wait().unwrap();
    }
    let queue = state.join("lab");
    let (segment, at) = find_in_segments(&queue, format!("|{victim}|").as_bytes());
    let mut bytes = std::fs::read(&segment).unwrap();
    for b in &mut bytes[at + 150..at + 154] {
        *b ^= 0x5A;
    }
    std::fs::write(&segment, bytes).unwrap();
    queue
}

/// Starts a saving receiver on `receiver` and waits (bounded) until it holds as many messages
/// as `expected`; returns it and what it holds, in order of arrival.
pub(crate) fn receive(
    receiver: std::net::SocketAddr,
    saved: &Path,
    expected: &[String],
) -> (Proc, Vec<String>) {
    let (sink, _) = crate::cli::start_sink(&[
        "--listen",
        &receiver.to_string(),
        "--save-dir",
        saved.to_str().unwrap(),
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while saved_count(saved) < expected.len() {
        assert!(
            Instant::now() < deadline,
            "delivered: {:?}",
            control_ids(saved)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    (sink, control_ids(saved))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_flipped_in_an_acked_record_lose_that_record_only_and_say_so() {
    let dir = TestDir::new();
    let receiver = free_addr(); // nothing listens there yet: the receiver is down
    let listen = free_addr();
    let admin = free_addr();
    let config = dir.path("custody.yaml");
    std::fs::write(
        &config,
        format!(
            "admin:\n  listen: {admin}\n{}",
            custody_yaml(&dir, receiver, &listen.to_string(), "")
        ),
    )
    .unwrap();
    let ids: Vec<String> = (1..=20).map(|i| format!("DMG-{i:02}")).collect();
    let queue = queue_kill_and_flip(&config, listen, &ids, "DMG-07", &dir.path("state"));

    let (_guard, _, logs, early) = start_guard_logged(&config);
    let expected: Vec<String> = ids.iter().filter(|id| *id != "DMG-07").cloned().collect();
    let (_sink, delivered) = receive(receiver, &dir.path("saved"), &expected);
    assert_eq!(delivered, expected, "every intact record, in order, once");

    let mut reported = Vec::new();
    let later = std::iter::from_fn(|| logs.recv_timeout(Duration::from_millis(500)).ok());
    for line in early.into_iter().chain(later) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(
            !v["message"]
                .as_str()
                .unwrap_or("")
                .contains("never acknowledged")
                && !v["message"].as_str().unwrap_or("").contains("never acked"),
            "a damaged acked record called a torn write: {line}"
        );
        if v["level"] == "ERROR"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.contains("damaged queue bytes were set aside"))
        {
            reported.push(v);
        }
    }
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert_eq!(reported[0]["lost"], 1);
    assert_eq!(reported[0]["control_ids"], "DMG-07");
    let moved = reported[0]["moved_to"].as_str().unwrap();
    assert!(
        moved.starts_with(queue.join("damaged").to_str().unwrap()),
        "{moved}"
    );
    let note = std::fs::read_to_string(Path::new(moved).with_extension("txt")).unwrap();
    assert!(
        note.contains("DMG-07") && note.contains("acknowledged messages lost: 1"),
        "{note}"
    );

    let (_, metrics) = get(admin, "/metrics").await.unwrap();
    assert!(
        metrics.contains("mllp_guard_queue_damaged_records_total{route=\"lab\"} 1"),
        "{metrics}"
    );
}

/// Damage found while running: the record is set aside when it comes to the front, and
/// delivery goes on with the next (no endless "cannot read the queue").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_damaged_while_the_guard_runs_is_set_aside_and_delivery_goes_on() {
    use std::os::unix::fs::FileExt;
    let dir = TestDir::new();
    let receiver = free_addr();
    let listen = free_addr();
    let config = dir.path("custody.yaml");
    std::fs::write(
        &config,
        custody_yaml(&dir, receiver, &listen.to_string(), ""),
    )
    .unwrap();
    let (_guard, _, logs) = crate::cli::start_guard(&config);
    let ids: Vec<String> = (1..=10).map(|i| format!("RUN-{i:02}")).collect();
    for id in &ids {
        queued(&listen.to_string(), id);
    }
    let (segment, at) = find_in_segments(&dir.path("state").join("lab"), b"|RUN-05|");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    file.write_all_at(b"\xFF\xFF\xFF\xFF", (at + 150) as u64)
        .unwrap();
    drop(file);
    let expected: Vec<String> = ids.iter().filter(|id| *id != "RUN-05").cloned().collect();
    let (_sink, delivered) = receive(receiver, &dir.path("saved"), &expected);
    assert_eq!(delivered, expected);
    let mut reported = 0;
    while let Ok(line) = logs.recv_timeout(Duration::from_millis(500)) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["message"]
            .as_str()
            .is_some_and(|m| m.contains("damaged queue bytes were set aside"))
        {
            assert_eq!(
                (v["lost"].as_u64(), v["control_ids"].as_str()),
                (Some(1), Some("RUN-05"))
            );
            reported += 1;
        }
    }
    assert_eq!(reported, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_whose_queue_cannot_be_opened_is_down_while_the_others_serve() {
    let dir = TestDir::new();
    let saved = dir.path("saved");
    let (_sink, sink_addr) = start_saving_sink(&saved);
    let (broken_listen, admin) = (free_addr(), free_addr());
    let state = dir.path("state");
    std::fs::create_dir_all(&state).unwrap();
    // Where the route's queue directory should be, a file: it cannot be opened.
    std::fs::write(state.join("broken"), b"not a directory").unwrap();
    let config = dir.path("guard.yaml");
    std::fs::write(
        &config,
        format!(
            "state_dir: {}\nadmin:\n  listen: {admin}\nroutes:\n  - name: broken\n    listen: {broken_listen}\n    allow: [127.0.0.1/32]\n    delivery: store-and-forward\n    upstream:\n      address: {sink_addr}\n  - name: fine\n    listen: 127.0.0.1:0\n    allow: [127.0.0.1/32]\n    upstream:\n      address: {sink_addr}\n      ack_timeout: 2s\n",
            state.display()
        ),
    )
    .unwrap();
    let (_guard, listen, logs, early) = start_guard_logged(&config);
    let mut client = Client::plain(listen.parse().unwrap()).await;
    client
        .send_raw(&mllp_guard::wire::codec::encode(&message("FINE-1", 200)))
        .await;
    let ack = client.read_ack().await.expect("the healthy route serves");
    assert_eq!(ack_of(&ack).0, mllp_guard::wire::hl7::AckCode::AA);
    assert!(
        std::net::TcpStream::connect(broken_listen).is_err(),
        "the broken route does not listen"
    );
    let (status, body) = get(admin, "/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("route broken is down"), "{body}");
    let (_, metrics) = get(admin, "/metrics").await.unwrap();
    assert!(
        metrics.contains("mllp_guard_route_up{route=\"broken\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mllp_guard_route_up{route=\"fine\"} 1"),
        "{metrics}"
    );
    let mut said = false;
    let later = std::iter::from_fn(|| logs.recv_timeout(Duration::from_millis(300)).ok());
    for line in early.into_iter().chain(later) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        said |= v["level"] == "ERROR"
            && v["route"] == "broken"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.contains("route is down"));
    }
    assert!(said, "an ERROR line names the route that is down");
}

/// `mllp-guard queue ...` through the binary: (success, stdout, stderr).
/// What `check --config cfg` says on stderr (it must succeed).
pub(crate) fn checked_warnings(cfg: &str) -> String {
    let check = std::process::Command::new(BIN)
        .args(["check", "--config", cfg])
        .output()
        .unwrap();
    let warned = String::from_utf8_lossy(&check.stderr).into_owned();
    assert!(check.status.success(), "{warned}");
    warned
}

/// The rows of `queue list --json` marked `"stranded": true` (the command must succeed).
pub(crate) fn stranded_rows(cfg: &str) -> Vec<serde_json::Value> {
    let (ok, out, err) = queue_cmd(&["list", "--json", "--config", cfg]);
    assert!(ok, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["stranded"] == true)
        .cloned()
        .collect()
}

pub(crate) fn queue_cmd(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(BIN)
        .arg("queue")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Issue 27, finding 7: a renamed route strands its queue; `check`, `run` and `queue list` say
/// so, and `queue move` (guard stopped) hands it to the new name, whose guard delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_routes_queue_is_named_and_can_be_moved_to_the_new_name() {
    let dir = TestDir::new();
    let (receiver, listen) = (free_addr(), free_addr());
    let config = dir.path("custody.yaml");
    let yaml = custody_yaml(&dir, receiver, &listen.to_string(), "");
    std::fs::write(&config, &yaml).unwrap();
    let ids: Vec<String> = (1..=5).map(|i| format!("OLD-{i}")).collect();
    {
        let (mut guard, _, _logs) = crate::cli::start_guard(&config);
        for id in &ids {
            queued(&listen.to_string(), id);
        }
        guard.0.kill().unwrap();
        guard.0.wait().unwrap();
    }
    // The route is renamed: its queue now belongs to no route.
    std::fs::write(&config, yaml.replace("name: lab\n", "name: lab2\n")).unwrap();
    let cfg = config.to_str().unwrap();
    let warned = checked_warnings(cfg);
    assert!(
        warned.contains("state_dir holds the queue of no configured route")
            && warned.contains("(5 pending)"),
        "{warned}"
    );
    let (ok, out, err) = queue_cmd(&["list", "--config", cfg]);
    assert!(ok, "{err}");
    assert!(
        out.contains("queue lab (no configured route owns it): 5 pending"),
        "{out}"
    );
    let stranded = stranded_rows(cfg);
    assert_eq!(stranded.len(), 1, "{stranded:?}");
    assert_eq!(
        (&stranded[0]["route"], &stranded[0]["pending"]),
        (&"lab".into(), &5.into())
    );

    // `run` warns too; with it running, the move is refused (it holds lab2's queue).
    let (mut guard, _, _logs, early) = start_guard_logged(&config);
    assert!(
        early
            .iter()
            .any(|l| l.contains("state_dir holds the queue of no configured route")),
        "{early:?}"
    );
    let (ok, _, err) = queue_cmd(&["move", "--config", cfg, "--from", "lab", "--to", "lab2"]);
    assert!(!ok && err.contains("the guard is running"), "{err}");
    guard.0.kill().unwrap();
    guard.0.wait().unwrap();
    let (ok, out, err) = queue_cmd(&["move", "--config", cfg, "--from", "lab", "--to", "lab2"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("queue lab (5 pending) now belongs to route lab2"),
        "{out}"
    );
    // The new route's guard delivers the five, in order.
    let (_guard, _, _logs) = crate::cli::start_guard(&config);
    let (_sink, delivered) = receive(receiver, &dir.path("saved"), &ids);
    assert_eq!(delivered, ids);
}

/// Issue 27, finding 6: dead letters have their own limits. A receiver that rejects everything
/// fills them; then the rejected message stays first and is not sent again, new messages get
/// AE, and `/readyz` and the metric say why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_dead_letters_hold_the_rejected_message_without_resending_it() {
    let dir = TestDir::new();
    let saved = dir.path("saved");
    let (_sink, receiver) = crate::cli::start_sink(&[
        "--listen",
        "127.0.0.1:0",
        "--ack",
        "AR",
        "--save-dir",
        saved.to_str().unwrap(),
    ]);
    let (listen, admin) = (free_addr(), free_addr());
    let config = dir.path("custody.yaml");
    std::fs::write(
        &config,
        format!(
            "admin:\n  listen: {admin}\n{}",
            custody_yaml(
                &dir,
                receiver.parse().unwrap(),
                &listen.to_string(),
                "    queue: { dead_letters: { max_messages: 2 } }\n"
            )
        ),
    )
    .unwrap();
    let (_guard, _, logs) = crate::cli::start_guard(&config);
    for id in ["REJ-1", "REJ-2", "REJ-3"] {
        queued(&listen.to_string(), id);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while saved_count(&saved) < 3 {
        assert!(
            Instant::now() < deadline,
            "the receiver got {}",
            saved_count(&saved)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Two dead letters fill the store; REJ-3 stays first and is not sent again.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        control_ids(&saved),
        ["REJ-1", "REJ-2", "REJ-3"],
        "no resend while it waits"
    );
    let ack = send(
        &listen.to_string(),
        &message("NEW-1", 300),
        Duration::from_secs(10),
    )
    .expect("an ack");
    let (code, got, _) = ack_of(&ack);
    assert_eq!(
        (code, got.as_str()),
        (mllp_guard::wire::hl7::AckCode::AE, "NEW-1")
    );
    let (status, body) = get(admin, "/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("dead letters are full"), "{body}");
    let (_, metrics) = get(admin, "/metrics").await.unwrap();
    assert!(
        metrics.contains("mllp_guard_queue_dead_letters_full{route=\"lab\"} 1"),
        "{metrics}"
    );
    let mut moved = 0;
    while let Ok(line) = logs.recv_timeout(Duration::from_millis(300)) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["message"] == "queued message moved to the dead letters" {
            moved += 1;
        }
    }
    assert_eq!(
        moved, 2,
        "the line is written only for a dead letter that was stored"
    );
}
