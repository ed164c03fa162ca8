//! Custody backends compared in one run (issue 8's closing note): the embedded queue, JetStream
//! R1 (one nats-server) and JetStream R3 (a three-node cluster), each behind its own
//! `mllp-guard run` store-and-forward route, all on loopback.
//!
//! Phase 1, acks: a closed loop of C connections (one message in flight each, every ack checked
//! positive) for --seconds per backend, while the upstream is down (so only the ack path is
//! measured: append + fsync, or publish + PubAck). Reports acked msgs/s, p50/p99 ack latency and
//! the guard's CPU per message. Phase 2, delivery: a sink comes up for each guard in turn and
//! the rate at which it drains its backlog (over up to 20 s) gives delivered msgs/s (one in
//! flight, in order).
//!
//! `cargo bench --bench custody_backends -- [--connections 16] [--seconds 5] [--size 1024]
//! [--runs 3]`. Without `--bench` (as `cargo test --all-targets` runs it) it is a short smoke
//! run. Skips JetStream when `nats-server` is not on PATH. Timings are printed, never asserted.
#![allow(clippy::unwrap_used, clippy::panic)] // a harness: a failed step is a failed run

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mllp_guard::tools::peer::sink::{Sink, SinkOptions};
use mllp_guard::wire::codec::{self, Decoded};
use mllp_guard::wire::hl7::AckCode;
use mllp_guard::wire::link::Link;
use tokio::net::TcpStream;

mod common;
#[allow(dead_code)]
#[path = "../tests/it/nats.rs"]
mod nats;

use common::{cpu_seconds, message, Proc, BIN};

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Acked messages and sorted latencies (us) of one closed-loop phase.
async fn closed_loop(
    addr: SocketAddr,
    connections: usize,
    seconds: u64,
    size: usize,
    tag: &str,
) -> (u64, Duration, Vec<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let stop = stop.clone();
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            tcp.set_nodelay(true).unwrap();
            let mut link = Link::new(tcp, 1 << 20);
            let mut lat = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("{tag}{c}-{n}");
                let wire = codec::encode(&message(&id, size));
                let t = Instant::now();
                link.send(&wire).await.expect("send");
                match link.next().await {
                    Ok(Some(Decoded::Frame(ack))) => {
                        let code = mllp_guard::wire::ack::verify(ack.payload(), id.as_bytes())
                            .expect("ack answers its message");
                        assert!(code.is_positive(), "negative ack {code}");
                    }
                    other => panic!("no ack: {other:?}"),
                }
                lat.push(t.elapsed().as_micros() as u64);
                n += 1;
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    (latencies.len() as u64, elapsed, latencies)
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Subject {
    name: String,
    proc: Proc,
    listen: SocketAddr,
    upstream: SocketAddr,
    acked: u64,
}

fn start_guard(dir: &std::path::Path, name: &str, queue: &str) -> Subject {
    let (listen, upstream) = (free_addr(), free_addr());
    let config = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &config,
        format!(
            "state_dir: {}\nroutes:\n  - name: {name}\n    listen: {listen}\n    allow: [127.0.0.1]\n    max_connections: 1024\n    delivery: store-and-forward\n    retry: {{ initial: 200ms, max: 1s }}\n{queue}    upstream:\n      address: {upstream}\n      connect_timeout: 1s\n",
            dir.join("state").display()
        ),
    )
    .unwrap();
    let proc = Proc(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .env("MLLP_GUARD_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start guard"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(listen).is_err() {
        assert!(Instant::now() < deadline, "guard {name} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Subject {
        name: name.to_string(),
        proc,
        listen,
        upstream,
        acked: 0,
    }
}

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let connections = arg("--connections", if measuring { 16 } else { 2 }) as usize;
    let seconds = arg("--seconds", if measuring { 5 } else { 1 });
    let size = arg("--size", 1024) as usize;
    let runs = arg("--runs", if measuring { 3 } else { 1 }).max(1);
    let dir = tempfile::tempdir().unwrap();
    let have_nats = Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());

    let mut subjects = vec![start_guard(dir.path(), "embedded", "")];
    // The NATS nodes live as long as the guards using them.
    let mut clusters = Vec::new();
    if have_nats {
        let single = nats::Nats::single();
        subjects.push(start_guard(
            dir.path(),
            "jetstream-r1",
            &single.queue_yaml("BENCH_R1", 1, "30s"),
        ));
        clusters.push(single);
        if measuring {
            let three = nats::Nats::cluster();
            subjects.push(start_guard(
                dir.path(),
                "jetstream-r3",
                &three.queue_yaml("BENCH_R3", 3, "30s"),
            ));
            clusters.push(three);
        }
    } else {
        println!("nats-server is not on PATH: JetStream skipped (apt-get install -y nats-server)");
    }
    // Let every guard connect and create its stream before measuring.
    std::thread::sleep(Duration::from_secs(if have_nats { 2 } else { 0 }));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("custody backends: {connections} connections x {size}-byte messages, {seconds}s per phase, {runs} runs, upstream down while acking");
    let mut table: Vec<Vec<(f64, f64, f64, f64)>> = vec![Vec::new(); subjects.len()];
    for run in 0..runs {
        for (i, s) in subjects.iter_mut().enumerate() {
            let pid = s.proc.0.id();
            let c0 = cpu_seconds(pid);
            let (acked, elapsed, lat) = rt.block_on(closed_loop(
                s.listen,
                connections,
                seconds,
                size,
                &format!("R{run}P{i}-"),
            ));
            let cpu = (cpu_seconds(pid) - c0) * 1e6 / acked.max(1) as f64;
            s.acked += acked;
            let rate = acked as f64 / elapsed.as_secs_f64();
            let (p50, p99) = (pct(&lat, 0.5) as f64, pct(&lat, 0.99) as f64);
            println!(
                "run {run}: {}: {rate:.0} acked msg/s, p50 {p50} us, p99 {p99} us, guard CPU {cpu:.1} us/msg",
                s.name
            );
            table[i].push((rate, p50, p99, cpu));
        }
    }
    println!("\nmedians of {runs} runs (acks):");
    println!("| backend | acked msgs/s | p50 us | p99 us | guard CPU us/msg |");
    println!("|---|---:|---:|---:|---:|");
    for (i, s) in subjects.iter().enumerate() {
        let col = |f: fn(&(f64, f64, f64, f64)) -> f64| median(table[i].iter().map(f).collect());
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.1} |",
            s.name,
            col(|r| r.0),
            col(|r| r.1),
            col(|r| r.2),
            col(|r| r.3)
        );
    }

    println!("\ndelivery (the backlog drained to a sink, one in flight, in order):");
    println!("| backend | acked | received by the sink | delivered msgs/s |");
    println!("|---|---:|---:|---:|");
    for s in &subjects {
        let (count, secs) = rt.block_on(async {
            let sink = Sink::start(SinkOptions {
                listen: s.upstream,
                tls: None,
                ack: AckCode::AA,
                save_dir: None,
                max_message_bytes: 1 << 20,
                verbose: false,
            })
            .await
            .expect("sink");
            let deadline = Instant::now() + Duration::from_secs(if measuring { 300 } else { 30 });
            while sink.received() == 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let first = Instant::now();
            let first_count = sink.received();
            // A window of the drain is enough for a rate; the rest of the backlog is dropped
            // with the guards.
            let window = Duration::from_secs(if measuring { 20 } else { 5 });
            while sink.received() < s.acked && Instant::now() < deadline && first.elapsed() < window
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let got = sink.received();
            let secs = first.elapsed().as_secs_f64();
            sink.stop().await;
            (got, (got - first_count) as f64 / secs.max(1e-3))
        });
        println!("| {} | {} | {count} | {secs:.0} |", s.name, s.acked);
    }
    drop(subjects);
    drop(clusters);
}
