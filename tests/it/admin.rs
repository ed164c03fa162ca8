//! The admin endpoint of a real `mllp-guard run` process (its own process, so its metrics and
//! health are its own): metrics scraped during a relay and parsed, liveness, and readiness that
//! follows the upstream down and back up.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mllp_guard::wire::hl7::AckCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;
use crate::host;

/// A free loopback port (bound and released; the guard binds it right after).
pub fn free_port() -> SocketAddr {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap()
}

/// `GET path` over HTTP/1.0: the status code and the body.
pub async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut response))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8(response).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Polls `GET path` until it answers `status` (bounded).
pub async fn wait_for(addr: SocketAddr, path: &str, status: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some((got, body)) = get(addr, path).await {
            if got == status {
                return body;
            }
        }
        assert!(Instant::now() < deadline, "{path} never answered {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the sample whose name and labels are exactly `series`.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
}

/// A `mllp-guard run` process with an admin endpoint in front of a fake upstream, after five
/// forwarded messages, one refused by a rule and one oversize one on one connection.
struct Metered {
    _dir: TestDir,
    upstream: FakeUpstream,
    _guard: Proc,
    admin: SocketAddr,
    listen: SocketAddr,
    client: Client,
    marker: &'static str,
}

async fn metered_relay() -> Metered {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let upstream_addr = upstream.addr;
    let admin = free_port();
    let listen = free_port();
    let config = dir.path("guard.yaml");
    std::fs::write(
        &config,
        format!("admin:\n  listen: {admin}\nroutes:\n  - name: metered\n    listen: {listen}\n    allow: [127.0.0.1]\n    max_message_bytes: 2KiB\n    rules:\n      - name: no-test\n        match: {{ processing_id: [T] }}\n        action: reject\n    upstream:\n      address: {upstream_addr}\n      ack_timeout: 2s\n      connect_timeout: 1s\n      reconnect: {{ initial: 100ms, max: 200ms }}\n"),
    )
    .unwrap();
    let _guard = Proc(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(admin, "/healthz", 200).await;
    let ready = wait_for(admin, "/readyz", 200).await;
    assert!(ready.contains("\"ready\":true"), "{ready}");

    let marker = "PAYLOADMARKER7731";
    let mut client = Client::plain(listen).await;
    for i in 0..5 {
        let mut msg = message(&format!("M-{i}"), 300);
        msg.extend_from_slice(format!("NTE|2||{marker}\r").as_bytes());
        assert_eq!(ack_of(&client.send(&msg).await).0, AckCode::AA);
    }
    let test_msg = String::from_utf8(message("T-1", 200))
        .unwrap()
        .replacen("|P|", "|T|", 1);
    assert_eq!(
        ack_of(&client.send(test_msg.as_bytes()).await).0,
        AckCode::AR
    );
    assert_eq!(
        ack_of(&client.send(&message("BIG", 4096)).await).0,
        AckCode::AE
    );

    Metered {
        _dir: dir,
        upstream,
        _guard,
        admin,
        listen,
        client,
        marker,
    }
}

#[tokio::test]
async fn metrics_and_health_follow_a_real_relay_and_the_upstream_going_down_and_up() {
    let Metered {
        _dir,
        upstream,
        _guard,
        admin,
        listen,
        client: _still_open,
        marker,
    } = metered_relay().await;
    let upstream_addr = upstream.addr;
    let received = upstream.received.clone();
    let (status, metrics) = get(admin, "/metrics").await.expect("metrics answer");
    assert_eq!(status, 200);
    assert!(!metrics.contains(marker), "no payload data in metrics");
    let forwarded = r#"mllp_guard_messages_total{route="metered",direction="from_sender",outcome="forwarded",ack="AA"}"#;
    assert_eq!(sample(&metrics, forwarded), Some(5.0), "{metrics}");
    let by_rule = r#"mllp_guard_messages_total{route="metered",direction="from_sender",outcome="rejected_by_rule",ack="AR"}"#;
    assert_eq!(sample(&metrics, by_rule), Some(1.0), "{metrics}");
    let oversize = r#"mllp_guard_messages_total{route="metered",direction="from_sender",outcome="oversize",ack="AE"}"#;
    assert_eq!(sample(&metrics, oversize), Some(1.0), "{metrics}");
    let rule = r#"mllp_guard_rule_rejections_total{route="metered",rule="no-test"}"#;
    assert_eq!(sample(&metrics, rule), Some(1.0), "{metrics}");
    let accepted = r#"mllp_guard_connections_accepted_total{route="metered"}"#;
    assert_eq!(sample(&metrics, accepted), Some(1.0));
    assert_eq!(
        sample(&metrics, r#"mllp_guard_connections_open{route="metered"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, r#"mllp_guard_upstream_up{upstream="metered"}"#),
        Some(1.0)
    );
    let acks = r#"mllp_guard_upstream_ack_duration_seconds_count{upstream="metered"}"#;
    assert_eq!(sample(&metrics, acks), Some(5.0), "{metrics}");
    let bytes_in = sample(
        &metrics,
        r#"mllp_guard_message_bytes_total{route="metered",direction="in"}"#,
    )
    .unwrap();
    assert!(bytes_in >= 5.0 * 300.0, "{bytes_in}");
    let bytes_out = sample(
        &metrics,
        r#"mllp_guard_message_bytes_total{route="metered",direction="out"}"#,
    )
    .unwrap();
    assert!(
        bytes_out >= 5.0 * 300.0 && bytes_out < bytes_in,
        "only forwarded bytes go out: {bytes_out} of {bytes_in}"
    );
    // The upstream goes away: the next message fails and readiness says why.
    drop(upstream);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut client = Client::plain(listen).await;
    assert_eq!(
        ack_of(&client.send(&message("DOWN-1", 200)).await).0,
        AckCode::AE
    );
    let body = wait_for(admin, "/readyz", 503).await;
    assert!(body.contains("upstream metered"), "{body}");
    // It comes back: the next message goes through and the guard is ready again.
    let _back = FakeUpstream::start_at(upstream_addr, Behaviour::Ack, received).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, _, _) = ack_of(&client.send(&message("UP-1", 200)).await);
        if code == AckCode::AA {
            break;
        }
        assert!(Instant::now() < deadline, "the upstream never came back");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    wait_for(admin, "/readyz", 200).await;
    assert_eq!(get(admin, "/nope").await.unwrap().0, 404);
}

/// The scraped exposition passes Prometheus' own parser.
#[tokio::test]
#[ignore = "needs promtool: apt-get install prometheus"]
async fn the_scraped_metrics_pass_promtool_check_metrics() {
    let promtool = host::require("promtool", &["--version"], "apt-get install prometheus");
    let metered = metered_relay().await;
    let (status, metrics) = get(metered.admin, "/metrics")
        .await
        .expect("metrics answer");
    assert_eq!(status, 200);
    let out = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(metrics.as_bytes())?;
            child.wait_with_output()
        })
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
