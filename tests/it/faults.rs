//! Faults from outside, through the binary: a receiver that accepts and stops reading, and a
//! disk that fills under custody (a real tmpfs in a mount namespace of the guard's own).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mllp_guard::wire::codec::Decoder;
use mllp_guard::wire::hl7::AckCode;

use crate::admin::{free_port, get, sample};
use crate::custody::{control_ids, exchange, free_addr, saved_count};
use crate::harness::*;

/// A receiver that accepts connections and never reads from them (its receive window fills),
/// with a small receive buffer; keeps them open until dropped.
struct DeafReceiver {
    addr: SocketAddr,
    _thread: std::thread::JoinHandle<()>,
}

impl DeafReceiver {
    fn start() -> DeafReceiver {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        socket.listen(16).unwrap();
        let listener: std::net::TcpListener = socket.into();
        let addr = listener.local_addr().unwrap();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            // Bounded: the test makes a handful of connections; the thread ends with the process.
            for conn in listener.incoming().take(64) {
                match conn {
                    Ok(conn) => held.push(conn),
                    Err(_) => return,
                }
            }
        });
        DeafReceiver {
            addr,
            _thread: thread,
        }
    }
}

/// A receiver that stops reading: the guard's write of a 4 MiB message stalls, the sender gets
/// AE at `ack_timeout` (never AA), the bytes held stay within the memory budget, and another
/// route keeps relaying its messages promptly meanwhile.
#[tokio::test]
async fn a_receiver_that_stops_reading_costs_one_ae_and_no_other_route() {
    let dir = TestDir::new();
    let deaf = DeafReceiver::start();
    let (_sink, sink_addr) = crate::cli::start_sink(&["--listen", "127.0.0.1:0"]);
    let (stuck, ok, admin) = (free_addr(), free_addr(), free_port());
    let config = dir.path("guard.yaml");
    std::fs::write(
        &config,
        format!(
            "admin:\n  listen: {admin}\nroutes:\n  - name: stuck\n    listen: {stuck}\n    allow: [127.0.0.1/32]\n    upstream:\n      address: {}\n      ack_timeout: 2s\n  - name: ok\n    listen: {ok}\n    allow: [127.0.0.1/32]\n    upstream:\n      address: {sink_addr}\n      ack_timeout: 2s\n",
            deaf.addr
        ),
    )
    .unwrap();
    let (_guard, _, _logs) = crate::cli::start_guard(&config);
    wait_listening(ok);

    let large = std::thread::spawn(move || {
        let mut tcp = TcpStream::connect(stuck).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let started = Instant::now();
        let answer = exchange(
            &mut tcp,
            &mut Decoder::new(1 << 20),
            &mut bytes::BytesMut::new(),
            &message("BIG1", 4 * 1024 * 1024),
        );
        (answer, started.elapsed())
    });
    let mut client = Client::plain(ok).await;
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let started = Instant::now();
        let ack = client.send(&message(&format!("OK{i}"), 1_000)).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(ack_of(&ack).0, AckCode::AA);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, metrics) = get(admin, "/metrics").await.unwrap();
    let (answer, took) = large.join().unwrap();
    let (code, acked) = answer.expect("an answer, not a dropped connection");
    assert_eq!((code, acked.as_str()), (AckCode::AE, "BIG1"));
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(10),
        "AE after {took:?}"
    );
    assert!(slowest < Duration::from_secs(1), "slowest ack {slowest:?}");
    let lent = sample(&metrics, "mllp_guard_buffered_bytes").unwrap();
    assert!(lent <= 256.0 * 1024.0 * 1024.0, "lent {lent}");
}

/// Fails (with the reason) unless this process may make a mount namespace: root.
fn needs_mount_namespace() {
    let mounts = Command::new("unshare")
        .args(["--mount", "--", "true"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        mounts,
        "this test needs root to make a mount namespace (unshare --mount)"
    );
}

/// Starts the guard in a mount namespace of its own where `state_dir` is a tmpfs of `size`,
/// after running the shell command `setup` in it (`$0` is the tmpfs).
fn guard_on_tmpfs(
    config: &std::path::Path,
    state: &std::path::Path,
    size: &str,
    setup: &str,
) -> Proc {
    std::fs::create_dir_all(state).unwrap();
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs -o size={size} tmpfs \"$0\" && {setup} exec \"$1\" --log-format json run --config \"$2\""
        ))
        .arg(state)
        .arg(BIN)
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("\"level\":\"ERROR\"") || line.contains("\"level\":\"WARN\"") {
                eprintln!("guard: {line}");
            }
        }
    });
    Proc(child)
}

/// A disk that fills under custody (an 8 MiB tmpfs as `state_dir`, the receiver down): the
/// sender gets AA while messages fit and AE after, never AA for a message not stored; every
/// acked message is delivered in order once the receiver is back; then, with the space freed,
/// new messages are acked and delivered again.
#[test]
#[ignore = "needs root (a tmpfs in a mount namespace): run as root with cargo test --test it -- --ignored"]
fn a_full_disk_under_custody_gives_ae_loses_nothing_and_recovers() {
    needs_mount_namespace();
    let dir = TestDir::new();
    let (listen, upstream) = (free_addr(), free_addr());
    let state = dir.path("state");
    let config = dir.path("guard.yaml");
    std::fs::write(
        &config,
        format!(
            "state_dir: {}\nroutes:\n  - name: lab\n    listen: {listen}\n    allow: [127.0.0.1/32]\n    delivery: store-and-forward\n    retry: {{ initial: 50ms, max: 400ms }}\n    upstream:\n      address: {upstream}\n      ack_timeout: 2s\n      connect_timeout: 1s\n",
            state.display()
        ),
    )
    .unwrap();
    let _guard = guard_on_tmpfs(&config, &state, "8m", "");
    wait_listening(listen);

    let mut tcp = TcpStream::connect(listen).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let (mut decoder, mut buf) = (Decoder::new(1 << 20), bytes::BytesMut::new());
    let mut acked = Vec::new();
    let mut refused = 0;
    for i in 0..60 {
        let id = format!("FULL{i:03}");
        let (code, msa2) =
            exchange(&mut tcp, &mut decoder, &mut buf, &message(&id, 256 * 1024)).unwrap();
        assert_eq!(msa2, id);
        match code {
            AckCode::AA => {
                assert_eq!(
                    refused, 0,
                    "{id} acked after an earlier message was refused"
                );
                acked.push(id);
            }
            AckCode::AE => refused += 1,
            other => panic!("{id}: {other:?}"),
        }
    }
    assert!(
        acked.len() >= 10 && refused >= 10,
        "acked {}, refused {refused}",
        acked.len()
    );

    // The receiver comes back: everything acked arrives, in order, once.
    let saved = dir.path("saved");
    let (_sink, _) = crate::cli::start_sink(&[
        "--listen",
        &upstream.to_string(),
        "--save-dir",
        saved.to_str().unwrap(),
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while saved_count(&saved) < acked.len() {
        assert!(
            Instant::now() < deadline,
            "{} of {} delivered",
            saved_count(&saved),
            acked.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(control_ids(&saved), acked, "delivered in order, each once");

    // Delivery freed the space: new messages are acked (and delivered) again.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut again = Vec::new();
    let mut n = 0;
    while again.len() < 5 {
        assert!(Instant::now() < deadline, "no AA after the disk was freed");
        let id = format!("AGAIN{n:03}");
        n += 1;
        let (code, _) =
            exchange(&mut tcp, &mut decoder, &mut buf, &message(&id, 256 * 1024)).unwrap();
        if code == AckCode::AA {
            again.push(id);
        } else {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let want = acked.len() + again.len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while saved_count(&saved) < want {
        assert!(
            Instant::now() < deadline,
            "the new messages were not delivered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    let ids = control_ids(&saved);
    assert_eq!(&ids[acked.len()..], &again[..]);
}

/// Runs `sh -c script` in the guard's mount namespace (where its tmpfs is) and returns stdout.
fn in_guard_mounts(guard: &Proc, script: &str) -> String {
    let out = Command::new("nsenter")
        .args([
            "-t",
            &guard.0.id().to_string(),
            "-m",
            "--",
            "sh",
            "-c",
            script,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An audit file on a full disk (issue 22): the guard holds its lines and retries, with an
/// ERROR and the metric; messages go on while the held lines fit in memory; once space comes
/// back every line is written, once, whole and in order.
#[test]
#[ignore = "needs root (a tmpfs in a mount namespace): run as root with cargo test --test it -- --ignored"]
fn an_audit_file_on_a_full_disk_holds_its_lines_and_writes_them_all_once_space_returns() {
    needs_mount_namespace();
    let dir = TestDir::new();
    let (_sink, upstream) = crate::cli::start_sink(&["--listen", "127.0.0.1:0"]);
    let (listen, admin) = (free_addr(), free_port());
    let logs = dir.path("logs");
    let config = dir.path("guard.yaml");
    std::fs::write(
        &config,
        format!(
            "admin: {{ listen: {admin} }}\naudit: {{ file: {}/audit.jsonl }}\nroutes:\n  - name: lab\n    listen: {listen}\n    allow: [127.0.0.1/32]\n    upstream: {{ address: {upstream} }}\n",
            logs.display()
        ),
    )
    .unwrap();
    // A 128 KiB tmpfs, all but 8 KiB of it taken by a filler file (200 lines need ~66 KB).
    let guard = guard_on_tmpfs(
        &config,
        &logs,
        "128k",
        "dd if=/dev/zero of=\"$0/filler\" bs=1k count=120 2>/dev/null;",
    );
    wait_listening(listen);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sent: Vec<String> = (0..200).map(|i| format!("AUD{i:04}")).collect();
    rt.block_on(async {
        let mut client = Client::plain(listen).await;
        for id in &sent {
            let (code, acked, _) = ack_of(&client.send(&message(id, 300)).await);
            assert_eq!((code, acked.as_str()), (AckCode::AA, id.as_str()));
        }
    });
    let metric = |rt: &tokio::runtime::Runtime| {
        rt.block_on(async {
            get(admin, "/metrics")
                .await
                .and_then(|(_, body)| sample(&body, "mllp_guard_audit_write_failures_total"))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&rt).unwrap_or(0.0) < 1.0 {
        assert!(Instant::now() < deadline, "no audit write failure counted");
        std::thread::sleep(Duration::from_millis(100));
    }
    in_guard_mounts(&guard, &format!("rm {}/filler", logs.display()));
    // Within the retry interval (1 s) and a bounded wait, every line is there.
    let deadline = Instant::now() + Duration::from_secs(15);
    let ids = loop {
        let text = in_guard_mounts(&guard, &format!("cat {}/audit.jsonl", logs.display()));
        // While the disk is full the file may end inside a line the writer will finish.
        let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        let ids: Vec<String> = whole
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l)
                    .unwrap_or_else(|_| panic!("a torn or mixed line: {l:?}"));
                v["control_id"].as_str().unwrap().to_string()
            })
            .collect();
        if (ids.len() >= sent.len() && whole.len() == text.len()) || Instant::now() >= deadline {
            break ids;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(ids, sent, "every audit line, once, in order");
}
