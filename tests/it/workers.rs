//! The shipped runtime shape through the binary: `mllp-guard run` serves sender connections on
//! one single-threaded worker per CPU (`mllp-worker-N` threads), spreads connections over them,
//! and every message of every connection is relayed and acked as before. `MLLP_GUARD_RUNTIME=
//! multi-thread` still runs without workers.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use mllp_guard::wire::hl7::AckCode;

use crate::admin::free_port;
use crate::harness::*;

/// A one-route guard (the binary, `MLLP_GUARD_RUNTIME` set when given) in front of an acking
/// receiver, listening: its directory, the receiver, its address and its process.
async fn guard_with_runtime(runtime: Option<&str>) -> (TestDir, FakeUpstream, SocketAddr, Proc) {
    let dir = TestDir::new();
    let upstream = FakeUpstream::start(Behaviour::Ack).await;
    let listen = free_port();
    let config = dir.path("guard.yaml");
    std::fs::write(
        &config,
        route_yaml(upstream.addr, "", "", "").replace("127.0.0.1:0", &listen.to_string()),
    )
    .unwrap();
    let guard = spawn_with_runtime(&config, runtime);
    wait_listening(listen);
    (dir, upstream, listen, guard)
}

/// `mllp-guard run` on `config` with `MLLP_GUARD_RUNTIME` set when given; output discarded.
fn spawn_with_runtime(config: &Path, runtime: Option<&str>) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config"])
        .arg(config)
        .env("MLLP_GUARD_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    match runtime {
        Some(runtime) => cmd.env("MLLP_GUARD_RUNTIME", runtime),
        None => cmd.env_remove("MLLP_GUARD_RUNTIME"),
    };
    Proc(cmd.spawn().unwrap())
}

/// The guard's worker threads: (name, CPU ticks so far) of each `mllp-worker-*` thread.
fn worker_threads(pid: u32) -> Vec<(String, u64)> {
    let mut workers = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let Ok(name) = std::fs::read_to_string(task.join("comm")) else {
            continue; // the thread ended meanwhile
        };
        let name = name.trim().to_string();
        if !name.starts_with("mllp-worker-") {
            continue;
        }
        let stat = std::fs::read_to_string(task.join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: utime and stime are the 14th and 15th overall.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = fields
            .get(11)
            .and_then(|u| u.parse::<u64>().ok())
            .unwrap_or(0)
            + fields
                .get(12)
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
        workers.push((name, ticks));
    }
    workers.sort();
    workers
}

/// Sends `count` messages on each of `connections` connections at once; every ack must be AA
/// and name its own message. All the connections are open before the first message, so the
/// guard places each while the others are open.
async fn relay_from_many(listen: SocketAddr, connections: usize, count: usize) {
    let mut clients = Vec::new();
    for _ in 0..connections {
        clients.push(Client::plain(listen).await);
    }
    let mut senders = Vec::new();
    for (c, mut client) in clients.into_iter().enumerate() {
        senders.push(tokio::spawn(async move {
            for n in 0..count {
                let msg = message(&format!("W{c}-{n}"), 600);
                let ack = client.send(&msg).await;
                let (code, acked, _) = ack_of(&ack);
                assert_eq!(code, AckCode::AA, "W{c}-{n}");
                assert_eq!(acked, format!("W{c}-{n}"));
            }
        }));
    }
    for sender in senders {
        sender.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_spread_over_one_worker_per_cpu_and_all_relayed() {
    let (_dir, upstream, listen, guard) = guard_with_runtime(None).await;
    let pid = guard.0.id();

    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let names: Vec<String> = worker_threads(pid).into_iter().map(|(n, _)| n).collect();
    let expected: Vec<String> = {
        let mut e: Vec<String> = (0..cpus).map(|i| format!("mllp-worker-{i}")).collect();
        e.sort();
        e
    };
    assert_eq!(
        names, expected,
        "one worker thread per CPU the guard may use"
    );

    // As many connections as workers, open together: each goes to the least busy worker, so
    // every worker serves one and does the work of its messages.
    relay_from_many(listen, cpus.max(2), 2_500).await;
    assert_eq!(upstream.received().len(), cpus.max(2) * 2_500);
    if cpus >= 2 {
        let busy = worker_threads(pid);
        assert!(
            busy.iter().all(|(_, ticks)| *ticks > 0),
            "every worker served a connection: {busy:?}"
        );
    } else {
        eprintln!("one CPU available: the spread over workers is not checked");
    }
}

#[tokio::test]
async fn the_multi_thread_runtime_runs_without_workers() {
    let (_dir, _upstream, listen, guard) = guard_with_runtime(Some("multi-thread")).await;
    relay_from_many(listen, 2, 50).await;
    assert!(worker_threads(guard.0.id()).is_empty());
}
