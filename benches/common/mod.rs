//! The closed-loop MLLP load generator and /proc readings shared by `relay_load` and `compare`,
//! so both tools measure with exactly the same client.
//!
//! A closed loop: C connections, one message in flight on each, every message with a unique
//! MSH-10 and every ack checked (MSA-2 = that MSH-10, code AA/CA) before the next is sent.
#![allow(dead_code)] // each bench uses a different subset

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mllp_guard::wire::codec::{self, Decoded};
use mllp_guard::wire::link::Link;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub const BIN: &str = env!("CARGO_BIN_EXE_mllp-guard");

/// A child process killed (and reaped) when dropped, with all its descendants, so no subject
/// outlives the tool: nginx's workers outlive a killed master otherwise.
pub struct Proc(pub Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let descendants: Vec<String> = process_tree(self.0.id())
            .into_iter()
            .skip(1)
            .map(|p| p.to_string())
            .collect();
        let _ = self.0.kill();
        let _ = self.0.wait();
        if !descendants.is_empty() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .args(&descendants)
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Proc {
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

fn stat_fields(pid: u32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" that closes the command name: state is the 1st, ppid the 2nd,
    // utime the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    rest.split_whitespace().map(str::to_string).collect()
}

/// CPU seconds a process has used so far (all threads), split into user and system (kernel)
/// time.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuTime {
    pub user: f64,
    pub system: f64,
}

impl CpuTime {
    pub fn total(self) -> f64 {
        self.user + self.system
    }

    /// The CPU used between `earlier` and `self`.
    pub fn since(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
        }
    }
}

impl std::iter::Sum for CpuTime {
    fn sum<I: Iterator<Item = CpuTime>>(iter: I) -> CpuTime {
        iter.fold(CpuTime::default(), |a, b| CpuTime {
            user: a.user + b.user,
            system: a.system + b.system,
        })
    }
}

/// The CPU time a process has used so far (utime and stime from /proc/PID/stat).
pub fn cpu_time(pid: u32) -> CpuTime {
    let f = stat_fields(pid);
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // USER_HZ is 100 on Linux.
    CpuTime {
        user: field(11) / 100.0,
        system: field(12) / 100.0,
    }
}

/// CPU seconds (user + system, all threads) a process has used so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    cpu_time(pid).total()
}

/// `pid` and all its descendants (nginx's workers, a shell's exec'd child, ...).
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut all: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                if let Some(ppid) = stat_fields(p).get(1).and_then(|v| v.parse().ok()) {
                    all.push((p, ppid));
                }
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(all.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    tree
}

/// CPU time of a process and all its descendants, user and system apart.
pub fn tree_cpu_time(pid: u32) -> CpuTime {
    process_tree(pid).into_iter().map(cpu_time).sum()
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// Peak RSS (VmHWM) summed over a process and its descendants.
pub fn tree_peak_rss_kib(pid: u32) -> u64 {
    process_tree(pid)
        .into_iter()
        .map(|p| status_kib(p, "VmHWM:"))
        .sum()
}

/// Current RSS (VmRSS) summed over a process and its descendants.
pub fn tree_rss_kib(pid: u32) -> u64 {
    process_tree(pid)
        .into_iter()
        .map(|p| status_kib(p, "VmRSS:"))
        .sum()
}

/// An HL7 ADT^A01 of `size` bytes with MSH-10 = `id`.
pub fn message(id: &str, size: usize) -> Vec<u8> {
    let mut m = format!("MSH|^~\\&|LOAD|FAC|RECV|FAC|20240102030405||ADT^A01^ADT_A01|{id}|P|2.5.1\rPID|1||MRN1\rNTE|1||").into_bytes();
    m.resize(size.saturating_sub(1).max(m.len()), b'x');
    m.push(b'\r');
    m
}

/// Where the load goes: an address, optionally over TLS.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub tls: Option<tokio_rustls::TlsConnector>,
}

/// A client TLS config trusting only `ca_pem`, offering X25519 only (what OpenSSL 3.0 peers
/// also pick, so every subject does the same key exchange) and never resuming a session
/// (so "a new connection per message" is a full handshake every time).
pub fn tls_connector(ca_pem: &std::path::Path) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem).expect("CA file") {
        roots.add(cert.expect("CA certificate")).unwrap();
    }
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A connection to the target: TCP (nodelay), plus the TLS handshake when the target has TLS.
// The plain variant is inline on purpose: the load clients hold a few hundred of these, and
// the plain path is the one measured against nginx.
#[allow(clippy::large_enum_variant)]
pub enum Conn {
    Plain(Link<TcpStream>),
    Tls(Box<Link<tokio_rustls::client::TlsStream<TcpStream>>>),
}

pub async fn connect(target: &Target, max_payload: usize) -> std::io::Result<Conn> {
    let tcp = TcpStream::connect(target.addr).await?;
    tcp.set_nodelay(true)?;
    Ok(match &target.tls {
        None => Conn::Plain(Link::new(tcp, max_payload)),
        Some(connector) => {
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let tls = connector.connect(name, tcp).await?;
            Conn::Tls(Box::new(Link::new(tls, max_payload)))
        }
    })
}

impl Conn {
    /// Sends one message and checks its ack.
    pub async fn exchange(&mut self, id: &str, wire: &[u8]) -> Result<(), String> {
        match self {
            Conn::Plain(link) => exchange(link, id, wire).await,
            Conn::Tls(link) => exchange(link, id, wire).await,
        }
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Link<S>,
    id: &str,
    wire: &[u8],
) -> Result<(), String> {
    link.send(wire).await.map_err(|e| format!("send: {e}"))?;
    match link.next().await {
        Ok(Some(Decoded::Frame(ack))) => {
            let code = mllp_guard::wire::ack::verify(ack.payload(), id.as_bytes())
                .map_err(|e| format!("ack does not answer {id}: {e:?}"))?;
            if code.is_positive() {
                Ok(())
            } else {
                Err(format!("negative ack {code}"))
            }
        }
        other => Err(format!("no ack for {id}: {other:?}")),
    }
}

pub struct Outcome {
    pub messages: u64,
    pub elapsed: Duration,
    /// Sorted, in microseconds.
    pub latencies_us: Vec<u64>,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }
}

/// The closed loop for `seconds`. With `reconnect`, every message goes on a new connection
/// (a full TLS handshake each time on a TLS target), and its latency includes the connect.
/// Any failed exchange (no ack, a wrong or negative ack, a refused connection) fails the run.
pub async fn closed_loop(
    target: &Target,
    connections: usize,
    seconds: f64,
    size: usize,
    tag: &str,
    reconnect: bool,
) -> Result<Outcome, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let max_payload = (size * 2).max(1 << 20);
    let mut tasks = Vec::new();
    for c in 0..connections {
        let stop = stop.clone();
        let tag = tag.to_string();
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = if reconnect {
                None
            } else {
                Some(
                    connect(&target, max_payload)
                        .await
                        .map_err(|e| format!("connect: {e}"))?,
                )
            };
            let mut lat = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("{tag}{c}-{n}");
                let wire = codec::encode(&message(&id, size));
                let t = Instant::now();
                let conn = match (&mut conn, reconnect) {
                    (Some(conn), false) => conn,
                    _ => conn.insert(
                        connect(&target, max_payload)
                            .await
                            .map_err(|e| format!("connect: {e}"))?,
                    ),
                };
                conn.exchange(&id, &wire).await?;
                lat.push(t.elapsed().as_micros() as u64);
                n += 1;
            }
            Ok::<_, String>(lat)
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies_us = Vec::new();
    for t in tasks {
        latencies_us.extend(t.await.map_err(|e| format!("load task: {e}"))??);
    }
    let elapsed = started.elapsed();
    latencies_us.sort_unstable();
    Ok(Outcome {
        messages: latencies_us.len() as u64,
        elapsed,
        latencies_us,
    })
}

pub fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

pub fn arg(name: &str, default: u64) -> u64 {
    arg_str(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn arg_str(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// `cargo bench` passes `--bench`; `cargo test --all-targets` runs the target without it.
pub fn measuring() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// Starts `mllp-guard sink --listen 127.0.0.1:0` (through `prefix`, e.g. `taskset -c 0`) and
/// returns it with the address it printed.
pub fn start_sink(prefix: &[String]) -> (Proc, SocketAddr) {
    let mut cmd = prefixed(prefix, BIN);
    let mut sink = cmd
        .args(["sink", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sink");
    let mut line = String::new();
    BufReader::new(sink.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: SocketAddr = line
        .trim()
        .trim_start_matches("listening on ")
        .parse()
        .expect("sink address");
    (Proc(sink), addr)
}

/// `program` run through `prefix` (a wrapper such as `taskset -c 0`), if any.
pub fn prefixed(prefix: &[String], program: &str) -> Command {
    match prefix.split_first() {
        None => Command::new(program),
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(program);
            c
        }
    }
}

/// A free loopback port (bound then released; good enough on a quiet loopback).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (bounded) until something accepts on `addr`.
pub fn wait_listening(addr: SocketAddr, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            return Err(format!("{what} did not start listening on {addr}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
