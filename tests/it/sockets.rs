//! The `socket:` blocks and `upstream.local_address`, through the binary: the options are read
//! back from the running guard's own sockets (found with `ss -p`, duplicated with pidfd_getfd,
//! then getsockopt), and the receiver sees the configured source address.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use mllp_guard::wire::hl7::AckCode;

use crate::cli::start_guard;
use crate::harness::*;

/// One socket's options as getsockopt reads them.
#[derive(Debug, PartialEq, Eq)]
struct Options {
    nodelay: bool,
    send_buffer: usize,
    receive_buffer: usize,
    /// SO_LINGER: `None` when off, else its seconds.
    linger: Option<u64>,
}

/// Duplicates fd `fd` of process `pid` with pidfd_getfd(2) (syscall 438 on every Linux
/// architecture; needs ptrace rights over the guard, which its parent has as root or with
/// ptrace_scope 0) and prints its options. Python's ctypes, because the crate forbids unsafe.
const GETSOCKOPT_PY: &str = r#"
import ctypes, os, socket, struct, sys
pid, fd = int(sys.argv[1]), int(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)
pidfd = os.pidfd_open(pid)
dup = libc.syscall(438, pidfd, fd, 0)
if dup < 0:
    sys.exit("pidfd_getfd: " + os.strerror(ctypes.get_errno()))
s = socket.socket(fileno=dup)
onoff, secs = struct.unpack("ii", s.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8))
print(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
      s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
      s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
      secs if onoff else -1)
s.detach()
"#;

/// The options of the socket of process `pid` that `ss` finds with `filter` (e.g.
/// `sport = :2575`): read from the guard's own socket, not from the test's end.
fn options_of(pid: u32, filter: &str) -> Options {
    let fd = fd_of(pid, filter);
    let out = Command::new("python3")
        .args(["-c", GETSOCKOPT_PY, &pid.to_string(), &fd.to_string()])
        .output()
        .expect("python3 must be installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "reading fd {fd} of pid {pid} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<i64> = text
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(v.len(), 4, "{text}");
    Options {
        nodelay: v[0] != 0,
        send_buffer: v[1] as usize,
        receive_buffer: v[2] as usize,
        linger: (v[3] >= 0).then_some(v[3] as u64),
    }
}

/// The file descriptor, in process `pid`, of the established socket `ss` finds with `filter`.
fn fd_of(pid: u32, filter: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new("ss")
            .args(["-tnpH", "state", "established", filter])
            .output()
            .expect("ss (iproute2) must be installed");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mine = format!("pid={pid},fd=");
        if let Some(at) = text.find(&mine) {
            let rest = &text[at + mine.len()..];
            let end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            return rest[..end].parse().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no socket of the guard (pid {pid}) matches `{filter}` within 10 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads each of the guard's sockets back: the sender side (accepted on the route's port) and
/// the receiver side (connected to the receiver's port) carry their own block's options; Linux
/// reads back twice the buffer size set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_blocks_set_the_options_of_each_side_of_the_guard() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let config = dir.path("guard.yaml");
    std::fs::write(
        &config,
        route_yaml(
            upstream.addr,
            "    socket:\n      send_buffer: 64KiB\n      receive_buffer: 96KiB\n      linger: 0s\n      nodelay: false\n",
            "",
            "      socket: { send_buffer: 48KiB, receive_buffer: 40KiB, linger: 7s }\n",
        ),
    )
    .unwrap();
    let (guard, listen, _logs) = start_guard(&config);
    let pid = guard.0.id();
    let listen: SocketAddr = listen.parse().unwrap();
    let mut client = Client::plain(listen).await;
    let ack = client.send(&message("SOCK1", 200)).await;
    assert_eq!(ack_of(&ack).0, AckCode::AA);

    let sender_side = options_of(pid, &format!("sport = :{}", listen.port()));
    assert_eq!(
        sender_side,
        Options {
            nodelay: false,
            send_buffer: 2 * (64 << 10),
            receive_buffer: 2 * (96 << 10),
            linger: Some(0),
        }
    );
    let receiver_side = options_of(pid, &format!("dport = :{}", upstream.addr.port()));
    assert_eq!(
        receiver_side,
        Options {
            nodelay: true,
            send_buffer: 2 * (48 << 10),
            receive_buffer: 2 * (40 << 10),
            linger: Some(7),
        }
    );
    drop(guard);
}

/// Without `socket:` blocks nothing changes: TCP_NODELAY on, no linger, the kernel's buffers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_socket_blocks_nodelay_is_on_and_linger_off() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let config = dir.path("guard.yaml");
    std::fs::write(&config, route_yaml(upstream.addr, "", "", "")).unwrap();
    let (guard, listen, _logs) = start_guard(&config);
    let listen: SocketAddr = listen.parse().unwrap();
    let mut client = Client::plain(listen).await;
    let ack = client.send(&message("SOCK2", 200)).await;
    assert_eq!(ack_of(&ack).0, AckCode::AA);
    for filter in [
        format!("sport = :{}", listen.port()),
        format!("dport = :{}", upstream.addr.port()),
    ] {
        let options = options_of(guard.0.id(), &filter);
        assert!(options.nodelay, "{filter}");
        assert_eq!(options.linger, None, "{filter}");
    }
}

/// `local_address: 127.0.0.2`: the receiver sees its connection come from 127.0.0.2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_address_is_the_source_the_receiver_sees() {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let config = dir.path("guard.yaml");
    std::fs::write(
        &config,
        route_yaml(upstream.addr, "", "", "      local_address: 127.0.0.2\n"),
    )
    .unwrap();
    let (guard, listen, _logs) = start_guard(&config);
    let mut client = Client::plain(listen.parse().unwrap()).await;
    let ack = client.send(&message("LOCAL1", 200)).await;
    assert_eq!(ack_of(&ack).0, AckCode::AA);
    let peers = upstream.peers.lock().unwrap().clone();
    assert!(!peers.is_empty());
    for peer in peers {
        assert_eq!(peer.ip().to_string(), "127.0.0.2");
    }
    drop(guard);
}

/// `check` output for `yaml`: exit code and stderr.
fn check(dir: &TestDir, yaml: &str) -> (Option<i32>, String, String) {
    let file = dir.path("guard.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--print", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_refuses_local_address_with_transparent_source_at_its_line() {
    let dir = TestDir::new();
    let yaml = route_yaml(
        "127.0.0.1:2576".parse().unwrap(),
        "",
        "",
        "      transparent_source: true\n      local_address: 127.0.0.2\n",
    );
    let line = yaml
        .lines()
        .position(|l| l.contains("local_address"))
        .unwrap()
        + 1;
    let (code, _, stderr) = check(&dir, &yaml);
    assert_eq!(code, Some(2), "{stderr}");
    let shown = dir.path("guard.yaml").display().to_string();
    assert!(
        stderr.contains(&format!(
            "{shown}:{line}:22: routes[0].upstream.local_address"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("transparent_source"), "{stderr}");
}

#[test]
fn check_validates_socket_blocks_and_prints_them() {
    let dir = TestDir::new();
    let bad = route_yaml(
        "127.0.0.1:2576".parse().unwrap(),
        "    socket: { send_buffer: 12 apples, linger: 1500ms, nodelay: perhaps }\n",
        "",
        "      socket: { receive_buffer: 1KiB }\n      local_address: 127.0.0.2:99\n",
    );
    let (code, _, stderr) = check(&dir, &bad);
    assert_eq!(code, Some(2), "{stderr}");
    for path in [
        "routes[0].socket.send_buffer",
        "routes[0].socket.linger",
        "routes[0].socket.nodelay",
        "routes[0].upstream.socket.receive_buffer",
        "routes[0].upstream.local_address",
    ] {
        assert!(stderr.contains(path), "{path} not reported:\n{stderr}");
    }

    let good = route_yaml(
        "127.0.0.1:2576".parse().unwrap(),
        "    socket: { send_buffer: 256KiB, linger: 0s, nodelay: false }\n",
        "",
        "      socket: { receive_buffer: 1MiB }\n      local_address: 127.0.0.2\n",
    );
    let (code, stdout, stderr) = check(&dir, &good);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("socket: { send_buffer: 262144, linger: 0s, nodelay: false }"),
        "{stdout}"
    );
    assert!(
        stdout.contains("socket: { receive_buffer: 1048576, nodelay: true }"),
        "{stdout}"
    );
    assert!(stdout.contains("local_address: 127.0.0.2"), "{stdout}");
    // What --print shows is itself a valid config.
    let (code, _, stderr) = check(&dir, &stdout);
    assert_eq!(code, Some(0), "the printed config is refused: {stderr}");
}
