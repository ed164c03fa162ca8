//! Side-by-side comparison (issue 7): the same closed-loop MLLP load (the generator shared with
//! `relay_load`: C connections, one message in flight each, unique MSH-10s, every ack verified)
//! against an ACKing `mllp-guard sink`, directly and through each subject: mllp-guard, nginx
//! stream, HAProxy (TCP mode) and stunnel (TLS). For each it records msgs/s, p50/p99/p99.9
//! latency, the subject's CPU seconds per message (user + system of all its processes and
//! threads, from /proc) and its peak RSS (VmHWM), and checks the goals of issue 7 with ratios
//! from the same run (subjects take turns within each run; figures are medians over runs).
//!
//! Setup (Debian): `apt-get install -y haproxy stunnel4 nginx-full`; a subject whose binary is
//! not found is skipped with a note.
//! Run: `cargo build --release && cargo bench --bench compare -- [--runs 3] [--seconds 5]
//!       [--scenarios 1,2,3,4,5,6] [--idle 9500] [--no-write]`
//! With `COMPARE_BASELINE_BIN=PATH` (another build of the guard, e.g. the commit before a
//! change) that build runs beside this one in every guard scenario, at warn and as shipped
//! (stderr to a file): an A/B in one run.
//! It prints the tables and rewrites the generated part of `BENCHMARKS.md` (between the markers;
//! the hand-written findings around them are kept). Under `cargo test` it is a few-second smoke
//! run of mllp-guard alone (no peers needed, nothing written).
//! Everything stays on loopback, every phase is bounded in time, and every process it starts is
//! killed when it is done (or when the tool fails).
#![allow(clippy::unwrap_used, clippy::panic)] // a harness: a failed step is a failed run

mod common;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{arg, arg_str, closed_loop, median, pct, Proc, Target, BIN};

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Direct,
    Guard,
    /// mllp-guard as shipped (log level info: an audit line per message), stderr to /dev/null.
    GuardInfo,
    /// As shipped, stderr to a file (a service whose output is redirected to a log file).
    GuardShippedFile,
    /// As shipped, stderr through a pipe this tool drains (as journald and container runtimes
    /// read it; the reader's own CPU is not the guard's).
    GuardShippedPipe,
    /// As shipped plus `audit: { file }`: the audit trail to its own file, stderr to a file.
    GuardAuditFile,
    /// mllp-guard with `MLLP_GUARD_RUNTIME=current-thread`: the runtime-shape question of
    /// issue 7 (one thread, no cross-core wake-ups, no work stealing) against the default,
    /// same binary.
    GuardCurrentThread,
    /// mllp-guard with `MLLP_GUARD_RUNTIME=multi-thread`: tokio's work-stealing runtime, the
    /// default until issue 22's per-core connection workers, as their same-run baseline.
    GuardMultiThread,
    /// Another build of mllp-guard at warn, named by `COMPARE_BASELINE_BIN` (e.g. the binary of
    /// the commit before a change): an A/B of a change within one run. Only when that is set.
    GuardBaseline,
    /// The `COMPARE_BASELINE_BIN` build as shipped, stderr to a file: the A/B of a change to
    /// the shipped defaults' own work (the audit line). Only when that is set.
    GuardBaselineShippedFile,
    Nginx,
    Haproxy,
    Stunnel,
}

impl Kind {
    fn name(self, tls: bool) -> &'static str {
        match (self, tls) {
            (Kind::Direct, _) => "direct (plain, to sink)",
            (Kind::Guard, _) => "mllp-guard (log warn)",
            (Kind::GuardInfo, _) => "mllp-guard (shipped, stderr to /dev/null)",
            (Kind::GuardShippedFile, _) => "mllp-guard (shipped, stderr to a file)",
            (Kind::GuardShippedPipe, _) => "mllp-guard (shipped, stderr through a pipe)",
            (Kind::GuardAuditFile, _) => "mllp-guard (shipped + audit.file)",
            (Kind::GuardCurrentThread, _) => "mllp-guard (log warn, current-thread runtime)",
            (Kind::GuardMultiThread, _) => "mllp-guard (log warn, multi-thread runtime)",
            (Kind::GuardBaseline, _) => "mllp-guard (log warn, baseline binary)",
            (Kind::GuardBaselineShippedFile, _) => {
                "mllp-guard (shipped, stderr to a file, baseline binary)"
            }
            (Kind::Nginx, false) => "nginx stream",
            (Kind::Nginx, true) => "nginx stream ssl",
            (Kind::Haproxy, false) => "HAProxy tcp",
            (Kind::Haproxy, true) => "HAProxy tcp ssl",
            (Kind::Stunnel, _) => "stunnel",
        }
    }

    fn is_guard(self) -> bool {
        !matches!(
            self,
            Kind::Direct | Kind::Nginx | Kind::Haproxy | Kind::Stunnel
        )
    }

    /// Runs with the shipped log level (no `MLLP_GUARD_LOG`).
    fn shipped(self) -> bool {
        matches!(
            self,
            Kind::GuardInfo
                | Kind::GuardShippedFile
                | Kind::GuardShippedPipe
                | Kind::GuardAuditFile
                | Kind::GuardBaselineShippedFile
        )
    }

    fn program(self) -> Option<&'static str> {
        match self {
            Kind::Direct
            | Kind::Guard
            | Kind::GuardInfo
            | Kind::GuardShippedFile
            | Kind::GuardShippedPipe
            | Kind::GuardAuditFile
            | Kind::GuardCurrentThread
            | Kind::GuardMultiThread
            | Kind::GuardBaseline
            | Kind::GuardBaselineShippedFile => None,
            Kind::Nginx => Some("nginx"),
            Kind::Haproxy => Some("haproxy"),
            Kind::Stunnel => Some("stunnel4"),
        }
    }
}

/// A running subject: its process (none for Direct: the sink is measured) and its address.
struct Subject {
    kind: Kind,
    _proc: Option<Proc>,
    pid: u32,
    target: Target,
}

struct Setup {
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    /// Chain and key in one file, as HAProxy wants it.
    combined: PathBuf,
    connector: tokio_rustls::TlsConnector,
    notes: Vec<String>,
}

fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/usr/local/sbin"])
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file());
    found
}

fn version(kind: Kind) -> String {
    let out = |program: &str, args: &[&str]| -> String {
        Command::new(program)
            .args(args)
            .output()
            .map(|o| {
                let mut s = String::from_utf8_lossy(&o.stdout).to_string();
                s.push_str(&String::from_utf8_lossy(&o.stderr));
                s
            })
            .unwrap_or_default()
    };
    let text = match kind {
        Kind::Direct
        | Kind::Guard
        | Kind::GuardInfo
        | Kind::GuardShippedFile
        | Kind::GuardShippedPipe
        | Kind::GuardAuditFile
        | Kind::GuardCurrentThread
        | Kind::GuardMultiThread => out(BIN, &["--version"]),
        Kind::GuardBaseline | Kind::GuardBaselineShippedFile => {
            out(&baseline_bin().unwrap_or_default(), &["--version"])
        }
        Kind::Nginx => out("nginx", &["-v"]),
        Kind::Haproxy => out("haproxy", &["-v"]),
        Kind::Stunnel => out("stunnel4", &["-version"]),
    };
    text.lines()
        .find(|l| {
            let l = l.to_lowercase();
            l.contains("version") || l.starts_with("stunnel ") || l.starts_with("mllp-guard")
        })
        .unwrap_or("unknown")
        .trim()
        .to_string()
}

/// Starts `kind` forwarding to the sink at `sink`, listening with TLS when `tls`.
/// `Ok(None)`: the program is not installed (skipped with a note).
fn start(
    setup: &Setup,
    kind: Kind,
    tls: bool,
    sink: (u32, SocketAddr),
    prefix: &[String],
    max_conns: usize,
) -> Result<Option<Subject>, String> {
    if kind == Kind::Direct {
        return Ok(Some(Subject {
            kind,
            _proc: None,
            pid: sink.0,
            target: Target {
                addr: sink.1,
                tls: None,
            },
        }));
    }
    if let Some(program) = kind.program() {
        if find(program).is_none() {
            return Ok(None);
        }
    }
    let port = common::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let dir = setup.dir.path();
    let (cert, key, upstream) = (setup.cert.display(), setup.key.display(), sink.1);
    let pinned = !prefix.is_empty();
    let tag = format!("{kind:?}-{}", if tls { "tls" } else { "plain" }).to_lowercase();
    let mut cmd = match kind {
        Kind::Direct => unreachable!(),
        Kind::Guard
        | Kind::GuardInfo
        | Kind::GuardShippedFile
        | Kind::GuardShippedPipe
        | Kind::GuardAuditFile
        | Kind::GuardCurrentThread
        | Kind::GuardMultiThread
        | Kind::GuardBaseline
        | Kind::GuardBaselineShippedFile => {
            let tls_block = if tls {
                format!("    tls:\n      cert: {cert}\n      key: {key}\n")
            } else {
                String::new()
            };
            let config = dir.join(format!("{tag}.yaml"));
            // Every connection comes from 127.0.0.1: the per-source cap (three quarters of
            // max_connections by default) is lifted to max_connections, as nginx and HAProxy
            // have no such cap.
            let audit = if kind == Kind::GuardAuditFile {
                format!(
                    "audit: {{ file: {} }}\n",
                    dir.join(format!("{tag}-audit.jsonl")).display()
                )
            } else {
                String::new()
            };
            std::fs::write(
                &config,
                format!("{audit}routes:\n  - name: bench\n    listen: {addr}\n{tls_block}    allow: [127.0.0.1]\n    max_connections: {max_conns}\n    limits: {{ max_connections_per_source: {max_conns} }}\n    upstream:\n      address: {upstream}\n"),
            )
            .unwrap();
            let program = match kind {
                Kind::GuardBaseline | Kind::GuardBaselineShippedFile => {
                    baseline_bin().unwrap_or_default()
                }
                _ => BIN.to_string(),
            };
            let mut c = common::prefixed(prefix, &program);
            c.arg("run").arg("--config").arg(config);
            if kind.shipped() {
                c.env_remove("MLLP_GUARD_LOG");
            } else {
                c.env("MLLP_GUARD_LOG", "warn");
            }
            match kind {
                Kind::GuardCurrentThread => c.env("MLLP_GUARD_RUNTIME", "current-thread"),
                Kind::GuardMultiThread => c.env("MLLP_GUARD_RUNTIME", "multi-thread"),
                _ => c.env_remove("MLLP_GUARD_RUNTIME"),
            };
            c
        }
        Kind::Nginx => {
            let ssl = if tls {
                format!(" ssl;\n    ssl_certificate {cert};\n    ssl_certificate_key {key};\n    ssl_protocols TLSv1.2 TLSv1.3")
            } else {
                String::new()
            };
            let module = Path::new("/usr/lib/nginx/modules/ngx_stream_module.so");
            let load = if module.is_file() {
                format!("load_module {};\n", module.display())
            } else {
                String::new()
            };
            // One worker per core, as `auto` gives on this machine; one when pinned to a core.
            let workers = if pinned { 1 } else { nproc() };
            let config = dir.join(format!("{tag}.conf"));
            std::fs::write(
                &config,
                format!("{load}daemon off;\nmaster_process on;\nworker_processes {workers};\nworker_rlimit_nofile 20000;\npid {d}/{tag}.pid;\nerror_log {d}/{tag}.log warn;\nevents {{ worker_connections 20000; }}\nstream {{\n  server {{\n    listen {addr}{ssl};\n    proxy_pass {upstream};\n  }}\n}}\n", d = dir.display()),
            )
            .unwrap();
            let mut c = common::prefixed(prefix, "nginx");
            c.arg("-p")
                .arg(dir)
                .arg("-e")
                .arg(dir.join(format!("{tag}.log")))
                .arg("-c")
                .arg(config);
            c
        }
        Kind::Haproxy => {
            let ssl = if tls {
                format!(" ssl crt {}", setup.combined.display())
            } else {
                String::new()
            };
            let config = dir.join(format!("{tag}.cfg"));
            std::fs::write(
                &config,
                format!("global\n  maxconn {max_conns}\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\nfrontend bench\n  bind {addr}{ssl}\n  default_backend sink\nbackend sink\n  server sink {upstream}\n"),
            )
            .unwrap();
            let mut c = common::prefixed(prefix, "haproxy");
            c.arg("-db").arg("-f").arg(config);
            c
        }
        Kind::Stunnel => {
            assert!(tls, "stunnel only terminates TLS");
            let config = dir.join(format!("{tag}.conf"));
            std::fs::write(
                &config,
                format!("foreground = yes\npid =\ndebug = 3\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n[mllp]\naccept = {addr}\nconnect = {upstream}\ncert = {cert}\nkey = {key}\n"),
            )
            .unwrap();
            let mut c = common::prefixed(prefix, "stunnel4");
            c.arg(config);
            c
        }
    };
    let stderr = match kind {
        Kind::GuardShippedFile | Kind::GuardAuditFile | Kind::GuardBaselineShippedFile => {
            Stdio::from(std::fs::File::create(dir.join(format!("{tag}.stderr"))).unwrap())
        }
        Kind::GuardShippedPipe => Stdio::piped(),
        _ => Stdio::null(),
    };
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("{}: cannot start: {e}", kind.name(tls)))?;
    if let Some(mut pipe) = child.stderr.take() {
        // The reader at the other end of the pipe: drains it as journald would.
        std::thread::spawn(move || {
            use std::io::Read as _;
            let mut buf = vec![0u8; 64 * 1024];
            while matches!(pipe.read(&mut buf), Ok(n) if n > 0) {}
        });
    }
    let proc = Proc(child);
    common::wait_listening(addr, kind.name(tls))?;
    Ok(Some(Subject {
        kind,
        pid: proc.id(),
        _proc: Some(proc),
        target: Target {
            addr,
            tls: tls.then(|| setup.connector.clone()),
        },
    }))
}

/// CPUs of the machine, read once before scenario 3 pins this process to one of them.
fn nproc() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

struct Scenario {
    id: u32,
    title: &'static str,
    tls: bool,
    size: usize,
    connections: usize,
    reconnect: bool,
    pinned: bool,
    kinds: Vec<Kind>,
}

/// One subject's figures in one run.
#[derive(Clone, Copy, Default)]
struct Run {
    rate: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    /// User + system CPU of the subject per acked message.
    cpu_us: f64,
    /// The system (kernel) part of `cpu_us`: the socket calls, TCP/IP on loopback, waking the
    /// peers. A proxy cannot spend less than this on the same calls, so a goal set below a
    /// peer's kernel time alone is out of reach of any user-space change.
    sys_us: f64,
}

struct Measured {
    kind: Kind,
    runs: Vec<Run>,
    peak_rss_kib: u64,
    failure: Option<String>,
}

/// The other build `COMPARE_BASELINE_BIN` names, if set (see [`Kind::GuardBaseline`]).
fn baseline_bin() -> Option<String> {
    std::env::var("COMPARE_BASELINE_BIN")
        .ok()
        .filter(|path| !path.is_empty())
}

fn scenarios(peers: bool) -> Vec<Scenario> {
    use Kind::*;
    let baseline = baseline_bin().is_some();
    let with = |mut base: Vec<Kind>, extra: &[Kind]| {
        // Right after this build's row, so the two take turns next to each other.
        if let Some(at) = base.iter().position(|&k| k == Guard).filter(|_| baseline) {
            base.insert(at + 1, GuardBaseline);
        }
        let shipped = base.iter().position(|&k| k == GuardShippedFile);
        if let Some(at) = shipped.filter(|_| baseline) {
            base.insert(at + 1, GuardBaselineShippedFile);
        }
        if peers {
            base.extend_from_slice(extra);
        }
        base
    };
    vec![
        Scenario {
            id: 1,
            title: "plain -> plain, 1 KiB, 64 connections",
            tls: false,
            size: 1024,
            connections: 64,
            reconnect: false,
            pinned: false,
            kinds: with(
                vec![Direct, Guard, GuardShippedFile],
                &[
                    GuardInfo,
                    GuardShippedPipe,
                    GuardAuditFile,
                    GuardCurrentThread,
                    GuardMultiThread,
                    Nginx,
                    Haproxy,
                ],
            ),
        },
        Scenario {
            id: 2,
            title: "TLS -> plain, 1 KiB, 64 connections",
            tls: true,
            size: 1024,
            connections: 64,
            reconnect: false,
            pinned: false,
            kinds: with(
                vec![Direct, Guard, GuardShippedFile],
                &[
                    GuardCurrentThread,
                    GuardMultiThread,
                    Nginx,
                    Haproxy,
                    Stunnel,
                ],
            ),
        },
        Scenario {
            id: 3,
            title: "plain -> plain, 1 KiB, 1 connection, everything pinned to CPU 0",
            tls: false,
            size: 1024,
            connections: 1,
            reconnect: false,
            pinned: true,
            kinds: with(
                vec![Direct, Guard],
                &[GuardCurrentThread, GuardMultiThread, Nginx, Haproxy],
            ),
        },
        Scenario {
            id: 4,
            title:
                "TLS -> plain, a new connection (full handshake) per 1 KiB message, 8 connections",
            tls: true,
            size: 1024,
            connections: 8,
            reconnect: true,
            pinned: false,
            kinds: with(
                vec![Guard, GuardShippedFile],
                &[GuardMultiThread, Haproxy, Nginx, Stunnel],
            ),
        },
        Scenario {
            id: 5,
            title: "plain -> plain, 1 MiB messages, 4 connections",
            tls: false,
            size: 1 << 20,
            connections: 4,
            reconnect: false,
            pinned: false,
            kinds: with(
                vec![Direct, Guard, GuardShippedFile],
                &[GuardCurrentThread, GuardMultiThread, Nginx, Haproxy],
            ),
        },
    ]
}

fn pin_self(cpus: &str) {
    let _ = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status();
}

fn run_scenario(
    setup: &mut Setup,
    sc: &Scenario,
    runs: usize,
    seconds: f64,
) -> Result<Vec<Measured>, String> {
    let pinned = sc.pinned && find("taskset").is_some();
    let prefix: Vec<String> = if pinned {
        vec!["taskset".into(), "-c".into(), "0".into()]
    } else {
        Vec::new()
    };
    let (sink, sink_addr) = common::start_sink(&prefix);
    let mut subjects = Vec::new();
    for &kind in &sc.kinds {
        match start(setup, kind, sc.tls, (sink.id(), sink_addr), &prefix, 1024)? {
            Some(s) => subjects.push(s),
            None => {
                let note = format!(
                    "scenario {}: {} skipped: `{}` not found (apt-get install -y haproxy stunnel4 nginx-full)",
                    sc.id,
                    kind.name(sc.tls),
                    kind.program().unwrap_or("?")
                );
                println!("{note}");
                setup.notes.push(note);
            }
        }
    }
    let rt = if pinned {
        pin_self("0");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    };
    let mut measured: Vec<Measured> = subjects
        .iter()
        .map(|s| Measured {
            kind: s.kind,
            runs: Vec::new(),
            peak_rss_kib: 0,
            failure: None,
        })
        .collect();
    // Warm up each subject (connections, lazily built state) outside the measurement.
    for (i, s) in subjects.iter().enumerate() {
        if let Err(e) = rt.block_on(closed_loop(
            &s.target,
            2,
            0.3,
            sc.size,
            &format!("W{i}-"),
            false,
        )) {
            measured[i].failure = Some(e);
        }
    }
    for run in 0..runs {
        for (i, s) in subjects.iter().enumerate() {
            if measured[i].failure.is_some() {
                continue;
            }
            let c0 = common::tree_cpu_time(s.pid);
            let outcome = rt.block_on(closed_loop(
                &s.target,
                sc.connections,
                seconds,
                sc.size,
                &format!("S{}R{run}P{i}-", sc.id),
                sc.reconnect,
            ));
            let used = common::tree_cpu_time(s.pid).since(c0);
            let outcome = match outcome {
                Ok(o) => o,
                Err(e) => {
                    println!(
                        "scenario {} run {run}: {}: FAILED: {e}",
                        sc.id,
                        s.kind.name(sc.tls)
                    );
                    measured[i].failure = Some(e);
                    continue;
                }
            };
            let lat = &outcome.latencies_us;
            let r = Run {
                rate: outcome.rate(),
                p50: pct(lat, 0.5) as f64,
                p99: pct(lat, 0.99) as f64,
                p999: pct(lat, 0.999) as f64,
                cpu_us: used.total() * 1e6 / outcome.messages.max(1) as f64,
                sys_us: used.system * 1e6 / outcome.messages.max(1) as f64,
            };
            println!(
                "scenario {} run {run}: {}: {:.0} msg/s, p50 {} us, p99 {} us, p99.9 {} us, subject CPU {:.1} us/msg ({:.1} in the kernel)",
                sc.id,
                s.kind.name(sc.tls),
                r.rate,
                r.p50,
                r.p99,
                r.p999,
                r.cpu_us,
                r.sys_us
            );
            measured[i].runs.push(r);
        }
    }
    for (i, s) in subjects.iter().enumerate() {
        measured[i].peak_rss_kib = common::tree_peak_rss_kib(s.pid);
    }
    if pinned {
        pin_self(&format!("0-{}", nproc() - 1));
    }
    drop(subjects);
    drop(sink);
    Ok(measured)
}

/// Idle connections: RSS per connection of a fresh subject holding `n` open connections
/// (TLS: handshaken), then after one message on each (all must be acked).
struct Idle {
    kind: Kind,
    tls: bool,
    /// (KiB per idle connection, KiB per connection after one message) per run.
    runs: Vec<(f64, f64)>,
    failure: Option<String>,
}

fn run_idle(setup: &mut Setup, kinds: &[Kind], n: usize, runs: usize) -> Vec<Idle> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut out = Vec::new();
    for tls in [false, true] {
        for &kind in kinds {
            let mut idle = Idle {
                kind,
                tls,
                runs: Vec::new(),
                failure: None,
            };
            for run in 0..runs {
                // A fresh sink and subject per run, so the baseline is clean.
                let (sink, sink_addr) = common::start_sink(&[]);
                let subject = match start(setup, kind, tls, (sink.id(), sink_addr), &[], n + 100) {
                    Ok(Some(s)) => s,
                    Ok(None) => {
                        let note = format!(
                            "idle: {} skipped: `{}` not found",
                            kind.name(tls),
                            kind.program().unwrap_or("?")
                        );
                        setup.notes.push(note);
                        break;
                    }
                    Err(e) => {
                        idle.failure = Some(e);
                        break;
                    }
                };
                match rt.block_on(idle_once(&subject, n, run)) {
                    Ok(r) => {
                        println!(
                            "idle run {run}: {}: {:.1} KiB/connection idle, {:.1} KiB/connection after one message each (all {n} acked)",
                            kind.name(tls),
                            r.0,
                            r.1
                        );
                        idle.runs.push(r);
                    }
                    Err(e) => {
                        println!("idle run {run}: {}: FAILED: {e}", kind.name(tls));
                        idle.failure = Some(e);
                        break;
                    }
                }
            }
            out.push(idle);
        }
    }
    out
}

async fn idle_once(subject: &Subject, n: usize, run: usize) -> Result<(f64, f64), String> {
    let target = &subject.target;
    // Warm: one connection, one message, closed; then the baseline.
    let mut warm = common::connect(target, 1 << 20)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let id = format!("I{run}warm");
    warm.exchange(
        &id,
        &mllp_guard::wire::codec::encode(&common::message(&id, 1024)),
    )
    .await?;
    drop(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = common::tree_rss_kib(subject.pid) as f64;
    // Open n connections, at most 64 handshakes in flight.
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (sem, target) = (sem.clone(), target.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.unwrap();
            common::connect(&target, 1 << 20).await
        }));
    }
    let mut conns = Vec::with_capacity(n);
    for t in tasks {
        conns.push(
            t.await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("connection {} of {n}: {e}", conns.len() + 1))?,
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let opened = common::tree_rss_kib(subject.pid) as f64;
    // Every connection still works: one message on each, every ack checked.
    let mut tasks = Vec::with_capacity(n);
    for (c, mut conn) in conns.into_iter().enumerate() {
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.unwrap();
            let id = format!("I{run}C{c}");
            let wire = mllp_guard::wire::codec::encode(&common::message(&id, 1024));
            conn.exchange(&id, &wire).await.map(|()| conn)
        }));
    }
    let mut conns = Vec::with_capacity(n);
    for t in tasks {
        conns.push(t.await.map_err(|e| e.to_string())??);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = common::tree_rss_kib(subject.pid) as f64;
    drop(conns);
    Ok(((opened - base) / n as f64, (used - base) / n as f64))
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Median over runs of (a's figure / b's figure), from the same runs.
fn ratio(a: &Measured, b: &Measured, f: fn(&Run) -> f64) -> f64 {
    median(
        a.runs
            .iter()
            .zip(&b.runs)
            .map(|(x, y)| f(x) / f(y))
            .collect(),
    )
}

fn col(m: &Measured, f: fn(&Run) -> f64) -> f64 {
    median(m.runs.iter().map(f).collect())
}

/// (min, max) of a column, to show the run-to-run noise.
fn spread(m: &Measured, f: fn(&Run) -> f64) -> (f64, f64) {
    m.runs
        .iter()
        .map(f)
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**not met**"
    }
}

/// 1 KiB frame decode throughput from criterion's last `cargo bench --bench codec` run, if any.
fn codec_gbps() -> Option<f64> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/criterion/frame_decode/whole/1KiB/new/estimates.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()?;
    // The mean (criterion's headline "time"), not the median: the conservative figure here.
    let ns = v["mean"]["point_estimate"].as_f64()?;
    Some((1024.0 + 3.0) / ns) // bytes per ns = GB/s
}

fn main() {
    let measuring = common::measuring();
    nproc();
    let runs = arg("--runs", if measuring { 3 } else { 1 }).max(1) as usize;
    let seconds = arg_str("--seconds")
        .and_then(|s| s.parse().ok())
        .unwrap_or(if measuring { 5.0 } else { 0.5 });
    // The smoke run skips the pinned scenario (it would pin the test process) and 1 MiB
    // messages (slow in a debug build): it only has to show the tool works.
    let wanted: Vec<u32> = arg_str("--scenarios")
        .unwrap_or_else(|| if measuring { "1,2,3,4,5,6" } else { "1,2,4,6" }.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let idle_n = arg("--idle", if measuring { 9500 } else { 20 }) as usize;
    let write = measuring && !std::env::args().any(|a| a == "--no-write");
    // The smoke run (cargo test) measures mllp-guard alone: no peers, tiny and quick.
    let peers = measuring;

    // Idle connections need file descriptors: raise the soft limit to the hard one (children
    // inherit it).
    let _ = Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            "--nofile=unlimited:",
        ])
        .stderr(Stdio::null())
        .status();
    let hard = Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            "--nofile",
            "-o",
            "SOFT",
            "--noheadings",
        ])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();

    let dir = tempfile::tempdir().unwrap();
    let certs = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/certs");
    let (cert, key) = (dir.path().join("guard.pem"), dir.path().join("guard.key"));
    std::fs::copy(certs.join("guard.pem"), &cert).unwrap();
    std::fs::copy(certs.join("guard.key"), &key).unwrap();
    let combined = dir.path().join("combined.pem");
    let mut both = std::fs::read(&cert).unwrap();
    both.extend(std::fs::read(&key).unwrap());
    std::fs::write(&combined, both).unwrap();
    let mut setup = Setup {
        connector: common::tls_connector(&certs.join("ca.pem")),
        dir,
        cert,
        key,
        combined,
        notes: Vec::new(),
    };

    let started = Instant::now();
    let load_before = loadavg();
    println!(
        "compare: {runs} runs of {seconds}s per subject, scenarios {wanted:?}, idle {idle_n}, open files {hard}; load average {load_before}"
    );
    let mut results: Vec<(&Scenario, Vec<Measured>)> = Vec::new();
    let all = scenarios(peers);
    for sc in all.iter().filter(|s| wanted.contains(&s.id)) {
        println!("\n== scenario {}: {}", sc.id, sc.title);
        match run_scenario(&mut setup, sc, runs, seconds) {
            Ok(m) => results.push((sc, m)),
            Err(e) => {
                println!("scenario {} failed: {e}", sc.id);
                setup.notes.push(format!("scenario {} failed: {e}", sc.id));
            }
        }
    }
    let idle = if wanted.contains(&6) {
        println!("\n== scenario 6: {idle_n} idle connections");
        let kinds: &[Kind] = if peers {
            &[Kind::Guard, Kind::Haproxy, Kind::Nginx]
        } else {
            &[Kind::Guard]
        };
        run_idle(&mut setup, kinds, idle_n, runs.min(3))
    } else {
        Vec::new()
    };

    let report = render(
        &setup,
        &results,
        &idle,
        runs,
        seconds,
        idle_n,
        &load_before,
        started.elapsed(),
    );
    println!("\n{report}");
    if !measuring {
        // The smoke run must show the tool works end to end.
        for (sc, m) in &results {
            for x in m {
                assert!(
                    x.failure.is_none(),
                    "scenario {}: {:?}: {:?}",
                    sc.id,
                    x.kind,
                    x.failure
                );
                assert!(!x.runs.is_empty() && x.runs[0].rate > 0.0);
            }
        }
        for i in &idle {
            assert!(i.failure.is_none(), "idle {:?}: {:?}", i.kind, i.failure);
        }
    }
    if write {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
        let (begin, end) = (
            "<!-- BEGIN GENERATED by benches/compare.rs -->",
            "<!-- END GENERATED -->",
        );
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let new = match (old.find(begin), old.find(end)) {
            (Some(b), Some(e)) if b < e => {
                format!("{}{begin}\n{report}{}", &old[..b], &old[e..])
            }
            _ => format!("# Benchmarks\n\n{begin}\n{report}{end}\n"),
        };
        std::fs::write(&path, new).unwrap();
        println!("wrote {}", path.display());
    }
}

#[allow(clippy::too_many_arguments)]
fn render(
    setup: &Setup,
    results: &[(&Scenario, Vec<Measured>)],
    idle: &[Idle],
    runs: usize,
    seconds: f64,
    idle_n: usize,
    load_before: &str,
    took: Duration,
) -> String {
    let mut o = String::new();
    let w = &mut o;
    let _ = writeln!(w, "Generated by `cargo bench --bench compare -- --runs {runs} --seconds {seconds} --idle {idle_n}` in {:.0} s.\n", took.as_secs_f64());
    let _ = writeln!(w, "- Machine: {} CPUs (`nproc`), {}, Linux {}; load average {} at the start, {} at the end (other builds and tests share this machine, see the noise note).", nproc(), cpu_model(), kernel(), load_before, loadavg());
    let mut kinds: Vec<Kind> = Vec::new();
    for (_, m) in results {
        for x in m {
            if !kinds.contains(&x.kind) {
                kinds.push(x.kind);
            }
        }
    }
    for i in idle {
        if !kinds.contains(&i.kind) {
            kinds.push(i.kind);
        }
    }
    let versions: Vec<String> = [Kind::Guard, Kind::Nginx, Kind::Haproxy, Kind::Stunnel]
        .iter()
        .filter(|k| {
            kinds
                .iter()
                .any(|x| x == *k || (**k == Kind::Guard && x.is_guard()))
        })
        .map(|&k| version(k))
        .collect();
    let _ = writeln!(w, "- Versions: {}.", versions.join("; "));
    let _ = writeln!(w, "- Figures are medians of {runs} runs of {seconds} s per subject; within a run the subjects take turns, and ratios are medians of the per-run ratios (same run, same noise). CPU is the subject's user + system time over all its processes and threads (/proc/PID/stat), per acked message, and \"of it kernel\" is its system time (the socket calls and loopback TCP/IP, the part no user-space change removes); RSS is VmHWM summed over its processes.");
    let _ = writeln!(w, "- TLS: the same ECDSA P-256 certificate (`rules/certs/guard.pem`) for every subject, TLS 1.3, X25519 (the client offers only that group and never resumes).");
    for n in &setup.notes {
        let _ = writeln!(w, "- Note: {n}");
    }
    let _ = writeln!(w);

    for (sc, m) in results {
        let _ = writeln!(w, "### {}. {}\n", sc.id, sc.title);
        let big = sc.size >= 1 << 20;
        if big {
            let _ = writeln!(w, "| subject | MiB/s | msgs/s | p50 us | p99 us | p99.9 us | CPU ms/MiB | of it kernel | peak RSS MiB | msgs/s min-max |");
        } else {
            let _ = writeln!(w, "| subject | msgs/s | p50 us | p99 us | p99.9 us | CPU us/msg | of it kernel | peak RSS MiB | msgs/s min-max |");
        }
        let _ = writeln!(
            w,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|{}",
            if big { "---:|" } else { "" }
        );
        for x in m {
            let name = x.kind.name(sc.tls);
            if let Some(f) = &x.failure {
                let _ = writeln!(w, "| {name} | failed: {} |", f.replace('|', "/"));
                continue;
            }
            let (lo, hi) = spread(x, |r| r.rate);
            let mib = sc.size as f64 / (1 << 20) as f64;
            let head = if big {
                format!(
                    "| {name} | {:.0} | {:.1} ",
                    col(x, |r| r.rate) * mib,
                    col(x, |r| r.rate)
                )
            } else {
                format!("| {name} | {:.0} ", col(x, |r| r.rate))
            };
            let (cpu, sys) = if big {
                (
                    format!("{:.2}", col(x, |r| r.cpu_us) / 1000.0 / mib),
                    format!("{:.2}", col(x, |r| r.sys_us) / 1000.0 / mib),
                )
            } else {
                (
                    format!("{:.1}", col(x, |r| r.cpu_us)),
                    format!("{:.1}", col(x, |r| r.sys_us)),
                )
            };
            let _ = writeln!(
                w,
                "{head}| {:.0} | {:.0} | {:.0} | {cpu} | {sys} | {:.1} | {lo:.0}-{hi:.0} |",
                col(x, |r| r.p50),
                col(x, |r| r.p99),
                col(x, |r| r.p999),
                x.peak_rss_kib as f64 / 1024.0
            );
        }
        let _ = writeln!(w);
    }

    if !idle.is_empty() {
        let _ = writeln!(
            w,
            "### 6. {idle_n} idle connections (a fresh subject each run)\n"
        );
        let _ = writeln!(w, "| subject | KiB per idle connection | KiB per connection after one message each | all acked afterwards |");
        let _ = writeln!(w, "|---|---:|---:|---|");
        for i in idle {
            let name = format!(
                "{}{}",
                i.kind.name(i.tls),
                if i.tls && i.kind == Kind::Guard {
                    " (TLS)"
                } else if !i.tls && i.kind == Kind::Guard {
                    " (plain)"
                } else {
                    ""
                }
            );
            if i.runs.is_empty() {
                let _ = writeln!(
                    w,
                    "| {name} | {} | | |",
                    i.failure.as_deref().unwrap_or("skipped").replace('|', "/")
                );
                continue;
            }
            let _ = writeln!(
                w,
                "| {name} | {:.1} | {:.1} | {} |",
                median(i.runs.iter().map(|r| r.0).collect()),
                median(i.runs.iter().map(|r| r.1).collect()),
                match &i.failure {
                    None => format!("yes ({} runs)", i.runs.len()),
                    Some(e) => format!("NO: {}", e.replace('|', "/")),
                }
            );
        }
        let _ = writeln!(w);
    }

    // The goals of issue 7, from the figures above.
    let find = |id: u32, k: Kind| -> Option<&Measured> {
        results.iter().find(|(s, _)| s.id == id).and_then(|(_, m)| {
            m.iter()
                .find(|x| x.kind == k && x.failure.is_none() && !x.runs.is_empty())
        })
    };
    let mut goals: Vec<String> = Vec::new();
    let cpu = |r: &Run| r.cpu_us;
    let rate = |r: &Run| r.rate;
    for (id, peer, limit, label) in [
        (
            1,
            Kind::Nginx,
            0.9,
            "plain 1 KiB x64: guard CPU/msg <= 0.9 x nginx stream's",
        ),
        (
            1,
            Kind::Haproxy,
            0.7,
            "plain 1 KiB x64: guard CPU/msg <= 0.7 x HAProxy's",
        ),
        (
            2,
            Kind::Nginx,
            0.9,
            "TLS 1 KiB x64: guard CPU/msg <= 0.9 x nginx ssl's",
        ),
        (
            2,
            Kind::Stunnel,
            0.5,
            "TLS 1 KiB x64: guard CPU/msg <= 0.5 x stunnel's",
        ),
        (
            4,
            Kind::Haproxy,
            1.0,
            "full handshake per message: guard CPU/handshake <= HAProxy's",
        ),
        (5, Kind::Nginx, 1.0, "1 MiB x4: guard CPU/MiB <= nginx's"),
    ] {
        if let (Some(g), Some(p)) = (find(id, Kind::Guard), find(id, peer)) {
            let r = ratio(g, p, cpu);
            let (scale, unit) = if id == 5 {
                (1e-3, "ms/MiB")
            } else {
                (1.0, "us")
            };
            // The target against the peer's own kernel time: the guard makes the same socket
            // calls per message, so a target below that cannot be met by user-space work.
            let target = limit * col(p, cpu);
            let floor = col(p, |r| r.sys_us);
            let below_floor = if r > limit && target < floor {
                format!(
                    " (the target, {:.2} {unit}, is below the {:.2} {unit} {} itself spends in the kernel)",
                    target * scale,
                    floor * scale,
                    p.kind.name(matches!(id, 2 | 4))
                )
            } else {
                String::new()
            };
            goals.push(format!(
                "| {label} | {:.2} vs {:.2} {unit} | {r:.2} | {}{below_floor} |",
                col(g, cpu) * scale,
                col(p, cpu) * scale,
                verdict(r <= limit)
            ));
        }
    }
    for (id, peer, label) in [
        (
            1,
            Kind::Nginx,
            "plain 1 KiB x64: guard msgs/s >= nginx stream's",
        ),
        (
            1,
            Kind::Haproxy,
            "plain 1 KiB x64: guard msgs/s >= HAProxy's",
        ),
        (5, Kind::Nginx, "1 MiB x4: guard MB/s >= nginx's"),
    ] {
        if let (Some(g), Some(p)) = (find(id, Kind::Guard), find(id, peer)) {
            let r = ratio(g, p, rate);
            let unit = if id == 5 { "MiB/s" } else { "msgs/s" };
            goals.push(format!(
                "| {label} | {:.0} vs {:.0} {unit} | {r:.2} | {} |",
                col(g, rate),
                col(p, rate),
                verdict(r >= 1.0)
            ));
        }
    }
    if let (Some(d), Some(g), Some(n)) = (
        find(3, Kind::Direct),
        find(3, Kind::Guard),
        find(3, Kind::Nginx),
    ) {
        let added = |x: &Measured| {
            median(
                x.runs
                    .iter()
                    .zip(&d.runs)
                    .map(|(a, b)| a.p50 - b.p50)
                    .collect(),
            )
        };
        let (ga, na) = (added(g), added(n));
        goals.push(format!("| 1 connection pinned: guard added p50 <= nginx's | +{ga:.0} vs +{na:.0} us | {:.2} | {} |", ga / na, verdict(ga <= na)));
    }
    for tls in [false, true] {
        let get = |k: Kind| {
            idle.iter()
                .find(|i| i.kind == k && i.tls == tls && !i.runs.is_empty())
        };
        if let (Some(g), Some(h)) = (get(Kind::Guard), get(Kind::Haproxy)) {
            // Judged on both figures: a fresh idle connection, and one that has carried a
            // message (what a quiet sender's connection looks like most of the day).
            let worst = |i: &Idle| {
                median(i.runs.iter().map(|r| r.0).collect())
                    .max(median(i.runs.iter().map(|r| r.1).collect()))
            };
            let (gv, hv) = (worst(g), worst(h));
            goals.push(format!("| {idle_n} idle {}: guard RSS/connection <= HAProxy's (the larger of idle / after one message); all work after | {gv:.1} vs {hv:.1} KiB | {:.2} | {}{} |", if tls { "TLS" } else { "plain" }, gv / hv, verdict(gv <= hv && g.failure.is_none()), if g.failure.is_some() { ", and NOT all worked afterwards" } else { "" }));
        }
    }
    match codec_gbps() {
        Some(gbps) => goals.push(format!("| frame decoder, 1 KiB frames (criterion mean, last `cargo bench --bench codec`) >= 5 GB/s | {gbps:.2} GB/s | {:.2} | {} |", gbps / 5.0, verdict(gbps >= 5.0))),
        None => goals.push("| frame decoder >= 5 GB/s | not measured: run `cargo bench --bench codec` first | | |".into()),
    }
    goals_table(w, "### Goals of issue 7\n", "peer", goals);
    for id in [1, 2, 3, 4, 5] {
        if let (Some(g), Some(base)) = (find(id, Kind::Guard), find(id, Kind::GuardBaseline)) {
            let _ = writeln!(w, "\nScenario {id}: this build against the baseline binary (`COMPARE_BASELINE_BIN`), both at warn: CPU/msg ratio {:.2}, msgs/s ratio {:.2}.", ratio(g, base, cpu), ratio(g, base, rate));
        }
        if let (Some(g), Some(base)) = (
            find(id, Kind::GuardShippedFile),
            find(id, Kind::GuardBaselineShippedFile),
        ) {
            let _ = writeln!(w, "\nScenario {id}: this build against the baseline binary (`COMPARE_BASELINE_BIN`), both as shipped with stderr to a file: CPU/msg ratio {:.2}, msgs/s ratio {:.2}.", ratio(g, base, cpu), ratio(g, base, rate));
        }
        if let (Some(g), Some(multi)) = (find(id, Kind::Guard), find(id, Kind::GuardMultiThread)) {
            let _ = writeln!(w, "\nScenario {id}: the default per-core connection workers against the multi-thread runtime (`MLLP_GUARD_RUNTIME=multi-thread`, the default before them), both at warn: CPU/msg ratio {:.2}, msgs/s ratio {:.2}.", ratio(g, multi, cpu), ratio(g, multi, rate));
        }
        if let (Some(g), Some(one)) = (find(id, Kind::Guard), find(id, Kind::GuardCurrentThread)) {
            let _ = writeln!(w, "\nScenario {id}: the current-thread runtime (`MLLP_GUARD_RUNTIME=current-thread`) against the default per-core workers: CPU/msg ratio {:.2}, msgs/s ratio {:.2}.", ratio(one, g, cpu), ratio(one, g, rate));
        }
    }
    if let (Some(g), Some(i)) = (find(1, Kind::Guard), find(1, Kind::GuardInfo)) {
        let _ = writeln!(w, "\nThe default log level (info: one audit line per message, here to /dev/null) costs {:.1} us/msg of guard CPU against {:.1} at warn ({:.2}x).", col(i, cpu), col(g, cpu), ratio(i, g, cpu));
    }
    goals_as_shipped(w, &find);
    o
}

/// The goals of issue 22: the guard as users run it (log level info, an audit line per message,
/// stderr to a file or a pipe) against nginx stream, with ratios from the same runs.
fn goals_as_shipped<'a>(w: &mut String, find: &dyn Fn(u32, Kind) -> Option<&'a Measured>) {
    let cpu = |r: &Run| r.cpu_us;
    let user = |r: &Run| r.cpu_us - r.sys_us;
    let rate = |r: &Run| r.rate;
    let mut goals: Vec<String> = Vec::new();
    for (id, subject, limit) in [
        (1, Kind::GuardShippedFile, 1.2),
        (1, Kind::GuardShippedPipe, 1.2),
        (1, Kind::Guard, 1.0),
        (1, Kind::GuardAuditFile, 1.2),
        (2, Kind::GuardShippedFile, 1.0),
    ] {
        if let (Some(g), Some(p)) = (find(id, subject), find(id, Kind::Nginx)) {
            let r = ratio(g, p, cpu);
            goals.push(format!(
                "| {}: {}, CPU/msg <= {limit} x {}'s | {:.2} vs {:.2} us | {r:.2} | {} |",
                if id == 1 {
                    "plain 1 KiB x64"
                } else {
                    "TLS 1 KiB x64"
                },
                subject.name(id == 2),
                p.kind.name(id == 2),
                col(g, cpu),
                col(p, cpu),
                verdict(r <= limit)
            ));
        }
    }
    for subject in [
        Kind::GuardShippedFile,
        Kind::GuardShippedPipe,
        Kind::Guard,
        Kind::GuardAuditFile,
    ] {
        if let (Some(g), Some(p)) = (find(1, subject), find(1, Kind::Nginx)) {
            let r = ratio(g, p, rate);
            goals.push(format!(
                "| plain 1 KiB x64: {}, msgs/s >= nginx stream's | {:.0} vs {:.0} | {r:.2} | {} |",
                subject.name(false),
                col(g, rate),
                col(p, rate),
                verdict(r >= 1.0)
            ));
        }
    }
    for subject in [Kind::GuardShippedFile, Kind::GuardShippedPipe] {
        if let (Some(g), Some(p)) = (find(1, subject), find(1, Kind::Nginx)) {
            let u = col(g, user);
            goals.push(format!(
                "| plain 1 KiB x64: {}, user CPU/msg <= 1.5 us | {u:.2} vs {:.2} us (nginx) | {:.2} | {} |",
                subject.name(false),
                col(p, user),
                u / 1.5,
                verdict(u <= 1.5)
            ));
        }
    }
    if !goals.is_empty() {
        goals_table(w, "\n### Goals of issue 22 (as shipped)\n", "nginx", goals);
    }
}

/// A goals table: its heading, then one row per goal (already formatted).
fn goals_table(w: &mut String, heading: &str, against: &str, goals: Vec<String>) {
    let _ = writeln!(w, "{heading}");
    let _ = writeln!(
        w,
        "| goal | guard vs {against} (medians) | ratio (median of per-run ratios) | verdict |"
    );
    let _ = writeln!(w, "|---|---|---:|---|");
    for g in goals {
        let _ = writeln!(w, "{g}");
    }
}
