//! Reloads while things run, through the binary (issue 28): a reload that fails changes
//! nothing (`log_payloads` included).

use std::time::{Duration, Instant};

use mllp_guard::wire::hl7::AckCode;

use crate::admin::{free_port, wait_for};
use crate::cli::spawn_guard_filtered;
use crate::harness::*;
use crate::reload::{hup, wait_reloads};

/// The log lines that arrived within `within`.
fn drain(logs: &std::sync::mpsc::Receiver<String>, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut lines = Vec::new();
    while Instant::now() < deadline {
        if let Ok(line) = logs.recv_timeout(Duration::from_millis(50)) {
            lines.push(line);
        }
    }
    lines
}

/// Waits (bounded) for a log line whose message is `message`; returns it.
pub fn wait_line(logs: &std::sync::mpsc::Receiver<String>, message: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let Ok(line) = logs.recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["message"] == message {
            return v;
        }
    }
    panic!("no log line {message:?} within 15 s");
}

const PAYLOAD_LINE: &str = "payload (log_payloads: true)";

#[tokio::test]
async fn a_reload_that_fails_at_apply_does_not_switch_on_log_payloads() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let admin = free_port();
    let listen = free_port();
    // Another process holds this port: a route on it cannot be bound.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held_addr = held.local_addr().unwrap();
    let config = |extra_top: &str, extra_route: &str| {
        format!(
            "{extra_top}admin:\n  listen: {admin}\nroutes:\n  - name: live\n    listen: {listen}\n    allow: [127.0.0.1]\n    upstream:\n      address: {up}\n{extra_route}",
            up = upstream.addr
        )
    };
    let blocked = format!(
        "  - name: blocked\n    listen: {held_addr}\n    allow: [127.0.0.1]\n    upstream:\n      address: {}\n",
        upstream.addr
    );
    let file = dir.path("guard.yaml");
    std::fs::write(&file, config("", "")).unwrap();
    let (guard, logs) = spawn_guard_filtered(&file, "debug,mllp_guard::payload=trace");
    wait_for(admin, "/readyz", 200).await;

    std::fs::write(&file, config("log_payloads: true\n", &blocked)).unwrap();
    hup(&guard);
    let failed = wait_line(&logs, "reload failed; the running config stays in force");
    let cause = failed["error"].as_str().unwrap_or_default();
    assert!(
        cause.contains("blocked") && cause.contains(&held_addr.port().to_string()),
        "the failure names the route and the port: {failed}"
    );
    let mut client = Client::plain(listen).await;
    assert_eq!(
        ack_of(&client.send(&message("PL-1", 200)).await).0,
        AckCode::AA
    );
    let after_failure = drain(&logs, Duration::from_millis(800));
    assert!(
        !after_failure.iter().any(|l| l.contains(PAYLOAD_LINE)),
        "a failed reload switched on log_payloads: {after_failure:#?}"
    );
    assert!(
        !after_failure
            .iter()
            .any(|l| l.contains("this logs patient data")),
        "{after_failure:#?}"
    );

    // The same setting in a reload that applies does switch it on (the check above can see it).
    std::fs::write(&file, config("log_payloads: true\n", "")).unwrap();
    hup(&guard);
    wait_reloads(admin, "success", 1.0).await;
    assert_eq!(
        ack_of(&client.send(&message("PL-2", 200)).await).0,
        AckCode::AA
    );
    let applied = drain(&logs, Duration::from_millis(800));
    assert!(
        applied
            .iter()
            .any(|l| l.contains(PAYLOAD_LINE) && l.contains("PL-2")),
        "{applied:#?}"
    );
    drop(held);
}
