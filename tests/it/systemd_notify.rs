//! systemd readiness through the real binary: a unix datagram socket stands in for systemd's
//! `$NOTIFY_SOCKET`; the guard must say `READY=1` only once its listeners accept, announce a
//! reload (`RELOADING=1` then `READY=1`) and its drain (`STOPPING=1`), ping `WATCHDOG=1` at half
//! of `$WATCHDOG_USEC`, and never say ready when a listener cannot be bound.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn config(dir: &TestDir, listens: &[SocketAddr], upstream: SocketAddr) -> std::path::PathBuf {
    let mut yaml = String::from("routes:\n");
    for (i, listen) in listens.iter().enumerate() {
        yaml.push_str(&format!(
            "  - name: r{i}\n    listen: {listen}\n    allow: [127.0.0.1]\n    upstream: {{ address: {upstream} }}\n"
        ));
    }
    let file = dir.path("guard.yaml");
    std::fs::write(&file, yaml).unwrap();
    file
}

/// `mllp-guard run` with `$NOTIFY_SOCKET` (and `$WATCHDOG_USEC` when given).
fn spawn(config: &std::path::Path, socket: &std::path::Path, watchdog_usec: Option<u64>) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config"])
        .arg(config)
        .env("NOTIFY_SOCKET", socket)
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(usec) = watchdog_usec {
        cmd.env("WATCHDOG_USEC", usec.to_string());
    }
    Proc(cmd.spawn().unwrap())
}

/// The next datagram, as text; `None` after `limit`.
fn next(socket: &UnixDatagram, limit: Duration) -> Option<String> {
    socket.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Reads datagrams (bounded) until one carries `state`, skipping watchdog pings; returns the
/// datagrams skipped.
fn wait_for_state(socket: &UnixDatagram, state: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut skipped = Vec::new();
    while Instant::now() < deadline {
        let Some(datagram) = next(socket, Duration::from_millis(500)) else {
            continue;
        };
        if datagram.lines().any(|l| l == state) {
            return skipped;
        }
        skipped.push(datagram);
    }
    panic!("no {state} within 20 s; got {skipped:?}");
}

fn signal(guard: &Proc, name: &str) {
    let pid = guard.0.id().to_string();
    assert!(Command::new("kill")
        .args([name, &pid])
        .status()
        .unwrap()
        .success());
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_comes_once_every_listener_accepts_and_reload_stop_and_watchdog_are_announced() {
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let dir = TestDir::new();
    let listens = [free_port(), free_port()];
    let file = config(&dir, &listens, upstream.addr);
    let socket_path = dir.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let mut guard = spawn(&file, &socket_path, Some(400_000));

    // The very first thing systemd hears is READY=1, and by then both listeners accept.
    let first = next(&socket, Duration::from_secs(20)).expect("a datagram on NOTIFY_SOCKET");
    assert!(first.lines().any(|l| l == "READY=1"), "first: {first:?}");
    for listen in listens {
        TcpStream::connect_timeout(&listen, Duration::from_millis(500))
            .unwrap_or_else(|e| panic!("READY=1 said, but {listen} does not accept: {e}"));
    }
    // And a message goes through right away.
    let mut client = Client::plain(listens[0]).await;
    let (code, _, _) = ack_of(&client.send(&message("READY-1", 200)).await);
    assert_eq!(code, mllp_guard::wire::hl7::AckCode::AA);

    // WATCHDOG=1 at half of WATCHDOG_USEC (200 ms): several within a second and a half.
    let started = Instant::now();
    let mut pings = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        if next(&socket, Duration::from_millis(300)).is_some_and(|d| d == "WATCHDOG=1") {
            pings += 1;
        }
    }
    assert!((4..=10).contains(&pings), "{pings} watchdog pings in 1.5 s");

    // A reload is announced: RELOADING=1, then READY=1 again.
    signal(&guard, "-HUP");
    wait_for_state(&socket, "RELOADING=1");
    let between = wait_for_state(&socket, "READY=1");
    assert!(
        between.iter().all(|d| d == "WATCHDOG=1"),
        "between RELOADING=1 and READY=1: {between:?}"
    );

    // SIGTERM: STOPPING=1 before the guard exits.
    signal(&guard, "-TERM");
    wait_for_state(&socket, "STOPPING=1");
    let deadline = Instant::now() + Duration::from_secs(20);
    while guard.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the guard did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_guard_that_cannot_bind_a_listener_never_says_ready() {
    let dir = TestDir::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listens = [free_port(), taken.local_addr().unwrap()];
    let file = config(&dir, &listens, free_port());
    let socket_path = dir.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let mut guard = spawn(&file, &socket_path, None);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = guard.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the guard did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    assert_eq!(next(&socket, Duration::from_millis(200)), None);
}
