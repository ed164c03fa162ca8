//! Real `nats-server` processes for the JetStream tests: one node or a three-node cluster on
//! loopback ports, JetStream stores in temp directories, killed (SIGKILL) and reaped when the
//! test ends. The tests that need it are ignored in a normal run (`needs nats-server`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A nats-server process, SIGKILLed and reaped when dropped (this file is also included by the
/// `custody_backends` bench, so it depends on nothing else in the test tree).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Fails the test, saying how to install it, when `nats-server` cannot be run (the JetStream
/// tests are ignored in a normal run for that reason; `.ci/run` installs it and runs them).
pub fn require() {
    let ok = Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "this test needs nats-server, which is not on PATH: apt-get install nats-server"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One nats-server node (restartable with the same ports and store).
pub struct Node {
    pub name: String,
    pub port: u16,
    pub http_port: u16,
    cluster: Option<(u16, Vec<u16>)>,
    store: PathBuf,
    proc: Option<Proc>,
}

impl Node {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn start(&mut self) {
        let mut cmd = Command::new("nats-server");
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.http_port.to_string()])
            .args(["-n", &self.name, "-js", "-sd"])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((cluster_port, routes)) = &self.cluster {
            let routes: Vec<String> = routes
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            cmd.args(["--cluster_name", "guards"])
                .args(["--cluster", &format!("nats://127.0.0.1:{cluster_port}")])
                .args(["--routes", &routes.join(",")]);
        }
        self.proc = Some(Proc(cmd.spawn().expect("nats-server starts")));
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        self.proc = None;
    }

    /// Removes the node's JetStream store (call it killed): the next start has lost everything.
    pub fn wipe_store(&self) {
        let _ = std::fs::remove_dir_all(&self.store);
    }

    /// Waits (bounded) until the node says it is healthy, JetStream included.
    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if healthz(self.http_port) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server {} never became healthy",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// GET /healthz on the monitoring port: 200 once the server (and JetStream) is ready.
fn healthz(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200")
}

/// NATS nodes started for one test.
pub struct Nats {
    pub nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Nats {
    /// One node with JetStream.
    pub fn single() -> Nats {
        Nats::start(1)
    }

    /// A three-node JetStream cluster (replicas up to 3), every node healthy.
    pub fn cluster() -> Nats {
        Nats::start(3)
    }

    fn start(n: usize) -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let cluster_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut nodes: Vec<Node> = (0..n)
            .map(|i| Node {
                name: format!("n{i}"),
                port: free_port(),
                http_port: free_port(),
                cluster: (n > 1).then(|| {
                    let others = cluster_ports
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != i)
                        .map(|(_, p)| *p)
                        .collect();
                    (cluster_ports[i], others)
                }),
                store: dir.path().join(format!("n{i}")),
                proc: None,
            })
            .collect();
        for node in &mut nodes {
            node.start();
        }
        for node in &nodes {
            node.wait_healthy();
        }
        Nats { nodes, _dir: dir }
    }

    /// The servers list for a guard's config, YAML flow style.
    pub fn servers_yaml(&self) -> String {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("\"{}\"", n.url()))
            .collect();
        format!("[{}]", urls.join(", "))
    }

    /// A JetStream context on the first node, for a test to look at or change streams itself.
    pub async fn js(&self) -> async_nats::jetstream::Context {
        let client = async_nats::connect(self.nodes[0].url()).await.unwrap();
        async_nats::jetstream::new(client)
    }

    /// The route keys that put a route's custody on this NATS.
    pub fn queue_yaml(&self, stream: &str, replicas: usize, takeover: &str) -> String {
        format!(
            "    queue:\n      backend: jetstream\n      jetstream:\n        servers: {}\n        stream: {stream}\n        replicas: {replicas}\n        max_bytes: 1GiB\n        duplicate_window: 10m\n        takeover: {takeover}\n        publish_timeout: 2s\n",
            self.servers_yaml()
        )
    }
}
