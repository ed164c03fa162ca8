//! `audit: { file }` through the binary: the audit trail leaves stderr for a JSON-lines file that
//! takes every line whatever stderr's level, and a logrotate-style rotation (rename, SIGHUP)
//! under load loses, repeats and reorders none of them (issue 22); nor do reloads under load that
//! take the file away and give it back.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use mllp_guard::wire::hl7::AckCode;

use crate::cli::{spawn_guard_filtered, start_sink};
use crate::harness::*;

/// Control ids of the audit lines in `file`, in file order.
fn audited(file: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return Vec::new();
    };
    text.lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|_| panic!("not a JSON line: {l}"));
            assert_eq!(v["target"], "mllp_guard::audit", "{l}");
            assert_eq!(v["message"], "message", "{l}");
            v["control_id"].as_str().unwrap().to_string()
        })
        .collect()
}

/// A sink, and a guard in front of it whose config (`config`) sends the audit trail to
/// `audit`, logging JSON to stderr at `level`; `without_file` is the same config without the
/// `audit:` block.
struct Started {
    dir: TestDir,
    _sink: Proc,
    listen: std::net::SocketAddr,
    audit: std::path::PathBuf,
    config: std::path::PathBuf,
    without_file: String,
}

fn start(level: &str) -> (Started, Proc, std::sync::mpsc::Receiver<String>) {
    let dir = TestDir::new();
    let (_sink, upstream) = start_sink(&["--listen", "127.0.0.1:0"]);
    let listen = crate::admin::free_port();
    let without_file = route_yaml(upstream.parse().unwrap(), "", "", "")
        .replace("127.0.0.1:0", &listen.to_string());
    let (audit, config) = (dir.path("audit.jsonl"), dir.path("guard.yaml"));
    let with_file = format!("{without_file}audit: {{ file: {} }}\n", audit.display());
    std::fs::write(&config, with_file).unwrap();
    let (guard, logs) = spawn_guard_filtered(&config, level);
    wait_listening(listen);
    let started = Started {
        dir,
        _sink,
        listen,
        audit,
        config,
        without_file,
    };
    (started, guard, logs)
}

/// Two senders on connections of their own, `count` messages of `size` bytes each (`S0M0000`,
/// `S1M0000`, ...), every one acked AA with its own MSH-10.
fn two_senders(
    listen: std::net::SocketAddr,
    count: usize,
    size: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..2)
        .map(|s| {
            tokio::spawn(async move {
                let mut client = Client::plain(listen).await;
                for i in 0..count {
                    let id = format!("S{s}M{i:04}");
                    let (code, acked, _) = ack_of(&client.send(&message(&id, size)).await);
                    assert_eq!((code, acked.as_str()), (AckCode::AA, id.as_str()));
                }
            })
        })
        .collect()
}

/// Each of [`two_senders`]' control ids among `ids` come in the order it sent them.
fn each_sender_in_order(ids: &[String]) {
    for s in 0..2 {
        let own: Vec<&String> = ids
            .iter()
            .filter(|id| id.starts_with(&format!("S{s}M")))
            .collect();
        assert!(
            own.windows(2).all(|w| w[0] < w[1]),
            "sender {s}: out of order"
        );
    }
}

fn signal(guard: &Proc, name: &str) {
    let pid = guard.0.id().to_string();
    assert!(Command::new("kill")
        .args([&format!("-{name}"), &pid])
        .status()
        .unwrap()
        .success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_file_takes_every_line_and_a_rotation_under_load_loses_none() {
    // stderr at warn: the audit trail is INFO, and the file takes it anyway.
    let (at, mut guard, logs) = start("warn");
    let (listen, audit) = (at.listen, at.audit.clone());

    // Two senders, 250 messages each, while the file is rotated three times.
    const PER_SENDER: usize = 250;
    let senders = two_senders(listen, PER_SENDER, 400);
    let mut rotated = Vec::new();
    for n in 1..=3 {
        // Rotate once lines are flowing into the current file (bounded wait).
        let deadline = Instant::now() + Duration::from_secs(20);
        while audited(&audit).is_empty() && !senders.iter().all(|s| s.is_finished()) {
            assert!(Instant::now() < deadline, "no audit line reached {audit:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let old = at.dir.path(&format!("audit.jsonl.{n}"));
        std::fs::rename(&audit, &old).unwrap();
        signal(&guard, "HUP");
        rotated.push(old);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    for sender in senders {
        sender.await.unwrap();
    }
    signal(&guard, "TERM");
    assert!(guard.0.wait().unwrap().success());

    let files: Vec<Vec<String>> = rotated.iter().chain([&audit]).map(|f| audited(f)).collect();
    assert!(!files[0].is_empty(), "the first rotation happened mid-flow");
    // Each sender's lines are in the order it sent them, within a file and across the files in
    // rotation order: a line logged before a SIGHUP is in the file it renamed.
    each_sender_in_order(&files.concat());
    let all: Vec<&String> = files.iter().flatten().collect();
    let unique: BTreeSet<&&String> = all.iter().collect();
    assert_eq!(
        all.len(),
        2 * PER_SENDER,
        "every message exactly once across the files"
    );
    assert_eq!(unique.len(), 2 * PER_SENDER);
    let stderr: Vec<String> = logs.try_iter().collect();
    assert!(
        !stderr
            .iter()
            .any(|l| l.contains("\"target\":\"mllp_guard::audit\"")),
        "an audit line reached stderr"
    );
}

/// Control ids of the audit lines among `lines` (JSON log lines), in order.
fn audited_on_stderr(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "mllp_guard::audit")
        .map(|v| v["control_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_that_add_and_remove_the_audit_file_under_load_lose_and_repeat_no_line() {
    // stderr at info: while no file takes them, the audit lines go there.
    let (at, mut guard, logs) = start("info");
    let (listen, audit, config) = (at.listen, at.audit.clone(), at.config.clone());
    let with_file = std::fs::read_to_string(&config).unwrap();
    let yaml = at.without_file.clone();

    const PER_SENDER: usize = 300;
    let senders = two_senders(listen, PER_SENDER, 300);
    // The audit trail moves to stderr and back three times while the senders send.
    let mut stderr = Vec::new();
    for n in 0..6 {
        let deadline = Instant::now() + Duration::from_secs(20);
        let seen = || audited(&audit).len();
        let before = seen();
        while seen() == before && n % 2 == 0 && !senders.iter().all(|s| s.is_finished()) {
            assert!(Instant::now() < deadline, "no audit line reached {audit:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let next = if n % 2 == 0 { &yaml } else { &with_file };
        std::fs::write(&config, next).unwrap();
        signal(&guard, "HUP");
        tokio::time::sleep(Duration::from_millis(120)).await;
        stderr.extend(logs.try_iter());
    }
    for sender in senders {
        sender.await.unwrap();
    }
    signal(&guard, "TERM");
    assert!(guard.0.wait().unwrap().success());
    stderr.extend(logs.try_iter());
    let reloads = stderr
        .iter()
        .filter(|l| l.contains("\"message\":\"config reloaded\""))
        .count();
    assert_eq!(reloads, 6, "every reload took: {stderr:#?}");

    let in_file = audited(&audit);
    let on_stderr = audited_on_stderr(&stderr);
    assert!(
        !in_file.is_empty() && !on_stderr.is_empty(),
        "both took lines: {} in the file, {} on stderr",
        in_file.len(),
        on_stderr.len()
    );
    each_sender_in_order(&in_file);
    each_sender_in_order(&on_stderr);
    let all: Vec<&String> = in_file.iter().chain(&on_stderr).collect();
    let unique: BTreeSet<&&String> = all.iter().collect();
    assert_eq!(unique.len(), 2 * PER_SENDER, "every message has a line");
    assert_eq!(all.len(), 2 * PER_SENDER, "and only one");
}

#[test]
fn check_names_an_audit_file_whose_directory_is_missing() {
    let (_, stderr) = crate::cli::check_fails(
        "routes:\n  - name: lab\n    listen: 127.0.0.1:0\n    allow: [any]\n    upstream: { address: 127.0.0.1:9 }\naudit: { file: nowhere/audit.jsonl }\n",
    );
    assert!(
        stderr.contains("guard.yaml:6:16: audit.file: the directory")
            && stderr.contains("nowhere does not exist"),
        "{stderr}"
    );
}
