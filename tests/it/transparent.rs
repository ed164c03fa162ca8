//! Transparent mode for real, in network namespaces: a client in its own namespace connects to
//! a receiver in another; nftables' TPROXY hands the connection to the guard, which relays it
//! to the original destination from the client's own address (`transparent_source`), while the
//! allowlist and the audit trail see the real client. Needs root, `ip` and `nft`: ignored in a
//! normal run with that reason; `.ci/run` installs nftables and runs it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// Runs a command, returning whether it succeeded (output discarded).
fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run_stdin(args: &[&str], input: &str) {
    use std::io::Write;
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Why the test cannot run here, if it cannot.
fn unavailable() -> Option<String> {
    let euid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&euid.stdout).trim() != "0" {
        return Some(
            "not root (transparent mode needs CAP_NET_ADMIN and network namespaces)".into(),
        );
    }
    for tool in ["ip", "nft"] {
        if !sh(&["sh", "-c", &format!("command -v {tool}")]) {
            return Some(format!(
                "`{tool}` is not installed (apt-get install iproute2 nftables)"
            ));
        }
    }
    None
}

/// The namespaces, links, rules and routes of one test, removed on drop.
struct Lab {
    id: u32,
    b: u32,
}

impl Lab {
    fn ns(&self, side: &str) -> String {
        format!("mg{side}{}", self.id)
    }
    fn dev(&self, side: &str, end: u8) -> String {
        format!("mg{side}{}{end}", self.id)
    }
    fn net(&self, third: u8, host: u8) -> String {
        format!("10.{}.{third}.{host}", self.b)
    }
    fn mark(&self) -> String {
        format!("0x{:x}", 0x4d470000 + self.id)
    }
    fn table(&self) -> String {
        (40000 + self.id).to_string()
    }

    fn build(&self, guard_port: u16) {
        let (c, s) = (self.ns("c"), self.ns("s"));
        run(&["ip", "netns", "add", &c]);
        run(&["ip", "netns", "add", &s]);
        for (side, ns, third) in [("c", &c, 0u8), ("s", &s, 2u8)] {
            let (outer, inner) = (self.dev(side, 0), self.dev(side, 1));
            run(&[
                "ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ]);
            run(&["ip", "link", "set", &inner, "netns", ns]);
            run(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", self.net(third, 1)),
                "dev",
                &outer,
            ]);
            run(&["ip", "link", "set", &outer, "up"]);
            let inside = |args: &[&str]| {
                let mut full = vec!["ip", "netns", "exec", ns.as_str()];
                full.extend_from_slice(args);
                run(&full);
            };
            inside(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", self.net(third, if side == "c" { 2 } else { 5 })),
                "dev",
                &inner,
            ]);
            inside(&["ip", "link", "set", &inner, "up"]);
            inside(&["ip", "link", "set", "lo", "up"]);
            inside(&["ip", "route", "add", "default", "via", &self.net(third, 1)]);
        }
        // The documented rules: TPROXY what the client sends to the receiver's MLLP port to
        // the guard; replies to the guard's transparent sockets come back to this host.
        let rules = format!(
            "table ip {t} {{\n  chain pre {{\n    type filter hook prerouting priority mangle; policy accept;\n    iifname \"{server_side}\" meta l4proto tcp socket transparent 1 meta mark set {mark} accept\n    iifname \"{client_side}\" ip daddr {receiver} tcp dport 2575 meta mark set {mark} tproxy to :{guard_port} accept\n  }}\n}}\n",
            t = self.ns("t"),
            server_side = self.dev("s", 0),
            client_side = self.dev("c", 0),
            mark = self.mark(),
            receiver = self.net(2, 5),
        );
        run_stdin(&["nft", "-f", "-"], &rules);
        run(&[
            "ip",
            "rule",
            "add",
            "fwmark",
            &self.mark(),
            "lookup",
            &self.table(),
        ]);
        run(&[
            "ip",
            "route",
            "add",
            "local",
            "0.0.0.0/0",
            "dev",
            "lo",
            "table",
            &self.table(),
        ]);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        sh(&["nft", "delete", "table", "ip", &self.ns("t")]);
        sh(&[
            "ip",
            "rule",
            "del",
            "fwmark",
            &self.mark(),
            "lookup",
            &self.table(),
        ]);
        sh(&[
            "ip",
            "route",
            "del",
            "local",
            "0.0.0.0/0",
            "dev",
            "lo",
            "table",
            &self.table(),
        ]);
        sh(&["ip", "link", "del", &self.dev("c", 0)]);
        sh(&["ip", "link", "del", &self.dev("s", 0)]);
        sh(&["ip", "netns", "del", &self.ns("c")]);
        sh(&["ip", "netns", "del", &self.ns("s")]);
    }
}

/// A receiver for one message in the server namespace: prints the peer's address, then acks.
const RECEIVER: &str = r#"
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 2575)); s.listen(1)
print("ready", flush=True)
c, peer = s.accept()
data = b""
while not data.endswith(b"\x1c\r"):
    chunk = c.recv(65536)
    if not chunk: break
    data += chunk
msh = data[1:].split(b"\r")[0].split(b"|")
ack = b"MSH|^~\\&|R|F|S|F|20240101||ACK|A1|P|2.5.1\rMSA|AA|" + msh[9] + b"\r"
c.sendall(b"\x0b" + ack + b"\x1c\r")
print("peer", peer[0], flush=True)
c.recv(1)
"#;

#[tokio::test]
#[ignore = "needs root, ip and nft: apt-get install iproute2 nftables, run as root"]
async fn tproxy_redirected_connections_reach_the_original_destination_from_the_client_address() {
    if let Some(why) = unavailable() {
        panic!("this test needs network namespaces and TPROXY rules: {why}");
    }
    let id = std::process::id() % 10_000;
    let lab = Lab {
        id,
        b: 100 + id % 150,
    };
    let guard_port = port_outside_the_ephemeral_range();
    lab.build(guard_port);

    let dir = TestDir::new();
    let config = dir.path("transparent.yaml");
    std::fs::write(
        &config,
        format!("routes:\n  - name: inline\n    listen: 0.0.0.0:{guard_port}\n    transparent: true\n    allow: [{client}]\n    upstream:\n      address: original-destination\n      transparent_source: true\n      ack_timeout: 3s\n      connect_timeout: 3s\n", client = lab.net(0, 2)),
    )
    .unwrap();
    let mut receiver = Proc(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.ns("s"),
                "python3",
                "-c",
                RECEIVER,
                &lab.net(2, 5),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut receiver_out = std::io::BufReader::new(receiver.0.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut receiver_out, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let (_guard, _, logs) = crate::cli::start_guard(&config);

    let message_file = dir.path("m.hl7");
    std::fs::write(&message_file, message("TPROXY-1", 200)).unwrap();
    let sent = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("c"),
            BIN,
            "send",
            "--timeout",
            "5s",
            "--to",
        ])
        .arg(format!("{}:2575", lab.net(2, 5)))
        .arg(&message_file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&sent.stdout);
    assert!(
        sent.status.success(),
        "send: {stdout}{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    assert!(stdout.contains("TPROXY-1\tAA"), "{stdout}");

    // The receiver saw the client's address, not the guard's.
    line.clear();
    std::io::BufRead::read_line(&mut receiver_out, &mut line).unwrap();
    assert_eq!(line.trim(), format!("peer {}", lab.net(0, 2)));
    // The audit line names the real client.
    let deadline = Instant::now() + Duration::from_secs(5);
    let audit = loop {
        let l = logs
            .recv_timeout(Duration::from_millis(200))
            .unwrap_or_default();
        if l.contains("mllp_guard::audit") {
            break l;
        }
        assert!(Instant::now() < deadline, "no audit line");
    };
    assert!(audit.contains(&lab.net(0, 2)), "{audit}");
}

/// A free port below the kernel's ephemeral range (32768 and up by default), so no connection
/// another test opens meanwhile can take it as its local port before the guard binds it (the
/// namespaces take a while to build).
fn port_outside_the_ephemeral_range() -> u16 {
    let start = 20_000 + (std::process::id() % 10_000) as u16;
    (0..10_000u16)
        .map(|i| 20_000 + (start - 20_000 + i) % 10_000)
        .find(|&port| std::net::TcpListener::bind(("0.0.0.0", port)).is_ok())
        .expect("a free port between 20000 and 29999")
}
