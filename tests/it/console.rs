//! The operator's console (issue 19) against a live `mllp-guard run` process: the routes and
//! connections it lists, closing exactly one connection, pause and resume on both delivery
//! modes, the upstream reconnect seen at the receiver, dead letters listed and replayed, the
//! log level, the token and Host rules, the 404/405/413 answers, `mllp-guard status` and
//! `disconnect`, and the status page in headless Chromium.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mllp_guard::wire::hl7::AckCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::admin::free_port;
use crate::cli::start_guard;
use crate::harness::*;

const TOKEN: &str = "s3cret-token-for-tests";

/// One HTTP/1.1 request (Connection: close): the status code and the body.
pub async fn http(
    admin: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str("Host: localhost\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    let _ = tcp.write_all(body).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {text:?}"));
    (status, body.to_string())
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

async fn get_json(admin: SocketAddr, path: &str) -> Value {
    let (status, body) = http(admin, "GET", path, &[], b"").await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
}

async fn act(admin: SocketAddr, method: &str, path: &str) -> (u16, String) {
    http(admin, method, path, &[("Authorization", &bearer())], b"").await
}

/// A guard with an admin endpoint (`admin_extra`: more keys under `admin:`) and one route
/// `test` (`route_extra`: route keys; `upstream_extra`: upstream keys) in front of `upstream`.
struct Console {
    dir: TestDir,
    _guard: Proc,
    admin: SocketAddr,
    listen: SocketAddr,
}

fn start(
    upstream: SocketAddr,
    admin_extra: &str,
    route_extra: &str,
    upstream_extra: &str,
) -> Console {
    let dir = TestDir::new();
    std::fs::write(dir.path("token"), format!("{TOKEN}\n")).unwrap();
    let admin = free_port();
    let config = dir.path("guard.yaml");
    std::fs::write(
        &config,
        format!(
            "state_dir: {}\nadmin:\n  listen: {admin}\n{admin_extra}{}",
            dir.path("state").display(),
            route_yaml(upstream, route_extra, "", upstream_extra)
        ),
    )
    .unwrap();
    let (guard, listen, _logs) = start_guard(&config);
    Console {
        dir,
        _guard: guard,
        admin,
        listen: listen.parse().unwrap(),
    }
}

const WITH_TOKEN: &str = "  token_file: token\n";

/// Polls until `check` holds (bounded).
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn routes_and_connections_are_listed_and_one_connection_is_closed_by_id() {
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let c = start(upstream.addr, WITH_TOKEN, "", "");
    let mut a = Client::plain(c.listen).await;
    let mut b = Client::plain(c.listen).await;
    assert_eq!(ack_of(&a.send(&message("A-1", 200)).await).0, AckCode::AA);
    assert_eq!(ack_of(&b.send(&message("B-1", 200)).await).0, AckCode::AA);
    assert_eq!(ack_of(&b.send(&message("B-2", 200)).await).0, AckCode::AA);

    let routes = get_json(c.admin, "/api/v1/routes").await;
    let r = &routes[0];
    assert_eq!(r["name"], "test");
    assert_eq!(r["listen"], c.listen.to_string());
    assert_eq!(r["delivery"], "forward");
    assert_eq!(r["upstream"], upstream.addr.to_string());
    assert_eq!(r["upstream_up"], true);
    assert_eq!(r["paused"], false);
    assert_eq!(r["connections"], 2);
    assert_eq!(r["messages"]["AA"], 3, "{r}");
    assert!(r["queue"].is_null());

    let conns = get_json(c.admin, "/api/v1/connections?route=test").await;
    let conns = conns.as_array().unwrap();
    assert_eq!(conns.len(), 2, "{conns:?}");
    assert_ne!(conns[0]["id"], conns[1]["id"]);
    let by_messages = |n: u64| {
        conns
            .iter()
            .find(|c| c["messages"] == n)
            .unwrap_or_else(|| panic!("no connection with {n} messages: {conns:?}"))
            .clone()
    };
    let (ca, cb) = (by_messages(1), by_messages(2));
    for conn in [&ca, &cb] {
        assert_eq!(conn["route"], "test");
        assert!(conn["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert!(conn["identity"].is_null() && conn["tls"].is_null());
        assert!(conn["since"].as_str().unwrap().ends_with('Z'), "{conn}");
        assert!(conn["last_activity"].as_str().unwrap().ends_with('Z'));
        assert_eq!(conn["state"], "idle");
        assert!(conn["bytes_in"].as_u64().unwrap() >= 200 * conn["messages"].as_u64().unwrap());
        assert!(conn["bytes_out"].as_u64().unwrap() > 0);
    }
    assert_eq!(
        get_json(c.admin, "/api/v1/connections?route=test")
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let (status, _) = http(c.admin, "GET", "/api/v1/connections?route=nope", &[], b"").await;
    assert_eq!(status, 404);

    // Closing needs the token; an unknown id is 404; the right one closes exactly that socket.
    let id_b = cb["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/connections/{id_b}");
    assert_eq!(http(c.admin, "DELETE", &path, &[], b"").await.0, 401);
    let wrong = [("Authorization", "Bearer not-the-token")];
    assert_eq!(http(c.admin, "DELETE", &path, &wrong, b"").await.0, 401);
    assert_eq!(
        act(c.admin, "DELETE", "/api/v1/connections/999999").await.0,
        404
    );
    let (status, body) = act(c.admin, "DELETE", &path).await;
    assert_eq!(status, 200, "{body}");
    assert!(b.is_closed().await, "the closed connection is closed");
    assert_eq!(ack_of(&a.send(&message("A-2", 200)).await).0, AckCode::AA);
    eventually("one connection left", async || {
        get_json(c.admin, "/api/v1/connections")
            .await
            .as_array()
            .unwrap()
            .len()
            == 1
    })
    .await;

    // The terminal: `status --json` shows the same, `disconnect` closes the other one.
    let url = format!("http://{}", c.admin);
    let out = Command::new(BIN)
        .args(["status", "--admin", &url, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["routes"][0]["name"], "test");
    assert_eq!(shown["connections"][0]["id"], ca["id"]);
    let table = Command::new(BIN)
        .args(["status", "--admin", &url])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("ROUTE") && table.contains("test\t"),
        "{table}"
    );
    let token_file = c.dir.path("token");
    let id_a = ca["id"].as_str().unwrap();
    let without = Command::new(BIN)
        .args(["disconnect", "--admin", &url, id_a])
        .output()
        .unwrap();
    assert!(!without.status.success(), "no token, not closed");
    let out = Command::new(BIN)
        .args(["disconnect", "--admin", &url, "--token-file"])
        .arg(&token_file)
        .arg(id_a)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(a.is_closed().await);
}

#[tokio::test]
async fn disconnect_waits_for_the_ack_in_flight_unless_now() {
    let upstream = FakeUpstream::start(Behaviour::LateAck(Duration::from_millis(800))).await;
    let c = start(upstream.addr, WITH_TOKEN, "", "");
    let mut a = Client::plain(c.listen).await;
    a.send_raw(&mllp_guard::wire::codec::encode(&message("SLOW-1", 100)))
        .await;
    let mut listed = Value::Null;
    eventually("the message is in flight", async || {
        listed = get_json(c.admin, "/api/v1/connections").await[0].clone();
        listed["state"] == "awaiting_ack"
    })
    .await;
    let id = listed["id"].as_str().unwrap().to_string();
    assert_eq!(
        act(c.admin, "DELETE", &format!("/api/v1/connections/{id}"))
            .await
            .0,
        200
    );
    let ack = a
        .read_ack()
        .await
        .expect("the ack in flight is written first");
    assert_eq!(ack_of(&ack).0, AckCode::AA);
    assert!(a.is_closed().await);

    // `?now=true` drops it at once, ack or not.
    let mut b = Client::plain(c.listen).await;
    b.send_raw(&mllp_guard::wire::codec::encode(&message("SLOW-2", 100)))
        .await;
    eventually("the second message is in flight", async || {
        listed = get_json(c.admin, "/api/v1/connections").await[0].clone();
        listed["state"] == "awaiting_ack"
    })
    .await;
    let id = listed["id"].as_str().unwrap().to_string();
    let now = format!("/api/v1/connections/{id}?now=true");
    assert_eq!(act(c.admin, "DELETE", &now).await.0, 200);
    assert!(b.read_ack().await.is_none(), "closed before its ack");
}

#[tokio::test]
async fn token_host_and_bad_request_rules() {
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    // No token_file: reads open, changes 403.
    let open = start(upstream.addr, "", "", "");
    assert_eq!(
        http(open.admin, "GET", "/api/v1/routes", &[], b"").await.0,
        200
    );
    assert_eq!(
        act(open.admin, "POST", "/api/v1/routes/test/pause").await.0,
        403
    );
    assert_eq!(act(open.admin, "PUT", "/api/v1/log-level").await.0, 403);

    // protect_reads: reads need the token too; the Host check; 404, 405, 413.
    let extra =
        "  token_file: token\n  protect_reads: true\n  allowed_hosts: [guard.example.org]\n";
    let c = start(upstream.addr, extra, "", "");
    let auth = bearer();
    for path in ["/api/v1/routes", "/metrics", "/", "/healthz"] {
        assert_eq!(http(c.admin, "GET", path, &[], b"").await.0, 401, "{path}");
        let (status, _) = http(c.admin, "GET", path, &[("Authorization", &auth)], b"").await;
        assert_eq!(status, 200, "{path}");
    }
    let with = |host: &'static str| [("Authorization", auth.clone()), ("Host", host.to_string())];
    for (host, expected) in [
        ("evil.example", 403),
        ("evil.example:80", 403),
        ("guard.example.org", 200),
        ("localhost:1", 200),
    ] {
        let headers = with(host);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, _) = http(c.admin, "GET", "/api/v1/routes", &headers, b"").await;
        assert_eq!(status, expected, "Host: {host}");
    }
    let own = c.admin.to_string();
    let headers = [("Authorization", auth.as_str()), ("Host", own.as_str())];
    assert_eq!(
        http(c.admin, "GET", "/api/v1/routes", &headers, b"")
            .await
            .0,
        200
    );

    let (status, body) = act(c.admin, "GET", "/api/v1/nothing").await;
    assert_eq!(status, 404);
    assert!(
        body.contains("/api/v1/connections") && body.contains("/metrics"),
        "{body}"
    );
    assert_eq!(
        act(c.admin, "GET", "/api/v1/routes/test/pause").await.0,
        405
    );
    assert_eq!(act(c.admin, "POST", "/api/v1/routes").await.0, 405);
    assert_eq!(
        act(c.admin, "POST", "/api/v1/routes/nope/pause").await.0,
        404
    );
    let big = vec![b'x'; 64 * 1024];
    let headers = [("Authorization", auth.as_str())];
    let (status, _) = http(c.admin, "PUT", "/api/v1/log-level", &headers, &big).await;
    assert_eq!(status, 413);

    // The log level: read, changed, refused when invalid.
    let (status, body) = act(c.admin, "GET", "/api/v1/log-level").await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["filter"],
        "debug"
    );
    let filter = b"warn,mllp_guard::audit=info";
    let (status, body) = http(c.admin, "PUT", "/api/v1/log-level", &headers, filter).await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = act(c.admin, "GET", "/api/v1/log-level").await;
    assert!(body.contains("warn,mllp_guard::audit=info"), "{body}");
    let (status, body) = http(
        c.admin,
        "PUT",
        "/api/v1/log-level",
        &headers,
        b"info,x=loud",
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("invalid log filter"), "{body}");
}

/// The control ids of the audit lines logged until the one for `last` (bounded), with their
/// levels.
fn audit_lines_until(logs: &std::sync::mpsc::Receiver<String>, last: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let Ok(line) = logs.recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        if v["target"] != "mllp_guard::audit" {
            continue;
        }
        let id = v["control_id"].as_str().unwrap().to_string();
        seen.push(format!("{id} {}", v["level"].as_str().unwrap()));
        if id == last {
            return seen;
        }
    }
    panic!("no audit line for {last} within 10 s; saw {seen:?}");
}

#[tokio::test]
async fn the_log_level_set_at_run_time_decides_which_audit_lines_reach_stderr() {
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let dir = TestDir::new();
    std::fs::write(dir.path("token"), format!("{TOKEN}\n")).unwrap();
    let admin = free_port();
    let config = dir.path("guard.yaml");
    let rule = "    rules:\n      - name: no-orders\n        match: { message_type: [\"ORM^*\"] }\n        action: reject\n";
    std::fs::write(
        &config,
        format!(
            "admin:\n  listen: {admin}\n{WITH_TOKEN}{}",
            route_yaml(upstream.addr, rule, "", "")
        ),
    )
    .unwrap();
    let (_guard, listen, logs) = start_guard(&config);
    let mut client = Client::plain(listen.parse().unwrap()).await;
    let order = |id: &str| {
        String::from_utf8(message(id, 100))
            .unwrap()
            .replace("ADT^A01^ADT_A01", "ORM^O01")
            .into_bytes()
    };
    let headers = [("Authorization", bearer())];
    let headers = [("Authorization", headers[0].1.as_str())];
    let mut round = async |n: u32, filter: Option<&str>| {
        if let Some(filter) = filter {
            let (status, body) = http(
                admin,
                "PUT",
                "/api/v1/log-level",
                &headers,
                filter.as_bytes(),
            )
            .await;
            assert_eq!(status, 200, "{body}");
        }
        let (passed, refused) = (format!("A-{n}"), format!("R-{n}"));
        assert_eq!(
            ack_of(&client.send(&message(&passed, 100)).await).0,
            AckCode::AA
        );
        assert_eq!(ack_of(&client.send(&order(&refused)).await).0, AckCode::AR);
    };
    // Started at debug: both lines.
    round(1, None).await;
    assert_eq!(audit_lines_until(&logs, "R-1"), ["A-1 INFO", "R-1 WARN"]);
    // At warn, a forwarded message's line (INFO) is left out; a refusal's (WARN) is kept. The
    // lines of one connection come in order, so R-2's line ends the wait for A-2's.
    round(2, Some("warn")).await;
    assert_eq!(audit_lines_until(&logs, "R-2"), ["R-2 WARN"]);
    round(3, Some("warn,mllp_guard::audit=info")).await;
    assert_eq!(audit_lines_until(&logs, "R-3"), ["A-3 INFO", "R-3 WARN"]);
    round(4, Some("info,mllp_guard::audit=off")).await;
    round(5, Some("info")).await;
    assert_eq!(audit_lines_until(&logs, "R-5"), ["A-5 INFO", "R-5 WARN"]);
}

#[tokio::test]
async fn a_paused_forward_route_refuses_connections_and_answers_ae_until_resumed() {
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let c = start(upstream.addr, WITH_TOKEN, "", "");
    let mut open = Client::plain(c.listen).await;
    assert_eq!(
        ack_of(&open.send(&message("P-0", 100)).await).0,
        AckCode::AA
    );
    let (status, body) = act(c.admin, "POST", "/api/v1/routes/test/pause").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["paused"],
        true
    );
    let (code, _, text) = ack_of(&open.send(&message("P-1", 100)).await);
    assert_eq!((code, text.as_str()), (AckCode::AE, "route paused"));
    // Refused at accept with a reset: the connect itself may already see it.
    match Client::plain_from(c.listen, "127.0.0.1".parse().unwrap()).await {
        Ok(mut late) => assert!(late.is_closed().await, "new connections are refused"),
        Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset),
    }
    assert_eq!(get_json(c.admin, "/api/v1/routes").await[0]["paused"], true);
    let (status, ready) = http(c.admin, "GET", "/readyz", &[], b"").await;
    assert_eq!(status, 503, "{ready}");
    assert!(ready.contains("paused"), "{ready}");
    let (_, metrics) = http(c.admin, "GET", "/metrics", &[], b"").await;
    assert!(
        metrics.contains("mllp_guard_route_paused{route=\"test\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        upstream.received.lock().unwrap().len(),
        1,
        "nothing forwarded while paused"
    );

    assert_eq!(
        act(c.admin, "POST", "/api/v1/routes/test/resume").await.0,
        200
    );
    assert_eq!(
        ack_of(&open.send(&message("P-2", 100)).await).0,
        AckCode::AA
    );
    let mut again = Client::plain(c.listen).await;
    assert_eq!(
        ack_of(&again.send(&message("P-3", 100)).await).0,
        AckCode::AA
    );
    assert_eq!(http(c.admin, "GET", "/readyz", &[], b"").await.0, 200);
}

#[tokio::test]
async fn a_paused_store_and_forward_route_queues_and_delivers_after_resume() {
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let sf = "    delivery: store-and-forward\n    retry: { initial: 50ms, max: 100ms }\n";
    let c = start(upstream.addr, WITH_TOKEN, sf, "");
    assert_eq!(
        act(c.admin, "POST", "/api/v1/routes/test/pause").await.0,
        200
    );
    let mut client = Client::plain(c.listen).await;
    for i in 0..3 {
        let ack = client.send(&message(&format!("Q-{i}"), 100)).await;
        assert_eq!(
            ack_of(&ack).0,
            AckCode::AA,
            "accepted and queued while paused"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        upstream.received.lock().unwrap().len(),
        0,
        "nothing delivered while paused"
    );
    let r = &get_json(c.admin, "/api/v1/routes").await[0];
    assert_eq!(r["delivery"], "store-and-forward");
    assert_eq!(r["queue"]["pending"], 3, "{r}");
    assert!(r["queue"]["oldest_age_s"].as_f64().unwrap() > 0.0);
    assert_eq!(r["queue"]["dead_letters"], 0);
    assert_eq!(
        http(c.admin, "GET", "/readyz", &[], b"").await.0,
        200,
        "still accepting"
    );
    assert_eq!(
        act(c.admin, "POST", "/api/v1/routes/test/resume").await.0,
        200
    );
    eventually("the queue is delivered", async || {
        upstream.received.lock().unwrap().len() == 3
    })
    .await;
}

#[tokio::test]
async fn reconnect_reopens_the_pooled_upstream_connection() {
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let c = start(upstream.addr, WITH_TOKEN, "", "      connections: 1\n");
    let mut client = Client::plain(c.listen).await;
    assert_eq!(
        ack_of(&client.send(&message("R-1", 100)).await).0,
        AckCode::AA
    );
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 1);
    let (status, body) = act(c.admin, "POST", "/api/v1/routes/test/reconnect").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["closed"].as_u64(), v["opened"].as_u64()),
        (Some(1), Some(1))
    );
    eventually("the receiver sees a new connection", async || {
        upstream.connections.load(Ordering::SeqCst) == 2
    })
    .await;
    assert_eq!(
        ack_of(&client.send(&message("R-2", 100)).await).0,
        AckCode::AA
    );
    assert_eq!(
        upstream.connections.load(Ordering::SeqCst),
        2,
        "the new one carries it"
    );
    assert_eq!(
        act(c.admin, "POST", "/api/v1/routes/nope/reconnect")
            .await
            .0,
        404
    );

    // Paired: the session's own connection is replaced at its next message.
    let paired_upstream = FakeUpstream::start(Behaviour::Ack).await;
    let p = start(paired_upstream.addr, WITH_TOKEN, "", "");
    let mut sender = Client::plain(p.listen).await;
    assert_eq!(
        ack_of(&sender.send(&message("PR-1", 100)).await).0,
        AckCode::AA
    );
    assert_eq!(
        ack_of(&sender.send(&message("PR-2", 100)).await).0,
        AckCode::AA
    );
    assert_eq!(paired_upstream.connections.load(Ordering::SeqCst), 1);
    assert_eq!(
        act(p.admin, "POST", "/api/v1/routes/test/reconnect")
            .await
            .0,
        200
    );
    assert_eq!(
        ack_of(&sender.send(&message("PR-3", 100)).await).0,
        AckCode::AA
    );
    assert_eq!(
        paired_upstream.connections.load(Ordering::SeqCst),
        2,
        "reopened for PR-3"
    );
}

#[tokio::test]
async fn a_non_loopback_admin_address_without_tls_is_warned_about() {
    let dir = TestDir::new();
    let port = free_port().port();
    let config = dir.path("guard.yaml");
    let upstream: SocketAddr = "127.0.0.1:9".parse().unwrap();
    std::fs::write(
        &config,
        format!(
            "admin:\n  listen: 0.0.0.0:{port}\n{}",
            route_yaml(upstream, "", "", "")
        ),
    )
    .unwrap();
    let (_guard, logs) = crate::cli::spawn_guard(&config);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            Instant::now() < deadline,
            "no warning about the admin address"
        );
        let Ok(line) = logs.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        if line.contains("listens beyond loopback without TLS") {
            assert!(line.contains("\"level\":\"WARN\""), "{line}");
            break;
        }
    }
}

/// Dead letters through the API on a queue backend: one message the receiver refuses until
/// told otherwise is given up, listed (metadata only) and replayed.
pub async fn dead_letters_are_listed_and_replayed(queue_keys: &str) {
    let upstream = FakeUpstream::start(Behaviour::CodeFor(AckCode::AE, "DEAD")).await;
    let route = format!(
        "    delivery: store-and-forward\n{queue_keys}    retry: {{ initial: 50ms, max: 100ms, max_attempts: 2 }}\n"
    );
    let c = start(upstream.addr, WITH_TOKEN, &route, "");
    let mut client = Client::plain(c.listen).await;
    assert_eq!(
        ack_of(&client.send(&message("DEAD-1", 150)).await).0,
        AckCode::AA
    );
    let mut letters = Value::Null;
    eventually("a dead letter", async || {
        let (status, body) =
            http(c.admin, "GET", "/api/v1/dead-letters?route=test", &[], b"").await;
        letters = serde_json::from_str(&body).unwrap_or(Value::Null);
        status == 200 && letters.as_array().is_some_and(|a| a.len() == 1)
    })
    .await;
    let letter = &letters[0];
    assert_eq!(letter["msh10"], "DEAD-1");
    assert_eq!(letter["msh9"], "ADT^A01^ADT_A01");
    assert!(letter["size"].as_u64().unwrap() >= 150);
    assert!(
        letter["reason"].as_str().unwrap().contains("gave up"),
        "{letter}"
    );
    assert!(letter.get("payload").is_none(), "metadata only");
    let (status, _) = http(c.admin, "GET", "/api/v1/dead-letters?route=nope", &[], b"").await;
    assert_eq!(status, 404);
    // The replay needs the token; the receiver still refuses DEAD-*, so it comes back once more.
    let path = "/api/v1/routes/test/dead-letters/replay";
    assert_eq!(http(c.admin, "POST", path, &[], b"").await.0, 401);
    let (status, body) = act(c.admin, "POST", path).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["replayed"], 1);
    let before = upstream.received.lock().unwrap().len();
    eventually("the replayed letter is sent again", async || {
        upstream.received.lock().unwrap().len() > before
    })
    .await;
}

#[tokio::test]
async fn dead_letters_on_the_embedded_queue() {
    dead_letters_are_listed_and_replayed("").await;
}

#[tokio::test]
#[ignore = "needs nats-server (apt-get install nats-server)"]
async fn dead_letters_on_jetstream() {
    let backend = crate::jetstream::Backend::jetstream();
    dead_letters_are_listed_and_replayed(&backend.yaml("")).await;
}

/// Headless Chromium's command (`chromium`, Debian's package).
fn chromium() -> PathBuf {
    crate::host::require(
        "chromium",
        &["--headless", "--version"],
        "apt-get install -y chromium",
    )
}

fn screenshot_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots/status.png")
}

#[tokio::test]
#[ignore = "needs chromium (apt-get install -y chromium)"]
async fn the_status_page_in_headless_chromium_shows_the_routes_and_a_live_connection() {
    let chromium = chromium();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let c = start(upstream.addr, WITH_TOKEN, "", "");
    let mut client = Client::plain(c.listen).await;
    assert_eq!(
        ack_of(&client.send(&message("PAGE-1", 100)).await).0,
        AckCode::AA
    );
    let refused = String::from_utf8(message("PAGE-BAD", 100))
        .unwrap()
        .replace("MSH|", "MSX|");
    let _ = client.send(refused.as_bytes()).await;
    let id = get_json(c.admin, "/api/v1/connections").await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let url = format!("http://localhost:{}/", c.admin.port());
    let profile = c.dir.path("chromium-profile");
    let run = move |args: &[&str]| {
        let mut cmd = Command::new(&chromium);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--virtual-time-budget=3000", "--window-size=1400,900"])
        .args(args)
        .arg(&url)
        .stdin(Stdio::null())
        .stderr(Stdio::null());
        let child = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let guard = Proc(child);
        wait_output(guard, Duration::from_secs(60))
    };
    // Without JavaScript the page is already complete: the guard renders the tables (headless
    // Chromium's --dump-dom needs script, so the document as served is read here).
    let (status, page) = http(c.admin, "GET", "/", &[], b"").await;
    assert_eq!(status, 200);
    assert!(page.contains("<td>test</td>"), "{page}");
    assert!(page.contains(&format!("data-id=\"{id}\"")), "{page}");
    assert!(
        !page.contains("src=\"http") && !page.contains("href=\"http"),
        "no external assets"
    );
    // The DOM after the page's script ran (and refreshed it).
    let again = run.clone();
    let dom = tokio::task::spawn_blocking(move || run(&["--dump-dom"]))
        .await
        .unwrap();
    assert!(dom.contains("<h2>Routes</h2>"), "{dom}");
    assert!(dom.contains("<td>test</td>"), "the route: {dom}");
    assert!(
        dom.contains(&c.listen.to_string()),
        "its listen address: {dom}"
    );
    assert!(
        dom.contains(&format!("data-id=\"{id}\"")),
        "the live connection: {dom}"
    );
    assert!(
        dom.contains("updated "),
        "the script refreshed the tables: {dom}"
    );
    assert!(
        dom.contains("PAGE-BAD") || dom.contains("header"),
        "a refusal: {dom}"
    );
    let shot = screenshot_path();
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&shot);
    let arg = format!("--screenshot={}", shot.display());
    tokio::task::spawn_blocking(move || again(&[&arg]))
        .await
        .unwrap();
    let png = std::fs::read(&shot).expect("a screenshot was written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    eprintln!("status page screenshot: {}", shot.display());
}

/// The stdout of a process, waiting at most `limit` (killed after).
fn wait_output(mut proc: Proc, limit: Duration) -> String {
    let mut stdout = proc.0.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
        out
    });
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if proc.0.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(proc);
    reader.join().unwrap()
}

/// A hundred idle or slow admin clients and a scrape every 100 ms until `stop`; how many
/// scrapes were answered.
async fn admin_load(admin: SocketAddr, stop: tokio_util::sync::CancellationToken) -> u32 {
    let mut clients = Vec::new();
    for i in 0..100 {
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let Ok(mut tcp) = tokio::net::TcpStream::connect(admin).await else {
                return;
            };
            if i % 2 == 0 {
                // Slow: a request head dribbled a byte at a time.
                for b in b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n" {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                    if tcp.write_all(&[*b]).await.is_err() {
                        return;
                    }
                }
            }
            stop.cancelled().await;
        }));
    }
    let mut count = 0u32;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while !stop.is_cancelled() {
        tick.tick().await;
        let (a, _) = http(admin, "GET", "/metrics", &[], b"").await;
        let (b, _) = http(admin, "GET", "/api/v1/connections", &[], b"").await;
        assert_eq!((a, b), (200, 200));
        count += 1;
    }
    for client in clients {
        let _ = client.await;
    }
    count
}

/// Message round trips (send to ack, one connection, one in flight) through the guard: sorted.
async fn round_trips(listen: SocketAddr, n: usize, tag: &str) -> Vec<Duration> {
    let mut client = Client::plain(listen).await;
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let msg = message(&format!("{tag}-{i}"), 1000);
        let started = Instant::now();
        let ack = client.send(&msg).await;
        took.push(started.elapsed());
        assert_eq!(ack_of(&ack).0, AckCode::AA);
    }
    took.sort();
    took
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_load_does_not_move_message_latency() {
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let c = start(upstream.addr, WITH_TOKEN, "", "");
    const N: usize = 1500;
    let _warm = round_trips(c.listen, 200, "WARM").await;
    let quiet = round_trips(c.listen, N, "QUIET").await;

    // A hundred admin clients that connect and never finish their request (idle or slow), and
    // a scrape of /metrics and /api/v1/connections every 100 ms, on their own thread and
    // runtime (so they do not compete with this test's client for its runtime), all bounded by
    // `stop`.
    let stop = tokio_util::sync::CancellationToken::new();
    let admin = c.admin;
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(admin_load(admin, stop))
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let loaded = round_trips(c.listen, N, "LOADED").await;
    stop.cancel();
    let scraped = load.join().unwrap();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    eprintln!(
        "message latency through the guard ({N} x 1 KiB, one connection): without admin load p50 {:.3} ms p99 {:.3} ms; with 100 idle/slow admin clients and {scraped} scrapes (every 100 ms) p50 {:.3} ms p99 {:.3} ms",
        ms(percentile(&quiet, 0.5)),
        ms(percentile(&quiet, 0.99)),
        ms(percentile(&loaded, 0.5)),
        ms(percentile(&loaded, 0.99)),
    );
    assert!(scraped >= 5, "the scrapes ran ({scraped})");
    // Generous: a shared 2-core machine is noisy; a lock or a stall shared with the admin side
    // would show as a multiple, not a fraction.
    let (q50, l50) = (percentile(&quiet, 0.5), percentile(&loaded, 0.5));
    assert!(
        l50 <= q50 * 3 + Duration::from_millis(2),
        "p50 moved from {q50:?} to {l50:?}"
    );
}

#[tokio::test]
async fn the_token_is_reloaded_with_the_config_and_the_admin_endpoint_can_speak_tls() {
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let tls = "  tls: { cert: guard.pem, key: guard.key }\n";
    let c = start(upstream.addr, &format!("{WITH_TOKEN}{tls}"), "", "");
    let cfg = c.dir.client_tls("ca.pem", None);
    let https = async |method: &str, path: &str, token: &str| -> (u16, String) {
        let tcp = tokio::net::TcpStream::connect(c.admin).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(cfg.clone())
            .connect(name, tcp)
            .await
            .expect("the admin endpoint speaks TLS");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n"
        );
        tls.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut response)).await;
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, text)
    };
    let (status, body) = https("GET", "/api/v1/routes", "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"name\":\"test\""), "{body}");
    // Plain HTTP to a TLS endpoint gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(c.admin).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut got)).await;
    assert!(!got.starts_with(b"HTTP/"), "plain HTTP is not answered");

    assert_eq!(
        https("POST", "/api/v1/routes/test/pause", TOKEN).await.0,
        200
    );
    // A new token: the config reloads (the token file is one of its inputs).
    std::fs::write(c.dir.path("token"), "the-new-token\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if https("POST", "/api/v1/routes/test/resume", TOKEN).await.0 == 401 {
            break;
        }
        assert!(Instant::now() < deadline, "the old token still works");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = https("POST", "/api/v1/routes/test/resume", "the-new-token").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_tls_connection_is_listed_with_its_identity_version_and_cipher() {
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let tls = "    tls:\n      cert: guard.pem\n      key: guard.key\n      client_ca: ca.pem\n";
    let c = start(upstream.addr, WITH_TOKEN, tls, "");
    let cfg = c.dir.client_tls("ca.pem", Some("lab"));
    let mut client = Client::tls(c.listen, cfg).await.unwrap();
    assert_eq!(
        ack_of(&client.send(&message("TLS-1", 100)).await).0,
        AckCode::AA
    );
    let conn = &get_json(c.admin, "/api/v1/connections").await[0];
    assert_eq!(conn["identity"], "lab.example.org", "{conn}");
    assert_eq!(conn["tls"]["version"], "TLSv1.3", "{conn}");
    assert!(
        conn["tls"]["cipher"]
            .as_str()
            .unwrap()
            .starts_with("TLS13_"),
        "{conn}"
    );
    assert_eq!(conn["messages"], 1);
}
