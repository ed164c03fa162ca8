//! Reloads while things run, through the binary (issue 28): a reload that fails changes
//! nothing (`log_payloads` included).

use std::net::SocketAddr;
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
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let Ok(line) = logs.recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["message"] == message {
            return v;
        }
        seen.push(line);
    }
    panic!("no log line {message:?} within 15 s; saw {seen:#?}");
}

const RELOADED: &str = "config reloaded";
const CLOSING: &str = "open connection no longer admitted by the reloaded config; closing it after its in-flight message";

/// Waits (bounded) for one log line of each message, in any order.
fn wait_lines<const N: usize>(
    logs: &std::sync::mpsc::Receiver<String>,
    messages: [&str; N],
) -> [serde_json::Value; N] {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut found: [Option<serde_json::Value>; N] = std::array::from_fn(|_| None);
    while Instant::now() < deadline && found.iter().any(Option::is_none) {
        let Ok(line) = logs.recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if let Some(i) = messages.iter().position(|m| v["message"] == *m) {
            found[i].get_or_insert(v);
        }
    }
    found.map(|v| v.unwrap_or_else(|| panic!("not all of {messages:?} logged within 15 s")))
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

/// One route `live` on `listen` with this allow list, extra route keys and upstream.
fn live(admin: SocketAddr, listen: SocketAddr, allow: &str, extra: &str, up: SocketAddr) -> String {
    format!(
        "admin:\n  listen: {admin}\nroutes:\n  - name: live\n    listen: {listen}\n    allow: [{allow}]\n{extra}    upstream:\n      address: {up}\n      ack_timeout: 5s\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrowing_allow_closes_an_open_connection_from_a_removed_address_after_its_in_flight_message(
) {
    let dir = TestDir::new();
    // Slow acks: a message is in flight while the reload happens.
    let upstream = FakeUpstream::start(Behaviour::LateAck(Duration::from_millis(800))).await;
    let (admin, listen) = (free_port(), free_port());
    let file = dir.path("guard.yaml");
    std::fs::write(
        &file,
        live(admin, listen, "127.0.0.1, 127.0.0.2", "", upstream.addr),
    )
    .unwrap();
    let (guard, logs) = spawn_guard_filtered(&file, "debug");
    wait_for(admin, "/readyz", 200).await;
    let mut kept = Client::plain_from(listen, "127.0.0.1".parse().unwrap())
        .await
        .unwrap();
    let mut removed = Client::plain_from(listen, "127.0.0.2".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(
        ack_of(&kept.send(&message("K-1", 200)).await).0,
        AckCode::AA
    );
    assert_eq!(
        ack_of(&removed.send(&message("X-1", 200)).await).0,
        AckCode::AA
    );

    // X-2 is in flight (the receiver answers after 800 ms) when allow loses 127.0.0.2.
    removed
        .send_raw(&mllp_guard::wire::codec::encode(&message("X-2", 200)))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::write(&file, live(admin, listen, "127.0.0.1", "", upstream.addr)).unwrap();
    hup(&guard);
    let [reloaded, closing] = wait_lines(&logs, [RELOADED, CLOSING]);
    assert_eq!(
        closing["peer"].as_str().unwrap().split(':').next(),
        Some("127.0.0.2"),
        "{closing}"
    );
    assert!(
        closing["reason"]
            .as_str()
            .unwrap()
            .contains("127.0.0.2 is no longer in allow"),
        "{closing}"
    );
    // The idle connection was checked at once; the one with a message in flight is checked
    // after it, later than the reload line.
    assert_eq!(reloaded["updated"], "live", "{reloaded}");
    assert_eq!(reloaded["open_connections"], 2, "{reloaded}");
    assert_eq!(reloaded["rechecked"], 1, "{reloaded}");
    assert_eq!(reloaded["closed"], 0, "{reloaded}");
    assert_eq!(reloaded["not_yet_rechecked"], 1, "{reloaded}");
    // The in-flight message was answered with the receiver's ack, then the connection closed.
    let ack = removed
        .read_ack()
        .await
        .expect("X-2 answered before the close");
    assert_eq!(
        ack_of(&ack),
        (
            AckCode::AA,
            "X-2".into(),
            "answered by the test upstream".into()
        )
    );
    assert!(
        removed.is_closed().await,
        "closed after its in-flight message"
    );
    // The address still allowed goes on.
    assert_eq!(
        ack_of(&kept.send(&message("K-2", 200)).await).0,
        AckCode::AA
    );
    drop(guard);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_client_ca_closes_open_connections_of_clients_the_new_ca_did_not_issue() {
    let dir = TestDir::new();
    let other = TestDir::new(); // another CA
    std::fs::copy(other.path("ca.pem"), dir.path("other-ca.pem")).unwrap();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let (admin, listen) = (free_port(), free_port());
    let tls = |ca: &str| {
        format!("    tls:\n      cert: guard.pem\n      key: guard.key\n      client_ca: {ca}\n")
    };
    let file = dir.path("guard.yaml");
    std::fs::write(
        &file,
        live(admin, listen, "127.0.0.1", &tls("ca.pem"), upstream.addr),
    )
    .unwrap();
    let (guard, logs) = spawn_guard_filtered(&file, "debug");
    wait_for(admin, "/readyz", 200).await;
    let old_client = dir.client_tls("ca.pem", Some("lab"));
    let mut held = Client::tls(listen, old_client.clone()).await.unwrap();
    assert_eq!(
        ack_of(&held.send(&message("T-1", 200)).await).0,
        AckCode::AA
    );

    std::fs::write(
        &file,
        live(
            admin,
            listen,
            "127.0.0.1",
            &tls("other-ca.pem"),
            upstream.addr,
        ),
    )
    .unwrap();
    hup(&guard);
    let [reloaded, closing] = wait_lines(&logs, [RELOADED, CLOSING]);
    assert!(
        closing["reason"]
            .as_str()
            .unwrap()
            .contains("client certificate is no longer accepted"),
        "{closing}"
    );
    assert!(held.is_closed().await, "the old CA's client was closed");
    assert_eq!(reloaded["rechecked"], 1, "{reloaded}");
    assert_eq!(reloaded["closed"], 1, "{reloaded}");
    // A client of the new CA is served (it trusts the guard's certificate, from the first CA).
    let new_client = mllp_guard::tls::client_config(
        &dir.path("ca.pem"),
        Some(&other.path("lab.pem")),
        Some(&other.path("lab.key")),
    )
    .unwrap();
    let mut fresh = Client::tls(listen, new_client).await.unwrap();
    assert_eq!(
        ack_of(&fresh.send(&message("T-2", 200)).await).0,
        AckCode::AA
    );
    drop(guard);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_connection_follows_a_changed_upstream_address_from_its_next_message() {
    let dir = TestDir::new();
    let first = FakeUpstream::start(Behaviour::Ack).await;
    let second = FakeUpstream::start(Behaviour::Ack).await;
    let (admin, listen) = (free_port(), free_port());
    let file = dir.path("guard.yaml");
    std::fs::write(&file, live(admin, listen, "127.0.0.1", "", first.addr)).unwrap();
    let (guard, logs) = spawn_guard_filtered(&file, "debug");
    wait_for(admin, "/readyz", 200).await;
    let mut open = Client::plain(listen).await;
    assert_eq!(
        ack_of(&open.send(&message("U-1", 200)).await).0,
        AckCode::AA
    );

    std::fs::write(&file, live(admin, listen, "127.0.0.1", "", second.addr)).unwrap();
    hup(&guard);
    let reloaded = wait_line(&logs, RELOADED);
    assert_eq!(reloaded["rechecked"], 1, "{reloaded}");
    assert_eq!(reloaded["closed"], 0, "{reloaded}");
    let (code, id, _) = ack_of(&open.send(&message("U-2", 200)).await);
    assert_eq!((code, id.as_str()), (AckCode::AA, "U-2"));
    let ids = |u: &FakeUpstream| u.received().iter().map(|p| id_of(p)).collect::<Vec<_>>();
    assert_eq!(ids(&first), ["U-1"], "the old address got nothing more");
    assert_eq!(
        ids(&second),
        ["U-2"],
        "the open connection's next message went to the new address"
    );
    drop(guard);
}

/// Routes named `names[i]` listening on `ports[i]`, each with its own upstream.
fn routes(admin: SocketAddr, names: &[&str], ports: &[SocketAddr], ups: &[SocketAddr]) -> String {
    let mut yaml = format!("admin:\n  listen: {admin}\nroutes:\n");
    for ((name, listen), up) in names.iter().zip(ports).zip(ups) {
        yaml.push_str(&format!(
            "  - name: {name}\n    listen: {listen}\n    allow: [127.0.0.1]\n    upstream:\n      address: {up}\n"
        ));
    }
    yaml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_route_and_routes_that_swap_ports_reload_without_a_restart() {
    let dir = TestDir::new();
    let a = FakeUpstream::start(Behaviour::Ack).await;
    let b = FakeUpstream::start(Behaviour::Ack).await;
    let (admin, p1, p2) = (free_port(), free_port(), free_port());
    let file = dir.path("guard.yaml");
    std::fs::write(
        &file,
        routes(admin, &["lab", "ward"], &[p1, p2], &[a.addr, b.addr]),
    )
    .unwrap();
    let (guard, logs) = spawn_guard_filtered(&file, "debug");
    wait_for(admin, "/readyz", 200).await;
    let ids = |u: &FakeUpstream| u.received().iter().map(|p| id_of(p)).collect::<Vec<_>>();
    let send = |port: SocketAddr, id: &'static str| async move {
        let mut c = Client::plain(port).await;
        ack_of(&c.send(&message(id, 200)).await).0
    };
    assert_eq!(send(p1, "N-1").await, AckCode::AA);

    // Rename `lab` to `lab2` on the same port: handed over, not rebound.
    std::fs::write(
        &file,
        routes(admin, &["lab2", "ward"], &[p1, p2], &[a.addr, b.addr]),
    )
    .unwrap();
    hup(&guard);
    let [reloaded] = wait_lines(&logs, [RELOADED]);
    assert_eq!(reloaded["added"], "lab2", "{reloaded}");
    assert_eq!(reloaded["removed"], "lab", "{reloaded}");
    assert_eq!(send(p1, "N-2").await, AckCode::AA);
    assert_eq!(ids(&a), ["N-1", "N-2"]);

    // Swap the ports of the two routes: each takes the other's listener.
    std::fs::write(
        &file,
        routes(admin, &["lab2", "ward"], &[p2, p1], &[a.addr, b.addr]),
    )
    .unwrap();
    hup(&guard);
    let [reloaded] = wait_lines(&logs, [RELOADED]);
    assert_eq!(reloaded["updated"], "lab2, ward", "{reloaded}");
    assert_eq!(send(p2, "S-1").await, AckCode::AA);
    assert_eq!(send(p1, "S-2").await, AckCode::AA);
    assert_eq!(
        ids(&a),
        ["N-1", "N-2", "S-1"],
        "port 2 now goes to lab2's upstream"
    );
    assert_eq!(ids(&b), ["S-2"], "port 1 now goes to ward's upstream");
    assert_eq!(crate::reload::reloads(admin, "failure").await, 0.0);
    drop(guard);
}

/// Issue 28, finding 9: with TLS, client CAs and rules on every route, a change to one route
/// lists only that one as updated.
#[tokio::test]
async fn a_reload_of_tls_routes_with_rules_lists_only_the_route_that_changed() {
    let dir = TestDir::new();
    let up = FakeUpstream::start(Behaviour::Ack).await;
    let admin = free_port();
    let route = |name: &str, max: &str| {
        format!(
            "  - name: {name}\n    listen: 127.0.0.1:0\n    allow: [127.0.0.1]\n    max_message_bytes: {max}\n    tls:\n      cert: guard.pem\n      key: guard.key\n      client_ca: ca.pem\n    rules:\n      - name: no-adt\n        match: {{ message_type: [\"ADT^*\"] }}\n        action: reject\n    upstream:\n      address: {}\n",
            up.addr
        )
    };
    let config = |b_max: &str| {
        format!(
            "admin:\n  listen: {admin}\nroutes:\n{}{}{}",
            route("a", "1MiB"),
            route("b", b_max),
            route("c", "1MiB")
        )
    };
    let file = dir.path("guard.yaml");
    std::fs::write(&file, config("1MiB")).unwrap();
    let (guard, logs) = spawn_guard_filtered(&file, "debug");
    wait_for(admin, "/readyz", 200).await;
    std::fs::write(&file, config("2MiB")).unwrap();
    hup(&guard);
    let [reloaded] = wait_lines(&logs, [RELOADED]);
    assert_eq!(reloaded["updated"], "b", "{reloaded}");
    assert_eq!(reloaded["added"], "none", "{reloaded}");
    assert_eq!(reloaded["removed"], "none", "{reloaded}");
    drop(guard);
}
