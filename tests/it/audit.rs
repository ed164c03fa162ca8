//! The audit trail of a real process, logging at trace level (the most it can): one JSON line
//! per message with every field auditors ask for, and not one byte of any payload anywhere in
//! the log unless `log_payloads: true` is set.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mllp_guard::wire::hl7::AckCode;

use crate::harness::*;

/// Runs the guard at trace level with `config`, sends `send(listen)`, stops it and returns
/// every log line.
async fn run_and_log<F, Fut>(dir: &TestDir, config: &str, send: F) -> Vec<serde_json::Value>
where
    F: FnOnce(std::net::SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let listen = crate::admin::free_port();
    let file = dir.path("audit.yaml");
    std::fs::write(&file, config.replace("LISTEN", &listen.to_string())).unwrap();
    let mut child = Proc(
        Command::new(BIN)
            .args(["--log-format", "json", "run", "--config"])
            .arg(&file)
            .env("MLLP_GUARD_LOG", "trace")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    while tokio::net::TcpStream::connect(listen).await.is_err() {
        assert!(Instant::now() < deadline, "the guard never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    send(listen).await;
    let pid = child.0.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let _ = child.0.wait();
    reader
        .join()
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect()
}

const MARKER: &str = "SECRETPAYLOADMARKER4242";

fn marked(control_id: &str) -> Vec<u8> {
    let mut msg = message(control_id, 300);
    msg.extend_from_slice(format!("NTE|9||{MARKER}\r").as_bytes());
    msg
}

fn config(upstream: std::net::SocketAddr, extra_top: &str) -> String {
    format!("{extra_top}routes:\n  - name: audited\n    listen: LISTEN\n    tls: {{ cert: guard.pem, key: guard.key, client_ca: ca.pem }}\n    allow: [127.0.0.1]\n    rules:\n      - name: no-orders\n        match: {{ message_type: [\"ORM^*\"] }}\n        action: reject\n    upstream:\n      address: {upstream}\n")
}

#[tokio::test]
async fn one_audit_line_per_message_with_every_field_and_no_payload_anywhere() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let tls = dir.client_tls("ca.pem", Some("lab"));
    let logs = run_and_log(&dir, &config(upstream.addr, ""), |listen| async move {
        let mut client = Client::tls(listen, tls).await.unwrap();
        assert_eq!(ack_of(&client.send(&marked("AUD-1")).await).0, AckCode::AA);
        let order = String::from_utf8(marked("AUD-2"))
            .unwrap()
            .replace("ADT^A01^ADT_A01", "ORM^O01");
        assert_eq!(ack_of(&client.send(order.as_bytes()).await).0, AckCode::AR);
    })
    .await;
    let all = logs.iter().map(|l| l.to_string()).collect::<String>();
    assert!(!all.contains(MARKER), "a payload reached the log");
    assert!(
        !all.contains("TEST^PATIENT"),
        "patient data reached the log"
    );
    let audit: Vec<&serde_json::Value> = logs
        .iter()
        .filter(|l| l["target"] == "mllp_guard::audit")
        .collect();
    assert_eq!(audit.len(), 2, "one line per message: {audit:#?}");
    let line = audit[0];
    for field in [
        "timestamp",
        "route",
        "direction",
        "peer",
        "identity",
        "sending_application",
        "sending_facility",
        "message_type",
        "control_id",
        "bytes",
        "outcome",
        "ack",
        "latency_ms",
    ] {
        assert!(!line[field].is_null(), "audit line lacks {field}: {line}");
    }
    assert_eq!(line["route"], "audited");
    assert_eq!(line["identity"], "lab.example.org");
    assert_eq!(line["sending_application"], "SEND_APP");
    assert_eq!(line["sending_facility"], "SEND_FAC");
    assert_eq!(line["message_type"], "ADT^A01^ADT_A01");
    assert_eq!(line["control_id"], "AUD-1");
    assert_eq!(line["outcome"], "forwarded");
    assert_eq!(line["ack"], "AA");
    let refused = audit[1];
    assert_eq!(refused["outcome"], "rejected_by_rule");
    assert_eq!(refused["rule"], "no-orders");
    assert_eq!(refused["ack"], "AR");
}

#[tokio::test]
async fn log_payloads_true_logs_bodies_only_on_the_payload_target() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let tls = dir.client_tls("ca.pem", Some("lab"));
    let logs = run_and_log(
        &dir,
        &config(upstream.addr, "log_payloads: true\n"),
        |listen| async move {
            let mut client = Client::tls(listen, tls).await.unwrap();
            assert_eq!(ack_of(&client.send(&marked("PAY-1")).await).0, AckCode::AA);
        },
    )
    .await;
    let with_marker: Vec<&serde_json::Value> = logs
        .iter()
        .filter(|l| l.to_string().contains(MARKER))
        .collect();
    assert_eq!(with_marker.len(), 1, "{with_marker:#?}");
    assert_eq!(with_marker[0]["target"], "mllp_guard::payload");
    assert_eq!(with_marker[0]["level"], "TRACE");
}

/// The audit trail written in batches, at the shipped log level: every message's line arrives
/// within about a second while the guard runs (in the order the messages were sent on the
/// connection), and a burst sent right before SIGTERM is complete in the log when the process
/// has exited.
#[tokio::test]
async fn batched_audit_lines_arrive_promptly_in_order_and_all_before_a_clean_exit() {
    let dir = TestDir::new();
    let (_sink, sink_addr) = crate::cli::start_sink(&["--listen", "127.0.0.1:0"]);
    let listen = crate::admin::free_port();
    let file = dir.path("guard.yaml");
    std::fs::write(
        &file,
        route_yaml(sink_addr.parse().unwrap(), "", "", "")
            .replace("127.0.0.1:0", &listen.to_string()),
    )
    .unwrap();
    let mut child = Proc(
        Command::new(BIN)
            .args(["--log-format", "json", "run", "--config"])
            .arg(&file)
            .env_remove("MLLP_GUARD_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let audited = |rx: &std::sync::mpsc::Receiver<String>, want: usize, within: Duration| {
        let deadline = Instant::now() + within;
        let mut ids = Vec::new();
        while ids.len() < want {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                break;
            };
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v["target"] == "mllp_guard::audit" {
                ids.push(v["control_id"].as_str().unwrap().to_string());
            }
        }
        ids
    };
    wait_listening(listen);

    let mut client = Client::plain(listen).await;
    let first: Vec<String> = (0..200).map(|i| format!("B{i:04}")).collect();
    for id in &first {
        assert_eq!(ack_of(&client.send(&message(id, 300)).await).0, AckCode::AA);
    }
    let sent_at = Instant::now();
    assert_eq!(audited(&rx, 200, Duration::from_secs(5)), first);
    assert!(
        sent_at.elapsed() < Duration::from_secs(2),
        "{:?}",
        sent_at.elapsed()
    );

    // A burst, then SIGTERM at once: every line is in the log when the process has exited.
    let burst: Vec<String> = (0..50).map(|i| format!("T{i:04}")).collect();
    for id in &burst {
        assert_eq!(ack_of(&client.send(&message(id, 300)).await).0, AckCode::AA);
    }
    drop(client);
    Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the guard ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(audited(&rx, 50, Duration::from_secs(5)), burst);
}
