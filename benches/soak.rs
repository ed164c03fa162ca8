//! A soak: the release binary under N minutes of steady custody load plus slowloris senders,
//! connection churn and a receiver that restarts, sampling the guard's resident memory, open
//! file descriptors and runtime tasks. At the end: every acked message must have reached the
//! receiver (0 lost), every ack must have answered its message (0 wrong), and after warm-up
//! none of the three samples may grow by more than 5% (the median of the last five samples
//! against the median of the first five after warm-up). Warm-up is 11 minutes by default
//! (`--warmup-minutes`): custody remembers each message for `duplicate_window` (10 minutes),
//! so memory rises for that long by design (a 5-minute run grew 24 -> 125 MB at 1,400 msg/s).
//!
//! Run on demand, never in `cargo test` (it only says how to run it there):
//! `cargo bench --bench soak -- --minutes 30 [--senders 16] [--interval-ms 10] [--slowloris 20]
//! [--churn 4] [--restart-every 120] [--sample-every 10] [--warmup-minutes 11] [--write]`; `--write` puts the summary
//! into RELIABILITY.md. The guard runs with the shipped log level (audit lines on) and its
//! stderr goes to /dev/null, so a 30-minute run does not fill the disk with them.

#![allow(clippy::unwrap_used, clippy::panic)] // a harness: a failed step is a failed run

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{arg, free_port, measuring, median, message, wait_listening, Proc, BIN};
use mllp_guard::wire::codec::{self, Decoded};
use mllp_guard::wire::link::Link;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What the receiver got: per sender, how many times each message number arrived.
#[derive(Default)]
struct Received {
    by_sender: HashMap<String, Vec<u8>>,
    duplicates: u64,
}

impl Received {
    fn record(&mut self, id: &str) {
        let Some((sender, n)) = id.rsplit_once('-') else {
            return;
        };
        let Ok(n) = n.parse::<usize>() else { return };
        let seen = self.by_sender.entry(sender.to_string()).or_default();
        if seen.len() <= n {
            seen.resize(n + 1, 0);
        }
        if seen[n] > 0 {
            self.duplicates += 1;
        }
        seen[n] = seen[n].saturating_add(1);
    }

    fn has(&self, sender: &str, n: usize) -> bool {
        self.by_sender
            .get(sender)
            .and_then(|s| s.get(n))
            .is_some_and(|&c| c > 0)
    }
}

/// An MLLP receiver that acks AA and records every control id; `stop` ends it (its listener
/// and connections), so it can be restarted on the same port.
async fn receiver(addr: SocketAddr, received: Arc<Mutex<Received>>, stop: CancellationToken) {
    let listener = loop {
        match TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    loop {
        let (tcp, _) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
        };
        let (received, stop) = (received.clone(), stop.clone());
        tokio::spawn(async move {
            let mut link = Link::new(tcp, 1 << 24);
            loop {
                let frame = tokio::select! {
                    _ = stop.cancelled() => return,
                    next = link.next() => match next {
                        Ok(Some(Decoded::Frame(f))) => f,
                        _ => return,
                    },
                };
                let Ok(header) = mllp_guard::wire::hl7::Header::parse(frame.payload()) else {
                    return;
                };
                let id = String::from_utf8_lossy(header.control_id()).into_owned();
                let ack = format!("MSH|^~\\&|RCV|F|SND|F|20240101||ACK|A{id}|P|2.5\rMSA|AA|{id}\r");
                if link.send(&codec::encode(ack.as_bytes())).await.is_err() {
                    return;
                }
                received.lock().unwrap().record(&id);
            }
        });
    }
}

#[derive(Default)]
struct Counts {
    acked: AtomicU64,
    wrong: AtomicU64,
    reconnects: AtomicU64,
}

/// A sender sending `{tag}-0`, `{tag}-1`, ... one at a time every `interval`, each resent
/// until it is acked AA (reconnecting as needed; with `churn`, a new connection per message).
/// Returns how many were acked (message numbers 0..n).
async fn sender(
    to: SocketAddr,
    tag: String,
    interval: Duration,
    churn: bool,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
) -> usize {
    let mut link: Option<Link<TcpStream>> = None;
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let id = format!("{tag}-{n}");
        let wire = codec::encode(&message(&id, 1024));
        if link.is_none() {
            match TcpStream::connect(to).await {
                Ok(tcp) => link = Some(Link::new(tcp, 1 << 20)),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let conn = link.as_mut().expect("connected");
        let answered = match conn.send(&wire).await {
            Ok(()) => tokio::time::timeout(Duration::from_secs(30), conn.next()).await,
            Err(_) => Ok(Ok(None)),
        };
        match answered {
            Ok(Ok(Some(Decoded::Frame(ack)))) => {
                match mllp_guard::wire::ack::verify(ack.payload(), id.as_bytes()) {
                    Ok(code) if code.is_positive() => {
                        counts.acked.fetch_add(1, Ordering::Relaxed);
                        n += 1;
                    }
                    // A negative ack for this message: resend it.
                    Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    Err(_) => {
                        counts.wrong.fetch_add(1, Ordering::Relaxed);
                        link = None;
                    }
                }
            }
            _ => {
                counts.reconnects.fetch_add(1, Ordering::Relaxed);
                link = None;
            }
        }
        if churn {
            link = None;
        }
        tokio::time::sleep(interval).await;
    }
    n
}

/// A slowloris: starts a frame and sends one byte every 2 s until the guard closes it, then
/// again on a new connection.
async fn slowloris(to: SocketAddr, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut tcp) = TcpStream::connect(to).await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let mut byte = 0x0b;
        while !stop.load(Ordering::Relaxed) && tcp.write_all(&[byte]).await.is_ok() {
            byte = b'M';
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

#[derive(Clone, Copy)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: u64,
    tasks: f64,
    acked: u64,
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// A value of the guard's /metrics (no labels).
async fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    let mut tcp = TcpStream::connect(admin).await.ok()?;
    tcp.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .ok()?;
    let mut body = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut body)
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&body);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::main]
async fn main() {
    if !measuring() {
        println!(
            "soak: not run under cargo test; run it with cargo bench --bench soak -- --minutes 30"
        );
        return;
    }
    let minutes = arg("--minutes", 30);
    let senders = arg("--senders", 16) as usize;
    let interval = Duration::from_millis(arg("--interval-ms", 10));
    let slowloris_n = arg("--slowloris", 20) as usize;
    let churn_n = arg("--churn", 4) as usize;
    let restart_every = Duration::from_secs(arg("--restart-every", 120));
    let sample_every = Duration::from_secs(arg("--sample-every", 10));
    let write = std::env::args().any(|a| a == "--write");
    // Warm-up: custody remembers every message for `duplicate_window` (10 minutes by default),
    // so its memory rises for that long by design; growth is judged only after it.
    let warmup = Duration::from_secs(arg("--warmup-minutes", 11) * 60);
    let run_for = Duration::from_secs(minutes * 60);

    let dir = tempfile::tempdir().unwrap();
    let (listen, upstream, admin): (SocketAddr, SocketAddr, SocketAddr) = (
        ([127, 0, 0, 1], free_port()).into(),
        ([127, 0, 0, 1], free_port()).into(),
        ([127, 0, 0, 1], free_port()).into(),
    );
    let config = dir.path().join("guard.yaml");
    std::fs::write(
        &config,
        format!(
            "state_dir: {}\nadmin:\n  listen: {admin}\nroutes:\n  - name: soak\n    listen: {listen}\n    allow: [127.0.0.1/32]\n    delivery: store-and-forward\n    upstream:\n      address: {upstream}\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let guard = Proc(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the guard"),
    );
    wait_listening(listen, "the guard").unwrap();
    let pid = guard.id();

    let received = Arc::new(Mutex::new(Received::default()));
    let mut receiver_stop = CancellationToken::new();
    tokio::spawn(receiver(upstream, received.clone(), receiver_stop.clone()));

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let mut load = Vec::new();
    for i in 0..senders + churn_n {
        let churn = i >= senders;
        let tag = if churn {
            format!("C{i}")
        } else {
            format!("S{i}")
        };
        load.push((
            tag.clone(),
            tokio::spawn(sender(
                listen,
                tag,
                if churn { interval * 10 } else { interval },
                churn,
                counts.clone(),
                stop.clone(),
            )),
        ));
    }
    for _ in 0..slowloris_n {
        tokio::spawn(slowloris(listen, stop.clone()));
    }

    println!(
        "soak: {minutes} min, {senders} senders every {interval:?}, {churn_n} churning, {slowloris_n} slowloris, receiver restart every {restart_every:?}"
    );
    println!("| t (s) | RSS (KiB) | fds | tasks | acked |");
    println!("|---|---|---|---|---|");
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut next_restart = restart_every;
    let mut restarts = 0;
    while started.elapsed() < run_for {
        tokio::time::sleep(sample_every).await;
        if started.elapsed() >= next_restart {
            receiver_stop.cancel();
            tokio::time::sleep(Duration::from_secs(3)).await;
            receiver_stop = CancellationToken::new();
            tokio::spawn(receiver(upstream, received.clone(), receiver_stop.clone()));
            next_restart += restart_every;
            restarts += 1;
        }
        let sample = Sample {
            at: started.elapsed(),
            rss_kib: rss_kib(pid),
            fds: open_fds(pid),
            tasks: metric(admin, "mllp_guard_runtime_tasks")
                .await
                .unwrap_or(f64::NAN),
            acked: counts.acked.load(Ordering::Relaxed),
        };
        println!(
            "| {:.0} | {} | {} | {} | {} |",
            sample.at.as_secs_f64(),
            sample.rss_kib,
            sample.fds,
            sample.tasks,
            sample.acked
        );
        samples.push(sample);
    }
    stop.store(true, Ordering::Relaxed);
    let mut acked_by = Vec::new();
    for (tag, task) in load {
        acked_by.push((tag, task.await.unwrap_or(0)));
    }
    // Let the queue drain to the receiver (bounded).
    let deadline = Instant::now() + Duration::from_secs(120);
    while metric(admin, "mllp_guard_queue_depth_messages{route=\"soak\"}")
        .await
        .is_none_or(|depth| depth > 0.0)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = received.lock().unwrap();
    let lost: usize = acked_by
        .iter()
        .map(|(tag, n)| (0..*n).filter(|&i| !got.has(tag, i)).count())
        .sum();
    let acked: usize = acked_by.iter().map(|(_, n)| n).sum();
    let wrong = counts.wrong.load(Ordering::Relaxed);

    let after_warmup: Vec<Sample> = samples.iter().copied().filter(|s| s.at >= warmup).collect();
    // Medians of five: the slowloris connections are cut and come back in waves, and a sample
    // taken in a trough would read as growth (or hide it).
    let growth = |pick: fn(&Sample) -> f64| -> f64 {
        let first: Vec<f64> = after_warmup.iter().take(5).map(pick).collect();
        let last: Vec<f64> = after_warmup.iter().rev().take(5).map(pick).collect();
        let (first, last) = (median(first), median(last));
        (last - first) / first.max(1.0) * 100.0
    };
    let (rss, fds, tasks) = (
        growth(|s| s.rss_kib as f64),
        growth(|s| s.fds as f64),
        growth(|s| s.tasks),
    );
    let holds = lost == 0 && wrong == 0 && rss <= 5.0 && fds <= 5.0 && tasks <= 5.0;
    let summary = format!(
        "`cargo bench --bench soak -- --minutes {minutes}` on {} (commit {}), growth judged after {} min of warm-up: {senders} senders every {} ms + {churn_n} churning (a connection per message) + {slowloris_n} slowloris, receiver restarted {restarts} times; store-and-forward route, shipped defaults, log to /dev/null.\n\n\
| acked | lost | wrong acks | duplicates at the receiver | RSS growth after warm-up | fds growth | tasks growth | verdict |\n|---|---|---|---|---|---|---|---|\n\
| {acked} | {lost} | {wrong} | {} | {rss:+.1}% | {fds:+.1}% | {tasks:+.1}% | {} |\n",
        chrono_date(),
        git_head(),
        warmup.as_secs() / 60,
        interval.as_millis(),
        got.duplicates,
        if holds { "holds" } else { "FAILS" }
    );
    println!("\n{summary}");
    if write {
        write_reliability(&summary);
    }
    drop(guard);
    if !holds {
        std::process::exit(1);
    }
}

fn chrono_date() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn git_head() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Puts `summary` into RELIABILITY.md between the soak markers (made at the end the first
/// time).
fn write_reliability(summary: &str) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/RELIABILITY.md");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let (start, end) = (
        "<!-- soak: written by benches/soak.rs -->",
        "<!-- end soak -->",
    );
    let block = format!("{start}\n{summary}{end}");
    let text = match (text.find(start), text.find(end)) {
        (Some(a), Some(b)) => format!("{}{block}{}", &text[..a], &text[b + end.len()..]),
        _ => format!("{}\n\n## Soak\n\n{block}\n", text.trim_end()),
    };
    std::fs::write(path, text).unwrap();
}
