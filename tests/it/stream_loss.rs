//! JetStream streams through the binary. Stream loss (issue 27, finding 4): nats-server SIGKILLed and
//! started again on an empty store dir while acknowledged messages were pending. The guard
//! says so (ERROR naming the stream and how many were pending, a metric), makes the stream and
//! the consumer again, and goes on taking and delivering messages without a restart; the depth
//! it reports is the new stream's; a dead-letter stream deleted by hand is noticed and made
//! again the same way. A stream no configured route names (finding 7) is named by `check`,
//! `run` and `queue list`, its dead-letter stream counted with it, never on its own.

use std::time::{Duration, Instant};

use crate::admin::get;
use crate::custody::{custody_yaml, free_addr};
use crate::damage::receive;
use crate::harness::*;
use crate::nats::{self, Nats};
use crate::queue_cli::queued;

/// A guard config (`guard.yaml`) for route `lab` in front of `receiver` with an admin endpoint;
/// `queue`: its queue keys. The file, the route's listen address and the admin address.
fn guard_config(
    dir: &TestDir,
    receiver: std::net::SocketAddr,
    queue: &str,
) -> (
    std::path::PathBuf,
    std::net::SocketAddr,
    std::net::SocketAddr,
) {
    let (listen, admin) = (free_addr(), free_addr());
    let config = dir.path("guard.yaml");
    let route = custody_yaml(dir, receiver, &listen.to_string(), queue);
    std::fs::write(&config, format!("admin:\n  listen: {admin}\n{route}")).unwrap();
    (config, listen, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server: apt-get install nats-server"]
async fn a_stream_lost_with_its_nats_store_is_reported_made_again_and_custody_goes_on() {
    nats::require();
    let mut nats = Nats::single();
    let dir = TestDir::new();
    let receiver = free_addr(); // down: what is acked stays pending in the stream
    let (config, listen, admin) =
        guard_config(&dir, receiver, &nats.queue_yaml("MLLP_LOSS", 1, "2s"));
    let (_guard, _, logs, _) = crate::cli::start_guard_logged(&config);
    for i in 1..=5 {
        queued(&listen.to_string(), &format!("GONE-{i}"));
    }

    // NATS restarted on an empty store: the stream and its five messages are gone.
    nats.nodes[0].kill();
    nats.nodes[0].wipe_store();
    nats.nodes[0].start();
    nats.nodes[0].wait_healthy();

    // Custody goes on without a restart: a new message is stored (AA) in the new stream.
    queued(&listen.to_string(), "AFTER-1");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut reported = Vec::new();
    let mut seen_lines = Vec::new();
    while reported.is_empty() {
        assert!(Instant::now() < deadline, "no ERROR about the lost stream");
        let Ok(line) = logs.recv_timeout(Duration::from_millis(500)) else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["level"] != "DEBUG" && v["level"] != "TRACE" {
            seen_lines.push(line.clone());
        }
        if v["level"] == "ERROR"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.contains("JetStream stream was lost"))
        {
            reported.push(v);
        }
    }
    assert_eq!(reported[0]["stream"], "MLLP_LOSS", "{:?}", reported[0]);
    assert_eq!(reported[0]["pending_lost"], 5, "{seen_lines:#?}");
    queued(&listen.to_string(), "AFTER-2");

    let (_, metrics) = get(admin, "/metrics").await.unwrap();
    assert!(
        metrics.contains("mllp_guard_jetstream_stream_lost_total{route=\"lab\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mllp_guard_jetstream_lost_messages_total{route=\"lab\"} 5"),
        "{metrics}"
    );
    // The depth is the new stream's: the two messages taken since, not seven.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = get(admin, "/metrics").await.unwrap();
        let depth = metrics.lines().find_map(|l| {
            l.strip_prefix("mllp_guard_queue_depth_messages{route=\"lab\"} ")
                .and_then(|v| v.parse::<f64>().ok())
        });
        if depth == Some(2.0) {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The consumer was made again too: the two are delivered, in order.
    let expected = ["AFTER-1".to_string(), "AFTER-2".to_string()];
    let (_sink, delivered) = tokio::task::spawn_blocking({
        let saved = dir.path("saved");
        move || receive(receiver, &saved, &expected)
    })
    .await
    .unwrap();
    assert_eq!(delivered, ["AFTER-1", "AFTER-2"]);
}

/// Issue 27, finding 7 on JetStream: a route whose stream was renamed leaves acknowledged
/// messages in the old stream; `check` and `run` warn with the pending count, `queue list`
/// shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server: apt-get install nats-server"]
async fn a_stream_no_route_names_is_named_by_check_run_and_queue_list() {
    nats::require();
    let nats = Nats::single();
    let dir = TestDir::new();
    let receiver = free_addr(); // down: the three stay pending
    let listen = free_addr();
    let config = dir.path("guard.yaml");
    let yaml = custody_yaml(
        &dir,
        receiver,
        &listen.to_string(),
        &nats.queue_yaml("MLLP_OLD", 1, "2s"),
    );
    std::fs::write(&config, &yaml).unwrap();
    {
        let (mut guard, _, _logs) = crate::cli::start_guard(&config);
        for i in 1..=3 {
            queued(&listen.to_string(), &format!("OLD-{i}"));
        }
        guard.0.kill().unwrap();
        guard.0.wait().unwrap();
    }
    // One dead letter too, in the route's dead-letter stream (MLLP_OLD_DEAD).
    let stored = nats
        .js()
        .await
        .publish("MLLP_OLD.dead", message("OLD-DEAD", 300).into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(stored.stream, "MLLP_OLD_DEAD");
    std::fs::write(
        &config,
        yaml.replace("stream: MLLP_OLD", "stream: MLLP_NEW"),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();

    let warned = crate::damage::checked_warnings(cfg);
    assert!(
        warned.contains(
            "holds the stream of no configured route: MLLP_OLD (3 pending, 1 dead letters)"
        ),
        "{warned}"
    );
    let (ok, out, err) = crate::damage::queue_cmd(&["list", "--config", cfg]);
    assert!(ok, "{err}");
    assert!(
        out.contains("stream MLLP_OLD (no configured route owns it): 3 pending"),
        "{out}"
    );
    let stranded = crate::damage::stranded_rows(cfg);
    assert_eq!(stranded.len(), 1, "{stranded:?}");
    assert_eq!(
        (
            &stranded[0]["route"],
            &stranded[0]["backend"],
            &stranded[0]["pending"]
        ),
        (&"MLLP_OLD".into(), &"jetstream".into(), &3.into())
    );
    assert_eq!(stranded[0]["dead_letters"], 1, "{stranded:?}");

    let (_guard, _, logs, early) = crate::cli::start_guard_logged(&config);
    let later = std::iter::from_fn(|| logs.recv_timeout(Duration::from_millis(500)).ok());
    let warned = early.into_iter().chain(later).take(200).find(|l| {
        l.contains("\"level\":\"WARN\"") && l.contains("holds the stream of no configured route")
    });
    let warned = warned.expect("run warns about the stranded stream");
    let v: serde_json::Value = serde_json::from_str(&warned).unwrap();
    assert_eq!(
        (&v["stream"], &v["pending"]),
        (&"MLLP_OLD".into(), &3.into())
    );
}

/// The dead-letter stream deleted by hand while the guard runs: ERROR naming it and the dead
/// letters that were in it, the metrics, and it is made again (with its limits), so the next
/// dead letter is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server: apt-get install nats-server"]
async fn a_lost_dead_letter_stream_is_reported_and_made_again() {
    nats::require();
    let nats = Nats::single();
    let dir = TestDir::new();
    let (_sink, receiver) = crate::dead_stream::receiver("127.0.0.1:0", "AR", &dir.path("saved"));
    let queue = format!(
        "{}      dead_letters: {{ max_messages: 5 }}\n",
        nats.queue_yaml("MLLP_DL", 1, "2s")
    );
    let (config, listen, admin) = guard_config(&dir, receiver.parse().unwrap(), &queue);
    let (_guard, _, logs) = crate::cli::start_guard(&config);
    let cfg = config.to_str().unwrap();
    let dead_letters = || {
        let (ok, out, err) = crate::damage::queue_cmd(&["list", "--json", "--config", cfg]);
        assert!(ok, "{err}");
        let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
        rows[0]["dead_letters"].as_u64().unwrap()
    };
    queued(&listen.to_string(), "DL-1");
    let deadline = Instant::now() + Duration::from_secs(20);
    while dead_letters() < 1 {
        assert!(Instant::now() < deadline, "DL-1 never dead-lettered");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The guard counts it (dead-lettered by it, or read with the depth) before it goes.
    let js = nats.js().await;
    js.delete_stream("MLLP_DL_DEAD").await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    let reported = loop {
        assert!(
            Instant::now() < deadline,
            "no ERROR about the lost dead-letter stream"
        );
        let Ok(line) = logs.recv_timeout(Duration::from_millis(500)) else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["level"] == "ERROR"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.contains("dead-letter stream was lost"))
        {
            break v;
        }
    };
    assert_eq!(reported["stream"], "MLLP_DL_DEAD", "{reported}");
    assert_eq!(reported["dead_letters_lost"], 1, "{reported}");
    let (_, metrics) = get(admin, "/metrics").await.unwrap();
    assert!(
        metrics.contains("mllp_guard_jetstream_stream_lost_total{route=\"lab\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mllp_guard_jetstream_lost_messages_total{route=\"lab\"} 1"),
        "{metrics}"
    );
    let mut dead = js.get_stream("MLLP_DL_DEAD").await.expect("made again");
    assert_eq!(dead.info().await.unwrap().config.max_messages, 5);
    // The next dead letter is stored in it.
    queued(&listen.to_string(), "DL-2");
    let deadline = Instant::now() + Duration::from_secs(20);
    while dead_letters() < 1 {
        assert!(Instant::now() < deadline, "DL-2 never dead-lettered");
        std::thread::sleep(Duration::from_millis(100));
    }
}
