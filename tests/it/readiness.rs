//! Readiness that follows the receiver and the queue, through the binary: `upstream.health_check`
//! flips `/readyz` and `mllp_guard_upstream_up` when the receiver dies, with no message sent;
//! `queue.unready_when` makes `/readyz` unready while the queue is backed up, and says why.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::admin::get;
use crate::cli::{start_guard, start_sink};
use crate::custody::{custody_yaml, free_addr};
use crate::harness::*;
use crate::queue_cli::queued;

/// Polls `/readyz` (bounded) until its status is `want`; returns the body.
async fn readyz_becomes(admin: SocketAddr, want: u16, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some((status, body)) = get(admin, "/readyz").await {
            if status == want {
                return body;
            }
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never became {want}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_dies_without_traffic_makes_the_guard_unready() {
    let dir = TestDir::new();
    let (sink, receiver) = start_sink(&["--listen", "127.0.0.1:0"]);
    let admin = free_addr();
    let config = dir.path("guard.yaml");
    std::fs::write(
        &config,
        format!(
            "admin:\n  listen: {admin}\n{}",
            route_yaml(
                receiver.parse().unwrap(),
                "",
                "",
                "      health_check: { interval: 200ms, timeout: 500ms }\n"
            )
        ),
    )
    .unwrap();
    let (guard, _, logs) = start_guard(&config);
    readyz_becomes(admin, 200, "the receiver is up").await;
    drop(sink); // killed: no message was ever sent
    let body = readyz_becomes(admin, 503, "the receiver died").await;
    assert!(body.contains("upstream test"), "{body}");
    let (_, metrics) = get(admin, "/metrics").await.unwrap();
    assert!(
        metrics.contains("mllp_guard_upstream_up{upstream=\"test\"} 0"),
        "{metrics}"
    );
    let (_sink, _) = start_sink(&["--listen", &receiver]);
    readyz_becomes(admin, 200, "the receiver is back").await;
    let (_, metrics) = get(admin, "/metrics").await.unwrap();
    assert!(
        metrics.contains("mllp_guard_upstream_up{upstream=\"test\"} 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("mllp_guard_upstream_connects_total{upstream=\"test\"}"),
        "a health check is not a connection for messages: {metrics}"
    );
    // SIGTERM: the health checks end with the guard, they do not hold it up to the grace period.
    std::process::Command::new("kill")
        .args(["-TERM", &guard.0.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let stopped = loop {
        let Ok(line) = logs.recv_timeout(Duration::from_millis(200)) else {
            assert!(Instant::now() < deadline, "the guard did not stop");
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["message"] == "all connections drained; stopped"
            || v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("grace period over"))
        {
            break v["message"].clone();
        }
    };
    assert_eq!(stopped, "all connections drained; stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backed_up_queue_makes_the_guard_unready_and_says_why() {
    let dir = TestDir::new();
    let (receiver, listen, admin) = (free_addr(), free_addr(), free_addr());
    let config = dir.path("custody.yaml");
    std::fs::write(
        &config,
        format!(
            "admin:\n  listen: {admin}\n{}",
            custody_yaml(
                &dir,
                receiver,
                &listen.to_string(),
                "    queue: { unready_when: { pending: 2, oldest: 1h } }\n"
            )
        ),
    )
    .unwrap();
    let (_guard, _, _logs) = start_guard(&config);
    for id in ["BACK-1", "BACK-2"] {
        queued(&listen.to_string(), id);
    }
    let body = readyz_becomes(admin, 503, "two messages wait").await;
    assert!(
        body.contains(
            "route lab: its queue is backed up: 2 messages pending (queue.unready_when.pending 2)"
        ),
        "{body}"
    );
    let (_sink, _) = start_sink(&["--listen", &receiver.to_string()]);
    readyz_becomes(admin, 200, "the queue drained").await;
}
