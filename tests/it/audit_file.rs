//! `audit: { file }` through the binary: the audit trail leaves stderr for a JSON-lines file that
//! takes every line whatever stderr's level, and a logrotate-style rotation (rename, SIGHUP)
//! under load loses, repeats and reorders none of them (issue 22).

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
    let dir = TestDir::new();
    let (_sink, upstream) = start_sink(&["--listen", "127.0.0.1:0"]);
    let listen = crate::admin::free_port();
    let audit = dir.path("audit.jsonl");
    let config = dir.path("guard.yaml");
    let yaml = route_yaml(upstream.parse().unwrap(), "", "", "")
        .replace("127.0.0.1:0", &listen.to_string());
    std::fs::write(
        &config,
        format!("{yaml}audit: {{ file: {} }}\n", audit.display()),
    )
    .unwrap();
    // stderr at warn: the audit trail is INFO, and the file takes it anyway.
    let (mut guard, logs) = spawn_guard_filtered(&config, "warn");
    wait_listening(listen);

    // Two senders, 250 messages each, while the file is rotated three times.
    const PER_SENDER: usize = 250;
    let senders: Vec<_> = (0..2)
        .map(|s| {
            tokio::spawn(async move {
                let mut client = Client::plain(listen).await;
                for i in 0..PER_SENDER {
                    let id = format!("S{s}M{i:04}");
                    let (code, acked, _) = ack_of(&client.send(&message(&id, 400)).await);
                    assert_eq!((code, acked.as_str()), (AckCode::AA, id.as_str()));
                }
            })
        })
        .collect();
    let mut rotated = Vec::new();
    for n in 1..=3 {
        // Rotate once lines are flowing into the current file (bounded wait).
        let deadline = Instant::now() + Duration::from_secs(20);
        while audited(&audit).is_empty() && !senders.iter().all(|s| s.is_finished()) {
            assert!(Instant::now() < deadline, "no audit line reached {audit:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let old = dir.path(&format!("audit.jsonl.{n}"));
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
    for s in 0..2 {
        // Each sender's lines are in the order it sent them, within a file and across the
        // files in rotation order: a line logged before a SIGHUP is in the file it renamed.
        let own: Vec<&String> = files
            .iter()
            .flatten()
            .filter(|id| id.starts_with(&format!("S{s}M")))
            .collect();
        assert!(
            own.windows(2).all(|w| w[0] < w[1]),
            "sender {s}: out of order"
        );
    }
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
