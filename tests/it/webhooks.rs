//! Webhooks (`notify:`) through the real binary: a small HTTP receiver in the test collects what
//! the guard POSTs. `upstream_down` then `upstream_up` arrive exactly once each around a
//! receiver restart (however many messages fail meanwhile), signed with the shared secret; an
//! ack timeout is `upstream_down` too, and only an ack (not a connection) is `upstream_up` after
//! it; a denied source is told as `connection_refused`; custody, certificate and reload events
//! arrive with their details; a webhook that never answers slows no
//! message and what it cannot take is counted; `check` refuses bad webhook settings with their
//! line and column.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mllp_guard::wire::hl7::AckCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::cli::start_guard;
use crate::harness::*;

/// One POST the receiver got: its headers (names in lower case) and body.
#[derive(Clone, Debug)]
struct Posted {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Posted {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// An HTTP/1.1 receiver answering every request `204 No Content`.
struct Receiver {
    url: String,
    posted: Arc<Mutex<Vec<Posted>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/hooks/mllp?token=abc",
            listener.local_addr().unwrap()
        );
        let posted = Arc::new(Mutex::new(Vec::new()));
        let into = posted.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let into = into.clone();
                tokio::spawn(async move {
                    if let Some(request) = read_request(&mut tcp).await {
                        into.lock().unwrap().push(request);
                    }
                    let _ = tcp
                        .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                        .await;
                });
            }
        });
        Receiver { url, posted }
    }

    fn posted(&self) -> Vec<Posted> {
        self.posted.lock().unwrap().clone()
    }

    /// The events received so far, in order.
    fn events(&self) -> Vec<String> {
        self.posted()
            .iter()
            .map(|p| p.json()["event"].as_str().unwrap_or("").to_string())
            .collect()
    }

    /// Waits (bounded) until an event named `event` has arrived; returns its POST.
    async fn wait_for(&self, event: &str) -> Posted {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(p) = self
                .posted()
                .into_iter()
                .find(|p| p.json()["event"] == event)
            {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "no {event} within 20 s; got {:?}",
                self.events()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Reads one request (head, then `Content-Length` bytes of body), bounded in size and time.
async fn read_request(tcp: &mut tokio::net::TcpStream) -> Option<Posted> {
    let read = async {
        let mut data = Vec::new();
        let mut buf = [0u8; 4096];
        let head_end = loop {
            if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            let n = tcp.read(&mut buf).await.ok()?;
            if n == 0 || data.len() > 1 << 16 {
                return None;
            }
            data.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&data[..head_end]).to_string();
        let headers: Vec<(String, String)> = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
            .min(1 << 20);
        let body_start = head_end + 4;
        while data.len() < body_start + length {
            let n = tcp.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            data.extend_from_slice(&buf[..n]);
        }
        Some(Posted {
            headers,
            body: data[body_start..body_start + length].to_vec(),
        })
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .ok()
        .flatten()
}

/// Starts `mllp-guard run` on `yaml` (written to `guard.yaml` in `dir`): the guard and the
/// address its route listens on.
fn guard_on(dir: &TestDir, yaml: &str) -> (Proc, SocketAddr) {
    let config = dir.path("guard.yaml");
    std::fs::write(&config, yaml).unwrap();
    let (guard, listen, _logs) = start_guard(&config);
    (guard, listen.parse().unwrap())
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `GET path` on the admin endpoint: the body.
async fn get(addr: SocketAddr, path: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

/// A receiver at `addr` again, once the one stopped there has let go of the port (its accept
/// task ends asynchronously; bounded).
async fn restart_at(
    addr: SocketAddr,
    behaviour: Behaviour,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
) -> FakeUpstream {
    let deadline = Instant::now() + Duration::from_secs(10);
    // As the receiver binds (SO_REUSEADDR): connections it closed may linger in TIME_WAIT.
    let free = || -> std::io::Result<()> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(1).map(drop)
    };
    while free().is_err() {
        assert!(Instant::now() < deadline, "{addr} stays taken");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    FakeUpstream::start_at(addr, behaviour, received).await
}

/// Sends one message on `client` until it is answered AA (bounded): the receiver is back.
async fn send_until_aa(client: &mut Client, control_id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if ack_of(&client.send(&message(control_id, 200)).await).0 == AckCode::AA {
            return;
        }
        assert!(Instant::now() < deadline, "the receiver never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_down_then_up_arrive_once_each_around_a_receiver_restart_and_are_signed() {
    let hooks = Receiver::start().await;
    let received = Arc::new(Mutex::new(Vec::new()));
    let upstream_addr = free_port();
    let upstream = FakeUpstream::start_at(upstream_addr, Behaviour::Ack, received.clone()).await;
    let dir = TestDir::new();
    std::fs::write(dir.path("hook.secret"), "s3cret-for-tests\n").unwrap();
    let (_guard, listen) = guard_on(
        &dir,
        &format!(
            "routes:
  - name: lab
    listen: 127.0.0.1:0
    allow: [127.0.0.1]
    upstream: {{ address: {upstream_addr}, connect_timeout: 1s }}
notify:
  webhooks:
    - url: {url}
      events: [upstream_down, upstream_up]
      secret_file: hook.secret
      timeout: 2s
      headers: {{ Authorization: Bearer test-token }}
",
            url = hooks.url
        ),
    );
    let mut client = Client::plain(listen).await;
    assert_eq!(
        ack_of(&client.send(&message("UP-0", 200)).await).0,
        AckCode::AA
    );

    // The receiver goes away: every message fails, one upstream_down is told.
    drop(upstream);
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..4 {
        let id = format!("DOWN-{i}");
        assert_eq!(
            ack_of(&client.send(&message(&id, 200)).await).0,
            AckCode::AE
        );
    }
    let down = hooks.wait_for("upstream_down").await;

    // It comes back: the next message that goes through makes one upstream_up.
    let _back = restart_at(upstream_addr, Behaviour::Ack, received).await;
    send_until_aa(&mut client, "BACK-1").await;
    let up = hooks.wait_for("upstream_up").await;
    for i in 0..3 {
        let id = format!("AFTER-{i}");
        assert_eq!(
            ack_of(&client.send(&message(&id, 200)).await).0,
            AckCode::AA
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hooks.events(), ["upstream_down", "upstream_up"]);

    // The bodies: event, route, time (RFC 3339), details; never payload bytes.
    let body = down.json();
    assert_eq!(body["route"], "lab", "{body}");
    assert_eq!(body["details"]["upstream"], "lab", "{body}");
    assert_eq!(body["details"]["reason"], "connect_failed", "{body}");
    assert_eq!(body["address"], upstream_addr.to_string(), "{body}");
    let time = body["time"].as_str().unwrap();
    let at = humantime::parse_rfc3339(time).unwrap_or_else(|e| panic!("{time}: {e}"));
    assert!(at.elapsed().unwrap() < Duration::from_secs(60));
    assert_eq!(up.json()["details"]["was"], "connect_failed");
    for posted in [&down, &up] {
        let text = String::from_utf8_lossy(&posted.body);
        assert!(!text.contains("MSH|"), "a payload in {text}");
        assert_eq!(posted.header("content-type"), Some("application/json"));
        assert_eq!(posted.header("authorization"), Some("Bearer test-token"));
        // The signature is the HMAC-SHA256 of the exact body with the file's secret.
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, b"s3cret-for-tests");
        let expected = format!(
            "sha256={}",
            hex(aws_lc_rs::hmac::sign(&key, &posted.body).as_ref())
        );
        assert_eq!(
            posted.header("x-mllp-guard-signature"),
            Some(expected.as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denied_source_is_told_as_connection_refused() {
    let hooks = Receiver::start().await;
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let dir = TestDir::new();
    let (_guard, listen) = guard_on(
        &dir,
        &format!(
            "routes:
  - name: guarded
    listen: 127.0.0.1:0
    allow: [127.0.0.2]
    upstream: {{ address: {up} }}
notify:
  webhooks:
    - url: {url}
      events: [connection_refused, connection_opened]
",
            up = upstream.addr,
            url = hooks.url
        ),
    );
    // From outside the allowlist (the reset may come before connect() returns).
    if let Ok(mut refused) = Client::plain_from(listen, "127.0.0.1".parse().unwrap()).await {
        assert!(refused.is_closed().await);
    }
    let refused = hooks.wait_for("connection_refused").await.json();
    assert_eq!(refused["route"], "guarded", "{refused}");
    assert_eq!(refused["details"]["reason"], "allowlist", "{refused}");
    let peer = refused["details"]["peer"].as_str().unwrap();
    assert!(peer.starts_with("127.0.0.1:"), "{peer}");
    // The allowed source is told as opened, with its address.
    let mut allowed = Client::plain_from(listen, "127.0.0.2".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(
        ack_of(&allowed.send(&message("OK-1", 200)).await).0,
        AckCode::AA
    );
    let opened = hooks.wait_for("connection_opened").await.json();
    assert!(opened["peer"].as_str().unwrap().starts_with("127.0.0.2:"));
    assert_eq!(hooks.events(), ["connection_refused", "connection_opened"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_that_never_answers_slows_no_message_and_its_drops_are_counted() {
    // Accepts connections (into the backlog) and never reads or answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let dir = TestDir::new();
    let admin = free_port();
    let (_guard, listen) = guard_on(
        &dir,
        &format!(
            "admin: {{ listen: {admin} }}
routes:
  - name: busy
    listen: 127.0.0.1:0
    allow: [127.0.0.1]
    upstream: {{ address: {up} }}
notify:
  webhooks:
    - url: http://{silent}/never
      events: [connection_opened, connection_closed]
      timeout: 30s
      max_pending: 5
",
            up = upstream.addr,
            silent = silent.local_addr().unwrap()
        ),
    );
    // 100 connections of one message each: 200 events for a webhook that takes none.
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..100 {
        let sent = Instant::now();
        let mut client = Client::plain(listen).await;
        let id = format!("FAST-{i}");
        assert_eq!(
            ack_of(&client.send(&message(&id, 200)).await).0,
            AckCode::AA
        );
        drop(client);
        slowest = slowest.max(sent.elapsed());
    }
    let took = started.elapsed();
    // The webhook's timeout (30 s) is never waited for by a message.
    assert!(
        slowest < Duration::from_secs(2) && took < Duration::from_secs(20),
        "slowest message {slowest:?}, all {took:?}"
    );
    // At most max_pending wait (plus the one being tried); the rest were dropped and counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = get(admin, "/metrics").await;
        let dropped = metrics
            .lines()
            .find(|l| {
                l.starts_with("mllp_guard_webhook_dropped_total{")
                    && l.contains("reason=\"queue_full\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if dropped >= 190.0 {
            assert!(dropped <= 194.0, "{dropped} dropped");
            assert!(metrics.contains("webhook=\"http://127.0.0.1:"), "{metrics}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{dropped} dropped of 200:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One route, for the configs `check` reads here.
const ONE_ROUTE: &str = "routes:
  - name: r
    listen: 127.0.0.1:0
    allow: [127.0.0.1]
    upstream: { address: 127.0.0.1:2575 }
";

/// `check` of a file holding `yaml`: exit code 2 and stderr.
fn check_fails(dir: &TestDir, yaml: &str) -> String {
    let file = dir.path("bad.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    stderr
}

#[test]
fn check_refuses_bad_webhook_urls_events_and_settings_with_their_position() {
    let dir = TestDir::new();
    let stderr = check_fails(
        &dir,
        &format!(
            "{ONE_ROUTE}notify:
  webhooks:
    - url: ftp://alerts.example.org/x
      events: [upstream_down, upstream_sideways]
    - url: http://alerts.example.org/x
      ca: missing-ca.pem
      secret_file: missing.secret
      headers: {{ Content-Length: \"3\" }}
  queue_backlog: {{}}
"
        ),
    );
    for expected in [
        "bad.yaml:8:12: notify.webhooks[0].url: \"ftp://alerts.example.org/x\" is not http:// or https://",
        "bad.yaml:9:31: notify.webhooks[0].events[1]: unknown event \"upstream_sideways\"",
        "bad.yaml:11:11: notify.webhooks[1].ca: `ca` applies to an https:// URL only",
        "bad.yaml:12:20: notify.webhooks[1].secret_file: file \"missing.secret\" not found",
        "notify.webhooks[1].headers.Content-Length: Content-Length is set by the guard itself",
        "notify.queue_backlog: give `pending`",
    ] {
        assert!(stderr.contains(expected), "no {expected:?} in:\n{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn custody_certificate_connection_and_reload_events_are_told() {
    use crate::pki::Usage;
    let hooks = Receiver::start().await;
    let refusing = FakeUpstream::start(Behaviour::CodeFor(AckCode::AR, "BAD")).await;
    let dir = TestDir::new();
    dir.leaf_with("localhost", Usage::Server, 77, 5, "soon");
    let yaml = format!(
        "state_dir: {state}
routes:
  - name: kept
    listen: 127.0.0.1:0
    allow: [127.0.0.1]
    delivery: store-and-forward
    upstream: {{ address: {refusing} }}
  - name: stuck
    listen: 127.0.0.1:0
    allow: [127.0.0.1]
    delivery: store-and-forward
    upstream: {{ address: {nowhere}, connect_timeout: 1s }}
  - name: tls
    listen: 127.0.0.1:0
    tls: {{ cert: soon.pem, key: soon.key }}
    allow: [127.0.0.1]
    upstream: {{ address: {refusing} }}
notify:
  webhooks:
    - url: {url}
  queue_backlog: {{ pending: 1 }}
",
        state = dir.path("state").display(),
        refusing = refusing.addr,
        nowhere = free_port(),
        url = hooks.url
    );
    let config = dir.path("guard.yaml");
    std::fs::write(&config, &yaml).unwrap();
    let (_guard, logs) = crate::cli::spawn_guard(&config);
    // Each route's address, from its `route listening` log line.
    let mut listens = std::collections::BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while listens.len() < 3 {
        assert!(Instant::now() < deadline, "routes did not listen");
        if let Ok(line) = logs.recv_timeout(Duration::from_millis(200)) {
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["message"] == "route listening" {
                let addr: SocketAddr = v["listen"].as_str().unwrap().parse().unwrap();
                listens.insert(v["route"].as_str().unwrap().to_string(), addr);
            }
        }
    }

    // A certificate that expires in 5 days (within the default 30).
    let cert = hooks.wait_for("certificate_expiring").await.json();
    assert_eq!(cert["route"], Value::Null, "{cert}");
    assert!(
        cert["file"].as_str().unwrap().ends_with("soon.pem"),
        "{cert}"
    );
    assert_eq!(cert["expired"], false);
    let left = cert["expires_in_seconds"].as_u64().unwrap();
    assert!((4 * 86400..=5 * 86400).contains(&left), "{cert}");

    // The receiver refuses BAD-1 with AR: it goes to the dead letters.
    let mut client = Client::plain(listens["kept"]).await;
    assert_eq!(
        ack_of(&client.send(&message("BAD-1", 200)).await).0,
        AckCode::AA
    );
    drop(client);
    let dead = hooks.wait_for("dead_letter").await.json();
    assert_eq!(dead["route"], "kept", "{dead}");
    assert_eq!(dead["control_id"], "BAD-1", "{dead}");
    let closed = hooks.wait_for("connection_closed").await.json();
    assert_eq!(closed["route"], "kept", "{closed}");
    assert_eq!(closed["messages"], 1, "{closed}");

    // A message that cannot be delivered: the queue is backed up (pending: 1).
    let mut client = Client::plain(listens["stuck"]).await;
    assert_eq!(
        ack_of(&client.send(&message("STUCK-1", 200)).await).0,
        AckCode::AA
    );
    let backlog = hooks.wait_for("queue_backlog").await.json();
    assert_eq!(backlog["route"], "stuck", "{backlog}");
    assert_eq!(backlog["pending"], 1, "{backlog}");
    assert_eq!(backlog["threshold_pending"], 1, "{backlog}");

    // A broken config is refused; the good one again is applied (the file is watched).
    std::fs::write(&config, format!("{yaml}bogus: 1\n")).unwrap();
    let rejected = hooks.wait_for("config_rejected").await.json();
    assert_eq!(rejected["route"], Value::Null);
    assert!(rejected["errors"].as_u64().unwrap() >= 1, "{rejected}");
    assert!(
        rejected["reasons"][0].as_str().unwrap().contains("bogus"),
        "{rejected}"
    );
    std::fs::write(&config, &yaml).unwrap();
    let reloaded = hooks.wait_for("config_reloaded").await.json();
    assert!(reloaded["file"].as_str().unwrap().ends_with("guard.yaml"));
    for posted in hooks.posted() {
        let text = String::from_utf8_lossy(&posted.body);
        assert!(!text.contains("MSH|"), "a payload in {text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ack_timeout_is_upstream_down_and_only_an_ack_is_upstream_up() {
    let hooks = Receiver::start().await;
    let received = Arc::new(Mutex::new(Vec::new()));
    let upstream_addr = free_port();
    let silent = FakeUpstream::start_at(upstream_addr, Behaviour::Silent, received.clone()).await;
    let dir = TestDir::new();
    let (_guard, listen) = guard_on(
        &dir,
        &format!(
            "routes:
  - name: hung
    listen: 127.0.0.1:0
    allow: [127.0.0.1]
    upstream: {{ address: {upstream_addr}, ack_timeout: 500ms }}
notify:
  webhooks:
    - url: {url}
      events: [upstream_down, upstream_up]
",
            url = hooks.url
        ),
    );
    let mut client = Client::plain(listen).await;
    // Connections succeed, acks never come: down once, whatever the number of messages.
    for i in 0..3 {
        let id = format!("HUNG-{i}");
        assert_eq!(
            ack_of(&client.send(&message(&id, 200)).await).0,
            AckCode::AE
        );
    }
    let down = hooks.wait_for("upstream_down").await.json();
    assert_eq!(down["reason"], "ack_timeout", "{down}");
    // A receiver that answers: the first ack is upstream_up.
    drop(silent);
    let _answering = restart_at(upstream_addr, Behaviour::Ack, received).await;
    send_until_aa(&mut client, "ANSWERED-1").await;
    let up = hooks.wait_for("upstream_up").await.json();
    assert_eq!(up["was"], "ack_timeout", "{up}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hooks.events(), ["upstream_down", "upstream_up"]);
}

#[test]
fn check_print_shows_the_webhooks_without_their_tokens_and_loads_back() {
    let dir = TestDir::new();
    std::fs::write(dir.path("hook.secret"), "s3cret\n").unwrap();
    let file = dir.path("guard.yaml");
    std::fs::write(
        &file,
        format!(
            "{ONE_ROUTE}notify:
  webhooks:
    - url: https://alerts.example.org:8443/hooks?token=t0ps3cret
      events: [upstream_down, upstream_up]
      secret_file: hook.secret
      ca: ca.pem
      headers: {{ Authorization: Bearer b34rer }}
  queue_backlog: {{ oldest: 10m }}
"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "--print", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{printed}");
    for shown in [
        "    - url: \"https://alerts.example.org:8443/hooks\"",
        "      events: [upstream_down, upstream_up]",
        "      timeout: 5s",
        "      max_pending: 1000",
        "      # headers: Authorization (values not shown)",
        "    oldest: 10m",
        "    within: 30days",
    ] {
        assert!(printed.contains(shown), "no {shown:?} in:\n{printed}");
    }
    for secret in ["t0ps3cret", "b34rer", "s3cret\""] {
        assert!(!printed.contains(secret), "{secret} in:\n{printed}");
    }
    let again = dir.path("printed.yaml");
    std::fs::write(&again, &printed).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&again)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
