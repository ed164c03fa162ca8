//! End-to-end load through the real binaries: a closed loop of C connections (one message in
//! flight each, unique MSH-10s, every ack verified) against `mllp-guard sink` directly, then
//! through `mllp-guard run` on a plain -> plain forward route and a store-and-forward route into
//! the same sink, in the same run.
//! Reports msgs/s, latency percentiles, and the guard's CPU time per message read from /proc.
//!
//! `cargo bench --bench relay_load -- [--connections 64] [--seconds 5] [--size 1024] [--runs 3]`
//! (`MLLP_GUARD_LOG=warn` measures the guard without its per-message log line).
//! Everything stays on loopback; each phase is bounded by --seconds.
#![allow(clippy::unwrap_used, clippy::panic)] // a harness: a failed step is a failed run

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{arg, closed_loop, median, pct, peak_rss_kib, Proc, Target, BIN};

fn main() {
    // `cargo test --all-targets` runs this without `--bench`: then it is a one-second smoke run
    // that proves the tool works, not a measurement.
    let measuring = common::measuring();
    let connections = arg("--connections", if measuring { 64 } else { 4 }) as usize;
    let seconds = arg("--seconds", if measuring { 5 } else { 1 });
    let size = arg("--size", 1024) as usize;
    let runs = arg("--runs", if measuring { 3 } else { 1 }).max(1);

    let (sink, sink_addr) = common::start_sink(&[]);

    let dir = tempfile::tempdir().unwrap();
    let log_level = std::env::var("MLLP_GUARD_LOG").unwrap_or_else(|_| "info".into());
    let forward = start_guard(dir.path(), "forward", sink_addr, "", "", &log_level);
    let state = format!("state_dir: {}\n", dir.path().join("state").display());
    let custody = start_guard(
        dir.path(),
        "custody",
        sink_addr,
        &state,
        "    delivery: store-and-forward\n",
        &log_level,
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("relay load: {connections} connections x {size}-byte messages, {seconds}s per phase, {runs} runs, guard log level {log_level}");
    let subjects: [(&str, SocketAddr, Option<u32>); 3] = [
        ("direct to sink", sink_addr, Some(sink.0.id())),
        (
            "mllp-guard forward",
            forward.addr,
            Some(forward.proc.0.id()),
        ),
        (
            "mllp-guard store-and-forward",
            custody.addr,
            Some(custody.proc.0.id()),
        ),
    ];
    let mut table: Vec<Vec<(f64, f64, f64, f64)>> = vec![Vec::new(); subjects.len()];
    for run in 0..runs {
        for (i, (name, addr, pid)) in subjects.iter().enumerate() {
            let c0 = pid.map(common::cpu_seconds).unwrap_or(0.0);
            let target = Target {
                addr: *addr,
                tls: None,
            };
            let outcome = rt
                .block_on(closed_loop(
                    &target,
                    connections,
                    seconds as f64,
                    size,
                    &format!("R{run}P{i}-"),
                    false,
                ))
                .expect("every message acked");
            let c1 = pid.map(common::cpu_seconds).unwrap_or(0.0);
            let rate = outcome.messages as f64 / outcome.elapsed.as_secs_f64();
            let cpu = (c1 - c0) * 1e6 / outcome.messages.max(1) as f64;
            let (p50, p99) = (
                pct(&outcome.latencies_us, 0.5) as f64,
                pct(&outcome.latencies_us, 0.99) as f64,
            );
            println!("run {run}: {name}: {rate:.0} msg/s, p50 {p50} us, p99 {p99} us, subject CPU {cpu:.1} us/msg");
            table[i].push((rate, p50, p99, cpu));
        }
    }
    // Let the custody drainer catch up, then stop that guard to read its group-commit counters.
    std::thread::sleep(Duration::from_secs(2));
    let _ = Command::new("kill")
        .args(["-TERM", &custody.proc.0.id().to_string()])
        .status();
    let counters = custody.closing_line();

    println!("\nmedians of {runs} runs:");
    println!("| subject | msgs/s | p50 us | p99 us | subject CPU us/msg |");
    println!("|---|---:|---:|---:|---:|");
    for (i, (name, _, _)) in subjects.iter().enumerate() {
        let col = |f: fn(&(f64, f64, f64, f64)) -> f64| median(table[i].iter().map(f).collect());
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.1} |",
            col(|r| r.0),
            col(|r| r.1),
            col(|r| r.2),
            col(|r| r.3)
        );
    }
    println!(
        "forward guard peak RSS {} KiB",
        peak_rss_kib(forward.proc.0.id())
    );
    if let Some((queued, syncs)) = counters {
        println!("store-and-forward: {queued} messages queued with {syncs} fsyncs = {:.3} fsyncs per message (group commit)", syncs as f64 / queued.max(1) as f64);
    }
}

struct Guard {
    proc: Proc,
    addr: SocketAddr,
    logs: std::sync::mpsc::Receiver<String>,
}

impl Guard {
    /// Waits (bounded) for the custody guard's "custody queue closed" line; (queued, syncs).
    fn closing_line(&self) -> Option<(u64, u64)> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let Ok(line) = self.logs.recv_timeout(Duration::from_millis(200)) else {
                continue;
            };
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if v["message"] == "custody queue closed" {
                    return Some((v["queued"].as_u64()?, v["syncs"].as_u64()?));
                }
            }
        }
        None
    }
}

/// Starts `mllp-guard run` with one route `name`; `top` and `route` are extra YAML lines.
fn start_guard(
    dir: &std::path::Path,
    name: &str,
    upstream: SocketAddr,
    top: &str,
    route: &str,
    log_level: &str,
) -> Guard {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &config,
        format!("{top}routes:\n  - name: {name}\n    listen: 127.0.0.1:{port}\n    allow: [127.0.0.1]\n    max_connections: 1024\n{route}    upstream:\n      address: {upstream}\n"),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .env(
            "MLLP_GUARD_LOG",
            format!("{log_level},mllp_guard::custody=info"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start guard");
    let stderr = child.stderr.take().unwrap();
    let (tx, logs) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("custody queue") || line.contains("ERROR") {
                let _ = tx.send(line);
            }
        }
    });
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "guard {name} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Guard {
        proc: Proc(child),
        addr,
        logs,
    }
}
